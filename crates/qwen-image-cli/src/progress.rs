//! The progress display: a line per phase, a bar over the denoising steps, warnings above it.

use indicatif::{ProgressBar, ProgressStyle};
use qwen_image::{Event, Phase};

use crate::eout;

/// A bar of `len` units drawn with indicatif's `template` (the default style if it does not
/// parse).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// Turns the pipeline's events into a progress display on stderr.
pub struct Progress {
    total_steps: u64,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A display for a run of `total_steps` denoising steps (all images).
    pub fn new(total_steps: usize) -> Self {
        Self {
            total_steps: total_steps as u64,
            bar: None,
        }
    }

    /// Shows one event.
    pub fn on_event(&mut self, e: Event) {
        match e {
            Event::PhaseStart(Phase::Denoise) => {
                self.bar = Some(bar(
                    self.total_steps,
                    "denoising {bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                ));
            }
            Event::PhaseStart(p) => eout!("{p} …"),
            Event::PhaseEnd(Phase::Denoise, _) => {
                if let Some(b) = self.bar.take() {
                    b.finish();
                }
            }
            Event::PhaseEnd(..) => {}
            Event::Step {
                image,
                num_images,
                elapsed,
                ..
            } => {
                if let Some(b) = &self.bar {
                    let ms = elapsed.as_secs_f64() * 1e3;
                    b.set_message(if num_images > 1 {
                        format!("image {}/{num_images}, {ms:.0} ms/step", image + 1)
                    } else {
                        format!("{ms:.0} ms/step")
                    });
                    b.inc(1);
                }
            }
            Event::Warning(w) => match &self.bar {
                Some(b) => b.println(format!("warning: {w}")),
                None => eout!("warning: {w}"),
            },
        }
    }
}
