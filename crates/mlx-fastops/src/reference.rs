//! Reference implementations of the fused ops, built from plain MLX ops.
//!
//! These define what the fused kernels compute; the dispatching entry points in the crate
//! root use them on the CPU, when the reference is forced, and for shapes outside a kernel's
//! limits. Each is dtype-preserving (the output has x's dtype).

use mlx_rs::{Array, Dtype, fast, ops};

use crate::error::Result;
use crate::ops::{cast, check_float, scalar, shape_err};

/// Checked shapes of a (B, L, C) activation with a per-sample (B or 1, C) vector.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // read by the kernel launchers
pub(crate) struct RowShape {
    pub b: i32,
    pub l: i32,
    pub c: i32,
    /// Batch size of the per-sample vectors: `b` or 1 (shared by every sample).
    pub mb: i32,
}

/// Validates x (B, L, C) and per-sample vectors (B or 1, C).
pub(crate) fn check_rows(op: &'static str, x: &Array, vecs: &[(&str, &Array)]) -> Result<RowShape> {
    check_float(op, x)?;
    let xs = x.shape();
    if xs.len() != 3 {
        return Err(shape_err(op, format!("x must be (B, L, C), got {xs:?}")));
    }
    let (b, l, c) = (xs[0], xs[1], xs[2]);
    let mut mb = b;
    for (i, (name, v)) in vecs.iter().enumerate() {
        let vs = v.shape();
        let ok = vs.len() == 2 && vs[1] == c && (vs[0] == b || vs[0] == 1);
        if !ok {
            return Err(shape_err(
                op,
                format!("{name} must be ({b}, {c}) or (1, {c}) for x {xs:?}, got {vs:?}"),
            ));
        }
        if i == 0 {
            mb = vs[0];
        } else if vs[0] != mb {
            return Err(shape_err(
                op,
                format!("per-sample vectors disagree on batch: {mb} vs {}", vs[0]),
            ));
        }
        check_float(op, v)?;
    }
    Ok(RowShape { b, l, c, mb })
}

/// Validates RoPE inputs; returns the tables' shapes left-padded with 1s to x's rank.
pub(crate) fn check_rope(x: &Array, cos: &Array, sin: &Array) -> Result<Vec<i32>> {
    const OP: &str = "apply_rope";
    check_float(OP, x)?;
    check_float(OP, cos)?;
    check_float(OP, sin)?;
    let xs = x.shape();
    let n = xs.len();
    if n < 2 || xs[n - 1] % 2 != 0 {
        return Err(shape_err(
            OP,
            format!("x must be (..., L, D) with D even, got {xs:?}"),
        ));
    }
    if cos.shape() != sin.shape() {
        return Err(shape_err(
            OP,
            format!("cos {:?} and sin {:?} differ", cos.shape(), sin.shape()),
        ));
    }
    let ts = cos.shape();
    let mut want = xs.to_vec();
    want[n - 1] /= 2;
    let bad = || {
        shape_err(
            OP,
            format!("cos/sin {ts:?} do not broadcast to {want:?} (x {xs:?} with D halved)"),
        )
    };
    if ts.len() > n || ts.last() != want.last() {
        return Err(bad());
    }
    let mut padded = vec![1; n - ts.len()];
    padded.extend_from_slice(ts);
    if padded.iter().zip(&want).any(|(&t, &w)| t != w && t != 1) {
        return Err(bad());
    }
    Ok(padded)
}

/// Validates x (..., N) and a bias (N,) over its last axis; returns N.
pub(crate) fn check_bias(op: &'static str, x: &Array, bias: &Array) -> Result<i32> {
    check_float(op, x)?;
    check_float(op, bias)?;
    let xs = x.shape();
    match xs.last() {
        Some(&n) if bias.shape() == [n] => Ok(n),
        _ => Err(shape_err(
            op,
            format!(
                "bias must be (N,) for x (..., N), got bias {:?} for x {xs:?}",
                bias.shape()
            ),
        )),
    }
}

/// GELU with the tanh approximation (PyTorch `approximate="tanh"`):
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, every op and constant in x's dtype (a
/// bf16 input is computed in bf16, as PyTorch does in eager mode).
pub fn gelu_tanh(x: &Array) -> Result<Array> {
    let dt = check_float("gelu_tanh", x)?;
    let k = (2.0f32 / std::f32::consts::PI).sqrt();
    let one = scalar(1.0, dt)?;
    // x·(1 + 0.044715·x²) = x + 0.044715·x³
    let inner = ops::multiply(
        x,
        ops::add(
            ops::multiply(ops::square(x)?, scalar(0.044_715, dt)?)?,
            &one,
        )?,
    )?;
    let t = ops::tanh(ops::multiply(inner, scalar(k, dt)?)?)?;
    Ok(ops::multiply(
        ops::multiply(x, scalar(0.5, dt)?)?,
        ops::add(t, &one)?,
    )?)
}

/// `GELU_tanh(x + bias)` with x (..., N) and bias (N,) broadcast over the last axis: the
/// bias (cast to x's dtype) is added in x's dtype, then [`gelu_tanh`].
pub fn bias_gelu_tanh(x: &Array, bias: &Array) -> Result<Array> {
    check_bias("bias_gelu_tanh", x, bias)?;
    gelu_tanh(&ops::add(x, cast(bias, x.dtype())?)?)
}

/// `LayerNorm(x)·(1 + scale) + shift`, LayerNorm without affine over C.
///
/// x (B, L, C); shift and scale (B, C) or (1, C), broadcast over L (per sample). The
/// LayerNorm runs through MLX's fast layer_norm (f32 accumulation), the modulation in x's
/// dtype with shift/scale cast to it — as diffusers computes it in bf16.
pub fn layer_norm_modulate(x: &Array, shift: &Array, scale: &Array, eps: f32) -> Result<Array> {
    check_rows(
        "layer_norm_modulate",
        x,
        &[("shift", shift), ("scale", scale)],
    )?;
    let dt = x.dtype();
    let n = fast::layer_norm(x, None, None, eps)?;
    let one_plus = ops::add(ops::expand_dims(cast(scale, dt)?, 1)?, scalar(1.0, dt)?)?;
    let sh = ops::expand_dims(cast(shift, dt)?, 1)?;
    Ok(ops::add(ops::multiply(n, one_plus)?, sh)?)
}

/// `x + gate·y` with x, y (B, L, C) and gate (B, C) or (1, C) broadcast over L, in x's dtype.
pub fn gated_residual(x: &Array, gate: &Array, y: &Array) -> Result<Array> {
    const OP: &str = "gated_residual";
    check_rows(OP, x, &[("gate", gate)])?;
    if y.shape() != x.shape() {
        return Err(shape_err(
            OP,
            format!("y {:?} must match x {:?}", y.shape(), x.shape()),
        ));
    }
    let dt = x.dtype();
    let g = ops::expand_dims(cast(gate, dt)?, 1)?;
    Ok(ops::add(x, ops::multiply(g, cast(y, dt)?)?)?)
}

/// Rotary embedding on interleaved pairs: for every pair `(x[2k], x[2k+1])` of the last
/// axis,
/// `out[2k]   = x[2k]·cos[k] − x[2k+1]·sin[k]`,
/// `out[2k+1] = x[2k]·sin[k] + x[2k+1]·cos[k]`
/// (the complex product `(x[2k] + i·x[2k+1])·e^{iθ_k}`, as diffusers' Qwen-Image
/// `apply_rotary_emb_qwen(use_real=False)`).
///
/// x has shape (..., D) with D even, e.g. (B, H, L, D) or (B, L, H, D); `cos` and `sin`
/// (same shape, any float dtype — f32 tables recommended) broadcast against x's shape with
/// the last axis halved, e.g. (L, D/2) for (B, H, L, D) or (L, 1, D/2) for (B, L, H, D).
/// The rotation is computed in f32 and rounded once to x's dtype.
pub fn apply_rope(x: &Array, cos: &Array, sin: &Array) -> Result<Array> {
    check_rope(x, cos, sin)?;
    let dt = x.dtype();
    let xs = x.shape().to_vec();
    let n = xs.len();
    let mut pairs = xs.clone();
    pairs[n - 1] /= 2;
    pairs.push(2);
    let xf = ops::reshape(cast(x, Dtype::Float32)?, &pairs)?;
    let parts = ops::split_equal(&xf, 2, -1)?;
    let (x0, x1) = (
        ops::squeeze_axes(&parts[0], &[-1])?,
        ops::squeeze_axes(&parts[1], &[-1])?,
    );
    let c = cast(cos, Dtype::Float32)?;
    let s = cast(sin, Dtype::Float32)?;
    let o0 = ops::subtract(ops::multiply(&x0, &c)?, ops::multiply(&x1, &s)?)?;
    let o1 = ops::add(ops::multiply(&x0, &s)?, ops::multiply(&x1, &c)?)?;
    let out = ops::reshape(ops::stack(&[o0, o1], -1)?, &xs)?;
    cast(&out, dt)
}

/// The inputs of [`joint_qkv_heads`] (and of the fused [`crate::joint_qkv_heads`]): the
/// packed Q/K/V projections of two sequences attended to jointly, first then second (an
/// MMDiT block's text and image streams), with per-sequence q/k RMSNorm weights and the
/// RoPE tables of the joint sequence.
#[derive(Debug, Clone, Copy)]
pub struct JointQkv<'a> {
    /// The first sequence's projection, (B, L1, 3·H·D): q, k and v side by side on the last
    /// axis, each H heads of D.
    pub first: &'a Array,
    /// The second sequence's projection, (B, L2, 3·H·D).
    pub second: &'a Array,
    /// RMSNorm weights (D,): q and k of the first sequence, then q and k of the second.
    pub norms: [&'a Array; 4],
    /// Number of heads H.
    pub heads: i32,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE cosines of the joint sequence, (L1 + L2, D/2) or (L1 + L2, 1, D/2); f32
    /// recommended.
    pub cos: &'a Array,
    /// RoPE sines, same shape as `cos`.
    pub sin: &'a Array,
}

impl JointQkv<'_> {
    /// Validates the shapes and dtypes; returns the head dimension D.
    pub(crate) fn check(&self) -> Result<i32> {
        const OP: &str = "joint_qkv_heads";
        let dt = check_float(OP, self.first)?;
        check_float(OP, self.second)?;
        let (fs, ss) = (self.first.shape(), self.second.shape());
        let h = self.heads;
        let width = fs.last().copied().unwrap_or(0);
        let d = if h > 0 { width / (3 * h) } else { 0 };
        if fs.len() != 3 || ss.len() != 3 || d == 0 || d % 2 != 0 || width != 3 * h * d {
            return Err(shape_err(
                OP,
                format!(
                    "first {fs:?} and second {ss:?} must be (B, L, 3·H·D) with H = {h} and D even"
                ),
            ));
        }
        if ss[0] != fs[0] || ss[2] != width || self.second.dtype() != dt {
            return Err(shape_err(
                OP,
                format!(
                    "second {ss:?} ({:?}) must match first {fs:?} ({dt:?}) in batch, width and dtype",
                    self.second.dtype()
                ),
            ));
        }
        for (i, w) in self.norms.iter().enumerate() {
            check_float(OP, w)?;
            if w.shape() != [d] {
                return Err(shape_err(
                    OP,
                    format!("norm weight {i} must be ({d},), got {:?}", w.shape()),
                ));
            }
        }
        check_float(OP, self.cos)?;
        check_float(OP, self.sin)?;
        let s = fs[1] + ss[1];
        let ok = |t: &[i32]| t == [s, d / 2] || t == [s, 1, d / 2];
        if !ok(self.cos.shape()) || self.sin.shape() != self.cos.shape() {
            return Err(shape_err(
                OP,
                format!(
                    "cos {:?} and sin {:?} must be ({s}, {}) or ({s}, 1, {})",
                    self.cos.shape(),
                    self.sin.shape(),
                    d / 2,
                    d / 2
                ),
            ));
        }
        Ok(d)
    }
}

/// Joint attention inputs from two packed Q/K/V projections: each sequence's q, k and v split
/// into H heads of D, q and k RMS-normalised per head with that sequence's weights
/// ([`crate::rms_norm`]), the sequences joined (first, then second), RoPE
/// ([`apply_rope`]) on q and k with the joint table; returned as `[q, k, v]`, each
/// (B, H, L1 + L2, D) (a transposed view of (B, L1 + L2, H, D)), ready for [`crate::sdpa`].
pub fn joint_qkv_heads(j: &JointQkv<'_>) -> Result<[Array; 3]> {
    let d = j.check()?;
    let h = j.heads;
    let split = |x: &Array, wq: &Array, wk: &Array| -> Result<[Array; 3]> {
        let parts = ops::split_equal(x, 3, -1)?;
        let heads = |a: &Array| ops::reshape(a, &[a.dim(0), a.dim(1), h, d]);
        Ok([
            crate::rms_norm(&heads(&parts[0])?, wq, j.eps)?,
            crate::rms_norm(&heads(&parts[1])?, wk, j.eps)?,
            heads(&parts[2])?,
        ])
    };
    let [qa, ka, va] = split(j.first, j.norms[0], j.norms[1])?;
    let [qb, kb, vb] = split(j.second, j.norms[2], j.norms[3])?;
    let s = j.first.dim(1) + j.second.dim(1);
    let cos = ops::reshape(j.cos, &[s, 1, d / 2])?;
    let sin = ops::reshape(j.sin, &[s, 1, d / 2])?;
    let q = apply_rope(&ops::concatenate(&[qa, qb], 1)?, &cos, &sin)?;
    let k = apply_rope(&ops::concatenate(&[ka, kb], 1)?, &cos, &sin)?;
    let v = ops::concatenate(&[va, vb], 1)?;
    let perm = [0, 2, 1, 3];
    Ok([
        q.transpose_axes(&perm)?,
        k.transpose_axes(&perm)?,
        v.transpose_axes(&perm)?,
    ])
}

/// Validates x (..., K), w (N, K), bias (N,); returns (rows of x, K, N).
pub(crate) fn check_linear(x: &Array, w: &Array, bias: &Array) -> Result<(i32, i32, i32)> {
    const OP: &str = "linear";
    check_float(OP, x)?;
    check_float(OP, w)?;
    check_float(OP, bias)?;
    let (xs, ws) = (x.shape(), w.shape());
    let k = xs.last().copied().unwrap_or(0);
    if xs.is_empty() || ws.len() != 2 || ws[1] != k || bias.shape() != [ws[0]] {
        return Err(shape_err(
            OP,
            format!(
                "x {xs:?}, w {ws:?} and bias {:?} must be (..., K), (N, K) and (N,)",
                bias.shape()
            ),
        ));
    }
    let rows: i64 = xs[..xs.len() - 1].iter().map(|&d| i64::from(d)).product();
    Ok((i32::try_from(rows).unwrap_or(i32::MAX), k, ws[0]))
}

/// `x · wᵀ + bias` (a Linear layer): x (..., K), w (N, K), bias (N,); MLX's `addmm` (f32
/// accumulation, one rounding to x's dtype).
pub fn linear(x: &Array, w: &Array, bias: &Array) -> Result<Array> {
    check_linear(x, w, bias)?;
    Ok(ops::addmm(bias, x, w.t(), None, None)?)
}

/// Checks the inputs of [`dequantize`]: w a uint32 matrix `(rows, cols·bits/32)` (any
/// leading axes), scales and biases `(rows, cols/group_size)` of one float dtype. Returns
/// cols.
pub(crate) fn check_dequantize(
    w: &Array,
    scales: &Array,
    biases: &Array,
    group_size: i32,
    bits: i32,
) -> Result<i32> {
    const OP: &str = "dequantize";
    check_float(OP, scales)?;
    if w.dtype() != Dtype::Uint32 || biases.dtype() != scales.dtype() {
        return Err(shape_err(
            OP,
            format!(
                "w must be uint32 and biases of the scales' dtype, got {:?}, {:?} and {:?}",
                w.dtype(),
                scales.dtype(),
                biases.dtype()
            ),
        ));
    }
    let ws = w.shape();
    let words = ws.last().copied().unwrap_or(0);
    if !matches!(bits, 2 | 3 | 4 | 5 | 6 | 8) || group_size <= 0 {
        return Err(shape_err(
            OP,
            format!("bits {bits} and group size {group_size} are not an MLX affine quantization"),
        ));
    }
    let cols = i64::from(words) * 32 / i64::from(bits);
    let mut want = ws.to_vec();
    if let Some(last) = want.last_mut() {
        *last = i32::try_from(cols / i64::from(group_size)).unwrap_or(i32::MAX);
    }
    if ws.len() < 2
        || cols % i64::from(group_size) != 0
        || scales.shape() != want.as_slice()
        || biases.shape() != want.as_slice()
    {
        return Err(shape_err(
            OP,
            format!(
                "w {ws:?} ({bits}-bit), scales {:?} and biases {:?} must be (rows, cols·bits/32) and (rows, cols/{group_size})",
                scales.shape(),
                biases.shape()
            ),
        ));
    }
    Ok(i32::try_from(cols).unwrap_or(i32::MAX))
}

/// MLX's affine dequantization, `w = scale·q + bias` per group of `group_size` columns
/// (`mlx::dequantize`), in the scales' dtype.
pub fn dequantize(
    w: &Array,
    scales: &Array,
    biases: &Array,
    group_size: i32,
    bits: i32,
) -> Result<Array> {
    check_dequantize(w, scales, biases, group_size, bits)?;
    Ok(ops::dequantize(w, scales, biases, group_size, bits)?)
}
