//! GPU tests of the fused kernels against the reference (run on a machine with MLX's CUDA
//! or Metal backend; on a CPU-only machine the binary reports "skipped" and passes).
//!
//! Every case draws fresh random inputs, poisons MLX's buffer cache with NaN-filled arrays
//! of the output's size right before the kernel runs (an element the kernel fails to write
//! then reads back as NaN or a stale value), and compares every output element with the
//! reference computed in f32 on the CPU from the same (rounded) inputs. NaN never passes.
//!
//! Tolerances (relative L2 error; max error bound is 10× that, normalised by 1 + |ref|):
//! - f32: 1e-5 — same arithmetic up to f32 summation order (errors ~1e-7).
//! - f16: 2e-3 — one final rounding to f16 (2^-11 relative) plus f16 inputs' rounding
//!   differences in the reference path; ~5e-4 expected.
//! - bf16: 8e-3 — one final rounding to bf16 (2^-9 relative, ~1.1e-3 rms); a wrong index
//!   or formula gives errors of order 1.
//!
//! The GELU kernels use tighter, op-specific tolerances (see `gelu_tol`).
//!
//! Run: `gpu` (a plain binary, `harness = false`); `gpu gelu` runs only the GELU cases,
//! `gpu joint` only the joint_qkv_heads and linear ones, `gpu attention` only attention's,
//! `gpu dequantize` only the dequantization's; other arguments are ignored.

mod common;

use common::*;
use mlx_fastops as fo;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Device, Dtype, ops};

struct Report {
    failures: usize,
    cases: usize,
}

impl Report {
    /// Records one case: `got` is the fused result (an error — e.g. a kernel that fails
    /// to compile — counts as a failure and the run goes on).
    fn check(
        &mut self,
        what: &str,
        dt: Dtype,
        got: fo::Result<Array>,
        want: &[f32],
    ) -> anyhow::Result<()> {
        let tol = match dt {
            Dtype::Float32 => 1e-5,
            Dtype::Float16 => 2e-3,
            _ => 8e-3,
        };
        self.check_tol(what, dt, got, want, tol, tol * 10.0)
    }

    /// [`Report::check`] with explicit relative-L2 and max-error tolerances.
    fn check_tol(
        &mut self,
        what: &str,
        dt: Dtype,
        got: fo::Result<Array>,
        want: &[f32],
        tol: f64,
        max_tol: f64,
    ) -> anyhow::Result<()> {
        self.cases += 1;
        let outcome = got.map_err(anyhow::Error::from).and_then(|g| {
            let v = host(&g)?;
            Ok((g.dtype(), v))
        });
        let (out_dt, g) = match outcome {
            Ok(v) => v,
            Err(e) => {
                self.failures += 1;
                let msg = e.to_string();
                println!(
                    "FAIL   {what:<58} {:>9} error: {}",
                    format!("{dt:?}"),
                    &msg[..msg.len().min(600)]
                );
                return Ok(());
            }
        };
        let (r, m) = (rel_err(&g, want), max_err(&g, want));
        let ok = out_dt == dt && r <= tol && m <= max_tol;
        if !ok {
            self.failures += 1;
        }
        println!(
            "{:<6} {:<58} {:>9} rel {:>9.2e} max {:>9.2e} tol {:>7.0e} out {:?}",
            if ok { "ok" } else { "FAIL" },
            what,
            format!("{dt:?}"),
            r,
            m,
            tol,
            out_dt
        );
        Ok(())
    }
}

/// Fills the allocator cache with a NaN buffer of `shape`×`dt`, so an unwritten output
/// element cannot silently hold a previous correct result.
fn poison(shape: &[i32], dt: Dtype) -> anyhow::Result<()> {
    let p = ops::full::<f32>(shape, Array::from_f32(f32::NAN))?.as_dtype(dt)?;
    p.eval()?;
    drop(p);
    Ok(())
}

fn on_cpu<T>(f: impl FnOnce() -> T) -> T {
    mlx_rs::with_device(Device::cpu(), f)
}

/// Casts an f32 input to dt and returns it with its rounded values as an f32 CPU copy.
fn input(
    shape: &[i32],
    seed: u64,
    mean: f32,
    std: f32,
    dt: Dtype,
) -> anyhow::Result<(Array, Array)> {
    let a = randn(shape, seed, mean, std)?.as_dtype(dt)?;
    a.eval()?;
    let f = Array::from_slice(&host(&a)?, shape);
    Ok((a, f))
}

const DTYPES: [Dtype; 3] = [Dtype::Float32, Dtype::Bfloat16, Dtype::Float16];

fn modulate_cases(rep: &mut Report, seed: &mut u64) -> anyhow::Result<()> {
    // (B, L, C, MB)
    let shapes: [(i32, i32, i32, i32); 6] = [
        (1, 4224, 3072, 1),
        (2, 77, 3072, 2),
        (2, 33, 1000, 1),
        (3, 5, 37, 3),
        (1, 16, 8192, 1),
        (1, 3, 1, 1),
    ];
    for dt in DTYPES {
        for &(b, l, c, mb) in &shapes {
            *seed += 10;
            let (x, xf) = input(&[b, l, c], *seed, 0.5, 2.0, dt)?;
            let (sh, shf) = input(&[mb, c], *seed + 1, 0.2, 1.0, dt)?;
            let (sc, scf) = input(&[mb, c], *seed + 2, -0.1, 0.7, dt)?;
            let want = on_cpu(|| fo::reference::layer_norm_modulate(&xf, &shf, &scf, 1e-6))?;
            let want = host(&want)?;
            poison(&[b, l, c], dt)?;
            let got = fo::fused::layer_norm_modulate(&x, &sh, &sc, 1e-6);
            rep.check(
                &format!("ln_modulate ({b},{l},{c}) mod ({mb},{c})"),
                dt,
                got,
                &want,
            )?;
        }
        // non-contiguous x (a transpose) and shift/scale as column slices of a (B, 6C) tensor
        let (b, l, c) = (2, 40, 264);
        *seed += 10;
        let (xt, xtf) = input(&[b, c, l], *seed, 0.0, 1.5, dt)?;
        let x = ops::swap_axes(&xt, 1, 2)?;
        let xf = ops::swap_axes(&xtf, 1, 2)?;
        let (m, mf) = input(&[b, 6 * c], *seed + 1, 0.0, 1.0, dt)?;
        // strided views (no copy): columns [k·C, (k+1)·C) of the (B, 6C) tensor
        let cols = |a: &Array, k: i32| a.index((.., k * c..(k + 1) * c));
        let (sh, sc, shf, scf) = (cols(&m, 3), cols(&m, 4), cols(&mf, 3), cols(&mf, 4));
        let want = host(&on_cpu(|| {
            fo::reference::layer_norm_modulate(&xf, &shf, &scf, 1e-5)
        })?)?;
        poison(&[b, l, c], dt)?;
        let got = fo::fused::layer_norm_modulate(&x, &sh, &sc, 1e-5);
        rep.check(
            "ln_modulate non-contiguous x (transpose), sliced mod",
            dt,
            got,
            &want,
        )?;
        // misaligned rows: a view starting one element into a buffer (scalar fallback path)
        let (l, c) = (9, 1000);
        *seed += 10;
        let (flat, flatf) = input(&[l * c + 1], *seed, 0.3, 1.0, dt)?;
        // a view with a one-element offset (no copy), so row pointers are misaligned
        let x = ops::reshape(flat.index(1..), &[1, l, c])?;
        let xf = ops::reshape(flatf.index(1..), &[1, l, c])?;
        let (sh, shf) = input(&[1, c], *seed + 1, 0.0, 1.0, dt)?;
        let (sc, scf) = input(&[1, c], *seed + 2, 0.0, 1.0, dt)?;
        let want = host(&on_cpu(|| {
            fo::reference::layer_norm_modulate(&xf, &shf, &scf, 1e-6)
        })?)?;
        poison(&[1, l, c], dt)?;
        let got = fo::fused::layer_norm_modulate(&x, &sh, &sc, 1e-6);
        rep.check("ln_modulate offset view (1,9,1000)", dt, got, &want)?;
    }
    // thread-count variants of the bf16 kernel at the DiT shape (the bench tunes these)
    for tpb in [32, 64, 96, 192, 384] {
        fo::fused::set_ln_modulate_threads(Some(tpb));
        *seed += 10;
        let dt = Dtype::Bfloat16;
        let (x, xf) = input(&[1, 300, 3072], *seed, 0.5, 2.0, dt)?;
        let (sh, shf) = input(&[1, 3072], *seed + 1, 0.2, 1.0, dt)?;
        let (sc, scf) = input(&[1, 3072], *seed + 2, -0.1, 0.7, dt)?;
        let want = host(&on_cpu(|| {
            fo::reference::layer_norm_modulate(&xf, &shf, &scf, 1e-6)
        })?)?;
        poison(&[1, 300, 3072], dt)?;
        let got = fo::fused::layer_norm_modulate(&x, &sh, &sc, 1e-6);
        rep.check(
            &format!("ln_modulate (1,300,3072) TPB={tpb}"),
            dt,
            got,
            &want,
        )?;
    }
    fo::fused::set_ln_modulate_threads(None);
    Ok(())
}

fn rope_cases(rep: &mut Report, seed: &mut u64) -> anyhow::Result<()> {
    // (x shape, table shape)
    let cases: [(&[i32], &[i32]); 5] = [
        (&[1, 24, 4224, 128], &[4224, 64]),
        (&[2, 77, 3, 128], &[77, 1, 64]),
        (&[2, 3, 11, 6], &[2, 1, 11, 3]),
        (&[3, 5, 18], &[5, 9]),
        (&[2, 4, 40, 16], &[40, 8]),
    ];
    for dt in DTYPES {
        for tdt in [Dtype::Float32, dt] {
            for (xs, ts) in cases {
                *seed += 10;
                let (x, xf) = input(xs, *seed, 0.0, 1.0, dt)?;
                let theta = randn(ts, *seed + 1, 0.0, 3.0)?;
                let (c, s) = (
                    ops::cos(&theta)?.as_dtype(tdt)?,
                    ops::sin(&theta)?.as_dtype(tdt)?,
                );
                let (cf, sf) = (
                    Array::from_slice(&host(&c)?, ts),
                    Array::from_slice(&host(&s)?, ts),
                );
                let want = host(&on_cpu(|| fo::reference::apply_rope(&xf, &cf, &sf))?)?;
                poison(xs, dt)?;
                let got = fo::fused::apply_rope(&x, &c, &s);
                rep.check(&format!("rope x {xs:?} tab {ts:?} {tdt:?}"), dt, got, &want)?;
            }
        }
        // non-contiguous x: (B, L, H, D) seen as (B, H, L, D)
        *seed += 10;
        let (xb, xbf) = input(&[2, 40, 4, 16], *seed, 0.0, 1.0, dt)?;
        let x = ops::swap_axes(&xb, 1, 2)?;
        let xf = ops::swap_axes(&xbf, 1, 2)?;
        let theta = randn(&[40, 8], *seed + 1, 0.0, 3.0)?;
        let (c, s) = (ops::cos(&theta)?, ops::sin(&theta)?);
        let want = host(&on_cpu(|| fo::reference::apply_rope(&xf, &c, &s))?)?;
        poison(&[2, 4, 40, 16], dt)?;
        let got = fo::fused::apply_rope(&x, &c, &s);
        rep.check("rope non-contiguous x (swapped axes)", dt, got, &want)?;
    }
    Ok(())
}

fn gated_cases(rep: &mut Report, seed: &mut u64) -> anyhow::Result<()> {
    let shapes: [(i32, i32, i32, i32); 4] = [
        (1, 4224, 3072, 1),
        (2, 33, 1000, 1),
        (3, 5, 37, 3),
        (2, 7, 64, 2),
    ];
    for dt in DTYPES {
        for &(b, l, c, mb) in &shapes {
            *seed += 10;
            let (x, xf) = input(&[b, l, c], *seed, 0.0, 1.0, dt)?;
            let (y, yf) = input(&[b, l, c], *seed + 1, 0.5, 1.0, dt)?;
            let (g, gf) = input(&[mb, c], *seed + 2, 0.3, 1.0, dt)?;
            let want = host(&on_cpu(|| fo::reference::gated_residual(&xf, &gf, &yf))?)?;
            poison(&[b, l, c], dt)?;
            let got = fo::fused::gated_residual(&x, &g, &y);
            rep.check(
                &format!("gated ({b},{l},{c}) gate ({mb},{c})"),
                dt,
                got,
                &want,
            )?;
        }
        // non-contiguous y
        *seed += 10;
        let (x, xf) = input(&[2, 12, 40], *seed, 0.0, 1.0, dt)?;
        let (yt, ytf) = input(&[2, 40, 12], *seed + 1, 0.0, 1.0, dt)?;
        let (y, yf) = (ops::swap_axes(&yt, 1, 2)?, ops::swap_axes(&ytf, 1, 2)?);
        let (g, gf) = input(&[2, 40], *seed + 2, 0.0, 1.0, dt)?;
        let want = host(&on_cpu(|| fo::reference::gated_residual(&xf, &gf, &yf))?)?;
        poison(&[2, 12, 40], dt)?;
        let got = fo::fused::gated_residual(&x, &g, &y);
        rep.check("gated non-contiguous y", dt, got, &want)?;
    }
    Ok(())
}

/// Tolerances of the GELU kernels (relative L2, max): the inputs are exactly representable
/// in both paths and the kernel rounds its f32 result once, so the error is one rounding
/// of the output: at most half an ulp, 2^-8 relative in bf16 (≈ 1.2e-3 rms) and 2^-11 in
/// f16 (≈ 1.5e-4 rms), plus f32 differences (tanhf vs the CPU's tanh, ~1e-7) — tighter than
/// the shared tolerances so that a slightly wrong constant is rejected in bf16 too.
fn gelu_tol(dt: Dtype) -> (f64, f64) {
    match dt {
        Dtype::Float32 => (1e-5, 1e-4),
        Dtype::Float16 => (5e-4, 1e-3),
        _ => (3e-3, 5e-3),
    }
}

fn gelu_cases(rep: &mut Report, seed: &mut u64) -> anyhow::Result<()> {
    // x shapes (the bias is (N,) for the last axis N): the DiT's FFN activation width,
    // vector-divisible and odd sizes, a single row, a scalar-path tail
    let shapes: [&[i32]; 6] = [
        &[1, 1024, 12288],
        &[2, 33, 1000],
        &[3, 5, 37],
        &[4, 12],
        &[7],
        &[1, 1, 3],
    ];
    for dt in DTYPES {
        let (tol, max_tol) = gelu_tol(dt);
        for xs in shapes {
            *seed += 10;
            let n = *xs.last().unwrap_or(&1);
            // std 3: both tails (≈ x, ≈ 0) and the curved middle
            let (x, xf) = input(xs, *seed, 0.0, 3.0, dt)?;
            let (b, bf) = input(&[n], *seed + 1, 0.2, 1.0, dt)?;
            let want = host(&on_cpu(|| fo::reference::gelu_tanh(&xf))?)?;
            poison(xs, dt)?;
            let got = fo::fused::gelu_tanh(&x);
            rep.check_tol(&format!("gelu x {xs:?}"), dt, got, &want, tol, max_tol)?;
            let want = host(&on_cpu(|| fo::reference::bias_gelu_tanh(&xf, &bf))?)?;
            poison(xs, dt)?;
            let got = fo::fused::bias_gelu_tanh(&x, &b);
            rep.check_tol(
                &format!("bias_gelu x {xs:?} bias [{n}]"),
                dt,
                got,
                &want,
                tol,
                max_tol,
            )?;
        }
        // large magnitudes: tanh saturates (GELU → x and → −0), no overflow to NaN
        *seed += 10;
        let (x, xf) = input(&[64, 256], *seed, 0.0, 30.0, dt)?;
        let want = host(&on_cpu(|| fo::reference::gelu_tanh(&xf))?)?;
        poison(&[64, 256], dt)?;
        let got = fo::fused::gelu_tanh(&x);
        rep.check_tol("gelu x [64, 256] std 30", dt, got, &want, tol, max_tol)?;
        // non-contiguous x (a transpose; MLX copies it first), f32 bias cast to dt
        *seed += 10;
        let (xt, xtf) = input(&[2, 264, 40], *seed, 0.0, 2.0, dt)?;
        let x = ops::swap_axes(&xt, 1, 2)?;
        let xf = ops::swap_axes(&xtf, 1, 2)?;
        let (b, bf) = input(&[264], *seed + 1, 0.0, 1.0, Dtype::Float32)?;
        let want = host(&on_cpu(|| fo::reference::gelu_tanh(&xf))?)?;
        poison(&[2, 40, 264], dt)?;
        let got = fo::fused::gelu_tanh(&x);
        rep.check_tol(
            "gelu non-contiguous x (transpose)",
            dt,
            got,
            &want,
            tol,
            max_tol,
        )?;
        let bfd = on_cpu(|| bf.as_dtype(dt))?;
        let bfd = Array::from_slice(&host(&bfd)?, &[264]);
        let want = host(&on_cpu(|| fo::reference::bias_gelu_tanh(&xf, &bfd))?)?;
        poison(&[2, 40, 264], dt)?;
        let got = fo::fused::bias_gelu_tanh(&x, &b);
        rep.check_tol(
            "bias_gelu non-contiguous x, f32 bias",
            dt,
            got,
            &want,
            tol,
            max_tol,
        )?;
        // misaligned: views starting one element into their buffers (scalar path)
        let (l, c) = (9, 1000);
        *seed += 10;
        let (flat, flatf) = input(&[l * c + 1], *seed, 0.3, 2.0, dt)?;
        let x = ops::reshape(flat.index(1..), &[1, l, c])?;
        let xf = ops::reshape(flatf.index(1..), &[1, l, c])?;
        let (bflat, bflatf) = input(&[c + 1], *seed + 1, 0.0, 1.0, dt)?;
        let (b, bf) = (bflat.index(1..), bflatf.index(1..));
        let want = host(&on_cpu(|| fo::reference::gelu_tanh(&xf))?)?;
        poison(&[1, l, c], dt)?;
        let got = fo::fused::gelu_tanh(&x);
        rep.check_tol("gelu offset view (1,9,1000)", dt, got, &want, tol, max_tol)?;
        let want = host(&on_cpu(|| fo::reference::bias_gelu_tanh(&xf, &bf))?)?;
        poison(&[1, l, c], dt)?;
        let got = fo::fused::bias_gelu_tanh(&x, &b);
        rep.check_tol(
            "bias_gelu offset views (1,9,1000)",
            dt,
            got,
            &want,
            tol,
            max_tol,
        )?;
    }
    // for the record: the unfused reference chain run in bf16 on the GPU (six roundings)
    // against the same f32 values, next to the fused kernel's single rounding
    let dt = Dtype::Bfloat16;
    let (x, xf) = input(&[1, 1024, 12288], 990, 0.0, 3.0, dt)?;
    let want = host(&on_cpu(|| fo::reference::gelu_tanh(&xf))?)?;
    let chain = host(&fo::reference::gelu_tanh(&x)?)?;
    let fused = host(&fo::fused::gelu_tanh(&x)?)?;
    println!(
        "info   gelu bf16 (1,1024,12288) vs f32: fused rel {:.2e} max {:.2e}; bf16 reference chain rel {:.2e} max {:.2e}",
        rel_err(&fused, &want),
        max_err(&fused, &want),
        rel_err(&chain, &want),
        max_err(&chain, &want)
    );
    Ok(())
}

/// GELU-tanh `0.5·x·(1 + tanh(k·(x + c·x³)))` on the host in f64 with given constants.
fn host_gelu(x: &[f32], k: f64, c: f64) -> Vec<f32> {
    x.iter()
        .map(|&v| {
            let v = v as f64;
            (0.5 * v * (1.0 + (k * (v + c * v * v * v)).tanh())) as f32
        })
        .collect()
}

/// The GELU checks must be able to fail: the fused output against host GELUs with a
/// slightly wrong constant or formula, and against a bias applied at the wrong index.
fn gelu_sensitivity_cases(rep: &mut Report) -> anyhow::Result<()> {
    let k = (2.0f64 / std::f64::consts::PI).sqrt();
    let mut probes: Vec<(&str, Dtype, fo::Result<Array>, Vec<f32>)> = Vec::new();
    let dt = Dtype::Bfloat16;
    let (x, xf) = input(&[64, 1024], 960, 0.0, 2.0, dt)?;
    let xv = host(&xf)?;
    // sanity: the right host formula passes at the same tolerance
    let (tol, max_tol) = gelu_tol(dt);
    rep.check_tol(
        "gelu bf16 vs host f64 formula",
        dt,
        fo::fused::gelu_tanh(&x),
        &host_gelu(&xv, k, 0.044715),
        tol,
        max_tol,
    )?;
    probes.push((
        "gelu bf16 vs cubic coefficient halved (0.0224)",
        dt,
        fo::fused::gelu_tanh(&x),
        host_gelu(&xv, k, 0.0224),
    ));
    probes.push((
        "gelu bf16 vs sigmoid approximation x·σ(1.702x)",
        dt,
        fo::fused::gelu_tanh(&x),
        xv.iter()
            .map(|&v| (v as f64 / (1.0 + (-1.702 * v as f64).exp())) as f32)
            .collect(),
    ));
    let (x32, x32f) = input(&[64, 1024], 961, 0.0, 2.0, Dtype::Float32)?;
    probes.push((
        "gelu f32 vs cubic coefficient 0.04",
        Dtype::Float32,
        fo::fused::gelu_tanh(&x32),
        host_gelu(&host(&x32f)?, k, 0.04),
    ));
    let (b, bf) = input(&[1024], 962, 0.0, 0.5, dt)?;
    let rev: Vec<f32> = host(&bf)?.into_iter().rev().collect();
    let rev = Array::from_slice(&rev, &[1024]);
    let wrong = host(&on_cpu(|| fo::reference::bias_gelu_tanh(&xf, &rev))?)?;
    probes.push((
        "bias_gelu bf16 vs bias reversed",
        dt,
        fo::fused::bias_gelu_tanh(&x, &b),
        wrong,
    ));
    for (what, pdt, got, wrong) in probes {
        let (tol, max_tol) = gelu_tol(pdt);
        let before = rep.failures;
        rep.check_tol(
            &format!("(must FAIL) {what}"),
            pdt,
            got,
            &wrong,
            tol,
            max_tol,
        )?;
        let rejected = rep.failures > before;
        rep.failures = before;
        rep.cases += 1;
        println!(
            "{:<6} sensitivity: {what} rejected = {rejected}",
            if rejected { "ok" } else { "FAIL" }
        );
        if !rejected {
            rep.failures += 1;
        }
    }
    // dispatch: the crate-root ops run the kernels on the GPU
    let same = host(&fo::gelu_tanh(&x)?)? == host(&fo::fused::gelu_tanh(&x)?)?
        && host(&fo::bias_gelu_tanh(&x, &b)?)? == host(&fo::fused::bias_gelu_tanh(&x, &b)?)?;
    rep.cases += 1;
    println!(
        "{:<6} gelu_tanh / bias_gelu_tanh dispatch to the kernels on the GPU",
        if same { "ok" } else { "FAIL" }
    );
    if !same {
        rep.failures += 1;
    }
    Ok(())
}

/// The checks must be able to fail: the fused output compared with a reference of a
/// slightly wrong formula (shift dropped, sin negated, gate halved) must be rejected at the
/// bf16 tolerance.
fn linear_cases(rep: &mut Report, seed: &mut u64) -> anyhow::Result<()> {
    // (rows of x, K, N): the DiT's modulation (one timestep, or a batch of two) and its
    // timestep embedder, an odd K (scalar path), the most rows the kernel takes
    let cases: [(&[i32], i32, i32); 5] = [
        (&[1], 3072, 18432),
        (&[2], 3072, 6144),
        (&[1], 256, 3072),
        (&[3], 77, 50),
        (&[2, 4], 512, 300),
    ];
    for dt in DTYPES {
        for (lead, k, n) in cases {
            *seed += 10;
            let mut xs = lead.to_vec();
            xs.push(k);
            let (x, xf) = input(&xs, *seed, 0.0, 1.0, dt)?;
            let (w, wf) = input(&[n, k], *seed + 1, 0.0, 0.05, dt)?;
            let (b, bf) = input(&[n], *seed + 2, 0.1, 1.0, dt)?;
            let want = host(&on_cpu(|| fo::reference::linear(&xf, &wf, &bf))?)?;
            // the reference runs in f32 on the rounded inputs; the kernel's one final
            // rounding to dt is what the dtype's tolerance allows
            let mut shape = lead.to_vec();
            shape.push(n);
            poison(&shape, dt)?;
            let got = fo::fused::linear(&x, &w, &b);
            rep.check(&format!("linear x {xs:?} w [{n}, {k}]"), dt, got, &want)?;
        }
    }
    Ok(())
}

/// The fused affine dequantization against MLX's CPU `dequantize` of the same packed
/// weights (an independent implementation): within 1e-7 relative in f32 (H200: 7.6e-8). In
/// bf16 and f16 the two differ by one final rounding on part of the elements (H200: rel
/// 5.0e-3 / 6.2e-4, the same whether the kernel rounds the product first or rounds once, so
/// not the kernel's rounding order; the cause is not pinned down), so the file's one-rounding
/// tolerances apply; a wrong nibble, group or scale is off by order 1. 8-, 4- and 2-bit,
/// groups of 32 to 128, the DiT's FFN and QKV shapes; a group the kernel does not take (2-bit,
/// 32) goes through the automatic path to the reference.
fn dequantize_cases(rep: &mut Report, seed: &mut u64) -> anyhow::Result<()> {
    let cases: [(i32, i32, i32, i32); 7] = [
        (12288, 3072, 8, 64),
        (9216, 3072, 4, 64),
        (3072, 12288, 8, 64),
        (96, 256, 8, 32),
        (64, 512, 4, 128),
        (40, 384, 2, 64),
        (33, 256, 4, 32),
    ];
    for dt in DTYPES {
        for (rows, cols, bits, group) in cases {
            *seed += 10;
            let (w, _) = input(&[rows, cols], *seed, 0.0, 0.05, dt)?;
            let (wq, scales, biases) = ops::quantize(&w, group, bits)?;
            mlx_rs::transforms::eval([&wq, &scales, &biases])?;
            // host copies (the scales and biases are exact in f32)
            let wq_c = Array::from_slice(wq.as_slice::<u32>(), wq.shape());
            let want = on_cpu(|| -> anyhow::Result<Vec<f32>> {
                let s_c = Array::from_slice(&host(&scales)?, scales.shape()).as_dtype(dt)?;
                let b_c = Array::from_slice(&host(&biases)?, biases.shape()).as_dtype(dt)?;
                host(&ops::dequantize(&wq_c, &s_c, &b_c, group, bits)?)
            })?;
            poison(&[rows, cols], dt)?;
            let what = format!("dequantize [{rows}, {cols}] {bits}-bit group {group}");
            let got = fo::fused::dequantize(&wq, &scales, &biases, group, bits);
            if dt == Dtype::Float32 {
                rep.check_tol(&what, dt, got, &want, 1e-7, 1e-6)?;
            } else {
                // one rounding apart in bf16 / f16 (H200: rel 5.0e-3 / 6.2e-4)
                rep.check(&what, dt, got, &want)?;
            }
        }
        // outside the kernel's limits: the automatic path gives the reference's values
        *seed += 10;
        let (w, _) = input(&[16, 256], *seed, 0.0, 0.05, dt)?;
        let (wq, scales, biases) = ops::quantize(&w, 32, 2)?;
        assert!(fo::fused::dequantize(&wq, &scales, &biases, 32, 2).is_err());
        let want = host(&fo::reference::dequantize(&wq, &scales, &biases, 32, 2)?)?;
        let got = fo::dequantize(&wq, &scales, &biases, 32, 2);
        rep.check_tol(
            "dequantize 2-bit group 32 (reference path)",
            dt,
            got,
            &want,
            0.0,
            0.0,
        )?;
    }
    Ok(())
}

fn joint_cases(rep: &mut Report, seed: &mut u64) -> anyhow::Result<()> {
    // (B, L1, L2, H, D): the 1024² DiT's shape (text 32, image 4096, 24 heads of 128) cut to
    // 1024 image tokens, a batch of two, and the other head sizes the kernel takes
    let cases: [(i32, i32, i32, i32, i32); 4] = [
        (1, 32, 1024, 24, 128),
        (2, 7, 40, 3, 64),
        (1, 5, 9, 2, 256),
        (2, 1, 3, 1, 512),
    ];
    for dt in DTYPES {
        for (b, l1, l2, h, d) in cases {
            *seed += 10;
            let (a, af) = input(&[b, l1, 3 * h * d], *seed, 0.2, 1.5, dt)?;
            let (c, cf) = input(&[b, l2, 3 * h * d], *seed + 1, -0.1, 0.7, dt)?;
            let mut w = Vec::new();
            let mut wf = Vec::new();
            for i in 0..4 {
                let (x, xf) = input(&[d], *seed + 2 + i, 1.0, 0.3, dt)?;
                w.push(x);
                wf.push(xf);
            }
            let theta = randn(&[l1 + l2, 1, d / 2], *seed + 9, 0.0, 3.0)?;
            let (tc, ts) = (ops::cos(&theta)?, ops::sin(&theta)?);
            let (tcf, tsf) = (
                Array::from_slice(&host(&tc)?, tc.shape()),
                Array::from_slice(&host(&ts)?, ts.shape()),
            );
            let want = host(&on_cpu(|| -> fo::Result<Array> {
                let (a, c) = (af.as_dtype(dt)?, cf.as_dtype(dt)?);
                let w: Vec<Array> = wf
                    .iter()
                    .map(|x| x.as_dtype(dt))
                    .collect::<Result<_, _>>()?;
                let j = fo::JointQkv {
                    first: &a,
                    second: &c,
                    norms: [&w[0], &w[1], &w[2], &w[3]],
                    heads: h,
                    eps: 1e-6,
                    cos: &tcf,
                    sin: &tsf,
                };
                Ok(ops::stack(&fo::reference::joint_qkv_heads(&j)?, 0)?)
            })?)?;
            poison(&[3, b, h, l1 + l2, d], dt)?;
            let j = fo::JointQkv {
                first: &a,
                second: &c,
                norms: [&w[0], &w[1], &w[2], &w[3]],
                heads: h,
                eps: 1e-6,
                cos: &tc,
                sin: &ts,
            };
            let got = fo::fused::joint_qkv_heads(&j);
            rep.check(
                &format!("joint_qkv {:?}", (b, l1, l2, h, d)),
                dt,
                got,
                &want,
            )?;
        }
    }
    Ok(())
}

fn sensitivity_cases(rep: &mut Report) -> anyhow::Result<()> {
    let dt = Dtype::Bfloat16;
    let mut probes: Vec<(&str, fo::Result<Array>, Vec<f32>)> = Vec::new();
    let (x, xf) = input(&[2, 64, 256], 950, 0.3, 1.0, dt)?;
    let (sh, _) = input(&[2, 256], 951, 0.0, 0.3, dt)?;
    let (sc, scf) = input(&[2, 256], 952, 0.0, 1.0, dt)?;
    let zero = Array::from_slice(&vec![0f32; 512], &[2, 256]);
    let wrong = host(&on_cpu(|| {
        fo::reference::layer_norm_modulate(&xf, &zero, &scf, 1e-6)
    })?)?;
    probes.push((
        "ln_modulate vs reference without shift",
        fo::fused::layer_norm_modulate(&x, &sh, &sc, 1e-6),
        wrong,
    ));
    let (q, qf) = input(&[1, 2, 40, 16], 953, 0.0, 1.0, dt)?;
    let theta = randn(&[40, 8], 954, 0.0, 0.3)?;
    let (c, s) = (ops::cos(&theta)?, ops::sin(&theta)?);
    let neg = ops::negative(&s)?;
    let wrong = host(&on_cpu(|| fo::reference::apply_rope(&qf, &c, &neg))?)?;
    probes.push((
        "rope vs reference with sin negated",
        fo::fused::apply_rope(&q, &c, &s),
        wrong,
    ));
    let (ja, jaf) = input(&[1, 6, 3 * 2 * 64], 957, 0.2, 1.5, dt)?;
    let (jb, jbf) = input(&[1, 10, 3 * 2 * 64], 958, 0.0, 1.0, dt)?;
    let (w0, w0f) = input(&[64], 959, 1.0, 0.3, dt)?;
    let (w1, w1f) = input(&[64], 960, 1.0, 0.3, dt)?;
    let jt = randn(&[16, 32], 961, 0.0, 3.0)?;
    let (jc, js) = (ops::cos(&jt)?, ops::sin(&jt)?);
    // the text stream's q and k weights swapped
    let wrong = host(&on_cpu(|| -> fo::Result<Array> {
        let j = fo::JointQkv {
            first: &jaf,
            second: &jbf,
            norms: [&w1f, &w0f, &w0f, &w1f],
            heads: 2,
            eps: 1e-6,
            cos: &jc,
            sin: &js,
        };
        Ok(ops::stack(&fo::reference::joint_qkv_heads(&j)?, 0)?)
    })?)?;
    probes.push((
        "joint_qkv vs reference with q/k norms swapped",
        fo::fused::joint_qkv_heads(&fo::JointQkv {
            first: &ja,
            second: &jb,
            norms: [&w0, &w1, &w0, &w1],
            heads: 2,
            eps: 1e-6,
            cos: &jc,
            sin: &js,
        }),
        wrong,
    ));
    let (lx, lxf) = input(&[1, 512], 962, 0.0, 1.0, dt)?;
    let (lw, lwf) = input(&[300, 512], 963, 0.0, 0.05, dt)?;
    let (lb, _) = input(&[300], 964, 0.5, 1.0, dt)?;
    let no_bias = Array::from_slice(&vec![0f32; 300], &[300]);
    let wrong = host(&on_cpu(|| fo::reference::linear(&lxf, &lwf, &no_bias))?)?;
    probes.push((
        "linear vs reference without bias",
        fo::fused::linear(&lx, &lw, &lb),
        wrong,
    ));
    let (y, yf) = input(&[2, 64, 256], 955, 0.0, 1.0, dt)?;
    let (g, gf) = input(&[2, 256], 956, 0.5, 0.2, dt)?;
    let half = ops::multiply(&gf, Array::from_f32(0.5))?;
    let wrong = host(&on_cpu(|| fo::reference::gated_residual(&xf, &half, &yf))?)?;
    probes.push((
        "gated vs reference with gate halved",
        fo::fused::gated_residual(&x, &g, &y),
        wrong,
    ));
    for (what, got, wrong) in probes {
        let before = rep.failures;
        rep.check(&format!("(must FAIL) {what}"), dt, got, &wrong)?;
        let rejected = rep.failures > before;
        // a rejected probe is the expected outcome: undo its failure count
        rep.failures = before;
        rep.cases += 1;
        println!(
            "{:<6} sensitivity: {what} rejected = {rejected}",
            if rejected { "ok" } else { "FAIL" }
        );
        if !rejected {
            rep.failures += 1;
        }
    }
    Ok(())
}

/// Attention where MLX runs cuDNN's flash kernel is called whole, however large the score
/// matrix would be: which calls count as fused, and a call over more than 2³¹ scores (an
/// edit's 9500 tokens, 24 heads) against softmax(q·kᵀ)·v computed in f32 in row blocks.
fn attention_cases(rep: &mut Report) -> anyhow::Result<()> {
    let mut expect = |what: &str, got: bool, want: bool| {
        rep.cases += 1;
        let ok = got == want;
        println!(
            "{:<6} fused attention: {what} -> {got}",
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            rep.failures += 1;
        }
    };
    let cuda = fo::current_backend() == fo::Backend::Cuda;
    for (what, d, dt, want) in [
        ("bf16, head 128", 128, Dtype::Bfloat16, cuda),
        ("f16, head 64", 64, Dtype::Float16, cuda),
        ("f32, head 128", 128, Dtype::Float32, false),
        ("bf16, head 256", 256, Dtype::Bfloat16, false),
        ("bf16, head 100", 100, Dtype::Bfloat16, false),
    ] {
        let qv = ops::zeros_dtype(&[1, 2, 4, d], dt)?;
        expect(what, fo::fused_attention_on_cuda(&qv, &qv), want);
    }
    if !cuda {
        return Ok(());
    }
    let (h, s, d) = (24, 9500, 128);
    let scores = h as usize * s as usize * s as usize;
    assert!(scores > fo::MAX_ATTENTION_SCORES);
    let dt = Dtype::Bfloat16;
    let (q, qf) = input(&[1, h, s, d], 950, 0.0, 1.0, dt)?;
    let (k, kf) = input(&[1, h, s, d], 951, 0.0, 1.0, dt)?;
    let (v, vf) = input(&[1, h, s, d], 952, 0.0, 1.0, dt)?;
    let scale = 1.0 / (d as f32).sqrt();
    poison(&[1, h, s, d], dt)?;
    let got = fo::sdpa(&q, &k, &v, scale, None);
    // The reference on the GPU in f32, 1000 query rows at a time (≤ 0.9 GiB of scores each).
    let (qf, kf, vf) = (
        qf.as_dtype(Dtype::Float32)?,
        kf.as_dtype(Dtype::Float32)?,
        vf.as_dtype(Dtype::Float32)?,
    );
    let kt = kf.transpose_axes(&[0, 1, 3, 2])?;
    let mut parts = Vec::new();
    for r0 in (0..s).step_by(1000) {
        let qc = qf.index((.., .., r0..(r0 + 1000).min(s), ..));
        let p = ops::softmax_axis(
            ops::multiply(ops::matmul(&qc, &kt)?, Array::from_f32(scale))?,
            -1,
            true,
        )?;
        let o = ops::matmul(&p, &vf)?;
        o.eval()?;
        parts.push(o);
    }
    let whole = ops::concatenate(&parts, 2)?;
    let want = host(&whole)?;
    rep.check(
        &format!("sdpa whole over {scores} scores (1×{h}×{s}×{d})"),
        dt,
        got,
        &want,
    )
}

fn dispatch_cases(rep: &mut Report) -> anyhow::Result<()> {
    let dt = Dtype::Bfloat16;
    let (x, _) = input(&[1, 64, 256], 900, 0.0, 1.0, dt)?;
    let (v, _) = input(&[1, 256], 901, 0.0, 1.0, dt)?;
    let fused = fo::fused::layer_norm_modulate(&x, &v, &v, 1e-6)?;
    let auto = fo::layer_norm_modulate(&x, &v, &v, 1e-6)?;
    rep.cases += 1;
    let same = host(&fused)? == host(&auto)?;
    println!(
        "{:<6} dispatch picks the kernel on the GPU ({:?})",
        if same { "ok" } else { "FAIL" },
        fo::fused_path()
    );
    if !same {
        rep.failures += 1;
    }
    fo::set_force_reference(true);
    rep.cases += 1;
    let forced = fo::fused_path() == fo::Path::Reference;
    println!(
        "{:<6} set_force_reference(true) -> {:?}",
        if forced { "ok" } else { "FAIL" },
        fo::fused_path()
    );
    if !forced {
        rep.failures += 1;
    }
    fo::set_force_reference(false);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let backend = fo::current_backend();
    println!(
        "mlx-fastops gpu tests: backend {backend} (cuda available: {}, metal available: {}), fused path {:?}",
        fo::cuda_available(),
        fo::metal_available(),
        fo::fused_path()
    );
    if !matches!(backend, fo::Backend::Cuda | fo::Backend::Metal) {
        println!("skipped: no CUDA or Metal GPU");
        return Ok(());
    }
    let mut rep = Report {
        failures: 0,
        cases: 0,
    };
    let mut seed = 1000;
    // `gelu` as an argument: only the GELU kernels' cases (a short run)
    if std::env::args().any(|a| a == "attention") {
        attention_cases(&mut rep)?;
    } else if std::env::args().any(|a| a == "dequantize") {
        dequantize_cases(&mut rep, &mut seed)?;
    } else if std::env::args().any(|a| a == "joint") {
        joint_cases(&mut rep, &mut seed)?;
        linear_cases(&mut rep, &mut seed)?;
        sensitivity_cases(&mut rep)?;
    } else if !std::env::args().any(|a| a == "gelu") {
        modulate_cases(&mut rep, &mut seed)?;
        rope_cases(&mut rep, &mut seed)?;
        gated_cases(&mut rep, &mut seed)?;
        joint_cases(&mut rep, &mut seed)?;
        linear_cases(&mut rep, &mut seed)?;
        dequantize_cases(&mut rep, &mut seed)?;
        dispatch_cases(&mut rep)?;
        attention_cases(&mut rep)?;
        sensitivity_cases(&mut rep)?;
    }
    if !std::env::args().any(|a| a == "joint" || a == "attention" || a == "dequantize") {
        gelu_cases(&mut rep, &mut seed)?;
        gelu_sensitivity_cases(&mut rep)?;
    }
    println!("gpu tests: {} cases, {} failures", rep.cases, rep.failures);
    if rep.failures > 0 {
        anyhow::bail!("{} gpu test case(s) failed", rep.failures);
    }
    Ok(())
}
