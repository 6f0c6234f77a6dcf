//! Merging low-rank updates at load: the merged weights against host f64 arithmetic, the
//! checks that refuse an update that does not fit, and merge-then-quantize.

mod common;

use anyhow::Result;
use common::*;
use mlx_rs::{Array, Dtype};
use qwen_dit::{
    DitError, LoraSet, LoraUpdate, QuantizeSpec, QwenImageTransformer, QwenImageTransformerConfig,
};

fn cfg() -> QwenImageTransformerConfig {
    QwenImageTransformerConfig {
        in_channels: 64,
        out_channels: Some(16),
        num_layers: 2,
        attention_head_dim: 32,
        num_attention_heads: 2,
        joint_attention_dim: 128,
        axes_dims_rope: vec![8, 12, 12],
        ..Default::default()
    }
}

fn update(seed: u64, rank: i32, din: i32, dout: i32, scale: f32) -> Result<LoraUpdate> {
    let k = mlx_rs::random::key(seed)?;
    let (k1, k2) = mlx_rs::random::split(&k, 2)?;
    Ok(LoraUpdate {
        down: mlx_rs::random::normal::<f32>(&[rank, din], None, None, &k1)?,
        up: mlx_rs::random::normal::<f32>(&[dout, rank], None, None, &k2)?,
        scale,
    })
}

/// W + Σ s·(up·down) in f64 on the host.
fn reference(w: &Array, updates: &[&LoraUpdate]) -> Result<Vec<f64>> {
    let (dout, din) = (w.shape()[0] as usize, w.shape()[1] as usize);
    let mut out: Vec<f64> = values(w)?.into_iter().map(f64::from).collect();
    for u in updates {
        let (d, up) = (values(&u.down)?, values(&u.up)?);
        let r = u.down.shape()[0] as usize;
        for o in 0..dout {
            for i in 0..din {
                let s: f64 = (0..r)
                    .map(|k| up[o * r + k] as f64 * d[k * din + i] as f64)
                    .sum();
                out[o * din + i] += u.scale as f64 * s;
            }
        }
    }
    Ok(out)
}

/// Two updates of one layer, one of another, one of a top-level layer: each merged weight
/// equals the f64 sum within 1e-5 relative to its largest entry (f32 GEMM of rank ≤ 8);
/// untouched layers are bit-identical; the count of changed layers is reported.
#[test]
fn merged_weights_match_host_arithmetic() -> Result<()> {
    on_cpu(|| -> Result<()> {
        let c = cfg();
        let base = QwenImageTransformer::random(c.clone(), Dtype::Float32, 5)?;
        let d = c.inner_dim() as i32;
        let q1 = update(1, 4, d, d, 0.7)?;
        let q2 = update(2, 8, d, d, -1.3)?;
        let ff = update(3, 4, d, 4 * d, 1.0)?;
        let img_in = update(4, 2, 64, d, 2.0)?;
        let mut set = LoraSet::new();
        set.add("transformer_blocks.1.attn.to_q", q1.clone());
        set.add("transformer_blocks.1.attn.to_q", q2.clone());
        set.add("transformer_blocks.0.img_mlp.net.0.proj", ff.clone());
        set.add("img_in", img_in.clone());
        let mut merged = base.clone();
        assert_eq!(merged.merge_lora(set.clone())?, 3);
        let (w0, w1) = (base.weights(), merged.weights());
        for (key, ups) in [
            ("transformer_blocks.1.attn.to_q.weight", vec![&q1, &q2]),
            ("transformer_blocks.0.img_mlp.net.0.proj.weight", vec![&ff]),
            ("img_in.weight", vec![&img_in]),
        ] {
            let want = reference(&w0[key], &ups)?;
            let got = values(&w1[key])?;
            let peak = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
            assert!(err <= 1e-5 * peak, "{key}: {err} vs peak {peak}");
        }
        for (k, a) in &w0 {
            if ![
                "transformer_blocks.1.attn.to_q.weight",
                "transformer_blocks.0.img_mlp.net.0.proj.weight",
                "img_in.weight",
            ]
            .contains(&k.as_str())
            {
                assert_eq!(values(a)?, values(&w1[k])?, "{k} changed");
            }
        }
        Ok(())
    })
}

#[test]
fn updates_that_do_not_fit_are_refused_with_all_problems() -> Result<()> {
    let c = cfg();
    let d = c.inner_dim() as i32;
    let mut set = LoraSet::new();
    set.add("transformer_blocks.0.attn.to_qq", update(1, 4, d, d, 1.0)?);
    set.add(
        "transformer_blocks.0.attn.to_k",
        update(2, 4, d + 1, d, 1.0)?,
    );
    set.add(
        "transformer_blocks.0.attn.to_v",
        LoraUpdate {
            down: Array::zeros::<f32>(&[4, d])?,
            up: Array::zeros::<f32>(&[d, 3])?,
            scale: 1.0,
        },
    );
    set.add("transformer_blocks.5.attn.to_q", update(3, 4, d, d, 1.0)?);
    let err = set.check(&c).unwrap_err();
    assert!(matches!(err, DitError::Lora(_)), "{err:?}");
    let msg = err.to_string();
    for needle in [
        "`transformer_blocks.0.attn.to_qq` is not a Linear layer",
        "transformer_blocks.0.attn.to_q,",
        "`transformer_blocks.0.attn.to_k` is (64, 64) but the update has down [4, 65]",
        "`transformer_blocks.0.attn.to_v`",
        "`transformer_blocks.5.attn.to_q` is not a Linear layer",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    // Nothing is half-applied: the model refuses the whole set.
    let mut m = QwenImageTransformer::random(c, Dtype::Float32, 1)?;
    let before = m.weights();
    assert!(m.merge_lora(set.clone()).is_err());
    let after = m.weights();
    for (k, a) in &before {
        assert_eq!(values(a)?, values(&after[k])?, "{k}");
    }
    Ok(())
}

/// With quantization on load, the LoRA is merged first and the merged weight quantized:
/// the same as quantizing a model whose weights were merged in float.
#[test]
fn merge_then_quantize() -> Result<()> {
    on_cpu(|| -> Result<()> {
        let c = cfg();
        let dir = tempfile::tempdir()?;
        let float = QwenImageTransformer::random(c.clone(), Dtype::Float32, 9)?;
        float.save(dir.path())?;
        let d = c.inner_dim() as i32;
        let mut set = LoraSet::new();
        set.add(
            "transformer_blocks.1.txt_mod.1",
            update(7, 4, d, 6 * d, 0.5)?,
        );
        set.add("proj_out", update(8, 2, d, 64, 1.5)?);
        let spec = QuantizeSpec::new(4);
        let loaded = QwenImageTransformer::load_with_lora(
            dir.path(),
            Dtype::Float32,
            Some(spec.clone()),
            set.clone(),
        )?;
        let mut want = float.clone();
        want.merge_lora(set.clone())?;
        want.quantize(&spec)?;
        let (a, b) = (loaded.weights(), want.weights());
        assert_eq!(a.len(), b.len());
        for (k, x) in &a {
            let y = &b[k];
            assert_eq!(x.dtype(), y.dtype(), "{k}");
            let eq = mlx_rs::ops::array_eq(x, y, false)?.item_exact::<bool>();
            assert!(eq, "{k} differs");
        }
        // A checkpoint stored quantized cannot take an update.
        want.save(dir.path())?;
        let e = QwenImageTransformer::load_with_lora(dir.path(), Dtype::Float32, None, set)
            .unwrap_err();
        assert!(e.to_string().contains("stored quantized"), "{e}");
        Ok(())
    })
}

/// A layer above the merge's block size (32 Mi elements) is merged in row blocks: the result is
/// the one-piece merge exactly (same products and sums per row), in f32 and rounded to bf16
/// (the one-piece formula is checked against host f64 arithmetic above).
#[test]
fn large_layers_merge_in_row_blocks_with_the_same_result() -> Result<()> {
    on_cpu(|| -> Result<()> {
        // 8194 × 4096 = 32.01 Mi elements: two blocks (8192 rows, then 2).
        let (dout, din) = (8194, 4096);
        let w = mlx_rs::random::normal::<f32>(&[dout, din], None, None, &mlx_rs::random::key(9)?)?;
        let (a, b) = (
            update(10, 4, din, dout, 0.5)?,
            update(11, 8, din, dout, -2.0)?,
        );
        for dt in [Dtype::Float32, Dtype::Bfloat16] {
            let blocks = qwen_dit::merge_updates(&[a.clone(), b.clone()], &w, dt)?;
            let mut whole = w.clone();
            for u in [&a, &b] {
                let delta = mlx_rs::ops::matmul(&u.up, &u.down)?;
                whole = whole.add(&delta.multiply(Array::from_f32(u.scale))?)?;
            }
            let whole = whole.as_dtype(dt)?;
            assert_eq!(blocks.shape(), &[dout, din]);
            assert_eq!(blocks.dtype(), dt);
            let same = mlx_rs::ops::array_eq(&blocks, &whole, false)?.item_exact::<bool>();
            assert!(same, "{dt:?}: blocks differ from the one-piece merge");
        }
        Ok(())
    })
}
