//! The denoising loop: the one loop every pipeline mode runs.
//!
//! Each step calls the transformer once (twice with true CFG), combines the predictions
//! ([`crate::guidance`]), takes the Euler step and lets the mode's [`StepHook`] adjust the
//! new latents (e.g. an inpainting blend). Each step's latents are evaluated once,
//! asynchronously: step `i + 1`'s graph is built while the device still runs step `i`, and
//! the host blocks only to report step `i`.

use std::time::Instant;

use flow_scheduler::FlowMatchEulerScheduler;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::transforms::async_eval;
use mlx_rs::{Array, ops};
use qwen_dit::{QwenImageTransformer, RopeTables, ScheduleModulation};

use crate::error::{PipelineError, Result};
use crate::guidance::true_cfg_combine;

/// The text side of one transformer pass: embeddings `(1, T, joint_dim)` and the RoPE tables
/// for them and the image grid(s).
#[derive(Debug)]
pub(crate) struct Conditioning {
    pub(crate) embeds: Array,
    pub(crate) rope: RopeTables,
}

/// What a mode may change after each Euler step.
pub(crate) trait StepHook {
    /// The latents to continue from after step `step` (0-based index into the schedule)
    /// produced `latents`.
    fn after_step(&mut self, step: usize, latents: Array) -> Result<Array>;
}

/// No change (text-to-image, img2img).
pub(crate) struct NoHook;

impl StepHook for NoHook {
    fn after_step(&mut self, _step: usize, latents: Array) -> Result<Array> {
        Ok(latents)
    }
}

/// The two passes of true CFG split over a pair of ranks: each runs its own pass, and one
/// all-gather per step brings both predictions to both.
pub(crate) struct Exchange<'a> {
    pub(crate) group: &'a mlx_fastops::distributed::Group,
    /// Rows of the gathered predictions holding the pair's prompt and negative passes.
    pub(crate) rows: (i32, i32),
    pub(crate) scale: f32,
}

/// One image's denoising.
pub(crate) struct Denoise<'a> {
    pub(crate) dit: &'a QwenImageTransformer,
    pub(crate) sched: &'a FlowMatchEulerScheduler,
    /// The transformer's timestep input for each scheduled step (`t / 1000` in the
    /// compute dtype), evaluated.
    pub(crate) sigmas: &'a [Array],
    /// The first step to run (img2img starts inside the schedule).
    pub(crate) first_step: usize,
    /// The pictures' tokens of an edit, `(1, M, C)`: appended after the latents' tokens for
    /// every transformer pass, their prediction dropped.
    pub(crate) pictures: Option<&'a Array>,
    /// The pass this process runs: the prompt's (or, for the second rank of a CFG pair, the
    /// negative prompt's).
    pub(crate) cond: &'a Conditioning,
    /// The negative prompt's conditioning and the CFG scale, when true CFG runs here.
    pub(crate) neg: Option<(&'a Conditioning, f32)>,
    /// True CFG split over a pair of ranks.
    pub(crate) exchange: Option<Exchange<'a>>,
}

impl Denoise<'_> {
    /// The transformer's input: the latents' tokens, then the pictures' (an edit).
    fn with_pictures(&self, x: &Array) -> Result<Array> {
        Ok(match self.pictures {
            Some(p) => ops::concatenate(&[x.clone(), p.clone()], 1)?,
            None => x.clone(),
        })
    }

    /// The prediction for the latents' tokens only (`noise_pred[:, :latents.size(1)]`).
    fn latents_part(&self, out: Array, x: &Array) -> Array {
        match self.pictures {
            Some(_) => out.index((.., ..x.dim(1))),
            None => out,
        }
    }

    /// Runs the steps from `first_step` on the packed latents `x`; `on_step(step, latents)`
    /// is called once each step's latents are evaluated. Returns the final latents. `idle`:
    /// this rank has no image in this round and only takes part in the exchanges.
    pub(crate) fn run(
        &self,
        mut x: Array,
        hook: &mut dyn StepHook,
        idle: bool,
        on_step: &mut dyn FnMut(usize, &Array, std::time::Duration) -> Result<()>,
    ) -> Result<Array> {
        let mut last_done = Instant::now();
        let mut report = |step: usize, x: &Array| -> Result<()> {
            x.eval()?;
            let now = Instant::now();
            let elapsed = now - last_done;
            last_done = now;
            on_step(step, x, elapsed)
        };
        let steps = self.first_step..self.sigmas.len();
        // Each step's timestep modulation, computed a window of steps at a time (the
        // modulation weights read once per window) and shared by both CFG passes.
        let mut mods = ScheduleModulation::new(self.dit, self.sigmas);
        for i in steps.clone() {
            let sigma = &self.sigmas[i];
            let shared = if idle { None } else { Some(mods.get(i)?) };
            let own = if idle {
                ops::zeros_like(&x)?
            } else {
                let out = self.dit.forward_modulated(
                    &self.with_pictures(&x)?,
                    &self.cond.embeds,
                    None,
                    sigma,
                    &self.cond.rope,
                    shared,
                )?;
                self.latents_part(out, &x)
            };
            let mut v = match &self.exchange {
                Some(ex) => {
                    let all = ex.group.all_gather(&own)?;
                    let (c, u) = ex.rows;
                    true_cfg_combine(&all.index(c..c + 1), &all.index(u..u + 1), ex.scale)?
                }
                None => own,
            };
            if let Some((neg, scale)) = self.neg.filter(|_| !idle) {
                // The negative pass starts once the positive one is done, so that only one
                // pass's activations live at a time (MLX would otherwise interleave them).
                let x_neg =
                    mlx_fastops::depends(std::slice::from_ref(&x), std::slice::from_ref(&v))?
                        .pop()
                        .ok_or_else(|| PipelineError::Runtime("depends returned nothing".into()))?;
                let vn = self.dit.forward_modulated(
                    &self.with_pictures(&x_neg)?,
                    &neg.embeds,
                    None,
                    sigma,
                    &neg.rope,
                    shared,
                )?;
                let vn = self.latents_part(vn, &x);
                v = true_cfg_combine(&v, &vn, scale)?;
            }
            let next = hook.after_step(i, self.sched.step(&v, i, &x)?)?;
            async_eval([&next])?;
            if i > steps.start {
                report(i - 1, &x)?;
            }
            x = next;
        }
        if !steps.is_empty() {
            report(steps.end - 1, &x)?;
        }
        Ok(x)
    }
}
