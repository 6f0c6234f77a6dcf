//! Which implementation of a fused op runs: backend detection and the reference switch.
//!
//! The fused ops ([`crate::layer_norm_modulate`], [`crate::apply_rope`],
//! [`crate::gated_residual`], [`crate::gelu_tanh`], [`crate::bias_gelu_tanh`]) look at the stream MLX would use for the next op (the
//! thread-local stream set by `mlx_rs::with_stream`/`with_device`, else the default device's
//! stream):
//! - CPU device → the reference built from plain MLX ops;
//! - GPU device on the CUDA backend → the CUDA kernel;
//! - GPU device on macOS (Metal backend) → the Metal kernel;
//! - [`set_force_reference`]`(true)` or the environment variable `MLX_FASTOPS_REFERENCE=1`
//!   → the reference everywhere.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use mlx_rs::Stream;

/// The MLX backend that runs work on the current stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The CPU device.
    Cpu,
    /// A GPU device of MLX's CUDA backend.
    Cuda,
    /// A GPU device of MLX's Metal backend (macOS).
    Metal,
    /// A GPU device of a backend this crate has no kernels for.
    OtherGpu,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
            Backend::OtherGpu => "gpu (no fastops kernels)",
        })
    }
}

/// Which implementation a fused op uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Plain MLX ops (`crate::reference`).
    Reference,
    /// The custom CUDA kernel.
    Cuda,
    /// The custom Metal kernel.
    Metal,
}

static FORCE_REFERENCE: AtomicBool = AtomicBool::new(false);
static ENV_REFERENCE: OnceLock<bool> = OnceLock::new();

/// Forces (or stops forcing) the reference implementation of every fused op, process-wide.
///
/// The environment variable `MLX_FASTOPS_REFERENCE=1` (read once) forces it too; this
/// switch cannot override the variable.
pub fn set_force_reference(force: bool) {
    FORCE_REFERENCE.store(force, Ordering::SeqCst);
}

/// Whether the reference is forced, by [`set_force_reference`] or `MLX_FASTOPS_REFERENCE`.
pub fn reference_forced() -> bool {
    FORCE_REFERENCE.load(Ordering::SeqCst)
        || *ENV_REFERENCE.get_or_init(|| {
            std::env::var("MLX_FASTOPS_REFERENCE")
                .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
                .unwrap_or(false)
        })
}

/// Whether MLX was built with the CUDA backend and sees a CUDA device.
pub fn cuda_available() -> bool {
    let mut res = false;
    // SAFETY: `res` is a valid out-pointer for the duration of the call.
    let status = unsafe { mlx_sys::mlx_cuda_is_available(&mut res) };
    status == 0 && res
}

/// Whether MLX was built with the Metal backend and sees a Metal device.
pub fn metal_available() -> bool {
    let mut res = false;
    // SAFETY: `res` is a valid out-pointer for the duration of the call.
    let status = unsafe { mlx_sys::mlx_metal_is_available(&mut res) };
    status == 0 && res
}

/// Whether `stream` runs on a GPU device.
fn stream_is_gpu(stream: &Stream) -> bool {
    // SAFETY: the device handle is created, filled by MLX and freed here; `stream` is alive.
    unsafe {
        let mut dev = mlx_sys::mlx_device_new();
        let mut ty: mlx_sys::mlx_device_type = mlx_sys::mlx_device_type__MLX_CPU;
        let ok = mlx_sys::mlx_stream_get_device(&mut dev, stream.as_ptr()) == 0
            && mlx_sys::mlx_device_get_type(&mut ty, dev) == 0;
        mlx_sys::mlx_device_free(dev);
        ok && ty == mlx_sys::mlx_device_type__MLX_GPU
    }
}

/// The backend of the stream the next MLX op would run on.
pub fn current_backend() -> Backend {
    let stream = Stream::thread_local_or_default();
    if !stream_is_gpu(&stream) {
        Backend::Cpu
    } else if cfg!(target_os = "macos") && metal_available() {
        Backend::Metal
    } else if cuda_available() {
        Backend::Cuda
    } else {
        Backend::OtherGpu
    }
}

/// The implementation a fused op would use now (before per-op shape/dtype limits).
pub fn fused_path() -> Path {
    if reference_forced() {
        return Path::Reference;
    }
    match current_backend() {
        Backend::Cuda => Path::Cuda,
        Backend::Metal => Path::Metal,
        Backend::Cpu | Backend::OtherGpu => Path::Reference,
    }
}
