//! The text-to-image pipeline (diffusers `QwenImagePipeline.__call__`), with memory staging:
//! the text encoder is loaded, run and freed before the transformer is loaded; the VAE is
//! loaded only after denoising.
//!
//! Components come from a checkpoint folder ([`QwenImagePipeline::load`]) or from builders
//! that make them in memory ([`QwenImagePipeline::from_builders`], e.g. random full-size
//! weights for benchmarks); both follow the same staging.
//!
//! The denoising loop evaluates each step once, asynchronously: step `i + 1`'s graph is built
//! while the device still runs step `i`, and the host blocks only to report step `i`.

use std::path::Path;
use std::time::{Duration, Instant};

use flow_scheduler::FlowMatchEulerScheduler;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::transforms::async_eval;
use mlx_rs::{Array, Dtype, ops};
use qwen_dit::{QuantizeSpec, QwenImageTransformer, RopeTables};
use qwen_text_encoder::{MAX_SEQUENCE_LENGTH_LIMIT, TextEncoder};
use qwen_vae::{QwenImageVae, TilingConfig};

use crate::checkpoint::{CheckpointConfigs, ComponentPaths};
use crate::error::{PipelineError, Result};
use crate::latents::{pack_latents, seeded_noise, unpack_latents};
use crate::output::Image;

/// The pipeline divides the scheduler's timestep by this before the transformer sees it
/// (`timestep / 1000` in `QwenImagePipeline.__call__`).
const TIMESTEP_DIVISOR: f32 = 1000.0;

/// Largest image width or height accepted, in pixels.
///
/// Qwen-Image was trained up to 1664 px a side; 8192 px is about 5× that. The cap keeps every
/// size the pipeline derives far inside MLX's `i32` shapes (latent sides ≤ 1024; at most
/// 512² = 262 144 image tokens, so the host RoPE tables of (tokens + text) × head_dim/2 f32
/// stay below 17 M elements) and inside what the reference can run: diffusers'
/// `QwenEmbedRope` precomputes 4096 positions per axis; image positions are centred
/// (|row|, |column| ≤ side/16/2 ≤ 256) and text positions run from max(rows, columns)/2 ≤ 256
/// to below 256 + 1024 (the longest prompt) = 1280 < 4096.
pub const MAX_IMAGE_SIDE: usize = 8192;

/// Largest number of denoising steps accepted: the scheduler's 1000 training timesteps
/// (diffusers' `num_train_timesteps`); more steps do not refine the flow-matching schedule
/// usefully and a huge value would only allocate a huge σ table.
pub const MAX_STEPS: usize = 1000;

/// Largest number of images per request: images are denoised one after another and kept in
/// memory (latents and 8-bit RGB) until the request ends, so this bounds that memory (64
/// images of 1328² RGB ≈ 340 MB) and the run time, and keeps `steps × images` small.
pub const MAX_NUM_IMAGES: usize = 64;

/// How a pipeline is loaded.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Compute dtype of every component (f32, bf16 or f16; fp16 activations overflow in the
    /// DiT, prefer bf16 on GPUs and f32 on CPUs).
    pub dtype: Dtype,
    /// Quantize the transformer's float Linear layers when loading it.
    pub quantize: Option<QuantizeSpec>,
    /// Keep the transformer loaded between [`QwenImagePipeline::generate`] calls (faster
    /// repeated generation) instead of freeing it before the VAE decode (lower peak memory).
    pub keep_transformer: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            dtype: Dtype::Float32,
            quantize: None,
            keep_transformer: true,
        }
    }
}

/// Under [`VaeTiling::Auto`], images with more pixels than this (2²¹ ≈ 2.1 MPx, about 1448²)
/// are decoded tile by tile.
///
/// Every size Qwen-Image was trained for (1328², 1664×928, 1472×1140, 1584×1056 and their
/// transposes, at most 1.77 MPx) stays untiled, as in diffusers' default pipeline (which
/// does not tile). Untiled decode memory grows with about the square of the pixel count (the
/// VAE's mid-block attention spans every latent position): 9.4 GiB at 1328² on an H100,
/// so roughly 13 GiB at this threshold, 17 GiB at 2048×1152 and over 50 GiB at 2048², while
/// a tiled decode stays bounded (see [`DEFAULT_VAE_TILE_SIZE`]). 2048×1152 (2.36 MPx) and
/// larger images are tiled.
pub const AUTO_TILING_MIN_PIXELS: usize = 1 << 21;

/// Tile size in pixels of [`VaeTiling::default`] (stride 3/4 of it: 768 px, so tiles overlap
/// by 256 px, the same 1/4 as diffusers' 256/192 tiles).
///
/// Larger than diffusers' 256 px because it is much faster for a still bounded memory:
/// measured on an H100, a 2048² decode takes 182 ms and peaks at 5.7 GiB with 1024/768 tiles
/// against 556 ms and 0.67 GiB with 256/192 tiles (9 instead of 121 tiles). The peak depends
/// on the tile, not the image, and stays below the 9.4 GiB that an untiled 1328² decode (an
/// official size) needs anyway. Use 256 where memory is tight.
pub const DEFAULT_VAE_TILE_SIZE: usize = 1024;

/// How the VAE decodes the final latents: whole images at once ([`QwenImageVae::decode`]) or
/// tile by tile with overlapping, blended tiles ([`QwenImageVae::decode_tiled`], diffusers'
/// `vae.enable_tiling()`), which bounds memory by one tile's activations.
///
/// Tiled and untiled decodes differ slightly (each tile's mid-block attention sees only the
/// tile; the overlaps are blended linearly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeTiling {
    /// Tile, with these tiles, only images with more than [`AUTO_TILING_MIN_PIXELS`] pixels.
    Auto(TilingConfig),
    /// Always tile, with these tiles.
    On(TilingConfig),
    /// Never tile.
    Off,
}

impl Default for VaeTiling {
    /// `Auto` with [`DEFAULT_VAE_TILE_SIZE`] tiles (1024 px, stride 768 px).
    fn default() -> Self {
        let (size, stride) = (DEFAULT_VAE_TILE_SIZE, DEFAULT_VAE_TILE_SIZE * 3 / 4);
        VaeTiling::Auto(TilingConfig {
            tile_sample_min_height: size,
            tile_sample_min_width: size,
            tile_sample_stride_height: stride,
            tile_sample_stride_width: stride,
        })
    }
}

impl VaeTiling {
    /// Square tiles of `size` pixels whose stride is 3/4 of the size (the overlap diffusers'
    /// 256/192 default has), rounded down to a multiple of the VAE's spatial compression
    /// `ratio` (8 for Qwen-Image), and at least `ratio`. The result is not checked here:
    /// [`QwenImagePipeline::validate`] rejects sizes the VAE cannot tile with (not a positive
    /// multiple of `ratio`).
    pub fn square_tiles(size: usize, ratio: usize) -> TilingConfig {
        let ratio = ratio.max(1);
        let stride = (size * 3 / 4 / ratio * ratio).max(ratio);
        TilingConfig {
            tile_sample_min_height: size,
            tile_sample_min_width: size,
            tile_sample_stride_height: stride,
            tile_sample_stride_width: stride,
        }
    }

    /// The tiles an image of `width × height` pixels is decoded with (`None`: untiled).
    pub fn tiles_for(&self, width: usize, height: usize) -> Option<TilingConfig> {
        match *self {
            VaeTiling::On(t) => Some(t),
            VaeTiling::Auto(t) if width.saturating_mul(height) > AUTO_TILING_MIN_PIXELS => Some(t),
            VaeTiling::Auto(_) | VaeTiling::Off => None,
        }
    }

    /// The tiles of `Auto` / `On` (whether or not a given image uses them).
    pub fn tiles(&self) -> Option<TilingConfig> {
        match *self {
            VaeTiling::Auto(t) | VaeTiling::On(t) => Some(t),
            VaeTiling::Off => None,
        }
    }
}

/// Where the initial noise comes from.
#[derive(Debug, Clone)]
pub enum Noise {
    /// MLX's normal generator; image `i` uses seed `seed + i` (so image 3 of a run with seed
    /// 42 is image 0 of a run with seed 45).
    Seed(u64),
    /// Given unpacked latents `(num_images, 1, z_dim, H/r, W/r)` (diffusers' noise layout).
    Latents(Array),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The prompt (must not be empty).
    pub prompt: String,
    /// The negative prompt; true CFG runs only with one and `true_cfg_scale > 1`.
    pub negative_prompt: Option<String>,
    /// True classifier-free guidance scale (diffusers' default 4.0).
    pub true_cfg_scale: f32,
    /// Denoising steps (≥ 1; diffusers' default 50).
    pub steps: usize,
    /// Image width in pixels, a multiple of [`CheckpointConfigs::size_multiple`] (16).
    pub width: usize,
    /// Image height in pixels, a multiple of [`CheckpointConfigs::size_multiple`] (16).
    pub height: usize,
    /// Number of images (generated one after another with the same prompt).
    pub num_images: usize,
    /// Initial noise.
    pub noise: Noise,
    /// Prompt tokens kept after the template (1..=1024, default 512).
    pub max_sequence_length: usize,
    /// Whole-image or tiled VAE decode (default: [`VaeTiling::Auto`] with 1024 px tiles).
    pub vae_tiling: VaeTiling,
}

impl GenerateRequest {
    /// A request with diffusers' defaults: 1024×1024, 50 steps, true CFG scale 4, no negative
    /// prompt, one image, seed 0, max_sequence_length 512; VAE tiling
    /// [`VaeTiling::default`] (only images above [`AUTO_TILING_MIN_PIXELS`] are tiled).
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: None,
            true_cfg_scale: 4.0,
            steps: 50,
            width: 1024,
            height: 1024,
            num_images: 1,
            noise: Noise::Seed(0),
            max_sequence_length: qwen_text_encoder::DEFAULT_MAX_SEQUENCE_LENGTH,
            vae_tiling: VaeTiling::default(),
        }
    }

    /// Whether this request runs true CFG (scale > 1 and a negative prompt).
    pub fn does_true_cfg(&self) -> bool {
        self.true_cfg_scale > 1.0 && self.negative_prompt.is_some()
    }
}

/// Pipeline phases, for progress reports and timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading the tokenizer and text encoder.
    LoadTextEncoder,
    /// Encoding the prompt(s).
    Encode,
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

/// Timings of one [`QwenImagePipeline::generate_with`] call.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Loading the text encoder (tokenizer + weights).
    pub load_text_encoder: PhaseStats,
    /// Encoding the prompt (and negative prompt).
    pub encode: PhaseStats,
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

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The images, 8-bit RGB.
    pub images: Vec<Image>,
    /// Per-phase time and memory.
    pub timings: Timings,
    /// Remarks made on the way (also sent as [`Event::Warning`]).
    pub warnings: Vec<String>,
    /// Linear layers of the transformer that run quantized.
    pub quantized_layers: usize,
    /// The tiles the VAE decoded with (`None`: whole images), as
    /// [`VaeTiling::tiles_for`] chose them for the request.
    pub vae_tiles: Option<TilingConfig>,
    /// Each image's final denoised latents, packed `(1, (h/p)·(w/p), z·p²)` as the transformer
    /// works on them (before unpacking and de-normalisation), evaluated.
    pub latents: Vec<Array>,
}

/// Makes one component in memory, in the given compute dtype (see
/// [`QwenImagePipeline::from_builders`]). Called each time the pipeline's staging needs the
/// component.
pub type Builder<T> = Box<dyn FnMut(Dtype) -> Result<T>>;

/// Builders of the three weighted components of an in-memory pipeline (the tokenizer is part
/// of the [`TextEncoder`]).
pub struct ComponentBuilders {
    /// The tokenizer + text encoder; built at the start of every generation and freed after
    /// encoding.
    pub text_encoder: Builder<TextEncoder>,
    /// The transformer; built after the text encoder is freed (kept between generations
    /// when [`PipelineOptions::keep_transformer`]).
    pub transformer: Builder<QwenImageTransformer>,
    /// The VAE; built after denoising and freed after decoding.
    pub vae: Builder<QwenImageVae>,
}

impl std::fmt::Debug for ComponentBuilders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ComponentBuilders { .. }")
    }
}

/// Where the components come from.
#[derive(Debug)]
enum Source {
    /// A checkpoint folder in the diffusers layout.
    Disk(ComponentPaths),
    /// Builders that make them in memory.
    Memory(ComponentBuilders),
}

/// Qwen-Image text-to-image on MLX.
pub struct QwenImagePipeline {
    source: Source,
    configs: CheckpointConfigs,
    options: PipelineOptions,
    transformer: Option<QwenImageTransformer>,
}

impl std::fmt::Debug for QwenImagePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let root = match &self.source {
            Source::Disk(p) => Some(&p.root),
            Source::Memory(_) => None,
        };
        f.debug_struct("QwenImagePipeline")
            .field("root", &root)
            .field("dtype", &self.options.dtype)
            .field("transformer_loaded", &self.transformer.is_some())
            .finish()
    }
}

struct PhaseTimer {
    start: Instant,
}

impl PhaseTimer {
    fn start(phase: Phase, on_event: &mut dyn FnMut(Event)) -> Self {
        on_event(Event::PhaseStart(phase));
        let _ = mlx_rs::memory::reset_peak_memory();
        Self {
            start: Instant::now(),
        }
    }

    fn end(self, phase: Phase, on_event: &mut dyn FnMut(Event)) -> PhaseStats {
        let time = self.start.elapsed();
        on_event(Event::PhaseEnd(phase, time));
        PhaseStats {
            time,
            peak_memory: mlx_rs::memory::peak_memory().unwrap_or(0),
        }
    }
}

fn check_options(options: &PipelineOptions) -> Result<()> {
    if !matches!(
        options.dtype,
        Dtype::Float32 | Dtype::Bfloat16 | Dtype::Float16
    ) {
        return Err(PipelineError::InvalidRequest(format!(
            "dtype {:?} is not supported (f32, bf16 or f16)",
            options.dtype
        )));
    }
    if let Some(q) = &options.quantize {
        q.validate()?;
    }
    Ok(())
}

/// Fails with [`PipelineError::NonFiniteLatents`] when any of the final latents holds a NaN or
/// an infinity: one `all(isfinite)` reduction per image, stacked and evaluated once (a few
/// kilobytes of work, against a decode that would silently give black images).
pub fn check_finite(latents: &[Array], dtype: Dtype) -> Result<()> {
    if latents.is_empty() {
        return Ok(());
    }
    let flags = latents
        .iter()
        .map(|x| x.is_finite()?.all(None))
        .collect::<std::result::Result<Vec<Array>, _>>()?;
    let flags = ops::stack(&flags, 0)?;
    flags.eval()?;
    let bad: Vec<usize> = flags
        .as_slice::<bool>()
        .iter()
        .enumerate()
        .filter_map(|(i, &ok)| (!ok).then_some(i))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        let advice = match dtype {
            Dtype::Float16 => {
                "f16 activations overflowed (the text encoder and the transformer exceed f16's \
                 range); use bf16 (`--dtype bf16`) or f32 (`--dtype f32`)"
            }
            Dtype::Bfloat16 => {
                "try f32 (`--dtype f32`); if that fails too, check the weights and the initial \
                 latents (--init-latents) for NaN or infinity"
            }
            _ => {
                "not a reduced-precision overflow: check the weights and the initial latents \
                 (--init-latents) for NaN or infinity (with f16, use `--dtype bf16`)"
            }
        };
        Err(PipelineError::NonFiniteLatents {
            images: bad,
            dtype,
            advice: advice.into(),
        })
    }
}

fn scalar(v: f32, dtype: Dtype) -> Result<Array> {
    Ok(Array::from_f32(v).as_dtype(dtype)?)
}

/// True CFG as the pipeline computes it: `comb = neg + s·(cond − neg)`, then
/// `comb · ‖cond‖ / ‖comb‖` with L2 norms per token over channels. Computed in f32 and
/// returned in `cond`'s dtype.
pub fn true_cfg_combine(cond: &Array, neg: &Array, scale: f32) -> Result<Array> {
    let dt = cond.dtype();
    let c = cond.as_dtype(Dtype::Float32)?;
    let n = neg.as_dtype(Dtype::Float32)?;
    let comb = n.add(&c.subtract(&n)?.multiply(Array::from_f32(scale))?)?;
    let c_norm = ops::sqrt(&ops::sum_axis(&c.square()?, -1, true)?)?;
    let comb_norm = ops::sqrt(&ops::sum_axis(&comb.square()?, -1, true)?)?;
    Ok(comb.multiply(&c_norm.divide(&comb_norm)?)?.as_dtype(dt)?)
}

impl QwenImagePipeline {
    /// Opens a checkpoint folder in the diffusers layout: reads `model_index.json` and every
    /// component config, checks that they fit together and that every weight file is
    /// complete. No weights are loaded here (see the type's staging).
    pub fn load(model_dir: &Path, options: PipelineOptions) -> Result<Self> {
        check_options(&options)?;
        let paths = ComponentPaths::from_root(model_dir)?;
        let configs = paths.read_configs()?;
        paths.check_files()?;
        // The tokenizer is small: load it now so that a broken one fails before heavy work.
        qwen_text_encoder::QwenTokenizer::from_dir(&paths.tokenizer)?;
        Ok(Self {
            source: Source::Disk(paths),
            configs,
            options,
            transformer: None,
        })
    }

    /// A pipeline whose components are made in memory by `builders` instead of read from a
    /// checkpoint folder, with the same staging as [`Self::load`]: the text encoder is built,
    /// run and dropped before the transformer is built, the VAE is built after denoising.
    /// `configs` must describe what the builders make (sizes, the scheduler); they are checked
    /// to fit together here. With [`PipelineOptions::quantize`], the built transformer is
    /// quantized before its first use.
    pub fn from_builders(
        configs: CheckpointConfigs,
        options: PipelineOptions,
        builders: ComponentBuilders,
    ) -> Result<Self> {
        check_options(&options)?;
        configs.transformer.validate()?;
        configs.vae.validate()?;
        let (p, z) = (configs.patch_size(), configs.latent_channels());
        let t = &configs.transformer;
        if t.in_channels != z * p * p
            || t.out_channels() != z
            || t.joint_attention_dim != configs.text.hidden_size
        {
            return Err(PipelineError::InvalidRequest(format!(
                "components do not fit together: transformer in/out channels {}/{} and joint \
                 dim {}; VAE z_dim {z} (patch {p}); text hidden size {}",
                t.in_channels,
                t.out_channels(),
                t.joint_attention_dim,
                configs.text.hidden_size
            )));
        }
        // Rejects a scheduler config the scheduler cannot run, before any heavy work.
        FlowMatchEulerScheduler::new(configs.scheduler.clone())?;
        Ok(Self {
            source: Source::Memory(builders),
            configs,
            options,
            transformer: None,
        })
    }

    /// The component folders (`None` for a pipeline made with [`Self::from_builders`]).
    pub fn paths(&self) -> Option<&ComponentPaths> {
        match &self.source {
            Source::Disk(p) => Some(p),
            Source::Memory(_) => None,
        }
    }

    fn text_encoder(&mut self) -> Result<TextEncoder> {
        let dt = self.options.dtype;
        match &mut self.source {
            Source::Disk(p) => Ok(TextEncoder::load(&p.text_encoder, &p.tokenizer, dt)?),
            Source::Memory(b) => (b.text_encoder)(dt),
        }
    }

    fn build_transformer(&mut self) -> Result<QwenImageTransformer> {
        let dt = self.options.dtype;
        let quant = self.options.quantize.clone();
        match &mut self.source {
            Source::Disk(p) => Ok(QwenImageTransformer::load(&p.transformer, dt, quant)?),
            Source::Memory(b) => {
                let mut model = (b.transformer)(dt)?;
                if let Some(q) = &quant {
                    model.quantize(q)?;
                }
                Ok(model)
            }
        }
    }

    fn vae(&mut self) -> Result<QwenImageVae> {
        let dt = self.options.dtype;
        match &mut self.source {
            Source::Disk(p) => Ok(QwenImageVae::load(&p.vae, dt)?),
            Source::Memory(b) => (b.vae)(dt),
        }
    }

    /// Estimated weight bytes of each stage for this pipeline's dtype and quantization (from
    /// configs and safetensors headers; nothing is loaded). `None` for a pipeline made with
    /// [`Self::from_builders`].
    pub fn weight_memory_estimate(&self) -> Option<Result<crate::memory::StageBytes>> {
        match &self.source {
            Source::Disk(p) => Some(crate::memory::estimate(
                p,
                &self.configs,
                self.options.dtype,
                self.options.quantize.as_ref(),
            )),
            Source::Memory(_) => None,
        }
    }

    /// The component configs.
    pub fn configs(&self) -> &CheckpointConfigs {
        &self.configs
    }

    /// The options the pipeline was loaded with.
    pub fn options(&self) -> &PipelineOptions {
        &self.options
    }

    /// Latent grid `(h, w)` for an image size.
    pub fn latent_size(&self, width: usize, height: usize) -> (usize, usize) {
        let r = self.configs.vae_scale_factor();
        (height / r, width / r)
    }

    fn scheduler(&self, req: &GenerateRequest) -> Result<FlowMatchEulerScheduler> {
        let mut sched = FlowMatchEulerScheduler::new(self.configs.scheduler.clone())?;
        let p = self.configs.patch_size();
        let (h, w) = self.latent_size(req.width, req.height);
        let seq_len = (h / p) * (w / p);
        let mu = if sched.config().use_dynamic_shifting {
            Some(sched.mu(seq_len)?)
        } else {
            None
        };
        sched.set_timesteps(req.steps, mu)?;
        Ok(sched)
    }

    /// Checks a request against this checkpoint without doing any heavy work.
    pub fn validate(&self, req: &GenerateRequest) -> Result<()> {
        let bad = |m: String| Err(PipelineError::InvalidRequest(m));
        if req.prompt.trim().is_empty() {
            return bad("the prompt is empty".into());
        }
        if req.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if req.steps > MAX_STEPS {
            return bad(format!(
                "steps {} is above the maximum {MAX_STEPS} (the scheduler's training timesteps)",
                req.steps
            ));
        }
        if req.num_images == 0 {
            return bad("the number of images must be at least 1".into());
        }
        if req.num_images > MAX_NUM_IMAGES {
            return bad(format!(
                "the number of images {} is above the maximum {MAX_NUM_IMAGES}",
                req.num_images
            ));
        }
        for (name, v) in [("width", req.width), ("height", req.height)] {
            if v > MAX_IMAGE_SIDE {
                return bad(format!(
                    "{name} {v} is above the maximum {MAX_IMAGE_SIDE} px (Qwen-Image was trained \
                     up to 1664 px; the cap keeps RoPE positions and MLX's i32 shapes in range)"
                ));
            }
        }
        let m = self.configs.size_multiple();
        for (name, v) in [("width", req.width), ("height", req.height)] {
            if v == 0 || v % m != 0 {
                return bad(format!(
                    "{name} {v} is not a positive multiple of {m} (the VAE's {}× compression × \
                     the transformer's {}×{} patches); try {}",
                    self.configs.vae_scale_factor(),
                    self.configs.patch_size(),
                    self.configs.patch_size(),
                    (v.div_ceil(m).max(1)) * m
                ));
            }
        }
        if req.max_sequence_length == 0 || req.max_sequence_length > MAX_SEQUENCE_LENGTH_LIMIT {
            return bad(format!(
                "max sequence length must be in 1..={MAX_SEQUENCE_LENGTH_LIMIT}, got {}",
                req.max_sequence_length
            ));
        }
        if !req.true_cfg_scale.is_finite() {
            return bad(format!(
                "true CFG scale must be finite, got {}",
                req.true_cfg_scale
            ));
        }
        if let Noise::Latents(a) = &req.noise {
            let (h, w) = self.latent_size(req.width, req.height);
            let want = [
                req.num_images as i32,
                1,
                self.configs.latent_channels() as i32,
                h as i32,
                w as i32,
            ];
            if a.shape() != want || a.dtype() != Dtype::Float32 {
                return bad(format!(
                    "initial latents are {:?} {:?}; this request needs float32 {want:?}",
                    a.dtype(),
                    a.shape()
                ));
            }
        }
        if let Some(t) = req.vae_tiling.tiles() {
            // The VAE's own check, for sizes it cannot tile with, whatever the image size.
            t.validate(self.configs.vae.spatial_compression_ratio())
                .map_err(|e| {
                    let msg = match e {
                        qwen_vae::VaeError::InvalidTiling(m) => m,
                        e => e.to_string(),
                    };
                    PipelineError::InvalidRequest(format!("VAE tiling: {msg}"))
                })?;
        }
        // The schedule is cheap to build and rejects what the scheduler cannot run.
        self.scheduler(req)?;
        Ok(())
    }

    /// Generates images (see [`Self::generate_with`] for progress reports and timings).
    pub fn generate(&mut self, req: &GenerateRequest) -> Result<Vec<Image>> {
        Ok(self.generate_with(req, &mut |_| {})?.images)
    }

    /// Generates images, reporting phases and steps to `on_event`.
    ///
    /// Staging: load text encoder → encode prompt (and negative prompt) → free the encoder →
    /// load the transformer (unless kept from an earlier call) → denoise each image (one
    /// evaluation per step) → free the transformer unless
    /// [`PipelineOptions::keep_transformer`] → load the VAE → decode (whole, or tile by tile
    /// per [`GenerateRequest::vae_tiling`]) → free the VAE.
    pub fn generate_with(
        &mut self,
        req: &GenerateRequest,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Generation> {
        self.validate(req)?;
        let mut timings = Timings::default();
        let mut warnings = Vec::new();
        let mut warn = |w: String, on_event: &mut dyn FnMut(Event)| {
            on_event(Event::Warning(w.clone()));
            warnings.push(w);
        };
        let cfg = req.does_true_cfg();
        if req.true_cfg_scale > 1.0 && req.negative_prompt.is_none() {
            warn(
                format!(
                    "true CFG scale is {} but there is no negative prompt: classifier-free \
                     guidance is off",
                    req.true_cfg_scale
                ),
                on_event,
            );
        } else if req.true_cfg_scale <= 1.0 && req.negative_prompt.is_some() {
            warn(
                "a negative prompt is given but true CFG scale ≤ 1: it is not used".into(),
                on_event,
            );
        }

        // 1. Text: load, encode, free.
        let t = PhaseTimer::start(Phase::LoadTextEncoder, on_event);
        let encoder = self.text_encoder()?;
        timings.load_text_encoder = t.end(Phase::LoadTextEncoder, on_event);
        let t = PhaseTimer::start(Phase::Encode, on_event);
        let cond = encoder.encode_prompts(&[req.prompt.as_str()], req.max_sequence_length)?;
        let neg = match (&req.negative_prompt, cfg) {
            (Some(n), true) => {
                Some(encoder.encode_prompts(&[n.as_str()], req.max_sequence_length)?)
            }
            _ => None,
        };
        let mut to_eval = vec![&cond.embeds];
        if let Some(n) = &neg {
            to_eval.push(&n.embeds);
        }
        mlx_rs::transforms::eval(to_eval)?;
        drop(encoder);
        mlx_rs::memory::clear_cache()?;
        timings.encode = t.end(Phase::Encode, on_event);
        for w in cond
            .warnings
            .iter()
            .chain(neg.iter().flat_map(|n| n.warnings.iter()))
        {
            warn(w.clone(), on_event);
        }

        // 2. Transformer.
        if self.transformer.is_none() {
            let t = PhaseTimer::start(Phase::LoadTransformer, on_event);
            let model = self.build_transformer()?;
            self.transformer = Some(model);
            timings.load_transformer = t.end(Phase::LoadTransformer, on_event);
        }
        let quantized_layers = self
            .transformer
            .as_ref()
            .map_or(0, |t| t.quantized_layer_count());
        let latents = self.denoise(
            req,
            &cond.embeds,
            neg.as_ref().map(|n| &n.embeds),
            &mut timings,
            on_event,
        );
        if !self.options.keep_transformer {
            self.transformer = None;
            mlx_rs::memory::clear_cache()?;
        }
        let latents = latents?;
        drop((cond, neg));
        check_finite(&latents, self.options.dtype)?;

        // 3. VAE.
        let t = PhaseTimer::start(Phase::LoadVae, on_event);
        let vae = self.vae()?;
        timings.load_vae = t.end(Phase::LoadVae, on_event);
        let t = PhaseTimer::start(Phase::Decode, on_event);
        let (h, w) = self.latent_size(req.width, req.height);
        let vae_tiles = req.vae_tiling.tiles_for(req.width, req.height);
        let mut images = Vec::with_capacity(latents.len());
        for packed in &latents {
            let z =
                vae.denormalize_latents(&unpack_latents(packed, h, w, self.configs.patch_size())?)?;
            let decoded = match &vae_tiles {
                Some(t) => vae.decode_tiled(&z, t)?,
                None => vae.decode(&z)?,
            };
            images.extend(qwen_vae::to_rgb8(&decoded)?);
        }
        drop(vae);
        mlx_rs::memory::clear_cache()?;
        timings.decode = t.end(Phase::Decode, on_event);
        Ok(Generation {
            images,
            timings,
            warnings,
            quantized_layers,
            vae_tiles,
            latents,
        })
    }

    /// The denoising loops; returns each image's final packed latents (evaluated).
    fn denoise(
        &self,
        req: &GenerateRequest,
        cond: &Array,
        neg: Option<&Array>,
        timings: &mut Timings,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Vec<Array>> {
        let dit = self
            .transformer
            .as_ref()
            .ok_or_else(|| PipelineError::InvalidRequest("transformer not loaded".into()))?;
        let dt = self.options.dtype;
        let p = self.configs.patch_size();
        let (h, w) = self.latent_size(req.width, req.height);
        let grid = [(1usize, h / p, w / p)];
        let rope_cond = RopeTables::new(dit.config(), &grid, cond.shape()[1] as usize)?;
        let rope_neg = match neg {
            Some(n) => Some(RopeTables::new(dit.config(), &grid, n.shape()[1] as usize)?),
            None => None,
        };
        let sched = self.scheduler(req)?;
        // σ of every step, made (and evaluated, once) before the loop: the same ops as
        // building them inside a step, off the steps' critical path.
        // `timestep = t.to(latents.dtype)`, then `timestep / 1000`.
        let divisor = scalar(TIMESTEP_DIVISOR, dt)?;
        let sigmas = sched
            .timesteps()
            .iter()
            .map(|&ts| {
                Ok(Array::from_slice(&[ts], &[1])
                    .as_dtype(dt)?
                    .divide(&divisor)?)
            })
            .collect::<Result<Vec<Array>>>()?;
        mlx_rs::transforms::eval(&sigmas)?;
        let t = PhaseTimer::start(Phase::Denoise, on_event);
        let mut out = Vec::with_capacity(req.num_images);
        for image in 0..req.num_images {
            let noise = match &req.noise {
                Noise::Seed(s) => seeded_noise(
                    s.wrapping_add(image as u64),
                    self.configs.latent_channels(),
                    h,
                    w,
                )?,
                Noise::Latents(a) => {
                    let i = image as i32;
                    a.index(i..i + 1)
                }
            };
            // The pipeline prepares latents in the prompt embeddings' dtype.
            let mut x = pack_latents(&noise.as_dtype(dt)?, p)?;
            // Each step's latents are evaluated once, asynchronously: step i + 1's graph is
            // built while the device runs step i, then the host waits for step i (already
            // scheduled: the wait computes nothing) to report it. A step's time is from the
            // previous step's completion to its own.
            let mut last_done = Instant::now();
            let mut report = |step: usize, x: &Array, on_event: &mut dyn FnMut(Event)| {
                x.eval()?;
                let now = Instant::now();
                let elapsed = now - last_done;
                last_done = now;
                timings.step_times.push(elapsed);
                on_event(Event::Step {
                    image,
                    num_images: req.num_images,
                    step,
                    steps: req.steps,
                    elapsed,
                    latents_dtype: x.dtype(),
                });
                Ok::<(), PipelineError>(())
            };
            for (i, sigma) in sigmas.iter().enumerate() {
                let mut v = dit.forward(&x, cond, None, sigma, &rope_cond)?;
                if let (Some(n), Some(rope_n)) = (neg, &rope_neg) {
                    let vn = dit.forward(&x, n, None, sigma, rope_n)?;
                    v = true_cfg_combine(&v, &vn, req.true_cfg_scale)?;
                }
                let next = sched.step(&v, i, &x)?;
                async_eval([&next])?;
                if i > 0 {
                    report(i - 1, &x, on_event)?;
                }
                x = next;
            }
            report(sigmas.len() - 1, &x, on_event)?;
            out.push(x);
        }
        timings.denoise = t.end(Phase::Denoise, on_event);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tiling_threshold_and_tile_sizes() {
        let auto = VaeTiling::default();
        let tiles = VaeTiling::square_tiles(DEFAULT_VAE_TILE_SIZE, 8);
        assert_eq!(auto, VaeTiling::Auto(tiles));
        assert_eq!(
            (tiles.tile_sample_min_width, tiles.tile_sample_stride_width),
            (1024, 768)
        );
        // Official sizes stay whole; 1448² (2 096 704 px) is just under the threshold and
        // 2048×1024 is exactly on it (tiling starts above it).
        assert_eq!(2048 * 1024, AUTO_TILING_MIN_PIXELS);
        for (w, h) in [
            (1328, 1328),
            (1664, 928),
            (928, 1664),
            (1472, 1140),
            (1448, 1448),
            (2048, 1024),
        ] {
            assert_eq!(auto.tiles_for(w, h), None, "{w}×{h}");
        }
        for (w, h) in [(2048, 1152), (1152, 2048), (1456, 1456), (2048, 2048)] {
            assert_eq!(auto.tiles_for(w, h), Some(tiles), "{w}×{h}");
        }
        assert_eq!(VaeTiling::On(tiles).tiles_for(16, 16), Some(tiles));
        assert_eq!(VaeTiling::Off.tiles_for(4096, 4096), None);
        assert_eq!(VaeTiling::Off.tiles(), None);
        // 256 px gives diffusers' enable_tiling() defaults (stride 192).
        assert_eq!(VaeTiling::square_tiles(256, 8), TilingConfig::default());
        // Strides are whole latents, at least one.
        let s = |px, r| VaeTiling::square_tiles(px, r).tile_sample_stride_height;
        assert_eq!((s(16, 8), s(8, 8), s(40, 8), s(40, 4)), (8, 8, 24, 28));
        for px in [8, 16, 40, 256, 1024] {
            assert!(VaeTiling::square_tiles(px, 8).validate(8).is_ok(), "{px}");
        }
    }

    fn inf_f32() -> anyhow::Result<Array> {
        Ok(Array::from_slice(&[f32::INFINITY], &[1]))
    }

    #[test]
    fn check_finite_names_the_images_with_nan_or_inf() -> anyhow::Result<()> {
        let ok = Array::from_slice(&[1.0f32, -2.0, 3.0e38, 0.0], &[1, 2, 2]);
        let nan = Array::from_slice(&[1.0f32, f32::NAN, 0.0, 0.0], &[1, 2, 2]);
        let inf = Array::from_slice(&[0.0f32, 0.0, 0.0, f32::NEG_INFINITY], &[1, 2, 2])
            .as_dtype(Dtype::Float16)?;
        check_finite(&[ok.clone(), ok.clone()], Dtype::Float32)?;
        check_finite(&[], Dtype::Float32)?;
        let e = check_finite(&[ok.clone(), nan, ok, inf], Dtype::Float16).unwrap_err();
        assert!(
            matches!(&e, PipelineError::NonFiniteLatents { images, .. } if images == &[1, 3]),
            "{e:?}"
        );
        assert!(e.to_string().contains("--dtype bf16"), "{e}");
        let e = check_finite(&[inf_f32()?], Dtype::Bfloat16).unwrap_err();
        assert!(e.to_string().contains("--dtype f32"), "{e}");
        Ok(())
    }

    /// Against the formula evaluated in f64 on the host: comb = n + s(c − n), rescaled per
    /// token to ‖c‖. f32 vs f64: relative error ≤ 1e-5 (a few f32 roundings of O(1) values).
    #[test]
    fn true_cfg_matches_the_formula_and_keeps_the_dtype() -> anyhow::Result<()> {
        let (t, d) = (3usize, 5usize);
        let c: Vec<f32> = (0..t * d)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let n: Vec<f32> = (0..t * d)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0)
            .collect();
        let s = 4.0f32;
        let got = true_cfg_combine(
            &Array::from_slice(&c, &[1, t as i32, d as i32]),
            &Array::from_slice(&n, &[1, t as i32, d as i32]),
            s,
        )?;
        let got = got.as_slice::<f32>().to_vec();
        for tok in 0..t {
            let r = tok * d..(tok + 1) * d;
            let comb: Vec<f64> = r
                .clone()
                .map(|i| n[i] as f64 + s as f64 * (c[i] as f64 - n[i] as f64))
                .collect();
            let cn = r.clone().map(|i| (c[i] as f64).powi(2)).sum::<f64>().sqrt();
            let kn = comb.iter().map(|x| x * x).sum::<f64>().sqrt();
            for (j, i) in r.enumerate() {
                let want = comb[j] * cn / kn;
                assert!((got[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0));
            }
        }
        let bf = Array::from_slice(&c, &[1, t as i32, d as i32]).as_dtype(Dtype::Bfloat16)?;
        let out = true_cfg_combine(&bf, &bf, s)?;
        assert_eq!(out.dtype(), Dtype::Bfloat16);
        Ok(())
    }
}
