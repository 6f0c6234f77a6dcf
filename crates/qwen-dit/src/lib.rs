//! Qwen-Image's transformer (the 20B MMDiT) on MLX.
//!
//! Mirrors diffusers 0.42.1 `QwenImageTransformer2DModel`
//! (`diffusers/models/transformers/transformer_qwenimage.py`). In the pipeline it sits between
//! the text encoder (`qwen-text-encoder`, which gives `encoder_hidden_states` and their mask)
//! and the scheduler (`flow-scheduler`, which gives σ and takes the predicted velocity); the
//! VAE (`qwen-vae`) decodes the final latents.
//!
//! - [`QwenImageTransformerConfig`]: `transformer/config.json`, diffusers field names and
//!   defaults, validated.
//! - [`QwenImageTransformer`]: load a diffusers `transformer/` folder (sharded safetensors with
//!   an index, strict key checks), in f32, bf16 or f16; MLX-quantized checkpoints load as
//!   they are, and [`QuantizeSpec`] quantizes float ones on the fly.
//! - [`RopeTables`]: the rotary tables for one (image grid(s), text length) pair, built once
//!   and passed to every [`QwenImageTransformer::forward`]. Several grids describe the edit
//!   pipelines' sequences (generated image first, then reference images); `zero_cond_t`
//!   checkpoints (Qwen-Image-Edit-2511) are supported, the Layered variant's flags are not.
//!
//! The architecture is spelled once: each module (`Block`, `Attention`, `FeedForward`, the
//! timestep embedder, the top level) is declared with its fields, their checkpoint keys and
//! their sizes (`declare_module!` in `module.rs`); loading (a checkpoint, or seeded random
//! weights for benchmarks, both through `mlx_weights::Vars`), the parameter list
//! (`QwenImageTransformerConfig::linear_layers`, `param_count`), export, quantization and the
//! walk over every Linear layer all follow from that one declaration.
//!
//! On its own:
//!
//! ```no_run
//! use mlx_rs::{Array, Dtype};
//! use qwen_dit::{QwenImageTransformer, RopeTables};
//!
//! # fn main() -> Result<(), qwen_dit::DitError> {
//! let model = QwenImageTransformer::load("Qwen-Image/transformer".as_ref(), Dtype::Bfloat16, None)?;
//! // a 1024×1024 image: latents 128×128, packed 2×2 → 64×64 tokens of 64 channels
//! let (h, w, t) = (64, 64, 20);
//! let rope = RopeTables::new(model.config(), &[(1, h, w)], t)?;
//! let x = Array::zeros::<f32>(&[1, (h * w) as i32, 64])?;
//! let ctx = Array::zeros::<f32>(&[1, t as i32, 3584])?;
//! let sigma = Array::from_slice(&[1.0f32], &[1]);
//! let v = model.forward(&x, &ctx, None, &sigma, &rope)?;
//! v.eval()?;
//! # Ok(()) }
//! ```
//!
//! Attention, norms, GELU, adaLN modulation, RoPE and gated residuals come from
//! `mlx-fastops` (fused CUDA/Metal kernels on GPU, plain-MLX references on CPU), all called
//! from the private `ops` module. Numerics: parity with diffusers is tested in f32 on CPU
//! (max rel. error < 1e-6 on the tiny reference model) and in bf16 against diffusers' own
//! bf16 forward (≤ 1e-2).

#![warn(missing_docs)]

mod block;
mod check;
pub mod config;
mod embeddings;
mod error;
mod linear;
pub mod lora;
mod model;
mod module;
mod ops;
pub mod quant;
pub mod rope;
mod schedule;
pub mod weights;

pub use check::check_checkpoint;
pub use config::{QuantizationRecord, QwenImageTransformerConfig};
pub use error::{DitError, Result};
pub use linear::DEQUANTIZE_MIN_ROWS;
pub use lora::{LoraSet, LoraUpdate, merge_updates};
pub use model::{QwenImageTransformer, StepModulation};
pub use quant::{QuantizeSpec, weight_bytes};
pub use rope::RopeTables;
pub use schedule::{MODULATION_WINDOW, ScheduleModulation};
