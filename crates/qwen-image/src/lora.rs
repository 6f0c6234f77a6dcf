//! LoRA files: every key layout diffusers accepts for Qwen-Image, read as diffusers reads
//! them, checked against the transformer before anything heavy, and merged at load.
//!
//! The reference is diffusers 0.42.1 `QwenImageLoraLoaderMixin.lora_state_dict` and
//! `_convert_non_diffusers_qwen_lora_to_diffusers` (`loaders/lora_conversion_utils.py`), PEFT's
//! LoRA layers behind `load_lora_weights` / `set_adapters` / `fuse_lora`.
//!
//! | layout | example key | notes |
//! |---|---|---|
//! | diffusers / PEFT | `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, `….lora_B.weight` | what diffusers saves; its `lora_adapter_metadata` (r, lora_alpha, use_rslora, rank/alpha patterns) gives PEFT's scaling `lora_alpha / r` |
//! | PEFT adapter name | `transformer_blocks.0.attn.to_q.lora_A.default.weight` | with or without `transformer.` (diffusers fails on the prefixed form — a doubled prefix; loaded here) |
//! | `diffusion_model.` prefix | `diffusion_model.transformer_blocks.0.img_mod.1.lora_A.weight` (+ `.alpha`) | lora_A/B or lora_down/up |
//! | kohya | `lora_unet_transformer_blocks_0_attn_to_out_0.lora_down.weight`, `….lora_up.weight`, `….alpha` | flattened module names, incl. `lora_unet_img_in`, `txt_in`, `proj_out`, `norm_out_linear`, `time_text_embed_timestep_embedder_linear_1/2` |
//! | bare down/up (Qwen-Image-Lightning) | `transformer_blocks.0.attn.to_q.lora_down.weight`, `….lora_up.weight`, `….alpha` | |
//! | bare A/B | `transformer_blocks.0.attn.to_q.lora_A.weight` | diffusers silently ignores such a file (no `transformer.` key); loaded here, with a remark |
//!
//! Arithmetic, as diffusers applies it: an `alpha` key folds `scale = alpha / rank` into the
//! matrices in the file's own dtype before anything else (all of it on `down` when
//! `scale ≥ 0.5`, otherwise split by powers of two between `down` and `up`); metadata adds
//! PEFT's `lora_alpha / r` (or `/ √r` with rslora); several LoRAs combine as
//! `set_adapters(names, adapter_weights=scales)`: `W' = W + Σ scaleᵢ · scalingᵢ · upᵢ·downᵢ`,
//! merged in f32 and rounded once to the compute dtype (`qwen_dit::LoraSet`).
//!
//! Memory: a LoRA file is opened lazily (`mlx_weights::load_file_lazy`): each tensor is read
//! when its layer is merged and released once merged, so loading with LoRAs needs about one
//! layer's worth of memory above the model (a rank-64 LoRA on every layer of the full-size
//! model: +0.29 GiB at load on an H200, docs/speed.md). LoRAs given as in-memory tensors are
//! resident as given.
//!
//! What is refused, with the keys named: a key that fits no Linear layer (with the layer
//! names that do exist nearby), `lora_A` without `lora_B` and the reverse, ranks that differ
//! between the two, shapes that do not fit the layer, text-encoder LoRAs (Qwen-Image's
//! pipelines load none), and LoRA variants diffusers refuses too (`.diff`, `.diff_b`,
//! `lora_mid`, LoRA biases). DoRA magnitudes (`dora_scale`) are dropped as diffusers drops
//! them, with a remark.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use mlx_rs::{Array, Dtype};
use qwen_dit::{LoraSet, QwenImageTransformerConfig};

use crate::error::{PipelineError, Result};

/// Where a LoRA's tensors come from.
#[derive(Debug, Clone)]
pub enum LoraSource {
    /// A safetensors file.
    File(PathBuf),
    /// Tensors in memory under the file's key names, with the file's `__metadata__`.
    Tensors {
        /// A name for messages.
        name: String,
        /// The tensors.
        tensors: BTreeMap<String, Array>,
        /// The safetensors metadata (e.g. diffusers' `lora_adapter_metadata`).
        metadata: BTreeMap<String, String>,
    },
}

/// One LoRA and its weight (diffusers' `adapter_weights`).
#[derive(Debug, Clone)]
pub struct Lora {
    /// The tensors.
    pub source: LoraSource,
    /// Multiplies the LoRA's update (1.0: as trained; 0: off; negative: away from it).
    pub scale: f32,
}

impl Lora {
    /// A LoRA file at `scale`.
    pub fn file(path: impl Into<PathBuf>, scale: f32) -> Self {
        Self {
            source: LoraSource::File(path.into()),
            scale,
        }
    }

    /// The name messages use: the file path, or the in-memory name.
    pub fn name(&self) -> String {
        match &self.source {
            LoraSource::File(p) => p.display().to_string(),
            LoraSource::Tensors { name, .. } => name.clone(),
        }
    }

    /// Identity of the LoRA for caching a merged transformer: path or name, and scale.
    pub(crate) fn key(&self) -> (String, u32) {
        (self.name(), self.scale.to_bits())
    }
}

fn err(lora: &str, msg: impl Into<String>) -> PipelineError {
    PipelineError::Lora {
        lora: lora.to_string(),
        msg: msg.into(),
    }
}

/// What a key of a LoRA file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
    Dora,
}

/// The pieces of one module's update, by key.
#[derive(Debug, Default, Clone)]
struct ModuleKeys {
    down: Option<(String, Vec<usize>)>,
    up: Option<(String, Vec<usize>)>,
    alpha: Option<String>,
}

/// A LoRA checked against a transformer from its keys and shapes alone: which key feeds
/// which Linear layer, how its alpha and metadata scale it. [`LoraPlan::load`] reads the
/// tensors.
#[derive(Debug, Clone)]
pub struct LoraPlan {
    lora: Lora,
    modules: BTreeMap<String, ModuleKeys>,
    /// PEFT scaling per module from the adapter metadata (1 without metadata).
    scaling: BTreeMap<String, f64>,
    /// The key layout found, for the summary.
    pub layout: String,
    /// Remarks for the user (layouts diffusers would ignore, dropped DoRA magnitudes).
    pub notes: Vec<String>,
}

impl LoraPlan {
    /// The LoRA.
    pub fn lora(&self) -> &Lora {
        &self.lora
    }

    /// Linear layers this LoRA changes.
    pub fn layer_count(&self) -> usize {
        self.modules.len()
    }

    /// Reads the LoRA's tensors and turns them into updates (alpha folded in the file's
    /// dtype, then scaled by the LoRA's weight and the metadata's scaling), added to `set`.
    pub fn load_into(&self, set: &mut LoraSet) -> Result<()> {
        let name = self.lora.name();
        let tensors: BTreeMap<String, Array> = match &self.lora.source {
            // Lazily: each tensor is read when its layer is merged (see `merge_lora`).
            LoraSource::File(p) => mlx_weights::load_file_lazy(p)?.into_map(),
            LoraSource::Tensors { tensors, .. } => tensors.clone(),
        };
        let get = |key: &str| {
            tensors
                .get(key)
                .cloned()
                .ok_or_else(|| err(&name, format!("tensor `{key}` disappeared from the file")))
        };
        for (module, keys) in &self.modules {
            let (Some((dk, _)), Some((uk, _))) = (&keys.down, &keys.up) else {
                continue;
            };
            let (mut down, mut up) = (get(dk)?, get(uk)?);
            if let Some(ak) = &keys.alpha {
                // The stored value, exactly (bf16/f16/f32 alphas are exact in f32).
                let alpha = get(ak)?;
                if alpha.size() != 1 {
                    return Err(err(
                        &name,
                        format!("`{ak}` is not a scalar: {:?}", alpha.shape()),
                    ));
                }
                let alpha = alpha.as_dtype(Dtype::Float32)?;
                alpha.eval()?;
                let alpha = alpha.as_slice::<f32>()[0] as f64;
                let rank = down.shape()[0] as f64;
                let (sd, su) = alpha_split(alpha / rank);
                down = scale_in_own_dtype(&down, sd)?;
                up = scale_in_own_dtype(&up, su)?;
            }
            let scaling = self.scaling.get(module).copied().unwrap_or(1.0);
            set.add(
                module.clone(),
                qwen_dit::LoraUpdate {
                    down,
                    up,
                    scale: (self.lora.scale as f64 * scaling) as f32,
                },
            );
        }
        Ok(())
    }
}

/// diffusers' split of `alpha / rank` between down and up (`get_alpha_scales`): all on down
/// when it is at least 0.5, otherwise halved onto up until down's share is ≥ half of up's.
pub fn alpha_split(scale: f64) -> (f64, f64) {
    let (mut sd, mut su) = (scale, 1.0f64);
    while sd * 2.0 < su {
        sd *= 2.0;
        su /= 2.0;
    }
    (sd, su)
}

/// `a · s` rounded to `a`'s dtype, computed as PyTorch multiplies a tensor by a Python float
/// (in f32 for 16-bit floats, in the tensor's dtype otherwise).
fn scale_in_own_dtype(a: &Array, s: f64) -> Result<Array> {
    if s == 1.0 {
        return Ok(a.clone());
    }
    let dt = a.dtype();
    Ok(match dt {
        Dtype::Float64 => a.multiply(Array::from_f64(s))?,
        _ => a
            .as_dtype(Dtype::Float32)?
            .multiply(Array::from_f32(s as f32))?
            .as_dtype(dt)?,
    })
}

/// The prefixes a key of the transformer may carry, and the text encoder's.
const TRANSFORMER_PREFIXES: [&str; 3] = ["diffusion_model.", "transformer.", "lora_unet_"];
const TEXT_ENCODER_PREFIXES: [&str; 4] = ["lora_te_", "lora_te1_", "text_encoder.", "te."];

/// Key endings and what they are (checked after PEFT's `.default` adapter name is removed).
const PARTS: [(&str, Part); 6] = [
    (".lora_down.weight", Part::Down),
    (".lora_up.weight", Part::Up),
    (".lora_A.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".alpha", Part::Alpha),
    (".dora_scale", Part::Dora),
];

/// Endings of LoRA variants that diffusers refuses for Qwen-Image.
const REFUSED: [&str; 6] = [
    ".diff",
    ".diff_b",
    ".lora_mid.weight",
    ".lora_B.bias",
    ".lora_up.bias",
    ".lora_magnitude_vector",
];

/// PEFT's adapter config as diffusers stores it in `lora_adapter_metadata`.
#[derive(Debug, Default, serde::Deserialize)]
struct AdapterMetadata {
    r: Option<f64>,
    lora_alpha: Option<f64>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    rank_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, f64>,
}

/// PEFT's pattern match of a module name (`re.match(rf"(.*\.)?({key})$", name)`), for the
/// plain names diffusers writes (a leading `^` is accepted).
fn pattern_matches(pattern: &str, module: &str) -> bool {
    let p = pattern.trim_start_matches('^').trim_end_matches('$');
    module == p || module.ends_with(&format!(".{p}"))
}

fn metadata_scaling(
    lora: &str,
    metadata: &BTreeMap<String, String>,
    modules: &BTreeSet<String>,
) -> Result<BTreeMap<String, f64>> {
    let Some(text) = metadata.get("lora_adapter_metadata") else {
        return Ok(BTreeMap::new());
    };
    let raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| {
            err(
                lora,
                format!("`lora_adapter_metadata` is not a JSON object: {e}"),
            )
        })?;
    // diffusers writes the config with its component prefix (`transformer.r`, …).
    let stripped: serde_json::Map<String, serde_json::Value> = raw
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("transformer.").map(|k| (k.to_string(), v)))
        .collect();
    let meta: AdapterMetadata = serde_json::from_value(serde_json::Value::Object(stripped))
        .map_err(|e| err(lora, format!("`lora_adapter_metadata`: {e}")))?;
    let (Some(r), Some(alpha)) = (meta.r, meta.lora_alpha) else {
        return Ok(BTreeMap::new());
    };
    let pick = |pattern: &BTreeMap<String, f64>, m: &str, default: f64| {
        pattern
            .iter()
            .find(|(p, _)| pattern_matches(p, m))
            .map_or(default, |(_, v)| *v)
    };
    Ok(modules
        .iter()
        .map(|m| {
            let (r, a) = (
                pick(&meta.rank_pattern, m, r),
                pick(&meta.alpha_pattern, m, alpha),
            );
            let s = if meta.use_rslora { a / r.sqrt() } else { a / r };
            (m.clone(), s)
        })
        .collect())
}

/// Tensor names with their shapes.
type Shapes = Vec<(String, Vec<usize>)>;

/// The names and shapes of a LoRA's tensors and its metadata (headers only for a file).
fn inventory(lora: &Lora) -> Result<(Shapes, BTreeMap<String, String>)> {
    match &lora.source {
        LoraSource::File(p) => {
            let h = mlx_weights::read_header(p).map_err(|e| err(&lora.name(), e.to_string()))?;
            Ok((
                h.tensors.into_iter().map(|t| (t.name, t.shape)).collect(),
                h.metadata,
            ))
        }
        LoraSource::Tensors {
            tensors, metadata, ..
        } => Ok((
            tensors
                .iter()
                .map(|(k, a)| (k.clone(), a.shape().iter().map(|&d| d as usize).collect()))
                .collect(),
            metadata.clone(),
        )),
    }
}

/// Maps every key of `lora` onto the transformer's Linear layers and checks shapes, without
/// reading tensor data. One error lists every problem.
pub fn plan(lora: &Lora, config: &QwenImageTransformerConfig) -> Result<LoraPlan> {
    let name = lora.name();
    if !lora.scale.is_finite() {
        return Err(err(&name, format!("scale {} is not finite", lora.scale)));
    }
    if let LoraSource::File(p) = &lora.source
        && !p.is_file()
    {
        return Err(err(
            &name,
            if p.exists() {
                "not a file"
            } else {
                "no such file"
            },
        ));
    }
    let (keys, metadata) = inventory(lora)?;
    let linears: BTreeMap<String, (usize, usize)> = config
        .linear_layers()
        .into_iter()
        .map(|(p, i, o)| (p, (i, o)))
        .collect();
    // kohya's flattened names: every Linear path with dots as underscores.
    let flat: BTreeMap<String, String> = linears
        .keys()
        .map(|p| (p.replace('.', "_"), p.clone()))
        .collect();

    let mut modules: BTreeMap<String, ModuleKeys> = BTreeMap::new();
    let (mut text_encoder, mut refused, mut unknown, mut dora) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut prefixes = BTreeSet::new();
    let mut uses_default = false;
    for (key, shape) in &keys {
        if TEXT_ENCODER_PREFIXES.iter().any(|p| key.starts_with(p)) {
            text_encoder.push(key.clone());
            continue;
        }
        if REFUSED.iter().any(|s| key.ends_with(s)) {
            refused.push(key.clone());
            continue;
        }
        let mut k = key.as_str();
        let mut prefix = "";
        for p in TRANSFORMER_PREFIXES {
            if let Some(rest) = k.strip_prefix(p) {
                k = rest;
                prefix = p;
                break;
            }
        }
        prefixes.insert(prefix);
        let k = if k.contains(".default.") {
            uses_default = true;
            k.replacen(".lora_A.default.", ".lora_A.", 1).replacen(
                ".lora_B.default.",
                ".lora_B.",
                1,
            )
        } else {
            k.to_string()
        };
        let Some((module, part)) = PARTS
            .iter()
            .find_map(|(end, part)| k.strip_suffix(end).map(|m| (m, *part)))
        else {
            unknown.push(key.clone());
            continue;
        };
        let module = if linears.contains_key(module) {
            module.to_string()
        } else if let Some(m) = flat.get(module) {
            m.clone()
        } else {
            unknown.push(key.clone());
            continue;
        };
        let entry = modules.entry(module).or_default();
        match part {
            Part::Down => entry.down = Some((key.clone(), shape.clone())),
            Part::Up => entry.up = Some((key.clone(), shape.clone())),
            Part::Alpha => entry.alpha = Some(key.clone()),
            Part::Dora => dora.push(key.clone()),
        }
    }

    let mut problems = Vec::new();
    let list = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(6).map(String::as_str).collect();
        let more = if v.len() > 6 {
            format!(", … ({} more)", v.len() - 6)
        } else {
            String::new()
        };
        format!("{}{more}", shown.join(", "))
    };
    if !text_encoder.is_empty() {
        problems.push(format!(
            "{} text-encoder keys ({}): Qwen-Image's pipelines load LoRAs into the transformer \
             only; text-encoder LoRAs are not supported",
            text_encoder.len(),
            list(&text_encoder)
        ));
    }
    if !refused.is_empty() {
        problems.push(format!(
            "{} keys of LoRA variants that are not supported (as in diffusers): {}",
            refused.len(),
            list(&refused)
        ));
    }
    if !unknown.is_empty() {
        let example = unknown[0]
            .split(".lora")
            .next()
            .unwrap_or(&unknown[0])
            .to_string();
        let near = nearby(&example, linears.keys());
        problems.push(format!(
            "{} keys match no Linear layer of the transformer: {} (layers nearby: {near})",
            unknown.len(),
            list(&unknown)
        ));
    }
    for (module, k) in &modules {
        let (din, dout) = linears[module];
        match (&k.down, &k.up) {
            (Some((dk, d)), Some((uk, u))) => {
                if d.len() != 2 || u.len() != 2 {
                    problems.push(format!(
                        "`{dk}` / `{uk}` must be matrices, got {d:?} / {u:?}"
                    ));
                } else if d[0] != u[1] {
                    problems.push(format!(
                        "`{module}`: rank {} in `{dk}` but {} in `{uk}`",
                        d[0], u[1]
                    ));
                } else if d[1] != din || u[0] != dout {
                    problems.push(format!(
                        "`{module}` is a {din}→{dout} Linear; `{dk}` {d:?} and `{uk}` {u:?} do \
                         not fit it (expected (r, {din}) and ({dout}, r))"
                    ));
                }
            }
            (Some((dk, _)), None) => problems.push(format!("`{dk}` has no matching up/lora_B")),
            (None, Some((uk, _))) => problems.push(format!("`{uk}` has no matching down/lora_A")),
            (None, None) => {
                if let Some(a) = &k.alpha {
                    problems.push(format!("`{a}` belongs to no down/up pair"));
                }
            }
        }
    }
    if modules.values().all(|k| k.down.is_none()) && problems.is_empty() {
        problems.push("no LoRA tensors (lora_A/lora_B or lora_down/lora_up) in it".into());
    }
    if !problems.is_empty() {
        return Err(err(&name, problems.join("; ")));
    }
    modules.retain(|_, k| k.down.is_some());

    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let scaling = metadata_scaling(&name, &metadata, &names)?;
    let kohya = prefixes.contains("lora_unet_");
    let down_up = modules.values().any(|k| {
        k.down
            .as_ref()
            .is_some_and(|(key, _)| key.contains("lora_down"))
    });
    let layout = match (kohya, prefixes.iter().copied().find(|p| !p.is_empty())) {
        (true, _) => "kohya (lora_unet_…)".to_string(),
        (false, Some(p)) => format!("{p}… {}", if down_up { "lora_down/up" } else { "lora_A/B" }),
        (false, None) => format!(
            "bare module names, {}",
            if down_up { "lora_down/up" } else { "lora_A/B" }
        ),
    };
    let has_alpha = modules.values().any(|k| k.alpha.is_some());
    // diffusers converts (folds alpha, adds its prefix) only when a key has an alpha, a
    // `default.` adapter name, or the kohya / diffusion_model prefix.
    let converted = has_alpha || uses_default || kohya || prefixes.contains("diffusion_model.");
    let mut notes = Vec::new();
    if prefixes.iter().all(|p| p.is_empty()) && !converted {
        notes.push(
            "its keys have no `transformer.` prefix and nothing that makes diffusers convert \
             them: diffusers ignores such a file entirely (with a warning); it is loaded here"
                .to_string(),
        );
    }
    if prefixes.contains("transformer.") && converted {
        notes.push(
            "`transformer.` keys with an alpha or a `default` adapter name: diffusers 0.42.1 \
             fails on this layout (it doubles the prefix); it is loaded here"
                .to_string(),
        );
    }
    if !dora.is_empty() {
        notes.push(format!(
            "{} DoRA magnitude keys (dora_scale) are dropped, as diffusers drops them: the file \
             is applied as a plain LoRA",
            dora.len()
        ));
    }
    Ok(LoraPlan {
        lora: lora.clone(),
        modules,
        scaling,
        layout,
        notes,
    })
}

/// Up to five layer names sharing the longest prefix with `module`.
fn nearby<'a>(module: &str, names: impl Iterator<Item = &'a String>) -> String {
    let probe = module
        .trim_start_matches("diffusion_model.")
        .trim_start_matches("transformer.")
        .trim_start_matches("lora_unet_")
        .replace('_', ".");
    let common = |n: &str| {
        n.replace('_', ".")
            .chars()
            .zip(probe.chars())
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

/// Reads every planned LoRA into one set of updates for the transformer.
pub fn load_all(plans: &[LoraPlan]) -> Result<LoraSet> {
    let mut set = LoraSet::new();
    for p in plans {
        p.load_into(&mut set)?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_split_matches_diffusers() {
        // (alpha, rank) → (down, up), from diffusers' get_alpha_scales.
        for (alpha, rank, sd, su) in [
            (1.0, 16.0, 0.25, 0.25),
            (3.0, 16.0, 0.375, 0.5),
            (8.0, 16.0, 0.5, 1.0),
            (16.0, 16.0, 1.0, 1.0),
            (32.0, 16.0, 2.0, 1.0),
            (1.0, 64.0, 0.125, 0.125),
            (1.0, 128.0, 0.0625, 0.125),
            (1.0, 4.0, 0.5, 0.5),
        ] {
            assert_eq!(alpha_split(alpha / rank), (sd, su), "{alpha}/{rank}");
        }
    }

    #[test]
    fn peft_patterns() {
        assert!(pattern_matches("to_q", "transformer_blocks.0.attn.to_q"));
        assert!(pattern_matches(
            "^transformer_blocks.0.attn.to_q",
            "transformer_blocks.0.attn.to_q"
        ));
        assert!(!pattern_matches(
            "to_q",
            "transformer_blocks.0.attn.add_q_proj"
        ));
    }
}
