//! With true CFG the two transformer passes of a step run one after the other inside the
//! step's one evaluation (`mlx_fastops::depends`), so the denoising peak memory is that of one
//! pass, not two: measured here against the same request without CFG. Alone in its test
//! binary, since MLX's peak-memory counter is process-wide. (With the ordering removed the
//! CFG peak was 21.7 MB against 12.8 MB for one pass, 1.7×, on this tiny model at 512².)

mod common;

use common::fixtures;
use qwen_image::{GenerateRequest, Noise, PipelineOptions, QwenImagePipeline};

#[test]
fn true_cfg_peaks_like_a_single_pass() -> anyhow::Result<()> {
    let mut pipe = QwenImagePipeline::load(&fixtures().join("tiny"), PipelineOptions::default())?;
    let mut req = GenerateRequest::new("A cat sitting on a mat");
    req.steps = 2;
    req.width = 512;
    req.height = 512;
    req.noise = Noise::Seed(3);
    let single = pipe
        .generate_with(&req, &mut |_| {})?
        .timings
        .denoise
        .peak_memory;
    req.negative_prompt = Some("blurry".into());
    let cfg = pipe
        .generate_with(&req, &mut |_| {})?
        .timings
        .denoise
        .peak_memory;
    eprintln!("denoise peak: one pass {single} B, true CFG {cfg} B");
    assert!(single > 0);
    assert!(
        (cfg as f64) < 1.15 * single as f64,
        "true CFG peaks at {cfg} B against {single} B for one pass"
    );
    Ok(())
}
