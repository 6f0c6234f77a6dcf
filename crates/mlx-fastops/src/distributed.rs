//! MLX's distributed runtime (`mlx_distributed_*` of mlx-c, not wrapped by mlx-rs): a group of
//! processes and the collectives a data-parallel program needs.
//!
//! Backends are MLX's own: `ring` (TCP sockets, any device, any number of hosts), `nccl`
//! (CUDA GPUs), `mpi`, `jaccl` (RDMA over Thunderbolt between Macs). Each reads its set-up
//! from the environment as MLX's launcher `mlx.launch` writes it (`MLX_RANK`, and
//! `MLX_HOSTFILE` for ring; `NCCL_HOST_IP`, `NCCL_PORT`, `MLX_WORLD_SIZE` for nccl).
//!
//! Collectives are lazy ops like any other: they run when their result is evaluated. Ring,
//! MPI and JACCL run on the CPU stream (they have no GPU implementation); NCCL on the GPU's.

use std::ffi::CString;

use mlx_rs::Array;

use crate::error::{FastOpsError, Result};

/// An MLX distributed backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommBackend {
    /// Whichever MLX finds set up first (nccl with CUDA, then ring, mpi, jaccl).
    Any,
    /// TCP sockets between neighbours of a ring.
    Ring,
    /// NVIDIA's NCCL.
    Nccl,
    /// An MPI library found at run time.
    Mpi,
    /// RDMA over Thunderbolt (macOS).
    Jaccl,
}

impl CommBackend {
    /// MLX's name of the backend.
    pub fn name(self) -> &'static str {
        match self {
            CommBackend::Any => "any",
            CommBackend::Ring => "ring",
            CommBackend::Nccl => "nccl",
            CommBackend::Mpi => "mpi",
            CommBackend::Jaccl => "jaccl",
        }
    }

    /// Whether MLX was built with this backend.
    pub fn is_available(self) -> bool {
        let name = CString::new(self.name()).unwrap_or_default();
        // SAFETY: a NUL-terminated string alive for the call.
        unsafe { mlx_sys::mlx_distributed_is_available(name.as_ptr()) }
    }

    /// Whether collectives run on the GPU stream (NCCL) rather than the CPU's.
    fn on_gpu(self) -> bool {
        self == CommBackend::Nccl
    }
}

fn failed(what: &str, backend: CommBackend) -> FastOpsError {
    FastOpsError::Kernel {
        op: "distributed",
        msg: format!("{what} failed (backend {})", backend.name()),
    }
}

/// A group of processes (one MLX distributed group); freed when dropped.
pub struct Group {
    raw: mlx_sys::mlx_distributed_group,
    backend: CommBackend,
    rank: usize,
    size: usize,
}

// SAFETY: the group is a handle to a reference-counted C++ object that MLX itself uses from
// its scheduler threads; this wrapper hands out no interior references, and every call takes
// `&self` without mutating the handle.
unsafe impl Send for Group {}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("backend", &self.backend)
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

impl Group {
    /// Initialises MLX distributed with `backend`. With `strict`, failing to set the backend
    /// up is an error; without, a single-process group (rank 0 of 1) comes back instead.
    ///
    /// Connecting can block: ring ranks wait for their neighbours with no time limit (guard
    /// the call with a timeout of your own).
    pub fn init(backend: CommBackend, strict: bool) -> Result<Self> {
        let name = CString::new(backend.name()).map_err(|_| failed("init", backend))?;
        // SAFETY: `raw` is an out-parameter created here; on success it owns a group that
        // `Drop` frees; on failure the empty handle is freed right away.
        unsafe {
            let mut raw = mlx_sys::mlx_distributed_group_new();
            if mlx_sys::mlx_distributed_init(&mut raw, strict, name.as_ptr()) != 0
                || raw.ctx.is_null()
            {
                mlx_sys::mlx_distributed_group_free(raw);
                return Err(failed("init", backend));
            }
            let rank = mlx_sys::mlx_distributed_group_rank(raw).max(0) as usize;
            let size = mlx_sys::mlx_distributed_group_size(raw).max(1) as usize;
            Ok(Self {
                raw,
                backend,
                rank,
                size,
            })
        }
    }

    /// This process's rank, 0-based.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the group.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The backend the group was set up with.
    pub fn backend(&self) -> CommBackend {
        self.backend
    }

    fn collective(
        &self,
        what: &str,
        x: &Array,
        f: unsafe extern "C" fn(
            *mut mlx_sys::mlx_array,
            mlx_sys::mlx_array,
            mlx_sys::mlx_distributed_group,
            mlx_sys::mlx_stream,
        ) -> i32,
    ) -> Result<Array> {
        // SAFETY: the stream and result handles are created here and owned (freed) before
        // return; the input array and the group are live for the call.
        unsafe {
            let stream = if self.backend.on_gpu() {
                mlx_sys::mlx_default_gpu_stream_new()
            } else {
                mlx_sys::mlx_default_cpu_stream_new()
            };
            let mut res = mlx_sys::mlx_array_new();
            let st = f(&mut res, x.as_ptr(), self.raw, stream);
            mlx_sys::mlx_stream_free(stream);
            let out = Array::from_ptr(res);
            if st != 0 {
                return Err(failed(what, self.backend));
            }
            Ok(out)
        }
    }

    /// Every rank's `x` concatenated along axis 0, in rank order (lazy).
    pub fn all_gather(&self, x: &Array) -> Result<Array> {
        self.collective("all_gather", x, mlx_sys::mlx_distributed_all_gather)
    }

    /// The element-wise sum of every rank's `x` (lazy).
    pub fn all_sum(&self, x: &Array) -> Result<Array> {
        self.collective("all_sum", x, mlx_sys::mlx_distributed_all_sum)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `mlx_distributed_init` and is freed once.
        unsafe {
            mlx_sys::mlx_distributed_group_free(self.raw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without any launcher environment a non-strict init is a group of one, whose
    /// collectives return their input.
    #[test]
    fn a_group_of_one() -> Result<()> {
        if std::env::var_os("MLX_RANK").is_some() {
            return Ok(()); // launched by mlx.launch: not a single process
        }
        assert!(CommBackend::Ring.is_available());
        let g = Group::init(CommBackend::Any, false)?;
        assert_eq!((g.rank(), g.size()), (0, 1));
        let x = Array::from_slice(&[1.0f32, 2.0], &[1, 2]);
        let y = g.all_gather(&x)?;
        y.eval()?;
        assert_eq!(y.shape(), &[1, 2]);
        assert_eq!(y.as_slice::<f32>(), &[1.0, 2.0]);
        Ok(())
    }
}
