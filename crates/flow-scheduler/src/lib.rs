//! # flow-scheduler
//!
//! The flow-matching Euler scheduler of Qwen-Image: a Rust port of diffusers'
//! `FlowMatchEulerDiscreteScheduler` (`diffusers/schedulers/scheduling_flow_match_euler_discrete.py`,
//! diffusers 0.42.1) as `QwenImagePipeline` (`diffusers/pipelines/qwenimage/pipeline_qwenimage.py`)
//! drives it. In the qwen-image-rs pipeline it sits between the text encoder and the DiT
//! loop: it turns a step count and the image size into the timesteps the DiT is conditioned
//! on, and advances the packed latents after each DiT call.
//!
//! What it reproduces, to the f32 bit on the reference fixtures:
//! * `calculate_shift`: `mu` linear in the packed token count `(H/16)·(W/16)`, through
//!   `(base_image_seq_len, base_shift)` and `(max_image_seq_len, max_shift)`;
//! * the pipeline's sigmas `linspace(1, 1/N, N)`, the exponential (or linear) time shift by
//!   `mu`, or the static `shift`; the `shift_terminal` stretch; Karras / exponential
//!   respacing; `invert_sigmas`; `timesteps = σ · num_train_timesteps`; the trailing 0;
//! * diffusers' precision: caller sigmas are shifted in f32, the scheduler's own spacing in
//!   f64, each with the same operation order and roundings as NumPy / PyTorch;
//! * the Euler step `x ← x + (σ[i+1] − σ[i]) · v` with diffusers' dtype handling.
//!
//! The schedule arithmetic ([`schedule`]) is plain Rust; only [`FlowMatchEulerScheduler::step`]
//! uses MLX. Karras, exponential and Beta-quantile (`scipy.stats.beta.ppf`, α = β = 0.6)
//! respacing are implemented; stochastic sampling is not (a config enabling it is rejected
//! with an error naming the key). [`SchedulerConfig::with_overrides`] applies a JSON object of
//! keys on top of a checkpoint's config (what `--scheduler-config` passes), strictly: an
//! unknown key is an error naming it.
//!
//! ## Using it on its own
//!
//! ```no_run
//! use flow_scheduler::FlowMatchEulerScheduler;
//! use mlx_rs::Array;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `<checkpoint>/scheduler/scheduler_config.json` of a diffusers-format Qwen-Image.
//! let mut sched = FlowMatchEulerScheduler::from_model_dir("Qwen-Image")?;
//! let (height, width) = (1328, 1328);
//! let image_seq_len = (height / 16) * (width / 16); // packed 2×2 latent patches
//! let mu = sched.mu(image_seq_len)?;
//! sched.set_timesteps(50, Some(mu))?;
//!
//! let mut latents = Array::zeros::<f32>(&[1, image_seq_len as i32, 64])?; // your noise
//! for (i, &t) in sched.timesteps().iter().enumerate() {
//!     // The DiT gets σ = t / 1000.
//!     let velocity = latents.clone(); // = dit.forward(&latents, t / 1000.0, ...)
//!     latents = sched.step(&velocity, i, &latents)?;
//!     latents.eval()?;
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod beta;
pub mod config;
pub mod error;
pub mod schedule;
mod scheduler;

pub use config::{SchedulerConfig, TimeShiftType};
pub use error::{Result, SchedulerError};
pub use schedule::{Schedule, calculate_shift, pipeline_sigmas};
pub use scheduler::FlowMatchEulerScheduler;
