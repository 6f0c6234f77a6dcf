//! The timestep modulation of a whole schedule, a few steps at a time.

use mlx_rs::Array;

use crate::error::{DitError, Result};
use crate::model::{QwenImageTransformer, StepModulation};

/// Steps whose modulation [`ScheduleModulation`] computes in one call by default: the fused
/// matrix-vector kernel of `mlx_fastops::linear` takes up to 8 rows and reads the weights
/// once for all of them.
pub const MODULATION_WINDOW: usize = 8;

/// The modulation of each step of a schedule, computed [`MODULATION_WINDOW`] steps at a time
/// ([`QwenImageTransformer::modulations`]) when the first step of a window is asked for.
///
/// Each block's two modulation Linear layers are a third of the weights a forward reads, and
/// at one row per step that read is all they cost (≈ 3.4 ms per step for the full model on an
/// H200, see `docs/speed.md`); a window reads them once for eight steps. The windows are lazy
/// graphs like the rest of a step: the first step of a window evaluates them, the next steps
/// use rows of the result.
///
/// ```no_run
/// # use mlx_rs::Array;
/// # fn f(model: &qwen_dit::QwenImageTransformer, timesteps: &[Array]) -> qwen_dit::Result<()> {
/// let mut mods = qwen_dit::ScheduleModulation::new(model, timesteps);
/// for step in 0..timesteps.len() {
///     let m = mods.get(step)?;
///     // model.forward_modulated(…, &timesteps[step], …, Some(m))
/// #   let _ = m;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ScheduleModulation<'a> {
    model: &'a QwenImageTransformer,
    timesteps: &'a [Array],
    window: usize,
    /// The first step of the window held in `held`.
    start: usize,
    held: Vec<StepModulation>,
}

impl<'a> ScheduleModulation<'a> {
    /// The modulations of `timesteps` (one per step, each `(B,)` or `(1,)`, all one shape)
    /// for `model`, with the default window.
    pub fn new(model: &'a QwenImageTransformer, timesteps: &'a [Array]) -> Self {
        Self {
            model,
            timesteps,
            window: MODULATION_WINDOW,
            start: 0,
            held: Vec::new(),
        }
    }

    /// The same with `window` steps per call (at least 1; 1 computes each step alone).
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// The modulation of step `step` (an index into the timesteps given to [`Self::new`]).
    /// A step outside the held window computes the window starting at it.
    pub fn get(&mut self, step: usize) -> Result<&StepModulation> {
        let n = self.timesteps.len();
        if step >= n {
            return Err(DitError::InvalidInput(format!(
                "step {step} is outside the schedule of {n} timesteps"
            )));
        }
        if !(self.start..self.start + self.held.len()).contains(&step) {
            let end = (step + self.window).min(n);
            self.held = self.model.modulations(&self.timesteps[step..end])?;
            self.start = step;
        }
        self.held.get(step - self.start).ok_or_else(|| {
            DitError::InvalidInput(format!("no modulation computed for step {step}"))
        })
    }
}
