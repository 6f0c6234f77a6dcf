//! Kernels that fall back instead of failing.
//!
//! The first time a fused kernel runs in a process (per backend and dtype), its result on
//! that call's inputs is compared with the plain-MLX reference, evaluated right there. A
//! kernel that fails to build, fails to run or disagrees beyond its tolerance is reported
//! once (a warning naming the kernel and the error, on stderr and in [`fallback_warnings`])
//! and the reference is used for the rest of the process; the caller gets the reference's
//! result either way, so it is right. A kernel that passes costs nothing afterwards.
//!
//! The check runs on the call's own inputs so that it compiles nothing the call would not
//! compile anyway (the kernels are specialised on the row width, dtype and layout); its cost
//! is one evaluation of the reference and a comparison, once per kernel per process.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

use mlx_rs::{Array, Dtype, ops};

use crate::backend::Path;
use crate::error::Result;

/// Relative L2 error allowed between a fused kernel and its reference, by dtype. The
/// kernels compute in f32 and round once while the reference rounds every intermediate in
/// the input's dtype, so half-precision results differ by a few ulps; these bounds reject
/// build failures, garbage, NaN and gross mistakes, not subtle ones (the GPU tests of this
/// crate hold the kernels to tight tolerances against f32 host references).
fn tolerance(dt: Dtype) -> f64 {
    match dt {
        Dtype::Float32 => 1e-4,
        _ => 3e-2,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Good,
    Bad,
}

#[derive(Default)]
struct Registry {
    states: HashMap<(&'static str, u8, u32), State>,
    warnings: Vec<String>,
    /// Ops whose kernel is switched off ([`set_kernel_disabled`]).
    disabled: Vec<String>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);
    // The registry stays consistent whatever a panicking thread was doing: take it as is.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(op: &'static str, path: Path, dt: Dtype) -> (&'static str, u8, u32) {
    (op, path as u8, dt as u32)
}

/// Every fallback warning of this process, in order.
pub fn fallback_warnings() -> Vec<String> {
    registry().warnings.clone()
}

/// Forgets every check result (the next call of each kernel is checked again). For tests and
/// for measuring the check.
#[doc(hidden)]
pub fn reset_checks() {
    registry().states.clear();
}

/// Switches the fused kernel of `op` off (its reference runs instead, without a warning) or
/// back on. For benchmarks that compare a kernel with its reference in one process.
#[doc(hidden)]
pub fn set_kernel_disabled(op: &str, disabled: bool) {
    let mut r = registry();
    r.disabled.retain(|o| o != op);
    if disabled {
        r.disabled.push(op.to_string());
    }
}

fn fall_back(op: &'static str, path: Path, dt: Dtype, why: String) {
    let msg = format!(
        "the fused {op} kernel ({path:?}, {dt:?}) {why}; using the plain-MLX reference for \
         {op} from now on in this process"
    );
    eprintln!("warning: mlx-fastops: {msg}");
    let mut r = registry();
    r.states.insert(key(op, path, dt), State::Bad);
    r.warnings.push(msg);
}

/// Relative L2 distance of `got` from `want` (NaN or inf anywhere gives +inf).
fn rel_l2(got: &Array, want: &Array) -> Result<f64> {
    let g = got.as_dtype(Dtype::Float32)?;
    let w = want.as_dtype(Dtype::Float32)?;
    let d = ops::subtract(&g, &w)?;
    let num = ops::sum(&ops::multiply(&d, &d)?, None)?;
    let den = ops::sum(&ops::multiply(&w, &w)?, None)?;
    mlx_rs::transforms::eval([&num, &den])?;
    let (num, den) = (
        num.item_exact::<f32>() as f64,
        den.item_exact::<f32>() as f64,
    );
    let r = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    Ok(if r.is_finite() { r } else { f64::INFINITY })
}

/// Runs `op` through its fused kernel (`fast`, `None` when the inputs are outside its
/// limits) or its reference, checking the kernel against the reference the first time.
pub(crate) fn checked(
    op: &'static str,
    path: Path,
    dt: Dtype,
    fast: impl FnOnce() -> Result<Option<Array>>,
    reference: impl FnOnce() -> Result<Array>,
) -> Result<Array> {
    let state = {
        let r = registry();
        if r.disabled.iter().any(|o| o == op) {
            drop(r);
            return reference();
        }
        r.states.get(&key(op, path, dt)).copied()
    };
    match state {
        Some(State::Bad) => return reference(),
        Some(State::Good) => {
            return match fast()? {
                Some(out) => Ok(out),
                None => reference(),
            };
        }
        None => {}
    }
    let want = reference()?;
    let got = match fast() {
        Ok(Some(got)) => got,
        // Outside the kernel's limits: nothing learnt about the kernel.
        Ok(None) => return Ok(want),
        Err(e) => {
            fall_back(op, path, dt, format!("could not be set up: {e}"));
            return Ok(want);
        }
    };
    if let Err(e) = mlx_rs::transforms::eval([&got, &want]) {
        fall_back(op, path, dt, format!("failed to build or run: {e}"));
        want.eval()?;
        return Ok(want);
    }
    let err = rel_l2(&got, &want)?;
    if err <= tolerance(dt) {
        registry().states.insert(key(op, path, dt), State::Good);
        Ok(got)
    } else {
        fall_back(
            op,
            path,
            dt,
            format!(
                "disagrees with its reference: relative L2 error {err:.3e} > {:.0e}",
                tolerance(dt)
            ),
        );
        Ok(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FastOpsError;

    fn x() -> Array {
        Array::from_slice(&[1.0f32, -2.0, 3.5, 0.25], &[4])
    }

    // Each case uses its own op name: the registry is process-wide and tests run in parallel.
    #[test]
    fn a_kernel_that_fails_falls_back_once_with_the_reference_result() -> Result<()> {
        let want = ops::multiply(x(), x())?;
        let mut fast_calls = 0;
        for _ in 0..3 {
            let out = checked(
                "test_broken",
                Path::Cuda,
                Dtype::Float32,
                || {
                    fast_calls += 1;
                    Err(FastOpsError::Kernel {
                        op: "test_broken",
                        msg: "NVRTC: error: expected ';'".into(),
                    })
                },
                || Ok(ops::multiply(x(), x())?),
            )?;
            assert_eq!(out.as_slice::<f32>(), want.as_slice::<f32>());
        }
        assert_eq!(fast_calls, 1, "a failed kernel is not tried again");
        let w: Vec<String> = fallback_warnings()
            .into_iter()
            .filter(|w| w.contains("test_broken"))
            .collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("expected ';'"), "{}", w[0]);
        Ok(())
    }

    #[test]
    fn a_kernel_that_disagrees_falls_back_and_a_good_one_is_kept() -> Result<()> {
        let out = checked(
            "test_wrong",
            Path::Metal,
            Dtype::Float32,
            || Ok(Some(ops::add(x(), Array::from_f32(0.01))?)),
            || Ok(x()),
        )?;
        assert_eq!(out.as_slice::<f32>(), x().as_slice::<f32>());
        assert!(
            fallback_warnings()
                .iter()
                .any(|w| w.contains("test_wrong") && w.contains("disagrees"))
        );
        // NaN output: rejected too.
        let out = checked(
            "test_nan",
            Path::Cuda,
            Dtype::Float32,
            || {
                Ok(Some(ops::divide(
                    &ops::zeros::<f32>(&[4])?,
                    &ops::zeros::<f32>(&[4])?,
                )?))
            },
            || Ok(x()),
        )?;
        assert_eq!(out.as_slice::<f32>(), x().as_slice::<f32>());
        // A kernel within tolerance is used (its own result returned), checked only once.
        let near = || ops::multiply(x(), Array::from_f32(1.000_001));
        let mut refs = 0;
        for _ in 0..3 {
            let out = checked(
                "test_good",
                Path::Cuda,
                Dtype::Float32,
                || Ok(Some(near()?)),
                || {
                    refs += 1;
                    Ok(x())
                },
            )?;
            out.eval()?;
            assert_eq!(out.as_slice::<f32>(), near()?.as_slice::<f32>());
        }
        assert_eq!(refs, 1, "the reference runs only for the check");
        assert!(!fallback_warnings().iter().any(|w| w.contains("test_good")));
        Ok(())
    }
}
