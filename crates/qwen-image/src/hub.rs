//! Where a model lives: a checkpoint directory, or a Hugging Face repository id looked up in
//! the local Hugging Face cache.
//!
//! Cache layout (what `huggingface_hub` writes): `<cache>/models--<owner>--<name>/refs/main`
//! holds the commit hash of the `main` revision, and the files are under
//! `<cache>/models--<owner>--<name>/snapshots/<hash>/`. The cache root is `$HF_HUB_CACHE`,
//! else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{PipelineError, Result};

/// Environment values the cache location depends on (injectable for tests).
#[derive(Debug, Clone, Default)]
pub struct HubEnv {
    /// `$HF_HUB_CACHE`.
    pub hf_hub_cache: Option<OsString>,
    /// `$HF_HOME`.
    pub hf_home: Option<OsString>,
    /// `$HOME`.
    pub home: Option<OsString>,
    /// `$HF_HUB_OFFLINE` set to a true value (`1`, `true`, `yes`, `on`): never download.
    pub offline: bool,
}

impl HubEnv {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            hf_hub_cache: nonempty("HF_HUB_CACHE"),
            hf_home: nonempty("HF_HOME"),
            home: nonempty("HOME"),
            offline,
        }
    }

    /// The hub cache root: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if let Some(c) = &self.hf_hub_cache {
            return Some(PathBuf::from(c));
        }
        if let Some(h) = &self.hf_home {
            return Some(PathBuf::from(h).join("hub"));
        }
        self.home.as_ref().map(|h| {
            PathBuf::from(h)
                .join(".cache")
                .join("huggingface")
                .join("hub")
        })
    }
}

/// Whether `s` has the shape of a hub repository id (`owner/name`, no other separators).
pub fn looks_like_repo_id(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match s.split_once('/') {
        Some((owner, name)) => ok(owner) && ok(name) && !name.contains('/'),
        None => false,
    }
}

/// The snapshot folder of `repo_id`'s `main` revision in the cache at `cache`, if present:
/// `refs/main` → `snapshots/<hash>`; without `refs/main`, the only snapshot when there is
/// exactly one. A `refs/main` that is not a plain name (`..`, a path) is refused: the
/// snapshot must lie inside the repository's `snapshots/` folder.
pub fn find_in_cache(cache: &Path, repo_id: &str) -> Result<Option<PathBuf>> {
    find_revision_in_cache(cache, repo_id, "main")
}

/// [`find_in_cache`] for a revision: a branch or tag name (`refs/<revision>`), or a commit
/// hash (`snapshots/<hash>` directly). Without the ref, `main` also accepts the only snapshot.
pub fn find_revision_in_cache(
    cache: &Path,
    repo_id: &str,
    revision: &str,
) -> Result<Option<PathBuf>> {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    if is_commit {
        let dir = snapshots.join(revision);
        return Ok(dir.is_dir().then_some(dir));
    }
    if revision.contains("..") || revision.starts_with('/') {
        return Err(PipelineError::ModelNotFound {
            spec: repo_id.to_string(),
            msg: format!("`{revision}` is not a revision name"),
        });
    }
    let refs_main = repo.join("refs").join(revision);
    if let Ok(hash) = std::fs::read_to_string(&refs_main) {
        let hash = hash.trim();
        let plain = !hash.is_empty()
            && hash != "."
            && hash != ".."
            && hash
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            return Err(crate::error::checkpoint(
                &refs_main,
                format!(
                    "`{}` is not a snapshot name (a commit hash); the cache entry is corrupt",
                    hash.escape_default()
                ),
            ));
        }
        let dir = snapshots.join(hash);
        return Ok(dir.is_dir().then_some(dir));
    }
    if revision != "main" {
        return Ok(None);
    }
    let Ok(rd) = std::fs::read_dir(&snapshots) else {
        return Ok(None);
    };
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    Ok(if dirs.len() == 1 { dirs.pop() } else { None })
}

/// Resolves a model: an existing directory is used as is; a hub id is looked up in the
/// cache. A hub id missing from the cache is [`PipelineError::NotInCache`] (a program may
/// download it and resolve again).
pub fn resolve_model(spec: &str, env: &HubEnv) -> Result<PathBuf> {
    resolve_model_at(spec, "main", env)
}

/// [`resolve_model`] at a revision of a hub id (ignored for a directory).
pub fn resolve_model_at(spec: &str, revision: &str, env: &HubEnv) -> Result<PathBuf> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let not_found = |msg: &str| PipelineError::ModelNotFound {
        spec: spec.to_string(),
        msg: msg.to_string(),
    };
    if as_path.exists() {
        return Err(not_found(
            "not a directory (a checkpoint is a folder in the diffusers layout)",
        ));
    }
    if !looks_like_repo_id(spec) {
        return Err(not_found(
            "no such directory (and not a Hugging Face id of the form owner/name)",
        ));
    }
    let cache = env.cache_dir();
    if let Some(c) = &cache
        && let Some(dir) = find_revision_in_cache(c, spec, revision)?
    {
        return Ok(dir);
    }
    Err(PipelineError::NotInCache {
        repo_id: spec.to_string(),
        cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_cache(root: &Path, repo: &str, hash: &str, with_ref: bool) -> PathBuf {
        let base = root.join(format!("models--{}", repo.replace('/', "--")));
        let snap = base.join("snapshots").join(hash);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("model_index.json"), "{}").unwrap();
        if with_ref {
            std::fs::create_dir_all(base.join("refs")).unwrap();
            std::fs::write(base.join("refs").join("main"), format!("{hash}\n")).unwrap();
        }
        snap
    }

    #[test]
    fn repo_id_shapes() {
        assert!(looks_like_repo_id("Qwen/Qwen-Image"));
        assert!(looks_like_repo_id("mlx-community/Qwen-Image-2512-4bit"));
        assert!(!looks_like_repo_id("Qwen-Image"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("./x"));
        assert!(!looks_like_repo_id("../x"));
    }

    #[test]
    fn cache_root_precedence() {
        let mut env = HubEnv {
            home: Some("/home/u".into()),
            ..Default::default()
        };
        assert_eq!(
            env.cache_dir().unwrap(),
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        env.hf_home = Some("/hf".into());
        assert_eq!(env.cache_dir().unwrap(), PathBuf::from("/hf/hub"));
        env.hf_hub_cache = Some("/cache".into());
        assert_eq!(env.cache_dir().unwrap(), PathBuf::from("/cache"));
    }

    #[test]
    fn resolves_refs_main_in_each_cache_location() {
        let tmp = tempfile::tempdir().unwrap();
        // ~/.cache/huggingface/hub
        let home = tmp.path().join("home");
        let snap = fake_cache(
            &home.join(".cache/huggingface/hub"),
            "Qwen/Qwen-Image",
            "abc123",
            true,
        );
        // a second, stale snapshot must not be picked
        fake_cache(
            &home.join(".cache/huggingface/hub"),
            "Qwen/Qwen-Image",
            "old999",
            false,
        );
        let env = HubEnv {
            home: Some(home.clone().into()),
            offline: true,
            ..Default::default()
        };
        assert_eq!(resolve_model("Qwen/Qwen-Image", &env).unwrap(), snap);

        // $HF_HOME/hub wins over HOME
        let hf_home = tmp.path().join("hfhome");
        let snap2 = fake_cache(&hf_home.join("hub"), "Qwen/Qwen-Image", "def456", true);
        let env = HubEnv {
            home: Some(home.clone().into()),
            hf_home: Some(hf_home.into()),
            offline: true,
            ..Default::default()
        };
        assert_eq!(resolve_model("Qwen/Qwen-Image", &env).unwrap(), snap2);

        // $HF_HUB_CACHE wins over both; no refs/main but a single snapshot
        let hub = tmp.path().join("hubcache");
        let snap3 = fake_cache(&hub, "Qwen/Qwen-Image", "0f0f", false);
        let env = HubEnv {
            hf_hub_cache: Some(hub.into()),
            ..env
        };
        assert_eq!(resolve_model("Qwen/Qwen-Image", &env).unwrap(), snap3);
    }

    #[test]
    fn refs_main_pointing_nowhere_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("models--Qwen--Qwen-Image");
        std::fs::create_dir_all(base.join("refs")).unwrap();
        std::fs::write(base.join("refs/main"), "missing").unwrap();
        assert!(
            find_in_cache(tmp.path(), "Qwen/Qwen-Image")
                .unwrap()
                .is_none()
        );
        // A ref that climbs out of snapshots/ is refused, not followed.
        for bad in ["../..", "..", "a/b", "/etc"] {
            std::fs::write(base.join("refs/main"), bad).unwrap();
            let e = find_in_cache(tmp.path(), "Qwen/Qwen-Image").unwrap_err();
            assert!(e.to_string().contains("not a snapshot name"), "{bad}: {e}");
        }
    }

    #[test]
    fn not_in_cache_is_typed_and_names_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let env = HubEnv {
            hf_hub_cache: Some(tmp.path().into()),
            offline: true,
            ..Default::default()
        };
        let err = resolve_model("Qwen/Qwen-Image", &env).unwrap_err();
        assert!(
            matches!(&err, PipelineError::NotInCache { repo_id, cache }
                if repo_id == "Qwen/Qwen-Image" && cache.as_deref() == Some(tmp.path())),
            "{err:?}"
        );
        assert!(err.to_string().contains(&tmp.path().display().to_string()));
        let err = resolve_model("no-such-dir", &env).unwrap_err().to_string();
        assert!(err.contains("no such directory"), "{err}");
    }

    #[test]
    fn a_directory_is_used_as_is() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().to_str().unwrap();
        assert_eq!(resolve_model(p, &HubEnv::default()).unwrap(), tmp.path());
    }
}
