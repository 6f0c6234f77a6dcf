//! A Qwen-Image checkpoint folder in the diffusers layout: which component lives where, the
//! cheap checks run before anything heavy is loaded, and the configs that fix every size.
//!
//! `model_index.json` names the pipeline ([`PipelineKind`]) and the components
//! (`transformer`, `vae`, `text_encoder`, `tokenizer`, `scheduler`, and for the edit pipelines
//! `processor`); each is a sub-folder of that name. Before any weights are read
//! this module checks that every config parses, that the components fit together (latent
//! channels, text width, patch size) and that every safetensors file is complete (its header
//! parses and its data extends to the end the header promises) — so a truncated shard is
//! reported before minutes of text encoding, not after.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use flow_scheduler::{FlowMatchEulerScheduler, SchedulerConfig};
use qwen_dit::QwenImageTransformerConfig;
use qwen_text_encoder::{Qwen2_5_VLConfig, TextConfig};
use qwen_vae::VaeConfig;

use crate::error::{PipelineError, Result, checkpoint};

/// The component folders of a checkpoint.
#[derive(Debug, Clone)]
pub struct ComponentPaths {
    /// The checkpoint root (holds `model_index.json`).
    pub root: PathBuf,
    /// The pipeline class `model_index.json` names (`QwenImagePipeline`, …).
    pub pipeline_class: String,
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
    /// `processor/` (tokenizer and image processor of the edit pipelines; `None` for
    /// text-to-image checkpoints).
    pub processor: Option<PathBuf>,
}

/// What a checkpoint's pipeline does, from `model_index.json`'s `_class_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineKind {
    /// `QwenImagePipeline` (and the img2img / inpainting pipelines, which share its
    /// components): a prompt, optionally a picture to start from.
    TextToImage,
    /// `QwenImageEditPipeline` (Qwen-Image-Edit): exactly one picture to edit.
    Edit,
    /// `QwenImageEditPlusPipeline` (Qwen-Image-Edit-2509, -2511): one or more pictures.
    EditPlus,
}

/// The pipeline classes `qwen-image edit` serves.
pub const EDIT_PIPELINE_CLASSES: [&str; 2] = ["QwenImageEditPipeline", "QwenImageEditPlusPipeline"];

impl PipelineKind {
    /// The kind of a `_class_name` ([`PIPELINE_CLASSES`]); `None` for any other class.
    pub fn from_class(class: &str) -> Option<Self> {
        match class {
            "QwenImagePipeline" | "QwenImageImg2ImgPipeline" | "QwenImageInpaintPipeline" => {
                Some(Self::TextToImage)
            }
            "QwenImageEditPipeline" => Some(Self::Edit),
            "QwenImageEditPlusPipeline" => Some(Self::EditPlus),
            _ => None,
        }
    }

    /// Whether the pipeline edits pictures (needs the vision tower and `processor/`).
    pub fn is_edit(self) -> bool {
        self != Self::TextToImage
    }

    /// The diffusers class this kind stands for.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::TextToImage => "QwenImagePipeline",
            Self::Edit => "QwenImageEditPipeline",
            Self::EditPlus => "QwenImageEditPlusPipeline",
        }
    }
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
    /// The pipeline (`model_index.json`'s `_class_name`).
    pub kind: PipelineKind,
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

    /// Checks each config and that the components fit together: transformer
    /// `in_channels = z_dim·p²`, `out_channels = z_dim`, `joint_attention_dim` = the text
    /// encoder's hidden size, and a scheduler config the scheduler can run. Errors name
    /// `transformer_config` (the file, or a label for configs made in memory).
    pub fn check_fit(&self, transformer_config: &Path) -> Result<()> {
        self.transformer.validate()?;
        self.vae.validate()?;
        let t = &self.transformer;
        let (p, z) = (t.patch_size, self.vae.z_dim);
        let fit = |ok: bool, msg: String| {
            if ok {
                Ok(())
            } else {
                Err(checkpoint(
                    transformer_config,
                    format!("components do not fit together: {msg}"),
                ))
            }
        };
        fit(
            Some(t.in_channels) == z.checked_mul(p).and_then(|x| x.checked_mul(p)),
            format!(
                "in_channels {} does not match the VAE's z_dim {z} packed {p}×{p}",
                t.in_channels
            ),
        )?;
        fit(
            t.out_channels() == z,
            format!(
                "out_channels {} does not match the VAE's z_dim {z}",
                t.out_channels()
            ),
        )?;
        fit(
            t.joint_attention_dim == self.text.hidden_size,
            format!(
                "joint_attention_dim {} does not match the text encoder's hidden_size {}",
                t.joint_attention_dim, self.text.hidden_size
            ),
        )?;
        FlowMatchEulerScheduler::new(self.scheduler.clone())?;
        Ok(())
    }
}

/// The diffusers pipeline classes whose checkpoints this engine reads.
pub const PIPELINE_CLASSES: [&str; 5] = [
    "QwenImagePipeline",
    "QwenImageImg2ImgPipeline",
    "QwenImageInpaintPipeline",
    "QwenImageEditPipeline",
    "QwenImageEditPlusPipeline",
];

/// The classes a component of a Qwen-Image checkpoint may be.
fn component_classes(name: &str) -> &'static [&'static str] {
    match name {
        "transformer" => &["QwenImageTransformer2DModel"],
        "vae" => &["AutoencoderKLQwenImage"],
        "text_encoder" => &["Qwen2_5_VLForConditionalGeneration"],
        "tokenizer" => &["Qwen2Tokenizer", "Qwen2TokenizerFast"],
        "scheduler" => &["FlowMatchEulerDiscreteScheduler"],
        "processor" => &["Qwen2VLProcessor", "Qwen2_5_VLProcessor"],
        _ => &[],
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
    let text = mlx_weights::read_regular_file(path).map_err(|e| match e {
        mlx_weights::WeightsError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            checkpoint(path, "missing")
        }
        mlx_weights::WeightsError::Io { source, .. } => {
            checkpoint(path, format!("cannot read: {source}"))
        }
        e => e.into(),
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
                    PipelineError::MfluxCheckpoint {
                        root: root.to_path_buf(),
                        evidence,
                    }
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
        let class = obj
            .get("_class_name")
            .and_then(|c| c.as_str())
            .ok_or_else(|| checkpoint(&index_path, "no `_class_name` naming the pipeline"))?;
        if !PIPELINE_CLASSES.contains(&class) {
            return Err(checkpoint(
                &index_path,
                format!(
                    "`_class_name` is {class}; this engine runs Qwen-Image pipelines ({})",
                    PIPELINE_CLASSES.join(", ")
                ),
            ));
        }
        let kind = PipelineKind::from_class(class).unwrap_or(PipelineKind::TextToImage);
        let wanted: &[&str] = if kind.is_edit() { &["processor"] } else { &[] };
        for &name in COMPONENTS.iter().chain(wanted) {
            // Each entry is ["library", "Class"]; `null` entries mean "not part of it".
            match obj.get(name) {
                Some(serde_json::Value::Array(v)) if v.len() == 2 && !v[1].is_null() => {
                    let expected = component_classes(name);
                    match v[1].as_str() {
                        Some(c) if expected.contains(&c) => {}
                        other => {
                            return Err(checkpoint(
                                &index_path,
                                format!(
                                    "component `{name}` is {}; expected {}",
                                    other.map_or_else(|| v[1].to_string(), str::to_string),
                                    expected.join(" or ")
                                ),
                            ));
                        }
                    }
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
        let processor = dirs.remove("processor");
        let mut take = |n: &str| dirs.remove(n).unwrap_or_default();
        Ok(Self {
            pipeline_class: class.to_string(),
            root: root.to_path_buf(),
            transformer: take("transformer"),
            vae: take("vae"),
            text_encoder: take("text_encoder"),
            tokenizer: take("tokenizer"),
            scheduler: take("scheduler"),
            processor,
        })
    }

    /// The pipeline kind `model_index.json` names.
    pub fn kind(&self) -> PipelineKind {
        PipelineKind::from_class(&self.pipeline_class).unwrap_or(PipelineKind::TextToImage)
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

        let configs = CheckpointConfigs {
            transformer,
            vae,
            text,
            scheduler,
            kind: self.kind(),
        };
        configs.check_fit(&tpath)?;
        Ok(configs)
    }

    /// Checks the files every component needs, without reading weights: tokenizer files,
    /// and for each weight folder its shard index (when present), every safetensors header
    /// (complete, consistent) and every tensor's name, shape and dtype against the
    /// component's config — so a broken VAE or text encoder fails here, in milliseconds, not
    /// after the denoising.
    pub fn check_files(&self, configs: &CheckpointConfigs) -> Result<()> {
        let tok = &self.tokenizer;
        let has_json = tok.join("tokenizer.json").is_file();
        let has_bpe = tok.join("vocab.json").is_file() && tok.join("merges.txt").is_file();
        if !(has_json || has_bpe) {
            return Err(checkpoint(
                tok,
                "no tokenizer: expected tokenizer.json, or vocab.json and merges.txt",
            ));
        }
        qwen_text_encoder::check_checkpoint(&self.text_encoder, &configs.text)?;
        if let Some(proc) = &self.processor {
            // The edit pipelines read the tokenizer and the image processor from here, and
            // the vision tower's weights from the text encoder.
            let has_json = proc.join("tokenizer.json").is_file();
            let has_bpe = proc.join("vocab.json").is_file() && proc.join("merges.txt").is_file();
            if !(has_json || has_bpe) {
                return Err(checkpoint(
                    proc,
                    "no tokenizer: expected tokenizer.json, or vocab.json and merges.txt",
                ));
            }
            require_file(&proc.join("preprocessor_config.json"))?;
            qwen_text_encoder::vision::check_checkpoint(&self.text_encoder)?;
        }
        qwen_dit::check_checkpoint(&self.transformer, &configs.transformer)?;
        qwen_vae::check_checkpoint(&self.vae, &configs.vae)?;
        Ok(())
    }
}

/// Whether `root` holds a complete checkpoint: `model_index.json`, every component with its
/// config and every weight file its index names, consistent with the configs (the checks
/// [`crate::QwenImagePipeline::load`] runs, from headers; nothing is loaded).
pub fn is_complete(root: &Path) -> bool {
    ComponentPaths::from_root(root)
        .and_then(|p| {
            let c = p.read_configs()?;
            p.check_files(&c)
        })
        .is_ok()
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
            if let Some(key) = mlx_weights::read_header(f).ok().and_then(|h| {
                ["quantization_level", "mflux_version"]
                    .into_iter()
                    .find(|k| h.metadata.contains_key(*k))
            }) {
                return Some(format!("`{key}` metadata in {}", rel(f)));
            }
        }
    }
    None
}

fn require_file(path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => Err(checkpoint(
            path,
            format!(
                "is {}, not a regular file",
                mlx_weights::describe_file_type(&m)
            ),
        )),
        Err(_) if fs::symlink_metadata(path).is_ok() => {
            Err(checkpoint(path, "is a link to nothing"))
        }
        Err(_) => Err(checkpoint(path, "missing")),
    }
}
