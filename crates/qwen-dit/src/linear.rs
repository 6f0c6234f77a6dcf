//! Linear layers, float or MLX-affine-quantized.

use std::collections::BTreeMap;

use mlx_rs::{Array, Dtype, ops};
use mlx_weights::{Role, Vars};

use crate::error::{DitError, Result};
use crate::module::{Module, Param};

/// A biased Linear layer `y = x·Wᵀ + b`, with `W` either float `(out, in)` or quantized MLX
/// style (packed `u32` `weight` `(out, in·bits/32)` + `scales`/`biases` `(out, in/group)`).
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    /// Float weight `(out, in)`.
    Float {
        /// `(out, in)`.
        weight: Array,
        /// `(out,)`.
        bias: Array,
    },
    /// MLX affine quantization.
    Quantized {
        /// Packed `(out, in·bits/32)` u32.
        weight: Array,
        /// `(out, in/group_size)`.
        scales: Array,
        /// `(out, in/group_size)`.
        biases: Array,
        /// `(out,)`.
        bias: Array,
        /// Elements per group.
        group_size: i32,
        /// Bits per element.
        bits: i32,
    },
    /// A layer whose rows were moved into the first layer of its group, which now computes
    /// the group's outputs with one GEMM ([`Linear::concat_rows`]; Q/K/V projections).
    Absorbed {
        /// Whether the host layer is quantized.
        quantized: bool,
    },
}

/// Inputs with at least this many rows (tokens × batch) go through a quantized Linear as
/// `dequantize` + float GEMM; fewer rows use MLX's `quantized_matmul`. On an H200 (MLX 0.32.2
/// CUDA) at the DiT's FFN shape, 4128 rows: `quantized_matmul` took 1.94 / 2.34 ms at 8 / 4
/// bits against 0.74 / 0.64 ms for dequantize + GEMM (bf16 GEMM alone 0.58 ms), while for a
/// handful of rows (the text tokens, the modulation) the quantized kernel reads 2–4× fewer
/// bytes. `QWEN_DIT_DEQUANTIZE_MIN_ROWS` overrides it (read once; 0: always dequantize; a
/// huge value: never).
pub const DEQUANTIZE_MIN_ROWS: usize = 256;

fn dequantize_min_rows() -> usize {
    static ROWS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        std::env::var("QWEN_DIT_DEQUANTIZE_MIN_ROWS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEQUANTIZE_MIN_ROWS)
    })
}

/// Bits MLX affine quantization supports.
pub(crate) fn valid_bits(bits: i32) -> bool {
    matches!(bits, 2 | 3 | 4 | 5 | 6 | 8)
}

/// Group sizes MLX affine quantization supports.
pub(crate) fn valid_group_size(g: i32) -> bool {
    matches!(g, 32 | 64 | 128)
}

impl Module for Linear {
    /// `(in_features, out_features)`.
    type Args = (usize, usize);

    /// Takes `weight` / `bias` (and `scales` / `biases` when the source holds this layer
    /// quantized; bits and group size read from the stored shapes).
    fn load(v: &mut Vars<'_>, (din, dout): (usize, usize)) -> Self {
        let (din, dout) = (din as i32, dout as i32);
        let weight_role = Role::Weight {
            fan_in: din.max(0) as usize,
        };
        let bias = v.take("bias", &[dout], Role::Bias);
        if !v.has("scales") {
            return Linear::Float {
                weight: v.take("weight", &[dout, din], weight_role),
                bias,
            };
        }
        // Quantized: infer bits from the packed width and the group size from the scales.
        let wshape = v.shape_of("weight").unwrap_or_default();
        let sshape = v.shape_of("scales").unwrap_or_default();
        let packed = if wshape.len() == 2 { wshape[1] } else { 0 };
        let groups = if sshape.len() == 2 { sshape[1] } else { 0 };
        let bits = if packed > 0 && (packed * 32) % din == 0 {
            packed * 32 / din
        } else {
            0
        };
        let group_size = if groups > 0 && din % groups == 0 {
            din / groups
        } else {
            0
        };
        if !valid_bits(bits) || !valid_group_size(group_size) {
            // Record the inconsistency and stand in a float layer so loading goes on and
            // the final error lists every problem.
            v.record_mismatch("weight", &[dout, din * 4 / 32], &wshape);
            v.record_mismatch("scales", &[dout, din / 64], &sshape);
            for k in ["weight", "scales", "biases"] {
                v.discard(k);
            }
            return Linear::Float {
                weight: ops::zeros_dtype(&[dout, din], v.dtype())
                    .unwrap_or_else(|_| Array::from_f32(0.0)),
                bias,
            };
        }
        let weight = v.take_raw("weight", &[dout, din * bits / 32], weight_role);
        let scales = v.take("scales", &[dout, din / group_size], Role::Other);
        let biases = v.take("biases", &[dout, din / group_size], Role::Other);
        Linear::Quantized {
            weight,
            scales,
            biases,
            bias,
            group_size,
            bits,
        }
    }

    fn visit<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, Param<'a>)) {
        f(path, Param::Linear(self));
    }

    fn visit_linears_mut(
        &mut self,
        path: &str,
        f: &mut dyn FnMut(&str, &mut Linear) -> Result<()>,
    ) -> Result<()> {
        f(path, self)
    }
}

impl Linear {
    /// `x·Wᵀ + b` over the last axis of `x`.
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            Linear::Float { weight, bias } => crate::ops::linear(x, weight, bias),
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                group_size,
                bits,
            } => {
                let rows = x.size() / x.dim(-1).max(1) as usize;
                if rows >= dequantize_min_rows() {
                    // Many rows (image tokens): dequantize this layer's weight and run the
                    // float GEMM; the dequantized weight lives only until this GEMM is done.
                    let w = mlx_fastops::dequantize(weight, scales, biases, *group_size, *bits)?;
                    let w = if w.dtype() == x.dtype() {
                        w
                    } else {
                        w.as_dtype(x.dtype())?
                    };
                    Ok(ops::addmm(bias, x, w.t(), None, None)?)
                } else {
                    let y =
                        ops::quantized_matmul(x, weight, scales, biases, true, *group_size, *bits)?;
                    Ok(ops::add(y, bias)?)
                }
            }
            Linear::Absorbed { .. } => Err(DitError::InvalidInput(
                "a layer fused into its group's GEMM has no weights of its own".into(),
            )),
        }
    }

    /// One layer computing the outputs of `parts` side by side (their weight rows, biases,
    /// and for quantized layers scales and biases, stacked in order), when they are all float
    /// or all quantized alike; `None` otherwise.
    pub(crate) fn concat_rows(parts: &[&Linear]) -> Result<Option<Linear>> {
        let cat = |f: &dyn Fn(&Linear) -> Option<&Array>| -> Result<Option<Array>> {
            let arrays: Option<Vec<&Array>> = parts.iter().map(|l| f(l)).collect();
            Ok(match arrays {
                Some(a) => Some(ops::concatenate(&a, 0)?),
                None => None,
            })
        };
        match parts.first() {
            Some(Linear::Float { .. }) => {
                let w = cat(&|l| match l {
                    Linear::Float { weight, .. } => Some(weight),
                    _ => None,
                })?;
                let b = cat(&|l| match l {
                    Linear::Float { bias, .. } => Some(bias),
                    _ => None,
                })?;
                Ok(w.zip(b)
                    .map(|(weight, bias)| Linear::Float { weight, bias }))
            }
            Some(Linear::Quantized {
                group_size, bits, ..
            }) => {
                let (g, b) = (*group_size, *bits);
                let same = |l: &Linear| matches!(l, Linear::Quantized { group_size, bits, .. } if *group_size == g && *bits == b);
                if !parts.iter().all(|l| same(l)) {
                    return Ok(None);
                }
                let pick = |k: usize| -> Result<Option<Array>> {
                    cat(&move |l| match l {
                        Linear::Quantized {
                            weight,
                            scales,
                            biases,
                            bias,
                            ..
                        } => Some([weight, scales, biases, bias][k]),
                        _ => None,
                    })
                };
                Ok(match (pick(0)?, pick(1)?, pick(2)?, pick(3)?) {
                    (Some(weight), Some(scales), Some(biases), Some(bias)) => {
                        Some(Linear::Quantized {
                            weight,
                            scales,
                            biases,
                            bias,
                            group_size: g,
                            bits: b,
                        })
                    }
                    _ => None,
                })
            }
            _ => Ok(None),
        }
    }

    /// Rows `[start, end)` of the outputs: the layer of a group that [`Self::concat_rows`]
    /// stacked (the inverse of it; views, nothing is copied). A fused-away layer has no rows
    /// of its own and stays as it is.
    pub(crate) fn rows(&self, start: i32, end: i32) -> Linear {
        use mlx_rs::ops::indexing::IndexOp;
        match self {
            Linear::Float { weight, bias } => Linear::Float {
                weight: weight.index(start..end),
                bias: bias.index(start..end),
            },
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                group_size,
                bits,
            } => Linear::Quantized {
                weight: weight.index(start..end),
                scales: scales.index(start..end),
                biases: biases.index(start..end),
                bias: bias.index(start..end),
                group_size: *group_size,
                bits: *bits,
            },
            Linear::Absorbed { quantized } => Linear::Absorbed {
                quantized: *quantized,
            },
        }
    }

    /// Output width.
    pub(crate) fn out_features(&self) -> i32 {
        match self {
            Linear::Float { weight, .. } | Linear::Quantized { weight, .. } => weight.dim(0),
            Linear::Absorbed { .. } => 0,
        }
    }

    /// Input width.
    pub(crate) fn in_features(&self) -> i32 {
        match self {
            Linear::Float { weight, .. } => weight.dim(1),
            Linear::Quantized { weight, bits, .. } => weight.dim(1) * 32 / bits,
            Linear::Absorbed { .. } => 0,
        }
    }

    /// Whether the layer is quantized.
    pub(crate) fn is_quantized(&self) -> bool {
        matches!(
            self,
            Linear::Quantized { .. } | Linear::Absorbed { quantized: true }
        )
    }

    /// This layer quantized (a float layer) or unchanged (an already quantized one).
    pub(crate) fn quantized(&self, group_size: i32, bits: i32) -> Result<Linear> {
        match self {
            Linear::Float { weight, bias } => {
                let din = weight.dim(1);
                if din % group_size != 0 {
                    return Err(DitError::Quantization(format!(
                        "input width {din} is not a multiple of the group size {group_size}"
                    )));
                }
                let (w, scales, biases) = ops::quantize(weight, group_size, bits)?;
                Ok(Linear::Quantized {
                    weight: w,
                    scales,
                    biases,
                    bias: bias.clone(),
                    group_size,
                    bits,
                })
            }
            q => Ok(q.clone()),
        }
    }

    /// The weight as a float `(out, in)` matrix (dequantized if needed) in `dtype`.
    pub(crate) fn dense_weight(&self, dtype: Dtype) -> Result<Array> {
        let w = match self {
            Linear::Float { weight, .. } => weight.clone(),
            Linear::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                ..
            } => mlx_fastops::dequantize(weight, scales, biases, *group_size, *bits)?,
            Linear::Absorbed { .. } => {
                return Err(DitError::InvalidInput(
                    "a fused-away layer has no weight".into(),
                ));
            }
        };
        Ok(if w.dtype() == dtype {
            w
        } else {
            w.as_dtype(dtype)?
        })
    }

    /// Every array the layer would be written as in an MLX checkpoint.
    pub(crate) fn arrays(&self) -> Vec<(&'static str, &Array)> {
        match self {
            Linear::Float { weight, bias } => vec![("weight", weight), ("bias", bias)],
            Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                ..
            } => vec![
                ("weight", weight),
                ("scales", scales),
                ("biases", biases),
                ("bias", bias),
            ],
            Linear::Absorbed { .. } => Vec::new(),
        }
    }

    /// Inserts the layer's arrays under `{prefix}.{name}`.
    pub(crate) fn export(&self, prefix: &str, out: &mut BTreeMap<String, Array>) {
        for (n, a) in self.arrays() {
            out.insert(format!("{prefix}.{n}"), a.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both quantized paths against each other: many rows take dequantize + GEMM, a few take
    /// `quantized_matmul`; they agree to f32 rounding at 8 and 4 bits.
    #[test]
    fn dequantize_path_matches_quantized_matmul() -> Result<()> {
        let (din, dout) = (256, 96);
        let float = Linear::Float {
            weight: mlx_rs::random::normal::<f32>(&[dout, din], None, None, None)?,
            bias: mlx_rs::random::normal::<f32>(&[dout], None, None, None)?,
        };
        for bits in [8, 4] {
            let q = float.quantized(64, bits)?;
            let Linear::Quantized {
                weight,
                scales,
                biases,
                bias,
                ..
            } = &q
            else {
                unreachable!("quantized() of a float layer is quantized")
            };
            for rows in [3, DEQUANTIZE_MIN_ROWS + 44] {
                let x = mlx_rs::random::normal::<f32>(&[1, rows as i32, din], None, None, None)?;
                let got = q.forward(&x)?;
                let want = ops::add(
                    ops::quantized_matmul(&x, weight, scales, biases, true, 64, bits)?,
                    bias,
                )?;
                let err = ops::abs(&ops::subtract(&got, &want)?)?
                    .max(None)?
                    .item_exact::<f32>();
                let scale = ops::abs(&want)?.max(None)?.item_exact::<f32>();
                assert!(
                    err <= 2e-5 * scale,
                    "{bits} bits, {rows} rows: {err} of {scale}"
                );
            }
        }
        Ok(())
    }
}
