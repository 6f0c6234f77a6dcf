//! What made an image, written into the PNG and read back: reproducible outputs.
//!
//! Each PNG carries its generation parameters twice, in text chunks: the keyword
//! `qwen-image` holds a [`GenerationRecord`] as JSON (UTF-8, an `iTXt` chunk), and the keyword
//! `parameters` holds the form most tools read (the AUTOMATIC1111 layout: the prompt, a
//! `Negative prompt:` line, then `Key: value` pairs). [`read_png_record`] reads the JSON back,
//! so a run can be repeated from its picture.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};

/// The keyword of the JSON record.
pub const JSON_KEYWORD: &str = "qwen-image";
/// The keyword of the human-readable parameters.
pub const PARAMETERS_KEYWORD: &str = "parameters";

/// Everything needed to make an image again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// The engine and its version (`qwen-image-rs 0.1.0`).
    pub engine: String,
    /// The model (hub id or folder) as given.
    pub model: String,
    /// The prompt.
    pub prompt: String,
    /// The negative prompt, if any.
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// The seed of this image (already `seed + i` for image `i`); `None` when the noise came
    /// from a file.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Denoising steps of the schedule.
    pub steps: usize,
    /// True CFG scale.
    pub true_cfg_scale: f32,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The sampler (always the flow-matching Euler scheduler).
    pub sampler: String,
    /// Scheduler config keys that replaced the checkpoint's, if any.
    #[serde(default)]
    pub scheduler_overrides: Option<serde_json::Map<String, serde_json::Value>>,
    /// LoRAs (file name or in-memory name, scale).
    #[serde(default)]
    pub loras: Vec<(String, f32)>,
    /// Compute dtype (`f32`, `bf16`, `f16`).
    pub dtype: String,
    /// Quantization bits of the transformer, if quantized on load.
    #[serde(default)]
    pub quantize: Option<i32>,
    /// Maximum prompt length in tokens.
    pub max_sequence_length: usize,
    /// img2img / inpainting strength, with an init image.
    #[serde(default)]
    pub strength: Option<f64>,
    /// The init image's file, with img2img / inpainting.
    #[serde(default)]
    pub init_image: Option<String>,
    /// The mask's file, with inpainting.
    #[serde(default)]
    pub mask: Option<String>,
    /// The files of the pictures edited, in order (an edit pipeline's run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edit_images: Vec<String>,
}

impl GenerationRecord {
    /// The record of image `index` of `req`, run on `model` (as the user named it) in
    /// `dtype`, quantized to `quantize` bits or not; `init_image` / `mask` are the file names
    /// of an img2img / inpainting request.
    pub fn for_request(
        req: &crate::GenerateRequest,
        model: &str,
        dtype: crate::ComputeDtype,
        quantize: Option<i32>,
        index: usize,
        init_image: Option<&Path>,
        mask: Option<&Path>,
    ) -> Self {
        GenerationRecord {
            engine: format!("qwen-image-rs {}", env!("CARGO_PKG_VERSION")),
            model: model.to_string(),
            prompt: req.prompt.clone(),
            negative_prompt: req.negative_prompt.clone(),
            seed: match req.noise {
                crate::Noise::Seed(s) => Some(s.wrapping_add(index as u64)),
                crate::Noise::Latents(_) => None,
            },
            steps: req.steps,
            true_cfg_scale: req.true_cfg_scale,
            width: req.width,
            height: req.height,
            sampler: "FlowMatchEulerDiscrete".into(),
            scheduler_overrides: req.scheduler_overrides.as_ref().map(|o| o.keys.clone()),
            loras: req.loras.iter().map(|l| (l.name(), l.scale)).collect(),
            dtype: dtype.to_string(),
            quantize,
            max_sequence_length: req.max_sequence_length,
            strength: req.init_image.as_ref().map(|i| i.strength),
            init_image: init_image.map(|p| p.display().to_string()),
            mask: mask.map(|p| p.display().to_string()),
            edit_images: Vec::new(),
        }
    }

    /// The `parameters` text (AUTOMATIC1111's layout).
    pub fn parameters_text(&self) -> String {
        let mut s = self.prompt.clone();
        if let Some(n) = &self.negative_prompt {
            s.push_str(&format!("\nNegative prompt: {n}"));
        }
        let mut kv = vec![
            format!("Steps: {}", self.steps),
            format!("Sampler: {}", self.sampler),
            format!("CFG scale: {}", self.true_cfg_scale),
        ];
        if let Some(seed) = self.seed {
            kv.push(format!("Seed: {seed}"));
        }
        kv.push(format!("Size: {}x{}", self.width, self.height));
        kv.push(format!("Model: {}", self.model));
        if let Some(st) = self.strength {
            kv.push(format!("Denoising strength: {st}"));
        }
        if !self.edit_images.is_empty() {
            kv.push(format!("Edit images: {}", self.edit_images.join(", ")));
        }
        for (name, scale) in &self.loras {
            kv.push(format!("Lora: {name}:{scale}"));
        }
        if let Some(o) = &self.scheduler_overrides {
            kv.push(format!(
                "Schedule: {}",
                serde_json::Value::Object(o.clone())
            ));
        }
        kv.push(format!("Dtype: {}", self.dtype));
        if let Some(q) = self.quantize {
            kv.push(format!("Quantize: {q}-bit"));
        }
        kv.push(format!("Version: {}", self.engine));
        s.push('\n');
        s.push_str(&kv.join(", "));
        s
    }

    /// The text chunks to write: (keyword, UTF-8 text).
    pub fn chunks(&self) -> Vec<(String, String)> {
        vec![
            (
                JSON_KEYWORD.to_string(),
                serde_json::to_string(self).unwrap_or_default(),
            ),
            (PARAMETERS_KEYWORD.to_string(), self.parameters_text()),
        ]
    }
}

/// The record a PNG written by this engine carries.
pub fn read_png_record(path: &Path) -> Result<GenerationRecord> {
    let err = |msg: String| PipelineError::InputImage {
        path: path.to_path_buf(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| err(format!("not a PNG: {e}")))?;
    let info = reader.info();
    let text = info
        .utf8_text
        .iter()
        .find(|c| c.keyword == JSON_KEYWORD)
        .and_then(|c| c.get_text().ok())
        .or_else(|| {
            info.uncompressed_latin1_text
                .iter()
                .find(|c| c.keyword == JSON_KEYWORD)
                .map(|c| c.text.clone())
        })
        .ok_or_else(|| {
            err(format!(
                "no `{JSON_KEYWORD}` text chunk: not written by qwen-image (or written with \
                 metadata off)"
            ))
        })?;
    serde_json::from_str(&text).map_err(|e| err(format!("the `{JSON_KEYWORD}` record: {e}")))
}

/// The prompts of a prompt file: one per line, blank lines and lines starting with `#`
/// skipped, each with its 1-based line number.
pub fn read_prompt_file(path: &Path) -> Result<Vec<(usize, String)>> {
    let err = |msg: String| PipelineError::InvalidRequest {
        field: crate::Field::Prompt,
        msg: format!("prompt file {}: {msg}", path.display()),
    };
    let text = mlx_weights::read_regular_file(path).map_err(|e| err(e.to_string()))?;
    let list: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .collect();
    if list.is_empty() {
        return Err(err(
            "no prompt in it (blank lines and # comments are skipped)".into(),
        ));
    }
    Ok(list)
}
