//! # qwen-text-encoder
//!
//! Qwen-Image's text conditioning on MLX: the Qwen2 byte-level BPE tokenizer and the language
//! model of Qwen2.5-VL-7B (no LM head), used the way diffusers' `QwenImagePipeline` uses
//! them to turn prompts into the DiT's `encoder_hidden_states`; and Qwen2.5-VL's vision tower
//! (`vision`: pictures → image tokens, for Qwen-Image-Edit) with Qwen2-VL's image processor
//! (`processor`) and the language model reading images (3-D M-RoPE); in parity with transformers,
//! not yet wired into an edit pipeline.
//!
//! Place in the pipeline: **prompt → [this crate] → (B, T, 3584) embeddings + mask → DiT**.
//! The encoder runs once per generation (prompt and, with true CFG, negative prompt) and can be
//! freed right after ([`TextEncoder::encode_and_release`]).
//!
//! Reference files it mirrors (diffusers 0.42.1 / transformers 5.23):
//! - `diffusers/pipelines/qwenimage/pipeline_qwenimage.py` (`_get_qwen_prompt_embeds`,
//!   `encode_prompt`): [`encoder`];
//! - `transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py` (`Qwen2_5_VLTextModel`): [`model`],
//!   [`rope`]; `configuration_qwen2_5_vl.py`: [`config`];
//! - `transformers/models/qwen2/tokenization_qwen2.py` (`Qwen2Tokenizer`): [`tokenizer`];
//! - `transformers/models/qwen2_5_vl/modeling_qwen2_5_vl.py` (`Qwen2_5_VisionTransformerPretrainedModel`)
//!   and `vision_utils.py`: [`vision`].
//!
//! ## Use on its own
//! ```no_run
//! use mlx_rs::Dtype;
//! use qwen_text_encoder::{TextEncoder, DEFAULT_MAX_SEQUENCE_LENGTH};
//!
//! # fn main() -> Result<(), qwen_text_encoder::TextEncoderError> {
//! let root = std::path::Path::new("Qwen-Image");
//! let enc = TextEncoder::load(&root.join("text_encoder"), &root.join("tokenizer"), Dtype::Bfloat16)?;
//! let out = enc.encode_and_release(&["a red apple on a table"], DEFAULT_MAX_SEQUENCE_LENGTH)?;
//! println!("{:?} {:?} {:?}", out.embeds.shape(), out.lengths, out.warnings);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod edit;
pub mod encoder;
pub mod error;
pub mod model;
pub mod processor;
pub mod rope;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use config::{Qwen2_5_VLConfig, Qwen2_5_VLTextConfig, TextConfig};
pub use edit::{EditEncoder, EditTemplate};
pub use encoder::{
    DEFAULT_MAX_SEQUENCE_LENGTH, MAX_SEQUENCE_LENGTH_LIMIT, PROMPT_TEMPLATE, PromptEmbeds,
    TOKENIZER_MAX_LENGTH, TextEncoder, template_drop_index,
};
pub use error::{Result, TextEncoderError};
pub use model::QwenTextModel;
pub use processor::ImageProcessorConfig;
pub use tokenizer::{Batch, QwenTokenizer, Side};
pub use vision::{Grid, VisionConfig, VisionTower};
pub use weights::{IGNORED_PREFIXES, TextModelWeights, check_checkpoint, load_weights};
