//! CPU tests: the reference implementations and wrappers against naive host math (f64),
//! dtype preservation, shape errors and dispatch on the CPU.
//!
//! Tolerances: inputs are f32 and MLX computes in f32, the naive side in f64, so the only
//! error is f32 rounding accumulated over at most a few hundred terms: relative L2 errors
//! land near 1e-7; 1e-5 leaves two decades of margin and is far below any real bug (a wrong
//! eps, a missing "1 +", a swapped sin sign all give errors above 1e-2).

mod common;

use common::*;
use mlx_fastops as fo;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype, ops};

const TOL_F32: f64 = 1e-5;

fn bf16(a: &Array) -> Array {
    a.as_dtype(Dtype::Bfloat16).unwrap()
}

#[test]
fn cpu_dispatch_is_reference() {
    // Whatever backend the library has (this binary also runs on the GPU machine), work on
    // the CPU device must take the reference path; without a GPU the backend is the CPU.
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    assert_eq!(fo::fused_path(), fo::Path::Reference);
    if !fo::cuda_available() && !fo::metal_available() {
        assert_eq!(fo::current_backend(), fo::Backend::Cpu);
    }
}

#[test]
fn layer_norm_modulate_matches_naive() -> anyhow::Result<()> {
    // odd C, both per-sample (B, C) and shared (1, C) modulation, non-trivial mean/scale
    for &(b, l, c, mb) in &[
        (2usize, 5usize, 37usize, 2usize),
        (3, 4, 64, 1),
        (1, 7, 3, 1),
    ] {
        let x = randn(&[b as i32, l as i32, c as i32], 1, 0.7, 2.0)?;
        let shift = randn(&[mb as i32, c as i32], 2, 0.3, 1.0)?;
        let scale = randn(&[mb as i32, c as i32], 3, -0.2, 0.8)?;
        let eps = 1e-6;
        let got = fo::reference::layer_norm_modulate(&x, &shift, &scale, eps)?;
        assert_eq!(got.shape(), &[b as i32, l as i32, c as i32]);
        let want = naive_modulate(
            &host(&x)?,
            &host(&shift)?,
            &host(&scale)?,
            (b, l, c, mb),
            eps as f64,
        );
        assert_close("layer_norm_modulate", &host(&got)?, &want, TOL_F32);
        let via_dispatch = fo::layer_norm_modulate(&x, &shift, &scale, eps)?;
        assert_close("dispatch", &host(&via_dispatch)?, &want, TOL_F32);
    }
    Ok(())
}

#[test]
fn layer_norm_modulate_eps_matters() -> anyhow::Result<()> {
    // rows of tiny variance make eps visible: a kernel ignoring eps would fail here
    let x = randn(&[1, 3, 16], 4, 0.0, 1e-3)?;
    let shift = randn(&[1, 16], 5, 0.0, 1.0)?;
    let scale = randn(&[1, 16], 6, 0.0, 1.0)?;
    let eps = 1e-4;
    let got = fo::layer_norm_modulate(&x, &shift, &scale, eps)?;
    let want = naive_modulate(
        &host(&x)?,
        &host(&shift)?,
        &host(&scale)?,
        (1, 3, 16, 1),
        eps as f64,
    );
    assert_close("eps", &host(&got)?, &want, TOL_F32);
    Ok(())
}

#[test]
fn layer_norm_and_rms_norm_match_naive() -> anyhow::Result<()> {
    let (r, c) = (6usize, 45usize);
    let x = randn(&[2, 3, c as i32], 7, 0.5, 1.5)?;
    let xv = host(&x)?;
    let got = fo::layer_norm(&x, 1e-5)?;
    let want: Vec<f32> = naive_layer_norm(&xv, c, 1e-5)
        .iter()
        .map(|&v| v as f32)
        .collect();
    assert_close("layer_norm", &host(&got)?, &want, TOL_F32);

    let w = randn(&[c as i32], 8, 1.0, 0.5)?;
    let wv = host(&w)?;
    let got = fo::rms_norm(&x, &w, 1e-6)?;
    let mut want = vec![0f32; r * c];
    for (i, row) in xv.chunks(c).enumerate() {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
        let rs = 1.0 / (ms + 1e-6).sqrt();
        for j in 0..c {
            want[i * c + j] = (row[j] as f64 * rs * wv[j] as f64) as f32;
        }
    }
    assert_close("rms_norm", &host(&got)?, &want, TOL_F32);
    Ok(())
}

/// GELU-tanh in f64 (PyTorch `approximate="tanh"`).
fn naive_gelu(v: f64) -> f64 {
    let k = (2.0f64 / std::f64::consts::PI).sqrt();
    0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
}

#[test]
fn gelu_tanh_matches_naive() -> anyhow::Result<()> {
    // wide inputs (std 3): both tails (≈ x and ≈ 0) and the curved middle are covered
    let x = randn(&[1000], 9, 0.0, 3.0)?;
    let want: Vec<f32> = host(&x)?
        .iter()
        .map(|&v| naive_gelu(v as f64) as f32)
        .collect();
    assert_close("gelu_tanh", &host(&fo::gelu_tanh(&x)?)?, &want, TOL_F32);
    assert_close(
        "reference gelu_tanh",
        &host(&fo::reference::gelu_tanh(&x)?)?,
        &want,
        TOL_F32,
    );
    Ok(())
}

#[test]
fn bias_gelu_tanh_matches_naive() -> anyhow::Result<()> {
    // odd last axis, rank 3 and rank 1; bias broadcast over every leading index
    for shape in [&[2, 5, 37][..], &[3, 64], &[11]] {
        let n = *shape.last().unwrap() as usize;
        let x = randn(shape, 10, 0.2, 2.0)?;
        let b = randn(&[n as i32], 11, -0.3, 1.0)?;
        let (xv, bv) = (host(&x)?, host(&b)?);
        let want: Vec<f32> = xv
            .iter()
            .enumerate()
            .map(|(i, &v)| naive_gelu(v as f64 + bv[i % n] as f64) as f32)
            .collect();
        let got = fo::bias_gelu_tanh(&x, &b)?;
        assert_eq!(got.shape(), shape);
        assert_close("bias_gelu_tanh", &host(&got)?, &want, TOL_F32);
        assert_close(
            "reference bias_gelu_tanh",
            &host(&fo::reference::bias_gelu_tanh(&x, &b)?)?,
            &want,
            TOL_F32,
        );
    }
    Ok(())
}

/// Naive attention for q (b, h, lq, d), k/v (b, hk, lk, d); mask (b|1, h|1, lq, lk) additive.
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, h, hk, lq, lk, d): (usize, usize, usize, usize, usize, usize),
    scale: f64,
    mask: Option<(&[f32], usize, usize)>,
) -> Vec<f32> {
    let mut out = vec![0f32; b * h * lq * d];
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / (h / hk);
            for i in 0..lq {
                let qrow = &q[((bi * h + hi) * lq + i) * d..][..d];
                let mut logits = vec![0f64; lk];
                for (j, lg) in logits.iter_mut().enumerate() {
                    let krow = &k[((bi * hk + kh) * lk + j) * d..][..d];
                    *lg = qrow
                        .iter()
                        .zip(krow)
                        .map(|(&a, &c)| a as f64 * c as f64)
                        .sum::<f64>()
                        * scale;
                    if let Some((m, mb, mh)) = mask {
                        let mbi = if mb == 1 { 0 } else { bi };
                        let mhi = if mh == 1 { 0 } else { hi };
                        *lg += m[((mbi * mh + mhi) * lq + i) * lk + j] as f64;
                    }
                }
                let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|&l| (l - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for t in 0..d {
                    let mut acc = 0f64;
                    for j in 0..lk {
                        acc += e[j] / z * v[((bi * hk + kh) * lk + j) * d + t] as f64;
                    }
                    out[((bi * h + hi) * lq + i) * d + t] = acc as f32;
                }
            }
        }
    }
    out
}

#[test]
fn sdpa_matches_naive_softmax_attention() -> anyhow::Result<()> {
    let (b, h, hk, lq, lk, d) = (2usize, 4usize, 2usize, 5usize, 7usize, 16usize);
    let q = randn(&[b as i32, h as i32, lq as i32, d as i32], 10, 0.0, 1.0)?;
    let k = randn(&[b as i32, hk as i32, lk as i32, d as i32], 11, 0.0, 1.0)?;
    let v = randn(&[b as i32, hk as i32, lk as i32, d as i32], 12, 0.0, 1.0)?;
    let scale = 1.0 / (d as f32).sqrt() * 1.7;
    let (qv, kv, vv) = (host(&q)?, host(&k)?, host(&v)?);
    let dims = (b, h, hk, lq, lk, d);

    let got = fo::sdpa(&q, &k, &v, scale, None)?;
    let want = naive_attention(&qv, &kv, &vv, dims, scale as f64, None);
    assert_close("sdpa", &host(&got)?, &want, TOL_F32);

    // additive mask, broadcast over heads: (b, 1, lq, lk)
    let add = randn(&[b as i32, 1, lq as i32, lk as i32], 13, 0.0, 2.0)?;
    let got = fo::sdpa(&q, &k, &v, scale, Some(&add))?;
    let want = naive_attention(
        &qv,
        &kv,
        &vv,
        dims,
        scale as f64,
        Some((&host(&add)?, b, 1)),
    );
    assert_close("sdpa additive", &host(&got)?, &want, TOL_F32);

    // boolean mask (1, 1, lq, lk): key j visible iff (i + j) % 3 != 0 or j == 0
    let mut keep = Vec::new();
    let mut addv = Vec::new();
    for i in 0..lq {
        for j in 0..lk {
            let k = (i + j) % 3 != 0 || j == 0;
            keep.push(k);
            addv.push(if k { 0.0 } else { -1e9 });
        }
    }
    let bm = Array::from_slice(&keep, &[1, 1, lq as i32, lk as i32]);
    let got = fo::sdpa(&q, &k, &v, scale, Some(&bm))?;
    let want = naive_attention(&qv, &kv, &vv, dims, scale as f64, Some((&addv, 1, 1)));
    assert_close("sdpa bool", &host(&got)?, &want, TOL_F32);
    Ok(())
}

#[test]
fn apply_rope_matches_naive_in_both_layouts() -> anyhow::Result<()> {
    // (B, H, L, D) with tables (L, D/2); (B, L, H, D) with tables (L, 1, D/2);
    // per-batch tables (B, 1, L, D/2)
    let cases: [(&[usize], &[usize]); 3] = [
        (&[2, 3, 5, 8], &[5, 4]),
        (&[2, 5, 3, 6], &[5, 1, 3]),
        (&[2, 3, 4, 10], &[2, 1, 4, 5]),
    ];
    for (i, (xs, ts)) in cases.iter().enumerate() {
        let xs_i: Vec<i32> = xs.iter().map(|&v| v as i32).collect();
        let ts_i: Vec<i32> = ts.iter().map(|&v| v as i32).collect();
        let x = randn(&xs_i, 20 + i as u64, 0.2, 1.0)?;
        let theta = randn(&ts_i, 30 + i as u64, 0.0, 2.0)?;
        let (cos, sin) = (ops::cos(&theta)?, ops::sin(&theta)?);
        let got = fo::apply_rope(&x, &cos, &sin)?;
        assert_eq!(got.shape(), x.shape());
        let mut tpad = vec![1usize; xs.len() - ts.len()];
        tpad.extend_from_slice(ts);
        let want = naive_rope(&host(&x)?, xs, &host(&cos)?, &host(&sin)?, &tpad);
        assert_close("apply_rope", &host(&got)?, &want, TOL_F32);
    }
    Ok(())
}

#[test]
fn gated_residual_matches_naive() -> anyhow::Result<()> {
    for &(b, l, c, mb) in &[(2usize, 3usize, 19usize, 2usize), (2, 4, 8, 1)] {
        let x = randn(&[b as i32, l as i32, c as i32], 40, 0.1, 1.0)?;
        let y = randn(&[b as i32, l as i32, c as i32], 41, -0.3, 1.0)?;
        let g = randn(&[mb as i32, c as i32], 42, 0.5, 1.0)?;
        let got = fo::gated_residual(&x, &g, &y)?;
        let want = naive_gated(&host(&x)?, &host(&g)?, &host(&y)?, (b, l, c, mb));
        assert_close("gated_residual", &host(&got)?, &want, TOL_F32);
    }
    Ok(())
}

#[test]
fn ops_preserve_bf16() -> anyhow::Result<()> {
    // f32 side inputs (tables, masks, modulation vectors, weights) must not promote a bf16
    // graph to f32.
    let x = bf16(&randn(&[1, 4, 16], 50, 0.0, 1.0)?);
    let v32 = randn(&[1, 16], 51, 0.0, 1.0)?;
    assert_eq!(
        fo::layer_norm_modulate(&x, &v32, &v32, 1e-6)?.dtype(),
        Dtype::Bfloat16
    );
    assert_eq!(
        fo::reference::layer_norm_modulate(&x, &v32, &v32, 1e-6)?.dtype(),
        Dtype::Bfloat16
    );
    assert_eq!(fo::gated_residual(&x, &v32, &x)?.dtype(), Dtype::Bfloat16);
    assert_eq!(fo::gelu_tanh(&x)?.dtype(), Dtype::Bfloat16);
    // an f32 bias must not promote the bf16 activation
    let b32 = randn(&[16], 56, 0.0, 1.0)?;
    assert_eq!(fo::bias_gelu_tanh(&x, &b32)?.dtype(), Dtype::Bfloat16);
    assert_eq!(
        fo::reference::bias_gelu_tanh(&x.as_dtype(Dtype::Float16)?, &b32)?.dtype(),
        Dtype::Float16
    );
    assert_eq!(fo::layer_norm(&x, 1e-6)?.dtype(), Dtype::Bfloat16);
    let w = randn(&[16], 52, 1.0, 0.1)?;
    assert_eq!(fo::rms_norm(&x, &w, 1e-6)?.dtype(), Dtype::Bfloat16);
    let t = randn(&[4, 8], 53, 0.0, 1.0)?;
    assert_eq!(
        fo::apply_rope(&x, &ops::cos(&t)?, &ops::sin(&t)?)?.dtype(),
        Dtype::Bfloat16
    );
    let q = bf16(&randn(&[1, 2, 4, 16], 54, 0.0, 1.0)?);
    let m = randn(&[1, 1, 4, 4], 55, 0.0, 1.0)?;
    assert_eq!(
        fo::sdpa(&q, &q, &q, 0.25, Some(&m))?.dtype(),
        Dtype::Bfloat16
    );
    let x16 = x.as_dtype(Dtype::Float16)?;
    assert_eq!(
        fo::layer_norm_modulate(&x16, &v32, &v32, 1e-6)?.dtype(),
        Dtype::Float16
    );
    Ok(())
}

#[test]
fn bf16_reference_is_close_to_f32() -> anyhow::Result<()> {
    // bf16 has an 8-bit mantissa (relative rounding 2^-9 ≈ 2e-3 per op, a few ops chained):
    // 1e-2 relative L2 bounds it; a wrong formula is off by O(1).
    let x = randn(&[1, 6, 48], 60, 0.3, 1.2)?;
    let s = randn(&[1, 48], 61, 0.0, 0.5)?;
    let c = randn(&[1, 48], 62, 0.0, 0.5)?;
    let want = host(&fo::layer_norm_modulate(&x, &s, &c, 1e-6)?)?;
    let got = fo::layer_norm_modulate(&bf16(&x), &bf16(&s), &bf16(&c), 1e-6)?;
    assert_close("bf16 modulate", &host(&got)?, &want, 1e-2);
    let want = host(&fo::gelu_tanh(&x)?)?;
    assert_close("bf16 gelu", &host(&fo::gelu_tanh(&bf16(&x))?)?, &want, 1e-2);
    let b = randn(&[48], 63, 0.0, 0.5)?;
    let want = host(&fo::bias_gelu_tanh(&x, &b)?)?;
    let got = fo::bias_gelu_tanh(&bf16(&x), &bf16(&b))?;
    assert_close("bf16 bias gelu", &host(&got)?, &want, 1e-2);
    Ok(())
}

#[test]
fn shape_errors_are_reported() -> anyhow::Result<()> {
    let x = randn(&[2, 3, 8], 70, 0.0, 1.0)?;
    let v = randn(&[2, 8], 71, 0.0, 1.0)?;
    let wrong = randn(&[3, 8], 72, 0.0, 1.0)?;
    assert!(fo::layer_norm_modulate(&x, &wrong, &v, 1e-6).is_err());
    assert!(fo::layer_norm_modulate(&v, &v, &v, 1e-6).is_err());
    assert!(fo::gated_residual(&x, &v, &v).is_err());
    assert!(fo::bias_gelu_tanh(&x, &v).is_err()); // bias must be (8,)
    let b7 = randn(&[7], 77, 0.0, 1.0)?;
    assert!(fo::bias_gelu_tanh(&x, &b7).is_err());
    let t = randn(&[3, 3], 73, 0.0, 1.0)?; // D/2 = 4 expected
    assert!(fo::apply_rope(&x, &t, &t).is_err());
    let t = randn(&[4, 4], 74, 0.0, 1.0)?; // L = 3 expected
    assert!(fo::apply_rope(&x, &t, &t).is_err());
    let q = randn(&[1, 3, 4, 8], 75, 0.0, 1.0)?;
    let k = randn(&[1, 2, 4, 8], 76, 0.0, 1.0)?; // 3 heads not a multiple of 2
    assert!(fo::sdpa(&q, &k, &k, 1.0, None).is_err());
    let i = Array::from_slice(&[1i32, 2], &[1, 1, 2]);
    assert!(matches!(
        fo::layer_norm(&i, 1e-6),
        Err(fo::FastOpsError::Dtype { .. })
    ));
    Ok(())
}

/// Inputs of one joint_qkv_heads case: (first, second, four norm weights, cos, sin).
fn joint_inputs(
    (b, l1, l2, h, d): (i32, i32, i32, i32, i32),
    seed: u64,
) -> anyhow::Result<(Array, Array, Vec<Array>, Array, Array)> {
    let first = randn(&[b, l1, 3 * h * d], seed, 0.2, 1.5)?;
    let second = randn(&[b, l2, 3 * h * d], seed + 1, -0.1, 0.7)?;
    let norms = (0..4)
        .map(|i| randn(&[d], seed + 2 + i, 1.0, 0.3))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let theta = randn(&[l1 + l2, d / 2], seed + 9, 0.0, 3.0)?;
    Ok((first, second, norms, ops::cos(&theta)?, ops::sin(&theta)?))
}

#[test]
fn joint_qkv_heads_matches_naive() -> anyhow::Result<()> {
    // batch 1 and 2, a one-token sequence, head dims 2 and 8, tables with and without the
    // middle axis
    for (i, &dims) in [(1, 3, 5, 2, 8), (2, 1, 4, 3, 2), (2, 6, 2, 1, 16)]
        .iter()
        .enumerate()
    {
        let (b, l1, l2, h, d) = dims;
        let (first, second, norms, cos, sin) = joint_inputs(dims, 40 + 10 * i as u64)?;
        let s = l1 + l2;
        let (c3, s3) = (
            ops::reshape(&cos, &[s, 1, d / 2])?,
            ops::reshape(&sin, &[s, 1, d / 2])?,
        );
        let (tc, ts) = if i == 1 { (&c3, &s3) } else { (&cos, &sin) };
        let j = fo::JointQkv {
            first: &first,
            second: &second,
            norms: [&norms[0], &norms[1], &norms[2], &norms[3]],
            heads: h,
            eps: 1e-6,
            cos: tc,
            sin: ts,
        };
        let got = fo::joint_qkv_heads(&j)?;
        for a in &got {
            assert_eq!(a.shape(), &[b, h, s, d]);
        }
        let got = host(&ops::stack(&got, 0)?)?;
        let nh: Vec<Vec<f32>> = norms.iter().map(host).collect::<anyhow::Result<_>>()?;
        let want = naive_joint_qkv(
            &host(&first)?,
            &host(&second)?,
            (b as usize, l1 as usize, l2 as usize, h as usize, d as usize),
            [&nh[0], &nh[1], &nh[2], &nh[3]],
            1e-6,
            &host(&cos)?,
            &host(&sin)?,
        );
        assert_close(&format!("joint_qkv_heads {dims:?}"), &got, &want, TOL_F32);
    }
    Ok(())
}

/// The op is the composition the model used before it existed: split, per-head RMSNorm,
/// concatenation, RoPE — bit for bit (the CPU parity tests of the DiT rely on it), in f32
/// and in bf16.
#[test]
fn joint_qkv_heads_is_the_unfused_composition_exactly() -> anyhow::Result<()> {
    let (b, l1, l2, h, d) = (2, 3, 7, 2, 16);
    let (first, second, norms, cos, sin) = joint_inputs((b, l1, l2, h, d), 77)?;
    for dt in [Dtype::Float32, Dtype::Bfloat16] {
        let (f, s) = (first.as_dtype(dt)?, second.as_dtype(dt)?);
        let j = fo::JointQkv {
            first: &f,
            second: &s,
            norms: [&norms[0], &norms[1], &norms[2], &norms[3]],
            heads: h,
            eps: 1e-6,
            cos: &cos,
            sin: &sin,
        };
        let got = fo::joint_qkv_heads(&j)?;
        let heads = |x: &Array, i: i32| -> anyhow::Result<Array> {
            let p = &ops::split_equal(x, 3, -1)?[i as usize];
            Ok(ops::reshape(p, &[b, p.dim(1), h, d])?)
        };
        let tc = ops::reshape(&cos, &[l1 + l2, 1, d / 2])?;
        let ts = ops::reshape(&sin, &[l1 + l2, 1, d / 2])?;
        for (i, out) in got.iter().enumerate() {
            let (a, c) = (heads(&f, i as i32)?, heads(&s, i as i32)?);
            let want = if i < 2 {
                let a = fo::rms_norm(&a, &norms[i], 1e-6)?;
                let c = fo::rms_norm(&c, &norms[2 + i], 1e-6)?;
                fo::apply_rope(&ops::concatenate(&[a, c], 1)?, &tc, &ts)?
            } else {
                ops::concatenate(&[a, c], 1)?
            };
            let want = want.transpose_axes(&[0, 2, 1, 3])?;
            assert_eq!(out.dtype(), dt);
            let flat = |a: &Array| -> anyhow::Result<Vec<f32>> { host(&ops::reshape(a, &[-1])?) };
            assert_eq!(flat(out)?, flat(&want)?, "plane {i} {dt:?}");
        }
    }
    Ok(())
}

#[test]
fn joint_qkv_heads_rejects_bad_shapes() -> anyhow::Result<()> {
    let (first, second, norms, cos, sin) = joint_inputs((1, 2, 3, 2, 8), 5)?;
    let n = [&norms[0], &norms[1], &norms[2], &norms[3]];
    let ok = fo::JointQkv {
        first: &first,
        second: &second,
        norms: n,
        heads: 2,
        eps: 1e-6,
        cos: &cos,
        sin: &sin,
    };
    assert!(fo::joint_qkv_heads(&ok).is_ok());
    let wrong_heads = fo::JointQkv { heads: 5, ..ok };
    let short = ops::reshape(&cos, &[5, 4])?.index((..4, ..));
    let wrong_table = fo::JointQkv {
        cos: &short,
        sin: &short,
        ..ok
    };
    let w3 = randn(&[3], 1, 1.0, 0.1)?;
    let wrong_norm = fo::JointQkv {
        norms: [&norms[0], &w3, &norms[2], &norms[3]],
        ..ok
    };
    let other = randn(&[2, 3, 48], 2, 0.0, 1.0)?;
    let wrong_batch = fo::JointQkv {
        second: &other,
        ..ok
    };
    for (what, j) in [
        ("heads", wrong_heads),
        ("table", wrong_table),
        ("norm", wrong_norm),
        ("batch", wrong_batch),
    ] {
        let e = fo::joint_qkv_heads(&j).expect_err(what).to_string();
        assert!(e.contains("joint_qkv_heads"), "{what}: {e}");
    }
    Ok(())
}

#[test]
fn linear_matches_naive_and_rejects_bad_shapes() -> anyhow::Result<()> {
    for (i, &(lead, k, n)) in [(&[1][..], 24, 7), (&[2, 3][..], 16, 5), (&[9][..], 8, 3)]
        .iter()
        .enumerate()
    {
        let mut xs = lead.to_vec();
        xs.push(k);
        let x = randn(&xs, 60 + i as u64, 0.1, 1.0)?;
        let w = randn(&[n, k], 61 + i as u64, 0.0, 0.5)?;
        let b = randn(&[n], 62 + i as u64, 0.3, 1.0)?;
        let got = fo::linear(&x, &w, &b)?;
        let mut want_shape = lead.to_vec();
        want_shape.push(n);
        assert_eq!(got.shape(), &want_shape[..]);
        let (xh, wh, bh) = (host(&x)?, host(&w)?, host(&b)?);
        let rows = xh.len() / k as usize;
        let (k, n) = (k as usize, n as usize);
        let want: Vec<f32> = (0..rows * n)
            .map(|e| {
                let (r, c) = (e / n, e % n);
                let s: f64 = (0..k)
                    .map(|j| xh[r * k + j] as f64 * wh[c * k + j] as f64)
                    .sum();
                (s + bh[c] as f64) as f32
            })
            .collect();
        assert_close("linear", &host(&got)?, &want, TOL_F32);
    }
    let x = randn(&[2, 8], 1, 0.0, 1.0)?;
    let w = randn(&[4, 7], 2, 0.0, 1.0)?;
    let b = randn(&[4], 3, 0.0, 1.0)?;
    let e = fo::linear(&x, &w, &b).unwrap_err().to_string();
    assert!(e.contains("linear"), "{e}");
    Ok(())
}

/// `dequantize` on this backend (the plain-MLX path on a CPU) gives MLX's values, and
/// inputs that do not fit are refused with the shapes named.
#[test]
fn dequantize_matches_mlx_and_checks_its_inputs() -> anyhow::Result<()> {
    let w = mlx_rs::random::normal::<f32>(&[8, 128], 0.0, 0.05, &mlx_rs::random::key(3)?)?;
    for (bits, group) in [(8, 64), (4, 32), (2, 128)] {
        let (wq, scales, biases) = mlx_rs::ops::quantize(&w, group, bits)?;
        let got = mlx_fastops::dequantize(&wq, &scales, &biases, group, bits)?;
        let want = mlx_rs::ops::dequantize(&wq, &scales, &biases, group, bits)?;
        assert!(got.eq_values(&want)?, "{bits}-bit group {group}");
        assert_eq!(got.shape(), [8, 128]);
    }
    let (wq, scales, biases) = mlx_rs::ops::quantize(&w, 64, 8)?;
    let e = mlx_fastops::dequantize(&wq, &scales, &biases, 32, 8)
        .expect_err("scales of another group size");
    assert!(e.to_string().contains("scales [8, 2]"), "{e}");
    let e = mlx_fastops::dequantize(&w, &scales, &biases, 64, 8).expect_err("float w");
    assert!(e.to_string().contains("uint32"), "{e}");
    let e = mlx_fastops::dequantize(&wq, &scales, &biases, 64, 7).expect_err("7 bits");
    assert!(e.to_string().contains("bits 7"), "{e}");
    Ok(())
}
