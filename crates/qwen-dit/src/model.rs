//! The transformer (diffusers `QwenImageTransformer2DModel.forward`).

use std::collections::BTreeMap;
use std::path::Path;

use mlx_rs::{Array, Dtype, ops, random, transforms::eval};

use crate::block::{Attention, Block, BlockContext, FeedForward};
use crate::config::{NORM_EPS, QuantizationRecord, QwenImageTransformerConfig, TIMESTEP_PROJ_DIM};
use crate::embeddings::TimestepEmbedder;
use crate::error::{DitError, Result};
use crate::linear::Linear;
use crate::ops::{layer_norm_modulate, rms_norm, silu};
use crate::quant::QuantizeSpec;
use crate::rope::RopeTables;
use crate::weights::{load_parts, load_quantizing};

/// The model's parameters, grouped as in diffusers.
#[derive(Debug, Clone)]
pub(crate) struct Parts {
    pub(crate) time_embed: TimestepEmbedder,
    pub(crate) txt_norm: Array,
    pub(crate) img_in: Linear,
    pub(crate) txt_in: Linear,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm_out: Linear,
    pub(crate) proj_out: Linear,
}

/// The Qwen-Image MMDiT: packed image latents + text hidden states + σ → velocity.
#[derive(Debug, Clone)]
pub struct QwenImageTransformer {
    config: QwenImageTransformerConfig,
    dtype: Dtype,
    parts: Parts,
}

fn check_dtype(dtype: Dtype) -> Result<()> {
    match dtype {
        Dtype::Float32 | Dtype::Bfloat16 | Dtype::Float16 => Ok(()),
        other => Err(DitError::Unsupported(format!(
            "compute dtype {other:?} (use Float32, Bfloat16 or Float16)"
        ))),
    }
}

impl QwenImageTransformer {
    /// Loads a diffusers `transformer/` folder (`config.json` + one safetensors file or shards
    /// with an index) in compute dtype `dtype` (f32, bf16 or f16). Layers the checkpoint
    /// stores MLX-quantized stay quantized; with `quant`, the float Linear layers it selects
    /// are quantized on the fly, shard by shard (only one shard's float weights are held at
    /// a time).
    pub fn load(dir: &Path, dtype: Dtype, quant: Option<QuantizeSpec>) -> Result<Self> {
        let config = QwenImageTransformerConfig::from_file(&dir.join("config.json"))?;
        config.validate()?;
        check_dtype(dtype)?;
        let tensors = match &quant {
            Some(spec) => load_quantizing(dir, &config, spec, dtype)?,
            None => mlx_weights::load_component(dir)?,
        };
        Self::from_tensors(config, tensors, dtype, None)
    }

    /// Builds the model from already-read tensors (diffusers or aliased names); see
    /// [`QwenImageTransformer::load`]. The weights are evaluated before this returns.
    pub fn from_tensors(
        config: QwenImageTransformerConfig,
        tensors: mlx_weights::Tensors,
        dtype: Dtype,
        quant: Option<QuantizeSpec>,
    ) -> Result<Self> {
        config.validate()?;
        check_dtype(dtype)?;
        if let Some(q) = &quant {
            q.validate()?;
        }
        let parts = load_parts(&config, tensors, dtype)?;
        let mut model = Self {
            config,
            dtype,
            parts,
        };
        if let Some(q) = quant {
            model.quantize(&q)?;
        }
        // Materialise the (cast) weights now, so the checkpoint's buffers are released here
        // and the first denoising step does not pay for the casts.
        model.eval_weights()?;
        Ok(model)
    }

    /// A model with random weights at the size `config` gives (for benchmarks; nothing is
    /// read from disk). Weights ~ N(0, 1/in_features), biases ~ N(0, 0.02²), norm weights
    /// ~ 1 + N(0, 0.1²). Deterministic for a given `seed`. The weights are evaluated block by
    /// block here so that building a full-size model never holds f32 temporaries for all of it.
    pub fn random(config: QwenImageTransformerConfig, dtype: Dtype, seed: u64) -> Result<Self> {
        config.validate()?;
        check_dtype(dtype)?;
        let mut key = random::key(seed)?;
        let mut next = || -> Result<Array> {
            let (a, b) = random::split(&key, 2)?;
            key = a;
            Ok(b)
        };
        let mut normal = |shape: &[i32], loc: f32, std: f32| -> Result<Array> {
            let k = next()?;
            Ok(random::normal::<f32>(shape, loc, std, &k)?.as_dtype(dtype)?)
        };
        let mut lin = |din: usize, dout: usize| -> Result<Linear> {
            let std = 1.0 / (din as f32).sqrt();
            Ok(Linear::Float {
                weight: normal(&[dout as i32, din as i32], 0.0, std)?,
                bias: normal(&[dout as i32], 0.0, 0.02)?,
            })
        };
        let d = config.inner_dim();
        let f = config.ffn_dim();
        let time_embed = TimestepEmbedder::new(lin(TIMESTEP_PROJ_DIM, d)?, lin(d, d)?);
        let img_in = lin(config.in_channels, d)?;
        let txt_in = lin(config.joint_attention_dim, d)?;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for _ in 0..config.num_layers {
            let block = Block {
                img_mod: lin(d, 6 * d)?,
                txt_mod: lin(d, 6 * d)?,
                attn: Attention {
                    to_q: lin(d, d)?,
                    to_k: lin(d, d)?,
                    to_v: lin(d, d)?,
                    add_q_proj: lin(d, d)?,
                    add_k_proj: lin(d, d)?,
                    add_v_proj: lin(d, d)?,
                    to_out_0: lin(d, d)?,
                    to_add_out: lin(d, d)?,
                    norm_q: Array::from_f32(0.0),
                    norm_k: Array::from_f32(0.0),
                    norm_added_q: Array::from_f32(0.0),
                    norm_added_k: Array::from_f32(0.0),
                },
                img_mlp: FeedForward {
                    proj_in: lin(d, f)?,
                    proj_out: lin(f, d)?,
                },
                txt_mlp: FeedForward {
                    proj_in: lin(d, f)?,
                    proj_out: lin(f, d)?,
                },
            };
            blocks.push(block);
        }
        let norm_out = lin(d, 2 * d)?;
        let proj_out = lin(d, config.proj_out_dim())?;
        // Norm weights (drawn after the Linears so the closures above are released).
        let hd = config.attention_head_dim as i32;
        let txt_norm = normal(&[config.joint_attention_dim as i32], 1.0, 0.1)?;
        for b in blocks.iter_mut() {
            b.attn.norm_q = normal(&[hd], 1.0, 0.1)?;
            b.attn.norm_k = normal(&[hd], 1.0, 0.1)?;
            b.attn.norm_added_q = normal(&[hd], 1.0, 0.1)?;
            b.attn.norm_added_k = normal(&[hd], 1.0, 0.1)?;
        }
        let model = Self {
            config,
            dtype,
            parts: Parts {
                time_embed,
                txt_norm,
                img_in,
                txt_in,
                blocks,
                norm_out,
                proj_out,
            },
        };
        model.eval_weights()?;
        Ok(model)
    }

    /// Materialises every parameter, block by block (bounded temporary memory).
    fn eval_weights(&self) -> Result<()> {
        let mut pending: Vec<Array> = Vec::new();
        let mut flush = |arrays: Vec<Array>| -> Result<()> {
            pending.extend(arrays);
            eval(pending.iter())?;
            pending.clear();
            Ok(())
        };
        let p = &self.parts;
        let mut head: Vec<Array> = vec![p.txt_norm.clone()];
        for l in [
            &p.time_embed.linear_1,
            &p.time_embed.linear_2,
            &p.img_in,
            &p.txt_in,
            &p.norm_out,
            &p.proj_out,
        ] {
            head.extend(l.arrays().into_iter().map(|(_, a)| a.clone()));
        }
        flush(head)?;
        for b in &p.blocks {
            let mut v: Vec<Array> = b.norms().into_iter().map(|(_, a)| a.clone()).collect();
            for (_, l) in b.linears() {
                v.extend(l.arrays().into_iter().map(|(_, a)| a.clone()));
            }
            flush(v)?;
        }
        Ok(())
    }

    /// The model's configuration.
    pub fn config(&self) -> &QwenImageTransformerConfig {
        &self.config
    }

    /// The compute dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Every Linear layer with its diffusers module path.
    fn linears(&self) -> Vec<(String, &Linear)> {
        let p = &self.parts;
        let mut v: Vec<(String, &Linear)> = vec![
            (
                "time_text_embed.timestep_embedder.linear_1".into(),
                &p.time_embed.linear_1,
            ),
            (
                "time_text_embed.timestep_embedder.linear_2".into(),
                &p.time_embed.linear_2,
            ),
            ("img_in".into(), &p.img_in),
            ("txt_in".into(), &p.txt_in),
        ];
        for (i, b) in p.blocks.iter().enumerate() {
            for (n, l) in b.linears() {
                v.push((format!("transformer_blocks.{i}.{n}"), l));
            }
        }
        v.push(("norm_out.linear".into(), &p.norm_out));
        v.push(("proj_out".into(), &p.proj_out));
        v
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let p = &mut self.parts;
        let mut v: Vec<(String, &mut Linear)> = vec![
            (
                "time_text_embed.timestep_embedder.linear_1".into(),
                &mut p.time_embed.linear_1,
            ),
            (
                "time_text_embed.timestep_embedder.linear_2".into(),
                &mut p.time_embed.linear_2,
            ),
            ("img_in".into(), &mut p.img_in),
            ("txt_in".into(), &mut p.txt_in),
        ];
        for (i, b) in p.blocks.iter_mut().enumerate() {
            for (n, l) in b.linears_mut() {
                v.push((format!("transformer_blocks.{i}.{n}"), l));
            }
        }
        v.push(("norm_out.linear".into(), &mut p.norm_out));
        v.push(("proj_out".into(), &mut p.proj_out));
        v
    }

    /// Number of quantized Linear layers.
    pub fn quantized_layer_count(&self) -> usize {
        self.linears()
            .iter()
            .filter(|(_, l)| l.is_quantized())
            .count()
    }

    /// Module paths of the quantized Linear layers.
    pub fn quantized_layers(&self) -> Vec<String> {
        self.linears()
            .into_iter()
            .filter(|(_, l)| l.is_quantized())
            .map(|(n, _)| n)
            .collect()
    }

    /// Quantizes, in place, the float Linear layers `spec` selects (already quantized layers
    /// are left as they are). Each layer is evaluated as it is quantized so the float weight
    /// can be released.
    pub fn quantize(&mut self, spec: &QuantizeSpec) -> Result<()> {
        spec.validate()?;
        for (path, l) in self.linears_mut() {
            if l.is_quantized() || !spec.quantizes(&path, l.in_features() as usize) {
                continue;
            }
            let q = l.quantized(spec.group_size, spec.bits)?;
            eval(q.arrays().into_iter().map(|(_, a)| a))?;
            *l = q;
        }
        Ok(())
    }

    /// A copy of the model with every quantized layer replaced by its dequantized float
    /// weights (same numbers the quantized matmul uses; for tests and comparisons).
    pub fn dequantized(&self) -> Result<Self> {
        let mut m = self.clone();
        let dt = self.dtype;
        for (_, l) in m.linears_mut() {
            if let Linear::Quantized { bias, .. } = &*l {
                let bias = bias.clone();
                *l = Linear::Float {
                    weight: l.dense_weight(dt)?,
                    bias,
                };
            }
        }
        Ok(m)
    }

    /// Every parameter under its diffusers key, quantized layers as MLX stores them
    /// (`weight` packed u32, `scales`, `biases`, `bias`).
    pub fn weights(&self) -> BTreeMap<String, Array> {
        let mut out = BTreeMap::new();
        for (path, l) in self.linears() {
            l.export(&path, &mut out);
        }
        out.insert("txt_norm.weight".into(), self.parts.txt_norm.clone());
        for (i, b) in self.parts.blocks.iter().enumerate() {
            for (n, a) in b.norms() {
                out.insert(format!("transformer_blocks.{i}.{n}"), a.clone());
            }
        }
        out
    }

    /// Writes the model as a `transformer/` folder: `config.json` (with a `quantization`
    /// record when some layers are quantized) and `diffusion_pytorch_model.safetensors`.
    /// [`QwenImageTransformer::load`] reads it back.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| DitError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut config = self.config.clone();
        config.quantization = self.linears().iter().find_map(|(_, l)| match l {
            Linear::Quantized {
                group_size, bits, ..
            } => Some(QuantizationRecord {
                group_size: *group_size,
                bits: *bits,
            }),
            Linear::Float { .. } => None,
        });
        let mut value = serde_json::to_value(&config)
            .map_err(|e| DitError::InvalidConfig(format!("cannot serialise config: {e}")))?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "_class_name".into(),
                serde_json::Value::String("QwenImageTransformer2DModel".into()),
            );
        }
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| DitError::InvalidConfig(format!("cannot serialise config: {e}")))?;
        mlx_weights::write_atomic(&dir.join("config.json"), text.as_bytes())?;
        mlx_weights::save_file(
            &dir.join("diffusion_pytorch_model.safetensors"),
            &self.weights(),
        )?;
        Ok(())
    }

    /// `zero_cond_t` models: SiLU of the embedding of σ = 0 (for the reference images'
    /// tokens), one row per row of `timestep`; `None` otherwise.
    fn zero_cond_embedding(&self, timestep: &Array) -> Result<Option<Array>> {
        if !self.config.zero_cond_t {
            return Ok(None);
        }
        let zero = ops::zeros_like(timestep)?;
        Ok(Some(silu(
            &self.parts.time_embed.forward(&zero, self.dtype)?,
        )?))
    }

    /// Runs block `index` alone on residual streams — image `(B, N, inner_dim)`, text
    /// `(B, T, inner_dim)` — at σ = `timestep`; returns the updated (image, text) streams.
    /// For benchmarks and debugging: [`QwenImageTransformer::forward`] is the model.
    pub fn forward_block(
        &self,
        index: usize,
        img: &Array,
        txt: &Array,
        encoder_mask: Option<&Array>,
        timestep: &Array,
        rope: &RopeTables,
    ) -> Result<(Array, Array)> {
        let block = self.parts.blocks.get(index).ok_or_else(|| {
            DitError::InvalidInput(format!(
                "block {index} out of range (the model has {})",
                self.parts.blocks.len()
            ))
        })?;
        let d = self.config.inner_dim() as i32;
        let (is, ts) = (img.shape(), txt.shape());
        if is.len() != 3 || ts.len() != 3 || is[2] != d || ts[2] != d || is[0] != ts[0] {
            return Err(DitError::InvalidInput(format!(
                "streams must be (B, N, {d}) and (B, T, {d}), got {is:?} and {ts:?}"
            )));
        }
        if rope.txt_len() != ts[1] as usize || rope.img_len() != is[1] as usize {
            return Err(DitError::InvalidInput(
                "RoPE tables do not match the stream lengths".into(),
            ));
        }
        let temb = self.parts.time_embed.forward(timestep, self.dtype)?;
        let silu_temb = silu(&temb)?;
        let silu_zero = self.zero_cond_embedding(timestep)?;
        let mask = joint_mask(encoder_mask, is[0], ts[1], is[1])?;
        let ctx = BlockContext {
            silu_temb: &silu_temb,
            zero_cond: silu_zero.as_ref().map(|z| (z, rope.first_img_len() as i32)),
            cos: rope.cos(),
            sin: rope.sin(),
            mask: mask.as_ref(),
            heads: self.config.num_attention_heads as i32,
            head_dim: self.config.attention_head_dim as i32,
        };
        block.forward(img, txt, &ctx)
    }

    /// One denoising evaluation.
    ///
    /// - `hidden_states`: packed latents `(B, N, in_channels)`, N = the image tokens `rope`
    ///   was built for;
    /// - `encoder_hidden_states`: text hidden states `(B, T, joint_attention_dim)`;
    /// - `encoder_mask`: `(B, T)`, non-zero for real tokens, zero for padding (any dtype), or
    ///   `None` when every token is real (batch 1);
    /// - `timestep`: σ ∈ [0, 1], shape `(B,)` or `(1,)` (the model multiplies by 1000);
    /// - `rope`: tables from [`RopeTables::new`] for this image grid and text length T.
    ///
    /// Returns the velocity `(B, N, patch_size²·out_channels)` in the compute dtype. Builds
    /// the lazy graph only: the caller evaluates it.
    pub fn forward(
        &self,
        hidden_states: &Array,
        encoder_hidden_states: &Array,
        encoder_mask: Option<&Array>,
        timestep: &Array,
        rope: &RopeTables,
    ) -> Result<Array> {
        let cfg = &self.config;
        let (hs, es) = (hidden_states.shape(), encoder_hidden_states.shape());
        if hs.len() != 3 || hs[2] as usize != cfg.in_channels {
            return Err(DitError::InvalidInput(format!(
                "hidden_states must be (B, N, {}), got {hs:?}",
                cfg.in_channels
            )));
        }
        let (b, n) = (hs[0], hs[1]);
        if es.len() != 3 || es[0] != b || es[2] as usize != cfg.joint_attention_dim {
            return Err(DitError::InvalidInput(format!(
                "encoder_hidden_states must be ({b}, T, {}), got {es:?}",
                cfg.joint_attention_dim
            )));
        }
        let t = es[1];
        if rope.txt_len() != t as usize
            || rope.img_len() != n as usize
            || rope.head_dim() != cfg.attention_head_dim
        {
            return Err(DitError::InvalidInput(format!(
                "RoPE tables are for {} text + {} image tokens (head dim {}), inputs have {t} + {n} (head dim {})",
                rope.txt_len(),
                rope.img_len(),
                rope.head_dim(),
                cfg.attention_head_dim
            )));
        }
        let ts = timestep.shape();
        if ts.len() != 1 || (ts[0] != b && ts[0] != 1) {
            return Err(DitError::InvalidInput(format!(
                "timestep must be ({b},) or (1,), got {ts:?}"
            )));
        }
        if let Some(m) = encoder_mask
            && m.shape() != [b, t]
        {
            return Err(DitError::InvalidInput(format!(
                "encoder_mask must be ({b}, {t}), got {:?}",
                m.shape()
            )));
        }

        let dt = self.dtype;
        let cast = |a: &Array| -> Result<Array> {
            Ok(if a.dtype() == dt {
                a.clone()
            } else {
                a.as_dtype(dt)?
            })
        };
        let p = &self.parts;
        let mut img = p.img_in.forward(&cast(hidden_states)?)?;
        let mut txt = p.txt_in.forward(&rms_norm(
            &cast(encoder_hidden_states)?,
            &p.txt_norm,
            NORM_EPS,
        )?)?;
        let temb = p.time_embed.forward(timestep, dt)?;
        let silu_temb = silu(&temb)?;
        let silu_zero = self.zero_cond_embedding(timestep)?;
        // f32 tables: the RoPE rotation is computed in f32 and rounded once, as diffusers.
        let (cos, sin) = (rope.cos(), rope.sin());
        let mask = joint_mask(encoder_mask, b, t, n)?;
        let ctx = BlockContext {
            silu_temb: &silu_temb,
            zero_cond: silu_zero.as_ref().map(|z| (z, rope.first_img_len() as i32)),
            cos,
            sin,
            mask: mask.as_ref(),
            heads: cfg.num_attention_heads as i32,
            head_dim: cfg.attention_head_dim as i32,
        };
        for block in &p.blocks {
            (img, txt) = block.forward(&img, &txt, &ctx)?;
        }
        // AdaLayerNormContinuous: its linear output splits (scale, shift) — the opposite
        // order of the blocks' (shift, scale, gate).
        let emb = p.norm_out.forward(&silu_temb)?;
        let halves = ops::split_equal(&emb, 2, -1)?;
        let (scale, shift) = (&halves[0], &halves[1]);
        let out = layer_norm_modulate(&img, shift, scale, NORM_EPS)?;
        p.proj_out.forward(&out)
    }
}

/// The boolean `(B, 1, 1, T+N)` key mask of the joint sequence: the text mask (non-zero =
/// keep) followed by N image tokens that are always kept; `None` without a text mask.
fn joint_mask(encoder_mask: Option<&Array>, b: i32, t: i32, n: i32) -> Result<Option<Array>> {
    let Some(m) = encoder_mask else {
        return Ok(None);
    };
    if m.shape() != [b, t] {
        return Err(DitError::InvalidInput(format!(
            "encoder_mask must be ({b}, {t}), got {:?}",
            m.shape()
        )));
    }
    let zero = Array::from_int(0).as_dtype(m.dtype())?;
    let txt_keep = ops::ne(m, zero)?;
    let img_keep = ops::ones_dtype(&[b, n], Dtype::Bool)?;
    Ok(Some(
        ops::concatenate(&[txt_keep, img_keep], 1)?.reshape(&[b, 1, 1, t + n])?,
    ))
}
