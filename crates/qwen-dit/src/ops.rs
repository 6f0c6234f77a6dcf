//! The elementwise / normalisation / attention primitives the transformer uses.
//!
//! Private fallbacks written with plain mlx-rs ops, with the signatures planned for
//! `mlx-fastops` (`sdpa`, `rms_norm`, `layer_norm`, `gelu_tanh`, `apply_rope`,
//! `layer_norm_modulate`, `gated_residual`): when that crate's fused versions land, switching
//! is a change to this one file. Every scalar constant is made in the activation dtype (a
//! strong `f32` constant would promote a bf16 graph to f32).

use mlx_rs::{Array, Dtype, fast, ops};

use crate::error::Result;

/// A scalar in `dtype` (avoids promoting half-precision graphs).
pub(crate) fn scalar(v: f32, dtype: Dtype) -> Result<Array> {
    let a = Array::from_f32(v);
    Ok(if dtype == Dtype::Float32 {
        a
    } else {
        a.as_dtype(dtype)?
    })
}

/// `x · sigmoid(x)`.
pub(crate) fn silu(x: &Array) -> Result<Array> {
    Ok(ops::multiply(x, ops::sigmoid(x)?)?)
}

/// RMS normalisation over the last axis with a learnable weight (computed in f32 inside MLX).
pub(crate) fn rms_norm(x: &Array, w: &Array, eps: f32) -> Result<Array> {
    Ok(fast::rms_norm(x, Some(w), eps)?)
}

/// LayerNorm over the last axis without affine parameters.
pub(crate) fn layer_norm(x: &Array, eps: f32) -> Result<Array> {
    Ok(fast::layer_norm(x, None, None, eps)?)
}

/// `LayerNorm(x) · (1 + scale) + shift`; `shift`/`scale` broadcast over the token axis
/// (shape `(B, 1, D)`).
pub(crate) fn layer_norm_modulate(
    x: &Array,
    shift: &Array,
    scale: &Array,
    eps: f32,
) -> Result<Array> {
    let one = scalar(1.0, scale.dtype())?;
    let n = layer_norm(x, eps)?;
    Ok(ops::add(ops::multiply(n, ops::add(scale, one)?)?, shift)?)
}

/// `x + gate · y` (`gate` of shape `(B, 1, D)`).
pub(crate) fn gated_residual(x: &Array, gate: &Array, y: &Array) -> Result<Array> {
    Ok(ops::add(x, ops::multiply(gate, y)?)?)
}

/// GELU, tanh approximation: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
pub(crate) fn gelu_tanh(x: &Array) -> Result<Array> {
    let dt = x.dtype();
    let c = scalar((2.0f64 / std::f64::consts::PI).sqrt() as f32, dt)?;
    let k = scalar(0.044715, dt)?;
    let half = scalar(0.5, dt)?;
    let one = scalar(1.0, dt)?;
    let x3 = ops::multiply(ops::multiply(x, x)?, x)?;
    let inner = ops::multiply(c, ops::add(x, ops::multiply(k, x3)?)?)?;
    let t = ops::add(one, ops::tanh(inner)?)?;
    Ok(ops::multiply(ops::multiply(half, x)?, t)?)
}

/// Rotary embedding on interleaved pairs `(2k, 2k+1)` of the last axis, as a complex multiply
/// by `cos + i·sin`.
///
/// `x`: `(B, S, H, D)`; `cos`, `sin`: `(S, 1, D/2)` (broadcast over batch and heads).
pub(crate) fn apply_rope(x: &Array, cos: &Array, sin: &Array) -> Result<Array> {
    let shape = x.shape().to_vec();
    let d = shape[shape.len() - 1];
    let mut pair_shape = shape[..shape.len() - 1].to_vec();
    pair_shape.extend_from_slice(&[d / 2, 2]);
    let xp = x.reshape(&pair_shape)?;
    let parts = ops::split_equal(&xp, 2, -1)?;
    let x0 = parts[0].squeeze_axes(&[-1])?;
    let x1 = parts[1].squeeze_axes(&[-1])?;
    let o0 = ops::subtract(ops::multiply(&x0, cos)?, ops::multiply(&x1, sin)?)?;
    let o1 = ops::add(ops::multiply(&x0, sin)?, ops::multiply(&x1, cos)?)?;
    Ok(ops::stack(&[o0, o1], -1)?.reshape(&shape)?)
}

/// Scaled dot-product attention on `(B, H, S, D)` inputs; `mask` is a boolean
/// `(B, 1, 1, S)` array (true = attend).
pub(crate) fn sdpa(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: Option<&Array>,
) -> Result<Array> {
    Ok(match mask {
        Some(m) => fast::scaled_dot_product_attention(q, k, v, scale, m, None)?,
        None => fast::scaled_dot_product_attention(
            q,
            k,
            v,
            scale,
            None::<fast::ScaledDotProductAttentionMask>,
            None,
        )?,
    })
}

/// Clamps to the finite f16 range (diffusers clips the streams after each block in f16).
pub(crate) fn clip_f16(x: &Array) -> Result<Array> {
    let lo = scalar(-65504.0, x.dtype())?;
    let hi = scalar(65504.0, x.dtype())?;
    Ok(ops::minimum(ops::maximum(x, lo)?, hi)?)
}
