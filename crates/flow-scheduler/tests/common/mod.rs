//! Shared helpers for the flow-scheduler tests: fixture paths and safetensors loading.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mlx_rs::Array;

/// `fixtures/data/scheduler/<rel>`: next to this crate, or relative to the current directory
/// (test binaries copied to the GPU machine run from the repository root).
pub fn fixture(rel: &str) -> PathBuf {
    let a = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/data/scheduler"
    ))
    .join(rel);
    if a.exists() {
        return a;
    }
    PathBuf::from("fixtures/data/scheduler").join(rel)
}

/// Path of a fixture config, `configs/<name>/scheduler_config.json`.
pub fn config_path(name: &str) -> PathBuf {
    fixture(&format!("configs/{name}/scheduler_config.json"))
}

/// Every tensor of a safetensors file as an MLX array (f32 and bf16 supported).
pub fn load_tensors(rel: &str) -> Result<BTreeMap<String, Array>> {
    let path = fixture(rel);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i32> = view.shape().iter().map(|&d| d as i32).collect();
        let data = view.data();
        let array = match view.dtype() {
            safetensors::Dtype::F32 => {
                let v: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Array::from_slice(&v, &shape)
            }
            safetensors::Dtype::BF16 => {
                let v: Vec<half::bf16> = data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                    .collect();
                Array::from_slice(&v, &shape)
            }
            other => bail!("{name}: unsupported fixture dtype {other:?}"),
        };
        out.insert(name, array);
    }
    Ok(out)
}
