//! The activation budget's plumbing: while the denoising loop runs, MLX's memory limit is what
//! was resident plus the budget (so MLX's evaluation waits for the GPU above it), and the
//! previous limit is back afterwards; `Auto` bounds images of 1024² and up only, with twice
//! the budget for a quantized transformer. The effect on a GPU's peak memory is measured in
//! docs/speed.md (MLX counts GPU work only, so on the CPU the limit changes nothing but
//! itself). Alone in its binary: the limit is process-wide.

mod common;

use common::fixtures;
use qwen_image::{
    ActivationBudget, CancelToken, Event, GenerateRequest, Noise, PipelineError, PipelineOptions,
    QuantizeSpec, QwenImagePipeline,
};

/// MLX's memory limit seen at each step of a 2-step run at `side`², the transformer
/// quantized by `quantize`; with `first_only`, the run is cancelled at its first step (no
/// decode: what a 1024² check needs of the tiny model on the CPU).
fn limits_during(
    budget: ActivationBudget,
    side: usize,
    quantize: Option<QuantizeSpec>,
    first_only: bool,
) -> anyhow::Result<Vec<usize>> {
    let options = PipelineOptions {
        activation_budget: budget,
        quantize,
        ..PipelineOptions::default()
    };
    let mut pipe = QwenImagePipeline::load(&fixtures().join("tiny"), options)?;
    let mut req = GenerateRequest::new("A cat sitting on a mat");
    (req.steps, req.width, req.height, req.noise) = (2, side, side, Noise::Seed(3));
    let job = pipe.prepare(req)?;
    let cancel = CancelToken::new();
    let mut seen = Vec::new();
    let run = pipe.run_cancellable(
        &job,
        &mut |e| {
            if let Event::Step { .. } = e {
                seen.push(mlx_rs::memory::memory_limit().unwrap_or(0));
                if first_only {
                    cancel.cancel();
                }
            }
        },
        &cancel,
    );
    match run {
        Ok(_) => {}
        Err(PipelineError::Cancelled) if first_only => {}
        Err(e) => return Err(e.into()),
    }
    Ok(seen)
}

#[test]
fn the_budget_sets_mlx_memory_limit_while_denoising_and_restores_it() -> anyhow::Result<()> {
    let before = mlx_rs::memory::memory_limit()?;
    let mb = 1 << 20;
    let during = limits_during(ActivationBudget::Bytes(5 * mb), 128, None, false)?;
    assert_eq!(during.len(), 2);
    // Resident (the tiny weights, the embeddings: a few MB) + 5 MB.
    assert!(
        during.iter().all(|&l| l > 5 * mb && l < 20 * mb),
        "{during:?}"
    );
    assert_eq!(
        mlx_rs::memory::memory_limit()?,
        before,
        "limit not restored"
    );

    assert!(
        limits_during(ActivationBudget::Unlimited, 128, None, false)?
            .iter()
            .all(|&l| l == before)
    );
    // Auto: nothing below 1024² (64² packed tokens), 1.5 GiB per 64² tokens from there.
    assert_eq!(ActivationBudget::Auto.bytes_for(4095, false), None);
    assert_eq!(ActivationBudget::Auto.bytes_for(4096, false), Some(3 << 29));
    // An edit at 1024² with one 1024² picture: twice the tokens, twice the budget.
    assert_eq!(ActivationBudget::Auto.bytes_for(8192, false), Some(3 << 30));
    // A quantized transformer: twice the budget, from the same size.
    assert_eq!(ActivationBudget::Auto.bytes_for(4095, true), None);
    assert_eq!(ActivationBudget::Auto.bytes_for(4096, true), Some(3 << 30));
    assert_eq!(ActivationBudget::Auto.bytes_for(8192, true), Some(3 << 31));
    assert_eq!(
        ActivationBudget::Bytes(5 * mb).bytes_for(8192, true),
        Some(5 * mb)
    );
    assert!(
        limits_during(ActivationBudget::Auto, 128, None, false)?
            .iter()
            .all(|&l| l == before)
    );
    assert_eq!(mlx_rs::memory::memory_limit()?, before);
    auto_gives_a_quantized_transformer_twice_the_budget_at_1024()
}

/// `Auto` at 1024²: resident + 1.5 GiB for the float transformer, + 3 GiB quantized (called
/// from the one test: the limit is process-wide and tests run in parallel).
fn auto_gives_a_quantized_transformer_twice_the_budget_at_1024() -> anyhow::Result<()> {
    let before = mlx_rs::memory::memory_limit()?;
    let float = limits_during(ActivationBudget::Auto, 1024, None, true)?;
    // The tiny model's widths are 16 and 32: group 32 quantizes every 32-wide input.
    let quant = QuantizeSpec::new(8).with_group_size(32);
    let quantized = limits_during(ActivationBudget::Auto, 1024, Some(quant), true)?;
    assert_eq!((float.len(), quantized.len()), (1, 1));
    // Resident + 1.5 GiB against resident + 3 GiB: the tiny weights and embeddings differ by
    // far less than 16 MiB.
    let gib = 1usize << 30;
    let diff = quantized[0] as i64 - float[0] as i64;
    assert!(
        (diff - (3 * gib / 2) as i64).abs() < 16 << 20,
        "float {float:?}, quantized {quantized:?}"
    );
    assert!(
        float[0] > 3 * gib / 2 && float[0] < 3 * gib / 2 + (64 << 20),
        "{float:?}"
    );
    assert_eq!(
        mlx_rs::memory::memory_limit()?,
        before,
        "limit not restored"
    );
    Ok(())
}
