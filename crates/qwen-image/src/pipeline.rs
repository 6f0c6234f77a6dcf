//! The pipeline (diffusers `QwenImagePipeline.__call__`) and its memory staging: the text
//! encoder is loaded, run and freed before the transformer is loaded; the VAE is loaded only
//! after denoising.
//!
//! Components come from a checkpoint folder ([`QwenImagePipeline::load`]) or from builders
//! that make them in memory ([`QwenImagePipeline::from_builders`], e.g. random full-size
//! weights for benchmarks); both follow the same staging. A request is checked once
//! ([`QwenImagePipeline::prepare`]) and then run ([`QwenImagePipeline::run`]);
//! [`QwenImagePipeline::generate_with`] does both.

use std::path::Path;

use flow_scheduler::FlowMatchEulerScheduler;
use mlx_fastops::ComputeDtype;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype, ops};
use qwen_dit::{QuantizeSpec, QwenImageTransformer, RopeTables};
use qwen_text_encoder::{EditEncoder, TextEncoder};
use qwen_vae::{QwenImageVae, TilingConfig};

use crate::cancel::CancelToken;
use crate::checkpoint::{CheckpointConfigs, ComponentPaths};
use crate::denoise::{Conditioning, Denoise, NoHook};
use crate::distributed::{Cluster, Plan};
use crate::error::{Field, NonFiniteAdvice, PipelineError, Result, invalid};
use crate::events::{Event, Phase, PhaseTimer, Timings};
use crate::img2img::InitImage;
use crate::latents::{pack_latents, seeded_noise, unpack_latents};
use crate::lora::LoraPlan;
use crate::output::Image;
use crate::request::{GenerateRequest, Noise, latent_size, validate};

/// The component kept in `$slot`, or `$load` run as phase `$phase` (its time and peak memory
/// into `$stat`).
macro_rules! kept_or_loaded {
    ($slot:expr, $load:expr, $phase:expr, $stat:expr, $on_event:expr) => {
        match $slot.take() {
            Some(kept) => kept,
            None => {
                let t = PhaseTimer::start($phase, $on_event);
                let loaded = $load?;
                $stat = t.end($phase, $on_event);
                loaded
            }
        }
    };
}

/// The pipeline divides the scheduler's timestep by this before the transformer sees it
/// (`timestep / 1000` in `QwenImagePipeline.__call__`).
const TIMESTEP_DIVISOR: f32 = 1000.0;

/// How a pipeline is loaded.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Compute dtype of every component (fp16 activations overflow in the DiT: prefer bf16
    /// on GPUs and f32 on CPUs).
    pub dtype: ComputeDtype,
    /// Quantize the transformer's float Linear layers when loading it.
    pub quantize: Option<QuantizeSpec>,
    /// Which components stay loaded between generations.
    pub residency: Residency,
    /// How much memory the denoising's activations may take beyond what is resident when it
    /// starts (weights, embeddings).
    pub activation_budget: ActivationBudget,
}

/// A bound on the denoising's activations, enforced through MLX's memory limit: while the
/// loop runs the limit is what is resident plus the budget, and MLX's evaluation waits for
/// the GPU to free memory before scheduling more work whenever more is in use (MLX counts
/// GPU work only: on the CPU this changes nothing). Without it MLX schedules far ahead of
/// the GPU; on an H200 a 1024² true-CFG step then peaks 9.9 GiB above the weights (47.96
/// GiB), with a 1.5 GiB budget at 39.7 GiB for 1% more time per step (docs/speed.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationBudget {
    /// MLX's own limit.
    Unlimited,
    /// At most this many bytes.
    Bytes(usize),
    /// [`AUTO_ACTIVATION_BUDGET`] per [`AUTO_BUDGET_MIN_TOKENS`] packed image tokens, for
    /// images of at least that many (1024² and up, where the backlog is largest and bounding
    /// it costs ~1%; an edit's picture tokens count too: one op's temporaries grow with the
    /// sequence); none below (at 512² bounding the backlog stalls the GPU: 40% slower, for a
    /// peak that is small anyway). A quantized transformer gets
    /// [`AUTO_QUANTIZED_BUDGET_FACTOR`] times as much: its Linear layers dequantize their
    /// weights in flight, and 1.5 GiB made its 1024² step 12–14% slower against 1–2% with 3.
    #[default]
    Auto,
}

/// The budget of [`ActivationBudget::Auto`] for a 1024² image: 1.5 GiB (the peak lands a
/// little above the limit, by part of one op; measured 1.56 GiB above the weights at 1024² on
/// an H200); larger token counts get proportionally more.
pub const AUTO_ACTIVATION_BUDGET: usize = 3 << 29;
/// The image size (packed tokens per image) from which [`ActivationBudget::Auto`] applies:
/// 64² tokens, a 1024² image.
pub const AUTO_BUDGET_MIN_TOKENS: usize = 4096;
/// How many times [`AUTO_ACTIVATION_BUDGET`] [`ActivationBudget::Auto`] gives a transformer
/// with quantized Linear layers: each layer's dequantized bf16 weight is in flight beside the
/// activations. Measured on an H200 at 1024² (docs/speed.md, 2026-12-01): 8-bit 321.8 ms per
/// step with 1.5 GiB, 288.4 with 3 (22.1 / 23.4 GiB peak); 4-bit 321.9 / 285.5 (12.7 / 13.9).
pub const AUTO_QUANTIZED_BUDGET_FACTOR: usize = 2;

impl ActivationBudget {
    /// The bytes allowed for an image of `tokens` packed tokens, denoised by a transformer
    /// with quantized Linear layers when `quantized` (`None`: no bound).
    pub fn bytes_for(self, tokens: usize, quantized: bool) -> Option<usize> {
        match self {
            ActivationBudget::Unlimited => None,
            ActivationBudget::Bytes(b) => Some(b),
            ActivationBudget::Auto => (tokens >= AUTO_BUDGET_MIN_TOKENS).then(|| {
                let per_min = if quantized {
                    AUTO_ACTIVATION_BUDGET * AUTO_QUANTIZED_BUDGET_FACTOR
                } else {
                    AUTO_ACTIVATION_BUDGET
                };
                let scaled = per_min as u128 * tokens as u128 / AUTO_BUDGET_MIN_TOKENS as u128;
                usize::try_from(scaled).unwrap_or(usize::MAX)
            }),
        }
    }
}

/// MLX's memory limit set for a scope and restored when dropped.
struct MemoryLimit(usize);

impl MemoryLimit {
    fn set(limit: usize) -> Result<Self> {
        Ok(Self(mlx_rs::memory::set_memory_limit(limit)?))
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        let _ = mlx_rs::memory::set_memory_limit(self.0);
    }
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            dtype: ComputeDtype::F32,
            quantize: None,
            residency: Residency::default(),
            activation_budget: ActivationBudget::default(),
        }
    }
}

/// Which components stay loaded between generations: a trade of peak memory against the
/// time of loading weights again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residency {
    /// Each component is loaded when its phase starts and freed when it ends (the text
    /// encoder before the transformer loads, the transformer before the VAE loads): the
    /// lowest peak memory, for one generation per process.
    Staged,
    /// The transformer, the largest load, stays between generations; the text encoder and
    /// the VAE are staged.
    #[default]
    KeepTransformer,
    /// Every component stays loaded (a server): no load after the first, and a peak of all
    /// the weights together. [`QwenImagePipeline::preload`] loads them up front.
    KeepAll,
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
    /// Each LoRA of the request: its name, key layout and the Linear layers it changed.
    pub loras: Vec<LoraReport>,
    /// The tiles the VAE decoded with (`None`: whole images).
    pub vae_tiles: Option<TilingConfig>,
    /// Each image's final denoised latents, packed `(1, (h/p)·(w/p), z·p²)` as the transformer
    /// works on them (before unpacking and de-normalisation), evaluated.
    pub latents: Vec<Array>,
}

impl Generation {
    /// A machine-readable summary: sizes, steps run, per-phase time (ms) and MLX peak memory
    /// (bytes), LoRAs, warnings.
    pub fn summary_json(&self) -> serde_json::Value {
        let t = &self.timings;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let phase = |p: &crate::PhaseStats| serde_json::json!({ "ms": ms(p.time), "peak_memory_bytes": p.peak_memory });
        serde_json::json!({
            "images": self.images.iter().map(|i| [i.width, i.height]).collect::<Vec<_>>(),
            "steps_run": t.step_times.len(),
            "timings": {
                "load_text_encoder": phase(&t.load_text_encoder),
                "encode": phase(&t.encode),
                "encode_image": phase(&t.encode_image),
                "load_transformer": phase(&t.load_transformer),
                "denoise": phase(&t.denoise),
                "step_ms_mean": ms(t.mean_step()),
                "load_vae": phase(&t.load_vae),
                "decode": phase(&t.decode),
            },
            "peak_memory_bytes": t.peak_memory(),
            "loras": self.loras.iter()
                .map(|l| serde_json::json!({ "name": l.name, "layout": l.layout, "layers": l.layers }))
                .collect::<Vec<_>>(),
            "warnings": self.warnings,
        })
    }
}

/// What one LoRA did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraReport {
    /// The file (or in-memory name).
    pub name: String,
    /// Its key layout.
    pub layout: String,
    /// Linear layers it changed.
    pub layers: usize,
}

/// Makes one component in memory, in the given compute dtype (see
/// [`QwenImagePipeline::from_builders`]). Called each time the pipeline's staging needs the
/// component.
pub type Builder<T> = Box<dyn FnMut(Dtype) -> Result<T>>;

/// Builders of the three weighted components of an in-memory pipeline (the tokenizer is part
/// of the [`TextEncoder`]).
pub struct ComponentBuilders {
    /// The tokenizer + text encoder; built at the start of a generation and freed after
    /// encoding (kept under [`Residency::KeepAll`]).
    pub text_encoder: Builder<TextEncoder>,
    /// The transformer; built after the text encoder is freed (kept between generations
    /// unless [`Residency::Staged`]).
    pub transformer: Builder<QwenImageTransformer>,
    /// The VAE; built after denoising and freed after decoding (kept under
    /// [`Residency::KeepAll`]).
    pub vae: Builder<QwenImageVae>,
    /// The edit pipelines' encoder (language model, vision tower, image processor), for
    /// configs whose [`CheckpointConfigs::kind`] edits; `None` otherwise.
    pub edit_encoder: Option<Builder<EditEncoder>>,
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

/// A request checked against a pipeline's checkpoint ([`QwenImagePipeline::prepare`]),
/// with what the checks derived: the schedule and the decode tiles.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    req: GenerateRequest,
    sched: FlowMatchEulerScheduler,
    vae_tiles: Option<TilingConfig>,
    loras: Vec<LoraPlan>,
    /// The first scheduled step that runs (img2img and inpainting start inside the schedule).
    first_step: usize,
    /// Remarks to pass on when the request runs.
    notes: Vec<String>,
}

impl PreparedRequest {
    /// The request.
    pub fn request(&self) -> &GenerateRequest {
        &self.req
    }

    /// The tiles the VAE will decode with (`None`: whole images).
    pub fn vae_tiles(&self) -> Option<&TilingConfig> {
        self.vae_tiles.as_ref()
    }

    /// The request's LoRAs, mapped onto the transformer.
    pub fn loras(&self) -> &[LoraPlan] {
        &self.loras
    }

    /// The scheduler the request runs with (the checkpoint's config with any overrides).
    pub fn scheduler(&self) -> &FlowMatchEulerScheduler {
        &self.sched
    }

    /// The request in words: `1024×1024, 50 steps, true CFG on (scale 4)[, img2img at strength
    /// 0.6 (30 of 50 steps run)]`.
    pub fn describe(&self) -> String {
        let req = &self.req;
        let mode = match &req.init_image {
            Some(i) => format!(
                ", {} at strength {} ({} of {} steps run)",
                if i.mask.is_some() {
                    "inpainting"
                } else {
                    "img2img"
                },
                i.strength,
                self.steps_run(),
                req.steps
            ),
            None => String::new(),
        };
        let cfg = if req.does_true_cfg() {
            format!("on (scale {})", req.true_cfg_scale)
        } else {
            "off".into()
        };
        format!(
            "{}×{}, {} steps, true CFG {cfg}{mode}",
            req.width, req.height, req.steps
        )
    }

    /// Denoising steps that run per image (fewer than the schedule's with an init image).
    pub fn steps_run(&self) -> usize {
        self.req.steps - self.first_step
    }

    /// Denoising steps over all images.
    pub fn total_steps(&self) -> usize {
        self.steps_run() * self.req.num_images
    }
}

/// Qwen-Image text-to-image on MLX.
pub struct QwenImagePipeline {
    source: Source,
    configs: CheckpointConfigs,
    options: PipelineOptions,
    /// The loaded transformer and the LoRAs (name, scale bits) merged into it.
    transformer: Option<(Vec<(String, u32)>, QwenImageTransformer)>,
    /// The text encoder (or, for an edit checkpoint, the edit encoder) and the VAE, kept
    /// under [`Residency::KeepAll`].
    text_encoder: Option<TextEncoder>,
    edit_encoder: Option<EditEncoder>,
    vae: Option<QwenImageVae>,
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
            .field("text_encoder_loaded", &self.text_encoder.is_some())
            .field("vae_loaded", &self.vae.is_some())
            .finish()
    }
}

fn check_options(options: &PipelineOptions) -> Result<()> {
    if let Some(q) = &options.quantize {
        q.validate()
            .map_err(|e| invalid(Field::Quantize, e.to_string()))?;
    }
    Ok(())
}

/// Fails with [`PipelineError::NonFiniteLatents`] when any of the final latents holds a NaN or
/// an infinity: one `all(isfinite)` reduction per image, stacked and evaluated once (a few
/// kilobytes of work, against a decode that would silently give black images).
pub fn check_finite(latents: &[Array], dtype: ComputeDtype) -> Result<()> {
    if latents.is_empty() {
        return Ok(());
    }
    let flags = latents
        .iter()
        .map(|x| x.is_finite()?.all(None))
        .collect::<std::result::Result<Vec<Array>, _>>()?;
    let flags = ops::stack(&flags, 0)?;
    let bad = crate::latents::false_rows(&flags)?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(PipelineError::NonFiniteLatents {
            images: bad,
            dtype,
            advice: NonFiniteAdvice::for_dtype(dtype),
        })
    }
}

/// The scheduler for a request: the checkpoint's config, μ from the packed token count when
/// it shifts dynamically, `steps` pipeline sigmas. Rejects what the scheduler cannot run.
fn schedule(configs: &CheckpointConfigs, req: &GenerateRequest) -> Result<FlowMatchEulerScheduler> {
    let config = match &req.scheduler_overrides {
        Some(o) => configs
            .scheduler
            .with_overrides(&o.keys)
            .map_err(|source| PipelineError::SchedulerOverride {
                origin: o.origin.clone(),
                source,
            })?,
        None => configs.scheduler.clone(),
    };
    let mut sched = FlowMatchEulerScheduler::new(config)?;
    let p = configs.patch_size();
    let (h, w) = latent_size(configs, req.width, req.height);
    let seq_len = (h / p) * (w / p);
    let mu = if sched.config().use_dynamic_shifting {
        Some(sched.mu(seq_len)?)
    } else {
        None
    };
    sched.set_timesteps(req.steps, mu)?;
    Ok(sched)
}

impl QwenImagePipeline {
    /// Opens a checkpoint folder in the diffusers layout: reads `model_index.json` and every
    /// component config, checks that they fit together and that every weight file is
    /// complete. No weights are loaded here (see the type's staging).
    pub fn load(model_dir: &Path, options: PipelineOptions) -> Result<Self> {
        check_options(&options)?;
        let paths = ComponentPaths::from_root(model_dir)?;
        let configs = paths.read_configs()?;
        paths.check_files(&configs)?;
        // The tokenizer is small: load it now so that a broken one fails before heavy work
        // (an edit pipeline's is in processor/, with the image processor's settings).
        qwen_text_encoder::QwenTokenizer::from_dir(&paths.tokenizer)?;
        if let Some(proc) = &paths.processor {
            qwen_text_encoder::QwenTokenizer::from_dir(proc)?;
            qwen_text_encoder::ImageProcessorConfig::from_file(
                &proc.join("preprocessor_config.json"),
            )?;
        }
        Ok(Self {
            source: Source::Disk(paths),
            configs,
            options,
            transformer: None,
            text_encoder: None,
            edit_encoder: None,
            vae: None,
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
        configs.check_fit(Path::new("<in memory>"))?;
        Ok(Self {
            source: Source::Memory(builders),
            configs,
            options,
            transformer: None,
            text_encoder: None,
            edit_encoder: None,
            vae: None,
        })
    }

    /// The component folders (`None` for a pipeline made with [`Self::from_builders`]).
    pub fn paths(&self) -> Option<&ComponentPaths> {
        match &self.source {
            Source::Disk(p) => Some(p),
            Source::Memory(_) => None,
        }
    }

    fn load_text_encoder(&mut self) -> Result<TextEncoder> {
        let dt = self.options.dtype.dtype();
        match &mut self.source {
            Source::Disk(p) => Ok(TextEncoder::load(&p.text_encoder, &p.tokenizer, dt)?),
            Source::Memory(b) => (b.text_encoder)(dt),
        }
    }

    /// The edit pipelines' encoder: language model, vision tower, `processor/`.
    fn load_edit_encoder(&mut self) -> Result<EditEncoder> {
        let dt = self.options.dtype.dtype();
        let template = crate::edit::template(self.configs.kind)?;
        match &mut self.source {
            Source::Disk(p) => {
                let proc = p.processor.as_ref().ok_or_else(|| {
                    PipelineError::Runtime("an edit checkpoint without processor/".into())
                })?;
                Ok(EditEncoder::load(&p.text_encoder, proc, template, dt)?)
            }
            Source::Memory(b) => match &mut b.edit_encoder {
                Some(build) => build(dt),
                None => Err(PipelineError::Runtime(
                    "an edit pipeline made in memory needs an edit_encoder builder".into(),
                )),
            },
        }
    }

    /// Keeps a component in its slot under [`Residency::KeepAll`], frees it otherwise.
    fn keep_or_free<T>(&mut self, it: T, slot: fn(&mut Self) -> &mut Option<T>) -> Result<()> {
        if self.options.residency == Residency::KeepAll {
            *slot(self) = Some(it);
        } else {
            drop(it);
            mlx_rs::memory::clear_cache()?;
        }
        Ok(())
    }

    /// Builds the transformer with `loras` merged (before quantization).
    fn build_transformer(&mut self, loras: &[LoraPlan]) -> Result<QwenImageTransformer> {
        let dt = self.options.dtype.dtype();
        let quant = self.options.quantize.clone();
        let set = crate::lora::load_all(loras)?;
        let mut model = match &mut self.source {
            Source::Disk(p) => {
                QwenImageTransformer::load_with_lora(&p.transformer, dt, quant, set)?
            }
            Source::Memory(b) => {
                let mut model = (b.transformer)(dt)?;
                model.merge_lora(set)?;
                if let Some(q) = &quant {
                    model.quantize(q)?;
                }
                model
            }
        };
        // Q/K/V as one GEMM per stream: same outputs, faster.
        model.fuse_projections()?;
        Ok(model)
    }

    fn load_vae(&mut self) -> Result<QwenImageVae> {
        let dt = self.options.dtype.dtype();
        match &mut self.source {
            Source::Disk(p) => Ok(QwenImageVae::load(&p.vae, dt)?),
            Source::Memory(b) => (b.vae)(dt),
        }
    }

    /// The kept VAE, or a freshly loaded one.
    fn take_vae(&mut self) -> Result<QwenImageVae> {
        match self.vae.take() {
            Some(v) => Ok(v),
            None => self.load_vae(),
        }
    }

    /// Keeps the VAE under [`Residency::KeepAll`], frees it otherwise.
    fn put_back_vae(&mut self, vae: QwenImageVae) -> Result<()> {
        self.keep_or_free(vae, |s| &mut s.vae)
    }

    /// Loads now what [`PipelineOptions::residency`] keeps (the transformer with `loras`
    /// merged; under [`Residency::KeepAll`] also the text encoder and the VAE), so that the
    /// first generation loads nothing and a broken component fails here. Requests that ask
    /// for the same LoRAs at the same scales reuse the transformer.
    pub fn preload(&mut self, loras: &[crate::Lora]) -> Result<()> {
        if self.options.residency == Residency::Staged {
            return Ok(());
        }
        let plans = loras
            .iter()
            .map(|l| crate::lora::plan(l, &self.configs.transformer))
            .collect::<Result<Vec<_>>>()?;
        let keys: Vec<(String, u32)> = plans.iter().map(|p| p.lora().key()).collect();
        if self.transformer.as_ref().is_none_or(|(k, _)| *k != keys) {
            self.transformer = None;
            let model = self.build_transformer(&plans)?;
            self.transformer = Some((keys, model));
        }
        if self.options.residency == Residency::KeepAll {
            if self.configs.kind.is_edit() {
                if self.edit_encoder.is_none() {
                    self.edit_encoder = Some(self.load_edit_encoder()?);
                }
            } else if self.text_encoder.is_none() {
                self.text_encoder = Some(self.load_text_encoder()?);
            }
            if self.vae.is_none() {
                self.vae = Some(self.load_vae()?);
            }
        }
        Ok(())
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
        latent_size(&self.configs, width, height)
    }

    /// Checks `req` against this checkpoint without doing any heavy work (the one validation
    /// of a request; see [`crate::request::validate`]) and derives what running it needs.
    pub fn prepare(&self, req: GenerateRequest) -> Result<PreparedRequest> {
        validate(&req, &self.configs)?;
        let sched = schedule(&self.configs, &req)?;
        let vae_tiles =
            req.vae_tiling
                .tiles_for(req.width, req.height, self.configs.vae_scale_factor());
        let loras = req
            .loras
            .iter()
            .map(|l| crate::lora::plan(l, &self.configs.transformer))
            .collect::<Result<Vec<_>>>()?;
        let mut notes: Vec<String> = loras
            .iter()
            .flat_map(|p| {
                p.notes
                    .iter()
                    .map(move |n| format!("LoRA {}: {n}", p.lora().name()))
            })
            .collect();
        let first_step = match &req.init_image {
            Some(init) => {
                if let Some(m) = &init.mask {
                    let px = crate::image_input::mask_pixels(m, req.width, req.height);
                    let repaint = px.iter().filter(|&&b| b).count();
                    if repaint == 0 {
                        notes.push(
                            "the mask is entirely black after resizing: nothing is repainted \
                             (the result is the input image through the VAE)"
                                .into(),
                        );
                    } else if repaint == px.len() {
                        notes.push(format!(
                            "the mask is entirely white: everything is repainted, as img2img at \
                             strength {}",
                            init.strength
                        ));
                    }
                }
                crate::img2img::first_step(req.steps, init.strength)
            }
            None => 0,
        };
        Ok(PreparedRequest {
            req,
            sched,
            vae_tiles,
            loras,
            first_step,
            notes,
        })
    }

    /// Checks a request against this checkpoint without doing any heavy work
    /// ([`Self::prepare`], keeping nothing).
    pub fn validate(&self, req: &GenerateRequest) -> Result<()> {
        self.prepare(req.clone()).map(|_| ())
    }

    /// Generates images (see [`Self::generate_with`] for progress reports and timings).
    pub fn generate(&mut self, req: &GenerateRequest) -> Result<Vec<Image>> {
        Ok(self.generate_with(req, &mut |_| {})?.images)
    }

    /// Checks and runs a request ([`Self::prepare`] then [`Self::run`]), reporting phases and
    /// steps to `on_event`.
    pub fn generate_with(
        &mut self,
        req: &GenerateRequest,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Generation> {
        let job = self.prepare(req.clone())?;
        self.run(&job, on_event)
    }

    /// Runs a prepared request, reporting phases and steps to `on_event`.
    ///
    /// Staging: load text encoder → encode prompt (and negative prompt) → free the encoder →
    /// load the transformer (unless kept from an earlier call) → denoise each image (one
    /// evaluation per step) → free the transformer under [`Residency::Staged`] → load the
    /// VAE → decode (whole, or tile by tile per [`GenerateRequest::vae_tiling`]) → free the
    /// VAE. Under [`Residency::KeepAll`] nothing is freed and nothing loaded twice.
    pub fn run(
        &mut self,
        job: &PreparedRequest,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Generation> {
        self.run_cancellable(job, on_event, &CancelToken::new())
    }

    /// [`Self::run`] that stops with [`PipelineError::Cancelled`] once `cancel` is set: it is
    /// looked at before each phase, after each denoising step and before each image's decode.
    /// Whatever the run allocated is freed (and MLX's buffer cache cleared) before it returns
    /// an error; the components [`PipelineOptions::residency`] keeps stay loaded.
    pub fn run_cancellable(
        &mut self,
        job: &PreparedRequest,
        on_event: &mut dyn FnMut(Event),
        cancel: &CancelToken,
    ) -> Result<Generation> {
        self.run_inner(job, on_event, cancel, None)?
            .ok_or_else(|| PipelineError::Runtime("a single process produced no images".into()))
    }

    /// [`Self::run_cancellable`] with the work shared by the ranks of `cluster` (see
    /// [`crate::distributed`]): every rank calls it with the same request; rank 0 gets the
    /// images, the other ranks `None`.
    pub fn run_distributed(
        &mut self,
        job: &PreparedRequest,
        on_event: &mut dyn FnMut(Event),
        cancel: &CancelToken,
        cluster: &Cluster,
    ) -> Result<Option<Generation>> {
        self.run_inner(job, on_event, cancel, Some(cluster))
            .map_err(|e| match e {
                // MLX's ring reports a vanished peer as a failed evaluation.
                PipelineError::Mlx(m) if m.to_string().contains("[ring]") => {
                    PipelineError::Distributed(format!(
                        "rank {}: another rank stopped or became unreachable ({m})",
                        cluster.rank()
                    ))
                }
                e => e,
            })
    }

    fn run_inner(
        &mut self,
        job: &PreparedRequest,
        on_event: &mut dyn FnMut(Event),
        cancel: &CancelToken,
        cluster: Option<&Cluster>,
    ) -> Result<Option<Generation>> {
        let result = self.run_stages(job, on_event, cancel, cluster);
        if result.is_err() {
            mlx_rs::memory::clear_cache()?;
        }
        result
    }

    fn run_stages(
        &mut self,
        job: &PreparedRequest,
        on_event: &mut dyn FnMut(Event),
        cancel: &CancelToken,
        cluster: Option<&Cluster>,
    ) -> Result<Option<Generation>> {
        cancel.check()?;
        let req = &job.req;
        let mut timings = Timings::default();
        let mut warnings = Vec::new();
        let mut warn = |w: String, on_event: &mut dyn FnMut(Event)| {
            on_event(Event::Warning(w.clone()));
            warnings.push(w);
        };
        let cfg = req.does_true_cfg();
        for note in &job.notes {
            warn(note.clone(), on_event);
        }
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

        // The pictures of an edit, resized for the text encoder and the VAE.
        let pictures = match req.edit_images.is_empty() {
            true => Vec::new(),
            false => crate::edit::prepare_pictures(self.configs.kind, &req.edit_images)?,
        };
        // 1. Text: load (unless kept), encode, free (unless kept). Each rank encodes the
        // prompt(s) of the pass(es) it runs.
        let plan = Plan::new(cluster, cfg);
        let prompts = (
            plan.runs_prompt().then_some(req.prompt.as_str()),
            req.negative_prompt
                .as_deref()
                .filter(|_| cfg && plan.runs_negative()),
        );
        let (cond, neg) = if pictures.is_empty() {
            let encoder = kept_or_loaded!(
                self.text_encoder,
                self.load_text_encoder(),
                Phase::LoadTextEncoder,
                timings.load_text_encoder,
                on_event
            );
            let t = PhaseTimer::start(Phase::Encode, on_event);
            let encode = |p: &str| encoder.encode_prompts(&[p], req.max_sequence_length);
            let cond = prompts.0.map(encode).transpose()?;
            let neg = prompts.1.map(encode).transpose()?;
            let to_eval: Vec<&Array> = cond.iter().chain(&neg).map(|e| &e.embeds).collect();
            mlx_rs::transforms::eval(to_eval)?;
            self.keep_or_free(encoder, |s| &mut s.text_encoder)?;
            timings.encode = t.end(Phase::Encode, on_event);
            (cond, neg)
        } else {
            let encoder = kept_or_loaded!(
                self.edit_encoder,
                self.load_edit_encoder(),
                Phase::LoadTextEncoder,
                timings.load_text_encoder,
                on_event
            );
            let t = PhaseTimer::start(Phase::Encode, on_event);
            let (cond, neg) = crate::edit::encode_prompts(&encoder, prompts, &pictures)?;
            self.keep_or_free(encoder, |s| &mut s.edit_encoder)?;
            timings.encode = t.end(Phase::Encode, on_event);
            (cond, neg)
        };
        cancel.check()?;
        for w in cond.iter().chain(&neg).flat_map(|e| e.warnings.iter()) {
            warn(w.clone(), on_event);
        }

        // 2. The init image or the pictures to edit, through the VAE (loaded for this and
        // freed).
        let picture_tokens = match pictures.is_empty() {
            true => None,
            false => {
                let t = PhaseTimer::start(Phase::EncodeImage, on_event);
                let vae = self.take_vae()?;
                let tokens =
                    crate::edit::encode_pictures(&vae, &pictures, self.configs.patch_size());
                self.put_back_vae(vae)?;
                let tokens = tokens?;
                timings.encode_image = t.end(Phase::EncodeImage, on_event);
                cancel.check()?;
                Some(tokens)
            }
        };
        drop(pictures);
        let clean = match &req.init_image {
            Some(init) => {
                let t = PhaseTimer::start(Phase::EncodeImage, on_event);
                let z = self.encode_init_image(req, init)?;
                timings.encode_image = t.end(Phase::EncodeImage, on_event);
                cancel.check()?;
                Some(z)
            }
            None => None,
        };

        // 3. Transformer (rebuilt when the request's LoRAs differ from the loaded ones).
        let lora_keys: Vec<(String, u32)> = job.loras.iter().map(|p| p.lora().key()).collect();
        if self
            .transformer
            .as_ref()
            .is_some_and(|(keys, _)| *keys != lora_keys)
        {
            self.transformer = None;
            mlx_rs::memory::clear_cache()?;
        }
        if self.transformer.is_none() {
            let t = PhaseTimer::start(Phase::LoadTransformer, on_event);
            let model = self.build_transformer(&job.loras)?;
            self.transformer = Some((lora_keys, model));
            timings.load_transformer = t.end(Phase::LoadTransformer, on_event);
        }
        let quantized_layers = self
            .transformer
            .as_ref()
            .map_or(0, |(_, t)| t.quantized_layer_count());
        let latents = self.denoise(
            job,
            (
                cond.as_ref().map(|e| e.embeds.clone()),
                neg.as_ref().map(|e| e.embeds.clone()),
            ),
            (clean.as_deref(), picture_tokens.as_ref()),
            &mut timings,
            (on_event, cancel),
            (&plan, cluster),
        );
        if self.options.residency == Residency::Staged {
            self.transformer = None;
            mlx_rs::memory::clear_cache()?;
        }
        let Some(latents) = latents? else {
            // Another rank decodes.
            return Ok(None);
        };
        drop((cond, neg));
        check_finite(&latents, self.options.dtype)?;

        // 4. VAE.
        cancel.check()?;
        let vae = kept_or_loaded!(
            self.vae,
            self.load_vae(),
            Phase::LoadVae,
            timings.load_vae,
            on_event
        );
        let t = PhaseTimer::start(Phase::Decode, on_event);
        let (h, w) = self.latent_size(req.width, req.height);
        let mut images = Vec::with_capacity(latents.len());
        for packed in &latents {
            if cancel.is_cancelled() {
                self.put_back_vae(vae)?;
                return Err(PipelineError::Cancelled);
            }
            let z =
                vae.denormalize_latents(&unpack_latents(packed, h, w, self.configs.patch_size())?)?;
            let decoded = match &job.vae_tiles {
                Some(t) => vae.decode_tiled(&z, t)?,
                None => vae.decode(&z)?,
            };
            images.extend(qwen_vae::to_rgb8(&decoded)?);
        }
        self.put_back_vae(vae)?;
        timings.decode = t.end(Phase::Decode, on_event);
        Ok(Some(Generation {
            images,
            timings,
            warnings,
            quantized_layers,
            loras: job
                .loras
                .iter()
                .map(|p| LoraReport {
                    name: p.lora().name(),
                    layout: p.layout.clone(),
                    layers: p.layer_count(),
                })
                .collect(),
            vae_tiles: job.vae_tiles,
            latents,
        }))
    }

    /// Encodes the init image once per requested image (the same picture; each its own
    /// posterior sample, ε from `image_noise` or the seed), normalised: `(1, z, 1, h, w)` in the
    /// compute dtype, evaluated. The VAE is loaded for this and freed (unless kept).
    fn encode_init_image(&mut self, req: &GenerateRequest, init: &InitImage) -> Result<Vec<Array>> {
        let dt = self.options.dtype.dtype();
        let (h, w) = self.latent_size(req.width, req.height);
        let z = self.configs.latent_channels();
        let vae = self.take_vae()?;
        let pixels = crate::image_input::to_vae_input(&init.image, req.width, req.height)?;
        // diffusers casts the image to the pipeline dtype before the VAE.
        let dist = vae.encode(&pixels.as_dtype(dt)?)?;
        let mut out = Vec::with_capacity(req.num_images);
        for i in 0..req.num_images {
            let eps = match &init.image_noise {
                Some(all) => crate::img2img::image_noise_for(all, i, dt)?,
                None => crate::latents::seeded_image_noise(
                    init.noise_seed.wrapping_add(i as u64),
                    z,
                    h,
                    w,
                )?
                .as_dtype(dt)?,
            };
            let z0 = vae.normalize_latents(&dist.sample(&eps)?)?;
            z0.eval()?;
            out.push(z0);
        }
        self.put_back_vae(vae)?;
        Ok(out)
    }

    /// The denoising loops; returns each image's final packed latents (evaluated). `embeds`:
    /// the prompt's and (with true CFG) the negative prompt's embeddings; `clean`: the init
    /// image's normalised latents per image (img2img, inpainting).
    ///
    /// With `cluster`, this rank denoises its share (`plan`) and rank 0 gets every image's
    /// latents after each round's all-gather; the other ranks get `None`.
    fn denoise(
        &self,
        job: &PreparedRequest,
        (cond, neg): (Option<Array>, Option<Array>),
        (clean, pictures): (Option<&[Array]>, Option<&crate::edit::PictureTokens>),
        timings: &mut Timings,
        (on_event, cancel): (&mut dyn FnMut(Event), &CancelToken),
        (plan, cluster): (&Plan, Option<&Cluster>),
    ) -> Result<Option<Vec<Array>>> {
        let req = &job.req;
        let dit = self
            .transformer
            .as_ref()
            .map(|(_, t)| t)
            .ok_or_else(|| PipelineError::Runtime("transformer not loaded".into()))?;
        let dt = self.options.dtype.dtype();
        let p = self.configs.patch_size();
        let (h, w) = self.latent_size(req.width, req.height);
        // The noise tokens' grid, then each picture's (an edit).
        let mut grid = vec![(1usize, h / p, w / p)];
        if let Some(pics) = pictures {
            grid.extend(&pics.grids);
        }
        let conditioning = |embeds: Array| -> Result<Conditioning> {
            let rope = RopeTables::new(dit.config(), &grid, embeds.shape()[1] as usize)?;
            Ok(Conditioning { embeds, rope })
        };
        let cond = cond.map(conditioning).transpose()?;
        let neg = neg.map(conditioning).transpose()?;
        // The pass this rank runs (the negative one for the second rank of a CFG pair).
        let (own, local_neg) = match (cond.as_ref(), neg.as_ref()) {
            (Some(c), n) if !plan.cfg_parallel => (c, n),
            (Some(c), _) if plan.runs_prompt() => (c, None),
            (_, Some(n)) => (n, None),
            _ => {
                return Err(PipelineError::Runtime(
                    "no prompt embeddings for this rank".into(),
                ));
            }
        };
        // The transformer's timestep input of every step, made (and evaluated, once) before
        // the loop: `timestep = t.to(latents.dtype)`, then `timestep / 1000`.
        let divisor = mlx_fastops::scalar(TIMESTEP_DIVISOR, dt)?;
        let sigmas = job
            .sched
            .timesteps()
            .iter()
            .map(|&ts| {
                Ok(Array::from_slice(&[ts], &[1])
                    .as_dtype(dt)?
                    .divide(&divisor)?)
            })
            .collect::<Result<Vec<Array>>>()?;
        mlx_rs::transforms::eval(&sigmas)?;
        let loop_ = Denoise {
            dit,
            sched: &job.sched,
            sigmas: &sigmas,
            first_step: job.first_step,
            pictures: pictures.map(|p| &p.tokens),
            cond: own,
            neg: local_neg.map(|n| (n, req.true_cfg_scale)),
            exchange: match (plan.cfg_parallel, cluster) {
                (true, Some(c)) => Some(crate::denoise::Exchange {
                    group: c.group(),
                    rows: (2 * plan.slot as i32, 2 * plan.slot as i32 + 1),
                    scale: req.true_cfg_scale,
                }),
                _ => None,
            },
        };
        let sched_sigmas = job.sched.sigmas();
        let mask = match req.init_image.as_ref().and_then(|i| i.mask.as_ref()) {
            Some(m) => Some(
                crate::img2img::packed_mask(
                    m,
                    req.width,
                    req.height,
                    self.configs.vae_scale_factor(),
                    self.configs.latent_channels(),
                    p,
                )?
                .0,
            ),
            None => None,
        };
        let steps_run = job.steps_run();
        let t = PhaseTimer::start(Phase::Denoise, on_event);
        // MLX's eval waits for the device to free memory while more than its memory limit is
        // in use: a limit just above what is resident now bounds the activations in flight.
        let _limit = match self.options.activation_budget.bytes_for(
            grid.iter().map(|g| g.0 * g.1 * g.2).sum(),
            dit.quantized_layer_count() > 0,
        ) {
            Some(budget) => Some(MemoryLimit::set(
                mlx_rs::memory::active_memory()?.saturating_add(budget),
            )?),
            None => None,
        };
        let n_images = req.num_images;
        let mut out: Vec<Option<Array>> = vec![None; n_images];
        for round in 0..plan.rounds(n_images) {
            let assigned = plan.image(round, n_images);
            if assigned.is_none() && !plan.cfg_parallel && cluster.is_none() {
                continue;
            }
            // An idle rank still walks the steps of a CFG pair's exchanges, on image 0's
            // shapes, and contributes zeros.
            let image = assigned.unwrap_or(0);
            let idle = assigned.is_none();
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
            let noise = noise.as_dtype(dt)?;
            let first = job.first_step;
            let (x, clean_packed) = match clean {
                Some(z0s) => {
                    // (1, z, 1, h, w) → the noise layout (1, 1, z, h, w), then σ of the first
                    // kept step.
                    let z0 = z0s[image].transpose_axes(&[0, 2, 1, 3, 4])?;
                    let x = crate::img2img::scale_noise(&z0, sched_sigmas[first], &noise)?;
                    (pack_latents(&x, p)?, Some(pack_latents(&z0, p)?))
                }
                None => (pack_latents(&noise, p)?, None),
            };
            let noise_packed = pack_latents(&noise, p)?;
            let mut blend;
            let mut no_hook = NoHook;
            let hook: &mut dyn crate::denoise::StepHook = match (&mask, &clean_packed) {
                (Some(mask), Some(clean)) => {
                    blend = crate::img2img::InpaintBlend {
                        mask,
                        clean,
                        noise: &noise_packed,
                        sigmas: sched_sigmas,
                    };
                    &mut blend
                }
                _ => &mut no_hook,
            };
            let x = if idle && !plan.cfg_parallel {
                ops::zeros_like(&x)?
            } else {
                loop_.run(x, hook, idle, &mut |step, x, elapsed| {
                    if !idle {
                        timings.step_times.push(elapsed);
                        on_event(Event::Step {
                            image,
                            num_images: n_images,
                            step: step - first,
                            steps: steps_run,
                            elapsed,
                            latents_dtype: x.dtype(),
                        });
                    }
                    cancel.check()
                })?
            };
            match cluster {
                None => out[image] = Some(x),
                Some(c) => {
                    // Every rank's final latents of the round, to rank 0.
                    let all = c.group().all_gather(&x)?;
                    all.eval()?;
                    if plan.leader {
                        for s in 0..plan.slots {
                            let i = round * plan.slots + s;
                            if i < n_images {
                                let r = plan.row_of(s) as i32;
                                out[i] = Some(all.index(r..r + 1));
                            }
                        }
                    }
                }
            }
        }
        timings.denoise = t.end(Phase::Denoise, on_event);
        if !plan.leader {
            return Ok(None);
        }
        let latents = out
            .into_iter()
            .collect::<Option<Vec<Array>>>()
            .ok_or_else(|| PipelineError::Runtime("an image's latents are missing".into()))?;
        Ok(Some(latents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inf_f32() -> anyhow::Result<Array> {
        Ok(Array::from_slice(&[f32::INFINITY], &[1]))
    }

    #[test]
    fn check_finite_names_the_images_with_nan_or_inf() -> anyhow::Result<()> {
        let ok = Array::from_slice(&[1.0f32, -2.0, 3.0e38, 0.0], &[1, 2, 2]);
        let nan = Array::from_slice(&[1.0f32, f32::NAN, 0.0, 0.0], &[1, 2, 2]);
        let inf = Array::from_slice(&[0.0f32, 0.0, 0.0, f32::NEG_INFINITY], &[1, 2, 2])
            .as_dtype(Dtype::Float16)?;
        check_finite(&[ok.clone(), ok.clone()], ComputeDtype::F32)?;
        check_finite(&[], ComputeDtype::F32)?;
        let e = check_finite(&[ok.clone(), nan, ok, inf], ComputeDtype::F16).unwrap_err();
        assert!(
            matches!(&e, PipelineError::NonFiniteLatents { images, advice, .. }
                if images == &[1, 3] && *advice == NonFiniteAdvice::UseBf16OrF32),
            "{e:?}"
        );
        assert!(e.to_string().contains("compute in bf16 or f32"), "{e}");
        let e = check_finite(&[inf_f32()?], ComputeDtype::Bf16).unwrap_err();
        assert!(
            matches!(&e, PipelineError::NonFiniteLatents { advice, .. }
                if *advice == NonFiniteAdvice::TryF32),
            "{e:?}"
        );
        Ok(())
    }
}
