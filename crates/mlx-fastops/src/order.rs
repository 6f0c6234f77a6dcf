//! Ordering work inside one evaluation: [`depends`] (MLX's `depends`, not wrapped by mlx-rs).

use mlx_rs::Array;

use crate::error::{FastOpsError, Result};

/// An owned `mlx_vector_array`.
struct ArrayVec(mlx_sys::mlx_vector_array);

impl ArrayVec {
    fn from(arrays: &[Array]) -> Self {
        let raw: Vec<mlx_sys::mlx_array> = arrays.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: `raw` holds live handles for the duration of the call; mlx-c copies them
        // (taking its own references).
        Self(unsafe { mlx_sys::mlx_vector_array_new_data(raw.as_ptr(), raw.len()) })
    }
}

impl Drop for ArrayVec {
    fn drop(&mut self) {
        // SAFETY: created by mlx-c and freed once.
        unsafe { mlx_sys::mlx_vector_array_free(self.0) };
    }
}

fn check(st: i32, what: &str) -> Result<()> {
    if st == 0 {
        Ok(())
    } else {
        Err(FastOpsError::Kernel {
            op: "depends",
            msg: format!("{what} failed with status {st}"),
        })
    }
}

/// `inputs`, unchanged in value, but computed only after every array of `dependencies`: a
/// graph built on the returned arrays cannot start before the dependencies are done. This
/// orders work inside one evaluation, e.g. the second of two independent transformer passes
/// after the first, so that the first one's activations are freed before the second one's
/// are made (lower peak memory, same single evaluation).
pub fn depends(inputs: &[Array], dependencies: &[Array]) -> Result<Vec<Array>> {
    let ins = ArrayVec::from(inputs);
    let deps = ArrayVec::from(dependencies);
    // SAFETY: the vectors are live; the result vector is created here and freed by its guard;
    // each output handle is owned by an `Array` before its status is looked at.
    unsafe {
        let mut outs = ArrayVec(mlx_sys::mlx_vector_array_new());
        check(
            mlx_sys::mlx_depends(&mut outs.0, ins.0, deps.0),
            "mlx_depends",
        )?;
        let n = mlx_sys::mlx_vector_array_size(outs.0);
        let mut result = Vec::with_capacity(n);
        for i in 0..n {
            let mut a = mlx_sys::mlx_array_new();
            let st = mlx_sys::mlx_vector_array_get(&mut a, outs.0, i);
            let arr = Array::from_ptr(a);
            check(st, "reading an output")?;
            result.push(arr);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::ops;

    #[test]
    fn values_unchanged_and_the_dependency_is_computed() -> Result<()> {
        let x = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]);
        let d = ops::multiply(&x, &x)?;
        let out = depends(std::slice::from_ref(&x), std::slice::from_ref(&d))?;
        assert_eq!(out.len(), 1);
        let y = ops::add(&out[0], Array::from_f32(1.0))?;
        y.eval()?;
        assert_eq!(y.as_slice::<f32>(), &[2.0, 3.0, 4.0]);
        Ok(())
    }
}
