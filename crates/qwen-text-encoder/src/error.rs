//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading the text encoder or encoding prompts.
#[derive(Debug, thiserror::Error)]
pub enum TextEncoderError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, vocabulary) could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The model config is inconsistent or asks for something this crate does not implement.
    #[error("invalid text encoder config: {0}")]
    InvalidConfig(String),
    /// The tokenizer files are missing, malformed or inconsistent.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The caller's input is invalid (empty batch, max_sequence_length out of range, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Weight loading failed (missing, unexpected or mis-shaped keys are listed together).
    #[error(transparent)]
    Weights(#[from] mlx_weights::WeightsError),
    /// An op of `mlx-fastops` rejected its input (e.g. a dtype that is not a compute dtype).
    #[error(transparent)]
    FastOps(#[from] mlx_fastops::FastOpsError),
    /// An MLX operation failed.
    #[error("mlx: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, TextEncoderError>;

impl TextEncoderError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Self::Json {
            path: path.into(),
            source,
        }
    }
}
