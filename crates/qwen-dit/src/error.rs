//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong loading or running the transformer.
#[derive(Debug, thiserror::Error)]
pub enum DitError {
    /// `config.json` is unreadable as a config or violates an invariant.
    #[error("invalid transformer config: {0}")]
    InvalidConfig(String),
    /// A valid diffusers feature this crate does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An input of `forward` (or of the RoPE tables) has the wrong shape or dtype.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A quantized checkpoint or quantization request is inconsistent.
    #[error("LoRA: {0}")]
    Lora(String),
    /// Quantization error.
    #[error("quantization: {0}")]
    Quantization(String),
    /// The checkpoint could not be read or does not match the model.
    #[error(transparent)]
    Weights(#[from] mlx_weights::WeightsError),
    /// A fast op rejected its inputs or failed.
    #[error(transparent)]
    FastOps(#[from] mlx_fastops::FastOpsError),
    /// An MLX operation failed.
    #[error("mlx: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

/// Result alias of this crate.
pub type Result<T, E = DitError> = std::result::Result<T, E>;
