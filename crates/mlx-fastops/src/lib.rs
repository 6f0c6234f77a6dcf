//! # mlx-fastops
//!
//! Fast ops and fused GPU kernels over [mlx-rs](https://docs.rs/mlx-rs) for qwen-image-rs.
//! The Qwen-Image DiT (`qwen-dit`) calls these for attention, norms, GELU and the
//! element-wise work around its GEMMs (adaLN modulation, RoPE, gated residuals); the text
//! encoder and VAE use the plain ones. The fused ops mirror the arithmetic of diffusers'
//! `transformer_qwenimage.py` (`QwenImageTransformerBlock._modulate`, the gated residual
//! updates and `apply_rotary_emb_qwen` with `use_real=False`).
//!
//! ## Ops (all dtype-preserving: the output has the input's dtype; f32, f16, bf16)
//! - [`sdpa`]: scaled dot-product attention, (B, H, L, D) layout, optional boolean or
//!   additive mask (MLX fast SDPA).
//! - [`rms_norm`], [`layer_norm`] (no affine), [`gelu_tanh`] (constants in the input dtype).
//! - Fused: [`layer_norm_modulate`] `= LayerNorm(x)·(1 + scale) + shift`, [`apply_rope`]
//!   (interleaved pairs), [`gated_residual`] `= x + gate·y`.
//!
//! ## Dispatch of the fused ops
//! Each fused op has three implementations behind one entry point (see [`backend`]):
//! a CUDA kernel (MLX custom CUDA kernel through the raw mlx-sys FFI) when the current
//! stream is a GPU of MLX's CUDA backend, a Metal kernel (`mlx_rs::fast::MetalKernel`) on
//! a macOS GPU, and the reference of plain MLX ops ([`reference`]) on the CPU, when
//! `MLX_FASTOPS_REFERENCE=1` is set or [`set_force_reference`]`(true)` was called, and for
//! shapes outside a kernel's limits. [`fused_path`] says which one runs.
//!
//! The Metal kernels are line-by-line mirrors of the CUDA kernels; they have not been run
//! (the project's machines have no Apple GPU), only the CUDA kernels were measured and
//! tested on a GPU (NVIDIA H100).
//!
//! ## Using it on its own
//! ```
//! use mlx_rs::{Array, Dtype};
//! let x = mlx_rs::random::normal::<f32>(&[1, 8, 64], None, None, None)?.as_dtype(Dtype::Bfloat16)?;
//! let shift = mlx_rs::ops::zeros::<f32>(&[1, 64])?.as_dtype(Dtype::Bfloat16)?;
//! let scale = mlx_rs::ops::ones::<f32>(&[1, 64])?.as_dtype(Dtype::Bfloat16)?;
//! let y = mlx_fastops::layer_norm_modulate(&x, &shift, &scale, 1e-6)?;
//! assert_eq!(y.dtype(), Dtype::Bfloat16);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//! No op calls `eval`: the caller evaluates once per step.

pub mod backend;
pub mod error;
mod ops;
pub mod reference;

pub use backend::{
    Backend, Path, cuda_available, current_backend, fused_path, metal_available, reference_forced,
    set_force_reference,
};
pub use error::{FastOpsError, Result};
pub use ops::{gelu_tanh, layer_norm, rms_norm, sdpa};

use mlx_rs::Array;

/// `LayerNorm(x)·(1 + scale) + shift` (LayerNorm over C without affine parameters).
///
/// x (B, L, C); shift and scale (B, C) or (1, C), one vector per sample broadcast over L.
/// Output (B, L, C) in x's dtype. See [`reference::layer_norm_modulate`] for the exact
/// arithmetic; the fused kernels compute it in f32 and round once.
pub fn layer_norm_modulate(x: &Array, shift: &Array, scale: &Array, eps: f32) -> Result<Array> {
    reference::layer_norm_modulate(x, shift, scale, eps)
}

/// Rotary embedding on interleaved pairs `(x[2k], x[2k+1])` of the last axis with
/// precomputed `cos`/`sin` tables broadcastable to x's shape with the last axis halved.
///
/// Layouts and formula: [`reference::apply_rope`].
pub fn apply_rope(x: &Array, cos: &Array, sin: &Array) -> Result<Array> {
    reference::apply_rope(x, cos, sin)
}

/// `x + gate·y` with x, y (B, L, C) and gate (B, C) or (1, C) broadcast over L.
pub fn gated_residual(x: &Array, gate: &Array, y: &Array) -> Result<Array> {
    reference::gated_residual(x, gate, y)
}
