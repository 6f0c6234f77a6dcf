//! # mlx-fastops
//!
//! Fast ops and fused GPU kernels over [mlx-rs](https://docs.rs/mlx-rs) for qwen-image-rs.
//! The Qwen-Image DiT (`qwen-dit`) calls these for attention, norms, GELU and the
//! element-wise work around its GEMMs (adaLN modulation, RoPE, gated residuals); the text
//! encoder and VAE use the plain ones. The fused ops mirror the arithmetic of diffusers'
//! `transformer_qwenimage.py` (`QwenImageTransformerBlock._modulate`, the gated residual
//! updates and `apply_rotary_emb_qwen` with `use_real=False`).
//!
//! ## Ops (all dtype-preserving: the output has the input's dtype; f32, f16, bf16)
//! - [`sdpa`]: scaled dot-product attention, (B, H, L, D) layout, optional boolean or
//!   additive mask (MLX fast SDPA).
//! - [`rms_norm`], [`layer_norm`] (no affine).
//! - Fused: [`layer_norm_modulate`] `= LayerNorm(x)·(1 + scale) + shift`, [`apply_rope`]
//!   (interleaved pairs), [`gated_residual`] `= x + gate·y`, [`gelu_tanh`] (GELU, tanh
//!   approximation, one pass instead of MLX's chain of element-wise ops) and
//!   [`bias_gelu_tanh`] `= GELU_tanh(x + bias)`, [`joint_qkv_heads`] (two packed Q/K/V
//!   projections → per-head q/k RMSNorm, join, RoPE, attention layout, in one pass),
//!   [`linear`] (a Linear layer; matrix-vector kernels for up to 8 rows).
//!
//! ## Dispatch of the fused ops
//! Each fused op has three implementations behind one entry point (see [`backend`]):
//! a CUDA kernel (MLX custom CUDA kernel through the raw mlx-sys FFI) when the current
//! stream is a GPU of MLX's CUDA backend, a Metal kernel (`mlx_rs::fast::MetalKernel`) on
//! a macOS GPU, and the reference of plain MLX ops ([`reference`](mod@reference)) on the CPU, when
//! `MLX_FASTOPS_REFERENCE=1` is set or [`set_force_reference`]`(true)` was called, and for
//! shapes outside a kernel's limits. [`fused_path`] says which one runs.
//!
//! The Metal kernels are line-by-line mirrors of the CUDA kernels; they have not been run
//! (the project's machines have no Apple GPU), only the CUDA kernels were measured and
//! tested on a GPU (NVIDIA H100).
//!
//! ## Shared helpers
//! [`ComputeDtype`] (f32, bf16, f16: the one compute-dtype type of the workspace), [`scalar`]
//! (a constant in the activation dtype: mlx-rs' `Array::from_f32` is a strong f32 that would
//! promote a bf16 graph) and [`silu`].
//!
//! Measured speed of the fused kernels against the unfused chains and PyTorch: the crate
//! README and `results/` (dated, with the machine).
//!
//! ## Using it on its own
//! ```
//! use mlx_rs::{Array, Dtype};
//! let x = mlx_rs::random::normal::<f32>(&[1, 8, 64], None, None, None)?.as_dtype(Dtype::Bfloat16)?;
//! let shift = mlx_rs::ops::zeros::<f32>(&[1, 64])?.as_dtype(Dtype::Bfloat16)?;
//! let scale = mlx_rs::ops::ones::<f32>(&[1, 64])?.as_dtype(Dtype::Bfloat16)?;
//! let y = mlx_fastops::layer_norm_modulate(&x, &shift, &scale, 1e-6)?;
//! assert_eq!(y.dtype(), Dtype::Bfloat16);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//! No op calls `eval`: the caller evaluates once per step.

#![warn(missing_docs)]

pub mod backend;
pub mod distributed;
mod dtype;
pub mod error;
mod ffi;
mod kernels;
mod ops;
mod order;
pub mod reference;
mod selfcheck;

pub use backend::{
    Backend, Path, cuda_available, cuda_compute_capability_major, current_backend, fused_path,
    gpu_backend, metal_available, reference_forced, set_force_reference,
};
pub use dtype::{ComputeDtype, ParseComputeDtypeError};
pub use error::{FastOpsError, Result};
pub use ops::{
    CPU_MAX_ATTENTION_SCORES, MAX_ATTENTION_SCORES, fused_attention_on_cuda, layer_norm,
    query_chunk, rms_norm, scalar, sdpa, silu,
};
pub use order::depends;
pub use reference::JointQkv;
pub use selfcheck::fallback_warnings;

use mlx_rs::Array;

/// `LayerNorm(x)·(1 + scale) + shift` (LayerNorm over C without affine parameters).
///
/// x (B, L, C); shift and scale (B, C) or (1, C), one vector per sample broadcast over L
/// (cast to x's dtype). Output (B, L, C) in x's dtype. See [`reference::layer_norm_modulate`]
/// for the exact arithmetic; the fused kernels compute it in f32 from x's values and round
/// once. Kernel limits: C ≤ 16384, B ≤ 65535 (else the reference runs).
pub fn layer_norm_modulate(x: &Array, shift: &Array, scale: &Array, eps: f32) -> Result<Array> {
    match fused_path() {
        Path::Reference => reference::layer_norm_modulate(x, shift, scale, eps),
        p => selfcheck::checked(
            "layer_norm_modulate",
            p,
            x.dtype(),
            || kernels::layer_norm_modulate(p, x, shift, scale, eps),
            || reference::layer_norm_modulate(x, shift, scale, eps),
        ),
    }
}

/// Rotary embedding on interleaved pairs `(x[2k], x[2k+1])` of the last axis with
/// precomputed `cos`/`sin` tables broadcastable to x's shape with the last axis halved.
///
/// Layouts and formula: [`reference::apply_rope`]. Kernel limits: rank ≤ 10, fewer than
/// 2³¹ threads (one per 16 bytes of x).
pub fn apply_rope(x: &Array, cos: &Array, sin: &Array) -> Result<Array> {
    match fused_path() {
        Path::Reference => reference::apply_rope(x, cos, sin),
        p => selfcheck::checked(
            "apply_rope",
            p,
            x.dtype(),
            || kernels::apply_rope(p, x, cos, sin),
            || reference::apply_rope(x, cos, sin),
        ),
    }
}

/// `x + gate·y` with x, y (B, L, C) and gate (B, C) or (1, C) broadcast over L; gate and y
/// are cast to x's dtype. The fused kernels compute in f32 and round once.
pub fn gated_residual(x: &Array, gate: &Array, y: &Array) -> Result<Array> {
    match fused_path() {
        Path::Reference => reference::gated_residual(x, gate, y),
        p => selfcheck::checked(
            "gated_residual",
            p,
            x.dtype(),
            || kernels::gated_residual(p, x, gate, y),
            || reference::gated_residual(x, gate, y),
        ),
    }
}

/// GELU with the tanh approximation (PyTorch `approximate="tanh"`):
/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, element-wise, any shape, output in x's
/// dtype. The fused kernels compute it in f32 and round once; the reference
/// ([`reference::gelu_tanh`]) uses plain MLX ops with every constant in x's dtype.
pub fn gelu_tanh(x: &Array) -> Result<Array> {
    match fused_path() {
        Path::Reference => reference::gelu_tanh(x),
        p => selfcheck::checked(
            "gelu_tanh",
            p,
            x.dtype(),
            || kernels::gelu_tanh(p, x),
            || reference::gelu_tanh(x),
        ),
    }
}

/// `GELU_tanh(x + bias)`: x (..., N), bias (N,) broadcast over the last axis (cast to x's
/// dtype) — a biased Linear's output bias and the activation in one pass. The fused
/// kernels add and compute in f32 and round once; the reference
/// ([`reference::bias_gelu_tanh`]) adds in x's dtype, then [`gelu_tanh`].
pub fn bias_gelu_tanh(x: &Array, bias: &Array) -> Result<Array> {
    match fused_path() {
        Path::Reference => reference::bias_gelu_tanh(x, bias),
        p => selfcheck::checked(
            "bias_gelu_tanh",
            p,
            x.dtype(),
            || kernels::bias_gelu_tanh(p, x, bias),
            || reference::bias_gelu_tanh(x, bias),
        ),
    }
}

/// Joint attention inputs from two packed Q/K/V projections (an MMDiT block's two streams):
/// per-head q/k RMSNorm with each sequence's weights, the sequences joined, RoPE on q and k,
/// `[q, k, v]` each (B, H, L1 + L2, D) for [`sdpa`]. Inputs and the exact arithmetic:
/// [`reference::joint_qkv_heads`].
///
/// The fused kernels read each projection once and write q, k and v once, in the layout
/// attention reads (the reference splits, normalises, concatenates and rotates in separate
/// passes); they round where the reference does (after the normalisation, after the weight,
/// after the rotation). Kernel limits: D a multiple of 64 up to 512, fewer than 2³¹ threads
/// (32 per token and head).
pub fn joint_qkv_heads(j: &JointQkv<'_>) -> Result<[Array; 3]> {
    match fused_path() {
        Path::Reference => reference::joint_qkv_heads(j),
        p => {
            j.check()?;
            let packed = selfcheck::checked(
                "joint_qkv_heads",
                p,
                j.first.dtype(),
                || kernels::joint_qkv_heads(p, j),
                || Ok(mlx_rs::ops::stack(&reference::joint_qkv_heads(j)?, 0)?),
            )?;
            unstack3(&packed)
        }
    }
}

/// MLX's affine dequantization (`mlx::dequantize`): w packed as uint32 `(rows,
/// cols·bits/32)`, scales and biases `(rows, cols/group_size)`; returns `scale·q + bias`
/// `(rows, cols)` in the scales' dtype. The fused kernels compute `scale·q + bias` in f32
/// (the product is exact there) and round once; against MLX's CPU `dequantize` they agree
/// exactly in f32 and within one rounding in bf16 / f16 (the GPU test).
///
/// The fused kernels expand 16 bytes of packed weights per thread with 16-byte loads and
/// stores (MLX's CUDA kernel reads one byte and writes one or two values per thread): for a
/// quantized model run as dequantize + float GEMM, this write of the float weight is what the
/// quantization costs.
pub fn dequantize(
    w: &Array,
    scales: &Array,
    biases: &Array,
    group_size: i32,
    bits: i32,
) -> Result<Array> {
    match fused_path() {
        Path::Reference => reference::dequantize(w, scales, biases, group_size, bits),
        p => selfcheck::checked(
            "dequantize",
            p,
            scales.dtype(),
            || kernels::dequantize(p, w, scales, biases, group_size, bits),
            || reference::dequantize(w, scales, biases, group_size, bits),
        ),
    }
}

/// A Linear layer, `x · wᵀ + bias`: x (..., K), w (N, K), bias (N,), output (..., N) in
/// x's dtype ([`reference::linear`]: MLX's `addmm`).
///
/// With at most 8 rows of x (a timestep's modulation, a single token) the fused kernels
/// compute it as matrix-vector products that read the weight once at full memory width (a
/// GEMM library's tiles are mostly empty there); more rows take MLX's GEMM. The kernels
/// accumulate in f32 and round once, as the GEMM does.
pub fn linear(x: &Array, w: &Array, bias: &Array) -> Result<Array> {
    match fused_path() {
        Path::Reference => reference::linear(x, w, bias),
        p => {
            let (rows, _, _) = reference::check_linear(x, w, bias)?;
            if rows > kernels::LINEAR_MAX_ROWS {
                return reference::linear(x, w, bias);
            }
            selfcheck::checked(
                "linear",
                p,
                x.dtype(),
                || kernels::linear(p, x, w, bias),
                || reference::linear(x, w, bias),
            )
        }
    }
}

/// `[a[0], a[1], a[2]]` of a (3, ...) array, as views.
fn unstack3(a: &Array) -> Result<[Array; 3]> {
    let mut parts = mlx_rs::ops::split_equal(a, 3, 0)?.into_iter();
    let mut next = || -> Result<Array> {
        let p = parts.next().ok_or_else(|| FastOpsError::Shape {
            op: "joint_qkv_heads",
            msg: "expected three planes".into(),
        })?;
        Ok(mlx_rs::ops::squeeze_axes(&p, &[0])?)
    };
    Ok([next()?, next()?, next()?])
}

/// The fused kernels called directly, on the backend of the current stream, ignoring
/// [`set_force_reference`]. Each returns [`FastOpsError::Kernel`] when no kernel can run
/// (CPU stream, unknown GPU backend, shapes outside the kernel's limits). For tests and
/// benchmarks; models call the dispatching functions at the crate root.
pub mod fused {
    use mlx_rs::Array;

    use crate::backend::{Backend, Path, current_backend};
    use crate::error::{FastOpsError, Result};
    use crate::kernels;

    pub use crate::kernels::{break_kernel, set_ln_modulate_threads};
    pub use crate::selfcheck::{reset_checks, set_kernel_disabled};

    fn path(op: &'static str) -> Result<Path> {
        match current_backend() {
            Backend::Cuda => Ok(Path::Cuda),
            Backend::Metal => Ok(Path::Metal),
            b => Err(FastOpsError::Kernel {
                op,
                msg: format!("no kernel for backend {b}"),
            }),
        }
    }

    fn some(op: &'static str, out: Option<Array>) -> Result<Array> {
        out.ok_or_else(|| FastOpsError::Kernel {
            op,
            msg: "inputs outside the kernel's limits".into(),
        })
    }

    /// The fused [`crate::layer_norm_modulate`].
    pub fn layer_norm_modulate(x: &Array, shift: &Array, scale: &Array, eps: f32) -> Result<Array> {
        const OP: &str = "layer_norm_modulate";
        some(
            OP,
            kernels::layer_norm_modulate(path(OP)?, x, shift, scale, eps)?,
        )
    }

    /// The fused [`crate::apply_rope`].
    pub fn apply_rope(x: &Array, cos: &Array, sin: &Array) -> Result<Array> {
        const OP: &str = "apply_rope";
        some(OP, kernels::apply_rope(path(OP)?, x, cos, sin)?)
    }

    /// The fused [`crate::gelu_tanh`].
    pub fn gelu_tanh(x: &Array) -> Result<Array> {
        const OP: &str = "gelu_tanh";
        some(OP, kernels::gelu_tanh(path(OP)?, x)?)
    }

    /// The fused [`crate::bias_gelu_tanh`].
    pub fn bias_gelu_tanh(x: &Array, bias: &Array) -> Result<Array> {
        const OP: &str = "bias_gelu_tanh";
        some(OP, kernels::bias_gelu_tanh(path(OP)?, x, bias)?)
    }

    /// The fused [`crate::joint_qkv_heads`], `[q, k, v]` stacked: (3, B, H, L1 + L2, D).
    pub fn joint_qkv_heads(j: &crate::JointQkv<'_>) -> Result<Array> {
        const OP: &str = "joint_qkv_heads";
        j.check()?;
        some(OP, kernels::joint_qkv_heads(path(OP)?, j)?)
    }

    /// The fused [`crate::linear`] (at most 8 rows of x).
    pub fn linear(x: &Array, w: &Array, bias: &Array) -> Result<Array> {
        const OP: &str = "linear";
        some(OP, kernels::linear(path(OP)?, x, w, bias)?)
    }

    /// The fused [`crate::dequantize`].
    pub fn dequantize(
        w: &Array,
        scales: &Array,
        biases: &Array,
        group_size: i32,
        bits: i32,
    ) -> Result<Array> {
        const OP: &str = "dequantize";
        some(
            OP,
            kernels::dequantize(path(OP)?, w, scales, biases, group_size, bits)?,
        )
    }

    /// The fused [`crate::gated_residual`].
    pub fn gated_residual(x: &Array, gate: &Array, y: &Array) -> Result<Array> {
        const OP: &str = "gated_residual";
        some(OP, kernels::gated_residual(path(OP)?, x, gate, y)?)
    }
}
