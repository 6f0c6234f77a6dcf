//! `transformer/config.json`: the configuration of diffusers' `QwenImageTransformer2DModel`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DitError;

/// RoPE base frequency. diffusers hard-codes `theta=10000` when it builds `QwenEmbedRope`
/// (`QwenImageTransformer2DModel.__init__`); it is not a config field.
pub const ROPE_THETA: f32 = 10000.0;

/// Width of the sinusoidal timestep projection (`Timesteps(num_channels=256, ...)` in
/// `QwenTimestepProjEmbeddings`); fixed by the architecture, not a config field.
pub const TIMESTEP_PROJ_DIM: usize = 256;

/// Epsilon of every normalisation in the model (block LayerNorms, Q/K RMSNorms, `txt_norm`,
/// `norm_out`): diffusers passes `eps=1e-6` everywhere.
pub const NORM_EPS: f32 = 1e-6;

/// The FFN hidden width is `4 × inner_dim` (diffusers `FeedForward` default `mult=4`).
pub const FFN_MULT: usize = 4;

/// Configuration of the Qwen-Image transformer, field for field as diffusers'
/// `QwenImageTransformer2DModel.__init__` (diffusers 0.42.1) and its `config.json`.
///
/// Unknown fields (`_class_name`, `_diffusers_version`, `pooled_projection_dim` in the
/// published checkpoint, ...) are ignored. Defaults are the diffusers defaults, which are the
/// Qwen-Image (20B) sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QwenImageTransformerConfig {
    /// Spatial patch size of the packed latents (2).
    #[serde(default = "d_patch_size")]
    pub patch_size: usize,
    /// Channels of one packed token (`latent_channels × patch_size²`, 64).
    #[serde(default = "d_in_channels")]
    pub in_channels: usize,
    /// Latent channels produced per patch position (16); `null` means `in_channels`.
    #[serde(default = "d_out_channels")]
    pub out_channels: Option<usize>,
    /// Number of dual-stream blocks (60).
    #[serde(default = "d_num_layers")]
    pub num_layers: usize,
    /// Width of one attention head (128).
    #[serde(default = "d_attention_head_dim")]
    pub attention_head_dim: usize,
    /// Number of attention heads (24).
    #[serde(default = "d_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the text encoder's hidden states (3584).
    #[serde(default = "d_joint_attention_dim")]
    pub joint_attention_dim: usize,
    /// Present in diffusers' signature but unused by the model (no guidance embedder is
    /// built); accepted and ignored.
    #[serde(default)]
    pub guidance_embeds: bool,
    /// RoPE dimensions of the (frame, height, width) axes; they sum to `attention_head_dim`.
    #[serde(default = "d_axes_dims_rope")]
    pub axes_dims_rope: Vec<usize>,
    /// Qwen-Image-Edit-2511 conditioning: the tokens of every image after the first (the
    /// reference images) are modulated with the embedding of σ = 0 instead of σ.
    #[serde(default)]
    pub zero_cond_t: bool,
    /// Qwen-Image-Layered additional timestep conditioning (not supported: must be false).
    #[serde(default)]
    pub use_additional_t_cond: bool,
    /// Qwen-Image-Layered 3-D layer RoPE (not supported: must be false).
    #[serde(default)]
    pub use_layer3d_rope: bool,
    /// MLX quantization record (`{"group_size": 64, "bits": 4}`) as MLX conversions write it.
    /// Informative only: quantized layers are recognised by their `scales` tensors and their
    /// bits/group size are read from the tensor shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationRecord>,
}

/// The `quantization` entry MLX conversions add to `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantizationRecord {
    /// Elements sharing one scale and bias.
    pub group_size: i32,
    /// Bits per quantized element.
    pub bits: i32,
}

fn d_patch_size() -> usize {
    2
}
fn d_in_channels() -> usize {
    64
}
fn d_out_channels() -> Option<usize> {
    Some(16)
}
fn d_num_layers() -> usize {
    60
}
fn d_attention_head_dim() -> usize {
    128
}
fn d_num_attention_heads() -> usize {
    24
}
fn d_joint_attention_dim() -> usize {
    3584
}
fn d_axes_dims_rope() -> Vec<usize> {
    vec![16, 56, 56]
}

impl Default for QwenImageTransformerConfig {
    /// The Qwen-Image (20B) configuration, i.e. diffusers' defaults.
    fn default() -> Self {
        Self {
            patch_size: d_patch_size(),
            in_channels: d_in_channels(),
            out_channels: d_out_channels(),
            num_layers: d_num_layers(),
            attention_head_dim: d_attention_head_dim(),
            num_attention_heads: d_num_attention_heads(),
            joint_attention_dim: d_joint_attention_dim(),
            guidance_embeds: false,
            axes_dims_rope: d_axes_dims_rope(),
            zero_cond_t: false,
            use_additional_t_cond: false,
            use_layer3d_rope: false,
            quantization: None,
        }
    }
}

impl QwenImageTransformerConfig {
    /// Parses a `config.json` text and validates it.
    pub fn from_json_str(text: &str) -> Result<Self, DitError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| DitError::InvalidConfig(format!("cannot parse config.json: {e}")))?;
        let cfg: Self = serde_json::from_value(value.clone()).map_err(|e| {
            // serde does not say which field failed: try them one at a time to name it.
            let field = value.as_object().and_then(|obj| {
                obj.iter().find_map(|(k, v)| {
                    let one = serde_json::json!({ k.as_str(): v });
                    serde_json::from_value::<Self>(one).err().map(|_| k.clone())
                })
            });
            match field {
                Some(f) => DitError::InvalidConfig(format!("field `{f}`: {e}")),
                None => DitError::InvalidConfig(format!("cannot parse config.json: {e}")),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates `path` (a `transformer/config.json`).
    pub fn from_file(path: &Path) -> Result<Self, DitError> {
        let text = mlx_weights::read_json_object(path)?.to_string();
        Self::from_json_str(&text).map_err(|e| match e {
            DitError::InvalidConfig(m) => {
                DitError::InvalidConfig(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }

    /// Width of the residual streams (`num_attention_heads × attention_head_dim`, 3072).
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Latent channels of the output (`out_channels`, or `in_channels` when unset).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Channels of one output token (`patch_size² × out_channels`, 64).
    pub fn proj_out_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.out_channels()
    }

    /// Hidden width of the feed-forward networks (`4 × inner_dim`).
    pub fn ffn_dim(&self) -> usize {
        FFN_MULT * self.inner_dim()
    }

    /// Checks the invariants the model relies on; the error names the offending field.
    pub fn validate(&self) -> Result<(), DitError> {
        let bad = |m: String| Err(DitError::InvalidConfig(m));
        for (name, v) in [
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels()),
            ("num_layers", self.num_layers),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        // Every size the model derives must fit MLX's i32 dimensions (checked arithmetic: a
        // wrapped product would otherwise reach the shapes).
        let i32_max = i32::MAX as usize;
        let inner = self
            .num_attention_heads
            .checked_mul(self.attention_head_dim);
        let widest = inner.and_then(|d| d.checked_mul(6));
        for (name, v) in [
            ("num_attention_heads × attention_head_dim × 6", widest),
            ("in_channels", Some(self.in_channels)),
            ("joint_attention_dim", Some(self.joint_attention_dim)),
            (
                "patch_size² × out_channels",
                self.patch_size
                    .checked_mul(self.patch_size)
                    .and_then(|p| p.checked_mul(self.out_channels())),
            ),
        ] {
            match v {
                Some(v) if v <= i32_max => {}
                _ => {
                    return bad(format!(
                        "{name} is too large ({}; MLX dimensions are at most {i32_max})",
                        v.map_or_else(|| "overflows".to_string(), |v| v.to_string())
                    ));
                }
            }
        }
        if self.axes_dims_rope.len() != 3 {
            return bad(format!(
                "axes_dims_rope must have 3 entries (frame, height, width), got {:?}",
                self.axes_dims_rope
            ));
        }
        if let Some(d) = self
            .axes_dims_rope
            .iter()
            .find(|d| **d == 0 || **d % 2 != 0)
        {
            return bad(format!(
                "every axes_dims_rope entry must be even and positive, got {d} in {:?}",
                self.axes_dims_rope
            ));
        }
        let sum: usize = self.axes_dims_rope.iter().sum();
        if sum != self.attention_head_dim {
            return bad(format!(
                "sum(axes_dims_rope) = {sum} ({:?}) must equal attention_head_dim = {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.inner_dim() > i32::MAX as usize / 16 {
            return bad(format!("inner_dim {} is too large", self.inner_dim()));
        }
        for (name, on) in [
            ("use_additional_t_cond", self.use_additional_t_cond),
            ("use_layer3d_rope", self.use_layer3d_rope),
        ] {
            if on {
                return Err(DitError::Unsupported(format!(
                    "{name}=true (Qwen-Image-Layered) is not implemented"
                )));
            }
        }
        if let Some(q) = self.quantization
            && (!matches!(q.bits, 2 | 3 | 4 | 5 | 6 | 8) || !matches!(q.group_size, 32 | 64 | 128))
        {
            return bad(format!(
                "quantization {{bits: {}, group_size: {}}} is not an MLX affine setting",
                q.bits, q.group_size
            ));
        }
        Ok(())
    }

    /// Every Linear layer of the model as (module path, in_features, out_features), in
    /// declaration order (from the modules' own declarations). All of them have a bias.
    pub fn linear_layers(&self) -> Vec<(String, usize, usize)> {
        crate::model::parameter_specs(self)
            .into_iter()
            .filter_map(|p| match p.role {
                mlx_weights::Role::Weight { fan_in } => Some((
                    p.key.strip_suffix(".weight")?.to_string(),
                    fan_in,
                    p.shape.first().copied().unwrap_or(0).max(0) as usize,
                )),
                _ => None,
            })
            .collect()
    }

    /// Every normalisation weight as (key, length): `txt_norm` and the per-head Q/K RMSNorms.
    pub fn norm_weights(&self) -> Vec<(String, usize)> {
        crate::model::parameter_specs(self)
            .into_iter()
            .filter(|p| p.role == mlx_weights::Role::NormWeight)
            .map(|p| (p.key, p.shape.first().copied().unwrap_or(0).max(0) as usize))
            .collect()
    }

    /// Total number of parameters (20.43 B for Qwen-Image).
    pub fn param_count(&self) -> u64 {
        crate::model::parameter_specs(self)
            .iter()
            .map(|p| p.elements())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `transformer/config.json` of the published Qwen/Qwen-Image checkpoint (it carries an
    /// extra `pooled_projection_dim` the model does not use).
    const QWEN_IMAGE: &str = r#"{
      "_class_name": "QwenImageTransformer2DModel",
      "_diffusers_version": "0.34.0.dev0",
      "attention_head_dim": 128,
      "axes_dims_rope": [16, 56, 56],
      "guidance_embeds": false,
      "in_channels": 64,
      "joint_attention_dim": 3584,
      "num_attention_heads": 24,
      "num_layers": 60,
      "out_channels": 16,
      "patch_size": 2,
      "pooled_projection_dim": 768
    }"#;

    #[test]
    fn published_config_parses_to_the_defaults() {
        let c = QwenImageTransformerConfig::from_json_str(QWEN_IMAGE).unwrap();
        assert_eq!(c, QwenImageTransformerConfig::default());
        assert_eq!(c.inner_dim(), 3072);
        assert_eq!(c.proj_out_dim(), 64);
        assert_eq!(c.ffn_dim(), 12288);
        // an empty object gives diffusers' defaults too
        assert_eq!(
            QwenImageTransformerConfig::from_json_str("{}").unwrap(),
            QwenImageTransformerConfig::default()
        );
    }

    #[test]
    fn null_out_channels_means_in_channels() {
        let c = QwenImageTransformerConfig::from_json_str(r#"{"out_channels": null}"#).unwrap();
        assert_eq!(c.out_channels(), 64);
        assert_eq!(c.proj_out_dim(), 256);
    }

    /// Parameter count by hand for Qwen-Image: per block 6 + 6 (modulation) + 8 (attention)
    /// + 2·(4 + 4) (FFNs) = 36 d² weights plus biases and 4 head norms.
    #[test]
    fn param_count_of_qwen_image() {
        let c = QwenImageTransformerConfig::default();
        let d: u64 = 3072;
        let block = 36 * d * d + (12 + 8 + 2 * (4 + 1)) * d + 4 * 128;
        let rest = (256 * d + d)
            + (d * d + d)
            + 3584
            + (64 * d + d)
            + (3584 * d + d)
            + (2 * d * d + 2 * d)
            + (64 * d + 64);
        assert_eq!(c.param_count(), 60 * block + rest);
        assert_eq!(c.param_count(), 20_430_401_088);
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_field_named() {
        let cases = [
            (r#"{"axes_dims_rope": [16, 56, 48]}"#, "sum(axes_dims_rope)"),
            (r#"{"axes_dims_rope": [16, 112]}"#, "3 entries"),
            (r#"{"axes_dims_rope": [15, 57, 56]}"#, "even"),
            (r#"{"num_layers": 0}"#, "num_layers"),
            (r#"{"patch_size": "two"}"#, "patch_size"),
            (
                r#"{"quantization": {"group_size": 48, "bits": 4}}"#,
                "quantization",
            ),
        ];
        for (json, needle) in cases {
            let err = QwenImageTransformerConfig::from_json_str(json).unwrap_err();
            assert!(
                matches!(err, DitError::InvalidConfig(_)) && err.to_string().contains(needle),
                "{json}: {err}"
            );
        }
        for flag in ["use_additional_t_cond", "use_layer3d_rope"] {
            let err = QwenImageTransformerConfig::from_json_str(&format!(r#"{{"{flag}": true}}"#))
                .unwrap_err();
            assert!(matches!(err, DitError::Unsupported(_)), "{flag}: {err}");
        }
    }

    #[test]
    fn config_file_errors_name_the_path() {
        let err = QwenImageTransformerConfig::from_file(Path::new("/nonexistent/config.json"))
            .unwrap_err();
        assert!(matches!(err, DitError::Weights(_)), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/config.json"));
    }
}
