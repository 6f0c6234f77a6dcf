//! Thin, dtype-preserving wrappers over MLX's fast ops, and shared input checks.

use mlx_rs::fast::ScaledDotProductAttentionMask;
use mlx_rs::{Array, Dtype, fast};

use crate::error::{FastOpsError, Result};

/// Rejects non-floating dtypes (the ops take f32, f16 and bf16).
pub(crate) fn check_float(op: &'static str, a: &Array) -> Result<Dtype> {
    match a.dtype() {
        dt @ (Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16) => Ok(dt),
        dtype => Err(FastOpsError::Dtype { op, dtype }),
    }
}

/// A scalar constant in dtype `dt`. In mlx-rs `Array::from_f32` is a strong f32 array (not a
/// weak scalar as in Python MLX): used as is in a bf16 graph it promotes every op after it to
/// f32, so constants are made in the activation dtype with this.
pub fn scalar(v: f32, dt: Dtype) -> Result<Array> {
    let a = Array::from_f32(v);
    Ok(if dt == Dtype::Float32 {
        a
    } else {
        a.as_dtype(dt)?
    })
}

/// `x · sigmoid(x)`, in x's dtype (no constant enters the graph).
pub fn silu(x: &Array) -> Result<Array> {
    Ok(mlx_rs::ops::multiply(x, mlx_rs::ops::sigmoid(x)?)?)
}

/// `a` cast to `dt` (no-op when it already has that dtype).
pub(crate) fn cast(a: &Array, dt: Dtype) -> Result<Array> {
    if a.dtype() == dt {
        Ok(a.clone())
    } else {
        Ok(a.as_dtype(dt)?)
    }
}

pub(crate) fn shape_err(op: &'static str, msg: impl Into<String>) -> FastOpsError {
    FastOpsError::Shape {
        op,
        msg: msg.into(),
    }
}

/// Scaled dot-product attention `softmax(scale·Q·Kᵀ + mask)·V` through MLX's fast SDPA.
///
/// Layout: `q` (B, H, Lq, D), `k` and `v` (B, Hkv, Lk, D) with H a multiple of Hkv (GQA and
/// MQA: do not pre-tile K/V). Output (B, H, Lq, D) in q's dtype.
///
/// `mask` broadcasts against (B, H, Lq, Lk) and is either boolean (`true` = attend) or
/// additive (added to the scaled logits; cast to q's dtype so a bf16 graph stays bf16 —
/// use a large negative finite value such as -1e4·… or `-inf` for masked positions). MLX
/// computes the softmax in f32 whatever the input dtype.
pub fn sdpa(q: &Array, k: &Array, v: &Array, scale: f32, mask: Option<&Array>) -> Result<Array> {
    const OP: &str = "sdpa";
    let dt = check_float(OP, q)?;
    for (name, a) in [("q", q), ("k", k), ("v", v)] {
        if a.ndim() != 4 {
            return Err(shape_err(
                OP,
                format!("{name} must be (B, H, L, D), got {:?}", a.shape()),
            ));
        }
        if a.dtype() != dt {
            return Err(shape_err(
                OP,
                format!("{name} has dtype {:?}, q has {dt:?}", a.dtype()),
            ));
        }
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if ks != vs || qs[0] != ks[0] || qs[3] != ks[3] || ks[1] == 0 || qs[1] % ks[1] != 0 {
        return Err(shape_err(
            OP,
            format!("incompatible q {qs:?}, k {ks:?}, v {vs:?}"),
        ));
    }
    let out = match mask {
        None => fast::scaled_dot_product_attention(q, k, v, scale, None, None)?,
        Some(m) => {
            let m = if m.dtype() == Dtype::Bool {
                m.clone()
            } else {
                cast(m, dt)?
            };
            fast::scaled_dot_product_attention(
                q,
                k,
                v,
                scale,
                ScaledDotProductAttentionMask::Array(&m),
                None,
            )?
        }
    };
    Ok(out)
}

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) · weight`, accumulated in f32 by
/// MLX; `weight` (C,) is cast to x's dtype so the output keeps x's dtype.
pub fn rms_norm(x: &Array, weight: &Array, eps: f32) -> Result<Array> {
    const OP: &str = "rms_norm";
    let dt = check_float(OP, x)?;
    let c = x.shape().last().copied().unwrap_or(0);
    if weight.shape() != [c] {
        return Err(shape_err(
            OP,
            format!(
                "weight {:?} must be ({c},) for x {:?}",
                weight.shape(),
                x.shape()
            ),
        ));
    }
    Ok(fast::rms_norm(x, Some(&cast(weight, dt)?), eps)?)
}

/// LayerNorm over the last axis without affine parameters: `(x − mean) / sqrt(var + eps)`
/// (biased variance, as PyTorch), accumulated in f32 by MLX, output in x's dtype.
pub fn layer_norm(x: &Array, eps: f32) -> Result<Array> {
    check_float("layer_norm", x)?;
    Ok(fast::layer_norm(x, None, None, eps)?)
}
