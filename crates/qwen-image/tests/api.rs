//! The pipeline as a library: staging order, progress events, repeated generation and
//! parity through the API (same bar and reasoning as tests/parity.rs).

mod common;

use common::*;
use qwen_image::{Event, GenerateRequest, Noise, Phase, PipelineOptions, QwenImagePipeline};

#[test]
fn staged_phases_step_events_and_parity() -> anyhow::Result<()> {
    let name = "slow_square_cfg";
    let c = case(name);
    let mut pipe = QwenImagePipeline::load(
        &fixtures().join(&c.model),
        PipelineOptions {
            dtype: qwen_image::ComputeDtype::F32,
            quantize: None,
            residency: qwen_image::Residency::KeepTransformer,
            activation_budget: qwen_image::ActivationBudget::Auto,
        },
    )?;
    assert_eq!(pipe.configs().vae_scale_factor(), 4);
    assert_eq!(pipe.configs().size_multiple(), 8);
    let req = case_request(&pipe, name)?;
    assert!(req.does_true_cfg());

    let mut phases = Vec::new();
    let mut steps = Vec::new();
    let out = pipe.generate_with(&req, &mut |e| match e {
        Event::PhaseStart(p) => phases.push(p),
        Event::Step { step, .. } => steps.push(step),
        _ => {}
    })?;
    // The text encoder is done (and freed) before the transformer is loaded; the VAE comes
    // after denoising.
    assert_eq!(
        phases,
        vec![
            Phase::LoadTextEncoder,
            Phase::Encode,
            Phase::LoadTransformer,
            Phase::Denoise,
            Phase::LoadVae,
            Phase::Decode
        ]
    );
    assert_eq!(steps, (0..c.steps).collect::<Vec<_>>());
    assert_eq!(out.timings.step_times.len(), c.steps);
    let (_, _, want) = reference_image(name);
    assert!(psnr(&out.images[0].data, &want) >= 40.0);

    // Second call: the transformer stays loaded, the result is identical.
    let mut phases2 = Vec::new();
    let out2 = pipe.generate_with(&req, &mut |e| {
        if let Event::PhaseStart(p) = e {
            phases2.push(p)
        }
    })?;
    assert!(!phases2.contains(&Phase::LoadTransformer));
    assert_eq!(out2.images[0].data, out.images[0].data);
    Ok(())
}

#[test]
fn validation_errors_name_the_problem() -> anyhow::Result<()> {
    let pipe = QwenImagePipeline::load(&fixtures().join("tiny"), PipelineOptions::default())?;
    let mut req = GenerateRequest::new("a cat");
    req.width = 48;
    req.height = 48;
    req.steps = 2;
    pipe.validate(&req)?;
    let mut r = req.clone();
    r.width = 50;
    assert!(
        pipe.validate(&r)
            .unwrap_err()
            .to_string()
            .contains("width 50")
    );
    let mut r = req.clone();
    r.noise = Noise::Latents(mlx_rs::Array::zeros::<f32>(&[1, 1, 4, 6, 4])?);
    assert!(
        pipe.validate(&r)
            .unwrap_err()
            .to_string()
            .contains("[1, 1, 4, 6, 6]")
    );
    let mut r = req.clone();
    r.max_sequence_length = 0;
    assert!(pipe.validate(&r).is_err());
    let mut r = req;
    r.true_cfg_scale = f32::NAN;
    assert!(pipe.validate(&r).is_err());
    Ok(())
}

/// bf16 end to end on the CPU: every step's latents stay bf16 (a strong f32 constant would
/// promote them), and the image stays near the f32 reference. The bar (≥ 20 dB) only rules
/// out a broken bf16 path (garbage/NaN images are < 12 dB here); bf16 itself is not compared
/// to a bf16 reference because diffusers' bf16 rounds differently step by step.
#[test]
fn bf16_stays_bf16() -> anyhow::Result<()> {
    let name = "tiny_square_cfg";
    let c = case(name);
    let mut pipe = QwenImagePipeline::load(
        &fixtures().join(&c.model),
        PipelineOptions {
            dtype: qwen_image::ComputeDtype::Bf16,
            quantize: None,
            residency: qwen_image::Residency::Staged,
            activation_budget: qwen_image::ActivationBudget::Auto,
        },
    )?;
    // The case's CFG scale (4) and maximum length (512) are the request defaults.
    let req = case_request(&pipe, name)?;
    let mut dtypes = Vec::new();
    let out = pipe.generate_with(&req, &mut |e| {
        if let Event::Step { latents_dtype, .. } = e {
            dtypes.push(latents_dtype)
        }
    })?;
    assert_eq!(dtypes, vec![mlx_rs::Dtype::Bfloat16; c.steps]);
    let (_, _, want) = reference_image(name);
    let p = psnr(&out.images[0].data, &want);
    eprintln!("bf16 vs f32 reference: {p:.1} dB");
    assert!(p >= 20.0, "{p}");
    Ok(())
}
