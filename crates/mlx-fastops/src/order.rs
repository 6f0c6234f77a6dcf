//! Ordering work inside one evaluation: [`depends`] (MLX's `depends`, not wrapped by mlx-rs).

use mlx_rs::Array;

use crate::error::Result;
use crate::ffi::{ArrayVec, status};

/// `inputs`, unchanged in value, but computed only after every array of `dependencies`: a
/// graph built on the returned arrays cannot start before the dependencies are done. This
/// orders work inside one evaluation, e.g. the second of two independent transformer passes
/// after the first, so that the first one's activations are freed before the second one's
/// are made (lower peak memory, same single evaluation).
pub fn depends(inputs: &[Array], dependencies: &[Array]) -> Result<Vec<Array>> {
    let ins = ArrayVec::from(&inputs.iter().collect::<Vec<_>>());
    let deps = ArrayVec::from(&dependencies.iter().collect::<Vec<_>>());
    let mut outs = ArrayVec::new();
    // SAFETY: the vectors are live and owned by their guards.
    let st = unsafe { mlx_sys::mlx_depends(&mut outs.0, ins.0, deps.0) };
    status("depends", st, "mlx_depends")?;
    outs.to_arrays("depends")
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
