//! Checkpoint key names and strict loading.
//!
//! The model's parameter names are diffusers' state-dict keys (`transformer_blocks.3.attn.to_q.weight`,
//! ...), so a diffusers checkpoint maps by identity. MLX conversions made with mflux name a few
//! block modules differently; [`BLOCK_ALIASES`] maps those names (with any suffix: `.weight`,
//! `.bias`, `.scales`, `.biases`) onto the diffusers ones before loading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mlx_rs::{Dtype, ops, transforms::eval};
use mlx_weights::{Tensors, WeightsError};

use crate::config::QwenImageTransformerConfig;
use crate::error::Result;
use crate::lora::{LoraSet, merge_updates};
use crate::quant::QuantizeSpec;

/// Module names inside `transformer_blocks.{i}.`: (diffusers name, alternative name in
/// mflux-made MLX conversions).
pub const BLOCK_ALIASES: &[(&str, &str)] = &[
    ("img_mod.1", "img_mod_linear"),
    ("txt_mod.1", "txt_mod_linear"),
    ("attn.to_out.0", "attn.attn_to_out.0"),
    ("img_mlp.net.0.proj", "img_ff.mlp_in"),
    ("img_mlp.net.2", "img_ff.mlp_out"),
    ("txt_mlp.net.0.proj", "txt_ff.mlp_in"),
    ("txt_mlp.net.2", "txt_ff.mlp_out"),
];

/// The diffusers name of checkpoint key `key`, or `None` when `key` already is one (or is
/// unknown: strict loading reports it later).
pub fn canonical_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("transformer_blocks.")?;
    let (idx, inner) = rest.split_once('.')?;
    if idx.parse::<usize>().is_err() {
        return None;
    }
    BLOCK_ALIASES.iter().find_map(|(canon, alias)| {
        inner
            .strip_prefix(alias)
            .filter(|s| s.starts_with('.'))
            .map(|suffix| format!("transformer_blocks.{idx}.{canon}{suffix}"))
    })
}

/// Renames every aliased key of `tensors` to its diffusers name. A key present under both
/// names is an error.
pub(crate) fn canonicalize(mut tensors: Tensors) -> Result<Tensors> {
    let renames: Vec<(String, String)> = tensors
        .keys()
        .filter_map(|k| canonical_key(k).map(|c| (k.to_string(), c)))
        .collect();
    for (from, to) in renames {
        if tensors.get(&to).is_some() {
            return Err(WeightsError::Format {
                path: tensors.source().to_path_buf(),
                msg: format!("`{from}` and `{to}` name the same parameter"),
            }
            .into());
        }
        if let Some(a) = tensors.remove(&from) {
            tensors.insert(to, a);
        }
    }
    Ok(tensors)
}

/// Reads a component folder shard by shard, quantizing each float Linear weight `spec`
/// selects as soon as its shard is read (cast to `dtype` first, exactly as
/// [`crate::QwenImageTransformer::quantize`] would). Only one shard's float weights are in
/// memory at a time, so a checkpoint larger than memory in bf16 can be loaded at 4 bits.
/// The returned tensors hold those layers MLX-quantized (`weight`/`scales`/`biases`).
pub(crate) fn load_quantizing(
    dir: &Path,
    config: &QwenImageTransformerConfig,
    spec: &QuantizeSpec,
    dtype: Dtype,
    lora: &mut LoraSet,
) -> Result<(Tensors, BTreeSet<String>)> {
    let mut merged = BTreeSet::new();
    spec.validate()?;
    let linears: BTreeMap<String, usize> = config
        .linear_layers()
        .into_iter()
        .map(|(p, din, _)| (p, din))
        .collect();
    let mut out = Tensors::new(dir);
    for file in mlx_weights::component_files(dir)?.files {
        let shard = canonicalize(mlx_weights::load_file(&file)?)?;
        for (key, a) in shard.into_map() {
            if out.get(&key).is_some() {
                return Err(WeightsError::Format {
                    path: file.clone(),
                    msg: format!("tensor `{key}` appears in more than one shard"),
                }
                .into());
            }
            let target = key
                .strip_suffix(".weight")
                .and_then(|p| linears.get(p).map(|din| (p, *din)));
            let floating = matches!(
                a.dtype(),
                Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float64
            );
            match target {
                Some((path, din))
                    if floating
                        && a.ndim() == 2
                        && a.dim(1) as usize == din
                        && spec.quantizes(path, din) =>
                {
                    // LoRA first, then quantize (the merged weight is what gets quantized).
                    let w = match lora.take(path) {
                        Some(updates) => {
                            merged.insert(path.to_string());
                            merge_updates(&updates, &a, dtype)?
                        }
                        None if a.dtype() == dtype => a,
                        None => a.as_dtype(dtype)?,
                    };
                    let (wq, scales, biases) = ops::quantize(&w, spec.group_size, spec.bits)?;
                    eval([&wq, &scales, &biases])?;
                    out.insert(key.clone(), wq);
                    out.insert(format!("{path}.scales"), scales);
                    out.insert(format!("{path}.biases"), biases);
                }
                _ => out.insert(key, a),
            }
        }
    }
    Ok((out, merged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_diffusers_names() {
        assert_eq!(
            canonical_key("transformer_blocks.12.img_mod_linear.scales").as_deref(),
            Some("transformer_blocks.12.img_mod.1.scales")
        );
        assert_eq!(
            canonical_key("transformer_blocks.0.attn.attn_to_out.0.bias").as_deref(),
            Some("transformer_blocks.0.attn.to_out.0.bias")
        );
        assert_eq!(
            canonical_key("transformer_blocks.3.txt_ff.mlp_out.weight").as_deref(),
            Some("transformer_blocks.3.txt_mlp.net.2.weight")
        );
        // diffusers names and unrelated keys are left alone
        assert_eq!(canonical_key("transformer_blocks.3.img_mod.1.weight"), None);
        assert_eq!(
            canonical_key("transformer_blocks.x.img_mod_linear.weight"),
            None
        );
        assert_eq!(
            canonical_key("transformer_blocks.3.img_mod_linearx.weight"),
            None
        );
        assert_eq!(canonical_key("proj_out.weight"), None);
    }
}
