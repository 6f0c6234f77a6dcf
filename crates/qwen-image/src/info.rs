//! What MLX runtime this program runs on (`qwen-image info`): version, backend, default
//! device and its memory. The backend is the one `mlx-fastops` dispatches its kernels on.

use std::ffi::{CStr, CString};
use std::fmt;

pub use mlx_fastops::Backend;

use crate::ComputeDtype;
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
    /// Where MLX caches the GPU kernels it compiles at run time
    /// ([`crate::kernel_cache::CACHE_ENV`]), when set.
    pub kernel_cache: Option<std::path::PathBuf>,
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

/// The loaded MLX library's version (a constant of the library: asking initialises nothing).
pub fn mlx_version() -> Result<String> {
    // SAFETY: the string is created, copied out while alive, and freed here.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let rc = mlx_sys::mlx_version(&mut s);
        let version = CStr::from_ptr(mlx_sys::mlx_string_data(s))
            .to_string_lossy()
            .into_owned();
        mlx_sys::mlx_string_free(s);
        check(rc, "mlx_version")?;
        Ok(version)
    }
}

/// Queries the loaded MLX library.
pub fn runtime_info() -> Result<RuntimeInfo> {
    // SAFETY: plain FFI calls into mlx-c; every object created here is freed before return
    // and strings are copied out while their owners are alive.
    unsafe {
        let mlx_version = mlx_version()?;

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
            kernel_cache: std::env::var_os(crate::kernel_cache::CACHE_ENV)
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from),
        })
    }
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

impl RuntimeInfo {
    /// `DIR on BACKEND (DEVICE), DTYPE`: where a model runs, for messages.
    pub fn describe_model(&self, model_dir: &std::path::Path, dtype: ComputeDtype) -> String {
        format!(
            "{} on {} ({}), {dtype}",
            model_dir.display(),
            self.backend,
            self.default_device
        )
    }

    /// The notice before a run that will compile kernels first
    /// ([`crate::kernel_cache::first_use_notice`]) on this runtime's backend and kernel cache;
    /// `quantized` says whether the transformer runs quantized.
    pub fn first_use_notice(&self, quantized: bool) -> Option<String> {
        let cache = self.kernel_cache.as_deref();
        crate::kernel_cache::first_use_notice(self.backend, quantized, cache)
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
        if let Some(dir) = &self.kernel_cache {
            let n = crate::kernel_cache::cached_kernels(dir);
            writeln!(f, "kernel cache:   {} ({n} files)", dir.display())?;
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
        assert_eq!(info.first_use_notice(false), None);
        let model = info.describe_model(std::path::Path::new("/m"), ComputeDtype::Bf16);
        assert_eq!(
            model,
            format!("/m on {} ({}), bf16", info.backend, info.default_device)
        );
        Ok(())
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
