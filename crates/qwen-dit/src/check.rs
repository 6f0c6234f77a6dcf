//! A `transformer/` folder checked against its config from the safetensors headers alone,
//! before anything is loaded: the counts the config implies, then every parameter's name,
//! shape and dtype (float layers, or MLX-quantized ones as the loader accepts them).

use std::collections::BTreeMap;
use std::path::Path;

use mlx_weights::{Expected, Role, TensorInfo};

use crate::config::QwenImageTransformerConfig;
use crate::error::Result;
use crate::linear::{valid_bits, valid_group_size};
use crate::model::parameter_specs;
use crate::weights::canonical_key;

/// Tensors outside the blocks (time embedder 2 × 2, txt_norm, img_in, txt_in, norm_out,
/// proj_out) and per block (14 Linears × 2 + 4 norms), at least.
const FIXED_TENSORS: usize = 13;
const TENSORS_PER_BLOCK: usize = 32;

/// Checks the checkpoint in `dir` against `config` (see the module docs). One error lists
/// every missing, unexpected, mis-shaped or wrongly typed tensor; a config whose layer count
/// the checkpoint cannot hold is refused before the parameter list is even made.
pub fn check_checkpoint(dir: &Path, config: &QwenImageTransformerConfig) -> Result<()> {
    config.validate()?;
    let inv: BTreeMap<String, TensorInfo> = mlx_weights::inventory(dir)?
        .into_iter()
        .map(|(k, t)| (canonical_key(&k).unwrap_or(k), t))
        .collect();
    mlx_weights::check_count(
        dir,
        "num_layers",
        config.num_layers,
        TENSORS_PER_BLOCK,
        FIXED_TENSORS,
        inv.len(),
    )?;
    let mut expected = Vec::new();
    for p in parameter_specs(config) {
        let shape: Vec<usize> = p.shape.iter().map(|&d| d.max(0) as usize).collect();
        let linear = match p.role {
            Role::Weight { fan_in } => p.key.strip_suffix(".weight").map(|m| (m, fan_in)),
            _ => None,
        };
        match linear {
            Some((module, din)) if inv.contains_key(&format!("{module}.scales")) => {
                expected.extend(quantized(module, din, shape[0], &inv));
            }
            _ => expected.push(Expected {
                key: p.key,
                shape,
                floating: true,
            }),
        }
    }
    Ok(mlx_weights::check_inventory(dir, &expected, &inv, &[])?)
}

/// What a Linear stored MLX-quantized must hold: packed `weight` `(out, in·bits/32)` and
/// `scales`/`biases` `(out, in/group)`, bits and group from the stored shapes (as the loader
/// reads them); an inconsistent pair expects the 4-bit / 64 layout, so the error shows it.
fn quantized(
    module: &str,
    din: usize,
    dout: usize,
    inv: &BTreeMap<String, TensorInfo>,
) -> Vec<Expected> {
    let dim1 = |k: &str| {
        inv.get(&format!("{module}.{k}"))
            .and_then(|t| (t.shape.len() == 2).then_some(t.shape[1]))
            .unwrap_or(0)
    };
    let (packed, groups) = (dim1("weight"), dim1("scales"));
    let bits = if din > 0 && packed > 0 && (packed * 32).is_multiple_of(din) {
        (packed * 32 / din) as i32
    } else {
        0
    };
    let group = if groups > 0 && din.is_multiple_of(groups) {
        (din / groups) as i32
    } else {
        0
    };
    let (packed, groups) = if valid_bits(bits) && valid_group_size(group) {
        (packed, groups)
    } else {
        (din * 4 / 32, din / 64)
    };
    vec![
        Expected {
            key: format!("{module}.weight"),
            shape: vec![dout, packed],
            floating: false,
        },
        Expected {
            key: format!("{module}.scales"),
            shape: vec![dout, groups],
            floating: true,
        },
        Expected {
            key: format!("{module}.biases"),
            shape: vec![dout, groups],
            floating: true,
        },
    ]
}
