//! The compute dtype of a model: the one type every stage and the pipeline use for it.

use std::fmt;
use std::str::FromStr;

use mlx_rs::Dtype;

use crate::error::FastOpsError;

/// A floating dtype activations and weights are computed in: f32, bf16 or f16.
///
/// Converting from [`Dtype`] is the single check of "is this a compute dtype"
/// (`ComputeDtype::try_from(dtype)?`); parsing accepts `f32`/`float32`, `bf16`/`bfloat16`
/// and `f16`/`float16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComputeDtype {
    /// 32-bit float (the CPU default; parity tests run in it).
    F32,
    /// bfloat16 (the GPU default).
    Bf16,
    /// IEEE half precision (overflows in Qwen-Image's activations; bf16 is safer).
    F16,
}

impl ComputeDtype {
    /// Every compute dtype, in the order of their names in [`ComputeDtype::NAMES`].
    pub const ALL: [ComputeDtype; 3] = [ComputeDtype::F32, ComputeDtype::Bf16, ComputeDtype::F16];
    /// The short names [`FromStr`] accepts first (`f32`, `bf16`, `f16`).
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "f16"];

    /// The MLX dtype.
    pub fn dtype(self) -> Dtype {
        match self {
            ComputeDtype::F32 => Dtype::Float32,
            ComputeDtype::Bf16 => Dtype::Bfloat16,
            ComputeDtype::F16 => Dtype::Float16,
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            ComputeDtype::F32 => 4,
            ComputeDtype::Bf16 | ComputeDtype::F16 => 2,
        }
    }

    /// The short name (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
            ComputeDtype::F16 => "f16",
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<ComputeDtype> for Dtype {
    fn from(d: ComputeDtype) -> Self {
        d.dtype()
    }
}

impl TryFrom<Dtype> for ComputeDtype {
    type Error = FastOpsError;

    fn try_from(dtype: Dtype) -> Result<Self, FastOpsError> {
        match dtype {
            Dtype::Float32 => Ok(ComputeDtype::F32),
            Dtype::Bfloat16 => Ok(ComputeDtype::Bf16),
            Dtype::Float16 => Ok(ComputeDtype::F16),
            dtype => Err(FastOpsError::Dtype {
                op: "compute dtype (f32, bf16 or f16)",
                dtype,
            }),
        }
    }
}

/// A name that is not a compute dtype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a compute dtype (f32, bf16 or f16)")]
pub struct ParseComputeDtypeError(pub String);

impl FromStr for ComputeDtype {
    type Err = ParseComputeDtypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(ComputeDtype::F32),
            "bf16" | "bfloat16" => Ok(ComputeDtype::Bf16),
            "f16" | "float16" => Ok(ComputeDtype::F16),
            _ => Err(ParseComputeDtypeError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_round_trip() {
        for (d, n) in ComputeDtype::ALL.iter().zip(ComputeDtype::NAMES) {
            assert_eq!(n.parse::<ComputeDtype>(), Ok(*d));
            assert_eq!(d.to_string(), n);
            assert_eq!(ComputeDtype::try_from(d.dtype()).ok(), Some(*d));
        }
        assert_eq!("BFloat16".parse(), Ok(ComputeDtype::Bf16));
        assert!("f64".parse::<ComputeDtype>().is_err());
        assert!(ComputeDtype::try_from(Dtype::Float64).is_err());
        assert!(ComputeDtype::try_from(Dtype::Int32).is_err());
        assert_eq!(ComputeDtype::Bf16.bytes(), 2);
    }
}
