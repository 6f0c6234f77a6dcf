//! GPU timing table: fused vs unfused MLX for the DiT's element-wise ops at
//! 1×(4096+T)×3072 bf16, T ∈ {32, 64, 128, 256, 512} (1024² image + T text tokens).
//!
//! Method: each measurement builds K = 32 independent ops over 4 rotating input sets
//! (4 × 26 MB > the H100's 50 MB L2, so reads come from HBM), evaluates them in one
//! `eval` and divides the wall time by K; the median over 15 repetitions after 3 warm-ups
//! is reported (launch overhead included, as the DiT sees it). Run on the GPU machine:
//! `modulate_table-<hash>` (`--quick` for fewer repetitions; `--gelu` for the GELU table
//! only: the DiT's FFN activation 1×4128×12288 bf16, fused vs the reference chain, with
//! and without the bias, and the FFN's first Linear followed by each).

use std::time::Instant;

use mlx_fastops as fo;
use mlx_rs::{Array, Dtype};

const K: usize = 32;

/// One op of a measurement, building output `i` from input set `i % SETS`.
type OpFn<'a> = dyn Fn(usize) -> anyhow::Result<Array> + 'a;
const SETS: usize = 4;

fn randn(shape: &[i32], seed: u64, dt: Dtype) -> anyhow::Result<Array> {
    let key = mlx_rs::random::key(seed)?;
    let a = mlx_rs::random::normal::<f32>(shape, None, None, &key)?.as_dtype(dt)?;
    a.eval()?;
    Ok(a)
}

/// Median per-op wall time in ms of `f(i)` for i in 0..K evaluated together.
fn time_ms(reps: usize, f: &dyn Fn(usize) -> anyhow::Result<Array>) -> anyhow::Result<f64> {
    let mut ts = Vec::with_capacity(reps);
    for r in 0..reps + 3 {
        let t0 = Instant::now();
        let outs = (0..K).map(f).collect::<anyhow::Result<Vec<_>>>()?;
        mlx_rs::transforms::eval(outs.iter())?;
        let dt = t0.elapsed().as_secs_f64() * 1e3 / K as f64;
        if r >= 3 {
            ts.push(dt);
        }
    }
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(ts[ts.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 5 } else { 15 };
    println!(
        "backend {} (fused path {:?})",
        fo::current_backend(),
        fo::fused_path()
    );
    if !matches!(
        fo::current_backend(),
        fo::Backend::Cuda | fo::Backend::Metal
    ) {
        println!("no CUDA/Metal GPU: nothing to time");
        return Ok(());
    }
    let dt = Dtype::Bfloat16;
    let c = 3072;
    let eps = 1e-6;
    if std::env::args().any(|a| a == "--ncu") {
        return ncu_pass(dt, c, eps);
    }
    if std::env::args().any(|a| a == "--diag") {
        return diagnostics(dt, c, eps, reps);
    }
    if std::env::args().any(|a| a == "--gelu") {
        return gelu_table(dt, c, reps);
    }
    let mut rows = Vec::new();
    for t in [32, 64, 128, 256, 512] {
        let l = 4096 + t;
        let xs = (0..SETS)
            .map(|i| randn(&[1, l, c], 10 + i as u64, dt))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ys = (0..SETS)
            .map(|i| randn(&[1, l, c], 20 + i as u64, dt))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sh = randn(&[1, c], 1, dt)?;
        let sc = randn(&[1, c], 2, dt)?;
        let one = Array::from_f32(1.0).as_dtype(dt)?;
        let copy = time_ms(reps, &|i| Ok(mlx_rs::ops::multiply(&xs[i % SETS], &one)?))?;
        let fused = time_ms(reps, &|i| {
            Ok(fo::fused::layer_norm_modulate(
                &xs[i % SETS],
                &sh,
                &sc,
                eps,
            )?)
        })?;
        let unfused = time_ms(reps, &|i| {
            Ok(fo::reference::layer_norm_modulate(
                &xs[i % SETS],
                &sh,
                &sc,
                eps,
            )?)
        })?;
        let g_fused = time_ms(reps, &|i| {
            Ok(fo::fused::gated_residual(
                &xs[i % SETS],
                &sc,
                &ys[i % SETS],
            )?)
        })?;
        let g_unfused = time_ms(reps, &|i| {
            Ok(fo::reference::gated_residual(
                &xs[i % SETS],
                &sc,
                &ys[i % SETS],
            )?)
        })?;
        // RoPE on (1, 24, L, 128) q-shaped input with f32 (L, 64) tables
        let qs = (0..SETS)
            .map(|i| mlx_rs::ops::reshape(&xs[i], &[1, 24, l, 128]))
            .collect::<Result<Vec<_>, _>>()?;
        let theta = randn(&[l, 64], 3, Dtype::Float32)?;
        let (cos, sin) = (mlx_rs::ops::cos(&theta)?, mlx_rs::ops::sin(&theta)?);
        let r_fused = time_ms(reps, &|i| {
            Ok(fo::fused::apply_rope(&qs[i % SETS], &cos, &sin)?)
        })?;
        let r_unfused = time_ms(reps, &|i| {
            Ok(fo::reference::apply_rope(&qs[i % SETS], &cos, &sin)?)
        })?;
        let bytes = 2.0 * f64::from(l) * f64::from(c) * 2.0;
        rows.push((
            t, l, copy, fused, unfused, g_fused, g_unfused, r_fused, r_unfused, bytes,
        ));
        println!(
            "T={t:<4} copy {copy:.4} | ln_mod fused {fused:.4} unfused {unfused:.4} | gated fused {g_fused:.4} unfused {g_unfused:.4} | rope fused {r_fused:.4} unfused {r_unfused:.4} (ms)"
        );
    }
    // threads-per-row sweep of the modulation kernel at T = 128
    let l = 4224;
    let xs = (0..SETS)
        .map(|i| randn(&[1, l, c], 30 + i as u64, dt))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sh = randn(&[1, c], 4, dt)?;
    let sc = randn(&[1, c], 5, dt)?;
    let mut sweep = Vec::new();
    for tpb in [32, 64, 96, 128, 192, 256, 384] {
        fo::fused::set_ln_modulate_threads(Some(tpb));
        let ms = time_ms(reps, &|i| {
            Ok(fo::fused::layer_norm_modulate(
                &xs[i % SETS],
                &sh,
                &sc,
                eps,
            )?)
        })?;
        sweep.push((tpb, ms));
    }
    fo::fused::set_ln_modulate_threads(None);

    println!("\n## layer_norm_modulate, 1×(4096+T)×3072 bf16 (ms per op, median)");
    println!("| T | L | fused | unfused MLX | speed-up | fused GB/s | MLX x·1 copy |");
    println!("|---|---|---|---|---|---|---|");
    for &(t, l, copy, f, u, _, _, _, _, bytes) in &rows {
        println!(
            "| {t} | {l} | {f:.4} | {u:.4} | {:.1}× | {:.0} | {copy:.4} |",
            u / f,
            bytes / (f * 1e-3) / 1e9
        );
    }
    println!("\n## gated_residual x + gate·y and apply_rope (1×24×L×128, f32 tables), bf16 (ms)");
    println!(
        "| T | gated fused | gated unfused | speed-up | rope fused | rope unfused | speed-up |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &(t, _, _, _, _, gf, gu, rf, ru, _) in &rows {
        println!(
            "| {t} | {gf:.4} | {gu:.4} | {:.1}× | {rf:.4} | {ru:.4} | {:.1}× |",
            gu / gf,
            ru / rf
        );
    }
    println!("\n## layer_norm_modulate threads per row, 1×4224×3072 bf16 (ms)");
    println!("| threads/row | ms |");
    println!("|---|---|");
    for (tpb, ms) in sweep {
        println!("| {tpb} | {ms:.4} |");
    }
    Ok(())
}

/// A short pass for `ncu` (kernel durations without host overhead): each fused variant and
/// the unfused chain at 1×4224×3072, evaluated one op at a time, 3 times each.
fn ncu_pass(dt: Dtype, c: i32, eps: f32) -> anyhow::Result<()> {
    let l = 4224;
    let xs = (0..SETS)
        .map(|i| randn(&[1, l, c], 40 + i as u64, dt))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sh = randn(&[1, c], 6, dt)?;
    let sc = randn(&[1, c], 7, dt)?;
    for tpb in [None, Some(32), Some(64), Some(96), Some(192), Some(384)] {
        fo::fused::set_ln_modulate_threads(tpb);
        for i in 0..3 {
            fo::fused::layer_norm_modulate(&xs[i % SETS], &sh, &sc, eps)?.eval()?;
        }
    }
    fo::fused::set_ln_modulate_threads(None);
    for i in 0..3 {
        fo::reference::layer_norm_modulate(&xs[i % SETS], &sh, &sc, eps)?.eval()?;
        fo::fused::gated_residual(&xs[i % SETS], &sc, &xs[(i + 1) % SETS])?.eval()?;
        let q = mlx_rs::ops::reshape(&xs[i % SETS], &[1, 24, l, 128])?;
        let theta = randn(&[l, 64], 8, Dtype::Float32)?;
        let (cos, sin) = (mlx_rs::ops::cos(&theta)?, mlx_rs::ops::sin(&theta)?);
        fo::fused::apply_rope(&q, &cos, &sin)?.eval()?;
    }
    println!("ncu pass done");
    Ok(())
}

/// Median over `reps` (after 2 warm-ups) of (host build ms/op, eval ms/op) for `k` ops.
fn split_ms(
    reps: usize,
    k: usize,
    f: &dyn Fn(usize) -> anyhow::Result<Array>,
) -> anyhow::Result<(f64, f64)> {
    let mut b = Vec::new();
    let mut e = Vec::new();
    for r in 0..reps + 2 {
        let t0 = Instant::now();
        let outs = (0..k).map(f).collect::<anyhow::Result<Vec<_>>>()?;
        let t1 = Instant::now();
        mlx_rs::transforms::eval(outs.iter())?;
        let t2 = Instant::now();
        if r >= 2 {
            b.push((t1 - t0).as_secs_f64() * 1e3 / k as f64);
            e.push((t2 - t1).as_secs_f64() * 1e3 / k as f64);
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    };
    Ok((med(b), med(e)))
}

/// Median ms/op of a dependent chain of `k` ops (each consumes the previous output).
fn chain_ms(
    reps: usize,
    k: usize,
    x0: &Array,
    f: &dyn Fn(&Array) -> anyhow::Result<Array>,
) -> anyhow::Result<f64> {
    let mut ts = Vec::new();
    for r in 0..reps + 2 {
        let t0 = Instant::now();
        let mut y = x0.clone();
        for _ in 0..k {
            y = f(&y)?;
        }
        y.eval()?;
        if r >= 2 {
            ts.push(t0.elapsed().as_secs_f64() * 1e3 / k as f64);
        }
    }
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(ts[ts.len() / 2])
}

/// Where the wall time of a custom-kernel op goes: host build vs eval, batch size, and
/// dependent chains, for the fused modulation, MLX's x·1 and the unfused chain.
fn diagnostics(dt: Dtype, c: i32, eps: f32, reps: usize) -> anyhow::Result<()> {
    let l = 4224;
    let xs = (0..SETS)
        .map(|i| randn(&[1, l, c], 50 + i as u64, dt))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sh = randn(&[1, c], 9, dt)?;
    let sc = randn(&[1, c], 10, dt)?;
    let one = Array::from_f32(1.0).as_dtype(dt)?;
    println!(
        "diagnostics at 1x{l}x{c} bf16, MLX_MAX_OPS_PER_BUFFER={:?}",
        std::env::var("MLX_MAX_OPS_PER_BUFFER").ok()
    );
    println!("| op | K per eval | host build ms/op | eval ms/op | total ms/op |");
    println!("|---|---|---|---|---|");
    let fused = |i: usize| {
        Ok(fo::fused::layer_norm_modulate(
            &xs[i % SETS],
            &sh,
            &sc,
            eps,
        )?)
    };
    let copy = |i: usize| Ok(mlx_rs::ops::multiply(&xs[i % SETS], &one)?);
    let unfused = |i: usize| {
        Ok(fo::reference::layer_norm_modulate(
            &xs[i % SETS],
            &sh,
            &sc,
            eps,
        )?)
    };
    let gated = |i: usize| {
        Ok(fo::fused::gated_residual(
            &xs[i % SETS],
            &sc,
            &xs[(i + 1) % SETS],
        )?)
    };
    let ops: [(&str, &OpFn); 4] = [
        ("ln_mod fused", &fused),
        ("x·1 (MLX)", &copy),
        ("ln_mod unfused", &unfused),
        ("gated fused", &gated),
    ];
    for (name, f) in ops {
        for k in [1, 4, 32, 128] {
            let (b, e) = split_ms(reps, k, f)?;
            println!("| {name} | {k} | {b:.4} | {e:.4} | {:.4} |", b + e);
        }
    }
    println!("\n| dependent chain of 32 | ms/op |");
    println!("|---|---|");
    let f = chain_ms(reps, 32, &xs[0], &|y| {
        Ok(fo::fused::layer_norm_modulate(y, &sh, &sc, eps)?)
    })?;
    println!("| ln_mod fused | {f:.4} |");
    let f = chain_ms(reps, 32, &xs[0], &|y| Ok(mlx_rs::ops::multiply(y, &one)?))?;
    println!("| x·1 (MLX) | {f:.4} |");
    let f = chain_ms(reps, 32, &xs[0], &|y| {
        Ok(fo::reference::layer_norm_modulate(y, &sh, &sc, eps)?)
    })?;
    println!("| ln_mod unfused | {f:.4} |");
    Ok(())
}

/// GELU at the DiT's FFN activation, 1×(4096+32)×(4·C) bf16: fused kernels vs the
/// reference chains (what ran before), and the first FFN Linear (C → 4C) followed by the
/// activation in three ways: `addmm` (bias in the GEMM, as qwen-dit's float `Linear`)
/// + reference GELU, `addmm` + fused GELU, and `matmul` + fused `bias_gelu_tanh`.
fn gelu_table(dt: Dtype, c: i32, reps: usize) -> anyhow::Result<()> {
    let l = 4096 + 32;
    let f = 4 * c;
    let hs = (0..SETS)
        .map(|i| randn(&[1, l, f], 60 + i as u64, dt))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let b = randn(&[f], 11, dt)?;
    let one = Array::from_f32(1.0).as_dtype(dt)?;
    let copy = time_ms(reps, &|i| Ok(mlx_rs::ops::multiply(&hs[i % SETS], &one)?))?;
    let g_fused = time_ms(reps, &|i| Ok(fo::fused::gelu_tanh(&hs[i % SETS])?))?;
    let g_ref = time_ms(reps, &|i| Ok(fo::reference::gelu_tanh(&hs[i % SETS])?))?;
    let bg_fused = time_ms(reps, &|i| Ok(fo::fused::bias_gelu_tanh(&hs[i % SETS], &b)?))?;
    let bg_ref = time_ms(reps, &|i| {
        Ok(fo::reference::bias_gelu_tanh(&hs[i % SETS], &b)?)
    })?;
    // the FFN's first Linear: x (1, L, C) · Wᵀ, W (4C, C)
    let xs = (0..SETS)
        .map(|i| randn(&[1, l, c], 70 + i as u64, dt))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let w = mlx_rs::ops::multiply(
        &randn(&[f, c], 12, dt)?,
        Array::from_f32(0.02).as_dtype(dt)?,
    )?;
    w.eval()?;
    let wt = w.t();
    let mm_only = time_ms(reps, &|i| Ok(mlx_rs::ops::matmul(&xs[i % SETS], &wt)?))?;
    let addmm_ref = time_ms(reps, &|i| {
        let y = mlx_rs::ops::addmm(&b, &xs[i % SETS], &wt, None, None)?;
        Ok(fo::reference::gelu_tanh(&y)?)
    })?;
    let addmm_fused = time_ms(reps, &|i| {
        let y = mlx_rs::ops::addmm(&b, &xs[i % SETS], &wt, None, None)?;
        Ok(fo::fused::gelu_tanh(&y)?)
    })?;
    let mm_bias_fused = time_ms(reps, &|i| {
        let y = mlx_rs::ops::matmul(&xs[i % SETS], &wt)?;
        Ok(fo::fused::bias_gelu_tanh(&y, &b)?)
    })?;
    let bytes = 2.0 * f64::from(l) * f64::from(f) * 2.0;
    let gbs = |ms: f64| bytes / (ms * 1e-3) / 1e9;
    println!("\n## GELU-tanh, 1×{l}×{f} {dt:?} (ms per op, median of {reps}, {K} ops per eval)");
    println!("| op | ms | GB/s (read x + write out) | vs fused |");
    println!("|---|---|---|---|");
    for (name, ms, base) in [
        ("MLX x·1 (one element-wise pass)", copy, g_fused),
        ("gelu_tanh fused", g_fused, g_fused),
        ("gelu_tanh reference chain", g_ref, g_fused),
        ("bias_gelu_tanh fused", bg_fused, bg_fused),
        ("bias_gelu_tanh reference (x + b, chain)", bg_ref, bg_fused),
    ] {
        println!("| {name} | {ms:.4} | {:.0} | {:.2}× |", gbs(ms), ms / base);
    }
    println!("\n## FFN first Linear {c}→{f} on 1×{l} tokens + GELU, {dt:?} (ms per op)");
    println!("| variant | ms | minus matmul alone |");
    println!("|---|---|---|");
    for (name, ms) in [
        ("matmul alone (no bias, no GELU)", mm_only),
        ("addmm + reference GELU chain (before)", addmm_ref),
        ("addmm + fused gelu_tanh", addmm_fused),
        ("matmul + fused bias_gelu_tanh", mm_bias_fused),
    ] {
        println!("| {name} | {ms:.4} | {:.4} |", ms - mm_only);
    }
    Ok(())
}
