//! Random-weight components at Qwen-Image's real sizes (or tiny ones for a CPU smoke run),
//! as in-memory builders for `QwenImagePipeline::from_builders`: the full pipeline can be
//! timed without a checkpoint. The work does not depend on the weights' values (correctness
//! is proven by the parity tests on tiny checkpoints); the random draws only keep the
//! activations finite.
//!
//! Every tensor is drawn in f32 from its own key (deterministic for a seed), cast to the
//! compute dtype and evaluated per layer, so the f32 temporaries of a whole model are never
//! alive together.

use std::path::{Path, PathBuf};

use flow_scheduler::SchedulerConfig;
use mlx_rs::{Array, Dtype, random};
use qwen_dit::{QwenImageTransformer, QwenImageTransformerConfig};
use qwen_image::{CheckpointConfigs, ComponentBuilders, Result};
use qwen_text_encoder::vision::{VisionConfig, VisionTower};
use qwen_text_encoder::weights::LayerWeights;
use qwen_text_encoder::{
    EditEncoder, ImageProcessorConfig, QwenTextModel, QwenTokenizer, TextConfig, TextEncoder,
    TextModelWeights,
};
use qwen_vae::{QwenImageVae, VaeConfig};

/// The Qwen-Image checkpoint's configs: the DiT of diffusers' defaults (60 layers, 24 heads ×
/// 128, joint dim 3584), the text model of Qwen2.5-VL-7B-Instruct (`text_config`: hidden 3584,
/// 28 layers, 28 query / 4 KV heads, SwiGLU 18944, vocab 152064, RMSNorm ε 1e-6, RoPE θ 1e6,
/// M-RoPE sections [16, 24, 24]), the VAE of diffusers' defaults (base_dim 96, z 16, dim_mult
/// [1, 2, 4, 4], 2 res blocks) and Qwen-Image's scheduler config.
pub fn full_size_configs() -> CheckpointConfigs {
    CheckpointConfigs {
        transformer: QwenImageTransformerConfig::default(),
        vae: VaeConfig::default(),
        text: TextConfig {
            vocab_size: 152_064,
            hidden_size: 3584,
            intermediate_size: 18_944,
            num_hidden_layers: 28,
            num_attention_heads: 28,
            num_key_value_heads: 4,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            mrope_section: vec![16, 24, 24],
        },
        scheduler: SchedulerConfig::qwen_image(),
        kind: qwen_image::PipelineKind::TextToImage,
    }
}

/// Tiny components with the real structure (2 DiT layers, 2 text layers, a 16-wide VAE with one
/// res block per level), for a CPU smoke run. The text vocabulary fits the fixture tokenizer.
pub fn tiny_configs() -> CheckpointConfigs {
    CheckpointConfigs {
        transformer: QwenImageTransformerConfig {
            num_layers: 2,
            attention_head_dim: 16,
            num_attention_heads: 2,
            joint_attention_dim: 32,
            axes_dims_rope: vec![4, 6, 6],
            ..Default::default()
        },
        vae: VaeConfig {
            base_dim: 16,
            num_res_blocks: 1,
            ..Default::default()
        },
        text: TextConfig {
            vocab_size: 484,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 16,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            mrope_section: vec![2, 3, 3],
        },
        scheduler: SchedulerConfig::qwen_image(),
        kind: qwen_image::PipelineKind::TextToImage,
    }
}

/// The small fixture tokenizer (`fixtures/data/pipeline/tiny/tokenizer`, 484 tokens: it fits
/// any vocabulary here), found from this crate or from the current directory (the repository
/// root on the GPU machine).
pub fn fixture_tokenizer_dir() -> PathBuf {
    let from_crate = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/data/pipeline/tiny/tokenizer"
    ));
    if from_crate.is_dir() {
        from_crate.to_path_buf()
    } else {
        PathBuf::from("fixtures/data/pipeline/tiny/tokenizer")
    }
}

/// Deterministic draws: one fresh key per tensor.
struct Draw {
    key: Array,
    dtype: Dtype,
}

impl Draw {
    fn new(seed: u64, dtype: Dtype) -> Result<Self> {
        Ok(Self {
            key: random::key(seed)?,
            dtype,
        })
    }

    /// N(loc, std²) of `shape`, in f32 (cast by the caller).
    fn f32(&mut self, shape: &[i32], loc: f32, std: f32) -> Result<Array> {
        let (a, b) = random::split(&self.key, 2)?;
        self.key = a;
        Ok(random::normal::<f32>(shape, loc, std, &b)?)
    }

    /// N(loc, std²) of `shape` in the compute dtype.
    fn normal(&mut self, shape: &[i32], loc: f32, std: f32) -> Result<Array> {
        let dt = self.dtype;
        Ok(self.f32(shape, loc, std)?.as_dtype(dt)?)
    }

    /// A Linear weight `(dout, din)`, N(0, 1/din).
    fn weight(&mut self, dout: usize, din: usize) -> Result<Array> {
        self.normal(&[dout as i32, din as i32], 0.0, (din as f32).powf(-0.5))
    }
}

/// The text language model with random weights: Linear weights N(0, 1/fan_in), q/k/v biases
/// N(0, 0.1²), norm weights 1 + N(0, 0.1²), embeddings N(0, 1).
pub fn random_text_model(cfg: &TextConfig, dtype: Dtype, seed: u64) -> Result<QwenTextModel> {
    let mut d = Draw::new(seed, dtype)?;
    let h = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    let embed_tokens = d.normal(&[cfg.vocab_size as i32, h as i32], 0.0, 1.0)?;
    embed_tokens.eval()?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for _ in 0..cfg.num_hidden_layers {
        let layer = LayerWeights {
            input_layernorm: d.normal(&[h as i32], 1.0, 0.1)?,
            q_proj: (d.weight(q, h)?, d.normal(&[q as i32], 0.0, 0.1)?),
            k_proj: (d.weight(kv, h)?, d.normal(&[kv as i32], 0.0, 0.1)?),
            v_proj: (d.weight(kv, h)?, d.normal(&[kv as i32], 0.0, 0.1)?),
            o_proj: d.weight(h, q)?,
            post_attention_layernorm: d.normal(&[h as i32], 1.0, 0.1)?,
            gate_proj: d.weight(i, h)?,
            up_proj: d.weight(i, h)?,
            down_proj: d.weight(h, i)?,
        };
        mlx_rs::transforms::eval([
            &layer.input_layernorm,
            &layer.q_proj.0,
            &layer.q_proj.1,
            &layer.k_proj.0,
            &layer.k_proj.1,
            &layer.v_proj.0,
            &layer.v_proj.1,
            &layer.o_proj,
            &layer.post_attention_layernorm,
            &layer.gate_proj,
            &layer.up_proj,
            &layer.down_proj,
        ])?;
        layers.push(layer);
    }
    let norm = d.normal(&[h as i32], 1.0, 0.1)?;
    norm.eval()?;
    let weights = TextModelWeights {
        embed_tokens,
        layers,
        norm,
    };
    Ok(QwenTextModel::new(cfg.clone(), weights, dtype)?)
}

/// The VAE with random weights through its real loading path (every tensor a diffusers
/// checkpoint holds): conv/linear weights N(0, 1/fan_in), biases N(0, 0.02²), RMS-norm γ 1.
pub fn random_vae(cfg: &VaeConfig, dtype: Dtype, seed: u64) -> Result<QwenImageVae> {
    let mut d = Draw::new(seed, dtype)?;
    let mut t = mlx_weights::Tensors::new("random");
    for (k, shape) in qwen_vae::weights::checkpoint_shapes(cfg) {
        let a = if k.ends_with(".gamma") {
            mlx_rs::ops::ones::<f32>(&shape)?
        } else if shape.len() == 1 {
            d.f32(&shape, 0.0, 0.02)?
        } else {
            let fan_in: i32 = shape.iter().skip(1).product::<i32>().max(1);
            d.f32(&shape, 0.0, (fan_in as f32).powf(-0.5))?
        };
        a.eval()?;
        t.insert(k, a);
    }
    Ok(QwenImageVae::from_tensors(cfg.clone(), t, dtype)?)
}

/// Builders of random-weight components for `configs` (the tokenizer read from
/// `tokenizer_dir`). Each builder makes its component anew when the pipeline's staging asks
/// for it, from the same seed (the same weights every time).
pub fn random_builders(
    configs: &CheckpointConfigs,
    tokenizer_dir: PathBuf,
    seed: u64,
) -> ComponentBuilders {
    let text = configs.text.clone();
    let dit = configs.transformer.clone();
    let vae = configs.vae.clone();
    ComponentBuilders {
        text_encoder: Box::new(move |dt| {
            let tokenizer = QwenTokenizer::from_dir(&tokenizer_dir)?;
            let model = random_text_model(&text, dt, seed)?;
            Ok(TextEncoder::from_parts(tokenizer, model)?)
        }),
        transformer: Box::new(move |dt| {
            Ok(QwenImageTransformer::random(
                dit.clone(),
                dt,
                seed.wrapping_add(1),
            )?)
        }),
        vae: Box::new(move |dt| random_vae(&vae, dt, seed.wrapping_add(2))),
        edit_encoder: None,
    }
}

/// Qwen2.5-VL-7B's `vision_config` (what Qwen-Image's text encoder ships), or a 2-block,
/// 32-wide tower whose windows still partition the grid (`tiny`), projecting to
/// `out_hidden` (the text model's width).
pub fn vision_config(tiny: bool, out_hidden: usize) -> Result<VisionConfig> {
    let v = if tiny {
        serde_json::json!({
            "depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2,
            "out_hidden_size": out_hidden, "patch_size": 14, "window_size": 112,
            "fullatt_block_indexes": [1]
        })
    } else {
        serde_json::json!({
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "in_chans": 3, "out_hidden_size": out_hidden, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"
        })
    };
    serde_json::from_value(v).map_err(|e| qwen_image::PipelineError::Runtime(e.to_string()))
}

/// Turns `builders` into those of an edit pipeline of `kind`: a random edit encoder (the
/// text model of `text`, the vision tower of [`vision_config`], the fixture tokenizer, the
/// image processor of Qwen-Image-Edit's `processor/`: 3136 to 12845056 pixels).
pub fn with_edit_encoder(
    mut builders: ComponentBuilders,
    text: &TextConfig,
    kind: qwen_image::PipelineKind,
    tiny: bool,
    tokenizer_dir: PathBuf,
    seed: u64,
) -> Result<ComponentBuilders> {
    let text = text.clone();
    let vision = vision_config(tiny, text.hidden_size)?;
    let template = qwen_image::edit::template(kind)?;
    builders.edit_encoder = Some(Box::new(move |dt| {
        let tokenizer = QwenTokenizer::from_dir(&tokenizer_dir)?;
        let model = random_text_model(&text, dt, seed)?;
        let tower = VisionTower::random(vision.clone(), dt, seed.wrapping_add(3))?;
        let processor = ImageProcessorConfig {
            min_pixels: Some(3136),
            max_pixels: Some(12_845_056),
            ..Default::default()
        };
        Ok(EditEncoder::from_parts(
            tokenizer, model, tower, processor, template,
        )?)
    }));
    Ok(builders)
}

/// Parameters of the text language model (embeddings, attention with q/k/v biases, SwiGLU,
/// norms).
pub fn text_param_count(cfg: &TextConfig) -> u64 {
    let h = cfg.hidden_size as u64;
    let q = (cfg.num_attention_heads * cfg.head_dim) as u64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    let i = cfg.intermediate_size as u64;
    let layer = h + (h * q + q) + 2 * (h * kv + kv) + q * h + h + 3 * h * i;
    cfg.vocab_size as u64 * h + cfg.num_hidden_layers as u64 * layer + h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2.5-VL-7B's language model without the LM head has 7.07 B parameters
    /// (8.29 B total − 0.68 B vision tower − 0.545 B LM head).
    #[test]
    fn full_size_text_model_has_the_published_size() {
        let n = text_param_count(&full_size_configs().text) as f64 / 1e9;
        assert!((7.0..7.15).contains(&n), "{n} B");
    }

    /// The tiny components run through the real pipeline on the CPU and give images of the
    /// requested size.
    #[test]
    fn tiny_random_pipeline_generates() -> anyhow::Result<()> {
        let configs = tiny_configs();
        let builders = random_builders(&configs, fixture_tokenizer_dir(), 0);
        let mut pipe = qwen_image::QwenImagePipeline::from_builders(
            configs,
            qwen_image::PipelineOptions {
                residency: qwen_image::Residency::Staged,
                activation_budget: qwen_image::ActivationBudget::Auto,
                ..Default::default()
            },
            builders,
        )?;
        let mut req = qwen_image::GenerateRequest::new("a red fox in the snow");
        req.negative_prompt = Some(" ".into());
        req.steps = 2;
        req.width = 32;
        req.height = 48;
        let images = pipe.generate(&req)?;
        assert_eq!(images.len(), 1);
        assert_eq!((images[0].width, images[0].height), (32, 48));
        Ok(())
    }
}
