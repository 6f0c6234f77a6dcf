//! `--model DIR|HUB_ID`: a checkpoint directory, or a Hugging Face repository id looked up in
//! the local Hugging Face cache (and optionally downloaded into it with the `hf` CLI).
//!
//! Cache layout (what `huggingface_hub` writes): `<cache>/models--<owner>--<name>/refs/main`
//! holds the commit hash of the `main` revision, and the files are under
//! `<cache>/models--<owner>--<name>/snapshots/<hash>/`. The cache root is `$HF_HUB_CACHE`,
//! else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

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
/// exactly one.
pub fn find_in_cache(cache: &Path, repo_id: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(hash) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(hash.trim());
        return dir.is_dir().then_some(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    if dirs.len() == 1 { dirs.pop() } else { None }
}

/// The command that downloads `repo_id` into the cache.
pub fn download_command(repo_id: &str) -> String {
    format!("hf download {repo_id}")
}

fn not_found_message(spec: &str, env: &HubEnv, extra: &str) -> String {
    let cache = env
        .cache_dir()
        .map(|c| c.display().to_string())
        .unwrap_or_else(|| "<no cache: HOME, HF_HOME and HF_HUB_CACHE are unset>".into());
    format!(
        "model `{spec}` is neither a directory nor in the Hugging Face cache ({cache}){extra}. \
         Download it with `{}` (install the CLI with `pip install -U huggingface_hub`), \
         or pass --model a directory in the diffusers layout",
        download_command(spec)
    )
}

/// A CLI that downloads from the hub, if one is on `PATH`: `hf`, else `huggingface-cli`.
fn downloader() -> Option<&'static str> {
    ["hf", "huggingface-cli"].into_iter().find(|cmd| {
        Command::new(cmd)
            .arg("--help")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Resolves `--model`: an existing directory is used as is; a hub id is looked up in the
/// cache. When it is not cached and downloading is allowed (`allow_download` and not
/// `HF_HUB_OFFLINE`), the `hf` (or `huggingface-cli`) program downloads it, showing its own
/// progress; without one, the error says exactly which command to run.
pub fn resolve_model(spec: &str, env: &HubEnv, allow_download: bool) -> Result<PathBuf> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    if as_path.exists() {
        return Err(PipelineError::ModelNotFound(format!(
            "--model {spec}: not a directory (a checkpoint is a folder in the diffusers layout)"
        )));
    }
    if !looks_like_repo_id(spec) {
        return Err(PipelineError::ModelNotFound(format!(
            "--model {spec}: no such directory (and not a Hugging Face id of the form owner/name)"
        )));
    }
    if let Some(dir) = env.cache_dir().and_then(|c| find_in_cache(&c, spec)) {
        return Ok(dir);
    }
    if !allow_download || env.offline {
        let why = if env.offline {
            " and HF_HUB_OFFLINE is set"
        } else {
            " and downloading is off"
        };
        return Err(PipelineError::ModelNotFound(not_found_message(
            spec, env, why,
        )));
    }
    let Some(cli) = downloader() else {
        return Err(PipelineError::ModelNotFound(not_found_message(
            spec,
            env,
            ", and no `hf` / `huggingface-cli` program is installed to download it",
        )));
    };
    eprintln!(
        "{spec} is not in the Hugging Face cache: downloading it with `{cli} download {spec}`"
    );
    let mut cmd = Command::new(cli);
    cmd.arg("download").arg(spec);
    if let Some(c) = &env.hf_hub_cache {
        cmd.arg("--cache-dir").arg(c);
    }
    let status = cmd.status().map_err(|e| {
        PipelineError::ModelNotFound(format!("could not run `{cli} download {spec}`: {e}"))
    })?;
    if !status.success() {
        return Err(PipelineError::ModelNotFound(format!(
            "`{cli} download {spec}` failed ({status}); check the network and run it by hand"
        )));
    }
    env.cache_dir()
        .and_then(|c| find_in_cache(&c, spec))
        .ok_or_else(|| {
            PipelineError::ModelNotFound(not_found_message(spec, env, " even after downloading"))
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
        assert_eq!(resolve_model("Qwen/Qwen-Image", &env, false).unwrap(), snap);

        // $HF_HOME/hub wins over HOME
        let hf_home = tmp.path().join("hfhome");
        let snap2 = fake_cache(&hf_home.join("hub"), "Qwen/Qwen-Image", "def456", true);
        let env = HubEnv {
            home: Some(home.clone().into()),
            hf_home: Some(hf_home.into()),
            offline: true,
            ..Default::default()
        };
        assert_eq!(
            resolve_model("Qwen/Qwen-Image", &env, false).unwrap(),
            snap2
        );

        // $HF_HUB_CACHE wins over both; no refs/main but a single snapshot
        let hub = tmp.path().join("hubcache");
        let snap3 = fake_cache(&hub, "Qwen/Qwen-Image", "0f0f", false);
        let env = HubEnv {
            hf_hub_cache: Some(hub.into()),
            ..env
        };
        assert_eq!(
            resolve_model("Qwen/Qwen-Image", &env, false).unwrap(),
            snap3
        );
    }

    #[test]
    fn refs_main_pointing_nowhere_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("models--Qwen--Qwen-Image");
        std::fs::create_dir_all(base.join("refs")).unwrap();
        std::fs::write(base.join("refs/main"), "missing").unwrap();
        assert!(find_in_cache(tmp.path(), "Qwen/Qwen-Image").is_none());
    }

    #[test]
    fn not_found_names_the_download_command() {
        let tmp = tempfile::tempdir().unwrap();
        let env = HubEnv {
            hf_hub_cache: Some(tmp.path().into()),
            offline: true,
            ..Default::default()
        };
        let err = resolve_model("Qwen/Qwen-Image", &env, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hf download Qwen/Qwen-Image"), "{err}");
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
        let err = resolve_model("no-such-dir", &env, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such directory"), "{err}");
    }

    #[test]
    fn a_directory_is_used_as_is() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().to_str().unwrap();
        assert_eq!(
            resolve_model(p, &HubEnv::default(), false).unwrap(),
            tmp.path()
        );
    }
}
