//! Weight-memory estimate per pipeline stage, checked against MLX's memory limit before any
//! weights are loaded.
//!
//! The pipeline's stages hold one weighted component each (text encoder, then transformer,
//! then VAE; see [`crate::pipeline`]), so the largest stage's weights bound the resident
//! weights. The estimate counts parameters in the compute dtype: the transformer's from its
//! config through [`qwen_dit::weight_bytes`] (which knows what quantization packs), the text
//! encoder's and the VAE's from their safetensors headers (element counts; the text encoder's
//! vision tower and LM head, which are never loaded, are skipped). Activations come on top,
//! so a warning is raised only when the weights alone exceed the limit.

use std::path::Path;

use mlx_fastops::ComputeDtype;
use qwen_dit::QuantizeSpec;

use crate::checkpoint::{CheckpointConfigs, ComponentPaths};
use crate::error::Result;

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

    /// A warning when the largest stage's weights exceed `limit` bytes (MLX's memory limit);
    /// `None` when they fit.
    pub fn warning(
        &self,
        limit: u64,
        dtype: ComputeDtype,
        quantized: bool,
    ) -> Option<MemoryWarning> {
        let (stage, bytes) = self.largest();
        (bytes > limit).then_some(MemoryWarning {
            stage,
            bytes,
            limit,
            dtype,
            suggest_quantize: !quantized,
            suggest_bf16: dtype == ComputeDtype::F32,
        })
    }
}

/// The weights of a stage need more than MLX's memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryWarning {
    /// The largest stage.
    pub stage: &'static str,
    /// Its estimated weight bytes.
    pub bytes: u64,
    /// MLX's memory limit.
    pub limit: u64,
    /// The compute dtype.
    pub dtype: ComputeDtype,
    /// Quantizing the transformer (8 or 4 bits) would lower it.
    pub suggest_quantize: bool,
    /// Computing in bf16 would halve it.
    pub suggest_bf16: bool,
}

impl std::fmt::Display for MemoryWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {}'s weights need about {} in {}, more than MLX's memory limit of {}; loading \
             may fail or swap",
            self.stage,
            crate::info::human_bytes(self.bytes as usize),
            self.dtype,
            crate::info::human_bytes(self.limit as usize),
        )
    }
}

impl MemoryWarning {
    /// The fixes that apply, in a program's words: ` (try QUANTIZE, BF16)` with `quantize`
    /// (the words for quantizing the transformer) when it would help and `bf16` (computing in
    /// bf16) when it would; empty when neither would.
    pub fn advice(&self, quantize: &str, bf16: &str) -> String {
        let fixes: Vec<&str> = [
            self.suggest_quantize.then_some(quantize),
            self.suggest_bf16.then_some(bf16),
        ]
        .into_iter()
        .flatten()
        .collect();
        match fixes.is_empty() {
            true => String::new(),
            false => format!(" (try {})", fixes.join(", ")),
        }
    }
}

/// The warning for the weights `pipe` loads, in its dtype and quantization, against MLX's
/// memory limit `limit` (bytes): `None` when they fit, when no limit is known (`None` or 0) or
/// when the pipeline has no checkpoint folder to estimate from. Only a warning: MLX's limit
/// can be conservative (and memory may be swapped).
pub fn weights_warning(
    pipe: &crate::QwenImagePipeline,
    limit: Option<usize>,
) -> Result<Option<MemoryWarning>> {
    let (Some(limit), Some(estimate)) = (limit.filter(|&l| l > 0), pipe.weight_memory_estimate())
    else {
        return Ok(None);
    };
    let options = pipe.options();
    Ok(estimate?.warning(limit as u64, options.dtype, options.quantize.is_some()))
}

/// Estimates each stage's weight bytes for a checkpoint folder (headers and configs only).
pub fn estimate(
    paths: &ComponentPaths,
    configs: &CheckpointConfigs,
    dtype: ComputeDtype,
    quantize: Option<&QuantizeSpec>,
) -> Result<StageBytes> {
    let fb = dtype.bytes();
    let text = folder_elements(&paths.text_encoder, qwen_text_encoder::IGNORED_PREFIXES)?;
    let vae = folder_elements(&paths.vae, &[])?;
    Ok(StageBytes {
        text_encoder: text * fb,
        transformer: qwen_dit::weight_bytes(&configs.transformer, fb, quantize),
        vae: vae * fb,
    })
}

/// Elements of every tensor of a component folder (its shard index's files, or every
/// `*.safetensors` file) whose name does not start with one of `skip`; from the headers.
pub fn folder_elements(dir: &Path, skip: &[&str]) -> Result<u64> {
    let mut total = 0u64;
    mlx_weights::for_each_tensor(dir, &mut |_, t| {
        if !skip.iter().any(|p| t.name.starts_with(p)) {
            total = total.saturating_add(t.elements());
        }
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> std::path::PathBuf {
        let p = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/data/pipeline/tiny"
        ));
        if p.is_dir() {
            p.to_path_buf()
        } else {
            std::path::PathBuf::from("fixtures/data/pipeline/tiny")
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
        let f32 = estimate(&paths, &configs, ComputeDtype::F32, None)?;
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
        let bf16 = estimate(&paths, &configs, ComputeDtype::Bf16, None)?;
        assert_eq!(
            (bf16.text_encoder * 2, bf16.transformer * 2, bf16.vae * 2),
            (f32.text_encoder, f32.transformer, f32.vae)
        );
        let q = QuantizeSpec::new(8).with_group_size(32);
        let q8 = estimate(&paths, &configs, ComputeDtype::Bf16, Some(&q))?;
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
        assert_eq!(s.warning(40 << 30, ComputeDtype::F32, false), None);
        let w = s.warning(24 << 30, ComputeDtype::F32, false).unwrap();
        assert!(w.suggest_quantize && w.suggest_bf16, "{w:?}");
        let text = w.to_string();
        for n in ["transformer", "40.0 GiB", "24.0 GiB", "f32"] {
            assert!(text.contains(n), "{n:?} not in {text}");
        }
        assert_eq!(w.advice("quantize", "bf16"), " (try quantize, bf16)");
        let w = s.warning(24 << 30, ComputeDtype::Bf16, true).unwrap();
        assert!(!w.suggest_quantize && !w.suggest_bf16, "{w:?}");
        assert_eq!(w.advice("quantize", "bf16"), "");
        let w = s.warning(24 << 30, ComputeDtype::Bf16, false).unwrap();
        assert_eq!(w.advice("quantize", "bf16"), " (try quantize)");
    }

    #[test]
    fn weights_warning_only_with_a_limit_exceeded() -> anyhow::Result<()> {
        let pipe = crate::QwenImagePipeline::load(&tiny(), Default::default())?;
        assert!(weights_warning(&pipe, None)?.is_none());
        assert!(weights_warning(&pipe, Some(0))?.is_none());
        assert!(weights_warning(&pipe, Some(1 << 40))?.is_none());
        let w = weights_warning(&pipe, Some(1)).ok().flatten();
        assert!(w.is_some_and(|w| w.limit == 1 && w.dtype == pipe.options().dtype));
        Ok(())
    }
}
