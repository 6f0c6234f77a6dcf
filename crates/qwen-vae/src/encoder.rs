//! diffusers' `QwenImageEncoder3d`, single-frame (image) path.

use mlx_rs::Array;

use crate::config::VaeConfig;
use crate::error::Result;
use crate::layers::{
    AttentionBlock, CausalConv3d, ConvPath, MidBlock, Resample, ResampleMode, ResidualBlock,
    RmsNorm, silu,
};
use crate::weights::Loader;

/// One entry of `encoder.down_blocks` (a flat list in diffusers).
#[derive(Debug)]
enum DownLayer {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Resample(Resample),
}

/// The encoder: image `(B, 1, H, W, C)` → `(B, 1, H/r, W/r, 2·z_dim)` (before `quant_conv`).
#[derive(Debug)]
pub(crate) struct Encoder {
    conv_in: CausalConv3d,
    down: Vec<DownLayer>,
    mid: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Encoder {
    /// Loads the `encoder.*` weights for `cfg`.
    pub(crate) fn load(l: &mut Loader, cfg: &VaeConfig) -> Result<Self> {
        let dims = cfg.encoder_dims();
        let k3 = [3, 3, 3];
        let s1 = [1, 1, 1];
        let p1 = [1, 1, 1];
        let conv_in = CausalConv3d::load(
            l,
            "encoder.conv_in",
            cfg.input_channels,
            dims[0],
            k3,
            s1,
            p1,
        )?;
        let mut down = Vec::new();
        let mut scale = 1.0f64;
        let levels = cfg.dim_mult.len();
        for i in 0..levels {
            let (mut cin, cout) = (dims[i], dims[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                let p = format!("encoder.down_blocks.{}", down.len());
                down.push(DownLayer::Residual(ResidualBlock::load(l, &p, cin, cout)?));
                // diffusers compares float scales for equality; they are exact powers of two.
                if cfg.attn_scales.contains(&scale) {
                    let p = format!("encoder.down_blocks.{}", down.len());
                    down.push(DownLayer::Attention(AttentionBlock::load(l, &p, cout)?));
                }
                cin = cout;
            }
            if i != levels - 1 {
                let mode = if cfg.temperal_downsample[i] {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                let p = format!("encoder.down_blocks.{}", down.len());
                down.push(DownLayer::Resample(Resample::load(l, &p, cout, mode)?));
                scale /= 2.0;
            }
        }
        let out_dim = dims[levels];
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::load(l, "encoder.mid_block", out_dim)?,
            norm_out: RmsNorm::load(l, "encoder.norm_out", out_dim, false)?,
            conv_out: CausalConv3d::load(
                l,
                "encoder.conv_out",
                out_dim,
                2 * cfg.z_dim,
                k3,
                s1,
                p1,
            )?,
        })
    }

    pub(crate) fn forward(&self, x: &Array, path: ConvPath) -> Result<Array> {
        let mut x = self.conv_in.forward(x, path)?;
        for layer in &self.down {
            x = match layer {
                DownLayer::Residual(r) => r.forward(&x, path)?,
                DownLayer::Attention(a) => a.forward(&x)?,
                DownLayer::Resample(r) => r.forward(&x)?,
            };
        }
        let x = self.mid.forward(&x, path)?;
        let x = silu(&self.norm_out.forward(&x)?)?;
        self.conv_out.forward(&x, path)
    }
}
