//! The pipeline's error type.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, checking, loading or running the pipeline.
///
/// Variants raised before any heavy work (a bad request, a missing or corrupt file) name the
/// offending input; errors of the stage crates are wrapped as they are.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// `--model` names neither a directory nor a Hugging Face repository in the local cache.
    #[error("{0}")]
    ModelNotFound(String),
    /// The checkpoint folder is incomplete or inconsistent (missing component, missing or
    /// corrupt file, components whose sizes do not fit together).
    #[error("{path}: {msg}")]
    Checkpoint {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A generation request that cannot be run (bad size, zero steps, empty prompt…).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The `--init-latents` file is missing, unreadable or does not fit the request.
    #[error("init latents {path}: {msg}")]
    InitLatents {
        /// The latents file.
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
         {dtype:?}: {advice}"
    )]
    NonFiniteLatents {
        /// 0-based indices of the images whose latents hold a NaN or an infinity.
        images: Vec<usize>,
        /// The compute dtype of the run.
        dtype: mlx_rs::Dtype,
        /// What to try, for this dtype.
        advice: String,
    },
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
}

/// `Result` with [`PipelineError`].
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> PipelineError {
    PipelineError::Checkpoint {
        path: path.into(),
        msg: msg.into(),
    }
}
