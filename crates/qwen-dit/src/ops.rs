//! The elementwise / normalisation / attention primitives the transformer uses.
//!
//! The attention, norms, GELU and the fused adaLN modulation / q-k norm + RoPE / gated residual come
//! from `mlx-fastops` (fused kernels on GPU, plain MLX references on CPU); this module is the
//! single place the model calls them from, plus the few small ops `mlx-fastops` does not
//! offer. Every scalar constant is made in the activation dtype (a strong `f32` constant
//! would promote a bf16 graph to f32).

use mlx_rs::{Array, Dtype, ops};

use crate::error::Result;

/// A scalar in `dtype` (avoids promoting half-precision graphs).
pub(crate) fn scalar(v: f32, dtype: Dtype) -> Result<Array> {
    Ok(mlx_fastops::scalar(v, dtype)?)
}

/// `x · sigmoid(x)`.
pub(crate) fn silu(x: &Array) -> Result<Array> {
    Ok(mlx_fastops::silu(x)?)
}

/// RMS normalisation over the last axis with a learnable weight (accumulated in f32).
pub(crate) fn rms_norm(x: &Array, w: &Array, eps: f32) -> Result<Array> {
    Ok(mlx_fastops::rms_norm(x, w, eps)?)
}

/// `LayerNorm(x) · (1 + scale) + shift` (LayerNorm without affine); `x` `(B, L, C)`,
/// `shift`/`scale` `(B, C)` or `(1, C)`, broadcast over the tokens.
pub(crate) fn layer_norm_modulate(
    x: &Array,
    shift: &Array,
    scale: &Array,
    eps: f32,
) -> Result<Array> {
    Ok(mlx_fastops::layer_norm_modulate(x, shift, scale, eps)?)
}

/// `x + gate · y`; `gate` `(B, C)` or `(1, C)`, broadcast over the tokens.
pub(crate) fn gated_residual(x: &Array, gate: &Array, y: &Array) -> Result<Array> {
    Ok(mlx_fastops::gated_residual(x, gate, y)?)
}

/// GELU, tanh approximation.
pub(crate) fn gelu_tanh(x: &Array) -> Result<Array> {
    Ok(mlx_fastops::gelu_tanh(x)?)
}

/// Joint attention inputs from the text and image streams' packed Q/K/V projections:
/// per-head q/k RMSNorm, `[text, image]` joined, RoPE (interleaved pairs, f32 tables
/// `(T+N, 1, D/2)`), `[q, k, v]` each `(B, H, T+N, D)`.
pub(crate) fn joint_qkv_heads(j: &mlx_fastops::JointQkv<'_>) -> Result<[Array; 3]> {
    Ok(mlx_fastops::joint_qkv_heads(j)?)
}

/// `x · wᵀ + bias` (MLX's `addmm`; a matrix-vector kernel on the GPU for a few rows, e.g.
/// the modulation of one timestep).
pub(crate) fn linear(x: &Array, w: &Array, bias: &Array) -> Result<Array> {
    Ok(mlx_fastops::linear(x, w, bias)?)
}

/// Scaled dot-product attention on `(B, H, S, D)` inputs; `mask` boolean `(B, 1, 1, S)`
/// (true = attend).
pub(crate) fn sdpa(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: Option<&Array>,
) -> Result<Array> {
    Ok(mlx_fastops::sdpa(q, k, v, scale, mask)?)
}

/// Clamps to the finite f16 range (diffusers clips the streams after each block in f16).
pub(crate) fn clip_f16(x: &Array) -> Result<Array> {
    let lo = scalar(-65504.0, x.dtype())?;
    let hi = scalar(65504.0, x.dtype())?;
    Ok(ops::minimum(ops::maximum(x, lo)?, hi)?)
}
