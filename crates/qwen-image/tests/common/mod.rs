//! Shared helpers of the integration tests: the reference fixtures of
//! `fixtures/data/pipeline` (also used by the `qwen-image` program's tests).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `fixtures/data/pipeline`, found from the crate (or from the current directory, for test
/// binaries run elsewhere from the repository root).
pub fn fixtures() -> PathBuf {
    let from_crate = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/data/pipeline"
    ));
    if from_crate.is_dir() {
        from_crate.to_path_buf()
    } else {
        PathBuf::from("fixtures/data/pipeline")
    }
}

/// One reference case of `cases.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Case {
    pub model: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub true_cfg_scale: f32,
    pub steps: usize,
    pub width: usize,
    pub height: usize,
    pub max_sequence_length: usize,
    pub true_cfg: bool,
}

pub fn case(name: &str) -> Case {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    let all: std::collections::BTreeMap<String, Case> =
        serde_json::from_str(&text).expect("cases.json parses");
    all.get(name).cloned().expect("case exists")
}

/// The reference 8-bit image (H, W, 3) of a case.
pub fn reference_image(name: &str) -> (usize, usize, Vec<u8>) {
    let t = mlx_weights::load_file(&fixtures().join(format!("{name}.safetensors"))).unwrap();
    let img = t.get("image").expect("image tensor");
    let s = img.shape().to_vec();
    let data = img.as_slice::<u8>().to_vec();
    (s[1] as usize, s[0] as usize, data)
}

/// PSNR in dB of two 8-bit buffers (peak 255); `f64::INFINITY` when identical.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// The request of reference case `name` for `pipe`: its prompt, negative prompt, CFG scale,
/// steps, size, maximum length, and diffusers' initial latents as the noise.
pub fn case_request(
    _pipe: &qwen_image::QwenImagePipeline,
    name: &str,
) -> anyhow::Result<qwen_image::GenerateRequest> {
    let c = case(name);
    let mut req = qwen_image::GenerateRequest::new(c.prompt.clone());
    req.negative_prompt = c.negative_prompt.clone();
    req.true_cfg_scale = c.true_cfg_scale;
    req.steps = c.steps;
    req.width = c.width;
    req.height = c.height;
    req.max_sequence_length = c.max_sequence_length;
    req.noise = qwen_image::Noise::Latents(
        qwen_image::latents::read_init_latents(&fixtures().join(format!("{name}.safetensors")))?
            .latents,
    );
    Ok(req)
}
