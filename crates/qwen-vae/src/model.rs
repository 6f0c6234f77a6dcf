//! [`QwenImageVae`]: diffusers' `AutoencoderKLQwenImage` (image path) plus the pipeline's
//! latent (de)normalisation.

use std::path::Path;

use mlx_rs::{
    Array, Dtype,
    ops::{clip, exp, maximum, minimum, split_equal},
};

use crate::config::{TilingConfig, VaeConfig};
use crate::decoder::Decoder;
use crate::encoder::Encoder;
use crate::error::{Result, VaeError};
use crate::layers::{CausalConv3d, ConvPath};
use crate::tiling::{TileGrid, tiled};
use crate::weights::Loader;

/// The encoder's output distribution (diffusers' `DiagonalGaussianDistribution`), in the
/// diffusers layout `(B, z_dim, 1, h, w)`.
#[derive(Debug, Clone)]
pub struct LatentDist {
    /// The mean (`latent_dist.mean`, also its `mode()`), un-normalised.
    pub mean: Array,
    /// The log-variance, clamped to [−30, 20] as diffusers does.
    pub logvar: Array,
}

impl LatentDist {
    /// `mean + exp(logvar / 2) · noise` (diffusers' `sample()` with externally drawn
    /// standard-normal `noise` of the mean's shape).
    pub fn sample(&self, noise: &Array) -> Result<Array> {
        let half = Array::from_f32(0.5).as_dtype(self.logvar.dtype())?;
        let std = exp(self.logvar.multiply(&half)?)?;
        Ok(self.mean.add(std.multiply(noise)?)?)
    }
}

/// The Qwen-Image VAE: decoder and encoder for single images.
///
/// Tensors cross the API in diffusers' layouts: latents `(B, z_dim, 1, h, w)` (or
/// `(B, z_dim, h, w)`), images `(B, C, H, W)` (or `(B, C, 1, H, W)` for `encode`), with
/// `H = h · r`, `r` = [`VaeConfig::spatial_compression_ratio`]. Inside, everything is
/// channels-last.
#[derive(Debug)]
pub struct QwenImageVae {
    config: VaeConfig,
    dtype: Dtype,
    encoder: Encoder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    decoder: Decoder,
    /// `latents_mean` as `(1, z, 1, 1, 1)` in the model dtype.
    mean: Array,
    /// `1 / latents_std` computed in f32 (as the pipeline does), then in the model dtype.
    inv_std: Array,
}

impl QwenImageVae {
    /// Loads `dir/config.json` and `dir/*.safetensors` (diffusers' `vae/` folder), strictly:
    /// any missing, unexpected or mis-shaped tensor fails with one error listing them all.
    /// Floating weights are cast to `dtype`; layout changes happen here, once.
    pub fn load(dir: &Path, dtype: Dtype) -> Result<Self> {
        let config = VaeConfig::from_dir(dir)?;
        let loader = Loader::open(dir, dtype)?;
        Self::from_loader(config, loader, dtype)
    }

    /// Builds the model from a config and already-read tensors (same checks as [`Self::load`]).
    pub fn from_tensors(
        config: VaeConfig,
        tensors: mlx_weights::Tensors,
        dtype: Dtype,
    ) -> Result<Self> {
        config.validate()?;
        Self::from_loader(config, Loader::from_tensors(tensors, dtype), dtype)
    }

    fn from_loader(config: VaeConfig, mut l: Loader, dtype: Dtype) -> Result<Self> {
        let z = config.z_dim;
        let encoder = Encoder::load(&mut l, &config)?;
        let one = [1, 1, 1];
        let zero = [0, 0, 0];
        let quant_conv = CausalConv3d::load(&mut l, "quant_conv", 2 * z, 2 * z, one, one, zero)?;
        let post_quant_conv = CausalConv3d::load(&mut l, "post_quant_conv", z, z, one, one, zero)?;
        let decoder = Decoder::load(&mut l, &config)?;
        l.finish()?;

        let zi = z as i32;
        let mean: Vec<f32> = config.latents_mean.iter().map(|&v| v as f32).collect();
        let inv: Vec<f32> = config
            .latents_std
            .iter()
            .map(|&v| 1.0f32 / v as f32)
            .collect();
        let mean = Array::from_slice(&mean, &[1, zi, 1, 1, 1]).as_dtype(dtype)?;
        let inv_std = Array::from_slice(&inv, &[1, zi, 1, 1, 1]).as_dtype(dtype)?;
        Ok(Self {
            config,
            dtype,
            encoder,
            quant_conv,
            post_quant_conv,
            decoder,
            mean,
            inv_std,
        })
    }

    /// The configuration read from `config.json`.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The compute dtype of weights and activations.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Pixels per latent along height and width (8 for Qwen-Image).
    pub fn spatial_compression_ratio(&self) -> usize {
        self.config.spatial_compression_ratio()
    }

    fn stats_for(&self, x: &Array) -> Result<(Array, Array)> {
        let z = self.config.z_dim as i32;
        match x.ndim() {
            5 => Ok((self.mean.clone(), self.inv_std.clone())),
            4 => Ok((
                self.mean.reshape(&[1, z, 1, 1])?,
                self.inv_std.reshape(&[1, z, 1, 1])?,
            )),
            n => Err(VaeError::Shape(format!(
                "latents must be (B, z, 1, h, w) or (B, z, h, w), got {n}-D"
            ))),
        }
    }

    fn check_latent_channels(&self, x: &Array) -> Result<()> {
        if x.ndim() < 4 || x.shape()[1] != self.config.z_dim as i32 {
            return Err(VaeError::Shape(format!(
                "latents must have z_dim = {} channels on axis 1, got shape {:?}",
                self.config.z_dim,
                x.shape()
            )));
        }
        Ok(())
    }

    /// The pipeline's de-normalisation before decoding: `z / (1/latents_std) + latents_mean`
    /// per channel (axis 1), exactly as diffusers' `QwenImagePipeline` writes it.
    /// Accepts `(B, z, T, h, w)` or `(B, z, h, w)`.
    pub fn denormalize_latents(&self, z: &Array) -> Result<Array> {
        self.check_latent_channels(z)?;
        let (m, inv) = self.stats_for(z)?;
        Ok(z.as_dtype(self.dtype)?.divide(&inv)?.add(&m)?)
    }

    /// The img2img/edit pipelines' normalisation after encoding:
    /// `(x − latents_mean) · (1/latents_std)`. Inverse of [`Self::denormalize_latents`].
    pub fn normalize_latents(&self, x: &Array) -> Result<Array> {
        self.check_latent_channels(x)?;
        let (m, inv) = self.stats_for(x)?;
        Ok(x.as_dtype(self.dtype)?.subtract(&m)?.multiply(&inv)?)
    }

    /// Latents `(B, z, 1, h, w)` / `(B, z, h, w)` → channels-last `(B, 1, h, w, z)`.
    fn latents_in(&self, z: &Array) -> Result<Array> {
        self.check_latent_channels(z)?;
        let s = z.shape();
        let x = match s.len() {
            5 if s[2] == 1 => z.transpose_axes(&[0, 2, 3, 4, 1])?,
            5 => {
                return Err(VaeError::Shape(format!(
                    "only single-frame latents are supported (T = 1), got shape {s:?}"
                )));
            }
            _ => z.transpose_axes(&[0, 2, 3, 1])?.expand_dims(1)?,
        };
        Ok(x.as_dtype(self.dtype)?)
    }

    /// post_quant_conv + decoder on channels-last latents, unclamped.
    fn decode_raw(&self, x: &Array, path: ConvPath) -> Result<Array> {
        let x = self.post_quant_conv.forward(x, path)?;
        self.decoder.forward(&x, path)
    }

    /// Channels-last `(B, 1, H, W, C)` → clamped `(B, C, H, W)`.
    fn image_out(&self, y: &Array) -> Result<Array> {
        let lo = Array::from_f32(-1.0).as_dtype(self.dtype)?;
        let hi = Array::from_f32(1.0).as_dtype(self.dtype)?;
        let y = minimum(maximum(y, &lo)?, &hi)?;
        let s = y.shape().to_vec();
        Ok(y.reshape(&[s[0], s[2], s[3], s[4]])?
            .transpose_axes(&[0, 3, 1, 2])?)
    }

    /// Decodes **de-normalised** latents (apply [`Self::denormalize_latents`] to what the
    /// DiT produces first) `(B, z, 1, h, w)` or `(B, z, h, w)` → image `(B, C, h·r, w·r)`
    /// clamped to [−1, 1] (diffusers' `vae.decode(z).sample[:, :, 0]`). Lazy: evaluate the
    /// result.
    pub fn decode(&self, latents: &Array) -> Result<Array> {
        self.decode_with_path(latents, ConvPath::SingleFrame)
    }

    /// [`Self::decode`] with a chosen convolution implementation (the general causal 3-D
    /// path exists to verify the single-frame fast path).
    pub fn decode_with_path(&self, latents: &Array, path: ConvPath) -> Result<Array> {
        let x = self.latents_in(latents)?;
        let y = self.decode_raw(&x, path)?;
        self.image_out(&y)
    }

    /// Decodes tile by tile with overlapping, linearly blended tiles (diffusers'
    /// `tiled_decode`), so memory is bounded by one tile's activations whatever the image
    /// size. Each tile is evaluated as soon as it is decoded; the blended result is lazy.
    /// Unlike diffusers (which returns the tiled result unclamped), the output is clamped
    /// to [−1, 1] like [`Self::decode`]'s.
    pub fn decode_tiled(&self, latents: &Array, tiling: &TilingConfig) -> Result<Array> {
        let r = self.config.spatial_compression_ratio();
        tiling.validate(r)?;
        let x = self.latents_in(latents)?;
        let (h, w) = (x.shape()[2], x.shape()[3]);
        let r = r as i32;
        let ((min_h, min_w), (st_h, st_w)) = tiling.pixel_tile_and_stride();
        let grid = TileGrid {
            input: (h, w),
            tile_in: (min_h / r, min_w / r),
            stride_in: (st_h / r, st_w / r),
            blend_out: (min_h - st_h, min_w - st_w),
            stride_out: (st_h, st_w),
            output: (h * r, w * r),
        };
        let y = tiled(&x, grid, |t| self.decode_raw(t, ConvPath::SingleFrame))?;
        self.image_out(&y)
    }

    /// Image `(B, C, H, W)` / `(B, C, 1, H, W)` in [−1, 1] → channels-last `(B, 1, H, W, C)`.
    fn image_in(&self, image: &Array) -> Result<Array> {
        let s = image.shape();
        let c = self.config.input_channels as i32;
        let r = self.config.spatial_compression_ratio() as i32;
        let (x, hh, ww) = match s.len() {
            4 if s[1] == c => (
                image.transpose_axes(&[0, 2, 3, 1])?.expand_dims(1)?,
                s[2],
                s[3],
            ),
            5 if s[1] == c && s[2] == 1 => (image.transpose_axes(&[0, 2, 3, 4, 1])?, s[3], s[4]),
            _ => {
                return Err(VaeError::Shape(format!(
                    "images must be (B, {c}, H, W) or (B, {c}, 1, H, W), got {s:?}"
                )));
            }
        };
        if hh <= 0 || ww <= 0 || hh % r != 0 || ww % r != 0 {
            return Err(VaeError::Shape(format!(
                "image height and width must be positive multiples of {r}, got {hh}×{ww}"
            )));
        }
        Ok(x.as_dtype(self.dtype)?)
    }

    /// encoder + quant_conv on a channels-last image: `(B, 1, h, w, 2z)`.
    fn encode_raw(&self, x: &Array, path: ConvPath) -> Result<Array> {
        let h = self.encoder.forward(x, path)?;
        self.quant_conv.forward(&h, path)
    }

    /// `(B, 1, h, w, 2z)` → mean / clamped logvar in `(B, z, 1, h, w)`.
    fn dist_out(&self, h: &Array) -> Result<LatentDist> {
        let h = h.transpose_axes(&[0, 4, 1, 2, 3])?;
        let parts = split_equal(&h, 2, 1)?;
        let lo = Array::from_f32(-30.0).as_dtype(self.dtype)?;
        let hi = Array::from_f32(20.0).as_dtype(self.dtype)?;
        Ok(LatentDist {
            mean: parts[0].clone(),
            logvar: clip(&parts[1], (&lo, &hi))?,
        })
    }

    /// Encodes images `(B, C, H, W)` or `(B, C, 1, H, W)` with values in [−1, 1] (`H`, `W`
    /// multiples of the compression ratio) to the latent distribution (diffusers'
    /// `vae.encode(x).latent_dist`). The pipelines use [`LatentDist::mean`] (edit) or a
    /// sample (img2img), then [`Self::normalize_latents`].
    pub fn encode(&self, image: &Array) -> Result<LatentDist> {
        self.encode_with_path(image, ConvPath::SingleFrame)
    }

    /// Encodes and normalises as the Qwen-Image edit pipeline does with its image latents:
    /// `(mode − latents_mean) · (1/latents_std)` with the mode (= mean) of the distribution,
    /// `(B, z, 1, h, w)`.
    pub fn encode_normalized(&self, image: &Array) -> Result<Array> {
        self.normalize_latents(&self.encode(image)?.mean)
    }

    /// [`Self::encode`] with a chosen convolution implementation.
    pub fn encode_with_path(&self, image: &Array, path: ConvPath) -> Result<LatentDist> {
        let x = self.image_in(image)?;
        self.dist_out(&self.encode_raw(&x, path)?)
    }

    /// Encodes tile by tile (diffusers' `tiled_encode`): tiles of the given pixel size and
    /// stride, blended in latent space over `(min − stride) / r` latents. Each tile is
    /// evaluated as soon as it is encoded.
    pub fn encode_tiled(&self, image: &Array, tiling: &TilingConfig) -> Result<LatentDist> {
        let r = self.config.spatial_compression_ratio();
        tiling.validate(r)?;
        let x = self.image_in(image)?;
        let (h, w) = (x.shape()[2], x.shape()[3]);
        let r = r as i32;
        let ((min_h, min_w), (st_h, st_w)) = tiling.pixel_tile_and_stride();
        let grid = TileGrid {
            input: (h, w),
            tile_in: (min_h, min_w),
            stride_in: (st_h, st_w),
            blend_out: (min_h / r - st_h / r, min_w / r - st_w / r),
            stride_out: (st_h / r, st_w / r),
            output: (h / r, w / r),
        };
        let y = tiled(&x, grid, |t| self.encode_raw(t, ConvPath::SingleFrame))?;
        self.dist_out(&y)
    }
}
