//! The activation budget's plumbing: while the denoising loop runs, MLX's memory limit is what
//! was resident plus the budget (so MLX's evaluation waits for the GPU above it), and the
//! previous limit is back afterwards; `Auto` bounds images of 1024² and up only. The effect on
//! a GPU's peak memory is measured in docs/speed.md (MLX counts GPU work only, so on the CPU
//! the limit changes nothing but itself). Alone in its binary: the limit is process-wide.

mod common;

use common::fixtures;
use qwen_image::{
    ActivationBudget, Event, GenerateRequest, Noise, PipelineOptions, QwenImagePipeline,
};

/// MLX's memory limit seen at each step of a 2-step run at `side`².
fn limits_during(budget: ActivationBudget, side: usize) -> anyhow::Result<Vec<usize>> {
    let options = PipelineOptions {
        activation_budget: budget,
        ..PipelineOptions::default()
    };
    let mut pipe = QwenImagePipeline::load(&fixtures().join("tiny"), options)?;
    let mut req = GenerateRequest::new("A cat sitting on a mat");
    (req.steps, req.width, req.height, req.noise) = (2, side, side, Noise::Seed(3));
    let mut seen = Vec::new();
    pipe.generate_with(&req, &mut |e| {
        if let Event::Step { .. } = e {
            seen.push(mlx_rs::memory::memory_limit().unwrap_or(0));
        }
    })?;
    Ok(seen)
}

#[test]
fn the_budget_sets_mlx_memory_limit_while_denoising_and_restores_it() -> anyhow::Result<()> {
    let before = mlx_rs::memory::memory_limit()?;
    let mb = 1 << 20;
    let during = limits_during(ActivationBudget::Bytes(5 * mb), 128)?;
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
        limits_during(ActivationBudget::Unlimited, 128)?
            .iter()
            .all(|&l| l == before)
    );
    // Auto: nothing below 1024² (64² packed tokens), 1.5 GiB per 64² tokens from there.
    assert_eq!(ActivationBudget::Auto.bytes_for(4095), None);
    assert_eq!(ActivationBudget::Auto.bytes_for(4096), Some(3 << 29));
    // An edit at 1024² with one 1024² picture: twice the tokens, twice the budget.
    assert_eq!(ActivationBudget::Auto.bytes_for(8192), Some(3 << 30));
    assert!(
        limits_during(ActivationBudget::Auto, 128)?
            .iter()
            .all(|&l| l == before)
    );
    assert_eq!(mlx_rs::memory::memory_limit()?, before);
    Ok(())
}
