//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when loading a scheduler config, building a schedule or
/// taking an Euler step.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The config file could not be read.
    #[error("cannot read scheduler config {path}: {source}")]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The config file is not valid JSON (or its top level is not an object).
    #[error("{path}: not a valid scheduler config JSON document: {msg}")]
    Json {
        /// The file that was being parsed.
        path: PathBuf,
        /// What the JSON parser reported.
        msg: String,
    },

    /// A config key has a value of the wrong type or out of range.
    #[error("{origin}: invalid `{key}`: {msg}")]
    InvalidConfig {
        /// The config file, or `<in-memory config>` for a config built in code.
        origin: String,
        /// The diffusers field name.
        key: String,
        /// What is wrong with it.
        msg: String,
    },

    /// A config option this crate does not implement is switched on.
    #[error("{origin}: `{key}` is not supported by this scheduler: {reason}")]
    Unsupported {
        /// The config file, or `<in-memory config>` for a config built in code.
        origin: String,
        /// The diffusers field name.
        key: String,
        /// Why it is not supported.
        reason: String,
    },

    /// `use_dynamic_shifting` is on but no `mu` was given.
    #[error(
        "`mu` is required because the scheduler config sets `use_dynamic_shifting`; compute it \
         with `FlowMatchEulerScheduler::mu(image_seq_len)`"
    )]
    MissingMu,

    /// The arguments of `set_timesteps` / `set_sigmas` are unusable.
    #[error("invalid schedule request: {0}")]
    InvalidRequest(String),

    /// The requested schedule evaluates to NaN or infinity.
    #[error("degenerate schedule: {0}")]
    NonFiniteSchedule(String),

    /// `step` was called before a schedule was set.
    #[error("no schedule: call `set_timesteps` or `set_sigmas` before `step`")]
    NoSchedule,

    /// `step` was called with an index past the end of the schedule.
    #[error("step index {index} is out of range: the schedule has {num_steps} steps")]
    StepIndex {
        /// The index passed to `step`.
        index: usize,
        /// The number of inference steps of the current schedule.
        num_steps: usize,
    },

    /// `step` got tensors it cannot combine.
    #[error("step: {0}")]
    StepInput(String),

    /// An MLX operation failed.
    #[error("MLX error: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

/// Result alias for this crate.
pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
