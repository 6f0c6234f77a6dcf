//! The crate's error type.

use mlx_rs::Dtype;

/// Errors returned by the ops of this crate.
#[derive(Debug, thiserror::Error)]
pub enum FastOpsError {
    /// An input has a shape the op does not accept.
    #[error("{op}: {msg}")]
    Shape {
        /// The op that rejected its inputs.
        op: &'static str,
        /// What was wrong, with the shapes involved.
        msg: String,
    },
    /// An input has a dtype the op does not accept (the ops take f32, f16 and bf16).
    #[error("{op}: unsupported dtype {dtype:?}")]
    Dtype {
        /// The op that rejected its inputs.
        op: &'static str,
        /// The offending dtype.
        dtype: Dtype,
    },
    /// A fused kernel was asked for explicitly where it cannot run (no GPU backend, or a
    /// shape outside the kernel's limits), or its set-up through MLX failed.
    #[error("{op}: fused kernel unavailable: {msg}")]
    Kernel {
        /// The op whose kernel failed.
        op: &'static str,
        /// Why.
        msg: String,
    },
    /// An error raised by MLX itself.
    #[error(transparent)]
    Mlx(#[from] mlx_rs::error::Exception),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, FastOpsError>;
