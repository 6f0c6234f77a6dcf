//! One dual-stream block (diffusers `QwenImageTransformerBlock` + `QwenDoubleStreamAttnProcessor2_0`).

use mlx_rs::{Array, Dtype, ops};

use crate::config::NORM_EPS;
use crate::error::{DitError, Result};
use crate::linear::Linear;
use crate::module::{Norm, declare_module};
use crate::ops::{clip_f16, gated_residual, gelu_tanh, joint_qkv_heads, layer_norm_modulate, sdpa};

declare_module! {
    /// `net.0.proj` (GELU-tanh) → `net.2` feed-forward network, built with
    /// `(inner_dim, ffn_dim)`.
    struct FeedForward(dims: (usize, usize)) {
        /// `inner_dim → ffn_dim`.
        proj_in: Linear = "net.0.proj" (dims.0, dims.1),
        /// `ffn_dim → inner_dim`.
        proj_out: Linear = "net.2" (dims.1, dims.0),
    }
}

impl FeedForward {
    fn forward(&self, x: &Array) -> Result<Array> {
        self.proj_out
            .forward(&gelu_tanh(&self.proj_in.forward(x)?)?)
    }
}

declare_module! {
    /// Joint attention of a block: image projections `to_*`, text projections `add_*_proj`,
    /// per-head RMSNorms, outputs `to_out.0` (image) and `to_add_out` (text). Built with
    /// `(inner_dim, head_dim)`.
    struct Attention(dims: (usize, usize)) {
        to_q: Linear = "to_q" (dims.0, dims.0),
        to_k: Linear = "to_k" (dims.0, dims.0),
        to_v: Linear = "to_v" (dims.0, dims.0),
        add_q_proj: Linear = "add_q_proj" (dims.0, dims.0),
        add_k_proj: Linear = "add_k_proj" (dims.0, dims.0),
        add_v_proj: Linear = "add_v_proj" (dims.0, dims.0),
        to_out_0: Linear = "to_out.0" (dims.0, dims.0),
        to_add_out: Linear = "to_add_out" (dims.0, dims.0),
        norm_q: Norm = "norm_q" (dims.1),
        norm_k: Norm = "norm_k" (dims.1),
        norm_added_q: Norm = "norm_added_q" (dims.1),
        norm_added_k: Norm = "norm_added_k" (dims.1),
    }
}

/// The sizes a block is built with (from the transformer config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockDims {
    /// `num_attention_heads · attention_head_dim`.
    pub(crate) inner: usize,
    /// Feed-forward width (4 × inner).
    pub(crate) ffn: usize,
    /// `attention_head_dim`.
    pub(crate) head_dim: usize,
}

/// Per-forward inputs every block shares.
pub(crate) struct BlockContext<'a> {
    /// SiLU of the timestep embedding, `(B, D)`.
    pub(crate) silu_temb: &'a Array,
    /// `zero_cond_t` models: the number of leading image tokens (the first image)
    /// modulated with `silu_temb`; the rest are modulated with the σ = 0 embedding.
    pub(crate) zero_len: Option<i32>,
    /// `zero_cond_t` models: SiLU of the σ = 0 embedding, needed only by a block whose
    /// modulation was not computed ahead.
    pub(crate) silu_zero: Option<&'a Array>,
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

declare_module! {
    /// One dual-stream block.
    struct Block(d: BlockDims) {
        img_mod: Linear = "img_mod.1" (d.inner, 6 * d.inner),
        attn: Attention = "attn" (d.inner, d.head_dim),
        img_mlp: FeedForward = "img_mlp" (d.inner, d.ffn),
        txt_mod: Linear = "txt_mod.1" (d.inner, 6 * d.inner),
        txt_mlp: FeedForward = "txt_mlp" (d.inner, d.ffn),
    }
}

/// Splits `(B, 6D)` modulation parameters into six `(B, D)` arrays:
/// (shift1, scale1, gate1, shift2, scale2, gate2).
fn mod_params(m: &Array) -> Result<Vec<Array>> {
    Ok(ops::split_equal(m, 6, -1)?)
}

/// Stacks `q`, `k`, `v` into `q` (one GEMM for the three) and marks `k`, `v` absorbed, when
/// they are alike (all float, or quantized alike).
fn fuse_group(q: &mut Linear, k: &mut Linear, v: &mut Linear) -> Result<()> {
    if matches!(k, Linear::Absorbed { .. }) {
        return Ok(());
    }
    if let Some(f) = Linear::concat_rows(&[q, k, v])? {
        let quantized = f.is_quantized();
        *q = f;
        *k = Linear::Absorbed { quantized };
        *v = Linear::Absorbed { quantized };
    }
    Ok(())
}

/// The inverse of [`fuse_group`].
fn unfuse_group(q: &mut Linear, k: &mut Linear, v: &mut Linear) {
    if !matches!(k, Linear::Absorbed { .. }) {
        return;
    }
    let d = q.out_features() / 3;
    (*q, *k, *v) = (q.rows(0, d), q.rows(d, 2 * d), q.rows(2 * d, 3 * d));
}

/// `x` through `q`, `k`, `v`, packed side by side on the last axis: one GEMM when they are
/// fused, else three joined.
fn project(q: &Linear, k: &Linear, v: &Linear, x: &Array) -> Result<Array> {
    if matches!(k, Linear::Absorbed { .. }) {
        q.forward(x)
    } else {
        Ok(ops::concatenate(
            &[q.forward(x)?, k.forward(x)?, v.forward(x)?],
            -1,
        )?)
    }
}

impl Attention {
    /// Image and text Q/K/V each as one GEMM (see `QwenImageTransformer::fuse_projections`).
    pub(crate) fn fuse_projections(&mut self) -> Result<()> {
        fuse_group(&mut self.to_q, &mut self.to_k, &mut self.to_v)?;
        fuse_group(
            &mut self.add_q_proj,
            &mut self.add_k_proj,
            &mut self.add_v_proj,
        )
    }

    /// Separate Q/K/V layers again.
    pub(crate) fn unfuse_projections(&mut self) {
        unfuse_group(&mut self.to_q, &mut self.to_k, &mut self.to_v);
        unfuse_group(
            &mut self.add_q_proj,
            &mut self.add_k_proj,
            &mut self.add_v_proj,
        );
    }

    /// Joint attention over `[text, image]`; returns (image output, text output).
    fn forward(&self, img: &Array, txt: &Array, ctx: &BlockContext<'_>) -> Result<(Array, Array)> {
        let (h, hd) = (ctx.heads, ctx.head_dim);
        let b = img.dim(0);
        let t = txt.dim(1);
        let n = img.dim(1);
        let img_qkv = project(&self.to_q, &self.to_k, &self.to_v, img)?;
        let txt_qkv = project(&self.add_q_proj, &self.add_k_proj, &self.add_v_proj, txt)?;
        // Per-head q/k RMSNorm, [text, image] joined, RoPE with the joint table: one pass
        // into the (B, H, T+N, hd) layout attention reads.
        let [q, k, v] = joint_qkv_heads(&mlx_fastops::JointQkv {
            first: &txt_qkv,
            second: &img_qkv,
            norms: [
                &self.norm_added_q.0,
                &self.norm_added_k.0,
                &self.norm_q.0,
                &self.norm_k.0,
            ],
            heads: h,
            eps: NORM_EPS,
            cos: ctx.cos,
            sin: ctx.sin,
        })?;
        let scale = 1.0 / (hd as f32).sqrt();
        let o = sdpa(&q, &k, &v, scale, ctx.mask)?;
        let perm = [0, 2, 1, 3];
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

/// A block's modulation Linear outputs for one timestep (they depend on nothing else, so the
/// two passes of a true-CFG step can share them).
#[derive(Debug, Clone)]
pub(crate) struct BlockModulation {
    pub(crate) img: Array,
    pub(crate) txt: Array,
    /// `zero_cond_t` models: the image modulation at σ = 0 (for the reference images).
    pub(crate) img_zero: Option<Array>,
}

impl Block {
    /// The modulation of this block for `silu_temb` (`SiLU` of the timestep embedding) and,
    /// for `zero_cond_t` models, `silu_zero` (that of σ = 0). With several rows each output
    /// has as many: one Linear call covers several timesteps, reading the weights once.
    pub(crate) fn modulation(
        &self,
        silu_temb: &Array,
        silu_zero: Option<&Array>,
    ) -> Result<BlockModulation> {
        Ok(BlockModulation {
            img: self.img_mod.forward(silu_temb)?,
            txt: self.txt_mod.forward(silu_temb)?,
            img_zero: silu_zero.map(|z| self.img_mod.forward(z)).transpose()?,
        })
    }

    /// `(image stream, text stream)` → updated `(image stream, text stream)`; `pre`: this
    /// block's modulation computed ahead for the same timestep.
    pub(crate) fn forward(
        &self,
        img: &Array,
        txt: &Array,
        ctx: &BlockContext<'_>,
        pre: Option<&BlockModulation>,
    ) -> Result<(Array, Array)> {
        let own;
        let m = match pre {
            Some(m) => m,
            None => {
                own = self.modulation(ctx.silu_temb, ctx.silu_zero)?;
                &own
            }
        };
        let im_t = mod_params(&m.img)?;
        let im = match (ctx.zero_len, &m.img_zero) {
            (Some(n0), Some(zero)) if n0 < img.dim(1) => ImgMod::Split(im_t, mod_params(zero)?, n0),
            (Some(n0), None) if n0 < img.dim(1) => {
                return Err(DitError::InvalidInput(
                    "a zero_cond_t block needs the σ = 0 modulation".into(),
                ));
            }
            // no zero_cond_t, or no reference-image tokens: every token uses σ
            _ => ImgMod::Uniform(im_t),
        };
        let tm = mod_params(&m.txt)?;

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
}
