//! On-the-fly quantization settings and the memory arithmetic that goes with them.

use crate::config::QwenImageTransformerConfig;
use crate::error::{DitError, Result};
use crate::linear::{valid_bits, valid_group_size};

/// How to quantize the float Linear layers of a model when it is loaded (MLX affine
/// quantization, as `mlx.nn.quantize` and the mlx-community conversions do).
///
/// Layers whose module path matches one of `keep_float` stay in the compute dtype. Patterns
/// are matched against the whole module path (e.g. `transformer_blocks.3.img_mod.1`) and may
/// use `*` for any run of characters: `transformer_blocks.0.*` keeps the first block,
/// `*_mod.1` every modulation layer, `proj_out` the output projection. Layers whose input
/// width is not a multiple of `group_size` also stay in float (MLX cannot quantize them).
/// Layers that the checkpoint already stores quantized are kept as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeSpec {
    /// Bits per weight: 2, 3, 4, 5, 6 or 8.
    pub bits: i32,
    /// Weights sharing one scale and bias: 32, 64 or 128.
    pub group_size: i32,
    /// Module-path patterns of Linear layers kept in float.
    pub keep_float: Vec<String>,
}

impl QuantizeSpec {
    /// `bits`-bit quantization with group size 64 of every Linear layer.
    pub fn new(bits: i32) -> Self {
        Self {
            bits,
            group_size: 64,
            keep_float: Vec::new(),
        }
    }

    /// Sets the group size.
    pub fn with_group_size(mut self, group_size: i32) -> Self {
        self.group_size = group_size;
        self
    }

    /// Keeps the Linear layers matching `pattern` in float (see the type's docs).
    pub fn keep(mut self, pattern: impl Into<String>) -> Self {
        self.keep_float.push(pattern.into());
        self
    }

    /// Keeps the first `first` and the last `last` blocks of a `num_layers`-block model in
    /// float.
    pub fn keep_edge_blocks(mut self, num_layers: usize, first: usize, last: usize) -> Self {
        for i in (0..first.min(num_layers)).chain(num_layers.saturating_sub(last)..num_layers) {
            let p = format!("transformer_blocks.{i}.*");
            if !self.keep_float.contains(&p) {
                self.keep_float.push(p);
            }
        }
        self
    }

    /// Checks `bits` and `group_size`.
    pub fn validate(&self) -> Result<()> {
        if !valid_bits(self.bits) || !valid_group_size(self.group_size) {
            return Err(DitError::Quantization(format!(
                "bits {} / group size {} is not an MLX affine setting (bits 2,3,4,5,6,8; group 32,64,128)",
                self.bits, self.group_size
            )));
        }
        Ok(())
    }

    /// Whether the float layer `path` with input width `in_features` gets quantized.
    pub fn quantizes(&self, path: &str, in_features: usize) -> bool {
        in_features.is_multiple_of(self.group_size as usize)
            && !self.keep_float.iter().any(|p| glob_match(p, path))
    }
}

/// `*`-only glob match of a whole string.
pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Bytes the model's parameters take in memory: float parameters at `float_bytes` each
/// (2 for bf16/f16, 4 for f32); a quantized Linear weight at `bits/8` bytes per element plus
/// one scale and one bias (in the float dtype) per group. Biases and norm weights stay float.
pub fn weight_bytes(
    config: &QwenImageTransformerConfig,
    float_bytes: u64,
    quant: Option<&QuantizeSpec>,
) -> u64 {
    let mut total = 0u64;
    for (path, din, dout) in config.linear_layers() {
        let (din, dout) = (din as u64, dout as u64);
        total += dout * float_bytes; // bias
        total += match quant {
            Some(q) if q.quantizes(&path, din as usize) => {
                let groups = din / q.group_size as u64;
                dout * din * q.bits as u64 / 8 + 2 * dout * groups * float_bytes
            }
            _ => dout * din * float_bytes,
        };
    }
    let norms: u64 = config.norm_weights().iter().map(|(_, n)| *n as u64).sum();
    total + norms * float_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_whole_paths() {
        assert!(glob_match("proj_out", "proj_out"));
        assert!(!glob_match("proj_out", "proj_out_x"));
        assert!(glob_match(
            "transformer_blocks.1.*",
            "transformer_blocks.1.attn.to_q"
        ));
        assert!(!glob_match(
            "transformer_blocks.1.*",
            "transformer_blocks.10.attn.to_q"
        ));
        assert!(glob_match("*_mod.1", "transformer_blocks.7.img_mod.1"));
        assert!(glob_match(
            "*.attn.*_out*",
            "transformer_blocks.7.attn.to_add_out"
        ));
        assert!(!glob_match(
            "*.attn.*_out*",
            "transformer_blocks.7.img_mlp.net.2"
        ));
        assert!(glob_match("*", "anything"));
    }

    #[test]
    fn spec_selection_and_validation() {
        let s = QuantizeSpec::new(4)
            .keep_edge_blocks(60, 2, 1)
            .keep("proj_out");
        assert!(s.quantizes("transformer_blocks.2.attn.to_q", 3072));
        assert!(!s.quantizes("transformer_blocks.1.attn.to_q", 3072));
        assert!(!s.quantizes("transformer_blocks.59.txt_mlp.net.2", 12288));
        assert!(!s.quantizes("proj_out", 3072));
        assert!(!s.quantizes("img_in", 48), "in width not a multiple of 64");
        assert!(s.validate().is_ok());
        assert!(QuantizeSpec::new(7).validate().is_err());
        assert!(QuantizeSpec::new(4).with_group_size(48).validate().is_err());
    }

    #[test]
    fn weight_bytes_counts_quantized_and_float_parts() {
        let c = QwenImageTransformerConfig {
            num_layers: 1,
            ..Default::default()
        };
        let f32_bytes = weight_bytes(&c, 4, None);
        assert_eq!(f32_bytes, 4 * c.param_count());
        // quantizing only proj_out (3072 → 64): its weight goes from 2 bytes to
        // 4/8 + 2·2/64 bytes per element
        let all_but = QuantizeSpec {
            bits: 4,
            group_size: 64,
            keep_float: vec!["t*".into(), "img_in".into(), "norm_out*".into()],
        };
        let w = 3072u64 * 64;
        assert_eq!(
            weight_bytes(&c, 2, None) - weight_bytes(&c, 2, Some(&all_but)),
            2 * w - (w / 2 + w / 64 * 4)
        );
    }
}
