//! The transformer (diffusers `QwenImageTransformer2DModel.forward`).

use std::collections::BTreeMap;
use std::path::Path;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype, ops, transforms::eval};
use mlx_weights::{ParamSpec, RandomSource, ShapeRecorder, StrictLoader, Vars};

use crate::block::{Block, BlockContext, BlockDims};
use crate::config::{NORM_EPS, QuantizationRecord, QwenImageTransformerConfig};
use crate::embeddings::{TimestepEmbedder, timestep_freq_table};
use crate::error::{DitError, Result};
use crate::linear::Linear;
use crate::lora::{LoraSet, merge_updates};
use crate::module::{Module, Norm, Param, declare_module};
use crate::ops::{layer_norm_modulate, rms_norm, silu};
use crate::quant::QuantizeSpec;
use crate::rope::RopeTables;
use crate::weights::{canonicalize, load_quantizing};

/// The sizes the model is built with, all from the config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelDims {
    block: BlockDims,
    in_channels: usize,
    joint: usize,
    out: usize,
    layers: usize,
}

impl ModelDims {
    fn new(c: &QwenImageTransformerConfig) -> Self {
        Self {
            block: BlockDims {
                inner: c.inner_dim(),
                ffn: c.ffn_dim(),
                head_dim: c.attention_head_dim,
            },
            in_channels: c.in_channels,
            joint: c.joint_attention_dim,
            out: c.proj_out_dim(),
            layers: c.num_layers,
        }
    }
}

declare_module! {
    /// The model's parameters, grouped and named as in diffusers.
    struct Parts(d: ModelDims) {
        time_embed: TimestepEmbedder = "time_text_embed.timestep_embedder" (d.block.inner),
        txt_norm: Norm = "txt_norm" (d.joint),
        img_in: Linear = "img_in" (d.in_channels, d.block.inner),
        txt_in: Linear = "txt_in" (d.joint, d.block.inner),
        blocks: Vec<Block> = "transformer_blocks" (d.layers, d.block),
        norm_out: Linear = "norm_out.linear" (d.block.inner, 2 * d.block.inner),
        proj_out: Linear = "proj_out" (d.block.inner, d.out),
    }
}

/// Every parameter of a model with this config (key, shape, role), in declaration order,
/// from the modules' declarations alone (nothing is allocated).
pub(crate) fn parameter_specs(config: &QwenImageTransformerConfig) -> Vec<ParamSpec> {
    let mut rec = ShapeRecorder::new(Dtype::Float32);
    Parts::load(&mut Vars::new(&mut rec), ModelDims::new(config));
    rec.params
}

/// The Qwen-Image MMDiT: packed image latents + text hidden states + σ → velocity.
#[derive(Debug, Clone)]
pub struct QwenImageTransformer {
    config: QwenImageTransformerConfig,
    dtype: Dtype,
    parts: Parts,
    /// The timestep embedder's frequency table, made once.
    time_freqs: Array,
    /// Whether each block's Q/K/V projections run as one GEMM
    /// ([`QwenImageTransformer::fuse_projections`]).
    fused: bool,
}

fn check_dtype(dtype: Dtype) -> Result<()> {
    mlx_fastops::ComputeDtype::try_from(dtype)?;
    Ok(())
}

impl QwenImageTransformer {
    /// Loads a diffusers `transformer/` folder (`config.json` + one safetensors file or shards
    /// with an index) in compute dtype `dtype` (f32, bf16 or f16). Layers the checkpoint
    /// stores MLX-quantized stay quantized; with `quant`, the float Linear layers it selects
    /// are quantized on the fly, shard by shard (only one shard's float weights are held at
    /// a time).
    pub fn load(dir: &Path, dtype: Dtype, quant: Option<QuantizeSpec>) -> Result<Self> {
        Self::load_with_lora(dir, dtype, quant, LoraSet::new())
    }

    /// [`QwenImageTransformer::load`] with `lora` merged into the float weights as they are
    /// read (before quantization when `quant` is given), each layer evaluated as it is merged
    /// so the extra memory is one layer's f32 temporaries. The set is checked against the
    /// config first: nothing is half-applied.
    pub fn load_with_lora(
        dir: &Path,
        dtype: Dtype,
        quant: Option<QuantizeSpec>,
        mut lora: LoraSet,
    ) -> Result<Self> {
        let config = QwenImageTransformerConfig::from_file(&dir.join("config.json"))?;
        config.validate()?;
        check_dtype(dtype)?;
        lora.check(&config)?;
        let tensors = match &quant {
            // Merged layers leave the set as they are quantized.
            Some(spec) => load_quantizing(dir, &config, spec, dtype, &mut lora)?.0,
            None => mlx_weights::load_component(dir)?,
        };
        Self::from_tensors_with_lora(config, tensors, dtype, None, lora)
    }

    /// Builds the model from already-read tensors (diffusers or aliased names); see
    /// [`QwenImageTransformer::load`]. The weights are evaluated before this returns.
    pub fn from_tensors(
        config: QwenImageTransformerConfig,
        tensors: mlx_weights::Tensors,
        dtype: Dtype,
        quant: Option<QuantizeSpec>,
    ) -> Result<Self> {
        Self::from_tensors_with_lora(config, tensors, dtype, quant, LoraSet::new())
    }

    /// [`QwenImageTransformer::from_tensors`] with `lora` merged before quantization.
    pub fn from_tensors_with_lora(
        config: QwenImageTransformerConfig,
        tensors: mlx_weights::Tensors,
        dtype: Dtype,
        quant: Option<QuantizeSpec>,
        lora: LoraSet,
    ) -> Result<Self> {
        config.validate()?;
        check_dtype(dtype)?;
        if let Some(q) = &quant {
            q.validate()?;
        }
        let mut loader = StrictLoader::new(canonicalize(tensors)?, dtype);
        let parts = Parts::load(&mut Vars::new(&mut loader), ModelDims::new(&config));
        loader.finish(&[])?;
        let mut model = Self {
            config,
            dtype,
            parts,
            time_freqs: timestep_freq_table(),
            fused: false,
        };
        model.merge_lora(lora)?;
        if let Some(q) = quant {
            model.quantize(&q)?;
        }
        // Materialise the (cast) weights now, so the checkpoint's buffers are released here
        // and the first denoising step does not pay for the casts.
        model.eval_weights()?;
        Ok(model)
    }

    /// A model with random weights at the size `config` gives (for benchmarks; nothing is
    /// read from disk), drawn per parameter role (`mlx_weights::Role::distribution`: Linear
    /// weights N(0, 1/in_features), biases N(0, 0.02²), norm weights 1 + N(0, 0.1²)).
    /// Deterministic for a given `seed`. Each parameter is evaluated as it is drawn, so
    /// building a full-size model never holds more than one f32 temporary.
    pub fn random(config: QwenImageTransformerConfig, dtype: Dtype, seed: u64) -> Result<Self> {
        config.validate()?;
        check_dtype(dtype)?;
        let mut src = RandomSource::new(seed, dtype)?;
        let parts = Parts::load(&mut Vars::new(&mut src), ModelDims::new(&config));
        src.finish()?;
        Ok(Self {
            config,
            dtype,
            parts,
            time_freqs: timestep_freq_table(),
            fused: false,
        })
    }

    /// Materialises every parameter: the parameters outside the blocks, then block by block
    /// (bounded temporary memory while lazy casts run).
    fn eval_weights(&self) -> Result<()> {
        fn arrays<'a>(m: &'a impl Module, path: &str, skip: Option<&str>) -> Vec<&'a Array> {
            let mut v = Vec::new();
            m.visit(path, &mut |p, param| {
                if skip.is_some_and(|s| p.starts_with(s)) {
                    return;
                }
                match param {
                    Param::Linear(l) => v.extend(l.arrays().into_iter().map(|(_, a)| a)),
                    Param::Norm(a) => v.push(a),
                }
            });
            v
        }
        eval(arrays(&self.parts, "", Some("transformer_blocks.")))?;
        for b in &self.parts.blocks {
            eval(arrays(b, "", None))?;
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

    /// Every Linear layer with its diffusers module path, in declaration order.
    fn linears(&self) -> Vec<(String, &Linear)> {
        let mut v = Vec::new();
        self.parts.visit("", &mut |p, param| {
            if let Param::Linear(l) = param {
                v.push((p.to_string(), l));
            }
        });
        v
    }

    /// Calls `f` with every Linear layer and its diffusers module path (e.g.
    /// `transformer_blocks.3.attn.to_q`), in declaration order; stops at the first error.
    pub(crate) fn for_each_linear_mut(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()> {
        self.parts.visit_linears_mut("", f)
    }

    /// Adds `lora`'s updates to the float Linear layers it names (checked against the config
    /// first; a layer the checkpoint stores quantized cannot take an update). Each merged
    /// layer is evaluated at once, so the extra memory is one layer's f32 temporaries.
    /// Returns the number of layers changed.
    pub fn merge_lora(&mut self, lora: LoraSet) -> Result<usize> {
        if lora.is_empty() {
            return Ok(0);
        }
        let refuse = self.fused;
        self.unfuse_projections();
        let merged = self.merge_lora_unfused(lora);
        if refuse {
            self.fuse_projections()?;
        }
        merged
    }

    fn merge_lora_unfused(&mut self, mut lora: LoraSet) -> Result<usize> {
        lora.check(&self.config)?;
        let dt = self.dtype;
        let mut changed = 0;
        self.for_each_linear_mut(&mut |path, l| {
            let Linear::Float { weight, .. } = l else {
                if lora.modules().any(|m| m == path) {
                    return Err(DitError::Lora(format!(
                        "`{path}` is stored quantized in the checkpoint; merge the LoRA into the \
                         float checkpoint and quantize on load instead"
                    )));
                }
                return Ok(());
            };
            // Taken out of the set: the update is released once its layer is merged.
            if let Some(updates) = lora.take(path) {
                let w = merge_updates(&updates, weight, dt)?;
                w.eval()?;
                *weight = w;
                changed += 1;
            }
            Ok(())
        })?;
        Ok(changed)
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
        let refuse = self.fused;
        self.unfuse_projections();
        self.for_each_linear_mut(&mut |path, l| {
            if l.is_quantized() || !spec.quantizes(path, l.in_features() as usize) {
                return Ok(());
            }
            let q = l.quantized(spec.group_size, spec.bits)?;
            eval(q.arrays().into_iter().map(|(_, a)| a))?;
            *l = q;
            Ok(())
        })?;
        if refuse {
            self.fuse_projections()?;
        }
        Ok(())
    }

    /// Runs each block's image and text Q/K/V projections as one GEMM each (their weights
    /// stacked: one larger matmul is faster than three; on an H200 at 1024² 0.124 against
    /// 0.145 ms per image projection, 0.019 against 0.043 per text one). Same outputs up to
    /// the GEMM's summation order. Merging LoRAs, quantizing and exporting still see the
    /// separate layers. Each block is evaluated as it is fused, so the separate weights are
    /// released as it goes.
    pub fn fuse_projections(&mut self) -> Result<()> {
        if self.fused {
            return Ok(());
        }
        for block in &mut self.parts.blocks {
            block.attn.fuse_projections()?;
            eval(block.attn.to_q.arrays().into_iter().map(|(_, a)| a))?;
            eval(block.attn.add_q_proj.arrays().into_iter().map(|(_, a)| a))?;
        }
        self.fused = true;
        Ok(())
    }

    /// Splits fused projections back into their layers (see [`Self::fuse_projections`]).
    fn unfuse_projections(&mut self) {
        if !self.fused {
            return;
        }
        for block in &mut self.parts.blocks {
            block.attn.unfuse_projections();
        }
        self.fused = false;
    }

    /// This model with separate projections (a copy, of views, when they are fused).
    fn unfused(&self) -> std::borrow::Cow<'_, Self> {
        if !self.fused {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut m = self.clone();
        m.unfuse_projections();
        std::borrow::Cow::Owned(m)
    }

    /// A copy of the model with every quantized layer replaced by its dequantized float
    /// weights (same numbers the quantized matmul uses; for tests and comparisons).
    pub fn dequantized(&self) -> Result<Self> {
        let mut m = self.unfused().into_owned();
        let dt = self.dtype;
        m.for_each_linear_mut(&mut |_, l| {
            if let Linear::Quantized { bias, .. } = &*l {
                let bias = bias.clone();
                *l = Linear::Float {
                    weight: l.dense_weight(dt)?,
                    bias,
                };
            }
            Ok(())
        })?;
        Ok(m)
    }

    /// Every parameter under its diffusers key, quantized layers as MLX stores them
    /// (`weight` packed u32, `scales`, `biases`, `bias`).
    pub fn weights(&self) -> BTreeMap<String, Array> {
        if self.fused {
            return self.unfused().weights();
        }
        let mut out = BTreeMap::new();
        self.parts.visit("", &mut |path, param| match param {
            Param::Linear(l) => l.export(path, &mut out),
            Param::Norm(a) => {
                out.insert(format!("{path}.weight"), a.clone());
            }
        });
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
            _ => None,
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
        Ok(Some(silu(&self.parts.time_embed.forward(
            &zero,
            &self.time_freqs,
            self.dtype,
        )?)?))
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
        let temb = self
            .parts
            .time_embed
            .forward(timestep, &self.time_freqs, self.dtype)?;
        let silu_temb = silu(&temb)?;
        let silu_zero = self.zero_cond_embedding(timestep)?;
        let mask = joint_mask(encoder_mask, is[0], ts[1], is[1])?;
        let ctx = BlockContext {
            silu_temb: &silu_temb,
            zero_len: self.zero_len(rope),
            silu_zero: silu_zero.as_ref(),
            cos: rope.cos(),
            sin: rope.sin(),
            mask: mask.as_ref(),
            heads: self.config.num_attention_heads as i32,
            head_dim: self.config.attention_head_dim as i32,
        };
        block.forward(img, txt, &ctx, None)
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
        self.forward_modulated(
            hidden_states,
            encoder_hidden_states,
            encoder_mask,
            timestep,
            rope,
            None,
        )
    }

    /// The modulation of every block (and of the output norm) for `timestep`, lazily: what
    /// [`Self::forward_modulated`] can share between the passes of one step, which all run at
    /// the same timestep (the two passes of true CFG: one computation instead of two).
    pub fn modulation(&self, timestep: &Array) -> Result<StepModulation> {
        self.modulations(std::slice::from_ref(timestep))?
            .pop()
            .ok_or_else(|| DitError::InvalidInput("no modulation computed".into()))
    }

    /// [`Self::modulation`] for several timesteps at once, lazily: each modulation Linear
    /// runs once on all of them (one row per timestep row), so its weights (a third of the
    /// model's bytes read per forward at one row) are read once instead of once per
    /// timestep. Each timestep must have the same shape, `(B,)` or `(1,)`; the result for
    /// each is what [`Self::modulation`] gives up to the GEMM's summation order.
    pub fn modulations(&self, timesteps: &[Array]) -> Result<Vec<StepModulation>> {
        let Some(first) = timesteps.first() else {
            return Ok(Vec::new());
        };
        let rows = first.shape();
        if rows.len() != 1 || timesteps.iter().any(|t| t.shape() != rows) {
            return Err(DitError::InvalidInput(format!(
                "timesteps must share one shape (B,), got {:?}",
                timesteps
                    .iter()
                    .map(|t| t.shape().to_vec())
                    .collect::<Vec<_>>()
            )));
        }
        let k = rows[0];
        let all = match timesteps {
            [one] => one.clone(),
            many => ops::concatenate(many, 0)?,
        };
        let p = &self.parts;
        let silu_all = silu(&p.time_embed.forward(&all, &self.time_freqs, self.dtype)?)?;
        // σ = 0 is the same for every timestep: computed for one timestep's rows.
        let silu_zero = self.zero_cond_embedding(first)?;
        let blocks = p
            .blocks
            .iter()
            .map(|b| b.modulation(&silu_all, silu_zero.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let norm_out = p.norm_out.forward(&silu_all)?;
        let rows_of = |a: &Array, i: i32| -> Array {
            if timesteps.len() == 1 {
                a.clone()
            } else {
                a.index(i * k..(i + 1) * k)
            }
        };
        Ok((0..timesteps.len() as i32)
            .map(|i| StepModulation {
                silu_temb: rows_of(&silu_all, i),
                blocks: blocks
                    .iter()
                    .map(|m| crate::block::BlockModulation {
                        img: rows_of(&m.img, i),
                        txt: rows_of(&m.txt, i),
                        img_zero: m.img_zero.clone(),
                    })
                    .collect(),
                norm_out: rows_of(&norm_out, i),
            })
            .collect())
    }

    /// `zero_cond_t` models: how many leading image tokens (the generated image) are
    /// modulated with σ; `None` otherwise.
    fn zero_len(&self, rope: &RopeTables) -> Option<i32> {
        self.config
            .zero_cond_t
            .then_some(rope.first_img_len() as i32)
    }

    /// [`Self::forward`] with the modulation computed ahead by [`Self::modulation`] for the
    /// same `timestep` (`None`: computed here). Same result, bit for bit.
    pub fn forward_modulated(
        &self,
        hidden_states: &Array,
        encoder_hidden_states: &Array,
        encoder_mask: Option<&Array>,
        timestep: &Array,
        rope: &RopeTables,
        modulation: Option<&StepModulation>,
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
            &p.txt_norm.0,
            NORM_EPS,
        )?)?;
        let own;
        let m = match modulation {
            Some(m)
                if m.blocks.len() == p.blocks.len()
                    && m.blocks
                        .iter()
                        .all(|b| b.img_zero.is_some() == cfg.zero_cond_t) =>
            {
                m
            }
            _ => {
                own = self.modulation(timestep)?;
                &own
            }
        };
        // f32 tables: the RoPE rotation is computed in f32 and rounded once, as diffusers.
        let (cos, sin) = (rope.cos(), rope.sin());
        let mask = joint_mask(encoder_mask, b, t, n)?;
        let ctx = BlockContext {
            silu_temb: &m.silu_temb,
            zero_len: self.zero_len(rope),
            silu_zero: None,
            cos,
            sin,
            mask: mask.as_ref(),
            heads: cfg.num_attention_heads as i32,
            head_dim: cfg.attention_head_dim as i32,
        };
        for (block, pre) in p.blocks.iter().zip(&m.blocks) {
            (img, txt) = block.forward(&img, &txt, &ctx, Some(pre))?;
        }
        // AdaLayerNormContinuous: its linear output splits (scale, shift) — the opposite
        // order of the blocks' (shift, scale, gate).
        let halves = ops::split_equal(&m.norm_out, 2, -1)?;
        let (scale, shift) = (&halves[0], &halves[1]);
        let out = layer_norm_modulate(&img, shift, scale, NORM_EPS)?;
        p.proj_out.forward(&out)
    }
}

/// The timestep-dependent part of a forward ([`QwenImageTransformer::modulation`]): the
/// SiLU'd timestep embedding, each block's modulation and the output norm's.
#[derive(Debug, Clone)]
pub struct StepModulation {
    silu_temb: Array,
    blocks: Vec<crate::block::BlockModulation>,
    norm_out: Array,
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
