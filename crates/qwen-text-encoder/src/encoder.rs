//! Prompt encoding exactly as diffusers' `QwenImagePipeline` does it.
//!
//! Mirrors `_get_qwen_prompt_embeds` and `encode_prompt` in
//! `diffusers/pipelines/qwenimage/pipeline_qwenimage.py` (0.42.1):
//! 1. each prompt is wrapped in [`PROMPT_TEMPLATE`];
//! 2. the batch is tokenized with padding to the longest row and truncation to
//!    `tokenizer_max_length + drop_idx` tokens ([`TOKENIZER_MAX_LENGTH`] = 1024);
//! 3. the language model runs with that attention mask; its last hidden state (after the
//!    final norm) is taken;
//! 4. each row keeps its mask-valid tokens minus the first `drop_idx` (the template's system
//!    prefix: 34 tokens with the real tokenizer — derived here by tokenizing the prefix);
//! 5. rows are zero-padded to the longest, with a 1/0 mask, and cut to `max_sequence_length`.
//!
//! Truncation (step 2 or 5) is silent in diffusers; here each one adds a line to
//! [`PromptEmbeds::warnings`].

use std::path::Path;

use mlx_rs::{Array, Dtype, ops};

use crate::config::Qwen2_5_VLConfig;
use crate::error::{Result, TextEncoderError};
use crate::model::QwenTextModel;
use crate::tokenizer::{Batch, QwenTokenizer, Side};
use crate::weights::load_weights;

/// The pipeline's prompt template (`prompt_template_encode`); `{}` is replaced by the prompt.
pub const PROMPT_TEMPLATE: &str = "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";

/// The pipeline's `tokenizer_max_length`: prompts are truncated to this many tokens after the
/// template prefix at tokenization.
pub const TOKENIZER_MAX_LENGTH: usize = 1024;

/// `QwenImagePipeline.__call__`'s default `max_sequence_length`.
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;

/// The largest `max_sequence_length` the pipeline accepts (`check_inputs`).
pub const MAX_SEQUENCE_LENGTH_LIMIT: usize = 1024;

/// Number of tokens of the template's system prefix (everything before `{}`) with
/// `tokenizer`: the pipeline's `prompt_template_encode_start_idx` (34 with Qwen2's tokenizer).
pub fn template_drop_index(tokenizer: &QwenTokenizer) -> Result<usize> {
    let (prefix, _) = PROMPT_TEMPLATE
        .split_once("{}")
        .ok_or_else(|| TextEncoderError::InvalidInput("template has no {}".to_string()))?;
    Ok(tokenizer.encode(prefix)?.len())
}

/// Encoded prompts: what the DiT receives as `encoder_hidden_states` and its mask.
#[derive(Debug)]
pub struct PromptEmbeds {
    /// `(B, T, hidden)` in the encoder's dtype; rows past a prompt's length are zeros.
    pub embeds: Array,
    /// `(B, T)` int32, 1 for real tokens, 0 for padding.
    pub mask: Array,
    /// Number of real tokens of each prompt (≤ T).
    pub lengths: Vec<usize>,
    /// One line per truncation that happened (empty when nothing was cut).
    pub warnings: Vec<String>,
}

/// Tokenizer + Qwen2.5-VL language model, encoding prompts as `QwenImagePipeline` does.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: QwenTokenizer,
    model: QwenTextModel,
    prefix: String,
    suffix: String,
    drop_idx: usize,
}

impl TextEncoder {
    /// Loads a checkpoint's `text_encoder/` (config + safetensors, sharded or not) and
    /// `tokenizer/` folders, with weights cast to `dtype` (f32, bf16 or f16). The weights are
    /// evaluated here, layer by layer, so the first encode does not pay for the casts.
    pub fn load(text_encoder_dir: &Path, tokenizer_dir: &Path, dtype: Dtype) -> Result<Self> {
        mlx_fastops::ComputeDtype::try_from(dtype)?;
        let tokenizer = QwenTokenizer::from_dir(tokenizer_dir)?;
        let cfg = Qwen2_5_VLConfig::from_file(&text_encoder_dir.join("config.json"))?.resolve()?;
        let weights = load_weights(text_encoder_dir, &cfg, dtype)?;
        let model = QwenTextModel::new(cfg, weights, dtype)?;
        Self::from_parts(tokenizer, model)
    }

    /// Combines an already loaded tokenizer and model; derives the template's drop index.
    pub fn from_parts(tokenizer: QwenTokenizer, model: QwenTextModel) -> Result<Self> {
        let (prefix, suffix) = PROMPT_TEMPLATE
            .split_once("{}")
            .ok_or_else(|| TextEncoderError::InvalidInput("template has no {}".to_string()))?;
        let drop_idx = template_drop_index(&tokenizer)?;
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(TextEncoderError::InvalidConfig(format!(
                "tokenizer has {} tokens but the embedding table only {} rows",
                tokenizer.vocab_size(),
                model.config().vocab_size
            )));
        }
        Ok(Self {
            tokenizer,
            model,
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
            drop_idx,
        })
    }

    /// Number of leading template tokens dropped from each prompt's hidden states (the
    /// pipeline's `prompt_template_encode_start_idx`; 34 with the real Qwen2 tokenizer).
    pub fn drop_index(&self) -> usize {
        self.drop_idx
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &QwenTokenizer {
        &self.tokenizer
    }

    /// The language model.
    pub fn model(&self) -> &QwenTextModel {
        &self.model
    }

    /// `prompt` inside the pipeline's template.
    pub fn apply_template(&self, prompt: &str) -> String {
        format!("{}{prompt}{}", self.prefix, self.suffix)
    }

    /// Tokenizes prompts exactly as the pipeline does (template, padding to the longest,
    /// truncation to `TOKENIZER_MAX_LENGTH + drop_index`).
    pub fn tokenize_prompts(&self, prompts: &[&str]) -> Result<Batch> {
        let texts: Vec<String> = prompts.iter().map(|p| self.apply_template(p)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        self.tokenizer
            .encode_batch(&refs, TOKENIZER_MAX_LENGTH + self.drop_idx)
    }

    /// Encodes a batch of prompts: `(B, T, hidden)` embeddings of the longest prompt's length
    /// (at most `max_sequence_length`), a `(B, T)` mask and the per-prompt lengths.
    ///
    /// `max_sequence_length` must be in `1..=1024` ([`DEFAULT_MAX_SEQUENCE_LENGTH`] is the
    /// pipeline's default). The result is lazy: evaluate it (or use
    /// [`TextEncoder::encode_and_release`]) before dropping the encoder to free its weights.
    pub fn encode_prompts(
        &self,
        prompts: &[&str],
        max_sequence_length: usize,
    ) -> Result<PromptEmbeds> {
        if prompts.is_empty() {
            return Err(TextEncoderError::InvalidInput("no prompts".to_string()));
        }
        if max_sequence_length == 0 || max_sequence_length > MAX_SEQUENCE_LENGTH_LIMIT {
            return Err(TextEncoderError::InvalidInput(format!(
                "max_sequence_length must be in 1..={MAX_SEQUENCE_LENGTH_LIMIT}, got {max_sequence_length}"
            )));
        }
        let batch = self.tokenize_prompts(prompts)?;
        let mut warnings = Vec::new();
        for (i, cut) in batch.truncated.iter().enumerate() {
            if *cut {
                warnings.push(format!(
                    "prompt {i} is longer than {TOKENIZER_MAX_LENGTH} tokens with the template; \
                     truncated at tokenization (the template's end is cut off too)"
                ));
            }
        }
        let drop = self.drop_idx;
        let t_full = batch.input_ids.first().map_or(0, Vec::len);
        let valid: Vec<usize> = batch
            .attention_mask
            .iter()
            .map(|m| m.iter().filter(|&&v| v).count())
            .collect();
        let kept: Vec<usize> = valid.iter().map(|v| v.saturating_sub(drop)).collect();
        let longest = kept.iter().copied().max().unwrap_or(0);
        let t_out = longest.min(max_sequence_length);
        if t_out == 0 {
            return Err(TextEncoderError::InvalidInput(
                "no token is left after the template prefix".to_string(),
            ));
        }
        for (i, &k) in kept.iter().enumerate() {
            if k > max_sequence_length {
                warnings.push(format!(
                    "prompt {i} has {k} tokens; truncated to max_sequence_length {max_sequence_length}"
                ));
            }
        }
        // With right padding every row starts at column 0 and attention is causal, so the
        // columns after `drop + t_out` cannot change the kept rows: skip computing them.
        let right = self.tokenizer.padding_side() == Side::Right;
        let t_run = if right {
            t_full.min(drop + t_out)
        } else {
            t_full
        };
        let b = prompts.len();
        let mut ids = Vec::with_capacity(b * t_run);
        let mut mask_rows = Vec::with_capacity(b);
        let mut starts = Vec::with_capacity(b);
        for (row, m) in batch.input_ids.iter().zip(&batch.attention_mask) {
            ids.extend(row[..t_run].iter().map(|&x| x as i32));
            mask_rows.push(m[..t_run].to_vec());
            starts.push(m.iter().position(|&v| v).unwrap_or(0));
        }
        let ids = Array::from_slice(&ids, &[b as i32, t_run as i32]);
        let attn = self.model.attention_mask(&mask_rows)?;
        let hidden = self.model.forward(&ids, attn.as_ref())?;
        let h = self.model.config().hidden_size as i32;

        // Gather row b, position t ← hidden[b, start_b + drop + t] for t < length_b.
        let lengths: Vec<usize> = kept.iter().map(|&k| k.min(t_out)).collect();
        let mut index = vec![0i32; b * t_out];
        let mut keep = vec![0i32; b * t_out];
        for bi in 0..b {
            for t in 0..lengths[bi] {
                index[bi * t_out + t] = (bi * t_run + starts[bi] + drop + t) as i32;
                keep[bi * t_out + t] = 1;
            }
        }
        let index = Array::from_slice(&index, &[(b * t_out) as i32]);
        let mask = Array::from_slice(&keep, &[b as i32, t_out as i32]);
        let rows = hidden
            .reshape(&[(b * t_run) as i32, h])?
            .take_axis(&index, 0)?
            .reshape(&[b as i32, t_out as i32, h])?;
        let zero = Array::from_f32(0.0).as_dtype(self.model.dtype())?;
        let keep3 = mask
            .reshape(&[b as i32, t_out as i32, 1])?
            .as_dtype(Dtype::Bool)?;
        let embeds = ops::select(&keep3, &rows, &zero)?;
        Ok(PromptEmbeds {
            embeds,
            mask,
            lengths,
            warnings,
        })
    }

    /// [`TextEncoder::encode_prompts`], then evaluates the result and drops the encoder, so
    /// its weights are freed before the caller goes on (the pipeline's text phase).
    pub fn encode_and_release(
        self,
        prompts: &[&str],
        max_sequence_length: usize,
    ) -> Result<PromptEmbeds> {
        let out = self.encode_prompts(prompts, max_sequence_length)?;
        mlx_rs::transforms::eval([&out.embeds, &out.mask])?;
        drop(self);
        Ok(out)
    }
}
