//! The fused kernels' self-check on a GPU (CUDA or Metal; on a CPU-only machine the binary
//! reports "skipped" and passes, like `tests/gpu.rs`): what the check costs per kernel once
//! the kernel is compiled (bf16, DiT shapes at 1024²; must stay under 50 ms in all), and a
//! deliberately broken kernel source (an `#error` appended) that makes its op fall back to
//! the reference — the result still right, one warning naming the kernel, the other kernels
//! unaffected.
//!
//! Run: `gpu_fallback` (a plain binary, `harness = false`).

use std::time::{Duration, Instant};

use mlx_fastops as fo;
use mlx_rs::{Array, Dtype, ops, random};

/// One fused op applied to fixed inputs.
type OpCall<'a> = Box<dyn Fn() -> fo::Result<Array> + 'a>;

fn bf16(shape: &[i32]) -> anyhow::Result<Array> {
    Ok(random::normal::<f32>(shape, None, None, None)?.as_dtype(Dtype::Bfloat16)?)
}

/// Time of `f` evaluated.
fn timed(f: &dyn Fn() -> fo::Result<Array>) -> anyhow::Result<Duration> {
    let t = Instant::now();
    f()?.eval()?;
    Ok(t.elapsed())
}

fn main() -> anyhow::Result<()> {
    let backend = fo::current_backend();
    println!("mlx-fastops self-check on a GPU: backend {backend}");
    if !matches!(backend, fo::Backend::Cuda | fo::Backend::Metal) {
        println!("skipped: no CUDA or Metal GPU");
        return Ok(());
    }
    let (l, c) = (4128, 3072);
    let x = bf16(&[1, l, c])?;
    let y = bf16(&[1, l, c])?;
    let v = bf16(&[1, c])?;
    let w = bf16(&[1, l, 4 * c])?;
    let b = bf16(&[4 * c])?;
    mlx_rs::transforms::eval([&x, &y, &v, &w, &b])?;
    let ops_under_test: Vec<(&str, OpCall)> = vec![
        (
            "layer_norm_modulate",
            Box::new(|| fo::layer_norm_modulate(&x, &v, &v, 1e-6)),
        ),
        (
            "gated_residual",
            Box::new(|| fo::gated_residual(&x, &v, &y)),
        ),
        ("gelu_tanh", Box::new(|| fo::gelu_tanh(&w))),
        ("bias_gelu_tanh", Box::new(|| fo::bias_gelu_tanh(&w, &b))),
    ];
    let mut total = Duration::ZERO;
    for (name, f) in &ops_under_test {
        let first = timed(f.as_ref())?; // check + compile
        fo::fused::reset_checks();
        let checked = timed(f.as_ref())?; // check, compiled
        let plain = (0..5)
            .map(|_| timed(f.as_ref()))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .min()
            .unwrap_or_default();
        let overhead = checked.saturating_sub(plain);
        total += overhead;
        println!(
            "{name:<20} first call {:>8.2} ms (compile + check), checked {:>7.2} ms, plain {:>7.2} ms: check costs {:>6.2} ms",
            first.as_secs_f64() * 1e3,
            checked.as_secs_f64() * 1e3,
            plain.as_secs_f64() * 1e3,
            overhead.as_secs_f64() * 1e3
        );
    }
    println!(
        "self-check cost, all four kernels: {:.2} ms",
        total.as_secs_f64() * 1e3
    );
    anyhow::ensure!(
        fo::fallback_warnings().is_empty(),
        "a healthy kernel fell back: {:?}",
        fo::fallback_warnings()
    );
    anyhow::ensure!(
        total < Duration::from_millis(50),
        "the self-check costs {total:?}"
    );

    // A broken source: the op falls back, its result is the reference's, bit for bit.
    fo::fused::break_kernel("gelu_tanh");
    fo::fused::reset_checks();
    let got = fo::gelu_tanh(&w)?;
    let want = fo::reference::gelu_tanh(&w)?;
    let same = ops::all(&ops::eq(&got, &want)?, None)?.item_exact::<bool>();
    let warnings = fo::fallback_warnings();
    println!("broken gelu_tanh: result equals the reference: {same}; warnings: {warnings:?}");
    anyhow::ensure!(same, "the fallback result differs from the reference");
    anyhow::ensure!(
        warnings.len() == 1 && warnings[0].contains("gelu_tanh"),
        "expected one warning naming gelu_tanh: {warnings:?}"
    );
    // Called again: no second warning, still right; the other kernels still run fused.
    let again = fo::gelu_tanh(&w)?;
    anyhow::ensure!(ops::all(&ops::eq(&again, &want)?, None)?.item_exact::<bool>());
    let g = fo::gated_residual(&x, &v, &y)?;
    let g_ref = fo::reference::gated_residual(&x, &v, &y)?;
    let err = ops::abs(&ops::subtract(
        &g.as_dtype(Dtype::Float32)?,
        &g_ref.as_dtype(Dtype::Float32)?,
    )?)?
    .max(None)?
    .item_exact::<f32>();
    anyhow::ensure!(
        err < 0.1,
        "gated_residual after the fallback: max error {err}"
    );
    anyhow::ensure!(
        fo::fallback_warnings().len() == 1,
        "{:?}",
        fo::fallback_warnings()
    );
    println!("ok");
    Ok(())
}
