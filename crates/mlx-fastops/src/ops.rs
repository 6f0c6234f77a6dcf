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
///
/// A score matrix larger than [`CPU_MAX_ATTENTION_SCORES`] elements on the CPU (where MLX
/// materialises it) or [`MAX_ATTENTION_SCORES`] on a GPU without a fused kernel for the call
/// is avoided by attending to the queries in row chunks (results are the same: rows are
/// independent). Where MLX runs cuDNN's flash attention ([`fused_attention_on_cuda`]) no
/// score matrix exists and the call is never split: the chunks' gathers and concatenation
/// cost a quarter of the attention time at an edit's 9500 tokens.
pub fn sdpa(q: &Array, k: &Array, v: &Array, scale: f32, mask: Option<&Array>) -> Result<Array> {
    let fused = crate::current_backend() == crate::Backend::Cuda && fused_attention_on_cuda(q, v);
    sdpa_limited(q, k, v, scale, mask, max_attention_scores(fused))
}

/// Whether MLX's CUDA backend runs attention on `q`, `v` as cuDNN's fused flash attention
/// (its `supports_sdpa_cudnn` for a prefill call): f16/bf16, query/key and value head sizes
/// multiples of 8 up to 128, a GPU of compute capability 8 or newer, and not switched off
/// with `MLX_CUDA_USE_CUDNN_SDPA=0`. (A single query row, decoding, is never chunked anyway.)
pub fn fused_attention_on_cuda(q: &Array, v: &Array) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| {
        std::env::var("MLX_CUDA_USE_CUDNN_SDPA").map_or(true, |v| v.trim().parse::<i64>() != Ok(0))
    });
    let head_ok = |a: &Array| {
        a.ndim() == 4 && {
            let d = a.shape()[3];
            d % 8 == 0 && d <= 128
        }
    };
    enabled
        && matches!(q.dtype(), Dtype::Float16 | Dtype::Bfloat16)
        && head_ok(q)
        && head_ok(v)
        && crate::cuda_compute_capability_major().is_some_and(|m| m >= 8)
}

/// [`sdpa`] with the score-matrix limit given.
pub(crate) fn sdpa_limited(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: Option<&Array>,
    limit: usize,
) -> Result<Array> {
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
    let mask = match mask {
        Some(m) if m.dtype() != Dtype::Bool => Some(cast(m, dt)?),
        m => m.cloned(),
    };
    let attend = |q: &Array, mask: Option<&Array>| -> Result<Array> {
        Ok(match mask {
            None => fast::scaled_dot_product_attention(q, k, v, scale, None, None)?,
            Some(m) => fast::scaled_dot_product_attention(
                q,
                k,
                v,
                scale,
                ScaledDotProductAttentionMask::Array(m),
                None,
            )?,
        })
    };
    let dims = |a: &[i32]| a.iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>();
    let (qd, kd) = (dims(qs), dims(ks));
    let Some(rows) = query_chunk(qd[0], qd[1], qd[2], kd[2], limit) else {
        return attend(q, mask.as_ref());
    };
    // Queries are independent: attend `rows` of them at a time, so no score matrix (which a
    // backend without a fused kernel materialises, e.g. MLX's CPU path) exceeds the limit.
    let lq = qs[2];
    let mut outs = Vec::new();
    let mut start = 0i32;
    while start < lq {
        let end = (start + rows as i32).min(lq);
        let idx = Array::from_slice(&(start..end).collect::<Vec<i32>>(), &[end - start]);
        let qc = q.take_axis(&idx, 2)?;
        let mc = match &mask {
            Some(m) if m.ndim() == 4 && m.shape()[2] == lq && lq > 1 => Some(m.take_axis(&idx, 2)?),
            m => m.clone(),
        };
        outs.push(attend(&qc, mc.as_ref())?);
        start = end;
    }
    Ok(mlx_rs::ops::concatenate(&outs, 2)?)
}

/// The largest attention score matrix, in elements (`B·H·Lq·Lk`), [`sdpa`] computes at once
/// on a GPU: just under 2³¹, what MLX's i32-indexed kernels can address (the fused kernels
/// do not materialise the scores at all; this only guards the fallbacks).
pub const MAX_ATTENTION_SCORES: usize = (1 << 31) - 1;

/// The same on the CPU, where MLX computes attention as matmul → softmax → matmul and holds
/// the scores: 2²⁶ (256 MiB in f32). A larger score matrix crashed MLX's CPU matmul past 2³¹
/// elements (the tiny model at 4096²) and, chunked at 2³⁰, ran out of memory on 24 GiB.
pub const CPU_MAX_ATTENTION_SCORES: usize = 1 << 26;

/// The limit for the stream the next op runs on (none where the call runs a `fused` kernel
/// that holds no scores); `MLX_FASTOPS_MAX_SCORES` (read once) lowers it, for tests.
fn max_attention_scores(fused: bool) -> usize {
    static ENV: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let base = if fused {
        usize::MAX
    } else if crate::current_backend() == crate::Backend::Cpu {
        CPU_MAX_ATTENTION_SCORES
    } else {
        MAX_ATTENTION_SCORES
    };
    let env = *ENV.get_or_init(|| {
        std::env::var("MLX_FASTOPS_MAX_SCORES")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&v| v > 0)
    });
    env.map_or(base, |v| v.min(base))
}

/// Query rows per chunk when attention of `b·h` heads over `lq × lk` would exceed `limit`
/// score elements (`None`: attend at once). Always at least one row.
pub fn query_chunk(b: usize, h: usize, lq: usize, lk: usize, limit: usize) -> Option<usize> {
    let per_row = b.saturating_mul(h).saturating_mul(lk).max(1);
    if per_row.saturating_mul(lq) <= limit {
        None
    } else {
        Some((limit / per_row).max(1))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(query_chunk(1, 2, 10, 10, 200), None);
        assert_eq!(query_chunk(1, 2, 10, 10, 199), Some(9));
        assert_eq!(query_chunk(1, 2, 10, 10, 1), Some(1));
        // The crash of issue 19: the tiny DiT at 4096² on the CPU (2 heads, 65 536 image + 20
        // text tokens) needs 8.6e9 scores at once; it is chunked to stay below 2^30.
        let s = 65_536 + 20;
        let rows = query_chunk(1, 2, s, s, MAX_ATTENTION_SCORES).unwrap();
        assert!(
            2 * rows * s <= MAX_ATTENTION_SCORES && rows >= 8000,
            "{rows}"
        );
        assert_eq!(query_chunk(usize::MAX, 2, 3, 4, 10), Some(1));
    }

    /// Chunked attention (a tiny limit forces 1-, 3- and 7-row chunks) equals attention in one
    /// piece: exactly, since every row is computed by the same ops on the same data.
    #[test]
    fn chunked_attention_equals_whole() -> anyhow::Result<()> {
        let k0 = mlx_rs::random::key(5)?;
        let ks = mlx_rs::random::split(&k0, 4)?;
        let (b, h, lq, lk, d) = (2, 3, 11, 9, 8);
        let q = mlx_rs::random::normal::<f32>(&[b, h, lq, d], None, None, &ks.0)?;
        let k = mlx_rs::random::normal::<f32>(&[b, h, lk, d], None, None, &ks.1)?;
        let v = mlx_rs::random::normal::<f32>(&[b, h, lk, d], None, None, &ks.1)?;
        let keep: Vec<bool> = (0..b * lk).map(|i| i % 4 != 3).collect();
        let key_mask = Array::from_slice(&keep, &[b, 1, 1, lk]);
        let full: Vec<bool> = (0..b * lq * lk).map(|i| i % 5 != 2).collect();
        let full_mask = Array::from_slice(&full, &[b, 1, lq, lk]);
        for mask in [None, Some(&key_mask), Some(&full_mask)] {
            let whole = sdpa_limited(&q, &k, &v, 0.3, mask, usize::MAX)?;
            for per_row in [1usize, 3, 7] {
                let limit = (b * h * lk) as usize * per_row;
                let chunked = sdpa_limited(&q, &k, &v, 0.3, mask, limit)?;
                assert_eq!(chunked.shape(), whole.shape());
                assert_eq!(
                    chunked.as_slice::<f32>(),
                    whole.as_slice::<f32>(),
                    "{per_row}"
                );
            }
        }
        Ok(())
    }
}
