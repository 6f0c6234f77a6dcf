//! # qwen_image
//!
//! The Qwen-Image text-to-image pipeline on MLX, as a library: prompt → text embeddings
//! (`qwen-text-encoder`) → denoising of 2×2-packed latents by the MMDiT (`qwen-dit`) under the
//! flow-matching Euler schedule (`flow-scheduler`), with true classifier-free guidance →
//! unpacking → VAE decode (`qwen-vae`) → 8-bit RGB. This crate is the only one that knows all
//! stages; the `qwen-image` program (crate `qwen-image-cli`) is a thin command line over it.
//!
//! It mirrors diffusers 0.42.1 `QwenImagePipeline`
//! (`diffusers/pipelines/qwenimage/pipeline_qwenimage.py`): `prepare_latents` /
//! `_pack_latents` / `_unpack_latents` ([`latents`]), `calculate_shift` +
//! `retrieve_timesteps` (μ from the packed sequence length), true CFG with norm rescale only
//! when `true_cfg_scale > 1` and a negative prompt is given ([`guidance`]), the transformer
//! called with `t / 1000`, and the VAE decode with `latents_mean` / `latents_std`
//! ([`pipeline`]). Every size comes from the checkpoint's configs ([`checkpoint`]).
//!
//! **Editing** ([`edit`]): a checkpoint whose `model_index.json` names
//! `QwenImageEditPipeline` (Qwen-Image-Edit: exactly one picture) or
//! `QwenImageEditPlusPipeline` (Qwen-Image-Edit-2509 and -2511: one or more; Edit-2511's
//! `zero_cond_t` honoured) runs requests that carry pictures ([`GenerateRequest::edit_images`]),
//! as diffusers' edit pipelines do: the vision tower reads each picture in the prompt, the VAE
//! encodes it, its tokens follow the noise tokens. A request without pictures on such a
//! checkpoint, and one with pictures on a text-to-image checkpoint, are refused
//! ([`PipelineError::WrongPipeline`]). [`PipelineKind`] says which pipeline a checkpoint is.
//!
//! Files by concern: [`request`] (what a generation asks for, its limits and its one
//! validation), [`guidance`], [`events`] (progress and timings), [`pipeline`] (staging) around
//! the one denoising loop, [`checkpoint`], [`hub`] (cache lookup), [`memory`] (weight
//! estimate), [`latents`], [`output`] (PNG writing), [`info`] (the MLX runtime),
//! [`settings`] (a generation as a user describes it: a PNG's record merged in, prompt files,
//! sizes, output names, the checks before loading), [`report`] (the summary of a run) and the
//! modes beside the one loop: [`img2img`] (img2img and inpainting) and [`edit`].
//!
//! Memory is staged: the text encoder is loaded, used and freed before the transformer is
//! loaded; the VAE is loaded after denoising. The same staging applies to components made in
//! memory ([`QwenImagePipeline::from_builders`], used by the full-size benchmark with random
//! weights). Large images are decoded tile by tile ([`VaeTiling`]): by default only those
//! above [`AUTO_TILING_MIN_PIXELS`] (2²¹), with 1024 px tiles.
//!
//! ```no_run
//! use qwen_image::{ComputeDtype, GenerateRequest, Noise, PipelineOptions, QwenImagePipeline};
//!
//! # fn main() -> Result<(), qwen_image::PipelineError> {
//! let dir = qwen_image::hub::resolve_model("Qwen/Qwen-Image", &qwen_image::hub::HubEnv::from_process())?;
//! let options = PipelineOptions { dtype: ComputeDtype::Bf16, ..Default::default() };
//! let mut pipe = QwenImagePipeline::load(&dir, options)?;
//! let mut req = GenerateRequest::new("a red fox in the snow, watercolor");
//! req.negative_prompt = Some(" ".into());
//! req.noise = Noise::Seed(42);
//! let images = pipe.generate(&req)?;
//! qwen_image::output::write_png("fox.png".as_ref(), &images[0])?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod cancel;
pub mod checkpoint;
mod denoise;
pub mod distributed;
pub mod download;
pub mod edit;
pub mod error;
pub mod events;
pub mod guidance;
pub mod hub;
pub mod image_input;
pub mod img2img;
pub mod info;
pub mod kernel_cache;
pub mod latents;
pub mod lora;
pub mod memory;
pub mod metadata;
pub mod output;
pub mod pipeline;
pub mod report;
pub mod request;
pub mod resample;
pub mod settings;

pub use cancel::CancelToken;
pub use checkpoint::{CheckpointConfigs, ComponentPaths, PipelineKind};
pub use error::{Field, NonFiniteAdvice, PipelineError, Result};
pub use events::{Event, Phase, PhaseStats, Timings};
pub use img2img::InitImage;
pub use lora::{Lora, LoraSource};
pub use mlx_fastops::ComputeDtype;
pub use output::Image;
pub use pipeline::{
    ActivationBudget, Builder, ComponentBuilders, Generation, LoraReport, PipelineOptions,
    PreparedRequest, QwenImagePipeline, Residency,
};
pub use qwen_dit::QuantizeSpec;
pub use qwen_vae::TilingConfig;
pub use request::{
    AUTO_TILING_MIN_PIXELS, DEFAULT_VAE_TILE_SIZE, GenerateRequest, MAX_IMAGE_SIDE, MAX_NUM_IMAGES,
    MAX_STEPS, Noise, SchedulerOverrides, Tiles, VaeTiling,
};
