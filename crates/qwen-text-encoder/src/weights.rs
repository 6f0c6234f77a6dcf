//! Checkpoint key names of the language model and strict loading through `mlx-weights`.
//!
//! transformers 5.23 saves `Qwen2_5_VLForConditionalGeneration` with the historical key names
//! (`model.embed_tokens.weight`, `model.layers.{i}.…`, `model.norm.weight`, `visual.…`,
//! `lm_head.weight`); its in-memory layout (`model.language_model.…`, `model.visual.…`) also
//! appears in some saves. Both are accepted: the prefix is chosen from the keys present.
//! The vision tower and the LM head are not part of the text path and are skipped on purpose
//! through [`IGNORED_PREFIXES`]; any other leftover key is an error.

use std::path::Path;

use mlx_rs::{Array, Dtype};
use mlx_weights::{Role, StrictLoader, Tensors, Vars};

use crate::config::TextConfig;
use crate::error::Result;

/// Keys that exist in a Qwen2.5-VL checkpoint but are deliberately not loaded: the vision
/// tower (both layouts) and the LM head (Qwen-Image uses the last hidden state).
pub const IGNORED_PREFIXES: &[&str] = &["visual.", "model.visual.", "lm_head."];

/// Prefix of the language model's keys in the nested (transformers 5.x in-memory) layout.
pub const NESTED_PREFIX: &str = "model.language_model.";
/// Prefix of the language model's keys in the historical layout.
pub const FLAT_PREFIX: &str = "model.";

/// The weights of one decoder layer, PyTorch layout (`Linear.weight` is `(out, in)`).
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// RMSNorm before attention, `(hidden,)`.
    pub input_layernorm: Array,
    /// Query projection `(heads·d, hidden)` and bias.
    pub q_proj: (Array, Array),
    /// Key projection `(kv·d, hidden)` and bias.
    pub k_proj: (Array, Array),
    /// Value projection `(kv·d, hidden)` and bias.
    pub v_proj: (Array, Array),
    /// Output projection `(hidden, heads·d)`, no bias.
    pub o_proj: Array,
    /// RMSNorm before the MLP, `(hidden,)`.
    pub post_attention_layernorm: Array,
    /// SwiGLU gate `(inter, hidden)`.
    pub gate_proj: Array,
    /// SwiGLU up `(inter, hidden)`.
    pub up_proj: Array,
    /// SwiGLU down `(hidden, inter)`.
    pub down_proj: Array,
}

/// All weights of the language model's text path.
#[derive(Debug, Clone)]
pub struct TextModelWeights {
    /// Token embedding table `(vocab, hidden)`.
    pub embed_tokens: Array,
    /// Decoder layers in order.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm `(hidden,)`.
    pub norm: Array,
}

impl LayerWeights {
    /// Every array of the layer (norms, projections and their biases).
    pub fn arrays(&self) -> [&Array; 12] {
        [
            &self.input_layernorm,
            &self.q_proj.0,
            &self.q_proj.1,
            &self.k_proj.0,
            &self.k_proj.1,
            &self.v_proj.0,
            &self.v_proj.1,
            &self.o_proj,
            &self.post_attention_layernorm,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }
}

impl TextModelWeights {
    /// Every array, in model order: the embedding table, each layer's arrays, the final norm.
    pub fn arrays(&self) -> impl Iterator<Item = &Array> {
        std::iter::once(&self.embed_tokens)
            .chain(self.layers.iter().flat_map(LayerWeights::arrays))
            .chain(std::iter::once(&self.norm))
    }

    /// Materialises every array: the embedding table, then each layer, then the final norm,
    /// one evaluation each. A cast to the compute dtype is lazy, so without this all layers'
    /// casts would run inside the first forward pass, with every stored-dtype source and its
    /// cast copy alive together; evaluating layer by layer frees each layer's source before
    /// the next cast and keeps the cast's time out of the first encode.
    pub fn eval(&self) -> Result<()> {
        self.embed_tokens.eval()?;
        for layer in &self.layers {
            mlx_rs::transforms::eval(layer.arrays())?;
        }
        self.norm.eval()?;
        Ok(())
    }
}

/// The language model's key prefix in `tensors`: nested when any key uses it, else flat.
pub fn language_model_prefix<'a>(keys: impl IntoIterator<Item = &'a str>) -> &'static str {
    if keys.into_iter().any(|k| k.starts_with(NESTED_PREFIX)) {
        NESTED_PREFIX
    } else {
        FLAT_PREFIX
    }
}

impl LayerWeights {
    /// Takes decoder layer's parameters from `v` (prefixed with the layer's key).
    pub fn load(v: &mut Vars<'_>, cfg: &TextConfig) -> Self {
        let h = cfg.hidden_size as i32;
        let q = (cfg.num_attention_heads * cfg.head_dim) as i32;
        let kv = (cfg.num_key_value_heads * cfg.head_dim) as i32;
        let inter = cfg.intermediate_size as i32;
        let norm = |v: &mut Vars<'_>, name: &str| v.take(name, &[h], Role::NormWeight);
        let w = |v: &mut Vars<'_>, name: &str, dout: i32, din: i32| {
            v.take(
                &format!("{name}.weight"),
                &[dout, din],
                Role::Weight {
                    fan_in: din as usize,
                },
            )
        };
        let b = |v: &mut Vars<'_>, name: &str, n: i32| {
            v.take(&format!("{name}.bias"), &[n], Role::Bias)
        };
        Self {
            input_layernorm: norm(v, "input_layernorm.weight"),
            q_proj: (w(v, "self_attn.q_proj", q, h), b(v, "self_attn.q_proj", q)),
            k_proj: (
                w(v, "self_attn.k_proj", kv, h),
                b(v, "self_attn.k_proj", kv),
            ),
            v_proj: (
                w(v, "self_attn.v_proj", kv, h),
                b(v, "self_attn.v_proj", kv),
            ),
            o_proj: w(v, "self_attn.o_proj", h, q),
            post_attention_layernorm: norm(v, "post_attention_layernorm.weight"),
            gate_proj: w(v, "mlp.gate_proj", inter, h),
            up_proj: w(v, "mlp.up_proj", inter, h),
            down_proj: w(v, "mlp.down_proj", h, inter),
        }
    }
}

impl TextModelWeights {
    /// Takes the text path's parameters from `v` (below the language model's prefix).
    pub fn load(v: &mut Vars<'_>, cfg: &TextConfig) -> Self {
        let h = cfg.hidden_size as i32;
        let embed_tokens = v.take(
            "embed_tokens.weight",
            &[cfg.vocab_size as i32, h],
            Role::Other,
        );
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| LayerWeights::load(&mut v.pp(format!("layers.{i}")), cfg))
            .collect();
        let norm = v.take("norm.weight", &[h], Role::NormWeight);
        Self {
            embed_tokens,
            layers,
            norm,
        }
    }
}

/// Takes the text path's weights out of `tensors` (cast to `dtype`), checks that nothing
/// is missing, mis-shaped or unexpectedly left over, and evaluates them layer by layer
/// ([`TextModelWeights::eval`]), so the returned arrays hold their data in `dtype`.
pub fn take_weights(tensors: Tensors, cfg: &TextConfig, dtype: Dtype) -> Result<TextModelWeights> {
    let p = language_model_prefix(tensors.keys());
    let mut l = StrictLoader::new(tensors, dtype);
    let weights = TextModelWeights::load(&mut Vars::new(&mut l).pp(p.trim_end_matches('.')), cfg);
    l.finish(IGNORED_PREFIXES)?;
    weights.eval()?;
    Ok(weights)
}

/// Checks a `text_encoder/` folder against `cfg` from the safetensors headers alone, before
/// anything is loaded: a layer count the checkpoint cannot hold is refused first, then one
/// error lists every missing, unexpected (outside [`IGNORED_PREFIXES`]), mis-shaped or
/// non-float tensor of the text path.
pub fn check_checkpoint(dir: &Path, cfg: &TextConfig) -> Result<()> {
    let inv = mlx_weights::inventory(dir)?;
    // Each decoder layer holds 12 tensors; the embedding table and the final norm 2 more.
    mlx_weights::check_count(
        dir,
        "num_hidden_layers",
        cfg.num_hidden_layers,
        12,
        2,
        inv.len(),
    )?;
    let p = language_model_prefix(inv.keys().map(String::as_str));
    let mut rec = mlx_weights::ShapeRecorder::new(Dtype::Float32);
    TextModelWeights::load(&mut Vars::new(&mut rec).pp(p.trim_end_matches('.')), cfg);
    let expected = rec.into_expected();
    Ok(mlx_weights::check_inventory(
        dir,
        &expected,
        &inv,
        IGNORED_PREFIXES,
    )?)
}

/// Loads `dir` (one `*.safetensors` or shards with an index) and takes the text path's
/// weights from it. Tensors under [`IGNORED_PREFIXES`] (the vision tower, the LM head) are
/// skipped while reading, so they never occupy memory.
pub fn load_weights(dir: &Path, cfg: &TextConfig, dtype: Dtype) -> Result<TextModelWeights> {
    let tensors = mlx_weights::load_component_filtered(dir, &|key| {
        !IGNORED_PREFIXES.iter().any(|p| key.starts_with(p))
    })?;
    take_weights(tensors, cfg, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TextEncoderError;

    fn tiny_cfg() -> TextConfig {
        TextConfig {
            vocab_size: 5,
            hidden_size: 4,
            intermediate_size: 6,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 2,
            rms_norm_eps: 1e-6,
            rope_theta: 1e4,
            mrope_section: vec![1, 0, 0],
        }
    }

    fn full_set(prefix: &str) -> Tensors {
        let mut t = Tensors::new("test");
        let z = |s: &[i32]| mlx_rs::ops::zeros::<f32>(s).unwrap();
        t.insert(format!("{prefix}embed_tokens.weight"), z(&[5, 4]));
        t.insert(format!("{prefix}norm.weight"), z(&[4]));
        let b = format!("{prefix}layers.0.");
        for (n, s) in [
            ("input_layernorm.weight", vec![4]),
            ("post_attention_layernorm.weight", vec![4]),
            ("self_attn.q_proj.weight", vec![4, 4]),
            ("self_attn.q_proj.bias", vec![4]),
            ("self_attn.k_proj.weight", vec![2, 4]),
            ("self_attn.k_proj.bias", vec![2]),
            ("self_attn.v_proj.weight", vec![2, 4]),
            ("self_attn.v_proj.bias", vec![2]),
            ("self_attn.o_proj.weight", vec![4, 4]),
            ("mlp.gate_proj.weight", vec![6, 4]),
            ("mlp.up_proj.weight", vec![6, 4]),
            ("mlp.down_proj.weight", vec![4, 6]),
        ] {
            t.insert(format!("{b}{n}"), z(&s));
        }
        t
    }

    #[test]
    fn both_layouts_load_and_ignored_prefixes_are_skipped() {
        for prefix in [FLAT_PREFIX, NESTED_PREFIX] {
            let mut t = full_set(prefix);
            t.insert(
                "lm_head.weight",
                mlx_rs::ops::zeros::<f32>(&[5, 4]).unwrap(),
            );
            t.insert(
                "visual.blocks.0.x",
                mlx_rs::ops::zeros::<f32>(&[1]).unwrap(),
            );
            t.insert(
                "model.visual.blocks.0.x",
                mlx_rs::ops::zeros::<f32>(&[1]).unwrap(),
            );
            let w = take_weights(t, &tiny_cfg(), Dtype::Float32).expect("loads");
            assert_eq!(w.layers.len(), 1);
            assert_eq!(w.embed_tokens.shape(), &[5, 4]);
        }
    }

    /// Whether `a` has been evaluated (MLX's `array::is_available`; asking does not evaluate,
    /// unlike `as_slice`).
    pub(crate) fn is_evaluated(a: &Array) -> bool {
        let mut res = false;
        // SAFETY: `res` is a valid out-pointer and `a` a live array for the call.
        let status = unsafe { mlx_sys::_mlx_array_is_available(&mut res, a.as_ptr()) };
        assert_eq!(status, 0, "_mlx_array_is_available failed");
        res
    }

    /// bf16 sources taken at f32 (the CPU default from a bf16 checkpoint): the casts must
    /// already have run when `take_weights` returns, not inside the first forward pass, and
    /// they must be exact (every bf16 value is an f32).
    #[test]
    fn weights_are_cast_and_evaluated_at_load() {
        let src = full_set(FLAT_PREFIX);
        let mut t = Tensors::new("test");
        let mut want = std::collections::BTreeMap::new();
        for (i, k) in src
            .keys()
            .map(str::to_string)
            .collect::<Vec<_>>()
            .iter()
            .enumerate()
        {
            let z = src.get(k).expect("key");
            let n = z.size() as f32;
            // Distinct, non-trivial values per tensor; bf16-representable after the cast.
            let v = Array::arange::<_, f32>(None, n, None)
                .unwrap()
                .multiply(mlx_rs::Array::from_f32(0.37 + i as f32))
                .unwrap()
                .reshape(z.shape())
                .unwrap()
                .as_dtype(Dtype::Bfloat16)
                .unwrap();
            let f = v.as_dtype(Dtype::Float32).unwrap();
            f.eval().unwrap();
            want.insert(k.clone(), f.as_slice::<f32>().to_vec());
            v.eval().unwrap();
            t.insert(k.clone(), v);
        }
        let w = take_weights(t, &tiny_cfg(), Dtype::Float32).expect("loads");
        let arrays: Vec<&Array> = w.arrays().collect();
        assert_eq!(arrays.len(), 2 + 12);
        for (i, a) in arrays.iter().enumerate() {
            assert_eq!(a.dtype(), Dtype::Float32, "array {i}");
            assert!(is_evaluated(a), "array {i} is still lazy after loading");
        }
        let l = &w.layers[0];
        for (key, a) in [
            ("model.embed_tokens.weight", &w.embed_tokens),
            ("model.norm.weight", &w.norm),
            ("model.layers.0.self_attn.k_proj.bias", &l.k_proj.1),
            ("model.layers.0.mlp.down_proj.weight", &l.down_proj),
        ] {
            assert_eq!(a.as_slice::<f32>(), want[key].as_slice(), "{key}");
        }
    }

    #[test]
    fn missing_unexpected_and_misshaped_keys_are_reported_together() {
        let mut t = full_set(FLAT_PREFIX);
        t.remove("model.layers.0.self_attn.q_proj.bias");
        t.insert(
            "model.layers.0.extra",
            mlx_rs::ops::zeros::<f32>(&[1]).unwrap(),
        );
        t.insert(
            "model.norm.weight",
            mlx_rs::ops::zeros::<f32>(&[3]).unwrap(),
        );
        let err = take_weights(t, &tiny_cfg(), Dtype::Float32).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TextEncoderError::Weights(_)), "{msg}");
        assert!(msg.contains("q_proj.bias"), "{msg}");
        assert!(msg.contains("model.layers.0.extra"), "{msg}");
        assert!(msg.contains("model.norm.weight"), "{msg}");
    }
}
