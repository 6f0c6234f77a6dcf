//! Low-rank adapters (LoRA) merged into the transformer's Linear layers when it is loaded.
//!
//! A [`LoraSet`] holds, per Linear module path (`transformer_blocks.3.attn.to_q`, `img_in`,
//! …), the updates to add: `W' = W + Σ scale · (up · down)` with `down` `(r, in)` and `up`
//! `(out, r)` (PEFT's `lora_A` and `lora_B`). The sum is computed in f32 and rounded once to
//! the compute dtype, so the forward costs nothing extra. Reading LoRA files (their key
//! layouts, alpha/rank folding, several files with their scales) is the pipeline's job; this
//! module only merges.

use std::collections::BTreeMap;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype, ops};

use crate::config::QwenImageTransformerConfig;
use crate::error::{DitError, Result};

/// One low-rank update of a Linear layer.
#[derive(Debug, Clone)]
pub struct LoraUpdate {
    /// `lora_A` / `lora_down`, `(rank, in_features)`.
    pub down: Array,
    /// `lora_B` / `lora_up`, `(out_features, rank)`.
    pub up: Array,
    /// The factor the product is multiplied by (adapter weight × PEFT scaling).
    pub scale: f32,
}

/// Low-rank updates for some Linear layers, by module path.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    layers: BTreeMap<String, Vec<LoraUpdate>>,
}

impl LoraSet {
    /// No updates.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an update of the Linear layer at `module` (updates of one layer add up).
    pub fn add(&mut self, module: impl Into<String>, update: LoraUpdate) {
        self.layers.entry(module.into()).or_default().push(update);
    }

    /// Whether there is nothing to merge.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// This set without the updates of `modules` (already merged elsewhere).
    pub fn without(&self, modules: &std::collections::BTreeSet<String>) -> LoraSet {
        LoraSet {
            layers: self
                .layers
                .iter()
                .filter(|(k, _)| !modules.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The module paths that receive updates.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.layers.keys().map(String::as_str)
    }

    /// Checks every update against `config`: the module is a Linear layer of the model, `down`
    /// is `(r, in)` and `up` `(out, r)` for that layer, the ranks agree. One error lists every
    /// problem (unknown modules with the layer names that do exist nearby).
    pub fn check(&self, config: &QwenImageTransformerConfig) -> Result<()> {
        let linears: BTreeMap<String, (usize, usize)> = config
            .linear_layers()
            .into_iter()
            .map(|(p, din, dout)| (p, (din, dout)))
            .collect();
        let mut problems = Vec::new();
        for (module, updates) in &self.layers {
            let Some(&(din, dout)) = linears.get(module) else {
                problems.push(format!(
                    "`{module}` is not a Linear layer of the transformer (nearby: {})",
                    nearby(module, linears.keys())
                ));
                continue;
            };
            for u in updates {
                let (d, up) = (u.down.shape(), u.up.shape());
                let ok = d.len() == 2
                    && up.len() == 2
                    && d[0] == up[1]
                    && d[1] as usize == din
                    && up[0] as usize == dout;
                if !ok {
                    problems.push(format!(
                        "`{module}` is ({dout}, {din}) but the update has down {d:?} and up {up:?} \
                         (expected (r, {din}) and ({dout}, r))"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DitError::Lora(problems.join("; ")))
        }
    }

    /// Removes and returns the updates of `module` (merging consumes them, so that arrays
    /// read lazily from a file are released once their layer is merged).
    pub fn take(&mut self, module: &str) -> Option<Vec<LoraUpdate>> {
        self.layers.remove(module)
    }

    /// `weight` (`(out, in)`, float) with this set's updates of `module` added, computed in
    /// f32 and cast to `dtype`; `None` when the module has no update. See [`merge_updates`].
    pub fn merged(&self, module: &str, weight: &Array, dtype: Dtype) -> Result<Option<Array>> {
        match self.layers.get(module) {
            Some(updates) => Ok(Some(merge_updates(updates, weight, dtype)?)),
            None => Ok(None),
        }
    }
}

/// f32 elements of one row block of a merge (its temporaries: the weight rows in f32, each
/// update's product, the sum): 32 Mi elements, 128 MiB each, so the DiT's largest layers
/// (the modulation's 18432 × 3072, the FFN's 12288 × 3072) merge in two blocks. Every block
/// is one evaluation (a GPU synchronisation): smaller blocks cost load time (on the H200, a
/// rank-64 LoRA on every layer merged in 5.2 s with 4 Mi-element blocks, 2.1 s with 16 Mi).
const MERGE_BLOCK_ELEMENTS: i64 = 1 << 25;

/// `weight + Σ scale · (up · down)` computed in f32 and cast once to `dtype`. A weight larger
/// than [`MERGE_BLOCK_ELEMENTS`] is merged in row blocks, each evaluated before the next, so
/// the f32 temporaries stay a few tens of MiB whatever the layer's size (every output row
/// comes from the same products and sums either way).
pub fn merge_updates(updates: &[LoraUpdate], weight: &Array, dtype: Dtype) -> Result<Array> {
    let f32 = Dtype::Float32;
    let (rows, cols) = (weight.dim(0), weight.dim(1));
    let step = (MERGE_BLOCK_ELEMENTS / i64::from(cols.max(1))).clamp(1, i64::from(rows.max(1)));
    let step = step as i32;
    let downs = updates
        .iter()
        .map(|u| u.down.as_dtype(f32))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let block = |r0: i32, r1: i32| -> Result<Array> {
        let whole = r0 == 0 && r1 == rows;
        let rows_of = |a: &Array| -> Result<Array> {
            Ok(if whole {
                a.clone()
            } else {
                a.index((r0..r1, ..))
            })
        };
        let mut w = rows_of(weight)?.as_dtype(f32)?;
        for (u, down) in updates.iter().zip(&downs) {
            let delta = ops::matmul(&rows_of(&u.up)?.as_dtype(f32)?, down)?;
            w = w.add(&delta.multiply(Array::from_f32(u.scale))?)?;
        }
        Ok(if dtype == f32 { w } else { w.as_dtype(dtype)? })
    };
    if step >= rows {
        return block(0, rows);
    }
    let mut parts = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + step).min(rows);
        let part = block(r0, r1)?;
        part.eval()?;
        parts.push(part);
        r0 = r1;
    }
    Ok(ops::concatenate(&parts, 0)?)
}

/// Up to five layer names sharing the longest prefix with `module` (for error messages).
fn nearby<'a>(module: &str, names: impl Iterator<Item = &'a String>) -> String {
    let common = |n: &str| {
        n.chars()
            .zip(module.chars())
            .take_while(|(a, b)| a == b)
            .count()
    };
    let mut scored: Vec<(usize, &String)> = names.map(|n| (common(n), n)).collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored
        .iter()
        .take(5)
        .map(|(_, n)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
