//! Fetching a hub id natively (the library's `download` module) with one progress bar over
//! all files: bytes, rate, time left.

use std::path::PathBuf;

use indicatif::ProgressBar;
use qwen_image::download::{DownloadEvent, download_checkpoint, resolve_or_download};
use qwen_image::hub::HubEnv;
use qwen_image::settings::LoadSettings;

use crate::eout;

/// Resolves `spec` (a folder, or a hub id from the cache, downloaded into it at `load`'s
/// revision when missing or incomplete and not offline), showing download progress on
/// stderr.
pub fn resolve(spec: &str, load: &LoadSettings, env: &HubEnv) -> qwen_image::Result<PathBuf> {
    let mut bar = Bar::default();
    let revision = &load.revision;
    let dir = resolve_or_download(spec, revision, load.offline, env, &mut |e| {
        bar.on_event(spec, revision, e)
    })?;
    bar.finish();
    Ok(dir)
}

/// Downloads what the engine needs of `repo_id` (a hub id) at `revision` into the cache,
/// showing progress on stderr; returns the snapshot folder, checked to hold every component.
pub fn download(repo_id: &str, revision: &str, env: &HubEnv) -> qwen_image::Result<PathBuf> {
    let mut bar = Bar::default();
    let dir = download_checkpoint(repo_id, revision, env, &mut |e| {
        bar.on_event(repo_id, revision, e)
    })?;
    bar.finish();
    Ok(dir)
}

/// One bar over all files.
#[derive(Default)]
struct Bar(Option<ProgressBar>);

impl Bar {
    fn on_event(&mut self, repo_id: &str, revision: &str, e: DownloadEvent) {
        match e {
            DownloadEvent::Start { files: 0, .. } => {}
            DownloadEvent::Start { files, bytes } => {
                eout!(
                    "downloading {repo_id} ({revision}): {files} files, {:.2} GB, into the \
                     Hugging Face cache",
                    bytes as f64 / 1e9
                );
                self.0 = Some(crate::progress::bar(
                    bytes,
                    "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} \
                     [{elapsed_precise}<{eta_precise}] {msg}",
                ));
            }
            DownloadEvent::Progress { done } => {
                if let Some(b) = &self.0 {
                    b.set_position(done);
                }
            }
            DownloadEvent::FileDone { file } => {
                if let Some(b) = &self.0 {
                    b.set_message(file);
                }
            }
        }
    }

    fn finish(self) {
        if let Some(b) = self.0 {
            b.finish();
        }
    }
}
