//! What MLX runtime this program runs on (`qwen-image info`): version, backend, default
//! device and its memory. The backend is the one `mlx-fastops` dispatches its kernels on.

use std::ffi::{CStr, CString};
use std::fmt;

pub use mlx_fastops::Backend;

use crate::error::{PipelineError, Result};

/// A description of the MLX runtime and its default device.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// MLX's version string as the loaded `libmlx` reports it.
    pub mlx_version: String,
    /// The backend GPU work runs on ([`mlx_fastops::gpu_backend`]); [`Backend::Cpu`] when
    /// the default device is the CPU.
    pub backend: Backend,
    /// The default device, e.g. `Device(gpu, 0)`.
    pub default_device: String,
    /// Whether the default device is a GPU.
    pub default_is_gpu: bool,
    /// Properties MLX reports for the default device (name, architecture, memory…).
    pub device_properties: Vec<(String, String)>,
    /// MLX's memory limit for the default device, in bytes.
    pub memory_limit: Option<usize>,
}

fn check(rc: i32, what: &str) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PipelineError::Runtime(format!(
            "MLX call {what} failed (status {rc})"
        )))
    }
}

/// Queries the loaded MLX library.
pub fn runtime_info() -> Result<RuntimeInfo> {
    // SAFETY: plain FFI calls into mlx-c; every object created here is freed before return
    // and strings are copied out while their owners are alive.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        check(mlx_sys::mlx_version(&mut s), "mlx_version")?;
        let mlx_version = CStr::from_ptr(mlx_sys::mlx_string_data(s))
            .to_string_lossy()
            .into_owned();
        mlx_sys::mlx_string_free(s);

        let mut dev = mlx_sys::mlx_device_new();
        check(
            mlx_sys::mlx_get_default_device(&mut dev),
            "mlx_get_default_device",
        )?;
        let mut s = mlx_sys::mlx_string_new();
        check(
            mlx_sys::mlx_device_tostring(&mut s, dev),
            "mlx_device_tostring",
        )?;
        let default_device = CStr::from_ptr(mlx_sys::mlx_string_data(s))
            .to_string_lossy()
            .into_owned();
        mlx_sys::mlx_string_free(s);
        let mut ty = mlx_sys::mlx_device_type__MLX_CPU;
        check(
            mlx_sys::mlx_device_get_type(&mut ty, dev),
            "mlx_device_get_type",
        )?;
        let default_is_gpu = ty == mlx_sys::mlx_device_type__MLX_GPU;
        let backend = if default_is_gpu {
            mlx_fastops::gpu_backend()
        } else {
            Backend::Cpu
        };

        let mut device_properties = Vec::new();
        let mut info = mlx_sys::mlx_device_info_new();
        if mlx_sys::mlx_device_info_get(&mut info, dev) == 0 {
            let mut keys = mlx_sys::mlx_vector_string_new();
            if mlx_sys::mlx_device_info_get_keys(&mut keys, info) == 0 {
                for i in 0..mlx_sys::mlx_vector_string_size(keys) {
                    let mut k: *mut std::ffi::c_char = std::ptr::null_mut();
                    if mlx_sys::mlx_vector_string_get(&mut k, keys, i) != 0 || k.is_null() {
                        continue;
                    }
                    let key = CStr::from_ptr(k).to_string_lossy().into_owned();
                    let Ok(ckey) = CString::new(key.clone()) else {
                        continue;
                    };
                    let mut is_string = false;
                    mlx_sys::mlx_device_info_is_string(&mut is_string, info, ckey.as_ptr());
                    let value = if is_string {
                        let mut v: *const std::ffi::c_char = std::ptr::null();
                        if mlx_sys::mlx_device_info_get_string(&mut v, info, ckey.as_ptr()) != 0
                            || v.is_null()
                        {
                            continue;
                        }
                        CStr::from_ptr(v).to_string_lossy().into_owned()
                    } else {
                        let mut v = 0usize;
                        if mlx_sys::mlx_device_info_get_size(&mut v, info, ckey.as_ptr()) != 0 {
                            continue;
                        }
                        if key.contains("memory") || key.contains("size") {
                            format!("{v} ({})", human_bytes(v))
                        } else {
                            v.to_string()
                        }
                    };
                    device_properties.push((key, value));
                }
            }
            mlx_sys::mlx_vector_string_free(keys);
        }
        mlx_sys::mlx_device_info_free(info);
        mlx_sys::mlx_device_free(dev);
        device_properties.sort();

        Ok(RuntimeInfo {
            mlx_version,
            backend,
            default_device,
            default_is_gpu,
            device_properties,
            memory_limit: mlx_rs::memory::memory_limit().ok(),
        })
    }
}

/// A one-line notice for quantized runs on CUDA, where MLX compiles its quantized-matmul
/// kernels (JIT) the first time each shape is used: the first steps can take minutes.
pub fn quantize_notice(backend: Backend, quantized: bool) -> Option<&'static str> {
    (quantized && backend == Backend::Cuda).then_some(
        "note: on CUDA, MLX compiles its quantized kernels at first use; the first denoising \
         steps can take minutes (later runs reuse the compiled kernels)",
    )
}

/// Formats a byte count with binary units (e.g. `79.2 GiB`).
pub fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for RuntimeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "qwen-image {}", env!("CARGO_PKG_VERSION"))?;
        writeln!(f, "MLX version:    {}", self.mlx_version)?;
        writeln!(f, "backend:        {}", self.backend)?;
        writeln!(f, "default device: {}", self.default_device)?;
        for (k, v) in &self.device_properties {
            writeln!(f, "  {k}: {v}")?;
        }
        if let Some(limit) = self.memory_limit {
            writeln!(f, "memory limit:   {} ({limit} bytes)", human_bytes(limit))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_linked_mlx() -> anyhow::Result<()> {
        let info = runtime_info()?;
        // setup.sh pins MLX 0.32.2; the runtime must be the library we built against.
        if let Some(expected) = option_env!("QWEN_IMAGE_MLX_VERSION") {
            assert_eq!(info.mlx_version, expected);
        }
        assert!(!info.default_device.is_empty());
        if info.backend == Backend::Cpu {
            assert!(
                !info.default_is_gpu,
                "CPU backend with a GPU default device"
            );
        }
        let text = info.to_string();
        assert!(text.contains("backend:"));
        Ok(())
    }

    #[test]
    fn quantize_notice_only_for_quantized_cuda_runs() {
        assert!(quantize_notice(Backend::Cuda, true).is_some_and(|n| n.contains("first use")));
        assert_eq!(quantize_notice(Backend::Cuda, false), None);
        assert_eq!(quantize_notice(Backend::Metal, true), None);
        assert_eq!(quantize_notice(Backend::Cpu, true), None);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
