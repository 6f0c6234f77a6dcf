//! Config loading, validation errors and API misuse.

mod common;

use std::path::Path;

use anyhow::Result;
use flow_scheduler::{FlowMatchEulerScheduler, SchedulerConfig, SchedulerError, TimeShiftType};
use mlx_rs::{Array, Dtype};

use common::config_path;

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("scheduler_config.json");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Loads `text` from a file and returns the error message (the load must fail).
fn load_error(text: &str) -> (SchedulerError, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), text);
    let err = SchedulerConfig::from_file(&path).expect_err("config should be rejected");
    let msg = err.to_string();
    (err, msg, path.display().to_string())
}

#[test]
fn qwen_image_config_file_matches_preset() -> Result<()> {
    let cfg = SchedulerConfig::from_file(config_path("qwen-image"))?;
    assert_eq!(cfg, SchedulerConfig::qwen_image());
    assert_eq!(cfg.time_shift_type, TimeShiftType::Exponential);
    assert_eq!(cfg.shift_terminal, Some(0.02));
    Ok(())
}

#[test]
fn missing_keys_take_diffusers_defaults() -> Result<()> {
    let cfg = SchedulerConfig::from_file(config_path("defaults"))?;
    assert_eq!(cfg, SchedulerConfig::default());
    let cfg =
        SchedulerConfig::from_json_str(r#"{"_class_name": "FlowMatchEulerDiscreteScheduler"}"#)?;
    assert_eq!(cfg.max_image_seq_len, 4096);
    assert_eq!(cfg.max_shift, Some(1.15));
    assert!(!cfg.use_dynamic_shifting);
    Ok(())
}

#[test]
fn from_model_dir_reads_scheduler_subfolder() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("scheduler"))?;
    std::fs::copy(
        config_path("qwen-image"),
        dir.path().join("scheduler/scheduler_config.json"),
    )?;
    let sched = FlowMatchEulerScheduler::from_model_dir(dir.path())?;
    assert_eq!(sched.config(), &SchedulerConfig::qwen_image());
    Ok(())
}

#[test]
fn missing_file_names_the_path() {
    let err = FlowMatchEulerScheduler::from_config_file("/nonexistent/scheduler_config.json")
        .expect_err("missing file");
    assert!(matches!(err, SchedulerError::Io { .. }));
    assert!(
        err.to_string()
            .contains("/nonexistent/scheduler_config.json"),
        "{err}"
    );
}

#[test]
fn bad_json_names_the_file() {
    let (err, msg, path) = load_error("{\"shift\": 1.0,");
    assert!(matches!(err, SchedulerError::Json { .. }), "{err:?}");
    assert!(msg.contains(&path), "{msg}");
    let (err, msg, _) = load_error("[1, 2]");
    assert!(matches!(err, SchedulerError::Json { .. }), "{err:?}");
    assert!(msg.contains("object"), "{msg}");
}

#[test]
fn invalid_values_name_file_and_key() {
    let cases = [
        (r#"{"shift": 0.0}"#, "shift"),
        (r#"{"shift": -3}"#, "shift"),
        (r#"{"shift": "three"}"#, "shift"),
        (
            r#"{"base_image_seq_len": 4096, "max_image_seq_len": 4096}"#,
            "max_image_seq_len",
        ),
        (r#"{"time_shift_type": "cubic"}"#, "time_shift_type"),
        (r#"{"num_train_timesteps": 0}"#, "num_train_timesteps"),
        (r#"{"num_train_timesteps": -5}"#, "num_train_timesteps"),
        (r#"{"shift_terminal": 1.0}"#, "shift_terminal"),
        (
            r#"{"use_dynamic_shifting": true, "max_shift": null}"#,
            "max_shift",
        ),
        (
            r#"{"use_karras_sigmas": true, "use_exponential_sigmas": true}"#,
            "use_karras_sigmas",
        ),
        (r#"{"invert_sigmas": "yes"}"#, "invert_sigmas"),
    ];
    for (text, key) in cases {
        let (err, msg, path) = load_error(text);
        match &err {
            SchedulerError::InvalidConfig { key: k, .. } => assert_eq!(k, key, "{text}: {msg}"),
            other => panic!("{text}: expected InvalidConfig for `{key}`, got {other:?}"),
        }
        assert!(msg.contains(&path) && msg.contains(key), "{text}: {msg}");
    }
}

#[test]
fn unsupported_options_are_refused_by_name() {
    let key = "stochastic_sampling";
    let (err, msg, path) = load_error(&format!("{{\"{key}\": true}}"));
    assert!(
        matches!(err, SchedulerError::Unsupported { .. }),
        "{key}: {err:?}"
    );
    assert!(msg.contains(key) && msg.contains(&path), "{msg}");
    let cfg = SchedulerConfig {
        stochastic_sampling: true,
        ..SchedulerConfig::qwen_image()
    };
    assert!(matches!(
        FlowMatchEulerScheduler::new(cfg),
        Err(SchedulerError::Unsupported { .. })
    ));
}

#[test]
fn schedule_requests_are_checked() -> Result<()> {
    let mut sched = FlowMatchEulerScheduler::new(SchedulerConfig::qwen_image())?;
    assert!(sched.timesteps().is_empty() && sched.sigmas().is_empty());
    assert!(matches!(
        sched.set_timesteps(20, None),
        Err(SchedulerError::MissingMu)
    ));
    assert!(matches!(
        sched.set_timesteps(0, Some(0.7)),
        Err(SchedulerError::InvalidRequest(_))
    ));
    assert!(matches!(
        sched.set_sigmas(&[], Some(0.7)),
        Err(SchedulerError::InvalidRequest(_))
    ));
    assert!(matches!(
        sched.set_sigmas(&[1.0, f32::NAN], Some(0.7)),
        Err(SchedulerError::InvalidRequest(_))
    ));
    assert!(matches!(
        sched.set_timesteps(4, Some(f64::INFINITY)),
        Err(SchedulerError::InvalidRequest(_))
    ));
    // One step with shift_terminal is NaN in diffusers: refused with an explanation.
    let err = sched.set_timesteps(1, Some(0.7)).expect_err("1 step");
    assert!(err.to_string().contains("shift_terminal"), "{err}");
    // Two steps work.
    sched.set_timesteps(2, Some(0.7))?;
    assert_eq!(sched.sigmas().len(), 3);
    assert_eq!(sched.sigmas()[2], 0.0);

    // Static shift ignores mu, and one step is fine without shift_terminal.
    let mut sched = FlowMatchEulerScheduler::from_config_file(config_path("static-shift3"))?;
    sched.set_timesteps(1, None)?;
    assert_eq!(sched.sigmas(), &[1.0, 0.0]);
    assert_eq!(sched.timesteps(), &[1000.0]);
    Ok(())
}

#[test]
fn step_checks_its_inputs() -> Result<()> {
    let mut sched = FlowMatchEulerScheduler::new(SchedulerConfig::qwen_image())?;
    let x = Array::zeros::<f32>(&[1, 4, 64])?;
    assert!(matches!(
        sched.step(&x, 0, &x),
        Err(SchedulerError::NoSchedule)
    ));
    sched.set_timesteps(4, Some(sched.mu(256)?))?;
    assert!(matches!(
        sched.step(&x, 4, &x),
        Err(SchedulerError::StepIndex {
            index: 4,
            num_steps: 4
        })
    ));
    let y = Array::zeros::<f32>(&[1, 5, 64])?;
    assert!(matches!(
        sched.step(&y, 0, &x),
        Err(SchedulerError::StepInput(_))
    ));
    let ints = Array::zeros::<i32>(&[1, 4, 64])?;
    assert!(matches!(
        sched.step(&ints, 0, &x),
        Err(SchedulerError::StepInput(_))
    ));
    Ok(())
}

#[test]
fn step_keeps_bf16_and_uses_the_schedule_dt() -> Result<()> {
    let mut sched = FlowMatchEulerScheduler::new(SchedulerConfig::qwen_image())?;
    sched.set_timesteps(8, Some(sched.mu(4096)?))?;
    let i = 3;
    let dt = sched.dt(i)?;
    assert_eq!(dt, sched.sigmas()[i + 1] - sched.sigmas()[i]);
    assert!(dt < 0.0);
    let x = Array::from_slice(&[0.5f32, -1.0, 2.0, 0.0], &[1, 4]).as_dtype(Dtype::Bfloat16)?;
    let v = Array::from_slice(&[1.0f32, 1.0, -2.0, 4.0], &[1, 4]).as_dtype(Dtype::Bfloat16)?;
    let out = sched.step(&v, i, &x)?;
    assert_eq!(out.dtype(), Dtype::Bfloat16);
    // f32 sample and f32 model output stay f32; x + dt·v with dt from the schedule.
    let xf = x.as_dtype(Dtype::Float32)?;
    let vf = v.as_dtype(Dtype::Float32)?;
    let out = sched.step(&vf, i, &xf)?;
    assert_eq!(out.dtype(), Dtype::Float32);
    out.eval()?;
    let want = [0.5 + dt, -1.0 + dt, 2.0 - 2.0 * dt, 4.0 * dt];
    assert_eq!(out.as_slice::<f32>(), &want);
    Ok(())
}

/// `--scheduler-config`: the Lightning recipe on top of Qwen-Image's config gives the
/// Lightning config diffusers saves; unknown keys and bad values are refused by name.
#[test]
fn overrides_apply_strictly() -> Result<()> {
    let base = SchedulerConfig::from_file(config_path("qwen-image"))?;
    let lightning = SchedulerConfig::from_file(config_path("lightning"))?;
    let recipe = serde_json::json!({
        "base_shift": 3f64.ln(),
        "max_shift": 3f64.ln(),
        "shift_terminal": null,
        "use_dynamic_shifting": true,
        "time_shift_type": "exponential",
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.42.1",
    });
    let got = base.with_overrides(recipe.as_object().unwrap())?;
    assert_eq!(got, lightning);
    // The same from a file.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("lightning.json");
    std::fs::write(&path, recipe.to_string())?;
    assert_eq!(base.with_overrides_file(&path)?, lightning);
    // An empty override changes nothing.
    assert_eq!(base.with_overrides(&serde_json::Map::new())?, base);

    let bad = |v: serde_json::Value| base.with_overrides(v.as_object().unwrap()).unwrap_err();
    let e = bad(serde_json::json!({"use_flow_sigmas": true}));
    assert!(
        matches!(&e, SchedulerError::Unsupported { key, .. } if key == "use_flow_sigmas"),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("shift_terminal"),
        "lists known keys: {e}"
    );
    let e = bad(serde_json::json!({"shift": "three"}));
    assert!(
        matches!(&e, SchedulerError::InvalidConfig { key, .. } if key == "shift"),
        "{e:?}"
    );
    let e = bad(serde_json::json!({"_class_name": "EulerDiscreteScheduler"}));
    assert!(e.to_string().contains("EulerDiscreteScheduler"), "{e}");
    let e = bad(serde_json::json!({"stochastic_sampling": true}));
    assert!(e.to_string().contains("stochastic_sampling"), "{e}");
    // File errors name the file.
    std::fs::write(&path, "[1, 2]")?;
    let e = base.with_overrides_file(&path).unwrap_err().to_string();
    assert!(e.contains("lightning.json") && e.contains("object"), "{e}");
    std::fs::write(&path, r#"{"max_shift": "x"}"#)?;
    let e = base.with_overrides_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("lightning.json") && e.contains("max_shift"),
        "{e}"
    );
    Ok(())
}
