//! Small owners of mlx-c objects shared by the raw-FFI parts of this crate.

use mlx_rs::Array;

use crate::error::{FastOpsError, Result};

/// `Err` naming `op` and `what` unless the mlx-c status is 0.
pub(crate) fn status(op: &'static str, st: i32, what: &str) -> Result<()> {
    if st == 0 {
        Ok(())
    } else {
        Err(FastOpsError::Kernel {
            op,
            msg: format!("{what} failed with status {st}"),
        })
    }
}

/// An owned `mlx_vector_array`, freed when dropped.
pub(crate) struct ArrayVec(pub(crate) mlx_sys::mlx_vector_array);

impl ArrayVec {
    /// An empty vector (an out-parameter).
    pub(crate) fn new() -> Self {
        // SAFETY: creates a fresh, owned vector.
        Self(unsafe { mlx_sys::mlx_vector_array_new() })
    }

    /// A vector holding (new references to) `arrays`.
    pub(crate) fn from(arrays: &[&Array]) -> Self {
        let raw: Vec<mlx_sys::mlx_array> = arrays.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: `raw` holds live handles for the duration of the call; mlx-c takes its own
        // references.
        Self(unsafe { mlx_sys::mlx_vector_array_new_data(raw.as_ptr(), raw.len()) })
    }

    /// The arrays it holds, each owned by an `Array` before its status is looked at.
    pub(crate) fn to_arrays(&self, op: &'static str) -> Result<Vec<Array>> {
        // SAFETY: the vector is live; each handle read out is owned by an `Array` at once.
        unsafe {
            let n = mlx_sys::mlx_vector_array_size(self.0);
            let mut result = Vec::with_capacity(n);
            for i in 0..n {
                let mut a = mlx_sys::mlx_array_new();
                let st = mlx_sys::mlx_vector_array_get(&mut a, self.0, i);
                let arr = Array::from_ptr(a);
                status(op, st, "reading an output")?;
                result.push(arr);
            }
            Ok(result)
        }
    }
}

impl Drop for ArrayVec {
    fn drop(&mut self) {
        // SAFETY: created by mlx-c and freed once.
        unsafe { mlx_sys::mlx_vector_array_free(self.0) };
    }
}
