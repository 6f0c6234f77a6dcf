//! Times the full-size Qwen-Image VAE (default config, random weights) on the default device:
//! decode at several sizes, tiled decode at 2048², encode at 1024², with peak memory.
//!
//! `cargo run --release -p qwen-vae --example vae_timing -- [bf16|f32] [iters]`
//! Random weights suffice for timing: the work does not depend on the values.

use std::time::Instant;

use mlx_rs::{Dtype, random::normal};
use qwen_vae::{QwenImageVae, TilingConfig, VaeConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dtype = match args.get(1).map(String::as_str) {
        Some("f32") => Dtype::Float32,
        _ => Dtype::Bfloat16,
    };
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let cfg = VaeConfig::default();
    let mut t = mlx_weights::Tensors::new("random");
    for (k, shape) in qwen_vae::weights::checkpoint_shapes(&cfg) {
        let fan_in: i32 = shape.iter().skip(1).product::<i32>().max(1);
        let a = if k.ends_with(".gamma") {
            mlx_rs::ops::ones::<f32>(&shape)?
        } else {
            normal::<f32>(&shape, None, Some(1.0 / (fan_in as f32).sqrt()), None)?
        };
        t.insert(k, a);
    }
    let vae = QwenImageVae::from_tensors(cfg.clone(), t, dtype)?;
    println!("dtype {dtype:?}, {iters} timed iterations after 2 warm-ups");

    let time = |name: &str, f: &dyn Fn() -> anyhow::Result<mlx_rs::Array>| -> anyhow::Result<()> {
        for _ in 0..2 {
            f()?.eval()?;
        }
        mlx_rs::memory::reset_peak_memory()?;
        let mut ms = Vec::new();
        for _ in 0..iters {
            let t0 = Instant::now();
            let out = f()?;
            out.eval()?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        let peak = mlx_rs::memory::peak_memory()? as f64 / (1u64 << 30) as f64;
        println!(
            "{name}: median {:.1} ms (min {:.1}), peak {:.2} GiB",
            ms[ms.len() / 2],
            ms[0],
            peak
        );
        Ok(())
    };

    for (h, w) in [(64, 64), (128, 128), (166, 166)] {
        let z = normal::<f32>(&[1, cfg.z_dim as i32, 1, h, w], None, None, None)?;
        time(&format!("decode {}x{}", h * 8, w * 8), &|| {
            Ok(vae.decode(&vae.denormalize_latents(&z)?)?)
        })?;
    }
    let z = normal::<f32>(&[1, cfg.z_dim as i32, 1, 256, 256], None, None, None)?;
    let tiles = TilingConfig::default();
    time("decode_tiled 2048x2048 (256/192 tiles)", &|| {
        Ok(vae.decode_tiled(&z, &tiles)?)
    })?;
    let big = TilingConfig {
        tile_sample_min_height: 1024,
        tile_sample_min_width: 1024,
        tile_sample_stride_height: 768,
        tile_sample_stride_width: 768,
    };
    time("decode_tiled 2048x2048 (1024/768 tiles)", &|| {
        Ok(vae.decode_tiled(&z, &big)?)
    })?;
    let img = normal::<f32>(&[1, 3, 1, 1024, 1024], None, Some(0.5), None)?;
    time("encode 1024x1024", &|| Ok(vae.encode(&img)?.mean))?;
    Ok(())
}
