//! Loading, dtypes, input checks and weight-name handling of the transformer.

mod common;

use std::collections::BTreeMap;

use anyhow::Result;
use common::*;
use mlx_rs::{Array, Dtype};
use qwen_dit::{DitError, QwenImageTransformer, QwenImageTransformerConfig, RopeTables};

fn first_masked_case() -> Result<Case> {
    Ok(cases()?
        .into_iter()
        .find(|c| c.mask.is_some())
        .expect("a masked case"))
}

fn run(model: &QwenImageTransformer, c: &Case) -> Result<Array> {
    let rope = RopeTables::new(model.config(), &c.grids, c.txt_len)?;
    Ok(model.forward(
        &c.hidden_states,
        &c.encoder_hidden_states,
        c.mask.as_ref(),
        &c.timestep,
        &rope,
    )?)
}

/// bf16 and f16 forwards stay in their dtype (no strong-f32 constant promotes the graph).
/// bf16 is compared with diffusers' own bf16 forward (which rounds σ to bf16 before the
/// ×1000 — σ = 0.9 becomes 0.8984 — so it is 7e-2 away from the f32 output on one case;
/// we reproduce that rounding). Bound 2e-2 = 4 bf16 ulps of the output's largest value
/// (|y| ≈ 6, ulp 2^-5 ≈ 5e-3 relative): both sides round every activation to 8 mantissa bits
/// in different orders; measured ≤ 1e-2 (2 ulps). f16 (11 bits) is compared with the f32
/// reference, bound 1e-2 (diffusers' own f16 forward is 5e-3 away from it; measured 5e-3).
#[test]
fn half_precision_forward_keeps_dtype_and_is_close() -> Result<()> {
    let bf16 = QwenImageTransformer::load(&fixture("transformer"), Dtype::Bfloat16, None)?;
    let f16 = QwenImageTransformer::load(&fixture("transformer"), Dtype::Float16, None)?;
    for c in cases()? {
        let out = run(&bf16, &c)?;
        assert_eq!(out.dtype(), Dtype::Bfloat16);
        let e = rel_err(&out, c.output_bf16.as_ref().expect("bf16 reference"))?;
        println!("{} bf16 vs diffusers bf16: rel err {e:.3e}", c.name);
        assert!(e <= 2e-2, "{}: bf16 rel err {e}", c.name);
        let out = run(&f16, &c)?;
        assert_eq!(out.dtype(), Dtype::Float16);
        let e = rel_err(&out, &c.output)?;
        println!("{} f16 vs diffusers f32: rel err {e:.3e}", c.name);
        assert!(e <= 1e-2, "{}: f16 rel err {e}", c.name);
    }
    Ok(())
}

#[test]
fn forward_rejects_inconsistent_inputs() -> Result<()> {
    let model = QwenImageTransformer::load(&fixture("transformer"), Dtype::Float32, None)?;
    let c = first_masked_case()?;
    let (f, h, w) = c.grids[0];
    // RoPE for another text length / grid
    for rope in [
        RopeTables::new(model.config(), &c.grids, c.txt_len + 1)?,
        RopeTables::new(model.config(), &[(f, h + 1, w)], c.txt_len)?,
    ] {
        let r = model.forward(
            &c.hidden_states,
            &c.encoder_hidden_states,
            c.mask.as_ref(),
            &c.timestep,
            &rope,
        );
        assert!(matches!(r, Err(DitError::InvalidInput(_))), "{r:?}");
    }
    let rope = RopeTables::new(model.config(), &c.grids, c.txt_len)?;
    let bad_mask = Array::ones::<f32>(&[1, c.txt_len as i32])?;
    let r = model.forward(
        &c.hidden_states,
        &c.encoder_hidden_states,
        Some(&bad_mask),
        &c.timestep,
        &rope,
    );
    assert!(matches!(r, Err(DitError::InvalidInput(_))), "{r:?}");
    let bad_t = Array::from_slice(&[0.5f32, 0.5, 0.5], &[3]);
    let r = model.forward(
        &c.hidden_states,
        &c.encoder_hidden_states,
        c.mask.as_ref(),
        &bad_t,
        &rope,
    );
    assert!(matches!(r, Err(DitError::InvalidInput(_))), "{r:?}");
    let bad_x = Array::zeros::<f32>(&[2, 4, 7])?;
    let r = model.forward(
        &bad_x,
        &c.encoder_hidden_states,
        c.mask.as_ref(),
        &c.timestep,
        &rope,
    );
    assert!(matches!(r, Err(DitError::InvalidInput(_))), "{r:?}");
    Ok(())
}

/// A mask of all ones is the same as no mask; a one-element timestep broadcasts.
#[test]
fn all_ones_mask_equals_no_mask() -> Result<()> {
    on_cpu(all_ones_mask_equals_no_mask_cpu)
}

fn all_ones_mask_equals_no_mask_cpu() -> Result<()> {
    let model = QwenImageTransformer::load(&fixture("transformer"), Dtype::Float32, None)?;
    let c = first_masked_case()?;
    let rope = RopeTables::new(model.config(), &c.grids, c.txt_len)?;
    let b = c.hidden_states.dim(0);
    let ones = Array::ones::<i32>(&[b, c.txt_len as i32])?;
    let t1 = Array::from_slice(&[0.7f32], &[1]);
    let tb = Array::from_slice(&vec![0.7f32; b as usize], &[b]);
    let a = model.forward(
        &c.hidden_states,
        &c.encoder_hidden_states,
        Some(&ones),
        &t1,
        &rope,
    )?;
    let n = model.forward(&c.hidden_states, &c.encoder_hidden_states, None, &tb, &rope)?;
    assert!(rel_err(&a, &n)? <= 1e-6);
    Ok(())
}

fn fixture_tensors() -> Result<BTreeMap<String, Array>> {
    Ok(mlx_weights::load_component(&fixture("transformer"))?.into_map())
}

fn to_tensors(map: BTreeMap<String, Array>) -> mlx_weights::Tensors {
    let mut t = mlx_weights::Tensors::new("in-memory");
    for (k, v) in map {
        t.insert(k, v);
    }
    t
}

fn fixture_config() -> Result<QwenImageTransformerConfig> {
    Ok(QwenImageTransformerConfig::from_file(&fixture(
        "transformer/config.json",
    ))?)
}

/// One error lists a missing, an unexpected and a mis-shaped key together.
#[test]
fn strict_loading_reports_every_problem() -> Result<()> {
    let mut map = fixture_tensors()?;
    map.remove("transformer_blocks.1.attn.to_k.bias");
    map.insert(
        "transformer_blocks.1.attn.extra.weight".into(),
        Array::zeros::<f32>(&[2])?,
    );
    map.insert("proj_out.weight".into(), Array::zeros::<f32>(&[3, 3])?);
    let err = QwenImageTransformer::from_tensors(
        fixture_config()?,
        to_tensors(map),
        Dtype::Float32,
        None,
    )
    .expect_err("broken checkpoint must not load");
    let msg = err.to_string();
    for needle in [
        "transformer_blocks.1.attn.to_k.bias",
        "transformer_blocks.1.attn.extra.weight",
        "proj_out.weight",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
    Ok(())
}

/// mflux-style module names (MLX conversions) load onto the same parameters.
#[test]
fn aliased_names_load_identically() -> Result<()> {
    let map = fixture_tensors()?;
    let renamed: BTreeMap<String, Array> = map
        .into_iter()
        .map(|(k, v)| {
            let k2 = k
                .replace(".img_mod.1.", ".img_mod_linear.")
                .replace(".txt_mod.1.", ".txt_mod_linear.")
                .replace(".attn.to_out.0.", ".attn.attn_to_out.0.")
                .replace(".img_mlp.net.0.proj.", ".img_ff.mlp_in.")
                .replace(".img_mlp.net.2.", ".img_ff.mlp_out.")
                .replace(".txt_mlp.net.0.proj.", ".txt_ff.mlp_in.")
                .replace(".txt_mlp.net.2.", ".txt_ff.mlp_out.");
            (k2, v)
        })
        .collect();
    assert!(renamed.keys().any(|k| k.contains("img_ff.mlp_in")));
    let a = QwenImageTransformer::from_tensors(
        fixture_config()?,
        to_tensors(renamed),
        Dtype::Float32,
        None,
    )?;
    let b = QwenImageTransformer::load(&fixture("transformer"), Dtype::Float32, None)?;
    let c = first_masked_case()?;
    assert_eq!(values(&run(&a, &c)?)?, values(&run(&b, &c)?)?);
    // a key present under both names is refused
    let mut both = fixture_tensors()?;
    let w = both["transformer_blocks.0.img_mod.1.weight"].clone();
    both.insert("transformer_blocks.0.img_mod_linear.weight".into(), w);
    assert!(
        QwenImageTransformer::from_tensors(
            fixture_config()?,
            to_tensors(both),
            Dtype::Float32,
            None
        )
        .is_err()
    );
    Ok(())
}

#[test]
fn weights_round_trip_through_save() -> Result<()> {
    let model = QwenImageTransformer::load(&fixture("transformer"), Dtype::Float32, None)?;
    let dir = tempfile::tempdir()?;
    model.save(dir.path())?;
    let again = QwenImageTransformer::load(dir.path(), Dtype::Float32, None)?;
    assert_eq!(again.config(), model.config());
    let c = first_masked_case()?;
    assert_eq!(values(&run(&model, &c)?)?, values(&run(&again, &c)?)?);
    Ok(())
}

#[test]
fn random_model_is_deterministic_and_runs() -> Result<()> {
    let cfg = fixture_config()?;
    let a = QwenImageTransformer::random(cfg.clone(), Dtype::Bfloat16, 7)?;
    let b = QwenImageTransformer::random(cfg.clone(), Dtype::Bfloat16, 7)?;
    let rope = RopeTables::new(&cfg, &[(1, 2, 3)], 4)?;
    let x = mlx_rs::random::normal::<f32>(&[1, 6, cfg.in_channels as i32], None, None, None)?;
    let e =
        mlx_rs::random::normal::<f32>(&[1, 4, cfg.joint_attention_dim as i32], None, None, None)?;
    let t = Array::from_slice(&[0.5f32], &[1]);
    let ya = a.forward(&x, &e, None, &t, &rope)?;
    let yb = b.forward(&x, &e, None, &t, &rope)?;
    assert_eq!(ya.dtype(), Dtype::Bfloat16);
    assert_eq!(ya.shape(), &[1, 6, cfg.proj_out_dim() as i32]);
    let (va, vb) = (values(&ya)?, values(&yb)?);
    assert_eq!(va, vb);
    assert!(va.iter().all(|v| v.is_finite()) && va.iter().any(|v| *v != 0.0));
    Ok(())
}

/// A modulation computed once for the step and shared by two passes gives each pass the
/// output `forward` gives, bit for bit (what the pipeline does for the two true-CFG passes);
/// a modulation for another timestep changes it (so the shared one is really used).
#[test]
fn shared_step_modulation_is_exact() -> Result<()> {
    let model = QwenImageTransformer::load(&fixture("transformer"), Dtype::Float32, None)?;
    for c in cases()? {
        let rope = RopeTables::new(model.config(), &c.grids, c.txt_len)?;
        let shared = model.modulation(&c.timestep)?;
        let want = run(&model, &c)?;
        for _ in 0..2 {
            let got = model.forward_modulated(
                &c.hidden_states,
                &c.encoder_hidden_states,
                c.mask.as_ref(),
                &c.timestep,
                &rope,
                Some(&shared),
            )?;
            assert!(got.eq_values(&want)?, "{}", c.name);
        }
        let other = model.modulation(&mlx_rs::ops::multiply(&c.timestep, Array::from_f32(0.5))?)?;
        let off = model.forward_modulated(
            &c.hidden_states,
            &c.encoder_hidden_states,
            c.mask.as_ref(),
            &c.timestep,
            &rope,
            Some(&other),
        )?;
        assert!(!off.eq_values(&want)?);
    }
    Ok(())
}

/// The modulations of a schedule computed a window of steps at a time (`ScheduleModulation`,
/// as the pipeline runs them: each modulation Linear called once on a window's timesteps)
/// give each step the output `forward` gives at that step's timestep, up to the GEMM's
/// summation order: bound 1e-6 relative in f32 (measured 0 on this CPU). Ten distinct
/// timesteps cross the end of the first window (8 steps); batch 1 and 2; the plain and the
/// `zero_cond_t` model (whose σ = 0 modulation is computed once per window). A step handed
/// another step's rows would be far off: the output at the previous step's timestep differs
/// by > 1e-3.
#[test]
fn schedule_modulation_matches_each_step() -> Result<()> {
    for (dir, cases) in [
        ("transformer", cases()?),
        ("transformer_zero_cond", cases_of("zero_cond")?),
    ] {
        let model = QwenImageTransformer::load(&fixture(dir), Dtype::Float32, None)?;
        for c in &cases {
            let rope = RopeTables::new(model.config(), &c.grids, c.txt_len)?;
            let timesteps = (0..10)
                .map(|i| mlx_rs::ops::multiply(&c.timestep, Array::from_f32(1.0 - 0.09 * i as f32)))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut mods = qwen_dit::ScheduleModulation::new(&model, &timesteps);
            let at = |t: &Array, m: Option<&qwen_dit::StepModulation>| {
                model.forward_modulated(
                    &c.hidden_states,
                    &c.encoder_hidden_states,
                    c.mask.as_ref(),
                    t,
                    &rope,
                    m,
                )
            };
            let mut previous: Option<Array> = None;
            for (i, t) in timesteps.iter().enumerate() {
                let want = at(t, None)?;
                let got = at(t, Some(mods.get(i)?))?;
                let e = rel_err(&got, &want)?;
                println!("{dir} {} step {i}: rel err {e:.2e}", c.name);
                assert!(e <= 1e-6, "{dir} {} step {i}: rel err {e}", c.name);
                if let Some(p) = &previous {
                    let d = rel_err(&got, p)?;
                    assert!(
                        d > 1e-3,
                        "{dir} {} step {i}: the timestep moved it only {d}",
                        c.name
                    );
                }
                previous = Some(want);
            }
        }
    }
    Ok(())
}

/// Q/K/V as one GEMM: the same outputs up to the GEMM's summation order (bound 1e-5
/// relative; identical on this CPU), float and 8-bit; exporting, quantizing and merging still see
/// the separate layers (the export after fusing equals the one before, bit for bit).
#[test]
fn fused_projections_give_the_same_model() -> Result<()> {
    let plain = QwenImageTransformer::load(&fixture("transformer"), Dtype::Float32, None)?;
    for bits in [None, Some(8)] {
        let mut base = plain.clone();
        if let Some(b) = bits {
            base.quantize(&qwen_dit::QuantizeSpec::new(b))?;
        }
        let mut fused = base.clone();
        fused.fuse_projections()?;
        assert_eq!(fused.quantized_layer_count(), base.quantized_layer_count());
        for c in cases()? {
            let e = rel_err(&run(&fused, &c)?, &run(&base, &c)?)?;
            println!("{} {bits:?}: fused vs separate rel err {e:.2e}", c.name);
            assert!(e <= 1e-5, "{}: {e}", c.name);
        }
        let (a, b) = (base.weights(), fused.weights());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, v) in &a {
            assert!(v.eq_values(&b[k])?, "{k} differs after fusing");
        }
    }
    // Quantizing a fused model equals fusing a quantized one.
    let mut q_then_f = plain.clone();
    q_then_f.quantize(&qwen_dit::QuantizeSpec::new(4))?;
    q_then_f.fuse_projections()?;
    let mut f_then_q = plain.clone();
    f_then_q.fuse_projections()?;
    f_then_q.quantize(&qwen_dit::QuantizeSpec::new(4))?;
    let c = &cases()?[0];
    assert!(run(&q_then_f, c)?.eq_values(&run(&f_then_q, c)?)?);
    Ok(())
}
