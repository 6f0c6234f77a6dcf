//! What the pipeline reports while it runs ([`Event`]) and what each phase cost ([`Timings`]).

use std::time::{Duration, Instant};

use mlx_rs::Dtype;

/// Pipeline phases, for progress reports and timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading the tokenizer and text encoder.
    LoadTextEncoder,
    /// Encoding the prompt(s).
    Encode,
    /// Encoding the init image with the VAE (img2img, inpainting).
    EncodeImage,
    /// Loading the transformer.
    LoadTransformer,
    /// The denoising loop.
    Denoise,
    /// Loading the VAE.
    LoadVae,
    /// Decoding latents to images.
    Decode,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::LoadTextEncoder => "loading text encoder",
            Phase::Encode => "encoding prompt",
            Phase::EncodeImage => "encoding image",
            Phase::LoadTransformer => "loading transformer",
            Phase::Denoise => "denoising",
            Phase::LoadVae => "loading VAE",
            Phase::Decode => "decoding",
        })
    }
}

/// What the pipeline reports while it runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// A phase begins.
    PhaseStart(Phase),
    /// A phase ended after the given time.
    PhaseEnd(Phase, Duration),
    /// A denoising step finished (its latents are evaluated).
    Step {
        /// Image index (0-based).
        image: usize,
        /// Images in the request.
        num_images: usize,
        /// Step index (0-based).
        step: usize,
        /// Steps per image.
        steps: usize,
        /// Time from the previous step's completion (or the loop's start) to this one's. The
        /// loop builds the next step's graph before waiting for this one, so when graph
        /// building outlasts the device work (tiny models on a CPU) the first step carries two
        /// builds and the last almost none; their sum is the loop's wall time.
        elapsed: Duration,
        /// dtype of the latents after the step (the compute dtype; anything else means a
        /// constant promoted the graph).
        latents_dtype: Dtype,
    },
    /// A non-fatal remark (prompt truncated, CFG disabled…).
    Warning(String),
}

/// Time and peak memory of one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseStats {
    /// Wall time.
    pub time: Duration,
    /// MLX peak memory during the phase, in bytes.
    pub peak_memory: usize,
}

/// Timings of one generation (`QwenImagePipeline::generate_with`).
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Loading the text encoder (tokenizer + weights).
    pub load_text_encoder: PhaseStats,
    /// Encoding the prompt (and negative prompt).
    pub encode: PhaseStats,
    /// Loading the VAE and encoding the init image (img2img, inpainting).
    pub encode_image: PhaseStats,
    /// Loading the transformer (zero when it was already loaded).
    pub load_transformer: PhaseStats,
    /// The denoising loops of all images.
    pub denoise: PhaseStats,
    /// Time of every denoising step, all images in order.
    pub step_times: Vec<Duration>,
    /// Loading the VAE.
    pub load_vae: PhaseStats,
    /// Decoding all images.
    pub decode: PhaseStats,
}

impl Timings {
    /// Mean time per denoising step.
    pub fn mean_step(&self) -> Duration {
        if self.step_times.is_empty() {
            Duration::ZERO
        } else {
            self.step_times.iter().sum::<Duration>() / self.step_times.len() as u32
        }
    }

    /// Total time spent loading weights.
    pub fn load_total(&self) -> Duration {
        self.load_text_encoder.time + self.load_transformer.time + self.load_vae.time
    }

    /// The largest per-phase peak.
    pub fn peak_memory(&self) -> usize {
        [
            self.load_text_encoder,
            self.encode,
            self.encode_image,
            self.load_transformer,
            self.denoise,
            self.load_vae,
            self.decode,
        ]
        .iter()
        .map(|p| p.peak_memory)
        .max()
        .unwrap_or(0)
    }
}

/// Times a phase and its MLX peak memory, reporting its start and end as events.
pub(crate) struct PhaseTimer {
    start: Instant,
}

impl PhaseTimer {
    pub(crate) fn start(phase: Phase, on_event: &mut dyn FnMut(Event)) -> Self {
        on_event(Event::PhaseStart(phase));
        let _ = mlx_rs::memory::reset_peak_memory();
        Self {
            start: Instant::now(),
        }
    }

    pub(crate) fn end(self, phase: Phase, on_event: &mut dyn FnMut(Event)) -> PhaseStats {
        let time = self.start.elapsed();
        on_event(Event::PhaseEnd(phase, time));
        PhaseStats {
            time,
            peak_memory: mlx_rs::memory::peak_memory().unwrap_or(0),
        }
    }
}
