//! LoRA files that cannot be applied are refused before anything heavy, naming the keys; the
//! alpha folding happens in the file's dtype, as diffusers does it. (End-to-end parity with
//! diffusers for every layout: the program's tests/lora.rs.)

mod common;

use std::collections::BTreeMap;

use common::*;
use mlx_rs::{Array, Dtype};
use qwen_image::lora::{LoraPlan, plan};
use qwen_image::{GenerateRequest, Lora, LoraSource, PipelineOptions, QwenImagePipeline};

fn pipe() -> QwenImagePipeline {
    QwenImagePipeline::load(&fixtures().join("tiny"), PipelineOptions::default()).unwrap()
}

fn in_memory(tensors: Vec<(&str, Array)>) -> Lora {
    Lora {
        source: LoraSource::Tensors {
            name: "mem".into(),
            tensors: tensors
                .into_iter()
                .map(|(k, a)| (k.to_string(), a))
                .collect(),
            metadata: BTreeMap::new(),
        },
        scale: 1.0,
    }
}

fn z(shape: &[i32]) -> Array {
    Array::zeros::<f32>(shape).unwrap()
}

fn plan_err(p: &QwenImagePipeline, lora: Lora) -> String {
    plan(&lora, &p.configs().transformer)
        .unwrap_err()
        .to_string()
}

/// The tiny transformer: inner dim 32, so attention projections are 32→32.
#[test]
fn bad_loras_are_refused_naming_the_keys() {
    let p = pipe();
    let q = "transformer_blocks.0.attn.to_q";
    // A key that matches no layer: listed, with layers nearby.
    let e = plan_err(
        &p,
        in_memory(vec![
            ("transformer_blocks.0.attn.to_qq.lora_A.weight", z(&[4, 32])),
            ("transformer_blocks.0.attn.to_qq.lora_B.weight", z(&[32, 4])),
        ]),
    );
    assert!(
        e.contains("transformer_blocks.0.attn.to_qq.lora_A.weight")
            && e.contains("match no Linear layer")
            && e.contains("transformer_blocks.0.attn.to_q"),
        "{e}"
    );
    // lora_A without lora_B, and the reverse.
    let e = plan_err(
        &p,
        in_memory(vec![(&format!("{q}.lora_A.weight"), z(&[4, 32]))]),
    );
    assert!(e.contains("has no matching up/lora_B"), "{e}");
    let e = plan_err(
        &p,
        in_memory(vec![(&format!("{q}.lora_up.weight"), z(&[32, 4]))]),
    );
    assert!(e.contains("has no matching down/lora_A"), "{e}");
    // Rank mismatch between A and B.
    let e = plan_err(
        &p,
        in_memory(vec![
            (&format!("{q}.lora_A.weight"), z(&[4, 32])),
            (&format!("{q}.lora_B.weight"), z(&[32, 8])),
        ]),
    );
    assert!(e.contains("rank 4") && e.contains("but 8"), "{e}");
    // A shape that does not fit the layer.
    let e = plan_err(
        &p,
        in_memory(vec![
            (&format!("{q}.lora_A.weight"), z(&[4, 33])),
            (&format!("{q}.lora_B.weight"), z(&[32, 4])),
        ]),
    );
    assert!(e.contains("32→32 Linear") && e.contains("[4, 33]"), "{e}");
    // A text-encoder LoRA.
    let e = plan_err(
        &p,
        in_memory(vec![
            (
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
                z(&[4, 8]),
            ),
            (
                "lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight",
                z(&[4, 32]),
            ),
            (
                "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight",
                z(&[32, 4]),
            ),
        ]),
    );
    assert!(
        e.contains("text-encoder") && e.contains("not supported"),
        "{e}"
    );
    // Variants diffusers refuses too.
    let e = plan_err(&p, in_memory(vec![(&format!("{q}.diff"), z(&[32, 32]))]));
    assert!(e.contains("not supported") && e.contains(".diff"), "{e}");
    // Nothing LoRA-like.
    let e = plan_err(&p, in_memory(vec![]));
    assert!(e.contains("no LoRA tensors"), "{e}");
    // A scale that is not a number.
    let mut l = in_memory(vec![
        (&format!("{q}.lora_A.weight"), z(&[4, 32])),
        (&format!("{q}.lora_B.weight"), z(&[32, 4])),
    ]);
    l.scale = f32::NAN;
    assert!(plan_err(&p, l).contains("not finite"));
}

#[test]
fn files_that_are_not_loras() {
    let p = pipe();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is not a safetensors file").unwrap();
    let e = plan_err(&p, Lora::file(&junk, 1.0));
    assert!(
        e.contains("junk.safetensors") && e.contains("corrupt"),
        "{e}"
    );
    let e = plan_err(&p, Lora::file(dir.path().join("missing.safetensors"), 1.0));
    assert!(
        e.contains("missing.safetensors") && e.contains("no such file"),
        "{e}"
    );
    let e = plan_err(&p, Lora::file(dir.path(), 1.0));
    assert!(e.contains("not a file"), "{e}");
    // The pipeline refuses the request before any component is loaded.
    let mut req = GenerateRequest::new("a fox");
    (req.width, req.height, req.steps) = (48, 48, 2);
    req.loras = vec![Lora::file(&junk, 1.0)];
    assert!(p.prepare(req).is_err());
}

/// bf16 → the f32 value of its bits; RNE rounding of an f32 to bf16 (host reference).
fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = (b + 0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// kohya bf16 with alpha 3 at rank 16: diffusers multiplies down by 0.375 and up by 0.5 in
/// bf16 (each product rounded to bf16) before anything else. The loaded matrices equal that,
/// computed on the host; folding after an upcast to f32 would not round (and differs here).
#[test]
fn alpha_is_folded_in_the_files_dtype() -> anyhow::Result<()> {
    let p = pipe();
    let file = fixtures().join("../lora/files/kohya.safetensors");
    let plan: LoraPlan = plan(&Lora::file(&file, 1.0), &p.configs().transformer)?;
    let mut set = qwen_dit::LoraSet::new();
    plan.load_into(&mut set)?;
    assert_eq!(set.modules().count(), 34);
    // Rebuild the q projection of block 1 from the raw file and compare.
    let raw = mlx_weights::load_file(&file)?;
    let stem = "lora_unet_transformer_blocks_1_attn_to_q";
    let down = raw.get(&format!("{stem}.lora_down.weight")).unwrap();
    assert_eq!(down.dtype(), Dtype::Bfloat16);
    let host: Vec<f32> = down
        .as_dtype(Dtype::Float32)?
        .as_slice::<f32>()
        .iter()
        .map(|&v| bf16_round(v * 0.375))
        .collect();
    // The merged delta (onto zeros) is up·down with the folded matrices.
    let w = Array::zeros::<f32>(&[32, 32])?;
    let merged = set
        .merged("transformer_blocks.1.attn.to_q", &w, Dtype::Float32)?
        .unwrap();
    let up = raw.get(&format!("{stem}.lora_up.weight")).unwrap();
    let up_host: Vec<f32> = up
        .as_dtype(Dtype::Float32)?
        .as_slice::<f32>()
        .iter()
        .map(|&v| bf16_round(v * 0.5))
        .collect();
    let r = 16;
    let got = merged.as_slice::<f32>();
    let mut worst = 0f64;
    let mut unrounded_worst = 0f64;
    let down_f32: Vec<f32> = down.as_dtype(Dtype::Float32)?.as_slice::<f32>().to_vec();
    let up_f32: Vec<f32> = up.as_dtype(Dtype::Float32)?.as_slice::<f32>().to_vec();
    for o in 0..32 {
        for i in 0..32 {
            let want: f64 = (0..r)
                .map(|k| up_host[o * r + k] as f64 * host[k * 32 + i] as f64)
                .sum();
            let unrounded: f64 = (0..r)
                .map(|k| (up_f32[o * r + k] * 0.5) as f64 * (down_f32[k * 32 + i] * 0.375) as f64)
                .sum();
            worst = worst.max((got[o * 32 + i] as f64 - want).abs());
            unrounded_worst = unrounded_worst.max((got[o * 32 + i] as f64 - unrounded).abs());
        }
    }
    // f32 GEMM of rank 16 against f64: ≤ 1e-6; the unrounded fold is visibly different.
    assert!(worst <= 1e-6, "{worst}");
    assert!(unrounded_worst > 1e-4, "{unrounded_worst}");
    Ok(())
}
