//! `vae/config.json` (diffusers `AutoencoderKLQwenImage` config) and tiling parameters.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, VaeError};

/// The VAE configuration, field names as diffusers writes them to `vae/config.json`.
///
/// Defaults are those of `AutoencoderKLQwenImage.__init__` (diffusers 0.42.1), which are the
/// released Qwen-Image VAE's values. Unknown fields (`_class_name`, `_diffusers_version`)
/// are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    /// Channels of the first encoder level (and last decoder level). Default 96.
    pub base_dim: usize,
    /// Latent channels. Default 16.
    pub z_dim: usize,
    /// Channel multiplier per level. Default `[1, 2, 4, 4]`.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder uses one more). Default 2.
    pub num_res_blocks: usize,
    /// Encoder levels (as scales 1, 1/2, 1/4, …) that get an attention block after each
    /// residual block. Default empty. The decoder ignores it, as diffusers does.
    pub attn_scales: Vec<f64>,
    /// Per downsampling level, whether time is downsampled too (diffusers' spelling). Its
    /// length sets the spatial compression `2^len`. Default `[false, true, true]`.
    pub temperal_downsample: Vec<bool>,
    /// Dropout rate (unused at inference). Default 0.
    pub dropout: f64,
    /// Image channels. Default 3.
    pub input_channels: usize,
    /// Per-channel latent mean used to (de)normalise latents. Length `z_dim`.
    pub latents_mean: Vec<f64>,
    /// Per-channel latent standard deviation. Length `z_dim`, all positive.
    pub latents_std: Vec<f64>,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            base_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: Vec::new(),
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            input_channels: 3,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
        }
    }
}

impl VaeConfig {
    /// Reads and validates `config.json` from a component folder (e.g. `…/vae`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = mlx_weights::read_json_object(path)?.to_string();
        let cfg: Self = serde_json::from_str(&text).map_err(|source| VaeError::ConfigParse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the configuration describes a buildable model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(VaeError::InvalidConfig(m));
        if self.base_dim == 0 || self.z_dim == 0 || self.input_channels == 0 {
            return bad(format!(
                "base_dim ({}), z_dim ({}) and input_channels ({}) must be positive",
                self.base_dim, self.z_dim, self.input_channels
            ));
        }
        if self.dim_mult.is_empty() || self.dim_mult.contains(&0) {
            return bad(format!(
                "dim_mult must be non-empty and positive, got {:?}",
                self.dim_mult
            ));
        }
        if self.num_res_blocks == 0 {
            return bad("num_res_blocks must be at least 1".into());
        }
        // Every channel count the model derives (the widest is the mid-block's fused q/k/v,
        // 3 × base_dim × max(dim_mult)) must fit MLX's i32 dimensions.
        let widest = self
            .dim_mult
            .iter()
            .max()
            .and_then(|m| m.checked_mul(self.base_dim))
            .and_then(|c| c.checked_mul(3));
        let z2 = self.z_dim.checked_mul(2);
        for (name, v) in [
            ("3 × base_dim × max(dim_mult)", widest),
            ("2 × z_dim", z2),
            ("input_channels", Some(self.input_channels)),
        ] {
            if v.is_none_or(|v| v > i32::MAX as usize) {
                return bad(format!(
                    "{name} is too large ({}; MLX dimensions are at most {})",
                    v.map_or_else(|| "overflows".to_string(), |v| v.to_string()),
                    i32::MAX
                ));
            }
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return bad(format!(
                "temperal_downsample has {} entries; dim_mult has {} levels, so it needs {}",
                self.temperal_downsample.len(),
                self.dim_mult.len(),
                self.dim_mult.len() - 1
            ));
        }
        // The upsample convolutions halve the channels of every level but the last.
        for (i, &m) in self.dim_mult.iter().enumerate().skip(1) {
            if !(self.base_dim * m).is_multiple_of(2) {
                return bad(format!(
                    "base_dim * dim_mult[{i}] = {} must be even (the decoder upsamplers halve it)",
                    self.base_dim * m
                ));
            }
        }
        if self.latents_mean.len() != self.z_dim {
            return bad(format!(
                "latents_mean has {} values, z_dim is {}",
                self.latents_mean.len(),
                self.z_dim
            ));
        }
        if self.latents_std.len() != self.z_dim {
            return bad(format!(
                "latents_std has {} values, z_dim is {}",
                self.latents_std.len(),
                self.z_dim
            ));
        }
        if let Some(s) = self
            .latents_std
            .iter()
            .find(|s| !(s.is_finite() && **s > 0.0))
        {
            return bad(format!(
                "latents_std values must be finite and > 0, got {s}"
            ));
        }
        if self.latents_mean.iter().any(|m| !m.is_finite()) {
            return bad("latents_mean values must be finite".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Pixels per latent along height and width: `2^len(temperal_downsample)` (8 for Qwen-Image).
    pub fn spatial_compression_ratio(&self) -> usize {
        1 << self.temperal_downsample.len()
    }

    /// Encoder channels per stage: `[base_dim] + [base_dim * m for m in dim_mult]`.
    pub fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(self.base_dim)
            .chain(self.dim_mult.iter().map(|m| self.base_dim * m))
            .collect()
    }

    /// Decoder channels per stage: `[base_dim * dim_mult[-1]] + reversed(base_dim * dim_mult)`.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let last = self.dim_mult.last().copied().unwrap_or(1);
        std::iter::once(self.base_dim * last)
            .chain(self.dim_mult.iter().rev().map(|m| self.base_dim * m))
            .collect()
    }
}

/// Tile sizes for [`crate::QwenImageVae::decode_tiled`] / [`crate::QwenImageVae::encode_tiled`],
/// in pixels, named as diffusers' `enable_tiling` arguments. Latent-space sizes are these
/// divided (floor) by the spatial compression ratio, as diffusers does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TilingConfig {
    /// Tile height in pixels. Default 256 (diffusers).
    pub tile_sample_min_height: usize,
    /// Tile width in pixels. Default 256.
    pub tile_sample_min_width: usize,
    /// Vertical distance between tile origins in pixels. Default 192 (64 px overlap).
    pub tile_sample_stride_height: usize,
    /// Horizontal distance between tile origins in pixels. Default 192.
    pub tile_sample_stride_width: usize,
}

impl Default for TilingConfig {
    fn default() -> Self {
        Self {
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
        }
    }
}

impl TilingConfig {
    /// The tile size and stride in pixels as `((height, width), (stride_h, stride_w))`.
    pub(crate) fn pixel_tile_and_stride(&self) -> ((i32, i32), (i32, i32)) {
        (
            (
                self.tile_sample_min_height as i32,
                self.tile_sample_min_width as i32,
            ),
            (
                self.tile_sample_stride_height as i32,
                self.tile_sample_stride_width as i32,
            ),
        )
    }

    /// Checks the tiles against a spatial compression ratio: sizes and strides that are
    /// whole numbers of latents (at least one), and strides no larger than the tiles (which
    /// would leave gaps).
    pub fn validate(&self, ratio: usize) -> Result<()> {
        let pairs = [
            (
                "height",
                self.tile_sample_min_height,
                self.tile_sample_stride_height,
            ),
            (
                "width",
                self.tile_sample_min_width,
                self.tile_sample_stride_width,
            ),
        ];
        for (name, min, stride) in pairs {
            if stride < ratio || min < ratio {
                return Err(VaeError::InvalidTiling(format!(
                    "tile {name} ({min}) and stride ({stride}) must be at least the compression \
                     ratio {ratio}"
                )));
            }
            if min % ratio != 0 || stride % ratio != 0 {
                return Err(VaeError::InvalidTiling(format!(
                    "tile {name} ({min}) and stride ({stride}) must be multiples of the \
                     compression ratio {ratio}"
                )));
            }
            if stride > min {
                return Err(VaeError::InvalidTiling(format!(
                    "tile {name} stride ({stride}) is larger than the tile ({min})"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_json_gives_the_diffusers_defaults() -> anyhow::Result<()> {
        let c: VaeConfig = serde_json::from_str("{}")?;
        assert_eq!(c, VaeConfig::default());
        c.validate()?;
        assert_eq!(c.spatial_compression_ratio(), 8);
        assert_eq!(c.encoder_dims(), vec![96, 96, 192, 384, 384]);
        assert_eq!(c.decoder_dims(), vec![384, 384, 384, 192, 96]);
        assert_eq!(c.latents_std[15], 1.916);
        Ok(())
    }

    #[test]
    fn real_checkpoint_style_config_parses() -> anyhow::Result<()> {
        let c: VaeConfig = serde_json::from_str(
            r#"{"_class_name": "AutoencoderKLQwenImage", "_diffusers_version": "0.34.0",
                "attn_scales": [], "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
                "num_res_blocks": 2, "temperal_downsample": [false, true, true], "z_dim": 16}"#,
        )?;
        c.validate()?;
        assert_eq!(c.latents_mean.len(), 16);
        Ok(())
    }

    fn invalid(f: impl FnOnce(&mut VaeConfig)) -> String {
        let mut c = VaeConfig::default();
        f(&mut c);
        match c.validate() {
            Err(e) => e.to_string(),
            Ok(()) => "accepted".into(),
        }
    }

    #[test]
    fn inconsistent_configs_are_rejected_with_clear_errors() {
        assert!(invalid(|c| c.z_dim = 8).contains("latents_mean has 16 values, z_dim is 8"));
        assert!(invalid(|c| c.latents_std.truncate(3)).contains("latents_std has 3 values"));
        assert!(invalid(|c| c.latents_std[2] = 0.0).contains("> 0"));
        assert!(invalid(|c| c.temperal_downsample.push(true)).contains("needs 3"));
        assert!(invalid(|c| c.dim_mult.clear()).contains("dim_mult"));
        assert!(invalid(|c| c.num_res_blocks = 0).contains("num_res_blocks"));
        assert!(invalid(|c| c.base_dim = 0).contains("must be positive"));
        assert!(
            invalid(|c| {
                c.base_dim = 3;
                c.dim_mult = vec![1, 1];
                c.temperal_downsample = vec![false];
            })
            .contains("even")
        );
    }

    #[test]
    fn tiling_validation() {
        assert!(TilingConfig::default().validate(8).is_ok());
        let t = |a, b, c, d| TilingConfig {
            tile_sample_min_height: a,
            tile_sample_min_width: b,
            tile_sample_stride_height: c,
            tile_sample_stride_width: d,
        };
        assert!(t(64, 64, 80, 48).validate(8).is_err()); // stride > tile
        assert!(t(64, 64, 4, 48).validate(8).is_err()); // stride below one latent
        assert!(t(60, 64, 48, 48).validate(8).is_err()); // not a whole number of latents
        assert!(t(64, 32, 64, 8).validate(8).is_ok());
    }
}
