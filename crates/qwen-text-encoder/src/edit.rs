//! Prompt encoding of the edit pipelines: the prompt and the pictures it refers to, through
//! the vision tower and the language model, as diffusers 0.42.1's `QwenImageEditPipeline`
//! (one picture) and `QwenImageEditPlusPipeline` (one or more, "Picture i:" blocks) do in
//! `_get_qwen_prompt_embeds` — with one deliberate difference: the image tokens get Qwen2.5-VL's
//! 3-D M-RoPE positions (what the model was released with, and what diffusers does once PR
//! #14189 forwards `mm_token_type_ids`); diffusers 0.42.1 with transformers 5.x silently gives
//! every token a 1-D position instead (issue #14194).
//!
//! 1. the edit system prompt, then per picture `<|vision_start|><|image_pad|><|vision_end|>`
//!    (Plus: preceded by `Picture i: `), the prompt, the assistant suffix;
//! 2. each `<|image_pad|>` expanded to one token per merge unit of its picture, tokenized
//!    without truncation;
//! 3. the pictures' patches ([`crate::processor`]) through the [`VisionTower`], the features
//!    placed on the image tokens, the language model with 3-D positions, its last hidden state;
//! 4. the system prefix's tokens dropped (64 with the real tokenizer: the length of the
//!    tokenized prefix, derived here as for text-to-image).

use std::path::Path;

use mlx_rs::{Array, Dtype, ops};

use crate::config::Qwen2_5_VLConfig;
use crate::encoder::PromptEmbeds;
use crate::error::{Result, TextEncoderError};
use crate::model::QwenTextModel;
use crate::processor::ImageProcessorConfig;
use crate::rope::rope_index;
use crate::tokenizer::QwenTokenizer;
use crate::vision::{Grid, VisionTower, place_image_tokens};
use crate::weights::load_weights;

/// The edit pipelines' system prompt up to the user turn (`prompt_template_encode` before the
/// picture blocks).
pub const EDIT_PREFIX: &str = "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, background), then explain how the user's text instruction should alter or modify the image. Generate a new image that meets the user's requirements while maintaining consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n";

/// What follows the prompt.
pub const EDIT_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n";

/// One picture's place in the prompt.
pub const PICTURE_BLOCK: &str = "<|vision_start|><|image_pad|><|vision_end|>";

const IMAGE_PAD: &str = "<|image_pad|>";

/// Which pipeline's template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditTemplate {
    /// `QwenImageEditPipeline`: exactly one picture, its block right before the prompt.
    Edit,
    /// `QwenImageEditPlusPipeline`: one or more, each as `Picture i: <block>`.
    Plus,
}

/// Tokenizer, language model, vision tower and image processor of an edit checkpoint.
pub struct EditEncoder {
    tokenizer: QwenTokenizer,
    model: QwenTextModel,
    tower: VisionTower,
    processor: ImageProcessorConfig,
    template: EditTemplate,
    drop_idx: usize,
    image_token_id: u32,
}

impl EditEncoder {
    /// Loads `text_encoder/` (language model and vision tower, weights cast to `dtype`) and
    /// `processor/` (tokenizer and `preprocessor_config.json`).
    pub fn load(
        text_encoder_dir: &Path,
        processor_dir: &Path,
        template: EditTemplate,
        dtype: Dtype,
    ) -> Result<Self> {
        mlx_fastops::ComputeDtype::try_from(dtype)?;
        let config_path = text_encoder_dir.join("config.json");
        let cfg = Qwen2_5_VLConfig::from_file(&config_path)?.resolve()?;
        let raw = mlx_weights::read_json_object(&config_path)?;
        let image_token_id = raw
            .get("image_token_id")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(151_655) as u32;
        let tokenizer = QwenTokenizer::from_dir(processor_dir)?;
        if tokenizer.token_to_id(IMAGE_PAD) != Some(image_token_id) {
            return Err(TextEncoderError::InvalidConfig(format!(
                "{}: the tokenizer's {IMAGE_PAD} is {:?}, the text encoder's image_token_id {image_token_id}",
                processor_dir.display(),
                tokenizer.token_to_id(IMAGE_PAD)
            )));
        }
        let processor =
            ImageProcessorConfig::from_file(&processor_dir.join("preprocessor_config.json"))?;
        let tower = VisionTower::load(text_encoder_dir, dtype)?;
        let weights = load_weights(text_encoder_dir, &cfg, dtype)?;
        let model = QwenTextModel::new(cfg, weights, dtype)?;
        Self::from_parts(tokenizer, model, tower, processor, template)
    }

    /// An encoder from parts made in memory (e.g. random full-size weights for benchmarks);
    /// the tokenizer's `<|image_pad|>` is the image token.
    pub fn from_parts(
        tokenizer: QwenTokenizer,
        model: QwenTextModel,
        tower: VisionTower,
        processor: ImageProcessorConfig,
        template: EditTemplate,
    ) -> Result<Self> {
        let image_token_id = tokenizer.token_to_id(IMAGE_PAD).ok_or_else(|| {
            TextEncoderError::InvalidConfig(format!("the tokenizer has no {IMAGE_PAD} token"))
        })?;
        let merge = tower.config().spatial_merge_size;
        if processor.merge_size != merge || processor.patch_size != tower.config().patch_size {
            return Err(TextEncoderError::InvalidConfig(format!(
                "the processor cuts patches of {} merged {}×{}, the vision tower expects {} merged {m}×{m}",
                processor.patch_size,
                processor.merge_size,
                processor.merge_size,
                tower.config().patch_size,
                m = merge
            )));
        }
        let drop_idx = tokenizer.encode(EDIT_PREFIX)?.len();
        Ok(Self {
            tokenizer,
            model,
            tower,
            processor,
            template,
            drop_idx,
            image_token_id,
        })
    }

    /// The template (which pipeline's prompt format).
    pub fn template(&self) -> EditTemplate {
        self.template
    }

    /// The image processor's settings (the size to resize each picture to, the patches).
    pub fn processor(&self) -> &ImageProcessorConfig {
        &self.processor
    }

    /// Tokens dropped from the front (the system prefix's length).
    pub fn drop_index(&self) -> usize {
        self.drop_idx
    }

    /// The text before expansion: template, picture blocks, prompt.
    pub fn prompt_text(&self, prompt: &str, pictures: usize) -> String {
        let blocks: String = match self.template {
            EditTemplate::Edit => PICTURE_BLOCK.to_string(),
            EditTemplate::Plus => (1..=pictures)
                .map(|i| format!("Picture {i}: {PICTURE_BLOCK}"))
                .collect(),
        };
        format!("{EDIT_PREFIX}{blocks}{prompt}{EDIT_SUFFIX}")
    }

    /// Encodes `prompt` with `pictures` (each the processor's patches of one picture and its
    /// grid, [`ImageProcessorConfig::pixel_values`]): `(1, T, hidden)` embeddings, all valid.
    pub fn encode(&self, prompt: &str, pictures: &[(Array, Grid)]) -> Result<PromptEmbeds> {
        match (self.template, pictures.len()) {
            (_, 0) => {
                return Err(TextEncoderError::InvalidInput(
                    "an edit needs at least one picture".to_string(),
                ));
            }
            (EditTemplate::Edit, n) if n > 1 => {
                return Err(TextEncoderError::InvalidInput(format!(
                    "QwenImageEditPipeline takes exactly one picture, got {n}"
                )));
            }
            _ => {}
        }
        let merge = self.tower.config().spatial_merge_size;
        let counts: Vec<usize> = pictures
            .iter()
            .map(|(_, g)| g.patches() / (merge * merge))
            .collect();
        // Each image pad becomes one token per merge unit of its picture, in order.
        let text = self.prompt_text(prompt, pictures.len());
        let mut expanded = String::with_capacity(text.len());
        let mut parts = text.split(IMAGE_PAD);
        expanded.push_str(parts.next().unwrap_or_default());
        for (i, part) in parts.enumerate() {
            let n = counts.get(i).copied().ok_or_else(|| {
                TextEncoderError::InvalidInput(
                    "the prompt holds more image pads than there are pictures".to_string(),
                )
            })?;
            expanded.push_str(&IMAGE_PAD.repeat(n));
            expanded.push_str(part);
        }
        let ids = self.tokenizer.encode(&expanded)?;
        let is_image: Vec<bool> = ids.iter().map(|&i| i == self.image_token_id).collect();
        let pads = is_image.iter().filter(|&&v| v).count();
        if pads != counts.iter().sum::<usize>() {
            return Err(TextEncoderError::InvalidInput(format!(
                "{pads} image tokens for pictures of {counts:?} tokens (the prompt must not \
                 contain {IMAGE_PAD} itself)"
            )));
        }
        let t = ids.len();
        if t <= self.drop_idx {
            return Err(TextEncoderError::InvalidInput(
                "no token is left after the template prefix".to_string(),
            ));
        }
        let row: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let pixel_rows: Vec<&Array> = pictures.iter().map(|(p, _)| p).collect();
        let grids: Vec<Grid> = pictures.iter().map(|(_, g)| *g).collect();
        let pixels = ops::concatenate(&pixel_rows, 0)?;
        let features = self.tower.forward(&pixels, &grids)?;
        let input = Array::from_slice(&row, &[1, t as i32]);
        let embeds = place_image_tokens(
            &self.model.embed(&input)?,
            std::slice::from_ref(&row),
            self.image_token_id as i32,
            &features,
        )?;
        let positions = rope_index(&is_image, &vec![true; t], &mut grids.iter().copied(), merge)?;
        let hidden = self
            .model
            .forward_embeds(&embeds, Some(&[positions]), None)?;
        let kept = t - self.drop_idx;
        let idx: Vec<i32> = (self.drop_idx as i32..t as i32).collect();
        let embeds = hidden.take_axis(Array::from_slice(&idx, &[kept as i32]), 1)?;
        Ok(PromptEmbeds {
            embeds,
            mask: Array::from_slice(&vec![1i32; kept], &[1, kept as i32]),
            lengths: vec![kept],
            warnings: Vec::new(),
        })
    }
}
