//! A small safe RAII wrapper over MLX's custom CUDA kernels (raw mlx-sys FFI:
//! `mlx_fast_cuda_kernel_new` / `_apply` and the config functions).
//!
//! MLX wraps `source` in a generated `__global__ void custom_kernel_<name><template hash>(…)`
//! with one `const T* <input>` per input (T from the input's dtype), `<input>_shape`,
//! `_strides`, `_ndim` parameters when the source mentions them, one `T* <output>` per
//! output, and each template argument as a `constexpr`/`using` in the body. The grid counts
//! threads, as for Metal. MLX caches the compiled module by kernel name plus template
//! hash — not by input dtypes — so callers must pass every input dtype as a template
//! argument.

use std::ffi::{CString, c_char};

use mlx_rs::{Array, Stream};

use super::{OutputSpec, TemplateArg};

use crate::error::{FastOpsError, Result};
use crate::ffi::{ArrayVec, status};

fn c_string(op: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|e| FastOpsError::Kernel {
        op,
        msg: e.to_string(),
    })
}

/// An owned `mlx_vector_string`.
struct StringVec(mlx_sys::mlx_vector_string);

impl StringVec {
    fn new(op: &'static str, names: &[&str]) -> Result<Self> {
        let owned = names
            .iter()
            .map(|n| c_string(op, n))
            .collect::<Result<Vec<_>>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: `ptrs` points at NUL-terminated strings alive for the call; mlx-c copies them.
        let raw = unsafe { mlx_sys::mlx_vector_string_new_data(ptrs.as_mut_ptr(), ptrs.len()) };
        if raw.ctx.is_null() {
            return Err(FastOpsError::Kernel {
                op,
                msg: "creating a string vector failed".into(),
            });
        }
        Ok(Self(raw))
    }
}

impl Drop for StringVec {
    fn drop(&mut self) {
        // SAFETY: created by mlx_vector_string_new_data and freed once.
        unsafe { mlx_sys::mlx_vector_string_free(self.0) };
    }
}

/// An owned `mlx_fast_cuda_kernel_config`.
struct Config(mlx_sys::mlx_fast_cuda_kernel_config);

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: created by mlx_fast_cuda_kernel_config_new and freed once.
        unsafe { mlx_sys::mlx_fast_cuda_kernel_config_free(self.0) };
    }
}

/// A custom CUDA kernel (compiled by MLX through NVRTC on first evaluation, then cached).
pub(crate) struct CudaKernel {
    raw: mlx_sys::mlx_fast_cuda_kernel,
    op: &'static str,
}

impl Drop for CudaKernel {
    fn drop(&mut self) {
        // SAFETY: created by mlx_fast_cuda_kernel_new and freed once.
        unsafe { mlx_sys::mlx_fast_cuda_kernel_free(self.raw) };
    }
}

impl CudaKernel {
    /// Declares a kernel; nothing is compiled until an output is evaluated.
    pub fn new(
        op: &'static str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        source: &str,
        header: &str,
        ensure_row_contiguous: bool,
    ) -> Result<Self> {
        let name = c_string(op, name)?;
        let source = c_string(op, source)?;
        let header = c_string(op, header)?;
        let inputs = StringVec::new(op, inputs)?;
        let outputs = StringVec::new(op, outputs)?;
        // SAFETY: all pointers are valid NUL-terminated strings / live vectors; mlx-c copies.
        let raw = unsafe {
            mlx_sys::mlx_fast_cuda_kernel_new(
                name.as_ptr(),
                inputs.0,
                outputs.0,
                source.as_ptr(),
                header.as_ptr(),
                ensure_row_contiguous,
                0,
            )
        };
        if raw.ctx.is_null() {
            return Err(FastOpsError::Kernel {
                op,
                msg: "mlx_fast_cuda_kernel_new failed".into(),
            });
        }
        Ok(Self { raw, op })
    }

    /// Runs the kernel lazily on `stream` over `grid` threads in blocks of `block`.
    ///
    /// # Safety
    /// For these inputs, outputs, template arguments and launch shape the kernel must only
    /// access memory inside its buffers, never write an input, and write every output
    /// element (no init value is set).
    pub unsafe fn apply(
        &self,
        inputs: &[&Array],
        outputs: &[OutputSpec],
        grid: (i32, i32, i32),
        block: (i32, i32, i32),
        template: &[(&str, TemplateArg)],
        stream: &Stream,
    ) -> Result<Vec<Array>> {
        let op = self.op;
        // SAFETY (whole block): every handle passed to mlx-c is alive; the config, vectors
        // and arrays created here are owned by RAII guards and freed exactly once.
        unsafe {
            let config = Config(mlx_sys::mlx_fast_cuda_kernel_config_new());
            if config.0.ctx.is_null() {
                return Err(FastOpsError::Kernel {
                    op,
                    msg: "creating a kernel config failed".into(),
                });
            }
            for o in outputs {
                let st = mlx_sys::mlx_fast_cuda_kernel_config_add_output_arg(
                    config.0,
                    o.shape.as_ptr(),
                    o.shape.len(),
                    o.dtype.into(),
                );
                status(op, st, "adding an output")?;
            }
            let st =
                mlx_sys::mlx_fast_cuda_kernel_config_set_grid(config.0, grid.0, grid.1, grid.2);
            status(op, st, "setting the grid")?;
            let st = mlx_sys::mlx_fast_cuda_kernel_config_set_thread_group(
                config.0, block.0, block.1, block.2,
            );
            status(op, st, "setting the thread group")?;
            for (name, arg) in template {
                let cname = c_string(op, name)?;
                let st = match *arg {
                    TemplateArg::Dtype(d) => {
                        mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_dtype(
                            config.0,
                            cname.as_ptr(),
                            d.into(),
                        )
                    }
                    TemplateArg::Int(v) => {
                        mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_int(
                            config.0,
                            cname.as_ptr(),
                            v,
                        )
                    }
                };
                status(op, st, "adding a template argument")?;
            }
            let st = mlx_sys::mlx_fast_cuda_kernel_config_set_verbose(
                config.0,
                std::env::var_os("MLX_FASTOPS_VERBOSE").is_some(),
            );
            status(op, st, "setting verbosity")?;

            let ins = ArrayVec::from(inputs);
            let mut outs = ArrayVec::new();
            let st = mlx_sys::mlx_fast_cuda_kernel_apply(
                &mut outs.0,
                self.raw,
                ins.0,
                config.0,
                stream.as_ptr(),
            );
            status(op, st, "mlx_fast_cuda_kernel_apply")?;
            outs.to_arrays(op)
        }
    }
}
