//! Helpers shared by the test binaries: seeded inputs and error measures.
#![allow(dead_code)]

use mlx_rs::{Array, Dtype};

/// Seeded standard-normal f32 array of `shape` times `std` plus `mean`.
pub fn randn(shape: &[i32], seed: u64, mean: f32, std: f32) -> anyhow::Result<Array> {
    let key = mlx_rs::random::key(seed)?;
    Ok(mlx_rs::random::normal::<f32>(shape, mean, std, &key)?)
}

/// The values of `a` as f32 on the host (evaluates `a`).
pub fn host(a: &Array) -> anyhow::Result<Vec<f32>> {
    let f = a.as_dtype(Dtype::Float32)?;
    f.eval()?;
    Ok(f.as_slice::<f32>().to_vec())
}

/// ‖got − want‖₂ / ‖want‖₂; infinite when any value is not finite (NaN never passes).
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() || !w.is_finite() {
            return f64::INFINITY;
        }
        let d = g as f64 - w as f64;
        num += d * d;
        den += (w as f64) * (w as f64);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Largest |got − want| / (1 + |want|) over all elements; infinite on any non-finite value.
pub fn max_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let mut m = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() || !w.is_finite() {
            return f64::INFINITY;
        }
        m = m.max((g as f64 - w as f64).abs() / (1.0 + (w as f64).abs()));
    }
    m
}

/// Asserts both error measures are within `tol`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let (r, m) = (rel_err(got, want), max_err(got, want));
    assert!(
        r <= tol && m <= tol * 10.0,
        "{what}: rel L2 err {r:.3e}, max err {m:.3e}, tol {tol:.1e}"
    );
}

/// Naive LayerNorm (no affine) of each row of length c, in f64.
pub fn naive_layer_norm(x: &[f32], c: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(c) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        out.extend(row.iter().map(|&v| (v as f64 - mean) * rstd));
    }
    out
}

/// Naive `LayerNorm(x)·(1 + scale) + shift` for x (b, l, c), shift/scale (mb, c), in f64.
pub fn naive_modulate(
    x: &[f32],
    shift: &[f32],
    scale: &[f32],
    (b, l, c, mb): (usize, usize, usize, usize),
    eps: f64,
) -> Vec<f32> {
    let n = naive_layer_norm(x, c, eps);
    let mut out = vec![0f32; b * l * c];
    for bi in 0..b {
        let m = if mb == 1 { 0 } else { bi };
        for li in 0..l {
            for ci in 0..c {
                let i = (bi * l + li) * c + ci;
                out[i] =
                    (n[i] * (1.0 + scale[m * c + ci] as f64) + shift[m * c + ci] as f64) as f32;
            }
        }
    }
    out
}

/// Naive `x + gate·y` for x, y (b, l, c) and gate (mb, c).
pub fn naive_gated(
    x: &[f32],
    gate: &[f32],
    y: &[f32],
    (b, l, c, mb): (usize, usize, usize, usize),
) -> Vec<f32> {
    let mut out = vec![0f32; b * l * c];
    for bi in 0..b {
        let m = if mb == 1 { 0 } else { bi };
        for li in 0..l {
            for ci in 0..c {
                let i = (bi * l + li) * c + ci;
                out[i] = (x[i] as f64 + gate[m * c + ci] as f64 * y[i] as f64) as f32;
            }
        }
    }
    out
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Naive interleaved-pair rotation: x of `xshape` (…, D); tables of `tshape` (same rank as
/// x, last axis D/2, other axes equal to x's or 1).
pub fn naive_rope(
    x: &[f32],
    xshape: &[usize],
    cos: &[f32],
    sin: &[f32],
    tshape: &[usize],
) -> Vec<f32> {
    let n = xshape.len();
    let d = xshape[n - 1];
    let xs = strides(xshape);
    let ts = strides(tshape);
    let mut out = vec![0f32; x.len()];
    let rows = x.len() / d;
    for r in 0..rows {
        // multi-index of the row over the leading axes
        let mut t_off = 0;
        let mut rem = r * d;
        for ax in 0..n - 1 {
            let i = rem / xs[ax];
            rem %= xs[ax];
            if tshape[ax] != 1 {
                t_off += i * ts[ax];
            }
        }
        for k in 0..d / 2 {
            let (a, b) = (x[r * d + 2 * k] as f64, x[r * d + 2 * k + 1] as f64);
            let (c, s) = (cos[t_off + k] as f64, sin[t_off + k] as f64);
            out[r * d + 2 * k] = (a * c - b * s) as f32;
            out[r * d + 2 * k + 1] = (a * s + b * c) as f32;
        }
    }
    out
}

/// Naive joint attention inputs (f64 inside): `first` (b, l1, 3·h·d) and `second`
/// (b, l2, 3·h·d) packed projections; `norms` the q/k RMSNorm weights of first then second;
/// tables (l1 + l2, d/2). Returns `[q, k, v]` stacked, (3, b, h, l1 + l2, d), row-major.
#[allow(clippy::too_many_arguments)]
pub fn naive_joint_qkv(
    first: &[f32],
    second: &[f32],
    (b, l1, l2, h, d): (usize, usize, usize, usize, usize),
    norms: [&[f32]; 4],
    eps: f64,
    cos: &[f32],
    sin: &[f32],
) -> Vec<f32> {
    let s = l1 + l2;
    let plane = b * h * s * d;
    let mut out = vec![0f32; 3 * plane];
    for bi in 0..b {
        for t in 0..s {
            let (src, row, wq, wk) = if t < l1 {
                (first, bi * l1 + t, norms[0], norms[1])
            } else {
                (second, bi * l2 + t - l1, norms[2], norms[3])
            };
            for hi in 0..h {
                let dst = ((bi * h + hi) * s + t) * d;
                for (p, w) in [(0usize, Some(wq)), (1, Some(wk)), (2, None)] {
                    let x = &src[row * 3 * h * d + p * h * d + hi * d..][..d];
                    let y: Vec<f64> = match w {
                        Some(w) => {
                            let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
                            let r = 1.0 / (ms + eps).sqrt();
                            x.iter()
                                .zip(w)
                                .map(|(&v, &w)| v as f64 * r * w as f64)
                                .collect()
                        }
                        None => x.iter().map(|&v| v as f64).collect(),
                    };
                    let o = &mut out[p * plane + dst..][..d];
                    for k in 0..d / 2 {
                        let (a, bb) = (y[2 * k], y[2 * k + 1]);
                        if p == 2 {
                            (o[2 * k], o[2 * k + 1]) = (a as f32, bb as f32);
                        } else {
                            let (c, sn) = (cos[t * d / 2 + k] as f64, sin[t * d / 2 + k] as f64);
                            o[2 * k] = (a * c - bb * sn) as f32;
                            o[2 * k + 1] = (a * sn + bb * c) as f32;
                        }
                    }
                }
            }
        }
    }
    out
}
