//! The fused kernels: launch planning shared by the CUDA and Metal implementations.
//!
//! Each op has a CUDA source (`*.cu`, the body of an MLX custom CUDA kernel, helpers in
//! `common.cuh`) and a Metal source (`*.metal`, helpers in `common.metal`) that mirrors it
//! line by line. Both are launched with the same grid, thread group and template arguments
//! (`ensure_row_contiguous = true`: MLX copies non-row-contiguous inputs first). A planner
//! returns `None` for inputs outside the kernel's limits; the caller then uses the reference.

#[cfg(not(target_os = "macos"))]
mod cuda;

use std::sync::atomic::{AtomicI32, Ordering};

use mlx_rs::{Array, Dtype, Stream, ops};

use crate::backend::Path;
use crate::error::{FastOpsError, Result};
use crate::ops::cast;
use crate::reference::{JointQkv, check_bias, check_rope, check_rows};

/// A compile-time template argument of a kernel (mirrors `mlx_rs::fast::TemplateArg`,
/// which mlx-rs only builds with its `metal` feature).
#[derive(Debug, Clone, Copy)]
pub(crate) enum TemplateArg {
    /// A type, emitted as `using NAME = <type>`.
    Dtype(Dtype),
    /// An integer constant.
    Int(i32),
}

/// The shape and dtype of one kernel output.
pub(crate) struct OutputSpec {
    pub shape: Vec<i32>,
    pub dtype: Dtype,
}

/// A kernel's identity and sources.
struct Spec {
    op: &'static str,
    /// Base name; the kernel is registered as `<name>_<hash of the sources>` because MLX
    /// caches compiled kernels by name (in memory and, for CUDA, as PTX on disk under
    /// `$TMPDIR/mlx/<version>/ptx`), so an edited source must not reuse an old name.
    name: &'static str,
    inputs: &'static [&'static str],
    outputs: &'static [&'static str],
    cuda: &'static str,
    metal: &'static str,
}

/// One launch of a kernel.
struct Launch<'a> {
    inputs: Vec<&'a Array>,
    outputs: Vec<OutputSpec>,
    grid: (i32, i32, i32),
    block: (i32, i32, i32),
    template: Vec<(&'static str, TemplateArg)>,
}

/// FNV-1a over the bytes of `parts`.
const fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut p = 0;
    while p < parts.len() {
        let b = parts[p].as_bytes();
        let mut i = 0;
        while i < b.len() {
            h ^= b[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        p += 1;
    }
    h
}

impl Spec {
    /// The registered kernel name: base name plus a hash of every source it is built from.
    fn full_name(&self) -> String {
        let h = fnv1a(&[CUDA_HEADER, METAL_HEADER, self.cuda, self.metal]);
        format!("{}_{:08x}", self.name, h as u32)
    }
}

const CUDA_HEADER: &str = include_str!("common.cuh");
const METAL_HEADER: &str = include_str!("common.metal");

const LN_MODULATE: Spec = Spec {
    op: "layer_norm_modulate",
    name: "fastops_ln_modulate",
    inputs: &["x", "shift", "scale"],
    outputs: &["out"],
    cuda: include_str!("layer_norm_modulate.cu"),
    metal: include_str!("layer_norm_modulate.metal"),
};

const ROPE: Spec = Spec {
    op: "apply_rope",
    name: "fastops_rope",
    inputs: &["x", "tcos", "tsin"],
    outputs: &["out"],
    cuda: include_str!("apply_rope.cu"),
    metal: include_str!("apply_rope.metal"),
};

const GATED: Spec = Spec {
    op: "gated_residual",
    name: "fastops_gated_residual",
    inputs: &["x", "gate", "y"],
    outputs: &["out"],
    cuda: include_str!("gated_residual.cu"),
    metal: include_str!("gated_residual.metal"),
};

const GELU: Spec = Spec {
    op: "gelu_tanh",
    name: "fastops_gelu_tanh",
    inputs: &["x"],
    outputs: &["out"],
    cuda: include_str!("gelu_tanh.cu"),
    metal: include_str!("gelu_tanh.metal"),
};

const BIAS_GELU: Spec = Spec {
    op: "bias_gelu_tanh",
    name: "fastops_bias_gelu_tanh",
    inputs: &["x", "bias"],
    outputs: &["out"],
    cuda: include_str!("bias_gelu_tanh.cu"),
    metal: include_str!("bias_gelu_tanh.metal"),
};

const JOINT_QKV: Spec = Spec {
    op: "joint_qkv_heads",
    name: "fastops_joint_qkv",
    inputs: &["a", "b", "wqa", "wka", "wqb", "wkb", "tcos", "tsin"],
    outputs: &["out"],
    cuda: include_str!("joint_qkv.cu"),
    metal: include_str!("joint_qkv.metal"),
};

const LINEAR_ROWS: Spec = Spec {
    op: "linear",
    name: "fastops_linear_rows",
    inputs: &["x", "w", "bias"],
    outputs: &["out"],
    cuda: include_str!("linear_rows.cu"),
    metal: include_str!("linear_rows.metal"),
};

const DEQUANTIZE: Spec = Spec {
    op: "dequantize",
    name: "fastops_dequantize",
    inputs: &["w", "scales", "biases"],
    outputs: &["out"],
    cuda: include_str!("dequantize.cu"),
    metal: include_str!("dequantize.metal"),
};

/// Ops whose kernel source is deliberately broken (tests of the fallback).
static BROKEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// Makes the kernel of `op` fail to compile from now on in this process (its source gets an
/// `#error`), to test that the op falls back to its reference. For tests only.
#[doc(hidden)]
pub fn break_kernel(op: &'static str) {
    BROKEN.lock().unwrap_or_else(|e| e.into_inner()).push(op);
}

fn broken(op: &str) -> bool {
    BROKEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&op)
}

/// A source with an `#error` appended, and a name of its own (MLX caches kernels by name).
fn broken_source(spec: &Spec, source: &str) -> (String, String) {
    (
        format!("{}_broken", spec.full_name()),
        format!("{source}\n#error deliberately broken by mlx_fastops::fused::break_kernel\n"),
    )
}

fn unavailable(op: &'static str, msg: &str) -> FastOpsError {
    FastOpsError::Kernel {
        op,
        msg: msg.to_string(),
    }
}

fn run(path: Path, spec: &Spec, launch: Launch<'_>) -> Result<Array> {
    let mut outs = match path {
        Path::Cuda => run_cuda(spec, launch)?,
        Path::Metal => run_metal(spec, launch)?,
        Path::Reference => return Err(unavailable(spec.op, "the reference path has no kernel")),
    };
    outs.pop()
        .ok_or_else(|| unavailable(spec.op, "the kernel returned no output"))
}

#[cfg(not(target_os = "macos"))]
thread_local! {
    /// Kernel objects by base name, created once per thread (creating one copies the
    /// sources; compilation is cached by MLX either way).
    static CUDA_KERNELS: std::cell::RefCell<std::collections::HashMap<&'static str, std::rc::Rc<cuda::CudaKernel>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

#[cfg(not(target_os = "macos"))]
fn run_cuda(spec: &Spec, l: Launch<'_>) -> Result<Vec<Array>> {
    let cached = CUDA_KERNELS.with_borrow(|m| m.get(spec.name).cloned());
    let k = match cached {
        _ if broken(spec.op) => {
            let (name, source) = broken_source(spec, spec.cuda);
            std::rc::Rc::new(cuda::CudaKernel::new(
                spec.op,
                &name,
                spec.inputs,
                spec.outputs,
                &source,
                CUDA_HEADER,
                true,
            )?)
        }
        Some(k) => k,
        None => {
            let k = std::rc::Rc::new(cuda::CudaKernel::new(
                spec.op,
                &spec.full_name(),
                spec.inputs,
                spec.outputs,
                spec.cuda,
                CUDA_HEADER,
                true,
            )?);
            CUDA_KERNELS.with_borrow_mut(|m| m.insert(spec.name, k.clone()));
            k
        }
    };
    let stream = Stream::thread_local_or_default();
    // SAFETY: the planners below size the grid so that every output element is written
    // exactly once and every access stays inside the (row-contiguous) buffers; each
    // kernel's bounds checks are documented in its source.
    unsafe { k.apply(&l.inputs, &l.outputs, l.grid, l.block, &l.template, &stream) }
}

#[cfg(target_os = "macos")]
fn run_cuda(spec: &Spec, _l: Launch<'_>) -> Result<Vec<Array>> {
    let _ = CUDA_HEADER;
    Err(unavailable(spec.op, "no CUDA backend on macOS"))
}

#[cfg(target_os = "macos")]
fn run_metal(spec: &Spec, l: Launch<'_>) -> Result<Vec<Array>> {
    use mlx_rs::fast::{
        MetalKernel, MetalKernelApplyOptions, MetalKernelOptions, MetalKernelOutput,
    };
    let (name, source) = if broken(spec.op) {
        broken_source(spec, spec.metal)
    } else {
        (spec.full_name(), spec.metal.to_string())
    };
    let k = MetalKernel::new(
        &name,
        spec.inputs,
        spec.outputs,
        &source,
        MetalKernelOptions {
            header: METAL_HEADER.to_string(),
            ensure_row_contiguous: true,
            atomic_outputs: false,
        },
    )?;
    let outputs: Vec<MetalKernelOutput> = l
        .outputs
        .iter()
        .map(|o| MetalKernelOutput {
            shape: o.shape.clone(),
            dtype: o.dtype,
        })
        .collect();
    let options = MetalKernelApplyOptions {
        template_args: l
            .template
            .iter()
            .map(|(n, a)| {
                let a = match *a {
                    TemplateArg::Dtype(d) => mlx_rs::fast::TemplateArg::Dtype(d),
                    TemplateArg::Int(v) => mlx_rs::fast::TemplateArg::Int(v),
                };
                (n.to_string(), a)
            })
            .collect(),
        init_value: None,
        verbose: std::env::var_os("MLX_FASTOPS_VERBOSE").is_some(),
    };
    // SAFETY: as for CUDA: the same grid writes every output element once, in bounds.
    Ok(unsafe { k.apply(&l.inputs, &outputs, l.grid, l.block, options)? })
}

#[cfg(not(target_os = "macos"))]
fn run_metal(spec: &Spec, _l: Launch<'_>) -> Result<Vec<Array>> {
    let _ = (METAL_HEADER, spec.metal);
    Err(unavailable(
        spec.op,
        "the Metal backend exists only on macOS",
    ))
}

fn float_dtype(d: Dtype) -> bool {
    matches!(d, Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16)
}

fn elem_bytes(d: Dtype) -> i32 {
    if d == Dtype::Float32 { 4 } else { 2 }
}

/// Threads per row forced for layer_norm_modulate (0 = automatic); for tuning benches.
static LN_TPB: AtomicI32 = AtomicI32::new(0);

/// Forces the threads per row (a multiple of 32, ≤ 1024) of the layer_norm_modulate
/// kernel; `None` restores the automatic choice. For benchmarks that tune the kernel.
#[doc(hidden)]
pub fn set_ln_modulate_threads(tpb: Option<u32>) {
    LN_TPB.store(tpb.map_or(0, |t| t as i32), Ordering::SeqCst);
}

/// Largest C the layer_norm_modulate kernel keeps in registers.
pub(crate) const LN_MAX_C: i32 = 16384;

/// Threads per row for a row of `c` elements of `bytes`-byte type: about 3 accesses per
/// thread (16-byte accesses when C is a multiple of the vector width).
fn ln_threads(c: i32, bytes: i32) -> i32 {
    let forced = LN_TPB.load(Ordering::SeqCst);
    if forced > 0 {
        return forced;
    }
    let w = 16 / bytes;
    let nacc = if c % w == 0 { c / w } else { c };
    let per = (nacc + 2) / 3;
    ((per + 31) / 32 * 32).clamp(32, 1024)
}

/// Fused layer_norm_modulate on `path`; `None` when the inputs are outside its limits.
pub(crate) fn layer_norm_modulate(
    path: Path,
    x: &Array,
    shift: &Array,
    scale: &Array,
    eps: f32,
) -> Result<Option<Array>> {
    let s = check_rows(LN_MODULATE.op, x, &[("shift", shift), ("scale", scale)])?;
    let dt = x.dtype();
    if !float_dtype(dt)
        || s.b == 0
        || s.l == 0
        || s.c == 0
        || s.c > LN_MAX_C
        || s.b > 65535
        || (path == Path::Metal && (s.mb * s.c < 8 || x.size() < 8))
    {
        return Ok(None);
    }
    let tpb = ln_threads(s.c, elem_bytes(dt));
    if i64::from(s.l) * i64::from(tpb) > i64::from(i32::MAX) {
        return Ok(None);
    }
    let shift = cast(shift, dt)?;
    let scale = cast(scale, dt)?;
    let out = run(
        path,
        &LN_MODULATE,
        Launch {
            inputs: vec![x, &shift, &scale],
            outputs: vec![OutputSpec {
                shape: x.shape().to_vec(),
                dtype: dt,
            }],
            grid: (s.l * tpb, s.b, 1),
            block: (tpb, 1, 1),
            template: vec![
                ("T", TemplateArg::Dtype(dt)),
                ("C", TemplateArg::Int(s.c)),
                ("TPB", TemplateArg::Int(tpb)),
                ("MB", TemplateArg::Int(s.mb)),
                ("EPS_BITS", TemplateArg::Int(eps.to_bits() as i32)),
            ],
        },
    )?;
    Ok(Some(out))
}

/// Fused apply_rope on `path`; `None` when the inputs are outside its limits.
pub(crate) fn apply_rope(path: Path, x: &Array, cos: &Array, sin: &Array) -> Result<Option<Array>> {
    let tshape = check_rope(x, cos, sin)?;
    let dt = x.dtype();
    let xs = x.shape();
    let nd = xs.len();
    let d = xs[nd - 1];
    let h2 = d / 2;
    let rows: i64 = xs[..nd - 1].iter().map(|&v| i64::from(v)).product();
    if nd > 10 || rows == 0 || h2 == 0 {
        return Ok(None);
    }
    let w = 16 / elem_bytes(dt);
    let p = if h2 % (w / 2) == 0 { w / 2 } else { 1 };
    let threads = rows * i64::from(h2 / p);
    let tsize: i64 = tshape.iter().map(|&v| i64::from(v)).product();
    if threads > i64::from(i32::MAX) || (path == Path::Metal && (tsize < 8 || x.size() < 8)) {
        return Ok(None);
    }
    let tdt = cos.dtype();
    let tcos = ops::reshape(cos, &tshape)?;
    let tsin = ops::reshape(cast(sin, tdt)?, &tshape)?;
    let out = run(
        path,
        &ROPE,
        Launch {
            inputs: vec![x, &tcos, &tsin],
            outputs: vec![OutputSpec {
                shape: xs.to_vec(),
                dtype: dt,
            }],
            grid: (threads as i32, 1, 1),
            block: (256, 1, 1),
            template: vec![
                ("T", TemplateArg::Dtype(dt)),
                ("TC", TemplateArg::Dtype(tdt)),
                ("P", TemplateArg::Int(p)),
            ],
        },
    )?;
    Ok(Some(out))
}

/// Fused gated_residual on `path`; `None` when the inputs are outside its limits.
pub(crate) fn gated_residual(
    path: Path,
    x: &Array,
    gate: &Array,
    y: &Array,
) -> Result<Option<Array>> {
    let s = check_rows(GATED.op, x, &[("gate", gate)])?;
    if y.shape() != x.shape() {
        return Err(FastOpsError::Shape {
            op: GATED.op,
            msg: format!("y {:?} must match x {:?}", y.shape(), x.shape()),
        });
    }
    let dt = x.dtype();
    let w = 16 / elem_bytes(dt);
    let w = if s.c % w == 0 { w } else { 1 };
    let threads = i64::from(s.b) * i64::from(s.l) * i64::from(s.c / w);
    if threads == 0
        || threads > i64::from(i32::MAX)
        || (path == Path::Metal && (s.mb * s.c < 8 || x.size() < 8))
    {
        return Ok(None);
    }
    let gate = cast(gate, dt)?;
    let y = cast(y, dt)?;
    let out = run(
        path,
        &GATED,
        Launch {
            inputs: vec![x, &gate, &y],
            outputs: vec![OutputSpec {
                shape: x.shape().to_vec(),
                dtype: dt,
            }],
            grid: (threads as i32, 1, 1),
            block: (256, 1, 1),
            template: vec![
                ("T", TemplateArg::Dtype(dt)),
                ("W", TemplateArg::Int(w)),
                ("MB", TemplateArg::Int(s.mb)),
            ],
        },
    )?;
    Ok(Some(out))
}

/// Elements per thread for an element-wise kernel over `n` elements (rows of `n`): a
/// 16-byte vector when it divides `n`, else 1.
fn vec_width(n: i64, dt: Dtype) -> i32 {
    let w = 16 / elem_bytes(dt);
    if n % i64::from(w) == 0 { w } else { 1 }
}

/// Fused gelu_tanh on `path`; `None` when the input is outside its limits.
pub(crate) fn gelu_tanh(path: Path, x: &Array) -> Result<Option<Array>> {
    let dt = crate::ops::check_float(GELU.op, x)?;
    let n = x.size() as i64;
    let w = vec_width(n, dt);
    let threads = n / i64::from(w);
    if threads == 0 || threads > i64::from(i32::MAX) || (path == Path::Metal && n < 8) {
        return Ok(None);
    }
    let out = run(
        path,
        &GELU,
        Launch {
            inputs: vec![x],
            outputs: vec![OutputSpec {
                shape: x.shape().to_vec(),
                dtype: dt,
            }],
            grid: (threads as i32, 1, 1),
            block: (256, 1, 1),
            template: vec![("T", TemplateArg::Dtype(dt)), ("W", TemplateArg::Int(w))],
        },
    )?;
    Ok(Some(out))
}

/// Fused bias_gelu_tanh on `path`; `None` when the inputs are outside its limits.
pub(crate) fn bias_gelu_tanh(path: Path, x: &Array, bias: &Array) -> Result<Option<Array>> {
    let n_last = check_bias(BIAS_GELU.op, x, bias)?;
    let dt = x.dtype();
    let n = x.size() as i64;
    let w = vec_width(i64::from(n_last), dt);
    let threads = n / i64::from(w);
    if threads == 0
        || threads > i64::from(i32::MAX)
        || (path == Path::Metal && (n < 8 || n_last < 8))
    {
        return Ok(None);
    }
    let bias = cast(bias, dt)?;
    let out = run(
        path,
        &BIAS_GELU,
        Launch {
            inputs: vec![x, &bias],
            outputs: vec![OutputSpec {
                shape: x.shape().to_vec(),
                dtype: dt,
            }],
            grid: (threads as i32, 1, 1),
            block: (256, 1, 1),
            template: vec![("T", TemplateArg::Dtype(dt)), ("W", TemplateArg::Int(w))],
        },
    )?;
    Ok(Some(out))
}

/// Fused joint_qkv_heads on `path`: `[q, k, v]` stacked as (3, B, H, S, D); `None` when the
/// inputs are outside its limits (D not a multiple of 64 or above 512, too many threads).
pub(crate) fn joint_qkv_heads(path: Path, j: &JointQkv<'_>) -> Result<Option<Array>> {
    let dt = j.first.dtype();
    let (b, la, lb) = (j.first.dim(0), j.first.dim(1), j.second.dim(1));
    let (h, d) = (j.heads, j.first.dim(2) / (3 * j.heads));
    let threads = i64::from(b) * i64::from(la + lb) * i64::from(h) * 32;
    if d % 64 != 0 || d > 512 || threads == 0 || threads > i64::from(i32::MAX) {
        return Ok(None);
    }
    let w: Vec<Array> = j.norms.iter().map(|w| cast(w, dt)).collect::<Result<_>>()?;
    let tdt = j.cos.dtype();
    let tshape = [la + lb, d / 2];
    let tcos = ops::reshape(j.cos, &tshape)?;
    let tsin = ops::reshape(cast(j.sin, tdt)?, &tshape)?;
    let out = run(
        path,
        &JOINT_QKV,
        Launch {
            inputs: vec![j.first, j.second, &w[0], &w[1], &w[2], &w[3], &tcos, &tsin],
            outputs: vec![OutputSpec {
                shape: vec![3, b, h, la + lb, d],
                dtype: dt,
            }],
            grid: (threads as i32, 1, 1),
            block: (256, 1, 1),
            template: vec![
                ("T", TemplateArg::Dtype(dt)),
                ("TC", TemplateArg::Dtype(tdt)),
                ("H", TemplateArg::Int(h)),
                ("D", TemplateArg::Int(d)),
                ("EPS_BITS", TemplateArg::Int(j.eps.to_bits() as i32)),
            ],
        },
    )?;
    Ok(Some(out))
}

/// Most rows of x the linear kernel takes (its accumulators are per row).
pub(crate) const LINEAR_MAX_ROWS: i32 = 8;

/// Fused linear (`x · wᵀ + bias`) on `path` for at most [`LINEAR_MAX_ROWS`] rows of x;
/// `None` for more rows or other limits (then a GEMM is the right tool).
pub(crate) fn linear(path: Path, x: &Array, w: &Array, bias: &Array) -> Result<Option<Array>> {
    let (rows, k, n) = crate::reference::check_linear(x, w, bias)?;
    let dt = x.dtype();
    let threads = i64::from(n) * 32;
    if rows == 0
        || rows > LINEAR_MAX_ROWS
        || k == 0
        || threads > i64::from(i32::MAX)
        || w.dtype() != dt
    {
        return Ok(None);
    }
    let bias = cast(bias, dt)?;
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    let out = run(
        path,
        &LINEAR_ROWS,
        Launch {
            inputs: vec![x, w, &bias],
            outputs: vec![OutputSpec { shape, dtype: dt }],
            grid: (threads as i32, 1, 1),
            block: (256, 1, 1),
            template: vec![
                ("T", TemplateArg::Dtype(dt)),
                ("M", TemplateArg::Int(rows)),
                ("K", TemplateArg::Int(k)),
                ("V", TemplateArg::Int(16 / elem_bytes(dt))),
            ],
        },
    )?;
    Ok(Some(out))
}

/// Fused affine dequantization on `path`: each thread expands 16 bytes of packed weights.
/// `None` outside the kernel's limits: bits other than 2, 4 or 8, a group that does not hold
/// a whole number of threads' values (`group_size % (128 / bits)`), too many threads.
pub(crate) fn dequantize(
    path: Path,
    w: &Array,
    scales: &Array,
    biases: &Array,
    group_size: i32,
    bits: i32,
) -> Result<Option<Array>> {
    let cols = crate::reference::check_dequantize(w, scales, biases, group_size, bits)?;
    let dt = scales.dtype();
    let threads = w.size() as i64 / 4;
    if !matches!(bits, 2 | 4 | 8)
        || group_size % (128 / bits) != 0
        || threads == 0
        || threads > i64::from(i32::MAX)
    {
        return Ok(None);
    }
    let mut shape = w.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = cols;
    }
    let out = run(
        path,
        &DEQUANTIZE,
        Launch {
            inputs: vec![w, scales, biases],
            outputs: vec![OutputSpec { shape, dtype: dt }],
            grid: (threads as i32, 1, 1),
            block: (256, 1, 1),
            template: vec![
                ("T", TemplateArg::Dtype(dt)),
                ("BITS", TemplateArg::Int(bits)),
                ("GROUP", TemplateArg::Int(group_size)),
            ],
        },
    )?;
    Ok(Some(out))
}
