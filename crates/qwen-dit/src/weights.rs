//! Checkpoint key names and strict loading.
//!
//! The model's parameter names are diffusers' state-dict keys (`transformer_blocks.3.attn.to_q.weight`,
//! ...), so a diffusers checkpoint maps by identity. MLX conversions made with mflux name a few
//! block modules differently; [`BLOCK_ALIASES`] maps those names (with any suffix: `.weight`,
//! `.bias`, `.scales`, `.biases`) onto the diffusers ones before loading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mlx_rs::{Dtype, ops, transforms::eval};
use mlx_weights::{StrictLoader, Tensors, WeightsError};

use crate::block::{Attention, Block, FeedForward};
use crate::config::QwenImageTransformerConfig;
use crate::embeddings::TimestepEmbedder;
use crate::error::Result;
use crate::linear::Linear;
use crate::model::Parts;
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

/// The safetensors files of a component folder, as `mlx_weights::load_component` reads them:
/// the shards named by its `*.safetensors.index.json` when there is one, otherwise every
/// `*.safetensors` file; sorted.
fn component_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| WeightsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut index = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".safetensors.index.json") {
            index.push(path);
        } else if name.ends_with(".safetensors") {
            files.push(path);
        }
    }
    if let [one] = index.as_slice() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(one).map_err(|source| WeightsError::Io {
            path: one.clone(),
            source,
        })?;
        let idx: Index = serde_json::from_str(&text).map_err(|e| WeightsError::Format {
            path: one.clone(),
            msg: format!("invalid shard index: {e}"),
        })?;
        let shards: BTreeSet<&String> = idx.weight_map.values().collect();
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    if index.len() > 1 {
        return Err(WeightsError::Format {
            path: dir.to_path_buf(),
            msg: format!("more than one shard index: {index:?}"),
        }
        .into());
    }
    files.sort();
    Ok(files)
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
) -> Result<Tensors> {
    spec.validate()?;
    let linears: BTreeMap<String, usize> = config
        .linear_layers()
        .into_iter()
        .map(|(p, din, _)| (p, din))
        .collect();
    let mut out = Tensors::new(dir);
    for file in component_files(dir)? {
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
                    let w = if a.dtype() == dtype {
                        a
                    } else {
                        a.as_dtype(dtype)?
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
    Ok(out)
}

fn lin(l: &mut StrictLoader, prefix: &str, din: usize, dout: usize) -> Linear {
    Linear::load(l, prefix, din as i32, dout as i32)
}

/// Builds every part of the model from `tensors` (diffusers names), casting floats to
/// `dtype`; one error lists every missing, unexpected and mis-shaped key.
pub(crate) fn load_parts(
    config: &QwenImageTransformerConfig,
    tensors: Tensors,
    dtype: Dtype,
) -> Result<Parts> {
    let tensors = canonicalize(tensors)?;
    let mut l = StrictLoader::new(tensors, dtype);
    let d = config.inner_dim();
    let f = config.ffn_dim();
    let hd = config.attention_head_dim as i32;
    let time_embed = TimestepEmbedder::new(
        lin(
            &mut l,
            "time_text_embed.timestep_embedder.linear_1",
            crate::config::TIMESTEP_PROJ_DIM,
            d,
        ),
        lin(&mut l, "time_text_embed.timestep_embedder.linear_2", d, d),
    );
    let txt_norm = l.take("txt_norm.weight", &[config.joint_attention_dim as i32]);
    let img_in = lin(&mut l, "img_in", config.in_channels, d);
    let txt_in = lin(&mut l, "txt_in", config.joint_attention_dim, d);
    let mut blocks = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("transformer_blocks.{i}");
        let a = format!("{p}.attn");
        let attn = Attention {
            to_q: lin(&mut l, &format!("{a}.to_q"), d, d),
            to_k: lin(&mut l, &format!("{a}.to_k"), d, d),
            to_v: lin(&mut l, &format!("{a}.to_v"), d, d),
            add_q_proj: lin(&mut l, &format!("{a}.add_q_proj"), d, d),
            add_k_proj: lin(&mut l, &format!("{a}.add_k_proj"), d, d),
            add_v_proj: lin(&mut l, &format!("{a}.add_v_proj"), d, d),
            to_out_0: lin(&mut l, &format!("{a}.to_out.0"), d, d),
            to_add_out: lin(&mut l, &format!("{a}.to_add_out"), d, d),
            norm_q: l.take(&format!("{a}.norm_q.weight"), &[hd]),
            norm_k: l.take(&format!("{a}.norm_k.weight"), &[hd]),
            norm_added_q: l.take(&format!("{a}.norm_added_q.weight"), &[hd]),
            norm_added_k: l.take(&format!("{a}.norm_added_k.weight"), &[hd]),
        };
        let ff = |l: &mut StrictLoader, s: &str| FeedForward {
            proj_in: lin(l, &format!("{p}.{s}.net.0.proj"), d, f),
            proj_out: lin(l, &format!("{p}.{s}.net.2"), f, d),
        };
        let img_mlp = ff(&mut l, "img_mlp");
        let txt_mlp = ff(&mut l, "txt_mlp");
        blocks.push(Block {
            img_mod: lin(&mut l, &format!("{p}.img_mod.1"), d, 6 * d),
            txt_mod: lin(&mut l, &format!("{p}.txt_mod.1"), d, 6 * d),
            attn,
            img_mlp,
            txt_mlp,
        });
    }
    let norm_out = lin(&mut l, "norm_out.linear", d, 2 * d);
    let proj_out = lin(&mut l, "proj_out", d, config.proj_out_dim());
    l.finish(&[])?;
    Ok(Parts {
        time_embed,
        txt_norm,
        img_in,
        txt_in,
        blocks,
        norm_out,
        proj_out,
    })
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
