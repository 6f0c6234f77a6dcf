//! Fetching a checkpoint from the Hugging Face hub into the standard cache, natively (the
//! `hf-hub` crate, the one candle uses; no Python).
//!
//! Only the files the engine reads are fetched: `model_index.json` and, in the component
//! folders (`scheduler/`, `text_encoder/`, `tokenizer/`, `transformer/`, `vae/`, and
//! `processor/` for the edit checkpoints), configs, tokenizer files and safetensors weights —
//! never READMEs, pictures, or PyTorch `.bin` / ONNX copies. Files go into the cache layout
//! `huggingface_hub` writes (`models--owner--name/{blobs,snapshots/<commit>,refs/<revision>}`),
//! so Python and this engine share one cache. A file already cached is not fetched again; a
//! partial one (`blobs/<etag>.part`) resumes with an HTTP range request, also across runs,
//! and a connection dropped mid-file is retried from where it stopped.
//!
//! Environment, as `huggingface_hub` reads it: `HF_ENDPOINT` (default
//! `https://huggingface.co`), `HF_TOKEN` (else the token file `$HF_HOME/token`),
//! `HF_HUB_CACHE` / `HF_HOME` (see [`crate::hub::HubEnv`]), `HF_HUB_OFFLINE` (no network).
//! Limits of the crate: it sets no read timeout, so a server that stops sending without
//! closing the connection stalls the download (interrupt it; it resumes).

use std::path::{Path, PathBuf};

use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{PipelineError, Result};
use crate::hub::HubEnv;

/// Component folders whose files the engine may read.
const COMPONENT_DIRS: [&str; 6] = [
    "scheduler",
    "text_encoder",
    "tokenizer",
    "transformer",
    "vae",
    "processor",
];

/// Whether the engine reads `path` (a file of the repository).
pub fn is_needed(path: &str) -> bool {
    if path == "model_index.json" {
        return true;
    }
    let Some((dir, name)) = path.split_once('/') else {
        return false;
    };
    if !COMPONENT_DIRS.contains(&dir) || name.contains('/') {
        return false;
    }
    name.ends_with(".json")
        || name.ends_with(".safetensors")
        || name == "merges.txt"
        || name.ends_with(".jinja")
}

/// Progress of a download, for a display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadEvent {
    /// The files to fetch are known (already cached files are not counted).
    Start {
        /// Files to fetch.
        files: usize,
        /// Their total size in bytes.
        bytes: u64,
    },
    /// Bytes done so far, over all files (a resumed file counts its existing part).
    Progress {
        /// Bytes done.
        done: u64,
    },
    /// A file is complete.
    FileDone {
        /// Its path in the repository.
        file: String,
    },
}

/// Bridges `hf-hub`'s per-file progress to one running total.
struct Total<'a> {
    before: u64,
    file: u64,
    on_event: &'a mut dyn FnMut(DownloadEvent),
}

impl Progress for Total<'_> {
    fn init(&mut self, _size: usize, _filename: &str) {
        self.file = 0;
    }
    fn update(&mut self, size: usize) {
        self.file += size as u64;
        (self.on_event)(DownloadEvent::Progress {
            done: self.before + self.file,
        });
    }
    fn finish(&mut self) {}
}

fn hub_err(repo_id: &str, msg: impl Into<String>) -> PipelineError {
    PipelineError::Download {
        repo_id: repo_id.to_string(),
        msg: msg.into(),
    }
}

/// A readable message for an `hf-hub` error, with what to do for the usual HTTP statuses.
fn describe(e: &ApiError, token: bool) -> String {
    if let ApiError::RequestError(r) = e
        && let ureq::Error::StatusCode(code) = **r
    {
        return match code {
            401 | 403 if token => format!(
                "HTTP {code}: the token (HF_TOKEN) has no access to this repository (accept its \
                 license on the hub, or use a token that has access)"
            ),
            401 | 403 => format!(
                "HTTP {code}: this repository needs a token: set HF_TOKEN (or log in with \
                 `hf auth login`)"
            ),
            404 => "HTTP 404: no such repository, revision or file on the hub".to_string(),
            _ => format!("HTTP {code}"),
        };
    }
    match e {
        ApiError::TooManyRetries(inner) => {
            format!("the connection kept failing: {}", describe(inner, token))
        }
        other => other.to_string(),
    }
}

/// The token to send: `HF_TOKEN`, else the token file `huggingface_hub` writes
/// (`$HF_HOME/token`, else `~/.cache/huggingface/token`).
fn token(env: &HubEnv) -> Option<String> {
    if let Ok(t) = std::env::var("HF_TOKEN")
        && !t.trim().is_empty()
    {
        return Some(t.trim().to_string());
    }
    let file = match (&env.hf_home, &env.home) {
        (Some(h), _) => PathBuf::from(h).join("token"),
        (None, Some(home)) => PathBuf::from(home).join(".cache/huggingface/token"),
        (None, None) => return None,
    };
    std::fs::read_to_string(file)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Downloads the files the engine needs of `repo_id` at `revision` into the cache of `env`
/// (see the module docs) and returns the snapshot folder. Fails, naming the repository and
/// what to do, on an HTTP error (401 without a token, 404…), when offline, or when the
/// repository is not a diffusers checkpoint (no `model_index.json`).
pub fn download_model(
    repo_id: &str,
    revision: &str,
    env: &HubEnv,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> Result<PathBuf> {
    if env.offline {
        return Err(hub_err(
            repo_id,
            "offline (HF_HUB_OFFLINE): nothing is downloaded",
        ));
    }
    let cache = env
        .cache_dir()
        .ok_or_else(|| hub_err(repo_id, "no cache location: set HF_HUB_CACHE or HF_HOME"))?;
    let token = token(env);
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.clone()))
        .with_progress(false)
        .with_token(token.clone())
        .with_retries(5);
    if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder
        .build()
        .map_err(|e| hub_err(repo_id, describe(&e, token.is_some())))?;
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let api_repo = api.repo(repo.clone());
    let info = api_repo
        .info()
        .map_err(|e| hub_err(repo_id, describe(&e, token.is_some())))?;
    let wanted: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| is_needed(f))
        .collect();
    if !wanted.iter().any(|f| f == "model_index.json") {
        return Err(hub_err(
            repo_id,
            "no model_index.json: not a diffusers checkpoint (qwen-image needs the diffusers \
             layout, e.g. Qwen/Qwen-Image)",
        ));
    }
    // Sizes of what is not cached yet, for one progress total.
    let cached = Cache::new(cache).repo(repo.clone());
    let mut todo = Vec::new();
    let mut bytes = 0u64;
    for f in &wanted {
        if cached.get(f).is_some() {
            continue;
        }
        let meta = api
            .metadata(&api_repo.url(f))
            .map_err(|e| hub_err(repo_id, format!("{f}: {}", describe(&e, token.is_some()))))?;
        bytes += meta.size() as u64;
        todo.push((f.clone(), meta.size() as u64));
    }
    on_event(DownloadEvent::Start {
        files: todo.len(),
        bytes,
    });
    let mut before = 0u64;
    let mut last = None;
    for (f, size) in &todo {
        let path = api_repo
            .download_with_progress(
                f,
                Total {
                    before,
                    file: 0,
                    on_event: &mut *on_event,
                },
            )
            .map_err(|e| hub_err(repo_id, format!("{f}: {}", describe(&e, token.is_some()))))?;
        let got = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if got != *size {
            return Err(hub_err(
                repo_id,
                format!("{f}: {got} bytes arrived, the hub announced {size}; run again to resume"),
            ));
        }
        before += size;
        on_event(DownloadEvent::FileDone { file: f.clone() });
        last = Some(path);
    }
    // The snapshot folder: from a file just fetched, else from the cache's ref.
    let snapshot = match last {
        Some(p) => snapshot_of(&p, &wanted),
        None => cached
            .get("model_index.json")
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    };
    snapshot.ok_or_else(|| hub_err(repo_id, "the snapshot folder is missing after the download"))
}

/// The snapshot folder holding `file` (one of `wanted`, relative paths).
fn snapshot_of(file: &Path, wanted: &[String]) -> Option<PathBuf> {
    let depth = wanted
        .iter()
        .find(|w| file.ends_with(w))
        .map_or(0, |w| w.split('/').count());
    let mut dir = file.to_path_buf();
    for _ in 0..depth {
        dir = dir.parent()?.to_path_buf();
    }
    Some(dir)
}

/// [`download_model`] for a checkpoint the pipeline can open: `repo_id` must look like a
/// hub id ([`PipelineError::NotARepoId`] otherwise, before anything is fetched), and the
/// snapshot must hold every component ([`crate::ComponentPaths::from_root`]).
pub fn download_checkpoint(
    repo_id: &str,
    revision: &str,
    env: &HubEnv,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> Result<PathBuf> {
    if !crate::hub::looks_like_repo_id(repo_id) {
        return Err(PipelineError::NotARepoId {
            spec: repo_id.to_string(),
        });
    }
    let dir = download_model(repo_id, revision, env, on_event)?;
    crate::ComponentPaths::from_root(&dir)?;
    Ok(dir)
}

/// A model folder for `spec` (see [`crate::hub::resolve_model_at`]): a directory as is; a hub
/// id from the cache when its snapshot is complete ([`crate::checkpoint::is_complete`]),
/// otherwise downloaded with [`download_model`] — unless `offline` (or `HF_HUB_OFFLINE`), when
/// a missing id is [`PipelineError::NotInCache`].
pub fn resolve_or_download(
    spec: &str,
    revision: &str,
    offline: bool,
    env: &HubEnv,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> Result<PathBuf> {
    let offline = offline || env.offline;
    match crate::hub::resolve_model_at(spec, revision, env) {
        Ok(dir) if Path::new(spec).is_dir() || offline => Ok(dir),
        Ok(dir) if crate::checkpoint::is_complete(&dir) => Ok(dir),
        Ok(_) | Err(PipelineError::NotInCache { .. }) if !offline => {
            download_model(spec, revision, env, on_event)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hub_ids_are_downloaded() {
        let env = HubEnv {
            offline: true,
            ..Default::default()
        };
        let e = download_checkpoint("/some/folder", "main", &env, &mut |_| {});
        assert_eq!(
            e.err().map(|e| e.to_string()).as_deref(),
            Some("/some/folder is not a Hugging Face id of the form owner/name")
        );
        // A hub id goes on to the download (refused here: offline).
        let e = download_checkpoint("Qwen/Qwen-Image", "main", &env, &mut |_| {});
        assert!(matches!(e, Err(PipelineError::Download { .. })), "{e:?}");
    }

    #[test]
    fn only_the_files_the_engine_reads() {
        for f in [
            "model_index.json",
            "transformer/config.json",
            "transformer/diffusion_pytorch_model-00001-of-00009.safetensors",
            "transformer/diffusion_pytorch_model.safetensors.index.json",
            "text_encoder/model-00001-of-00004.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/vocab.json",
            "tokenizer/chat_template.jinja",
            "processor/preprocessor_config.json",
            "scheduler/scheduler_config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ] {
            assert!(is_needed(f), "{f}");
        }
        for f in [
            "README.md",
            ".gitattributes",
            "assets/fox.png",
            "transformer/diffusion_pytorch_model.bin",
            "text_encoder/model.onnx",
            "vae/sub/x.safetensors",
            "LICENSE",
        ] {
            assert!(!is_needed(f), "{f}");
        }
    }
}
