//! Parity with diffusers 0.42.1 on the fixtures of `fixtures/gen/scheduler.py`: schedules
//! (timesteps, sigmas, mu) for many configs, sizes and step counts, and Euler trajectories
//! in f32 and bf16.

mod common;

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, ensure};
use flow_scheduler::{FlowMatchEulerScheduler, SchedulerError};
use mlx_rs::{Array, Dtype};
use serde_json::Value;

use common::{config_path, fixture, load_tensors};

/// Tolerance on sigmas (and on timesteps divided by num_train_timesteps). The arithmetic
/// repeats diffusers' operations and roundings, so on Linux every value is bit-identical
/// (asserted separately below); 1e-6 (≈ 8 f32 ulps at σ = 1) leaves room only for a
/// platform libm whose `exp`/`pow` differ from glibc's in the last f64 bit, which can move
/// an f32 result by one ulp.
const SCHEDULE_TOL: f64 = 1e-6;

fn f32_values(v: &Value, key: &str) -> Result<Vec<Option<f32>>> {
    v[key]
        .as_array()
        .with_context(|| format!("fixture record without `{key}`"))?
        .iter()
        .map(|x| match x {
            Value::Null => Ok(None),
            x => x
                .as_f64()
                .map(|f| Some(f as f32))
                .ok_or_else(|| anyhow!("`{key}` holds a non-number")),
        })
        .collect()
}

struct Stats {
    compared: usize,
    not_bit_exact: usize,
    max_sigma_err: f64,
    max_timestep_err: f64,
}

#[test]
fn schedules_match_diffusers() -> Result<()> {
    let text = std::fs::read_to_string(fixture("schedules.json"))?;
    let doc: Value = serde_json::from_str(&text)?;
    let records = doc["records"].as_array().context("records")?;
    ensure!(
        records.len() > 150,
        "fixture has only {} records",
        records.len()
    );

    let mut schedulers: BTreeMap<String, FlowMatchEulerScheduler> = BTreeMap::new();
    let mut stats = Stats {
        compared: 0,
        not_bit_exact: 0,
        max_sigma_err: 0.0,
        max_timestep_err: 0.0,
    };
    let mut nan_cases = 0;
    for rec in records {
        let name = rec["config"].as_str().context("config")?.to_string();
        let mode = rec["mode"].as_str().context("mode")?;
        let n = rec["num_inference_steps"].as_u64().context("steps")? as usize;
        let seq = rec["image_seq_len"].as_u64().context("seq")? as usize;
        let what = format!(
            "{name}/{mode} {}x{} (seq {seq}) N={n}",
            rec["height"], rec["width"]
        );
        if !schedulers.contains_key(&name) {
            schedulers.insert(
                name.clone(),
                FlowMatchEulerScheduler::from_config_file(config_path(&name))?,
            );
        }
        let sched = schedulers.get_mut(&name).context("scheduler")?;

        // mu: same f64 operations as the pipeline's calculate_shift → bit-identical.
        let mu = sched.mu(seq)?;
        let want_mu = rec["mu"].as_f64().context("mu")?;
        ensure!(
            mu.to_bits() == want_mu.to_bits(),
            "{what}: mu {mu} != diffusers {want_mu}"
        );

        let result = match mode {
            "pipeline" => sched.set_timesteps(n, Some(mu)),
            "uniform" => sched.set_timesteps_uniform(n, Some(mu)),
            "custom" => {
                let input: Vec<f32> = f32_values(rec, "input_sigmas")?
                    .into_iter()
                    .map(|v| v.context("null input sigma"))
                    .collect::<Result<_>>()?;
                sched.set_sigmas(&input, Some(mu))
            }
            other => anyhow::bail!("unknown mode {other}"),
        };

        let want_sigmas = f32_values(rec, "sigmas")?;
        let want_timesteps = f32_values(rec, "timesteps")?;
        if want_sigmas.iter().any(Option::is_none) {
            // diffusers returns NaN (1 step with shift_terminal): we must refuse instead.
            ensure!(
                matches!(result, Err(SchedulerError::NonFiniteSchedule(_))),
                "{what}: diffusers gives NaN, expected a NonFiniteSchedule error, got {result:?}"
            );
            nan_cases += 1;
            continue;
        }
        result.with_context(|| what.clone())?;
        ensure!(
            sched.sigmas().len() == n + 1 && want_sigmas.len() == n + 1,
            "{what}: sigma count"
        );
        ensure!(
            sched.timesteps().len() == n && want_timesteps.len() == n,
            "{what}: timestep count"
        );
        let t_scale = sched.config().num_train_timesteps as f64;
        for (i, (&got, want)) in sched.sigmas().iter().zip(&want_sigmas).enumerate() {
            let want = want.context("null")?;
            let err = (got as f64 - want as f64).abs();
            ensure!(
                err <= SCHEDULE_TOL,
                "{what}: sigma[{i}] {got} vs diffusers {want}"
            );
            stats.max_sigma_err = stats.max_sigma_err.max(err);
            stats.not_bit_exact += usize::from(got.to_bits() != want.to_bits());
            stats.compared += 1;
        }
        for (i, (&got, want)) in sched.timesteps().iter().zip(&want_timesteps).enumerate() {
            let want = want.context("null")?;
            let err = (got as f64 - want as f64).abs() / t_scale;
            ensure!(
                err <= SCHEDULE_TOL,
                "{what}: timestep[{i}] {got} vs diffusers {want}"
            );
            stats.max_timestep_err = stats.max_timestep_err.max(err);
            stats.not_bit_exact += usize::from(got.to_bits() != want.to_bits());
            stats.compared += 1;
        }
    }
    eprintln!(
        "schedules: {} values compared, {} not bit-exact, max |Δσ| {:e}, max |Δt|/T {:e}, \
         {nan_cases} NaN cases refused",
        stats.compared, stats.not_bit_exact, stats.max_sigma_err, stats.max_timestep_err
    );
    ensure!(
        nan_cases >= 10,
        "the fixture's 1-step NaN cases were not all seen"
    );
    // On glibc (the fixtures' platform) the port is bit-exact: this catches precision-path
    // mistakes (f64 where diffusers uses f32, a missing rounding) that 1e-6 cannot see.
    // Elsewhere a different libm may flip a last bit; allow that only off Linux.
    if cfg!(target_os = "linux") {
        ensure!(
            stats.not_bit_exact == 0,
            "{} values are not bit-exact",
            stats.not_bit_exact
        );
    }
    Ok(())
}

fn to_f32_vec(a: &Array) -> Result<Vec<f32>> {
    let a = a.as_dtype(Dtype::Float32)?;
    a.eval()?;
    Ok(a.as_slice::<f32>().to_vec())
}

/// Runs the 4-step trajectory of the fixture from its first sample, feeding our own output
/// into the next step, and returns (max abs error, count of elements not bit-exact) against
/// diffusers' samples.
fn trajectory(tag: &str, dtype: Dtype) -> Result<(f32, usize)> {
    let tensors = load_tensors("steps.safetensors")?;
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(fixture("steps.json"))?)?;
    let n = meta["num_inference_steps"].as_u64().context("steps")? as usize;
    let seq = meta["image_seq_len"].as_u64().context("seq")? as usize;
    let mut sched = FlowMatchEulerScheduler::from_config_file(config_path("qwen-image"))?;
    let mu = sched.mu(seq)?;
    sched.set_timesteps(n, Some(mu))?;

    let get = |k: String| {
        tensors
            .get(&k)
            .cloned()
            .with_context(|| format!("missing {k}"))
    };
    let mut x = get(format!("{tag}.sample.0"))?;
    ensure!(x.dtype() == dtype, "fixture sample dtype {:?}", x.dtype());
    let (mut max_err, mut inexact) = (0f32, 0usize);
    for i in 0..n {
        let v = get(format!("{tag}.model_output.{i}"))?;
        x = sched.step(&v, i, &x)?;
        // The step must return the model output's dtype (no silent promotion to f32).
        ensure!(
            x.dtype() == dtype,
            "step {i}: output dtype {:?}, want {dtype:?}",
            x.dtype()
        );
        let want = to_f32_vec(&get(format!("{tag}.sample.{}", i + 1))?)?;
        let got = to_f32_vec(&x)?;
        for (g, w) in got.iter().zip(&want) {
            max_err = max_err.max((g - w).abs());
            inexact += usize::from(g.to_bits() != w.to_bits());
        }
    }
    eprintln!("{tag} trajectory: max |Δ| {max_err:e}, {inexact} elements not bit-exact");
    Ok((max_err, inexact))
}

#[test]
fn euler_steps_f32_match_diffusers() -> Result<()> {
    let (max_err, _) = trajectory("f32", Dtype::Float32)?;
    // One f32 multiply and one f32 add per step, each correctly rounded in both PyTorch and
    // MLX; 1e-6 (a few ulps at |x| ≈ 4) only allows for a backend fusing them into an FMA.
    ensure!(
        max_err <= 1e-6,
        "f32 trajectory differs from diffusers by {max_err:e}"
    );
    Ok(())
}

#[test]
fn euler_steps_bf16_match_diffusers_exactly() -> Result<()> {
    // diffusers: dt (f32, 0-d) takes bf16 by promotion, dt·v is rounded to bf16, the sum is
    // f32 and is rounded to bf16. Every operation is a correctly rounded IEEE operation, so
    // the result is bit-exact; rounding dt·v in f32 instead would change ~10% of elements.
    let (_, inexact) = trajectory("bf16", Dtype::Bfloat16)?;
    ensure!(
        inexact == 0,
        "{inexact} bf16 elements differ from diffusers"
    );
    Ok(())
}
