//! Weight-memory estimate per pipeline stage, checked against MLX's memory limit before any
//! weights are loaded.
//!
//! The pipeline's stages hold one weighted component each (text encoder, then transformer,
//! then VAE; see [`crate::pipeline`]), so the largest stage's weights bound the resident
//! weights. The estimate counts parameters in the compute dtype: the transformer's from its
//! config through [`qwen_dit::weight_bytes`] (which knows what `--quantize` packs), the text
//! encoder's and the VAE's from their safetensors headers (element counts; the text encoder's
//! vision tower and LM head, which are never loaded, are skipped). Activations come on top,
//! so a warning is raised only when the weights alone exceed the limit.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use mlx_rs::Dtype;
use qwen_dit::QuantizeSpec;

use crate::checkpoint::{CheckpointConfigs, ComponentPaths};
use crate::error::{PipelineError, Result, checkpoint};

/// Estimated weight bytes of each stage, in the compute dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageBytes {
    /// The text encoder (language model only).
    pub text_encoder: u64,
    /// The transformer, quantized when requested.
    pub transformer: u64,
    /// The VAE.
    pub vae: u64,
}

impl StageBytes {
    /// The largest stage and its bytes.
    pub fn largest(&self) -> (&'static str, u64) {
        [
            ("text encoder", self.text_encoder),
            ("transformer", self.transformer),
            ("VAE", self.vae),
        ]
        .into_iter()
        .fold(("text encoder", 0), |a, b| if b.1 > a.1 { b } else { a })
    }

    /// A warning when the largest stage's weights exceed `limit` bytes (MLX's memory limit),
    /// naming the numbers and what lowers them; `None` when they fit.
    pub fn warning(&self, limit: u64, dtype: Dtype, quantized: bool) -> Option<String> {
        let (stage, bytes) = self.largest();
        if bytes <= limit {
            return None;
        }
        let mut advice = Vec::new();
        if !quantized {
            advice.push("--quantize 8 (or 4)");
        }
        if dtype == Dtype::Float32 {
            advice.push("--dtype bf16");
        }
        Some(format!(
            "the {stage}'s weights need about {} in {dtype:?}, more than MLX's memory limit of {}; \
             loading may fail or swap{}",
            crate::info::human_bytes(bytes as usize),
            crate::info::human_bytes(limit as usize),
            if advice.is_empty() {
                String::new()
            } else {
                format!(" (try {})", advice.join(", "))
            }
        ))
    }
}

/// Bytes of one element of a float compute dtype (4 for anything that is not 16-bit).
pub fn float_bytes(dtype: Dtype) -> u64 {
    match dtype {
        Dtype::Float16 | Dtype::Bfloat16 => 2,
        _ => 4,
    }
}

/// Estimates each stage's weight bytes for a checkpoint folder (headers and configs only).
pub fn estimate(
    paths: &ComponentPaths,
    configs: &CheckpointConfigs,
    dtype: Dtype,
    quantize: Option<&QuantizeSpec>,
) -> Result<StageBytes> {
    let fb = float_bytes(dtype);
    let text = folder_elements(&paths.text_encoder, qwen_text_encoder::IGNORED_PREFIXES)?;
    let vae = folder_elements(&paths.vae, &[])?;
    Ok(StageBytes {
        text_encoder: text * fb,
        transformer: qwen_dit::weight_bytes(&configs.transformer, fb, quantize),
        vae: vae * fb,
    })
}

/// Elements of every tensor in the folder's `*.safetensors` files whose name does not start
/// with one of `skip`.
pub fn folder_elements(dir: &Path, skip: &[&str]) -> Result<u64> {
    let rd = fs::read_dir(dir).map_err(|source| PipelineError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let mut total = 0u64;
    for f in &files {
        total += file_elements(f, skip)?;
    }
    Ok(total)
}

fn file_elements(path: &Path, skip: &[&str]) -> Result<u64> {
    let bad = |msg: &str| checkpoint(path, format!("corrupt safetensors file: {msg}"));
    let io = |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > 100_000_000 {
        return Err(bad("bad header length"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| bad("header is not JSON"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not an object"))?;
    let mut total = 0u64;
    for (k, t) in obj {
        if k == "__metadata__" || skip.iter().any(|p| k.starts_with(p)) {
            continue;
        }
        let shape = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("tensor without shape"))?;
        total += shape
            .iter()
            .map(|d| d.as_u64().unwrap_or(0))
            .product::<u64>();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> PathBuf {
        let p = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/data/pipeline/tiny"
        ));
        if p.is_dir() {
            p.to_path_buf()
        } else {
            PathBuf::from("fixtures/data/pipeline/tiny")
        }
    }

    /// Elements of the tensors MLX actually loads from a folder (an independent count: the
    /// loaded arrays' sizes, not the headers).
    fn loaded_elements(dir: &Path, skip: &[&str]) -> u64 {
        let t = mlx_weights::load_component(dir).unwrap();
        t.keys()
            .filter(|k| !skip.iter().any(|p| k.starts_with(p)))
            .map(|k| t.get(k).unwrap().size() as u64)
            .collect::<Vec<_>>()
            .iter()
            .sum()
    }

    #[test]
    fn estimate_matches_the_tiny_checkpoint() -> anyhow::Result<()> {
        let paths = ComponentPaths::from_root(&tiny())?;
        let configs = paths.read_configs()?;
        let f32 = estimate(&paths, &configs, Dtype::Float32, None)?;
        // The transformer's count comes from its config; the file's tensors must agree.
        assert_eq!(
            f32.transformer,
            4 * loaded_elements(&paths.transformer, &[])
        );
        assert_eq!(
            f32.text_encoder,
            4 * loaded_elements(&paths.text_encoder, qwen_text_encoder::IGNORED_PREFIXES)
        );
        // The skipped prefixes are really in the file (lm_head), so skipping is tested.
        assert!(
            loaded_elements(&paths.text_encoder, &[]) > f32.text_encoder / 4,
            "fixture has no ignored tensors"
        );
        assert_eq!(f32.vae, 4 * loaded_elements(&paths.vae, &[]));
        let bf16 = estimate(&paths, &configs, Dtype::Bfloat16, None)?;
        assert_eq!(
            (bf16.text_encoder * 2, bf16.transformer * 2, bf16.vae * 2),
            (f32.text_encoder, f32.transformer, f32.vae)
        );
        let q = QuantizeSpec::new(8).with_group_size(32);
        let q8 = estimate(&paths, &configs, Dtype::Bfloat16, Some(&q))?;
        assert_eq!(
            q8.transformer,
            qwen_dit::weight_bytes(&configs.transformer, 2, Some(&q))
        );
        assert!(q8.transformer <= bf16.transformer);
        assert_eq!((q8.text_encoder, q8.vae), (bf16.text_encoder, bf16.vae));
        Ok(())
    }

    #[test]
    fn warning_names_the_stage_the_numbers_and_the_fixes() {
        let s = StageBytes {
            text_encoder: 16 << 30,
            transformer: 40 << 30,
            vae: 1 << 30,
        };
        assert_eq!(s.largest(), ("transformer", 40 << 30));
        assert_eq!(s.warning(40 << 30, Dtype::Float32, false), None);
        let w = s.warning(24 << 30, Dtype::Float32, false).unwrap();
        for n in [
            "transformer",
            "40.0 GiB",
            "24.0 GiB",
            "--quantize 8",
            "--dtype bf16",
        ] {
            assert!(w.contains(n), "{n:?} not in {w}");
        }
        let w = s.warning(24 << 30, Dtype::Bfloat16, true).unwrap();
        assert!(!w.contains("--quantize") && !w.contains("--dtype"), "{w}");
    }
}
