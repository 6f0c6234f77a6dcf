//! Qwen2.5-VL's language model, text path: embeddings → decoder layers → final RMSNorm.
//!
//! Mirrors `Qwen2_5_VLTextModel` / `Qwen2_5_VLDecoderLayer` / `Qwen2_5_VLAttention` /
//! `Qwen2MLP` / `Qwen2_5_VLRMSNorm` in transformers' `modeling_qwen2_5_vl.py` (5.23):
//! - pre-norm decoder layer: `h += o_proj(attn(rms(h)))`, `h += down(silu(gate(x))·up(x))`
//!   with `x = rms(h)`;
//! - attention: q/k/v projections with biases, GQA (`num_key_value_heads` shared KV heads),
//!   M-RoPE on q and k (see [`crate::rope`]), scale `head_dim^-½`, causal mask combined with
//!   the padding mask (padded keys never attended);
//! - position ids are `0..T` over the padded sequence whatever the padding side: transformers
//!   builds them this way for text-only inputs (no image grid → no `get_rope_index`).
//!
//! The output is the last hidden state after the final norm (`hidden_states[-1]`).
//! Nothing here evaluates: the caller decides when to run the graph.

use mlx_rs::{Array, Dtype, fast, ops};

use crate::config::TextConfig;
use crate::error::{Result, TextEncoderError};
use crate::rope::{apply_rope, apply_text_rope, mrope_cos_sin, text_rope_periods};
use crate::weights::{LayerWeights, TextModelWeights};

/// How the layers rotate q and k.
enum Rope {
    /// Text positions 0..T: MLX's fused RoPE with these periods.
    Periods(Array),
    /// Per-row M-RoPE tables `(B, 1, T, head_dim)` (cos, sin).
    Tables(Array, Array),
}

/// The language model of Qwen2.5-VL (no LM head); images enter as embeddings
/// ([`QwenTextModel::forward_embeds`]).
#[derive(Debug)]
pub struct QwenTextModel {
    cfg: TextConfig,
    w: TextModelWeights,
    dtype: Dtype,
}

/// The most negative finite value of a float dtype: the additive mask value. A finite value
/// (rather than −∞) keeps fully masked rows (left-padded queries that precede every real
/// token) finite, so no NaN can reach the attended values.
fn mask_min(dtype: Dtype) -> f32 {
    match dtype {
        Dtype::Float16 => -65504.0,
        Dtype::Bfloat16 => -3.389_531_4e38,
        _ => f32::MIN,
    }
}

impl QwenTextModel {
    /// Wraps loaded weights; `dtype` is the activation dtype (the weights' dtype).
    pub fn new(cfg: TextConfig, weights: TextModelWeights, dtype: Dtype) -> Result<Self> {
        if weights.layers.len() != cfg.num_hidden_layers {
            return Err(TextEncoderError::InvalidConfig(format!(
                "{} layers of weights for num_hidden_layers {}",
                weights.layers.len(),
                cfg.num_hidden_layers
            )));
        }
        Ok(Self {
            cfg,
            w: weights,
            dtype,
        })
    }

    /// The resolved config.
    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// The weights.
    pub fn weights(&self) -> &TextModelWeights {
        &self.w
    }

    /// The activation dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The additive attention mask `(B, 1, T, T)` for right- or left-padded rows: query `i`
    /// may attend key `j` when `j ≤ i` and `valid[b][j]`. `None` when no row has padding
    /// (plain causal attention is then used).
    pub fn attention_mask(&self, valid: &[Vec<bool>]) -> Result<Option<Array>> {
        if valid.iter().all(|row| row.iter().all(|&v| v)) {
            return Ok(None);
        }
        let b = valid.len();
        let t = valid.first().map_or(0, Vec::len);
        let neg = mask_min(self.dtype);
        let mut m = vec![0f32; b * t * t];
        for (bi, row) in valid.iter().enumerate() {
            if row.len() != t {
                return Err(TextEncoderError::InvalidInput(
                    "mask rows differ in length".to_string(),
                ));
            }
            for i in 0..t {
                for j in 0..t {
                    if j > i || !row[j] {
                        m[(bi * t + i) * t + j] = neg;
                    }
                }
            }
        }
        let m = Array::from_slice(&m, &[b as i32, 1, t as i32, t as i32]);
        Ok(Some(m.as_dtype(self.dtype)?))
    }

    /// Runs the model on token ids `(B, T)` (already padded) with an optional additive mask
    /// from [`QwenTextModel::attention_mask`]; returns the last hidden state `(B, T, hidden)`.
    pub fn forward(&self, input_ids: &Array, mask: Option<&Array>) -> Result<Array> {
        self.forward_embeds(&self.embed(input_ids)?, None, mask)
    }

    /// The token embeddings of `input_ids` `(B, T)`: `(B, T, hidden)`.
    pub fn embed(&self, input_ids: &Array) -> Result<Array> {
        let shape = input_ids.shape();
        if shape.len() != 2 {
            return Err(TextEncoderError::InvalidInput(format!(
                "input_ids must be (B, T), got {shape:?}"
            )));
        }
        let flat = input_ids.reshape(&[-1])?;
        Ok(self.w.embed_tokens.take_axis(&flat, 0)?.reshape(&[
            shape[0],
            shape[1],
            self.cfg.hidden_size as i32,
        ])?)
    }

    /// Runs the decoder on embeddings `(B, T, hidden)` (e.g. with image features in place of
    /// the image tokens). `positions`: per row, the three M-RoPE position components
    /// ([`crate::rope::rope_index`]); `None` for text positions `0..T` on all three.
    pub fn forward_embeds(
        &self,
        embeds: &Array,
        positions: Option<&[[Vec<i64>; 3]]>,
        mask: Option<&Array>,
    ) -> Result<Array> {
        let c = &self.cfg;
        let (b, t) = (embeds.dim(0), embeds.dim(1));
        let rope = match positions {
            // Text positions: the three M-RoPE components share the position 0..T
            // (transformers' default position ids, whatever the padding), which reduces to
            // rotate-half RoPE with the config's θ and head_dim (see `rope`): one fused kernel.
            None => Rope::Periods(text_rope_periods(c.head_dim, c.rope_theta)),
            Some(rows) => {
                if rows.len() != b as usize || rows.iter().any(|r| r[0].len() != t as usize) {
                    return Err(TextEncoderError::InvalidInput(format!(
                        "position ids for {} rows, embeddings are ({b}, {t})",
                        rows.len()
                    )));
                }
                let (mut cos, mut sin) = (Vec::new(), Vec::new());
                for r in rows {
                    let (cr, sr) = mrope_cos_sin(
                        [&r[0], &r[1], &r[2]],
                        c.head_dim,
                        c.rope_theta,
                        &c.mrope_section,
                    )?;
                    cos.extend(cr);
                    sin.extend(sr);
                }
                // Cast to the activation dtype before use, as transformers does.
                let shape = [b, 1, t, c.head_dim as i32];
                Rope::Tables(
                    Array::from_slice(&cos, &shape).as_dtype(self.dtype)?,
                    Array::from_slice(&sin, &shape).as_dtype(self.dtype)?,
                )
            }
        };
        let mut h = embeds.clone();
        for layer in &self.w.layers {
            h = self.layer(layer, &h, mask, &rope)?;
        }
        Ok(fast::rms_norm(&h, Some(&self.w.norm), c.rms_norm_eps)?)
    }

    fn layer(
        &self,
        w: &LayerWeights,
        h: &Array,
        mask: Option<&Array>,
        rope: &Rope,
    ) -> Result<Array> {
        let c = &self.cfg;
        let (b, t) = (h.shape()[0], h.shape()[1]);
        let d = c.head_dim as i32;
        let x = fast::rms_norm(h, Some(&w.input_layernorm), c.rms_norm_eps)?;
        let heads = |p: &(Array, Array), n: usize| -> Result<Array> {
            let y = ops::addmm(&p.1, &x, p.0.t(), None, None)?;
            Ok(y.reshape(&[b, t, n as i32, d])?
                .transpose_axes(&[0, 2, 1, 3])?)
        };
        let rotate = |x: Array| -> Result<Array> {
            match rope {
                Rope::Periods(p) => apply_text_rope(&x, p),
                Rope::Tables(cos, sin) => apply_rope(&x, cos, sin),
            }
        };
        let q = rotate(heads(&w.q_proj, c.num_attention_heads)?)?;
        let k = rotate(heads(&w.k_proj, c.num_key_value_heads)?)?;
        let v = heads(&w.v_proj, c.num_key_value_heads)?;
        let scale = (c.head_dim as f32).powf(-0.5);
        let o = match mask {
            Some(m) => fast::scaled_dot_product_attention(&q, &k, &v, scale, m, None)?,
            None => fast::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                scale,
                fast::ScaledDotProductAttentionMask::Causal,
                None,
            )?,
        };
        let o = o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[
            b,
            t,
            (c.num_attention_heads as i32) * d,
        ])?;
        let h = h.add(o.matmul(w.o_proj.t())?)?;
        let x = fast::rms_norm(&h, Some(&w.post_attention_layernorm), c.rms_norm_eps)?;
        let gate = x.matmul(w.gate_proj.t())?;
        let up = x.matmul(w.up_proj.t())?;
        // SiLU as x·σ(x): no scalar constants, so the activation dtype is kept.
        let act = gate.multiply(ops::sigmoid(&gate)?)?.multiply(&up)?;
        Ok(h.add(act.matmul(w.down_proj.t())?)?)
    }
}
