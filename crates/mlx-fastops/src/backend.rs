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
//!
//! [`fused_path`] runs once per fused-op call, so it is kept cheap: the backend availability
//! and the environment variable are read once per process, and the per-call device check
//! (the default device and the scoped stream can change) reuses a per-thread device handle.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use mlx_rs::thread_local_default_stream;

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

static CUDA_AVAILABLE: OnceLock<bool> = OnceLock::new();
static METAL_AVAILABLE: OnceLock<bool> = OnceLock::new();
static GPU_BACKEND: OnceLock<Backend> = OnceLock::new();

/// Whether MLX was built with the CUDA backend and sees a CUDA device (asked once: it cannot
/// change while the process runs).
pub fn cuda_available() -> bool {
    *CUDA_AVAILABLE.get_or_init(|| {
        let mut res = false;
        // SAFETY: `res` is a valid out-pointer for the duration of the call.
        let status = unsafe { mlx_sys::mlx_cuda_is_available(&mut res) };
        status == 0 && res
    })
}

/// Whether MLX was built with the Metal backend and sees a Metal device (asked once: it
/// cannot change while the process runs).
pub fn metal_available() -> bool {
    *METAL_AVAILABLE.get_or_init(|| {
        let mut res = false;
        // SAFETY: `res` is a valid out-pointer for the duration of the call.
        let status = unsafe { mlx_sys::mlx_metal_is_available(&mut res) };
        status == 0 && res
    })
}

/// The backend of this process's GPU devices (fixed for the process): Metal on macOS with a
/// Metal device, CUDA when MLX's CUDA backend sees a device, otherwise [`Backend::OtherGpu`]
/// (which, with no GPU at all, means GPU work falls back to the CPU). The same answer the
/// fused ops dispatch on; `qwen-image info` reports it too.
pub fn gpu_backend() -> Backend {
    *GPU_BACKEND.get_or_init(|| {
        if cfg!(target_os = "macos") && metal_available() {
            Backend::Metal
        } else if cuda_available() {
            Backend::Cuda
        } else {
            Backend::OtherGpu
        }
    })
}

static CUDA_CC_MAJOR: OnceLock<Option<usize>> = OnceLock::new();

/// The major compute capability of the default CUDA GPU (9 on an H100/H200), from MLX's
/// device info; `None` without CUDA or when MLX does not report it. Asked once.
pub fn cuda_compute_capability_major() -> Option<usize> {
    *CUDA_CC_MAJOR.get_or_init(|| {
        if !cuda_available() {
            return None;
        }
        const KEY: &std::ffi::CStr = c"compute_capability_major";
        // SAFETY: every handle made here is freed here; `v` is a valid out-pointer; the key
        // is a NUL-terminated literal.
        unsafe {
            let dev = mlx_sys::mlx_device_new_type(mlx_sys::mlx_device_type__MLX_GPU, 0);
            let mut info = mlx_sys::mlx_device_info_new();
            let mut v = 0usize;
            let ok = mlx_sys::mlx_device_info_get(&mut info, dev) == 0
                && mlx_sys::mlx_device_info_get_size(&mut v, info, KEY.as_ptr()) == 0;
            mlx_sys::mlx_device_info_free(info);
            mlx_sys::mlx_device_free(dev);
            ok.then_some(v)
        }
    })
}

/// An `mlx_device` handle kept per thread and refilled on each query, so that asking for the
/// current device allocates nothing.
struct DeviceHandle(mlx_sys::mlx_device);

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `mlx_device_new` and is freed once, here.
        unsafe {
            mlx_sys::mlx_device_free(self.0);
        }
    }
}

thread_local! {
    // SAFETY: `mlx_device_new` only builds an empty handle.
    static DEVICE: RefCell<DeviceHandle> =
        RefCell::new(DeviceHandle(unsafe { mlx_sys::mlx_device_new() }));
}

/// Whether the next MLX op runs on a GPU device: the device of the thread-local stream (set
/// by `mlx_rs::with_stream`/`with_device`) when there is one, else MLX's default device (the
/// device of the default stream). Asked on every call, since both can change; without a
/// thread-local stream this is two FFI calls and no allocation.
fn next_op_on_gpu() -> bool {
    let scoped = thread_local_default_stream();
    DEVICE.with_borrow_mut(|dev| {
        // SAFETY: `dev.0` is a live handle owned by this thread, filled in place by MLX;
        // `scoped` (when present) is a live stream for the duration of the call.
        unsafe {
            let filled = match &scoped {
                Some(stream) => mlx_sys::mlx_stream_get_device(&mut dev.0, stream.as_ptr()),
                None => mlx_sys::mlx_get_default_device(&mut dev.0),
            } == 0;
            let mut ty: mlx_sys::mlx_device_type = mlx_sys::mlx_device_type__MLX_CPU;
            filled
                && mlx_sys::mlx_device_get_type(&mut ty, dev.0) == 0
                && ty == mlx_sys::mlx_device_type__MLX_GPU
        }
    })
}

/// The backend of the stream the next MLX op would run on.
pub fn current_backend() -> Backend {
    if next_op_on_gpu() {
        gpu_backend()
    } else {
        Backend::Cpu
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

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::{Device, Stream, with_device, with_stream};

    /// The device type of `stream`, asked the long way (a fresh device handle per call).
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

    #[test]
    fn the_cheap_device_check_follows_the_stream_mlx_would_use() {
        // Without a scoped stream: the default device, i.e. the default stream's device.
        let default_gpu = stream_is_gpu(&Stream::thread_local_or_default());
        assert_eq!(next_op_on_gpu(), default_gpu);
        // A scoped CPU stream wins over a GPU default device, and the check is asked anew
        // on every call (the handle is reused, not stale).
        for _ in 0..3 {
            assert!(!with_stream(&Stream::cpu(), next_op_on_gpu));
            assert_eq!(with_device(Device::cpu(), current_backend), Backend::Cpu);
            assert_eq!(next_op_on_gpu(), default_gpu);
        }
        if default_gpu {
            assert_eq!(current_backend(), gpu_backend());
        } else {
            assert_eq!(current_backend(), Backend::Cpu);
        }
    }
}
