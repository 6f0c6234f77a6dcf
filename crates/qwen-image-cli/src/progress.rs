//! Progress on stderr: a line per pipeline phase, a bar over the denoising steps with
//! warnings above it, and a bar over a model's download (bytes, rate, time left; the library's
//! `download` module fetches natively).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use qwen_image::download::{DownloadEvent, download_checkpoint, resolve_or_download};
use qwen_image::hub::HubEnv;
use qwen_image::settings::LoadSettings;
use qwen_image::{Event, Phase};

use crate::eout;

/// A bar shown while its work runs (none before it starts).
#[derive(Default)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// Shows a bar of `len` units drawn with indicatif's `template` (the default style if it
    /// does not parse).
    fn start(&mut self, len: u64, template: &str) {
        let b = ProgressBar::new(len);
        b.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        self.0 = Some(b);
    }

    /// Ends the bar, leaving it on screen.
    fn finish(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish();
        }
    }

    /// Shows one pipeline event of a run of `total_steps` denoising steps (all images).
    pub fn on_event(&mut self, e: Event, total_steps: usize) {
        match e {
            Event::PhaseStart(Phase::Denoise) => self.start(
                total_steps as u64,
                "denoising {bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
            ),
            Event::PhaseStart(p) => eout!("{p} …"),
            Event::PhaseEnd(Phase::Denoise, _) => self.finish(),
            Event::PhaseEnd(..) => {}
            Event::Step {
                image,
                num_images,
                elapsed,
                ..
            } => {
                if let Some(b) = &self.0 {
                    let ms = elapsed.as_secs_f64() * 1e3;
                    b.set_message(if num_images > 1 {
                        format!("image {}/{num_images}, {ms:.0} ms/step", image + 1)
                    } else {
                        format!("{ms:.0} ms/step")
                    });
                    b.inc(1);
                }
            }
            Event::Warning(w) => match &self.0 {
                Some(b) => b.println(format!("warning: {w}")),
                None => eout!("warning: {w}"),
            },
        }
    }

    /// Shows one event of the download of `repo_id` at `revision`: one bar over all files.
    fn on_download(&mut self, repo_id: &str, revision: &str, e: DownloadEvent) {
        match e {
            DownloadEvent::Start { files: 0, .. } => {}
            DownloadEvent::Start { files, bytes } => {
                eout!(
                    "downloading {repo_id} ({revision}): {files} files, {:.2} GB, into the \
                     Hugging Face cache",
                    bytes as f64 / 1e9
                );
                self.start(
                    bytes,
                    "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} \
                     [{elapsed_precise}<{eta_precise}] {msg}",
                );
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
}

/// Resolves `spec` (a folder, or a hub id from the cache of the process's environment,
/// downloaded into it at `load`'s revision when missing or incomplete and not offline),
/// showing download progress on stderr.
pub fn resolve(spec: &str, load: &LoadSettings) -> qwen_image::Result<PathBuf> {
    let env = HubEnv::from_process();
    let mut bar = Bar::default();
    let revision = &load.revision;
    let dir = resolve_or_download(spec, revision, load.offline, &env, &mut |e| {
        bar.on_download(spec, revision, e)
    })?;
    bar.finish();
    Ok(dir)
}

/// Downloads what the engine needs of `repo_id` (a hub id) at `revision` into the cache of
/// the process's environment, showing progress on stderr; returns the snapshot folder,
/// checked to hold every component.
pub fn download(repo_id: &str, revision: &str) -> qwen_image::Result<PathBuf> {
    let env = HubEnv::from_process();
    let mut bar = Bar::default();
    let dir = download_checkpoint(repo_id, revision, &env, &mut |e| {
        bar.on_download(repo_id, revision, e)
    })?;
    bar.finish();
    Ok(dir)
}
