//! Parity with diffusers' `QwenImageTransformer2DModel` on the tiny reference model of
//! `fixtures/gen/dit.py` (f32, CPU).
//!
//! Error measure: max|ours − ref| / max|ref| over the whole output. Bound 1e-4: both sides
//! compute in f32; two blocks of GEMMs, softmax and norms accumulate rounding differences of
//! order 1e-6 relative (different summation orders), so 1e-4 leaves two orders of margin
//! while every injected bug tried (un-centred RoPE, swapped norm_out scale/shift, dropped
//! mask, ...) gives errors above 1e-2.

mod common;

use anyhow::Result;
use common::*;
use mlx_rs::Dtype;
use qwen_dit::{QwenImageTransformer, RopeTables};

const TOL: f32 = 1e-4;

#[test]
fn forward_matches_diffusers() -> Result<()> {
    on_cpu(forward_matches_diffusers_cpu)
}

fn forward_matches_diffusers_cpu() -> Result<()> {
    let model = QwenImageTransformer::load(&fixture("transformer"), Dtype::Float32, None)?;
    for case in cases()? {
        let rope = RopeTables::new(model.config(), &case.grids, case.txt_len)?;
        let out = model.forward(
            &case.hidden_states,
            &case.encoder_hidden_states,
            case.mask.as_ref(),
            &case.timestep,
            &rope,
        )?;
        assert_eq!(out.dtype(), Dtype::Float32);
        let e = rel_err(&out, &case.output)?;
        println!("{}: rel err {e:.3e}", case.name);
        assert!(e <= TOL, "{}: rel err {e} > {TOL}", case.name);
    }
    Ok(())
}

#[test]
fn rope_tables_match_diffusers() -> Result<()> {
    let model_cfg =
        qwen_dit::QwenImageTransformerConfig::from_file(&fixture("transformer/config.json"))?;
    let mut t = mlx_weights::load_file(&fixture("rope.safetensors"))?;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("rope.json"))?)?;
    for (name, m) in meta.as_object().unwrap() {
        let g: Vec<(usize, usize, usize)> = serde_json::from_value(m["grids"].clone())?;
        let tl = m["txt_len"].as_u64().unwrap() as usize;
        let rope = RopeTables::new(&model_cfg, &g, tl)?;
        let n_img: usize = g.iter().map(|(f, h, w)| f * h * w).sum();
        for (kind, ours) in [("cos", rope.cos()), ("sin", rope.sin())] {
            let v = values(ours)?;
            let half = v.len() / (tl + n_img);
            let txt_ref = values(&t.remove(&format!("{name}.txt_{kind}")).unwrap())?;
            let img_ref = values(&t.remove(&format!("{name}.img_{kind}")).unwrap())?;
            let reference: Vec<f32> = txt_ref.into_iter().chain(img_ref).collect();
            assert_eq!(reference.len(), v.len(), "{name} {kind} size (half {half})");
            // cos/sin of the same f32 angle: at most a couple of ulps apart.
            let e = v
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(e <= 1e-6, "{name} {kind}: max abs err {e}");
        }
    }
    Ok(())
}

/// The fixtures can see the bugs the parity test is meant to catch: forgetting the text
/// mask, or RoPE tables for the wrong grid (same token count), moves the output far beyond
/// the tolerance.
#[test]
fn fixtures_are_sensitive_to_mask_and_rope() -> Result<()> {
    on_cpu(fixtures_are_sensitive_cpu)
}

fn fixtures_are_sensitive_cpu() -> Result<()> {
    let model = QwenImageTransformer::load(&fixture("transformer"), Dtype::Float32, None)?;
    let mut checked_mask = 0;
    for case in cases()? {
        let rope = RopeTables::new(model.config(), &case.grids, case.txt_len)?;
        if case.mask.is_some() {
            let out = model.forward(
                &case.hidden_states,
                &case.encoder_hidden_states,
                None,
                &case.timestep,
                &rope,
            )?;
            let e = rel_err(&out, &case.output)?;
            assert!(
                e > 100.0 * TOL,
                "{}: dropping the mask only moved {e}",
                case.name
            );
            checked_mask += 1;
        }
        let (f, h, w) = case.grids[0];
        if h != w {
            let mut grids = case.grids.clone();
            grids[0] = (f, w, h);
            let wrong = RopeTables::new(model.config(), &grids, case.txt_len)?;
            let out = model.forward(
                &case.hidden_states,
                &case.encoder_hidden_states,
                case.mask.as_ref(),
                &case.timestep,
                &wrong,
            )?;
            let e = rel_err(&out, &case.output)?;
            assert!(
                e > 100.0 * TOL,
                "{}: transposed RoPE grid only moved {e}",
                case.name
            );
        }
    }
    assert!(checked_mask >= 2);
    Ok(())
}

/// Qwen-Image-Edit-2511's `zero_cond_t`: tokens of the reference image(s) are modulated with
/// the σ = 0 embedding. Same measure and bound as above; the same weights run without
/// `zero_cond_t` miss the two-image case by far (so the test sees the feature).
#[test]
fn zero_cond_t_matches_diffusers() -> Result<()> {
    on_cpu(zero_cond_t_cpu)
}

fn zero_cond_t_cpu() -> Result<()> {
    let dir = fixture("transformer_zero_cond");
    let model = QwenImageTransformer::load(&dir, Dtype::Float32, None)?;
    assert!(model.config().zero_cond_t);
    let mut plain_cfg = model.config().clone();
    plain_cfg.zero_cond_t = false;
    let plain = QwenImageTransformer::from_tensors(
        plain_cfg,
        mlx_weights::load_component(&dir)?,
        Dtype::Float32,
        None,
    )?;
    for case in cases_of("zero_cond")? {
        let rope = RopeTables::new(model.config(), &case.grids, case.txt_len)?;
        let run = |m: &QwenImageTransformer| {
            m.forward(
                &case.hidden_states,
                &case.encoder_hidden_states,
                case.mask.as_ref(),
                &case.timestep,
                &rope,
            )
        };
        let e = rel_err(&run(&model)?, &case.output)?;
        println!("{}: rel err {e:.3e}", case.name);
        assert!(e <= TOL, "{}: rel err {e} > {TOL}", case.name);
        let e_plain = rel_err(&run(&plain)?, &case.output)?;
        if case.grids.len() > 1 {
            assert!(
                e_plain > 100.0 * TOL,
                "{}: zero_cond_t off only moved {e_plain}",
                case.name
            );
        } else {
            // one image: no reference tokens, so zero_cond_t changes nothing
            assert!(e_plain <= TOL, "{}: {e_plain}", case.name);
        }
    }
    Ok(())
}
