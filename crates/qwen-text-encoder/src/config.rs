//! `text_encoder/config.json`: transformers' `Qwen2_5_VLConfig` and its `text_config`.
//!
//! Mirrors `transformers/models/qwen2_5_vl/configuration_qwen2_5_vl.py` (5.23). Two layouts
//! exist in the wild and both are accepted:
//! - transformers 5.x saves the language model's settings nested under `text_config`;
//! - older saves (and the real Qwen-Image checkpoint) also carry them as flat top-level keys.
//!
//! As in transformers, a present `text_config` wins and is used alone (missing keys take the
//! `Qwen2_5_VLTextConfig` defaults); without it the flat keys are read. RoPE settings may sit
//! in `rope_parameters` (5.x), in `rope_scaling` (older; `{"type": "mrope", ...}`) with a
//! separate `rope_theta`, and `rope_scaling` takes precedence when both are set.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, TextEncoderError};

/// transformers' default `rope_theta` for Qwen2.5-VL (`Qwen2_5_VLTextConfig.default_theta`).
pub const DEFAULT_ROPE_THETA: f64 = 1_000_000.0;
/// Default M-RoPE sections (`Qwen2_5_VLRotaryEmbedding`: `rope_parameters.get("mrope_section",
/// [16, 24, 24])`).
pub const DEFAULT_MROPE_SECTION: [usize; 3] = [16, 24, 24];

/// RoPE settings as stored in `rope_parameters` or `rope_scaling`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RopeParameters {
    /// `"default"` (5.x) or `"mrope"` (older saves; transformers maps it to `"default"`).
    #[serde(default)]
    pub rope_type: Option<String>,
    /// Legacy spelling of `rope_type`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// RoPE base θ (5.x keeps it here).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Sizes of the temporal/height/width frequency sections (sum = head_dim / 2).
    #[serde(default)]
    pub mrope_section: Option<Vec<usize>>,
}

/// transformers' `Qwen2_5_VLTextConfig` fields the text path needs, with the same names and
/// defaults. Other keys are ignored.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[allow(non_camel_case_types)]
pub struct Qwen2_5_VLTextConfig {
    /// Rows of the embedding table.
    #[serde(default = "d_vocab_size")]
    pub vocab_size: usize,
    /// Model width.
    #[serde(default = "d_hidden_size")]
    pub hidden_size: usize,
    /// SwiGLU inner width.
    #[serde(default = "d_intermediate_size")]
    pub intermediate_size: usize,
    /// Number of decoder layers.
    #[serde(default = "d_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Query heads.
    #[serde(default = "d_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); `null` means `num_attention_heads`.
    #[serde(default = "d_num_key_value_heads")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width when given; transformers' attention uses `hidden_size / num_heads`, so a
    /// different value is rejected.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// MLP activation (only `silu` is implemented).
    #[serde(default = "d_hidden_act")]
    pub hidden_act: String,
    /// RMSNorm epsilon.
    #[serde(default = "d_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE settings (transformers 5.x).
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// RoPE settings (older saves); wins over `rope_parameters` when set.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// RoPE base (older saves).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Sliding-window attention switch (not implemented; must be off).
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Sliding window size (used only with `use_sliding_window`).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// First layer index using the sliding window (with `use_sliding_window`).
    #[serde(default = "d_max_window_layers")]
    pub max_window_layers: Option<usize>,
    /// Per-layer attention kind (`full_attention` / `sliding_attention`).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Padding token id of the embedding (unused by the forward pass).
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

fn d_vocab_size() -> usize {
    152064
}
fn d_hidden_size() -> usize {
    8192
}
fn d_intermediate_size() -> usize {
    29568
}
fn d_num_hidden_layers() -> usize {
    80
}
fn d_num_attention_heads() -> usize {
    64
}
fn d_num_key_value_heads() -> Option<usize> {
    Some(8)
}
fn d_hidden_act() -> String {
    "silu".to_string()
}
fn d_rms_norm_eps() -> f64 {
    1e-5
}
fn d_max_window_layers() -> Option<usize> {
    Some(80)
}

/// The whole `text_encoder/config.json` (`Qwen2_5_VLConfig`): an optional nested
/// `text_config`, and the flat top-level keys of older saves.
#[derive(Debug, Clone, Deserialize)]
#[allow(non_camel_case_types)]
pub struct Qwen2_5_VLConfig {
    /// Nested language-model settings (transformers 5.x).
    #[serde(default)]
    pub text_config: Option<Qwen2_5_VLTextConfig>,
    /// Flat top-level language-model settings (older saves; used when `text_config` is absent).
    #[serde(flatten)]
    pub flat: Qwen2_5_VLTextConfig,
}

impl Qwen2_5_VLConfig {
    /// Reads and parses `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = mlx_weights::read_json_object(path)?.to_string();
        serde_json::from_str(&text).map_err(|e| TextEncoderError::json(path, e))
    }

    /// The language-model settings transformers would use: `text_config` when present, else
    /// the flat keys.
    pub fn text(&self) -> &Qwen2_5_VLTextConfig {
        self.text_config.as_ref().unwrap_or(&self.flat)
    }

    /// Validated, resolved settings of the language model.
    pub fn resolve(&self) -> Result<TextConfig> {
        self.text().resolve()
    }
}

/// Validated settings of the language model, with everything transformers derives filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Rows of the embedding table.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Per-head width (`hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// M-RoPE temporal/height/width sections, in frequency pairs (sum = head_dim / 2).
    pub mrope_section: Vec<usize>,
}

impl Qwen2_5_VLTextConfig {
    /// Checks the settings and derives head_dim, KV heads and the RoPE parameters.
    pub fn resolve(&self) -> Result<TextConfig> {
        let bad = |m: String| Err(TextEncoderError::InvalidConfig(m));
        let nz = |name: &str, v: usize| {
            if v == 0 {
                Err(TextEncoderError::InvalidConfig(format!(
                    "{name} must be > 0"
                )))
            } else {
                Ok(v)
            }
        };
        let hidden = nz("hidden_size", self.hidden_size)?;
        let heads = nz("num_attention_heads", self.num_attention_heads)?;
        nz("vocab_size", self.vocab_size)?;
        nz("intermediate_size", self.intermediate_size)?;
        let kv = nz(
            "num_key_value_heads",
            self.num_key_value_heads.unwrap_or(heads),
        )?;
        // Every size the model uses must fit MLX's i32 dimensions.
        for (name, v) in [
            ("hidden_size", hidden),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
        ] {
            if v > i32::MAX as usize {
                return bad(format!(
                    "{name} {v} is too large (MLX dimensions are at most {})",
                    i32::MAX
                ));
            }
        }
        if hidden % heads != 0 {
            return bad(format!(
                "hidden_size {hidden} is not divisible by num_attention_heads {heads}"
            ));
        }
        let head_dim = hidden / heads;
        if let Some(hd) = self.head_dim
            && hd != head_dim
        {
            return bad(format!(
                "head_dim {hd} differs from hidden_size / num_attention_heads = {head_dim} \
                 (transformers' Qwen2.5-VL attention uses the latter)"
            ));
        }
        if head_dim % 2 != 0 {
            return bad(format!("head_dim {head_dim} must be even for RoPE"));
        }
        if heads % kv != 0 {
            return bad(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
            ));
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act {:?} is not supported (only \"silu\")",
                self.hidden_act
            ));
        }
        if !self.rms_norm_eps.is_finite() || self.rms_norm_eps <= 0.0 {
            return bad(format!("rms_norm_eps {} must be > 0", self.rms_norm_eps));
        }
        self.check_attention_kinds()?;

        // transformers: `rope_parameters = rope_scaling or rope_parameters or {}`, then
        // `setdefault("rope_theta", rope_theta or default_theta)`; "mrope" means "default".
        let rope = self
            .rope_scaling
            .clone()
            .or_else(|| self.rope_parameters.clone())
            .unwrap_or_default();
        let kind = rope
            .rope_type
            .clone()
            .or_else(|| rope.type_.clone())
            .unwrap_or_else(|| "default".to_string());
        if kind != "default" && kind != "mrope" {
            return bad(format!(
                "rope_type {kind:?} is not supported (only \"default\"/\"mrope\")"
            ));
        }
        let rope_theta = rope
            .rope_theta
            .or(self.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA);
        if !rope_theta.is_finite() || rope_theta <= 0.0 {
            return bad(format!("rope_theta {rope_theta} must be > 0"));
        }
        let mrope_section = rope
            .mrope_section
            .clone()
            .unwrap_or_else(|| DEFAULT_MROPE_SECTION.to_vec());
        let pairs: usize = mrope_section.iter().sum();
        if pairs != head_dim / 2 {
            return bad(format!(
                "mrope_section {mrope_section:?} sums to {pairs}, expected head_dim / 2 = {}",
                head_dim / 2
            ));
        }
        Ok(TextConfig {
            vocab_size: self.vocab_size,
            hidden_size: hidden,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: self.rms_norm_eps as f32,
            rope_theta,
            mrope_section,
        })
    }

    /// transformers derives `layer_types` from `use_sliding_window`/`max_window_layers` when
    /// absent; only full attention is implemented here.
    fn check_attention_kinds(&self) -> Result<()> {
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(TextEncoderError::InvalidConfig(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                )));
            }
            if let Some(t) = types.iter().find(|t| *t != "full_attention") {
                return Err(TextEncoderError::InvalidConfig(format!(
                    "layer type {t:?} is not supported (only full_attention)"
                )));
            }
        } else if self.use_sliding_window == Some(true)
            && self.sliding_window.is_some()
            && self.max_window_layers.unwrap_or(0) < self.num_hidden_layers
        {
            return Err(TextEncoderError::InvalidConfig(
                "sliding-window attention (use_sliding_window) is not supported".to_string(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The language-model part of Qwen-Image's `text_encoder/config.json` in the flat layout of
    /// older transformers saves (values of Qwen2.5-VL-7B).
    const FLAT: &str = r#"{
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944,
        "max_position_embeddings": 128000, "max_window_layers": 28, "model_type": "qwen2_5_vl",
        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06, "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default",
        "type": "default"}, "rope_theta": 1000000.0, "sliding_window": 32768,
        "use_sliding_window": false, "vocab_size": 152064,
        "vision_config": {"depth": 32, "hidden_size": 1280}
    }"#;

    fn parse(s: &str) -> Qwen2_5_VLConfig {
        serde_json::from_str(s).expect("valid json")
    }

    #[test]
    fn flat_layout_resolves_to_qwen_image_values() {
        let c = parse(FLAT).resolve().expect("valid");
        assert_eq!(c.hidden_size, 3584);
        assert_eq!(c.num_hidden_layers, 28);
        assert_eq!(c.num_attention_heads, 28);
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.intermediate_size, 18944);
        assert_eq!(c.vocab_size, 152064);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.mrope_section, vec![16, 24, 24]);
        assert!((c.rms_norm_eps - 1e-6).abs() < 1e-12);
    }

    #[test]
    fn nested_text_config_wins_over_flat_keys() {
        let s = r#"{"hidden_size": 3584, "num_attention_heads": 28,
            "text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 500,
              "rms_norm_eps": 1e-6,
              "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                  "rope_theta": 10000.0}}}"#;
        let c = parse(s).resolve().expect("valid");
        assert_eq!(c.hidden_size, 64);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.rope_theta, 1e4);
        assert_eq!(c.mrope_section, vec![2, 3, 3]);
    }

    #[test]
    fn missing_keys_take_transformers_defaults() {
        let c = parse(r#"{"text_config": {}}"#).resolve().expect("valid");
        assert_eq!(c.hidden_size, 8192);
        assert_eq!(c.num_hidden_layers, 80);
        assert_eq!(c.num_key_value_heads, 8);
        assert_eq!(c.rope_theta, DEFAULT_ROPE_THETA);
        assert_eq!(c.mrope_section, DEFAULT_MROPE_SECTION.to_vec());
        // null KV heads means "as many as query heads"
        let c = parse(
            r#"{"num_attention_heads": 4, "hidden_size": 64, "num_key_value_heads": null,
                         "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}"#,
        )
        .resolve()
        .expect("valid");
        assert_eq!(c.num_key_value_heads, 4);
    }

    #[test]
    fn rope_scaling_takes_precedence_and_theta_falls_back() {
        let s = r#"{"text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_theta": 5.0,
            "rope_parameters": {"mrope_section": [1, 1, 6], "rope_theta": 7.0},
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}}"#;
        let c = parse(s).resolve().expect("valid");
        assert_eq!(c.mrope_section, vec![2, 3, 3]);
        assert_eq!(c.rope_theta, 5.0);
    }

    #[test]
    fn inconsistent_configs_are_rejected() {
        // The baseline the cases below break one thing of.
        let ok = r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "rope_scaling": {"mrope_section": [2, 3, 3]}}"#;
        assert!(parse(ok).resolve().is_ok());
        for s in [
            r#"{"hidden_size": 64, "num_attention_heads": 5}"#,
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3,
                "rope_scaling": {"mrope_section": [2, 3, 3]}}"#,
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rope_scaling": {"mrope_section": [2, 3, 4]}}"#,
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                "rope_scaling": {"mrope_section": [2, 3, 3]}}"#,
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "gelu",
                "rope_scaling": {"mrope_section": [2, 3, 3]}}"#,
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rope_scaling": {"rope_type": "yarn", "mrope_section": [2, 3, 3]}}"#,
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                "layer_types": ["full_attention", "sliding_attention"],
                "rope_scaling": {"mrope_section": [2, 3, 3]}}"#,
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                "use_sliding_window": true, "sliding_window": 16, "max_window_layers": 1,
                "rope_scaling": {"mrope_section": [2, 3, 3]}}"#,
        ] {
            let err = parse(s).resolve();
            assert!(
                matches!(err, Err(TextEncoderError::InvalidConfig(_))),
                "{s}: {err:?}"
            );
        }
    }
}
