//! Qwen2-VL's image processor (transformers 5.23 `Qwen2VLImageProcessorPil`,
//! `models/qwen2_vl/image_processing_pil_qwen2_vl.py`): the size a picture is resized to
//! ([`ImageProcessorConfig::smart_resize`]) and the patches the vision tower reads
//! ([`ImageProcessorConfig::pixel_values`]).
//!
//! The resize itself is Pillow's BICUBIC, which this crate does not implement (it needs no
//! image library): the caller resizes the RGB picture to `smart_resize`'s size (the pipeline
//! does, with its Pillow port) and hands the resized pixels over. The rest, exactly as
//! transformers' PIL backend: `x · rescale_factor` in f64 rounded to f32, `(x − mean) / std`
//! in f32, then the patches of each merge unit side by side (merge units row-major, the unit's
//! patches row-major), every patch's values in `(channel, frame, row, column)` order with the
//! single frame repeated `temporal_patch_size` times.

use std::path::Path;

use mlx_rs::Array;
use serde::Deserialize;

use crate::error::{Result, TextEncoderError};
use crate::vision::Grid;

/// The `processor/preprocessor_config.json` keys the processor uses, with transformers' class
/// defaults for the ones a file leaves out.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageProcessorConfig {
    /// Fewest pixels after resizing (overrides `size.shortest_edge`).
    #[serde(default)]
    pub min_pixels: Option<u64>,
    /// Most pixels after resizing (overrides `size.longest_edge`).
    #[serde(default)]
    pub max_pixels: Option<u64>,
    /// `{shortest_edge, longest_edge}` in pixels (what `min_pixels`/`max_pixels` override).
    #[serde(default)]
    pub size: Option<serde_json::Value>,
    /// Patch side.
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// Patches per merge-unit side.
    #[serde(default = "d_two")]
    pub merge_size: usize,
    /// Frames per patch.
    #[serde(default = "d_two")]
    pub temporal_patch_size: usize,
    /// Per-channel mean (after rescaling).
    #[serde(default = "d_mean")]
    pub image_mean: Vec<f32>,
    /// Per-channel standard deviation.
    #[serde(default = "d_std")]
    pub image_std: Vec<f32>,
    /// Multiplier of the 8-bit values.
    #[serde(default = "d_rescale")]
    pub rescale_factor: f64,
    /// PIL resample filter id (3 = bicubic, the only one implemented).
    #[serde(default = "d_resample")]
    pub resample: u32,
    /// Whether to resize.
    #[serde(default = "d_true")]
    pub do_resize: bool,
    /// Whether to rescale.
    #[serde(default = "d_true")]
    pub do_rescale: bool,
    /// Whether to normalise.
    #[serde(default = "d_true")]
    pub do_normalize: bool,
}

fn d_patch() -> usize {
    14
}
fn d_two() -> usize {
    2
}
// transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD as written; numpy rounds them to f32 too.
#[allow(clippy::excessive_precision)]
fn d_mean() -> Vec<f32> {
    vec![0.481_454_66, 0.457_827_5, 0.408_210_73]
}
#[allow(clippy::excessive_precision)]
fn d_std() -> Vec<f32> {
    vec![0.268_629_54, 0.261_302_58, 0.275_777_11]
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}
fn d_resample() -> u32 {
    3
}
fn d_true() -> bool {
    true
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            min_pixels: None,
            max_pixels: None,
            size: None,
            patch_size: d_patch(),
            merge_size: d_two(),
            temporal_patch_size: d_two(),
            image_mean: d_mean(),
            image_std: d_std(),
            rescale_factor: d_rescale(),
            resample: d_resample(),
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
        }
    }
}

fn bad(msg: impl Into<String>) -> TextEncoderError {
    TextEncoderError::InvalidConfig(msg.into())
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json` and checks it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = mlx_weights::read_json_object(path)?;
        let cfg: Self = serde_json::from_value(v).map_err(|e| TextEncoderError::json(path, e))?;
        cfg.validate()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || self.merge_size == 0 || self.temporal_patch_size == 0 {
            return Err(bad(
                "patch_size, merge_size, temporal_patch_size must be positive",
            ));
        }
        if self.image_mean.len() != 3 || self.image_std.len() != 3 {
            return Err(bad("image_mean and image_std need three values (RGB)"));
        }
        if self.resample != 3 {
            return Err(bad(format!(
                "resample {} (only 3, bicubic, is implemented)",
                self.resample
            )));
        }
        if !self.do_resize {
            return Err(bad("do_resize false is not supported"));
        }
        let (lo, hi) = self.bounds();
        if lo > hi {
            return Err(bad(format!("min_pixels {lo} above max_pixels {hi}")));
        }
        Ok(())
    }

    fn size_key(&self, key: &str) -> Option<u64> {
        self.size
            .as_ref()
            .and_then(|s| s.get(key))
            .and_then(serde_json::Value::as_u64)
    }

    /// `(min_pixels, max_pixels)`: the explicit keys, else `size`, else the class defaults
    /// (56·56 and 28·28·1280).
    pub fn bounds(&self) -> (u64, u64) {
        (
            self.min_pixels
                .or_else(|| self.size_key("shortest_edge"))
                .unwrap_or(56 * 56),
            self.max_pixels
                .or_else(|| self.size_key("longest_edge"))
                .unwrap_or(28 * 28 * 1280),
        )
    }

    /// transformers' `smart_resize`: `(height, width)` rounded (half to even) to multiples of
    /// `patch_size · merge_size`, scaled down or up to stay within [`Self::bounds`] keeping the
    /// aspect ratio. An aspect ratio above 200 is refused, as transformers refuses it.
    pub fn smart_resize(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let factor = (self.patch_size * self.merge_size) as f64;
        let (min_px, max_px) = self.bounds();
        if height == 0 || width == 0 {
            return Err(TextEncoderError::InvalidInput(format!(
                "a {width}×{height} picture has no pixels"
            )));
        }
        let (h, w) = (height as f64, width as f64);
        if h.max(w) / h.min(w) > 200.0 {
            return Err(TextEncoderError::InvalidInput(format!(
                "a {width}×{height} picture: the aspect ratio must be below 200"
            )));
        }
        let mut hb = (h / factor).round_ties_even() * factor;
        let mut wb = (w / factor).round_ties_even() * factor;
        if hb * wb > max_px as f64 {
            let beta = (h * w / max_px as f64).sqrt();
            hb = factor.max((h / beta / factor).floor() * factor);
            wb = factor.max((w / beta / factor).floor() * factor);
        } else if hb * wb < min_px as f64 {
            let beta = (min_px as f64 / (h * w)).sqrt();
            hb = (h * beta / factor).ceil() * factor;
            wb = (w * beta / factor).ceil() * factor;
        }
        Ok((hb as usize, wb as usize))
    }

    /// The vision tower's input for one picture already resized to [`Self::smart_resize`]'s
    /// size: `rgb` holds `height × width × 3` bytes (row-major, interleaved). Returns the
    /// `(patches, 3 · temporal · patch²)` f32 rows and the patch grid.
    pub fn pixel_values(&self, rgb: &[u8], width: usize, height: usize) -> Result<(Array, Grid)> {
        let (p, m, tp) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let unit = p * m;
        if rgb.len() != width * height * 3
            || !width.is_multiple_of(unit)
            || !height.is_multiple_of(unit)
        {
            return Err(TextEncoderError::InvalidInput(format!(
                "{} bytes for a {width}×{height} RGB picture whose sides are multiples of {unit}",
                rgb.len()
            )));
        }
        let value = |y: usize, x: usize, c: usize| -> f32 {
            let mut v = rgb[(y * width + x) * 3 + c] as f32;
            if self.do_rescale {
                v = (f64::from(v) * self.rescale_factor) as f32;
            }
            if self.do_normalize {
                v = (v - self.image_mean[c]) / self.image_std[c];
            }
            v
        };
        let (gh, gw) = (height / p, width / p);
        let row_len = 3 * tp * p * p;
        let mut out = Vec::with_capacity(gh * gw * row_len);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                        for c in 0..3 {
                            for _ in 0..tp {
                                for py in 0..p {
                                    for px in 0..p {
                                        out.push(value(y0 + py, x0 + px, c));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let rows = (gh * gw) as i32;
        Ok((
            Array::from_slice(&out, &[rows, row_len as i32]),
            Grid { t: 1, h: gh, w: gw },
        ))
    }
}
