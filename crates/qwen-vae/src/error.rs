//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong loading or running the VAE.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// `vae/config.json` could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `vae/config.json` is not valid JSON for [`crate::VaeConfig`].
    #[error("{path}: invalid VAE config: {source}")]
    ConfigParse {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The configuration is inconsistent (e.g. `latents_mean` length ≠ `z_dim`).
    #[error("invalid VAE config: {0}")]
    InvalidConfig(String),
    /// Tiling parameters are unusable (e.g. a stride larger than the tile).
    #[error("invalid tiling: {0}")]
    InvalidTiling(String),
    /// An input array has the wrong rank, channel count or size.
    #[error("bad input shape: {0}")]
    Shape(String),
    /// The checkpoint could not be read or does not match the model.
    #[error(transparent)]
    Weights(#[from] mlx_weights::WeightsError),
    /// An op of `mlx-fastops` rejected its input (e.g. a dtype that is not a compute dtype).
    #[error(transparent)]
    FastOps(#[from] mlx_fastops::FastOpsError),
    /// An MLX operation failed.
    #[error("mlx: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

impl From<mlx_rs::error::AsSliceError> for VaeError {
    fn from(e: mlx_rs::error::AsSliceError) -> Self {
        VaeError::Shape(format!("cannot read array data: {e}"))
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, VaeError>;
