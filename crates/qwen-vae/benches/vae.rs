//! Criterion benches for the VAE decoder (and encoder) at a small random configuration.
//!
//! Weights are random (timing does not depend on their values); the config is the real
//! architecture at reduced width (`base_dim` 16 instead of 96), so the shapes of the work are
//! representative while CPU runs stay short. Outputs are evaluated before the clock stops.

use criterion::{Criterion, criterion_group, criterion_main};
use mlx_rs::{Array, Dtype, random::normal};
use qwen_vae::{QwenImageVae, TilingConfig, VaeConfig};

/// Every tensor the checkpoint of `cfg` holds, with its PyTorch shape, drawn from N(0, 1/fan_in).
fn random_checkpoint(cfg: &VaeConfig) -> anyhow::Result<mlx_weights::Tensors> {
    let shapes = qwen_vae::weights::checkpoint_shapes(cfg);
    let mut t = mlx_weights::Tensors::new("random");
    for (k, shape) in shapes {
        let fan_in: i32 = shape.iter().skip(1).product::<i32>().max(1);
        let a = if k.ends_with(".gamma") {
            mlx_rs::ops::ones::<f32>(&shape)?
        } else {
            normal::<f32>(&shape, None, Some(1.0 / (fan_in as f32).sqrt()), None)?
        };
        t.insert(k, a);
    }
    Ok(t)
}

fn bench(c: &mut Criterion) {
    let cfg = VaeConfig {
        base_dim: 16,
        ..VaeConfig::default()
    };
    let build = || -> anyhow::Result<QwenImageVae> {
        Ok(QwenImageVae::from_tensors(
            cfg.clone(),
            random_checkpoint(&cfg)?,
            Dtype::Float32,
        )?)
    };
    let vae = match build() {
        Ok(v) => v,
        Err(e) => panic!("bench setup: {e}"),
    };
    let (h, w) = (16, 16); // 128×128 pixels
    let z = normal::<f32>(&[1, cfg.z_dim as i32, 1, h, w], None, None, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("vae");
    g.sample_size(10);
    g.bench_function(format!("decode/f32/b16_1x16x{h}x{w}"), |b| {
        b.iter(|| {
            let img = vae.decode(&z).unwrap_or_else(|e| panic!("{e}"));
            img.eval().unwrap_or_else(|e| panic!("{e}"));
        })
    });
    let tiles = TilingConfig {
        tile_sample_min_height: 64,
        tile_sample_min_width: 64,
        tile_sample_stride_height: 48,
        tile_sample_stride_width: 48,
    };
    g.bench_function(format!("decode_tiled64/f32/b16_1x16x{h}x{w}"), |b| {
        b.iter(|| {
            let img = vae
                .decode_tiled(&z, &tiles)
                .unwrap_or_else(|e| panic!("{e}"));
            img.eval().unwrap_or_else(|e| panic!("{e}"));
        })
    });
    let image: Array = normal::<f32>(&[1, 3, 1, h * 8, w * 8], None, Some(0.5), None)
        .unwrap_or_else(|e| panic!("{e}"));
    g.bench_function(format!("encode/f32/b16_1x3x{}x{}", h * 8, w * 8), |b| {
        b.iter(|| {
            let d = vae.encode(&image).unwrap_or_else(|e| panic!("{e}"));
            d.mean.eval().unwrap_or_else(|e| panic!("{e}"));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
