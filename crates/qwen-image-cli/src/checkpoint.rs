//! A Qwen-Image checkpoint folder in the diffusers layout: which component lives where, the
//! cheap checks run before anything heavy is loaded, and the configs that fix every size.
//!
//! `model_index.json` names the components (`transformer`, `vae`, `text_encoder`,
//! `tokenizer`, `scheduler`); each is a sub-folder of that name. Before any weights are read
//! this module checks that every config parses, that the components fit together (latent
//! channels, text width, patch size) and that every safetensors file is complete (its header
//! parses and its data extends to the end the header promises) — so a truncated shard is
//! reported before minutes of text encoding, not after.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use flow_scheduler::SchedulerConfig;
use qwen_dit::QwenImageTransformerConfig;
use qwen_text_encoder::{Qwen2_5_VLConfig, TextConfig};
use qwen_vae::VaeConfig;

use crate::error::{PipelineError, Result, checkpoint};

/// The component folders of a checkpoint.
#[derive(Debug, Clone)]
pub struct ComponentPaths {
    /// The checkpoint root (holds `model_index.json`).
    pub root: PathBuf,
    /// `transformer/`.
    pub transformer: PathBuf,
    /// `vae/`.
    pub vae: PathBuf,
    /// `text_encoder/`.
    pub text_encoder: PathBuf,
    /// `tokenizer/`.
    pub tokenizer: PathBuf,
    /// `scheduler/`.
    pub scheduler: PathBuf,
}

/// The parsed configs of all components, and the sizes derived from them.
#[derive(Debug, Clone)]
pub struct CheckpointConfigs {
    /// `transformer/config.json`.
    pub transformer: QwenImageTransformerConfig,
    /// `vae/config.json`.
    pub vae: VaeConfig,
    /// `text_encoder/config.json`, resolved.
    pub text: TextConfig,
    /// `scheduler/scheduler_config.json`.
    pub scheduler: SchedulerConfig,
}

impl CheckpointConfigs {
    /// Pixels per latent along height and width: `2^len(vae.temperal_downsample)`.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.spatial_compression_ratio()
    }

    /// Latent channels (`vae.z_dim`).
    pub fn latent_channels(&self) -> usize {
        self.vae.z_dim
    }

    /// The DiT's patch size (2).
    pub fn patch_size(&self) -> usize {
        self.transformer.patch_size
    }

    /// Image sizes must be multiples of this: VAE scale factor × patch size (16).
    pub fn size_multiple(&self) -> usize {
        self.vae_scale_factor() * self.patch_size()
    }
}

const COMPONENTS: [&str; 5] = [
    "transformer",
    "vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
];

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read_to_string(path).map_err(|e| {
        checkpoint(
            path,
            if e.kind() == std::io::ErrorKind::NotFound {
                "missing".to_string()
            } else {
                format!("cannot read: {e}")
            },
        )
    })?;
    serde_json::from_str(&text).map_err(|e| checkpoint(path, format!("invalid JSON: {e}")))
}

impl ComponentPaths {
    /// Reads `root/model_index.json` and locates the five components the text-to-image
    /// pipeline needs.
    pub fn from_root(root: &Path) -> Result<Self> {
        let index_path = root.join("model_index.json");
        if !root.is_dir() {
            return Err(checkpoint(root, "not a directory"));
        }
        let index = read_json(&index_path).map_err(|e| match e {
            PipelineError::Checkpoint { path, msg } if msg == "missing" => {
                if let Some(evidence) = mflux_evidence(root) {
                    checkpoint(
                        root,
                        format!(
                            "this looks like an mflux/MLX-converted checkpoint ({evidence}, no \
                             model_index.json); qwen-image needs the diffusers layout (e.g. \
                             Qwen/Qwen-Image); use --quantize 4|8 to quantize it on load"
                        ),
                    )
                } else {
                    checkpoint(
                        path,
                        "missing: not a diffusers checkpoint folder (expected model_index.json, \
                         transformer/, vae/, text_encoder/, tokenizer/, scheduler/)",
                    )
                }
            }
            other => other,
        })?;
        let obj = index
            .as_object()
            .ok_or_else(|| checkpoint(&index_path, "must be a JSON object"))?;
        let mut dirs = BTreeMap::new();
        let mut missing = Vec::new();
        for name in COMPONENTS {
            // Each entry is ["library", "Class"]; `null` entries mean "not part of it".
            match obj.get(name) {
                Some(serde_json::Value::Array(v)) if v.len() == 2 && !v[1].is_null() => {
                    let dir = root.join(name);
                    if dir.is_dir() {
                        dirs.insert(name, dir);
                    } else {
                        missing.push(format!("{name}/ (listed in model_index.json)"));
                    }
                }
                _ => missing.push(format!("`{name}` entry in model_index.json")),
            }
        }
        if !missing.is_empty() {
            return Err(checkpoint(
                root,
                format!("incomplete checkpoint: missing {}", missing.join(", ")),
            ));
        }
        let mut take = |n: &str| dirs.remove(n).unwrap_or_default();
        Ok(Self {
            root: root.to_path_buf(),
            transformer: take("transformer"),
            vae: take("vae"),
            text_encoder: take("text_encoder"),
            tokenizer: take("tokenizer"),
            scheduler: take("scheduler"),
        })
    }

    /// Parses every component config and checks that the components fit together.
    pub fn read_configs(&self) -> Result<CheckpointConfigs> {
        let tpath = self.transformer.join("config.json");
        require_file(&tpath)?;
        let transformer = QwenImageTransformerConfig::from_file(&tpath)?;
        transformer.validate()?;
        let vpath = self.vae.join("config.json");
        require_file(&vpath)?;
        let vae = VaeConfig::from_file(&vpath)?;
        let epath = self.text_encoder.join("config.json");
        require_file(&epath)?;
        let text = Qwen2_5_VLConfig::from_file(&epath)?.resolve()?;
        let spath = self.scheduler.join("scheduler_config.json");
        require_file(&spath)?;
        let scheduler = SchedulerConfig::from_file(&spath)?;

        let p = transformer.patch_size;
        let z = vae.z_dim;
        if transformer.in_channels != z * p * p {
            return Err(checkpoint(
                &tpath,
                format!(
                    "in_channels {} does not match the VAE's z_dim {z} packed {p}×{p} ({})",
                    transformer.in_channels,
                    z * p * p
                ),
            ));
        }
        if transformer.out_channels() != z {
            return Err(checkpoint(
                &tpath,
                format!(
                    "out_channels {} does not match the VAE's z_dim {z}",
                    transformer.out_channels()
                ),
            ));
        }
        if transformer.joint_attention_dim != text.hidden_size {
            return Err(checkpoint(
                &tpath,
                format!(
                    "joint_attention_dim {} does not match the text encoder's hidden_size {}",
                    transformer.joint_attention_dim, text.hidden_size
                ),
            ));
        }
        Ok(CheckpointConfigs {
            transformer,
            vae,
            text,
            scheduler,
        })
    }

    /// Checks the files every component needs, without reading weights: tokenizer files,
    /// and for each weight folder its shard index (when present) and the completeness of
    /// every safetensors file.
    pub fn check_files(&self) -> Result<()> {
        let tok = &self.tokenizer;
        let has_json = tok.join("tokenizer.json").is_file();
        let has_bpe = tok.join("vocab.json").is_file() && tok.join("merges.txt").is_file();
        if !(has_json || has_bpe) {
            return Err(checkpoint(
                tok,
                "no tokenizer: expected tokenizer.json, or vocab.json and merges.txt",
            ));
        }
        for dir in [&self.text_encoder, &self.transformer, &self.vae] {
            check_weight_folder(dir)?;
        }
        Ok(())
    }
}

/// Signs that `root` holds weights saved by mflux (MLX) rather than diffusers: numbered
/// shards (`transformer/0.safetensors`, …) or a safetensors header whose `__metadata__` has
/// mflux's `quantization_level` (or `mflux_version`). Looks at `root` and its immediate
/// sub-folders, reading at most a few headers. Returns what was found, for the message.
pub fn mflux_evidence(root: &Path) -> Option<String> {
    let mut dirs = vec![root.to_path_buf()];
    if let Ok(rd) = fs::read_dir(root) {
        let mut subs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        dirs.extend(subs);
    }
    let mut headers_read = 0;
    for dir in &dirs {
        let Ok(rd) = fs::read_dir(dir) else { continue };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
            .collect();
        files.sort();
        let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
        for f in &files {
            let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()) {
                return Some(format!("numbered shards such as {}", rel(f)));
            }
        }
        for f in &files {
            if headers_read >= 8 {
                return None;
            }
            headers_read += 1;
            if let Some(key) = safetensors_metadata(f).and_then(|m| {
                ["quantization_level", "mflux_version"]
                    .into_iter()
                    .find(|k| m.contains_key(*k))
            }) {
                return Some(format!("`{key}` metadata in {}", rel(f)));
            }
        }
    }
    None
}

/// The `__metadata__` object of a safetensors header (`None` when unreadable or absent).
fn safetensors_metadata(path: &Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut f = fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > 100_000_000 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
    match v.get("__metadata__") {
        Some(serde_json::Value::Object(m)) => Some(m.clone()),
        _ => None,
    }
}

fn require_file(path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(checkpoint(path, "missing"))
    }
}

/// Checks a weight folder: with a `*.safetensors.index.json`, every shard it names exists and
/// is complete; otherwise there is at least one `*.safetensors` file and each is complete.
pub fn check_weight_folder(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|source| PipelineError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut index = Vec::new();
    let mut files = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".safetensors.index.json") {
            index.push(p);
        } else if name.ends_with(".safetensors") {
            files.push(p);
        }
    }
    index.sort();
    files.sort();
    if let Some(ipath) = index.first() {
        let v = read_json(ipath)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| checkpoint(ipath, "no `weight_map` object"))?;
        let mut shards: Vec<&str> = map.values().filter_map(|s| s.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        if shards.is_empty() {
            return Err(checkpoint(ipath, "`weight_map` lists no shard"));
        }
        for s in shards {
            let sp = dir.join(s);
            if !sp.is_file() {
                return Err(checkpoint(
                    &sp,
                    format!("missing (listed in {})", ipath.display()),
                ));
            }
            check_safetensors(&sp)?;
        }
    } else {
        if files.is_empty() {
            return Err(checkpoint(dir, "no *.safetensors weights in this folder"));
        }
        for f in &files {
            check_safetensors(f)?;
        }
    }
    Ok(())
}

/// Reads a safetensors header and checks that the file holds all the data it declares.
pub fn check_safetensors(path: &Path) -> Result<()> {
    let bad = |msg: String| checkpoint(path, format!("corrupt safetensors file: {msg}"));
    let io = |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad(format!("{size} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > 100_000_000 || 8 + n > size {
        return Err(bad(format!(
            "header length {n} does not fit the file's {size} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let mut end = 0u64;
    for (k, t) in obj {
        if k == "__metadata__" {
            continue;
        }
        let off = t
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad(format!("tensor `{k}` has no data_offsets")))?;
        let e = off[1]
            .as_u64()
            .ok_or_else(|| bad(format!("tensor `{k}` has bad data_offsets")))?;
        end = end.max(e);
    }
    let data = size - 8 - n;
    if end > data {
        return Err(bad(format!(
            "truncated: the header declares {end} bytes of data, the file holds {data}"
        )));
    }
    Ok(())
}
