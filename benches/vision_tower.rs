//! The Qwen2.5-VL vision tower (what Qwen-Image-Edit's text encoder runs on each input
//! picture) at full size with random weights: its time and peak memory for a picture at the
//! edit pipelines' sizes (the Edit pipeline shows the text encoder its ~1 MP picture, 1036² for
//! a 1024² input; Edit-Plus ~384² condition pictures, 392²).
//!
//! Run: `cargo bench -p qwen-image-benches --bench vision_tower -- [--sizes 1036,392]
//! [--iters 5] [--tiny]` (`--tiny`: a 2-block, 32-wide tower on the CPU, a smoke test).

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use mlx_rs::{Array, Dtype};
use qwen_image_benches::components::vision_config;
use qwen_image_benches::median;
use qwen_text_encoder::vision::{Grid, VisionTower};

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "The Qwen2.5-VL vision tower at full size (random weights)")]
struct Opts {
    /// Square picture sides in pixels, multiples of 28 (the processor's output sizes).
    #[arg(long, value_delimiter = ',', default_value = "1036,392")]
    sizes: Vec<usize>,
    /// Timed runs after one warm-up.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// A 2-block, 32-wide tower on the CPU in f32 (smoke test).
    #[arg(long)]
    tiny: bool,
    #[command(flatten)]
    cargo: qwen_image_benches::CargoBenchArgs,
}

fn main() -> Result<()> {
    let o = Opts::parse();
    let (cfg, dtype) = if o.tiny {
        mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
        (vision_config(true, 40)?, Dtype::Float32)
    } else {
        (vision_config(false, 3584)?, Dtype::Bfloat16)
    };
    let t0 = Instant::now();
    let tower = VisionTower::random(cfg.clone(), dtype, 0)?;
    println!(
        "random {:?} tower built in {:.1} s; active memory {:.2} GiB",
        dtype,
        t0.elapsed().as_secs_f64(),
        mlx_rs::memory::active_memory()? as f64 / (1u64 << 30) as f64
    );
    println!("| picture | patches | image tokens | ms (median) | min | peak GiB |");
    println!("|---|---|---|---|---|---|");
    for &side in &o.sizes {
        let g = side / cfg.patch_size;
        let grid = Grid { t: 1, h: g, w: g };
        let n = grid.patches() as i32;
        let key = mlx_rs::random::key(side as u64)?;
        let px = mlx_rs::random::normal::<f32>(&[n, cfg.patch_width() as i32], None, None, &key)?;
        px.eval()?;
        let run = |px: &Array| -> Result<f64> {
            let t = Instant::now();
            let out = tower.forward(px, &[grid])?;
            out.eval()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        run(&px)?;
        mlx_rs::memory::reset_peak_memory()?;
        let ts: Vec<f64> = (0..o.iters.max(1))
            .map(|_| run(&px))
            .collect::<Result<_>>()?;
        let min = ts.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "| {side}² | {n} | {} | {:.1} | {:.1} | {:.2} |",
            n / 4,
            median(&ts),
            min,
            mlx_rs::memory::peak_memory()? as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}
