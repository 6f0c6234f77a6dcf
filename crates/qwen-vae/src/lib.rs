//! # qwen-vae
//!
//! The Qwen-Image VAE (a Wan-2.1-style causal video VAE used on single images) on MLX:
//! decoder and encoder, in parity with diffusers' `AutoencoderKLQwenImage`
//! (`diffusers/models/autoencoders/autoencoder_kl_qwenimage.py`, diffusers 0.42.1), plus the
//! latent (de)normalisation of `pipeline_qwenimage.py` and the 8-bit conversion of
//! `VaeImageProcessor.postprocess`.
//!
//! **Place in the pipeline:** the DiT's denoised latents are unpacked to `(B, 16, 1, h, w)`,
//! de-normalised ([`QwenImageVae::denormalize_latents`]), decoded ([`QwenImageVae::decode`],
//! or [`QwenImageVae::decode_tiled`] for large images) to `(B, 3, 8h, 8w)` in [−1, 1], and
//! converted with [`to_rgb8`]. Image-conditioned pipelines run [`QwenImageVae::encode`] and
//! [`QwenImageVae::normalize_latents`].
//!
//! For a single frame every causal 3×3×3 convolution reduces to a 2-D convolution with its
//! last temporal tap and the upsamplers' time convolutions are skipped ([`ConvPath`]); the
//! general causal 3-D path is kept and tested against the fast one.
//!
//! ## Standalone use
//! ```no_run
//! use std::path::Path;
//! use mlx_rs::{Array, Dtype};
//! use qwen_vae::{QwenImageVae, to_rgb8};
//!
//! # fn main() -> Result<(), qwen_vae::VaeError> {
//! let vae = QwenImageVae::load(Path::new("Qwen-Image/vae"), Dtype::Float32)?;
//! let z = mlx_rs::random::normal::<f32>(&[1, 16, 1, 64, 64], None, None, None)?;
//! let image = vae.decode(&vae.denormalize_latents(&z)?)?; // (1, 3, 512, 512)
//! let rgb = to_rgb8(&image)?; // width, height, RGB bytes
//! # let _ = rgb; Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod decoder;
mod encoder;
mod error;
mod image;
mod layers;
mod model;
mod tiling;
pub mod weights;

pub use config::{TilingConfig, VaeConfig};
pub use error::{Result, VaeError};
pub use image::{RgbImage, to_rgb8};
pub use layers::{CausalConv3d, ConvPath};
pub use model::{LatentDist, QwenImageVae};
pub use weights::check_checkpoint;
