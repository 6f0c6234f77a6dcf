//! `scheduler/scheduler_config.json`: diffusers' `FlowMatchEulerDiscreteScheduler` config.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SchedulerError};

/// Where a config came from, for error messages.
pub(crate) const IN_MEMORY: &str = "<in-memory config>";

/// How `mu` shifts the sigmas when `use_dynamic_shifting` is on (diffusers `time_shift_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShiftType {
    /// `σ' = e^μ / (e^μ + (1/σ − 1))` (the default; Flux, Qwen-Image).
    #[default]
    Exponential,
    /// `σ' = μ / (μ + (1/σ − 1))`.
    Linear,
}

/// The scheduler config, with diffusers' field names and defaults
/// (`FlowMatchEulerDiscreteScheduler.__init__`, diffusers 0.42.1).
///
/// Keys diffusers writes for bookkeeping (`_class_name`, `_diffusers_version`) and keys this
/// scheduler does not know are ignored, as diffusers ignores them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Number of training timesteps; `timestep = σ · num_train_timesteps`. Default 1000.
    pub num_train_timesteps: usize,
    /// Static shift `σ' = s·σ / (1 + (s − 1)·σ)`, used when `use_dynamic_shifting` is off.
    /// Default 1.0.
    pub shift: f64,
    /// Shift by `mu` (resolution dependent) instead of the static `shift`. Default false.
    pub use_dynamic_shifting: bool,
    /// `mu` at `base_image_seq_len` tokens. Default 0.5 (`null` allowed, as in diffusers).
    pub base_shift: Option<f64>,
    /// `mu` at `max_image_seq_len` tokens. Default 1.15 (`null` allowed, as in diffusers).
    pub max_shift: Option<f64>,
    /// Sequence length where `mu = base_shift`. Default 256.
    pub base_image_seq_len: usize,
    /// Sequence length where `mu = max_shift`. Default 4096.
    pub max_image_seq_len: usize,
    /// Use `1 − σ` (Mochi). Default false.
    pub invert_sigmas: bool,
    /// Stretch the shifted schedule so that its last sigma equals this value (LTX-Video
    /// style). `null` or 0 disables it. Default `null`.
    pub shift_terminal: Option<f64>,
    /// Respace the sigmas as a Karras schedule (ρ = 7). Default false.
    pub use_karras_sigmas: bool,
    /// Respace the sigmas log-uniformly. Default false.
    pub use_exponential_sigmas: bool,
    /// Respace the sigmas by a Beta(0.6, 0.6) quantile schedule. Default false.
    pub use_beta_sigmas: bool,
    /// `"exponential"` or `"linear"`. Default `"exponential"`.
    pub time_shift_type: TimeShiftType,
    /// Stochastic (re-noising) sampling. Default false. Not supported.
    pub stochastic_sampling: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShiftType::Exponential,
            stochastic_sampling: false,
        }
    }
}

impl SchedulerConfig {
    /// Qwen/Qwen-Image's `scheduler/scheduler_config.json` (shift 1.0, dynamic shifting,
    /// base/max image seq len 256/8192, base/max shift 0.5/0.9, shift_terminal 0.02,
    /// exponential time shift).
    pub fn qwen_image() -> Self {
        Self {
            use_dynamic_shifting: true,
            base_shift: Some(0.5),
            max_shift: Some(0.9),
            base_image_seq_len: 256,
            max_image_seq_len: 8192,
            shift_terminal: Some(0.02),
            ..Self::default()
        }
    }

    /// Read and validate a `scheduler_config.json`. Errors name the file and, where one is
    /// to blame, the key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_config_text(path)?;
        let config = Self::from_json_str(&text).map_err(|e| with_origin(e, path))?;
        Ok(config)
    }

    /// Parse and validate a config from JSON text (errors say `<in-memory config>`).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| SchedulerError::Json {
                path: IN_MEMORY.into(),
                msg: e.to_string(),
            })?;
        let serde_json::Value::Object(map) = &value else {
            return Err(SchedulerError::Json {
                path: IN_MEMORY.into(),
                msg: "the top level must be a JSON object".into(),
            });
        };
        let config: Self = match serde_json::from_value(value.clone()) {
            Ok(c) => c,
            Err(err) => {
                // Every field has a default, so a one-key object parses exactly when that
                // key's value does: find the key to blame.
                for (key, v) in map {
                    let mut one = serde_json::Map::new();
                    one.insert(key.clone(), v.clone());
                    if let Err(e) = serde_json::from_value::<Self>(serde_json::Value::Object(one)) {
                        return Err(SchedulerError::InvalidConfig {
                            origin: IN_MEMORY.into(),
                            key: key.clone(),
                            msg: e.to_string(),
                        });
                    }
                }
                return Err(SchedulerError::Json {
                    path: IN_MEMORY.into(),
                    msg: err.to_string(),
                });
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// This config with the keys of `overrides` (a JSON object with diffusers'
    /// `FlowMatchEulerDiscreteScheduler` config keys, e.g. the Qwen-Image-Lightning recipe)
    /// replaced, validated. Strict: a key this scheduler does not know is an error naming it
    /// (bookkeeping keys `_class_name` — which must name this scheduler — and
    /// `_diffusers_version` are accepted); a value of the wrong type names its key.
    pub fn with_overrides(
        &self,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        let serde_json::Value::Object(mut merged) =
            serde_json::to_value(self).map_err(|e| SchedulerError::Json {
                path: IN_MEMORY.into(),
                msg: e.to_string(),
            })?
        else {
            return Err(SchedulerError::Json {
                path: IN_MEMORY.into(),
                msg: "the config does not serialise to an object".into(),
            });
        };
        for (key, value) in overrides {
            match key.as_str() {
                "_diffusers_version" => continue,
                "_class_name" => {
                    if value.as_str() != Some("FlowMatchEulerDiscreteScheduler") {
                        return Err(SchedulerError::InvalidConfig {
                            origin: IN_MEMORY.into(),
                            key: key.clone(),
                            msg: format!(
                                "names {value}, but this scheduler is                                  FlowMatchEulerDiscreteScheduler"
                            ),
                        });
                    }
                    continue;
                }
                _ => {}
            }
            if !merged.contains_key(key) {
                let mut known: Vec<&String> = merged.keys().collect();
                known.sort();
                return Err(SchedulerError::Unsupported {
                    origin: IN_MEMORY.into(),
                    key: key.clone(),
                    reason: format!(
                        "not a FlowMatchEulerDiscreteScheduler config key this scheduler knows                          (known: {})",
                        known
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            merged.insert(key.clone(), value.clone());
        }
        Self::from_json_str(&serde_json::Value::Object(merged).to_string())
    }

    /// Reads `path` (a JSON object of scheduler config keys) and applies it with
    /// [`Self::with_overrides`]; errors name the file.
    pub fn with_overrides_file(&self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_config_text(path)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| SchedulerError::Json {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        let serde_json::Value::Object(map) = value else {
            return Err(SchedulerError::Json {
                path: path.to_path_buf(),
                msg: "the top level must be a JSON object of scheduler config keys".into(),
            });
        };
        self.with_overrides(&map).map_err(|e| with_origin(e, path))
    }

    /// Check the values diffusers would reject or that make the schedule undefined, and the
    /// options this crate does not implement.
    pub fn validate(&self) -> Result<()> {
        let invalid = |key: &str, msg: String| SchedulerError::InvalidConfig {
            origin: IN_MEMORY.into(),
            key: key.into(),
            msg,
        };
        if self.num_train_timesteps == 0 {
            return Err(invalid(
                "num_train_timesteps",
                "must be positive, got 0".into(),
            ));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(invalid(
                "shift",
                format!("must be a positive finite number, got {}", self.shift),
            ));
        }
        if self.max_image_seq_len <= self.base_image_seq_len {
            return Err(invalid(
                "max_image_seq_len",
                format!(
                    "must be greater than base_image_seq_len ({}), got {} (mu is linear \
                     between the two)",
                    self.base_image_seq_len, self.max_image_seq_len
                ),
            ));
        }
        for (key, v) in [
            ("base_shift", self.base_shift),
            ("max_shift", self.max_shift),
        ] {
            match v {
                Some(x) if !x.is_finite() => {
                    return Err(invalid(key, format!("must be finite, got {x}")));
                }
                None if self.use_dynamic_shifting => {
                    return Err(invalid(
                        key,
                        "is null but `use_dynamic_shifting` needs it to compute mu".into(),
                    ));
                }
                _ => {}
            }
        }
        if let Some(t) = self.shift_terminal
            && !(t.is_finite() && t < 1.0)
        {
            return Err(invalid(
                "shift_terminal",
                format!("must be a finite number below 1 (or null), got {t}"),
            ));
        }
        let respacings = [
            self.use_karras_sigmas,
            self.use_exponential_sigmas,
            self.use_beta_sigmas,
        ];
        if respacings.iter().filter(|&&b| b).count() > 1 {
            return Err(invalid(
                "use_karras_sigmas",
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be \
                 true"
                    .into(),
            ));
        }
        let unsupported = |key: &str, reason: &str| SchedulerError::Unsupported {
            origin: IN_MEMORY.into(),
            key: key.into(),
            reason: reason.into(),
        };
        if self.stochastic_sampling {
            return Err(unsupported(
                "stochastic_sampling",
                "only the deterministic Euler step is implemented",
            ));
        }
        Ok(())
    }
}

/// Reads a config file, refusing what is not a regular file (a folder, a FIFO, a device —
/// a link to `/dev/zero` would never end) or is over 16 MiB.
fn read_config_text(path: &Path) -> Result<String> {
    let io = |source| SchedulerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() || meta.len() > 16 << 20 {
        return Err(SchedulerError::Json {
            path: path.to_path_buf(),
            msg: if meta.is_file() {
                format!("{} bytes: too large for a scheduler config", meta.len())
            } else {
                "not a regular file".into()
            },
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Replace the `<in-memory config>` origin of an error with the file it came from.
fn with_origin(err: SchedulerError, path: &Path) -> SchedulerError {
    let origin = path.display().to_string();
    match err {
        SchedulerError::Json { msg, .. } => SchedulerError::Json {
            path: path.to_path_buf(),
            msg,
        },
        SchedulerError::InvalidConfig { key, msg, .. } => {
            SchedulerError::InvalidConfig { origin, key, msg }
        }
        SchedulerError::Unsupported { key, reason, .. } => SchedulerError::Unsupported {
            origin,
            key,
            reason,
        },
        other => other,
    }
}
