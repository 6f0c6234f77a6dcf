//! [`FlowMatchEulerScheduler`]: schedule state plus the Euler step on MLX arrays.

use std::path::Path;

use mlx_rs::{Array, Dtype};

use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::schedule::{self, Schedule};

/// diffusers' `FlowMatchEulerDiscreteScheduler`, as `QwenImagePipeline` drives it.
///
/// Set a schedule with [`set_timesteps`](Self::set_timesteps) (the pipeline's default
/// sigmas), [`set_sigmas`](Self::set_sigmas) (caller sigmas) or
/// [`set_timesteps_uniform`](Self::set_timesteps_uniform) (the scheduler's own spacing), then
/// feed `timesteps()[i]` to the model and call [`step`](Self::step) with `i`.
/// The scheduler is stateless across steps: the caller passes the step index (the pipeline
/// calls `set_begin_index(0)`, so diffusers' index is the loop counter too).
#[derive(Debug, Clone)]
pub struct FlowMatchEulerScheduler {
    config: SchedulerConfig,
    schedule: Schedule,
}

impl FlowMatchEulerScheduler {
    /// A scheduler for a validated config (see [`SchedulerConfig::validate`]). No schedule is
    /// set yet.
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            schedule: Schedule::default(),
        })
    }

    /// Load `scheduler_config.json` (e.g. `<model>/scheduler/scheduler_config.json`).
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(SchedulerConfig::from_file(path)?)
    }

    /// Load `<model_dir>/scheduler/scheduler_config.json` of a diffusers-format checkpoint.
    pub fn from_model_dir(model_dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_config_file(
            model_dir
                .as_ref()
                .join("scheduler")
                .join("scheduler_config.json"),
        )
    }

    /// The config this scheduler was built from.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// `mu` for a packed image sequence length, as `QwenImagePipeline` computes it from this
    /// config (`calculate_shift` with base/max image seq len and base/max shift).
    pub fn mu(&self, image_seq_len: usize) -> Result<f64> {
        let c = &self.config;
        let missing = |key: &str| SchedulerError::InvalidConfig {
            origin: crate::config::IN_MEMORY.into(),
            key: key.into(),
            msg: "is null, so mu cannot be computed".into(),
        };
        let base = c.base_shift.ok_or_else(|| missing("base_shift"))?;
        let max = c.max_shift.ok_or_else(|| missing("max_shift"))?;
        Ok(schedule::calculate_shift(
            image_seq_len,
            c.base_image_seq_len,
            c.max_image_seq_len,
            base,
            max,
        ))
    }

    /// `QwenImagePipeline`'s schedule for `num_steps` steps: sigmas
    /// `np.linspace(1.0, 1/N, N)` passed to `set_timesteps(sigmas=..., mu=mu)`.
    /// `mu` is required when the config uses dynamic shifting and ignored otherwise.
    ///
    /// With Qwen-Image's `shift_terminal`, one step is rejected: its only sigma is 1 and
    /// diffusers' terminal stretch turns it into NaN.
    pub fn set_timesteps(&mut self, num_steps: usize, mu: Option<f64>) -> Result<()> {
        if num_steps == 0 {
            return Err(SchedulerError::InvalidRequest(
                "the schedule needs at least one step".into(),
            ));
        }
        self.set_sigmas(&schedule::pipeline_sigmas(num_steps), mu)
    }

    /// A schedule from caller sigmas (one per step, before shifting), as
    /// `set_timesteps(sigmas=..., mu=mu)`: the sigmas are shifted (by `mu` or the static
    /// `shift`), stretched to `shift_terminal`, respaced if configured, and a terminal sigma
    /// is appended. Values are taken as f32, as diffusers casts them.
    pub fn set_sigmas(&mut self, sigmas: &[f32], mu: Option<f64>) -> Result<()> {
        self.schedule = schedule::schedule_from_sigmas(&self.config, sigmas, mu)?;
        Ok(())
    }

    /// The scheduler's own spacing, as `set_timesteps(num_steps, mu=mu)` without sigmas:
    /// timesteps uniform between the training range's ends (`σ_max·T … σ_min·T`), computed
    /// in f64. Not what `QwenImagePipeline` uses; provided for other callers.
    pub fn set_timesteps_uniform(&mut self, num_steps: usize, mu: Option<f64>) -> Result<()> {
        self.schedule = schedule::schedule_uniform(&self.config, num_steps, mu)?;
        Ok(())
    }

    /// The model timesteps, `σ · num_train_timesteps` (f32), one per step. Empty before a
    /// schedule is set. (`QwenImagePipeline` passes `t / 1000` to its transformer, after
    /// casting `t` to the latents' dtype.)
    pub fn timesteps(&self) -> &[f32] {
        &self.schedule.timesteps
    }

    /// The sigmas, one per step plus the terminal one (len N + 1). Empty before a schedule
    /// is set.
    pub fn sigmas(&self) -> &[f32] {
        &self.schedule.sigmas
    }

    /// Number of inference steps of the current schedule (0 before one is set).
    pub fn num_steps(&self) -> usize {
        self.schedule.timesteps.len()
    }

    /// `σ[i+1] − σ[i]` in f32, the Euler step size of step `step_index`.
    pub fn dt(&self, step_index: usize) -> Result<f32> {
        let n = self.num_steps();
        if n == 0 {
            return Err(SchedulerError::NoSchedule);
        }
        if step_index >= n {
            return Err(SchedulerError::StepIndex {
                index: step_index,
                num_steps: n,
            });
        }
        let s = &self.schedule.sigmas;
        Ok(s[step_index + 1] - s[step_index])
    }

    /// One Euler step, `prev = sample + (σ[i+1] − σ[i]) · model_output`, with diffusers'
    /// dtypes: the sample is upcast to f32; `dt` (an f32 0-d tensor in diffusers) takes
    /// `model_output`'s dtype, as PyTorch's promotion gives it, so the product is computed
    /// and rounded in that dtype (bf16 for a bf16 model); the sum is f32 (or f64 for an f64
    /// model output) and is cast to `model_output`'s dtype. No strong f32 scalar enters a
    /// bf16 graph. Returns a lazy array (not evaluated).
    pub fn step(&self, model_output: &Array, step_index: usize, sample: &Array) -> Result<Array> {
        let dt = self.dt(step_index)?;
        if model_output.shape() != sample.shape() {
            return Err(SchedulerError::StepInput(format!(
                "model_output shape {:?} differs from sample shape {:?}",
                model_output.shape(),
                sample.shape()
            )));
        }
        let out_dtype = model_output.dtype();
        for (name, dtype) in [("model_output", out_dtype), ("sample", sample.dtype())] {
            if !dtype.is_float() {
                return Err(SchedulerError::StepInput(format!(
                    "{name} must be a floating-point array, got {dtype:?}"
                )));
            }
        }
        let dt = Array::from_f32(dt).as_dtype(out_dtype)?;
        let update = model_output.multiply(&dt)?;
        let prev = sample.as_dtype(Dtype::Float32)?.add(&update)?;
        Ok(prev.as_dtype(out_dtype)?)
    }
}
