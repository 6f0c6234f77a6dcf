//! diffusers' `QwenImageDecoder3d` and `QwenImageUpBlock`, single-frame (image) path.

use mlx_rs::Array;

use crate::config::VaeConfig;
use crate::error::Result;
use crate::layers::{
    CausalConv3d, ConvPath, MidBlock, Resample, ResampleMode, ResidualBlock, RmsNorm, silu,
};
use crate::weights::Loader;

/// `decoder.up_blocks.{i}`: `num_res_blocks + 1` residual blocks, then an optional upsampler.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

/// The decoder: latents `(B, 1, h, w, z_dim)` (after `post_quant_conv`) → image
/// `(B, 1, h·r, w·r, input_channels)`, unclamped.
#[derive(Debug)]
pub(crate) struct Decoder {
    conv_in: CausalConv3d,
    mid: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Decoder {
    /// Loads the `decoder.*` weights for `cfg`.
    pub(crate) fn load(l: &mut Loader, cfg: &VaeConfig) -> Result<Self> {
        let dims = cfg.decoder_dims();
        let k3 = [3, 3, 3];
        let s1 = [1, 1, 1];
        let p1 = [1, 1, 1];
        let conv_in = CausalConv3d::load(l, "decoder.conv_in", cfg.z_dim, dims[0], k3, s1, p1)?;
        let mid = MidBlock::load(l, "decoder.mid_block", dims[0])?;
        let levels = cfg.dim_mult.len();
        // diffusers: temperal_upsample = temperal_downsample[::-1]
        let temporal_up: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(levels);
        for i in 0..levels {
            // every level but the first receives the previous upsampler's halved channels
            let cin = if i > 0 { dims[i] / 2 } else { dims[i] };
            let cout = dims[i + 1];
            let prefix = format!("decoder.up_blocks.{i}");
            let mut resnets = Vec::with_capacity(cfg.num_res_blocks + 1);
            let mut c = cin;
            for j in 0..=cfg.num_res_blocks {
                let p = format!("{prefix}.resnets.{j}");
                resnets.push(ResidualBlock::load(l, &p, c, cout)?);
                c = cout;
            }
            let upsampler = if i != levels - 1 {
                let mode = if temporal_up[i] {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                Some(Resample::load(
                    l,
                    &format!("{prefix}.upsamplers.0"),
                    cout,
                    mode,
                )?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsampler });
        }
        let out_dim = dims[levels];
        Ok(Self {
            conv_in,
            mid,
            up_blocks,
            norm_out: RmsNorm::load(l, "decoder.norm_out", out_dim, false)?,
            conv_out: CausalConv3d::load(
                l,
                "decoder.conv_out",
                out_dim,
                cfg.input_channels,
                k3,
                s1,
                p1,
            )?,
        })
    }

    pub(crate) fn forward(&self, x: &Array, path: ConvPath) -> Result<Array> {
        let x = self.conv_in.forward(x, path)?;
        let mut x = self.mid.forward(&x, path)?;
        for block in &self.up_blocks {
            for r in &block.resnets {
                x = r.forward(&x, path)?;
            }
            if let Some(u) = &block.upsampler {
                x = u.forward(&x)?;
            }
        }
        let x = silu(&self.norm_out.forward(&x)?)?;
        self.conv_out.forward(&x, path)
    }
}
