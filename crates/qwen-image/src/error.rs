//! The pipeline's error type.
//!
//! The library names request fields and concepts, never command-line flags: a program built
//! on it maps [`Field`] (and the other typed variants) onto its own options.

use std::path::PathBuf;

use mlx_fastops::ComputeDtype;

/// A field of a [`crate::GenerateRequest`] or [`crate::PipelineOptions`], named by
/// [`PipelineError::InvalidRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `GenerateRequest::prompt`.
    Prompt,
    /// `GenerateRequest::negative_prompt`.
    NegativePrompt,
    /// `GenerateRequest::true_cfg_scale`.
    TrueCfgScale,
    /// `GenerateRequest::steps`.
    Steps,
    /// `GenerateRequest::width`.
    Width,
    /// `GenerateRequest::height`.
    Height,
    /// `GenerateRequest::num_images`.
    NumImages,
    /// `GenerateRequest::noise` (the initial latents).
    Noise,
    /// `GenerateRequest::max_sequence_length`.
    MaxSequenceLength,
    /// `GenerateRequest::vae_tiling` (the tiles).
    VaeTiling,
    /// `PipelineOptions::quantize`.
    Quantize,
    /// The init image of img2img / inpainting (`GenerateRequest::init_image`).
    Image,
    /// The inpainting mask.
    Mask,
    /// The img2img / inpainting strength.
    Strength,
    /// The posterior noise of the init image (`InitImage::image_noise`).
    ImageNoise,
    /// The pictures of an edit (`GenerateRequest::edit_images`).
    EditImages,
}

impl Field {
    /// The field's name in words (`width`, `true CFG scale`…).
    pub fn describe(self) -> &'static str {
        match self {
            Field::Prompt => "prompt",
            Field::NegativePrompt => "negative prompt",
            Field::TrueCfgScale => "true CFG scale",
            Field::Steps => "steps",
            Field::Width => "width",
            Field::Height => "height",
            Field::NumImages => "number of images",
            Field::Noise => "initial noise",
            Field::MaxSequenceLength => "max sequence length",
            Field::VaeTiling => "VAE tiling",
            Field::Quantize => "quantization",
            Field::Image => "init image",
            Field::Mask => "mask",
            Field::Strength => "strength",
            Field::ImageNoise => "image noise",
            Field::EditImages => "pictures to edit",
        }
    }
}

/// What to try when the denoised latents are not finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonFiniteAdvice {
    /// f16 overflowed: compute in bf16 or f32.
    UseBf16OrF32,
    /// bf16: try f32; otherwise the weights or the initial latents hold NaN/inf.
    TryF32,
    /// f32: not an overflow; check the weights and the initial latents.
    CheckInputs,
}

impl NonFiniteAdvice {
    /// The advice for a compute dtype.
    pub fn for_dtype(dtype: ComputeDtype) -> Self {
        match dtype {
            ComputeDtype::F16 => NonFiniteAdvice::UseBf16OrF32,
            ComputeDtype::Bf16 => NonFiniteAdvice::TryF32,
            ComputeDtype::F32 => NonFiniteAdvice::CheckInputs,
        }
    }
}

impl std::fmt::Display for NonFiniteAdvice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NonFiniteAdvice::UseBf16OrF32 => {
                "f16 activations overflowed (the text encoder and the transformer exceed f16's \
                 range); compute in bf16 or f32"
            }
            NonFiniteAdvice::TryF32 => {
                "try computing in f32; if that fails too, check the weights and the initial \
                 latents for NaN or infinity"
            }
            NonFiniteAdvice::CheckInputs => {
                "not a reduced-precision overflow: check the weights and the initial latents \
                 for NaN or infinity"
            }
        })
    }
}

/// Everything that can go wrong while resolving, checking, loading or running the pipeline.
///
/// Variants raised before any heavy work (a bad request, a missing or corrupt file) name the
/// offending input; errors of the stage crates are wrapped as they are.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The model names neither a directory nor a Hugging Face repository in the local cache.
    #[error("model {spec}: {msg}")]
    ModelNotFound {
        /// What was asked for (a path or a hub id).
        spec: String,
        /// Why it was not found, and what to do.
        msg: String,
    },
    /// A Hugging Face repository id that is not in the local cache.
    #[error(
        "model `{repo_id}` is not in the Hugging Face cache ({}); download it into the cache, \
         or give a directory in the diffusers layout",
        cache.as_ref().map(|c| c.display().to_string()).unwrap_or_else(|| "no cache: HOME, HF_HOME and HF_HUB_CACHE are unset".into())
    )]
    NotInCache {
        /// The repository id.
        repo_id: String,
        /// The cache searched (`None` when no cache location is known).
        cache: Option<PathBuf>,
    },
    /// A model to download that is not a Hugging Face id (`owner/name`).
    #[error("{spec} is not a Hugging Face id of the form owner/name")]
    NotARepoId {
        /// What was given.
        spec: String,
    },
    /// Downloading from the Hugging Face hub failed.
    #[error("downloading {repo_id}: {msg}")]
    Download {
        /// The repository.
        repo_id: String,
        /// What went wrong, and what to do.
        msg: String,
    },
    /// The checkpoint folder is incomplete or inconsistent (missing component, missing or
    /// corrupt file, components whose sizes do not fit together).
    #[error("{path}: {msg}")]
    Checkpoint {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A folder without `model_index.json` that holds weights converted by mflux (MLX):
    /// the engine needs the diffusers layout, which it can quantize itself on load.
    #[error(
        "{root}: this looks like an mflux/MLX-converted checkpoint ({evidence}, no \
         model_index.json); qwen-image needs the diffusers layout (e.g. Qwen/Qwen-Image), \
         which it can quantize to 4 or 8 bits on load"
    )]
    MfluxCheckpoint {
        /// The folder.
        root: PathBuf,
        /// What gave it away.
        evidence: String,
    },
    /// The ranks of a distributed run could not be set up or lost each other.
    #[error("distributed run: {0}")]
    Distributed(String),
    /// The generation was stopped through its [`crate::CancelToken`]; nothing was produced.
    #[error("generation cancelled")]
    Cancelled,
    /// A generation request that cannot be run (bad size, zero steps, empty prompt…).
    #[error("invalid request: {msg}")]
    InvalidRequest {
        /// The field at fault.
        field: Field,
        /// What is wrong with it.
        msg: String,
    },
    /// A name that is not one of the aspect presets ([`crate::settings::ASPECTS`]).
    #[error("`{name}` is not one of {}", crate::settings::aspect_names())]
    UnknownAspect {
        /// The name given.
        name: String,
    },
    /// More LoRA scales than LoRAs in [`crate::settings::LoadSettings`] (the i-th scale
    /// belongs to the i-th LoRA).
    #[error("{scales} LoRA scales for {loras} LoRAs: the i-th scale belongs to the i-th LoRA")]
    LoraScales {
        /// Scales given.
        scales: usize,
        /// LoRAs given.
        loras: usize,
    },
    /// A VAE tile size in [`crate::settings::GenerationSettings`] whose tiling mode is
    /// [`crate::settings::TilingMode::Off`]: the size would be ignored.
    #[error("a VAE tile size ({tile_size} px) has no effect with VAE tiling off")]
    TileSizeWithTilingOff {
        /// The tile size given.
        tile_size: usize,
    },
    /// The initial latents (a file, or given arrays) are missing, unreadable or do not fit
    /// the request.
    #[error("init latents{}: {msg}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    InitLatents {
        /// The latents file, when they came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        msg: String,
    },
    /// A LoRA cannot be applied (its keys, shapes or file).
    #[error("LoRA {lora}: {msg}")]
    Lora {
        /// The LoRA file (or in-memory name).
        lora: String,
        /// What is wrong.
        msg: String,
    },
    /// The scheduler-config overrides cannot be applied.
    #[error("scheduler config override {origin}: {source}")]
    SchedulerOverride {
        /// The override file, or `<request>` for in-memory overrides.
        origin: String,
        /// The scheduler's error (naming the key).
        #[source]
        source: flow_scheduler::SchedulerError,
    },
    /// The request's mode does not fit the checkpoint's pipeline: an edit on a text-to-image
    /// checkpoint, or a generation from text alone on an edit checkpoint.
    #[error("checkpoint pipeline {class}: {msg}")]
    WrongPipeline {
        /// `model_index.json`'s `_class_name`.
        class: String,
        /// What to do instead.
        msg: String,
    },
    /// An input image or mask cannot be read.
    #[error("image {path}: {msg}")]
    InputImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The output image cannot be written.
    #[error("output {path}: {msg}")]
    Output {
        /// The output file (or its folder).
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Denoising produced NaN or infinite latents (activations overflowed, typically in f16);
    /// raised before the VAE decode, which would turn them into black images.
    #[error(
        "the denoised latents of image(s) {images:?} are not finite (NaN or infinity) in \
         {dtype}: {advice}"
    )]
    NonFiniteLatents {
        /// 0-based indices of the images whose latents hold a NaN or an infinity.
        images: Vec<usize>,
        /// The compute dtype of the run.
        dtype: ComputeDtype,
        /// What to try.
        advice: NonFiniteAdvice,
    },
    /// Arrays of the wrong shape reached a pipeline function (latents to pack or unpack).
    #[error("shape: {0}")]
    Shape(String),
    /// The MLX runtime could not be queried.
    #[error("MLX runtime: {0}")]
    Runtime(String),
    /// Text encoder error.
    #[error("text encoder: {0}")]
    TextEncoder(#[from] qwen_text_encoder::TextEncoderError),
    /// Transformer error.
    #[error("transformer: {0}")]
    Transformer(#[from] qwen_dit::DitError),
    /// VAE error.
    #[error("vae: {0}")]
    Vae(#[from] qwen_vae::VaeError),
    /// Scheduler error.
    #[error("scheduler: {0}")]
    Scheduler(#[from] flow_scheduler::SchedulerError),
    /// Safetensors reading error.
    #[error(transparent)]
    Weights(#[from] mlx_weights::WeightsError),
    /// An MLX operation failed.
    #[error("mlx: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    /// A shared op rejected its input.
    #[error(transparent)]
    FastOps(#[from] mlx_fastops::FastOpsError),
}

/// `Result` with [`PipelineError`].
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> PipelineError {
    PipelineError::Checkpoint {
        path: path.into(),
        msg: msg.into(),
    }
}

pub(crate) fn invalid(field: Field, msg: impl Into<String>) -> PipelineError {
    PipelineError::InvalidRequest {
        field,
        msg: msg.into(),
    }
}

/// An error and its causes (`source()` chain), `: `-separated, skipping a cause whose text an
/// outer message already holds: several variants ([`PipelineError::SchedulerOverride`],
/// wrapped stage errors) print their source themselves, so a plain walk would repeat it.
pub fn display_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cause = Some(e);
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn chain_skips_causes_already_printed() {
        let inner = Layer("key `x` unknown", None);
        let middle = Layer("override f.json: key `x` unknown", Some(Box::new(inner)));
        let outer = Layer("checkpoint /m", Some(Box::new(middle)));
        assert_eq!(
            display_chain(&outer),
            "checkpoint /m: override f.json: key `x` unknown"
        );
        let two = Layer("a", Some(Box::new(Layer("b", None))));
        assert_eq!(display_chain(&two), "a: b");
        assert_eq!(display_chain(&Layer("alone", None)), "alone");
    }
}
