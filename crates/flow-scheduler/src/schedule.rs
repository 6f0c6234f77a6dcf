//! The schedule arithmetic, in plain Rust (no MLX).
//!
//! diffusers builds the schedule with NumPy and then PyTorch, and the precision changes along
//! the way. Every function here repeats diffusers' sequence of operations and roundings
//! (diffusers 0.42.1, `scheduling_flow_match_euler_discrete.py`; NumPy 2 promotion rules,
//! where a Python float meeting a float32 array is rounded to float32 first):
//!
//! * caller sigmas (what `QwenImagePipeline` passes): cast to f32 first, so the time shift,
//!   the static shift and the terminal stretch all run in f32 ([`shift_sigmas_f32`]);
//! * the scheduler's own spacing (`set_timesteps(N)` without sigmas): f64 throughout, rounded
//!   to f32 once at the end ([`uniform_sigmas`]);
//! * Karras / exponential respacing: f64 from the (f32 or f64) shifted sigmas;
//! * the final tensors: f32, `timesteps = σ · num_train_timesteps` in f32, then a trailing
//!   0 (or 1 with `invert_sigmas`) appended to the sigmas.
//!
//! No fused multiply-add is used anywhere: Rust does not contract `a * b + c`, and NumPy does
//! not either, so each operation rounds where diffusers' does.

use crate::config::{SchedulerConfig, TimeShiftType};
use crate::error::{Result, SchedulerError};

/// A computed schedule: `timesteps` (len N) and `sigmas` (len N + 1, ending in the terminal
/// value), both f32 as diffusers stores them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schedule {
    /// `σ · num_train_timesteps` per step, in f32.
    pub timesteps: Vec<f32>,
    /// The N sigmas followed by the terminal sigma (0, or 1 with `invert_sigmas`).
    pub sigmas: Vec<f32>,
}

/// `mu` as `QwenImagePipeline` computes it (`calculate_shift`, in f64): linear in the packed
/// image sequence length through `(base_seq_len, base_shift)` and `(max_seq_len, max_shift)`,
/// extrapolated on both sides (tiny images get `mu < base_shift`).
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: usize,
    max_seq_len: usize,
    base_shift: f64,
    max_shift: f64,
) -> f64 {
    // Python: m = (max_shift - base_shift) / (max_seq_len - base_seq_len), an int difference
    // converted to float; exact here for any realistic length.
    let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

/// NumPy's `np.linspace(start, stop, num)` in f64, with NumPy's exact operation order
/// (`arange · step + start`, last element set to `stop`).
pub fn linspace_f64(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let delta = stop - start;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if num > 1 {
        let div = (num - 1) as f64;
        let step = delta / div;
        if step == 0.0 {
            // NumPy's special case for denormal steps.
            y.iter_mut().for_each(|v| *v = *v / div * delta);
        } else {
            y.iter_mut().for_each(|v| *v *= step);
        }
    } else {
        y.iter_mut().for_each(|v| *v *= delta);
    }
    y.iter_mut().for_each(|v| *v += start);
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// The sigmas `QwenImagePipeline` passes for `N` steps: `np.linspace(1.0, 1 / N, N)`, cast to
/// f32 as `set_timesteps` does with caller sigmas.
pub fn pipeline_sigmas(num_steps: usize) -> Vec<f32> {
    linspace_f64(1.0, 1.0 / num_steps as f64, num_steps)
        .into_iter()
        .map(|s| s as f32)
        .collect()
}

/// Dynamic (`mu`) or static (`shift`) shifting, then the terminal stretch, in f32 — the path
/// of caller-supplied sigmas (already f32).
pub fn shift_sigmas_f32(
    config: &SchedulerConfig,
    sigmas: &[f32],
    mu: Option<f64>,
) -> Result<Vec<f32>> {
    let mut out: Vec<f32> = if config.use_dynamic_shifting {
        let mu = mu.ok_or(SchedulerError::MissingMu)?;
        // time_shift(mu, 1.0, t): the Python float (e^mu or mu) becomes f32, `(1/t - 1)**1.0`
        // is exactly `1/t - 1` in f32.
        let c = match config.time_shift_type {
            TimeShiftType::Exponential => mu.exp() as f32,
            TimeShiftType::Linear => mu as f32,
        };
        sigmas
            .iter()
            .map(|&t| c / (c + (1.0f32 / t - 1.0f32)))
            .collect()
    } else {
        let s = config.shift as f32;
        let s_minus_1 = (config.shift - 1.0) as f32;
        sigmas
            .iter()
            .map(|&t| s * t / (1.0f32 + s_minus_1 * t))
            .collect()
    };
    if let Some(terminal) = active_terminal(config) {
        let Some(&last) = out.last() else {
            return Ok(out);
        };
        // scale = (1 - t[-1]) / (1 - shift_terminal): np.float32 / Python float → f32.
        let scale = (1.0f32 - last) / (1.0 - terminal) as f32;
        check_terminal_scale(scale == 0.0, last as f64)?;
        out.iter_mut()
            .for_each(|t| *t = 1.0f32 - (1.0f32 - *t) / scale);
    }
    Ok(out)
}

/// Dynamic or static shifting and the terminal stretch in f64 — the path of the scheduler's
/// own spacing.
pub fn shift_sigmas_f64(
    config: &SchedulerConfig,
    sigmas: &[f64],
    mu: Option<f64>,
) -> Result<Vec<f64>> {
    let mut out: Vec<f64> = if config.use_dynamic_shifting {
        let mu = mu.ok_or(SchedulerError::MissingMu)?;
        let c = match config.time_shift_type {
            TimeShiftType::Exponential => mu.exp(),
            TimeShiftType::Linear => mu,
        };
        sigmas.iter().map(|&t| c / (c + (1.0 / t - 1.0))).collect()
    } else {
        let s = config.shift;
        sigmas
            .iter()
            .map(|&t| s * t / (1.0 + (s - 1.0) * t))
            .collect()
    };
    if let Some(terminal) = active_terminal(config) {
        let Some(&last) = out.last() else {
            return Ok(out);
        };
        let scale = (1.0 - last) / (1.0 - terminal);
        check_terminal_scale(scale == 0.0, last)?;
        out.iter_mut().for_each(|t| *t = 1.0 - (1.0 - *t) / scale);
    }
    Ok(out)
}

/// diffusers tests `if self.config.shift_terminal:` — `None` and 0 both disable it.
fn active_terminal(config: &SchedulerConfig) -> Option<f64> {
    config.shift_terminal.filter(|&t| t != 0.0)
}

fn check_terminal_scale(zero: bool, last: f64) -> Result<()> {
    if zero {
        return Err(SchedulerError::NonFiniteSchedule(format!(
            "shift_terminal stretches the schedule by (1 - last sigma) / (1 - shift_terminal), \
             and the last shifted sigma is {last}, so every sigma becomes NaN (diffusers \
             returns NaN here too). A 1-step schedule has the single sigma 1: use at least 2 \
             steps, or a config without shift_terminal"
        )));
    }
    Ok(())
}

/// The sigmas the scheduler's `__init__` stores as `sigma_max`, `sigma_min` (f32 values,
/// read back as Python floats): `σ = t / num_train_timesteps` for `t = num_train_timesteps … 1`,
/// statically shifted in f32 when `use_dynamic_shifting` is off.
fn train_sigma_bounds(config: &SchedulerConfig) -> (f64, f64) {
    let n = config.num_train_timesteps as f32;
    // σ_max = T / T, exactly 1 in IEEE arithmetic; σ_min = 1 / T rounded to f32.
    let bounds = [1.0f32, 1.0f32 / n];
    let [max, min] = if config.use_dynamic_shifting {
        bounds
    } else {
        let s = config.shift as f32;
        let s_minus_1 = (config.shift - 1.0) as f32;
        bounds.map(|t| s * t / (1.0f32 + s_minus_1 * t))
    };
    (max as f64, min as f64)
}

/// The scheduler's own spacing for `set_timesteps(N, mu=mu)` without sigmas:
/// `np.linspace(σ_max·T, σ_min·T, N) / T`, in f64.
pub fn uniform_sigmas(config: &SchedulerConfig, num_steps: usize) -> Vec<f64> {
    let t = config.num_train_timesteps as f64;
    let (max, min) = train_sigma_bounds(config);
    linspace_f64(max * t, min * t, num_steps)
        .into_iter()
        .map(|v| v / t)
        .collect()
}

/// Karras, exponential or Beta-quantile respacing (f64), when the config asks for it. `in_sigmas` holds the
/// shifted sigmas as f64 (exact copies of f32 values on the caller-sigmas path).
fn respace(config: &SchedulerConfig, in_sigmas: &[f64]) -> Option<Vec<f64>> {
    let (first, last) = (*in_sigmas.first()?, *in_sigmas.last()?);
    let n = in_sigmas.len();
    if config.use_karras_sigmas {
        let rho = 7.0f64;
        let min_inv_rho = last.powf(1.0 / rho);
        let max_inv_rho = first.powf(1.0 / rho);
        let ramp = linspace_f64(0.0, 1.0, n);
        Some(
            ramp.into_iter()
                .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
                .collect(),
        )
    } else if config.use_beta_sigmas {
        // diffusers `_convert_to_beta` (α = β = 0.6): σ_min + ppf(1 − r)·(σ_max − σ_min) for
        // r = linspace(0, 1, n).
        let (alpha, beta) = (0.6, 0.6);
        Some(
            linspace_f64(0.0, 1.0, n)
                .into_iter()
                .map(|r| last + crate::beta::beta_ppf(1.0 - r, alpha, beta) * (first - last))
                .collect(),
        )
    } else if config.use_exponential_sigmas {
        Some(
            linspace_f64(first.ln(), last.ln(), n)
                .into_iter()
                .map(f64::exp)
                .collect(),
        )
    } else {
        None
    }
}

/// Final f32 tensors: timesteps `σ·T` in f32, terminal sigma appended; checks finiteness.
fn finish(config: &SchedulerConfig, sigmas: Vec<f32>) -> Result<Schedule> {
    if let Some((i, v)) = sigmas.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(SchedulerError::NonFiniteSchedule(format!(
            "sigma {i} of {} evaluates to {v}",
            sigmas.len()
        )));
    }
    let t = config.num_train_timesteps as f32;
    let (mut sigmas, terminal) = if config.invert_sigmas {
        (
            sigmas.into_iter().map(|s| 1.0f32 - s).collect::<Vec<_>>(),
            1.0f32,
        )
    } else {
        (sigmas, 0.0f32)
    };
    let timesteps = sigmas.iter().map(|&s| s * t).collect();
    sigmas.push(terminal);
    Ok(Schedule { timesteps, sigmas })
}

/// The schedule for caller-supplied sigmas (`set_timesteps(sigmas=..., mu=...)`).
pub fn schedule_from_sigmas(
    config: &SchedulerConfig,
    sigmas: &[f32],
    mu: Option<f64>,
) -> Result<Schedule> {
    check_request(config, sigmas.len(), mu)?;
    if let Some((i, v)) = sigmas.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(SchedulerError::InvalidRequest(format!(
            "sigma {i} is {v}; sigmas must be finite"
        )));
    }
    let shifted = shift_sigmas_f32(config, sigmas, mu)?;
    let shifted = match respace(
        config,
        &shifted.iter().map(|&s| s as f64).collect::<Vec<_>>(),
    ) {
        Some(r) => r.into_iter().map(|s| s as f32).collect(),
        None => shifted,
    };
    finish(config, shifted)
}

/// The schedule for the scheduler's own spacing (`set_timesteps(N, mu=...)` without sigmas).
pub fn schedule_uniform(
    config: &SchedulerConfig,
    num_steps: usize,
    mu: Option<f64>,
) -> Result<Schedule> {
    check_request(config, num_steps, mu)?;
    let shifted = shift_sigmas_f64(config, &uniform_sigmas(config, num_steps), mu)?;
    let shifted = respace(config, &shifted).unwrap_or(shifted);
    finish(config, shifted.into_iter().map(|s| s as f32).collect())
}

fn check_request(config: &SchedulerConfig, num_steps: usize, mu: Option<f64>) -> Result<()> {
    if num_steps == 0 {
        return Err(SchedulerError::InvalidRequest(
            "the schedule needs at least one step".into(),
        ));
    }
    if config.use_dynamic_shifting {
        match mu {
            None => return Err(SchedulerError::MissingMu),
            Some(m) if !m.is_finite() => {
                return Err(SchedulerError::InvalidRequest(format!(
                    "mu must be finite, got {m}"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_shape_rules() {
        assert_eq!(linspace_f64(1.0, 0.25, 1), vec![1.0]);
        assert_eq!(linspace_f64(0.0, 1.0, 0), Vec::<f64>::new());
        let y = linspace_f64(1.0, 0.25, 4);
        assert_eq!(y, vec![1.0, 0.75, 0.5, 0.25]);
        // Last element is exactly `stop` even when i·step + start would not land on it.
        assert_eq!(*linspace_f64(0.0, 0.1, 7).last().unwrap(), 0.1);
    }

    #[test]
    fn calculate_shift_is_linear_and_extrapolates() {
        assert_eq!(calculate_shift(256, 256, 8192, 0.5, 0.9), 0.5);
        assert!((calculate_shift(8192, 256, 8192, 0.5, 0.9) - 0.9).abs() < 1e-15);
        assert!(calculate_shift(16, 256, 8192, 0.5, 0.9) < 0.5);
    }
}
