//! Ways to run two of the DiT's costliest shapes, timed side by side in one process: the
//! text stream's few-row GEMMs (a prompt's 32–128 tokens against 3072-wide weights) and
//! attention over long joint sequences (a 1024² image, and an edit's noise + picture tokens).
//! What the model should call is decided from these numbers (docs/speed.md).
//!
//! Run: `cargo bench -p qwen-image-benches --bench shapes -- [--rows 32,64,128]
//! [--seqs 4128,9500] [--tiny]` (`--tiny`: small shapes on the CPU, a smoke test).

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use mlx_rs::{Array, Dtype, ops, random};
use qwen_image_benches::median;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "Few-row GEMMs and long-sequence attention, several ways")]
struct Opts {
    /// Text-stream row counts.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    rows: Vec<usize>,
    /// Joint sequence lengths for attention.
    #[arg(long, value_delimiter = ',', default_value = "4128,9500")]
    seqs: Vec<usize>,
    /// Small shapes on the CPU in f32 (smoke test).
    #[arg(long)]
    tiny: bool,
    #[command(flatten)]
    cargo: qwen_image_benches::CargoBenchArgs,
}

/// Independent calls per evaluation (distinct weights, so none is served from L2).
const CALLS: usize = 8;
/// Timed evaluations after one warm-up.
const REPS: usize = 7;

fn normal(seed: u64, shape: &[i32], std: f32, dt: Dtype) -> Result<Array> {
    let key = random::key(seed)?;
    let a = random::normal::<f32>(shape, 0.0, std, &key)?.as_dtype(dt)?;
    a.eval()?;
    Ok(a)
}

/// Median ms per call of `f(i)` for i in 0..CALLS, all evaluated together.
fn time_calls(f: &dyn Fn(usize) -> Result<Array>) -> Result<f64> {
    let run = || -> Result<f64> {
        let t0 = Instant::now();
        let ys = (0..CALLS).map(f).collect::<Result<Vec<_>>>()?;
        mlx_rs::transforms::eval(&ys)?;
        Ok(t0.elapsed().as_secs_f64() * 1e3 / CALLS as f64)
    };
    run()?;
    let ts = (0..REPS).map(|_| run()).collect::<Result<Vec<_>>>()?;
    Ok(median(&ts))
}

fn gemms(o: &Opts, d: usize, f: usize, dt: Dtype) -> Result<()> {
    println!("\n## few-row GEMMs, ms per call (GB/s of the weight read)");
    println!(
        "| rows | K×N | addmm x·wᵀ | addmm w·xᵀ (transposed out) | w·xᵀ then copied | split-K 2 | split-K 4 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &(k, n) in &[(d, 3 * d), (d, d), (d, f), (f, d)] {
        let (ki, ni) = (k as i32, n as i32);
        let ws = (0..CALLS)
            .map(|i| normal(100 + i as u64, &[ni, ki], 1.0 / (k as f32).sqrt(), dt))
            .collect::<Result<Vec<_>>>()?;
        let b = normal(7, &[ni], 0.02, dt)?;
        let bt = b.reshape(&[ni, 1])?;
        // Split-K layouts (s, N, K/s), made once as a loader would.
        let split = |s: i32| -> Result<Vec<Array>> {
            ws.iter()
                .map(|w| {
                    let a = w.reshape(&[ni, s, ki / s])?.transpose_axes(&[1, 0, 2])?;
                    let a = a.contiguous()?;
                    a.eval()?;
                    Ok(a)
                })
                .collect()
        };
        let (ws2, ws4) = (split(2)?, split(4)?);
        for &r in &o.rows {
            let ri = r as i32;
            let x = normal(3, &[ri, ki], 1.0, dt)?;
            let gbs = |ms: f64| (k * n * 2) as f64 / (ms * 1e-3) / 1e9;
            let base = time_calls(&|i| Ok(ops::addmm(&b, &x, ws[i].t(), None, None)?))?;
            let tr = time_calls(&|i| Ok(ops::addmm(&bt, &ws[i], x.t(), None, None)?.t()))?;
            let trc = time_calls(&|i| {
                Ok(ops::addmm(&bt, &ws[i], x.t(), None, None)?
                    .t()
                    .contiguous()?)
            })?;
            let sk = |wss: &[Array], s: i32| {
                time_calls(&|i| {
                    let xs = x.reshape(&[ri, s, ki / s])?.transpose_axes(&[1, 0, 2])?;
                    let p = ops::matmul(&xs, wss[i].transpose_axes(&[0, 2, 1])?)?;
                    Ok(ops::add(&p.sum_axis(0, None)?, &b)?)
                })
            };
            let (s2, s4) = (sk(&ws2, 2)?, sk(&ws4, 4)?);
            let cell = |ms: f64| format!("{ms:.4} ({:.0})", gbs(ms));
            println!(
                "| {r} | {k}×{n} | {} | {} | {} | {} | {} |",
                cell(base),
                cell(tr),
                cell(trc),
                cell(s2),
                cell(s4)
            );
        }
    }
    Ok(())
}

fn attention(o: &Opts, heads: usize, hd: usize, dt: Dtype) -> Result<()> {
    println!("\n## attention, ms per call (TFLOP/s)");
    println!(
        "| S | (B,H,S,D) contiguous | (B,S,H,D) views, out as (B,S,H·D) | padded to ×128, contiguous |"
    );
    println!("|---|---|---|---|");
    let (h, e) = (heads as i32, hd as i32);
    let scale = 1.0 / (hd as f32).sqrt();
    for &s in &o.seqs {
        let si = s as i32;
        let flops = 4.0 * (s * s * heads * hd) as f64;
        let tf = |ms: f64| flops / (ms * 1e-3) / 1e12;
        let bhsd = (0..3)
            .map(|i| normal(10 + i, &[1, h, si, e], 1.0, dt))
            .collect::<Result<Vec<_>>>()?;
        let a = time_calls(&|_| {
            Ok(mlx_fastops::sdpa(
                &bhsd[0], &bhsd[1], &bhsd[2], scale, None,
            )?)
        })?;
        let bshd = (0..3)
            .map(|i| normal(20 + i, &[1, si, h, e], 1.0, dt))
            .collect::<Result<Vec<_>>>()?;
        let b = time_calls(&|_| {
            let v = |x: &Array| x.swap_axes(1, 2);
            let out = mlx_fastops::sdpa(&v(&bshd[0])?, &v(&bshd[1])?, &v(&bshd[2])?, scale, None)?;
            Ok(out.swap_axes(1, 2)?.reshape(&[1, si, h * e])?)
        })?;
        let sp = s.div_ceil(128) * 128;
        let padded = (0..3)
            .map(|i| normal(30 + i, &[1, h, sp as i32, e], 1.0, dt))
            .collect::<Result<Vec<_>>>()?;
        let c = time_calls(&|_| {
            Ok(mlx_fastops::sdpa(
                &padded[0], &padded[1], &padded[2], scale, None,
            )?)
        })?;
        println!(
            "| {s} | {a:.3} ({:.0}) | {b:.3} ({:.0}) | {c:.3} ({:.0}, S={sp}) |",
            tf(a),
            tf(b),
            tf(c)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut o = Opts::parse();
    let (d, f, heads, hd, dt) = if o.tiny {
        mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
        o.rows = vec![4];
        o.seqs = vec![40];
        (64, 256, 2, 32, Dtype::Float32)
    } else {
        (3072, 12288, 24, 128, Dtype::Bfloat16)
    };
    println!("backend: {}", mlx_fastops::current_backend());
    gemms(&o, d, f, dt)?;
    attention(&o, heads, hd, dt)?;
    Ok(())
}
