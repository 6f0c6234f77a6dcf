//! Shared helpers of the qwen-dit integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use mlx_rs::{Array, Dtype};

/// `fixtures/data/dit/<rel>`: from the crate's manifest dir, else relative to the current dir
/// (test binaries also run from the repository root on the GPU machine).
pub fn fixture(rel: &str) -> PathBuf {
    let a = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/data/dit"
    ))
    .join(rel);
    if a.exists() {
        a
    } else {
        PathBuf::from("fixtures/data/dit").join(rel)
    }
}

/// Values of `a` as f32 (evaluated).
pub fn values(a: &Array) -> Result<Vec<f32>> {
    let a = a.as_dtype(Dtype::Float32)?;
    a.eval()?;
    Ok(a.as_slice::<f32>().to_vec())
}

/// max|a − b| / max|b| over all elements.
pub fn rel_err(a: &Array, b: &Array) -> Result<f32> {
    anyhow::ensure!(
        a.shape() == b.shape(),
        "shape {:?} vs {:?}",
        a.shape(),
        b.shape()
    );
    let (x, y) = (values(a)?, values(b)?);
    let num = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    let den = y.iter().map(|q| q.abs()).fold(0f32, f32::max);
    Ok(num / den.max(f32::MIN_POSITIVE))
}

/// One reference case of `cases.safetensors` / `cases.json`.
pub struct Case {
    pub name: String,
    /// The image grids (frames, h, w) of one sample.
    pub grids: Vec<(usize, usize, usize)>,
    pub txt_len: usize,
    pub hidden_states: Array,
    pub encoder_hidden_states: Array,
    pub mask: Option<Array>,
    pub timestep: Array,
    pub output: Array,
    /// diffusers' forward with the model and inputs in bf16 (stored as f32), where generated.
    pub output_bf16: Option<Array>,
}

/// The cases of `cases.{safetensors,json}` (the main reference model).
pub fn cases() -> Result<Vec<Case>> {
    cases_of("cases")
}

/// The cases of `{base}.safetensors` / `{base}.json`.
pub fn cases_of(base: &str) -> Result<Vec<Case>> {
    let mut t = mlx_weights::load_file(&fixture(&format!("{base}.safetensors")))?;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{base}.json")))?)?;
    let mut out = Vec::new();
    for (name, m) in meta.as_object().context("cases.json")? {
        let g: Vec<(usize, usize, usize)> = serde_json::from_value(m["grids"].clone())?;
        let mut take = |k: &str| t.remove(&format!("{name}.{k}"));
        out.push(Case {
            name: name.clone(),
            grids: g,
            txt_len: m["txt_len"].as_u64().context("txt_len")? as usize,
            hidden_states: take("hidden_states").context("hidden_states")?,
            encoder_hidden_states: take("encoder_hidden_states").context("ehs")?,
            mask: take("encoder_hidden_states_mask"),
            timestep: take("timestep").context("timestep")?,
            output: take("output").context("output")?,
            output_bf16: take("output_bf16"),
        });
    }
    Ok(out)
}

/// Runs `f` with MLX ops on the CPU. The f32 parity bounds (1e-4 and tighter) are for CPU f32
/// arithmetic; MLX's CUDA backend runs f32 matmuls in TF32 (10-bit mantissa), which alone
/// gives ~5e-4 on these models. Tests that bound f32 results call this so the same test
/// binaries also pass on the GPU machine.
pub fn on_cpu<T>(f: impl FnOnce() -> T) -> T {
    mlx_rs::with_device(mlx_rs::Device::cpu(), f)
}
