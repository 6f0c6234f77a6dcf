//! Starting from a picture: img2img and inpainting (diffusers `QwenImageImg2ImgPipeline` and
//! `QwenImageInpaintPipeline`, `pipelines/qwenimage/`).
//!
//! The image is resized to the output size (Pillow's LANCZOS), scaled to [−1, 1], encoded by
//! the VAE, the posterior **sampled** (`mean + std·ε`) and normalised; the schedule is the
//! full text-to-image one, of which the last `strength · steps` steps run
//! ([`first_step`]: diffusers' `get_timesteps`, in f64); the latents start at
//! `σ·noise + (1 − σ)·z₀` with the first kept σ (`scale_noise`). Inpainting adds a mask (white
//! = repaint): at pixel resolution as diffusers' mask processor makes it, brought to latent
//! size by taking pixel `(r·i, r·j)` (`interpolate(mode="nearest")`), and after every step the
//! kept region is replaced by `z₀` re-noised to the **next** σ (after the last step, by `z₀`
//! itself) — a [`StepHook`] of the one denoising loop.
//!
//! Not supported yet: diffusers' `padding_mask_crop` (inpaint a crop around the mask and
//! paste it back); the whole image is denoised.

use mlx_rs::{Array, Dtype, ops};

use crate::denoise::StepHook;
use crate::error::Result;
use crate::image_input::mask_pixels;
use crate::latents::pack_latents;
use crate::output::Image;

/// Default strength of img2img and inpainting (diffusers' default).
pub const DEFAULT_STRENGTH: f64 = 0.6;

/// A picture to start from, and how much of it to keep.
#[derive(Debug, Clone)]
pub struct InitImage {
    /// The picture (8-bit RGB, any size: it is resized to the output size).
    pub image: Image,
    /// Inpainting mask (white = repaint, black = keep), any size; `None`: img2img.
    pub mask: Option<Image>,
    /// How much to change, in (0, 1]: the last `strength · steps` steps of the schedule run
    /// (1: from pure noise, as text-to-image but guided by nothing of the picture except in
    /// the kept region).
    pub strength: f64,
    /// The ε of the posterior samples, `(images, z_dim, 1, h, w)` float32 (the VAE's layout);
    /// drawn from [`InitImage::noise_seed`] when absent.
    pub image_noise: Option<Array>,
    /// Seed of the posterior samples when `image_noise` is absent (image `i` uses seed + i).
    pub noise_seed: u64,
}

/// The first scheduled step that runs, as diffusers' `get_timesteps` computes it in Python
/// floats: `int(max(N − min(N·strength, N), 0))`. `steps − first_step` steps run.
pub fn first_step(steps: usize, strength: f64) -> usize {
    let n = steps as f64;
    let init = (n * strength).min(n);
    (n - init).max(0.0) as usize
}

/// `σ·noise + (1 − σ)·sample` in the sample's dtype, σ rounded to it first (diffusers'
/// `FlowMatchEulerDiscreteScheduler.scale_noise`, op by op).
pub fn scale_noise(sample: &Array, sigma: f32, noise: &Array) -> Result<Array> {
    let dt = sample.dtype();
    let s = mlx_fastops::scalar(sigma, dt)?;
    let one = mlx_fastops::scalar(1.0, dt)?;
    let a = s.multiply(&noise.as_dtype(dt)?)?;
    let b = one.subtract(&s)?;
    Ok(a.add(&b.multiply(sample)?)?)
}

/// The repaint mask at latent resolution, packed like the latents: `(1, tokens, z·p²)` with
/// `true` where the image is repainted. Pixel `(r·i, r·j)` of the pixel mask decides latent
/// `(i, j)`; every channel of a token carries its 2×2 sub-mask.
pub fn packed_mask(
    mask: &Image,
    width: usize,
    height: usize,
    ratio: usize,
    channels: usize,
    patch: usize,
) -> Result<(Array, MaskCoverage)> {
    let px = mask_pixels(mask, width, height);
    let (h, w) = (height / ratio, width / ratio);
    let lat: Vec<f32> = (0..h)
        .flat_map(|i| (0..w).map(move |j| (i, j)))
        .map(|(i, j)| f32::from(u8::from(px[(i * ratio) * width + j * ratio])))
        .collect();
    let coverage = MaskCoverage {
        repaint: px.iter().filter(|&&b| b).count(),
        total: px.len(),
    };
    let m = Array::from_slice(&lat, &[1, 1, 1, h as i32, w as i32]);
    let m = ops::broadcast_to(&m, &[1, 1, channels as i32, h as i32, w as i32])?;
    let packed = pack_latents(&m, patch)?;
    Ok((ops::gt(&packed, Array::from_f32(0.5))?, coverage))
}

/// How much of the image a mask repaints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskCoverage {
    /// Pixels to repaint (white after binarisation).
    pub repaint: usize,
    /// All pixels.
    pub total: usize,
}

/// The inpainting blend after each step: the kept region (mask false) takes the clean
/// latents re-noised to the next step's σ, or the clean latents after the last step.
pub(crate) struct InpaintBlend<'a> {
    /// Packed `true` = repaint.
    pub(crate) mask: &'a Array,
    /// Packed clean latents `z₀`, compute dtype.
    pub(crate) clean: &'a Array,
    /// Packed diffusion noise, compute dtype.
    pub(crate) noise: &'a Array,
    /// The schedule's sigmas (steps + 1, f32).
    pub(crate) sigmas: &'a [f32],
}

impl StepHook for InpaintBlend<'_> {
    fn after_step(&mut self, step: usize, latents: Array) -> Result<Array> {
        let last = self.sigmas.len().saturating_sub(2);
        let kept = if step < last {
            scale_noise(self.clean, self.sigmas[step + 1], self.noise)?
        } else {
            self.clean.clone()
        };
        Ok(ops::select(self.mask, &latents, &kept)?)
    }
}

/// `image_noise` laid out for one image as the pipeline needs it: `(1, z, 1, h, w)` in
/// `dtype`.
pub(crate) fn image_noise_for(all: &Array, image: usize, dtype: Dtype) -> Result<Array> {
    use mlx_rs::ops::indexing::IndexOp;
    let i = image as i32;
    Ok(all.index(i..i + 1).as_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diffusers' get_timesteps, including the float cases where N·s is not what it looks
    /// like (25 · 0.56 = 14.000000000000002 in f64).
    #[test]
    fn first_step_matches_get_timesteps() {
        for (n, s, first) in [
            (10, 0.7, 3),
            (10, 0.6, 4),
            (50, 0.6, 20),
            (25, 0.56, 10),
            (50, 0.56, 21),
            (100, 0.55, 44),
            (4, 1.0, 0),
            (4, 0.1, 3),
            (3, 0.2, 2),
            (10, 0.05, 9),
        ] {
            assert_eq!(first_step(n, s), first, "{n} × {s}");
        }
    }

    #[test]
    fn scale_noise_is_the_interpolation() -> anyhow::Result<()> {
        let x = Array::from_slice(&[1.0f32, -2.0, 0.5], &[3]);
        let n = Array::from_slice(&[0.25f32, 0.5, -1.0], &[3]);
        let y = scale_noise(&x, 0.75, &n)?;
        let want: Vec<f32> = [1.0f32, -2.0, 0.5]
            .iter()
            .zip([0.25f32, 0.5, -1.0])
            .map(|(x, n)| 0.75 * n + 0.25 * x)
            .collect();
        assert_eq!(y.as_slice::<f32>(), &want[..]);
        Ok(())
    }

    /// Latent (i, j) takes pixel (8i, 8j); packing puts a token's 2×2 sub-mask in every
    /// channel.
    #[test]
    fn the_mask_samples_the_top_left_pixel_of_each_block() -> anyhow::Result<()> {
        let (w, h) = (32usize, 16usize);
        // White only at pixel (8, 16) → latent (1, 2); everything else black.
        let mut data = vec![0u8; w * h * 3];
        for c in 0..3 {
            data[(8 * w + 16) * 3 + c] = 255;
        }
        // Also a white pixel that is not a block's top-left corner: must not count.
        for c in 0..3 {
            data[(3 * w + 5) * 3 + c] = 255;
        }
        let mask = Image {
            width: w,
            height: h,
            data,
        };
        let (packed, cov) = packed_mask(&mask, w, h, 8, 2, 2)?;
        assert_eq!(
            cov,
            MaskCoverage {
                repaint: 2,
                total: w * h
            }
        );
        // Latent grid 2×4 → tokens 1×2, channels 2·4: token (0, 1) holds latent rows 0..2,
        // columns 2..4; latent (1, 2) is dy = 1, dx = 0 → channel c·4 + 2.
        assert_eq!(packed.shape(), &[1, 2, 8]);
        let v: Vec<bool> = packed.as_slice::<bool>().to_vec();
        let on: Vec<usize> = v
            .iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(on, vec![8 + 2, 8 + 4 + 2]);
        Ok(())
    }
}
