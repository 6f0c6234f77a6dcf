//! One dual-stream block (diffusers `QwenImageTransformerBlock` + `QwenDoubleStreamAttnProcessor2_0`).

use mlx_rs::{Array, Dtype, ops};

use crate::config::NORM_EPS;
use crate::error::Result;
use crate::linear::Linear;
use crate::ops::{
    apply_rope, clip_f16, gated_residual, gelu_tanh, layer_norm_modulate, rms_norm, sdpa,
};

/// `net.0.proj` (GELU-tanh) → `net.2` feed-forward network.
#[derive(Debug, Clone)]
pub(crate) struct FeedForward {
    /// `net.0.proj`: `inner_dim → 4·inner_dim`.
    pub(crate) proj_in: Linear,
    /// `net.2`: `4·inner_dim → inner_dim`.
    pub(crate) proj_out: Linear,
}

impl FeedForward {
    fn forward(&self, x: &Array) -> Result<Array> {
        self.proj_out
            .forward(&gelu_tanh(&self.proj_in.forward(x)?)?)
    }
}

/// Joint attention of a block: image projections `to_*`, text projections `add_*_proj`,
/// per-head RMSNorms, outputs `to_out.0` (image) and `to_add_out` (text).
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) to_q: Linear,
    pub(crate) to_k: Linear,
    pub(crate) to_v: Linear,
    pub(crate) add_q_proj: Linear,
    pub(crate) add_k_proj: Linear,
    pub(crate) add_v_proj: Linear,
    pub(crate) to_out_0: Linear,
    pub(crate) to_add_out: Linear,
    pub(crate) norm_q: Array,
    pub(crate) norm_k: Array,
    pub(crate) norm_added_q: Array,
    pub(crate) norm_added_k: Array,
}

/// Per-forward inputs every block shares.
pub(crate) struct BlockContext<'a> {
    /// SiLU of the timestep embedding, `(B, D)`.
    pub(crate) silu_temb: &'a Array,
    /// `zero_cond_t` models: SiLU of the σ = 0 embedding and the number of leading image
    /// tokens (the first image) modulated with `silu_temb`; the rest use this one.
    pub(crate) zero_cond: Option<(&'a Array, i32)>,
    /// RoPE cos, `(T+N, 1, head_dim/2)`, f32.
    pub(crate) cos: &'a Array,
    /// RoPE sin, same shape.
    pub(crate) sin: &'a Array,
    /// Boolean `(B, 1, 1, T+N)` key mask, or none.
    pub(crate) mask: Option<&'a Array>,
    /// Number of heads.
    pub(crate) heads: i32,
    /// Head width.
    pub(crate) head_dim: i32,
}

/// One dual-stream block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) img_mod: Linear,
    pub(crate) txt_mod: Linear,
    pub(crate) attn: Attention,
    pub(crate) img_mlp: FeedForward,
    pub(crate) txt_mlp: FeedForward,
}

/// Splits `(B, 6D)` modulation parameters into six `(B, D)` arrays:
/// (shift1, scale1, gate1, shift2, scale2, gate2).
fn mod_params(m: &Array) -> Result<Vec<Array>> {
    Ok(ops::split_equal(m, 6, -1)?)
}

impl Attention {
    fn heads(x: &Array, heads: i32, head_dim: i32) -> Result<Array> {
        Ok(x.reshape(&[x.dim(0), x.dim(1), heads, head_dim])?)
    }

    /// Joint attention over `[text, image]`; returns (image output, text output).
    fn forward(&self, img: &Array, txt: &Array, ctx: &BlockContext<'_>) -> Result<(Array, Array)> {
        let (h, hd) = (ctx.heads, ctx.head_dim);
        let b = img.dim(0);
        let t = txt.dim(1);
        let n = img.dim(1);
        let q_i = rms_norm(
            &Self::heads(&self.to_q.forward(img)?, h, hd)?,
            &self.norm_q,
            NORM_EPS,
        )?;
        let k_i = rms_norm(
            &Self::heads(&self.to_k.forward(img)?, h, hd)?,
            &self.norm_k,
            NORM_EPS,
        )?;
        let v_i = Self::heads(&self.to_v.forward(img)?, h, hd)?;
        let q_t = rms_norm(
            &Self::heads(&self.add_q_proj.forward(txt)?, h, hd)?,
            &self.norm_added_q,
            NORM_EPS,
        )?;
        let k_t = rms_norm(
            &Self::heads(&self.add_k_proj.forward(txt)?, h, hd)?,
            &self.norm_added_k,
            NORM_EPS,
        )?;
        let v_t = Self::heads(&self.add_v_proj.forward(txt)?, h, hd)?;

        // (B, T+N, H, hd), text first; RoPE on the joint sequence with the joint table.
        let q = apply_rope(&ops::concatenate(&[q_t, q_i], 1)?, ctx.cos, ctx.sin)?;
        let k = apply_rope(&ops::concatenate(&[k_t, k_i], 1)?, ctx.cos, ctx.sin)?;
        let v = ops::concatenate(&[v_t, v_i], 1)?;
        let perm = [0, 2, 1, 3];
        let scale = 1.0 / (hd as f32).sqrt();
        let o = sdpa(
            &q.transpose_axes(&perm)?,
            &k.transpose_axes(&perm)?,
            &v.transpose_axes(&perm)?,
            scale,
            ctx.mask,
        )?;
        let o = o.transpose_axes(&perm)?.reshape(&[b, t + n, h * hd])?;
        let parts = ops::split_at_indices(&o, &[t], 1)?;
        let img_out = self.to_out_0.forward(&parts[1])?;
        let txt_out = self.to_add_out.forward(&parts[0])?;
        Ok((img_out, txt_out))
    }
}

/// The image stream's modulation: one parameter set for every token, or (`zero_cond_t`) one
/// for the first `n0` tokens and another for the rest.
enum ImgMod {
    Uniform(Vec<Array>),
    Split(Vec<Array>, Vec<Array>, i32),
}

impl ImgMod {
    /// `LayerNorm(x)·(1 + scale_k) + shift_k` with set `k` (0: attention, 1: MLP).
    fn modulate(&self, x: &Array, k: usize) -> Result<Array> {
        match self {
            ImgMod::Uniform(m) => layer_norm_modulate(x, &m[3 * k], &m[3 * k + 1], NORM_EPS),
            ImgMod::Split(a, b, n0) => {
                let parts = ops::split_at_indices(x, &[*n0], 1)?;
                Ok(ops::concatenate(
                    &[
                        layer_norm_modulate(&parts[0], &a[3 * k], &a[3 * k + 1], NORM_EPS)?,
                        layer_norm_modulate(&parts[1], &b[3 * k], &b[3 * k + 1], NORM_EPS)?,
                    ],
                    1,
                )?)
            }
        }
    }

    /// `x + gate_k · y` with set `k`.
    fn gate(&self, x: &Array, y: &Array, k: usize) -> Result<Array> {
        match self {
            ImgMod::Uniform(m) => gated_residual(x, &m[3 * k + 2], y),
            ImgMod::Split(a, b, n0) => {
                let xs = ops::split_at_indices(x, &[*n0], 1)?;
                let ys = ops::split_at_indices(y, &[*n0], 1)?;
                Ok(ops::concatenate(
                    &[
                        gated_residual(&xs[0], &a[3 * k + 2], &ys[0])?,
                        gated_residual(&xs[1], &b[3 * k + 2], &ys[1])?,
                    ],
                    1,
                )?)
            }
        }
    }
}

impl Block {
    /// `(image stream, text stream)` → updated `(image stream, text stream)`.
    pub(crate) fn forward(
        &self,
        img: &Array,
        txt: &Array,
        ctx: &BlockContext<'_>,
    ) -> Result<(Array, Array)> {
        let im_t = mod_params(&self.img_mod.forward(ctx.silu_temb)?)?;
        let im = match ctx.zero_cond {
            Some((silu_zero, n0)) if n0 < img.dim(1) => {
                ImgMod::Split(im_t, mod_params(&self.img_mod.forward(silu_zero)?)?, n0)
            }
            // no zero_cond_t, or no reference-image tokens: every token uses σ
            _ => ImgMod::Uniform(im_t),
        };
        let tm = mod_params(&self.txt_mod.forward(ctx.silu_temb)?)?;

        let img_in = im.modulate(img, 0)?;
        let txt_in = layer_norm_modulate(txt, &tm[0], &tm[1], NORM_EPS)?;
        let (img_attn, txt_attn) = self.attn.forward(&img_in, &txt_in, ctx)?;
        let img = im.gate(img, &img_attn, 0)?;
        let txt = gated_residual(txt, &tm[2], &txt_attn)?;

        let img_ff = self.img_mlp.forward(&im.modulate(&img, 1)?)?;
        let mut img = im.gate(&img, &img_ff, 1)?;
        let txt_ff = self
            .txt_mlp
            .forward(&layer_norm_modulate(&txt, &tm[3], &tm[4], NORM_EPS)?)?;
        let mut txt = gated_residual(&txt, &tm[5], &txt_ff)?;

        if img.dtype() == Dtype::Float16 {
            img = clip_f16(&img)?;
            txt = clip_f16(&txt)?;
        }
        Ok((img, txt))
    }

    /// Every Linear of the block with its module path below the block.
    pub(crate) fn linears(&self) -> Vec<(&'static str, &Linear)> {
        let a = &self.attn;
        vec![
            ("img_mod.1", &self.img_mod),
            ("attn.to_q", &a.to_q),
            ("attn.to_k", &a.to_k),
            ("attn.to_v", &a.to_v),
            ("attn.add_q_proj", &a.add_q_proj),
            ("attn.add_k_proj", &a.add_k_proj),
            ("attn.add_v_proj", &a.add_v_proj),
            ("attn.to_out.0", &a.to_out_0),
            ("attn.to_add_out", &a.to_add_out),
            ("img_mlp.net.0.proj", &self.img_mlp.proj_in),
            ("img_mlp.net.2", &self.img_mlp.proj_out),
            ("txt_mod.1", &self.txt_mod),
            ("txt_mlp.net.0.proj", &self.txt_mlp.proj_in),
            ("txt_mlp.net.2", &self.txt_mlp.proj_out),
        ]
    }

    /// Mutable access to every Linear of the block, with its module path below the block.
    pub(crate) fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let a = &mut self.attn;
        vec![
            ("img_mod.1", &mut self.img_mod),
            ("attn.to_q", &mut a.to_q),
            ("attn.to_k", &mut a.to_k),
            ("attn.to_v", &mut a.to_v),
            ("attn.add_q_proj", &mut a.add_q_proj),
            ("attn.add_k_proj", &mut a.add_k_proj),
            ("attn.add_v_proj", &mut a.add_v_proj),
            ("attn.to_out.0", &mut a.to_out_0),
            ("attn.to_add_out", &mut a.to_add_out),
            ("img_mlp.net.0.proj", &mut self.img_mlp.proj_in),
            ("img_mlp.net.2", &mut self.img_mlp.proj_out),
            ("txt_mod.1", &mut self.txt_mod),
            ("txt_mlp.net.0.proj", &mut self.txt_mlp.proj_in),
            ("txt_mlp.net.2", &mut self.txt_mlp.proj_out),
        ]
    }

    /// The block's norm weights with their names below the block.
    pub(crate) fn norms(&self) -> Vec<(&'static str, &Array)> {
        let a = &self.attn;
        vec![
            ("attn.norm_q.weight", &a.norm_q),
            ("attn.norm_k.weight", &a.norm_k),
            ("attn.norm_added_q.weight", &a.norm_added_q),
            ("attn.norm_added_k.weight", &a.norm_added_k),
        ]
    }
}
