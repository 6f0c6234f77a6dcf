//! Quantized checkpoints and on-the-fly quantization (MLX affine, group 64, 4/8 bits).

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use common::*;
use mlx_rs::{Array, Dtype};
use qwen_dit::{
    QuantizeSpec, QwenImageTransformer, QwenImageTransformerConfig, RopeTables, weight_bytes,
};

/// A small config whose every Linear input width is a multiple of 64 (MLX's group size).
fn cfg() -> QwenImageTransformerConfig {
    QwenImageTransformerConfig {
        in_channels: 64,
        out_channels: Some(16),
        num_layers: 3,
        attention_head_dim: 32,
        num_attention_heads: 2,
        joint_attention_dim: 128,
        axes_dims_rope: vec![8, 12, 12],
        ..Default::default()
    }
}

struct Inputs {
    x: Array,
    e: Array,
    m: Array,
    t: Array,
    rope: RopeTables,
}

fn inputs(c: &QwenImageTransformerConfig) -> Result<Inputs> {
    let k = mlx_rs::random::key(3)?;
    let (k1, k2) = mlx_rs::random::split(&k, 2)?;
    let x = mlx_rs::random::normal::<f32>(&[2, 12, c.in_channels as i32], None, None, &k1)?;
    let e = mlx_rs::random::normal::<f32>(&[2, 5, c.joint_attention_dim as i32], None, None, &k2)?;
    let m = Array::from_slice(&[1i32, 1, 1, 1, 1, 1, 1, 1, 0, 0], &[2, 5]);
    // σ exactly representable in bf16, so a bf16 run differs from f32 by activations only
    let t = Array::from_slice(&[0.75f32, 0.25], &[2]);
    let rope = RopeTables::new(c, &[(1, 3, 4)], 5)?;
    Ok(Inputs { x, e, m, t, rope })
}

fn run(model: &QwenImageTransformer, i: &Inputs) -> Result<Array> {
    Ok(model.forward(&i.x, &i.e, Some(&i.m), &i.t, &i.rope)?)
}

/// The quantized matmul equals a float matmul with the dequantized weights up to f32
/// summation order: bound 1e-5 relative (measured ~1e-7). Quantizing at all moves the
/// output (> 1e-3 at 4 bits, > 1e-5 at 8 bits), so the comparison is not vacuous.
#[test]
fn quantized_forward_matches_dequantized_weights() -> Result<()> {
    on_cpu(quantized_forward_matches_dequantized_weights_cpu)
}

fn quantized_forward_matches_dequantized_weights_cpu() -> Result<()> {
    let c = cfg();
    let float = QwenImageTransformer::random(c.clone(), Dtype::Float32, 11)?;
    let i = inputs(&c)?;
    let y_float = run(&float, &i)?;
    let n_linears = c.linear_layers().len();
    for (bits, min_move) in [(4, 1e-3f32), (8, 1e-5)] {
        let mut q = float.clone();
        q.quantize(&QuantizeSpec::new(bits))?;
        assert_eq!(
            q.quantized_layer_count(),
            n_linears,
            "{bits}-bit: every Linear quantized"
        );
        let y_q = run(&q, &i)?;
        let y_dq = run(&q.dequantized()?, &i)?;
        let e = rel_err(&y_q, &y_dq)?;
        let moved = rel_err(&y_q, &y_float)?;
        println!("{bits}-bit: vs dequantized {e:.3e}, vs float {moved:.3e}");
        assert!(
            e <= 1e-5,
            "{bits}-bit: quantized vs dequantized rel err {e}"
        );
        assert!(
            moved > min_move,
            "{bits}-bit quantization did not change the output ({moved})"
        );
    }
    Ok(())
}

#[test]
fn keep_float_patterns_are_respected() -> Result<()> {
    let c = cfg();
    let mut m = QwenImageTransformer::random(c.clone(), Dtype::Float32, 1)?;
    let spec = QuantizeSpec::new(4)
        .keep_edge_blocks(c.num_layers, 1, 1)
        .keep("*_mod.1")
        .keep("proj_out");
    m.quantize(&spec)?;
    let q = m.quantized_layers();
    for (path, _, _) in c.linear_layers() {
        let float = path.starts_with("transformer_blocks.0.")
            || path.starts_with("transformer_blocks.2.")
            || path.ends_with("_mod.1")
            || path == "proj_out";
        assert_eq!(q.contains(&path), !float, "{path}");
    }
    assert!(q.contains(&"transformer_blocks.1.attn.to_q".to_string()));
    Ok(())
}

/// A quantized model saved with mlx_weights (packed u32 weight + scales + biases + bias) and
/// reloaded gives bit-identical outputs; quantizing at load time equals quantizing after.
#[test]
fn quantized_checkpoint_round_trips() -> Result<()> {
    let c = cfg();
    let float = QwenImageTransformer::random(c.clone(), Dtype::Float32, 5)?;
    let spec = QuantizeSpec::new(4).keep("transformer_blocks.0.*");
    let mut q = float.clone();
    q.quantize(&spec)?;
    let i = inputs(&c)?;
    let y = values(&run(&q, &i)?)?;

    let dir = tempfile::tempdir()?;
    q.save(dir.path())?;
    let w = q.weights();
    assert_eq!(
        w["transformer_blocks.1.attn.to_q.weight"].dtype(),
        Dtype::Uint32
    );
    assert!(w.contains_key("transformer_blocks.1.attn.to_q.scales"));
    assert!(w.contains_key("transformer_blocks.1.attn.to_q.biases"));
    assert!(w.contains_key("transformer_blocks.1.attn.to_q.bias"));
    let cfg_text = std::fs::read_to_string(dir.path().join("config.json"))?;
    assert!(cfg_text.contains("\"quantization\""), "{cfg_text}");
    let again = QwenImageTransformer::load(dir.path(), Dtype::Float32, None)?;
    assert_eq!(again.quantized_layers(), q.quantized_layers());
    assert_eq!(values(&run(&again, &i)?)?, y);

    let fdir = tempfile::tempdir()?;
    float.save(fdir.path())?;
    let on_load = QwenImageTransformer::load(fdir.path(), Dtype::Float32, Some(spec))?;
    assert_eq!(on_load.quantized_layers(), q.quantized_layers());
    assert_eq!(values(&run(&on_load, &i)?)?, y);
    Ok(())
}

/// An MLX conversion as mlx-community stores it: quantized from bf16 weights (bf16 scales
/// and biases), 8-bit, with mflux module names. It loads in bf16 onto the same parameters:
/// outputs are bf16 and bit-identical to the model it was exported from.
#[test]
fn mlx_style_quantized_checkpoint_loads() -> Result<()> {
    let c = cfg();
    let mut q = QwenImageTransformer::random(c.clone(), Dtype::Bfloat16, 9)?;
    q.quantize(&QuantizeSpec::new(8))?;
    let mut t = mlx_weights::Tensors::new("in-memory");
    for (k, v) in q.weights() {
        let k = k
            .replace(".img_mod.1.", ".img_mod_linear.")
            .replace(".attn.to_out.0.", ".attn.attn_to_out.0.")
            .replace(".txt_mlp.net.0.proj.", ".txt_ff.mlp_in.");
        t.insert(k, v);
    }
    assert_eq!(
        t.get("transformer_blocks.0.img_mod_linear.scales")
            .map(|a| a.dtype()),
        Some(Dtype::Bfloat16)
    );
    let m = QwenImageTransformer::from_tensors(c.clone(), t, Dtype::Bfloat16, None)?;
    assert_eq!(m.quantized_layer_count(), c.linear_layers().len());
    let i = inputs(&c)?;
    let y = run(&m, &i)?;
    assert_eq!(y.dtype(), Dtype::Bfloat16);
    let v = values(&y)?;
    assert!(v.iter().all(|x| x.is_finite()));
    assert_eq!(v, values(&run(&q, &i)?)?);
    Ok(())
}

#[test]
fn inconsistent_quantized_checkpoint_is_rejected() -> Result<()> {
    let c = cfg();
    let mut q = QwenImageTransformer::random(c.clone(), Dtype::Float32, 2)?;
    q.quantize(&QuantizeSpec::new(4))?;
    let mut w: BTreeMap<String, Array> = q.weights();
    // scales of a 4-bit layer truncated: neither bits nor group size can be inferred
    w.insert(
        "transformer_blocks.1.attn.to_k.scales".into(),
        Array::zeros::<f32>(&[64, 3])?,
    );
    let mut t = mlx_weights::Tensors::new("in-memory");
    for (k, v) in w {
        t.insert(k, v);
    }
    let err =
        QwenImageTransformer::from_tensors(c, t, Dtype::Float32, None).expect_err("must fail");
    assert!(
        err.to_string().contains("transformer_blocks.1.attn.to_k"),
        "{err}"
    );
    Ok(())
}

/// Memory of the full-size model (Qwen-Image, 20.43 B parameters) from the parameter count.
#[test]
fn full_size_memory() {
    let c = QwenImageTransformerConfig::default();
    let n = c.param_count();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let bf16 = weight_bytes(&c, 2, None);
    let q8 = weight_bytes(&c, 2, Some(&QuantizeSpec::new(8)));
    let q4 = weight_bytes(&c, 2, Some(&QuantizeSpec::new(4)));
    let q4_edges = weight_bytes(
        &c,
        2,
        Some(&QuantizeSpec::new(4).keep_edge_blocks(c.num_layers, 1, 1)),
    );
    println!(
        "params {n}; bf16 {:.2} GiB; 8-bit {:.2} GiB; 4-bit {:.2} GiB; 4-bit with first/last block bf16 {:.2} GiB",
        gib(bf16),
        gib(q8),
        gib(q4),
        gib(q4_edges)
    );
    assert_eq!(bf16, 2 * n);
    // 8-bit: 1 byte + 2·2 bytes per 64 weights = 1.0625 bytes per quantized weight.
    assert!((gib(q8) - 20.25).abs() < 0.1, "{}", gib(q8));
    assert!((gib(q4) - 10.74).abs() < 0.1, "{}", gib(q4));
    assert!(q4 < q4_edges && q4_edges < q8);
}

/// Load-time quantization of the sharded reference checkpoint (shard by shard) equals loading
/// in float and quantizing after; only layers whose input width is a multiple of 64 are
/// quantized (the FFN down-projections and the timestep embedder's first Linear here).
#[test]
fn sharded_checkpoint_quantizes_on_load() -> Result<()> {
    let dir = fixture("transformer");
    let spec = QuantizeSpec::new(8);
    let on_load = QwenImageTransformer::load(&dir, Dtype::Float32, Some(spec.clone()))?;
    let mut after = QwenImageTransformer::load(&dir, Dtype::Float32, None)?;
    after.quantize(&spec)?;
    let layers = on_load.quantized_layers();
    assert_eq!(layers, after.quantized_layers());
    assert_eq!(
        layers,
        vec![
            "time_text_embed.timestep_embedder.linear_1",
            "transformer_blocks.0.img_mlp.net.2",
            "transformer_blocks.0.txt_mlp.net.2",
            "transformer_blocks.1.img_mlp.net.2",
            "transformer_blocks.1.txt_mlp.net.2",
        ]
    );
    let c = cases()?.into_iter().next().expect("a case");
    let rope = RopeTables::new(on_load.config(), &c.grids, c.txt_len)?;
    let run = |m: &QwenImageTransformer| {
        m.forward(
            &c.hidden_states,
            &c.encoder_hidden_states,
            c.mask.as_ref(),
            &c.timestep,
            &rope,
        )
    };
    assert_eq!(values(&run(&on_load)?)?, values(&run(&after)?)?);
    assert!(QwenImageTransformer::load(&dir, Dtype::Float32, Some(QuantizeSpec::new(7))).is_err());
    Ok(())
}
