//! Criterion benches for the VAE decoder (and encoder) at a small random configuration.
//!
//! Weights are random (timing does not depend on their values); the config is the real
//! architecture at reduced width (`base_dim` 32 instead of 96), so the shapes of the work are
//! representative while CPU runs stay short. Outputs are evaluated before the clock stops.

use std::collections::BTreeMap;

use criterion::{Criterion, criterion_group, criterion_main};
use mlx_rs::{Array, Dtype, random::normal};
use qwen_vae::{QwenImageVae, TilingConfig, VaeConfig};

/// Every tensor the checkpoint of `cfg` holds, with its PyTorch shape, drawn from N(0, 1/fan_in).
fn random_checkpoint(cfg: &VaeConfig) -> anyhow::Result<mlx_weights::Tensors> {
    let shapes = expected_shapes(cfg);
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

/// The checkpoint layout of diffusers' AutoencoderKLQwenImage for `cfg`.
fn expected_shapes(cfg: &VaeConfig) -> BTreeMap<String, Vec<i32>> {
    let mut m = BTreeMap::new();
    let conv3 = |m: &mut BTreeMap<String, Vec<i32>>, p: &str, i: usize, o: usize, k: [usize; 3]| {
        m.insert(
            format!("{p}.weight"),
            vec![o as i32, i as i32, k[0] as i32, k[1] as i32, k[2] as i32],
        );
        m.insert(format!("{p}.bias"), vec![o as i32]);
    };
    fn conv2(m: &mut BTreeMap<String, Vec<i32>>, p: &str, i: usize, o: usize, k: usize) {
        m.insert(
            format!("{p}.weight"),
            vec![o as i32, i as i32, k as i32, k as i32],
        );
        m.insert(format!("{p}.bias"), vec![o as i32]);
    }
    fn norm(m: &mut BTreeMap<String, Vec<i32>>, p: &str, c: usize, images: bool) {
        let s = if images {
            vec![c as i32, 1, 1]
        } else {
            vec![c as i32, 1, 1, 1]
        };
        m.insert(format!("{p}.gamma"), s);
    }
    let res = |m: &mut BTreeMap<String, Vec<i32>>, p: &str, i: usize, o: usize| {
        norm(m, &format!("{p}.norm1"), i, false);
        norm(m, &format!("{p}.norm2"), o, false);
        for (n, a) in [("conv1", i), ("conv2", o)] {
            m.insert(format!("{p}.{n}.weight"), vec![o as i32, a as i32, 3, 3, 3]);
            m.insert(format!("{p}.{n}.bias"), vec![o as i32]);
        }
        if i != o {
            m.insert(
                format!("{p}.conv_shortcut.weight"),
                vec![o as i32, i as i32, 1, 1, 1],
            );
            m.insert(format!("{p}.conv_shortcut.bias"), vec![o as i32]);
        }
    };
    let attn = |m: &mut BTreeMap<String, Vec<i32>>, p: &str, c: usize| {
        norm(m, &format!("{p}.norm"), c, true);
        conv2(m, &format!("{p}.to_qkv"), c, 3 * c, 1);
        conv2(m, &format!("{p}.proj"), c, c, 1);
    };
    let z = cfg.z_dim;
    let levels = cfg.dim_mult.len();
    // encoder
    let d = cfg.encoder_dims();
    conv3(
        &mut m,
        "encoder.conv_in",
        cfg.input_channels,
        d[0],
        [3, 3, 3],
    );
    let mut idx = 0;
    for i in 0..levels {
        let mut cin = d[i];
        for _ in 0..cfg.num_res_blocks {
            res(&mut m, &format!("encoder.down_blocks.{idx}"), cin, d[i + 1]);
            idx += 1;
            cin = d[i + 1];
        }
        if i != levels - 1 {
            let p = format!("encoder.down_blocks.{idx}");
            conv2(&mut m, &format!("{p}.resample.1"), d[i + 1], d[i + 1], 3);
            if cfg.temperal_downsample[i] {
                conv3(
                    &mut m,
                    &format!("{p}.time_conv"),
                    d[i + 1],
                    d[i + 1],
                    [3, 1, 1],
                );
            }
            idx += 1;
        }
    }
    let top = d[levels];
    res(&mut m, "encoder.mid_block.resnets.0", top, top);
    attn(&mut m, "encoder.mid_block.attentions.0", top);
    res(&mut m, "encoder.mid_block.resnets.1", top, top);
    norm(&mut m, "encoder.norm_out", top, false);
    conv3(&mut m, "encoder.conv_out", top, 2 * z, [3, 3, 3]);
    conv3(&mut m, "quant_conv", 2 * z, 2 * z, [1, 1, 1]);
    conv3(&mut m, "post_quant_conv", z, z, [1, 1, 1]);
    // decoder
    let d = cfg.decoder_dims();
    conv3(&mut m, "decoder.conv_in", z, d[0], [3, 3, 3]);
    res(&mut m, "decoder.mid_block.resnets.0", d[0], d[0]);
    attn(&mut m, "decoder.mid_block.attentions.0", d[0]);
    res(&mut m, "decoder.mid_block.resnets.1", d[0], d[0]);
    let up: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
    for i in 0..levels {
        let mut cin = if i > 0 { d[i] / 2 } else { d[i] };
        for j in 0..=cfg.num_res_blocks {
            res(
                &mut m,
                &format!("decoder.up_blocks.{i}.resnets.{j}"),
                cin,
                d[i + 1],
            );
            cin = d[i + 1];
        }
        if i != levels - 1 {
            let p = format!("decoder.up_blocks.{i}.upsamplers.0");
            conv2(
                &mut m,
                &format!("{p}.resample.1"),
                d[i + 1],
                d[i + 1] / 2,
                3,
            );
            if up[i] {
                conv3(
                    &mut m,
                    &format!("{p}.time_conv"),
                    d[i + 1],
                    2 * d[i + 1],
                    [3, 1, 1],
                );
            }
        }
    }
    norm(&mut m, "decoder.norm_out", d[levels], false);
    conv3(
        &mut m,
        "decoder.conv_out",
        d[levels],
        cfg.input_channels,
        [3, 3, 3],
    );
    m
}

fn bench(c: &mut Criterion) {
    let cfg = VaeConfig {
        base_dim: 32,
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
    g.bench_function(format!("decode/f32/b32_1x16x{h}x{w}"), |b| {
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
    g.bench_function(format!("decode_tiled64/f32/b32_1x16x{h}x{w}"), |b| {
        b.iter(|| {
            let img = vae
                .decode_tiled(&z, &tiles)
                .unwrap_or_else(|e| panic!("{e}"));
            img.eval().unwrap_or_else(|e| panic!("{e}"));
        })
    });
    let image: Array = normal::<f32>(&[1, 3, 1, h * 8, w * 8], None, Some(0.5), None)
        .unwrap_or_else(|e| panic!("{e}"));
    g.bench_function(format!("encode/f32/b32_1x3x{}x{}", h * 8, w * 8), |b| {
        b.iter(|| {
            let d = vae.encode(&image).unwrap_or_else(|e| panic!("{e}"));
            d.mean.eval().unwrap_or_else(|e| panic!("{e}"));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
