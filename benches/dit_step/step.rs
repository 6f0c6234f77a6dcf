//! The measured step: inputs at one size, one true-CFG step (two B=1 forwards or one B=2),
//! and its timing, plain or pipelined.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use mlx_fastops::scalar;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::transforms::async_eval;
use mlx_rs::{Array, Dtype, memory, ops, random};
use qwen_dit::{
    QwenImageTransformer, QwenImageTransformerConfig, RopeTables, ScheduleModulation,
    StepModulation,
};
use qwen_image_benches::{image_tokens, median};

use crate::Opts;

/// Deterministic random arrays: N(0, std²) in `dt`, one fresh key per call.
pub(crate) struct Rng {
    pub(crate) seed: u64,
    pub(crate) n: u64,
}

impl Rng {
    pub(crate) fn normal(&mut self, shape: &[i32], std: f32, dt: Dtype) -> Result<Array> {
        self.n += 1;
        let key = random::key(self.seed.wrapping_mul(1_000_003).wrapping_add(self.n))?;
        let a = random::normal::<f32>(shape, 0.0, std, &key)?.as_dtype(dt)?;
        a.eval()?;
        Ok(a)
    }
}

/// Inputs of one step at one image size.
pub(crate) struct Inputs {
    x: Array,
    ctx_cond: Array,
    ctx_uncond: Array,
    sigma: Array,
    ctx2: Array,
    sigma2: Array,
    rope: RopeTables,
    /// Reference pictures' tokens appended after the latents (an edit step).
    pictures: Option<Array>,
    pub(crate) img_tokens: usize,
}

pub(crate) fn inputs(
    cfg: &QwenImageTransformerConfig,
    size: usize,
    txt: usize,
    edit_pictures: usize,
    rng: &mut Rng,
) -> Result<Inputs> {
    let (h, w) = image_tokens(cfg, size, size);
    ensure!(h > 0 && w > 0, "image size {size} is too small");
    let n = h * w;
    let dt = Dtype::Bfloat16;
    let x = rng.normal(&[1, n as i32, cfg.in_channels as i32], 1.0, dt)?;
    let ctx_cond = rng.normal(&[1, txt as i32, cfg.joint_attention_dim as i32], 1.0, dt)?;
    let ctx_uncond = rng.normal(&[1, txt as i32, cfg.joint_attention_dim as i32], 1.0, dt)?;
    let sigma = Array::from_slice(&[0.6f32], &[1]);
    let ctx2 = ops::concatenate(&[&ctx_cond, &ctx_uncond], 0)?;
    let sigma2 = Array::from_slice(&[0.6f32, 0.6], &[2]);
    let grids = vec![(1, h, w); 1 + edit_pictures];
    let rope = RopeTables::new(cfg, &grids, txt)?;
    let pictures = match edit_pictures {
        0 => None,
        k => Some(rng.normal(&[1, (k * n) as i32, cfg.in_channels as i32], 1.0, dt)?),
    };
    mlx_rs::transforms::eval([&ctx2, &sigma, &sigma2, rope.cos(), rope.sin()])?;
    Ok(Inputs {
        x,
        ctx_cond,
        ctx_uncond,
        sigma,
        ctx2,
        sigma2,
        rope,
        pictures,
        img_tokens: n,
    })
}

/// `QwenImagePipeline`'s true-CFG combine with the norm rescale, then the Euler update
/// `x + (σ_next − σ)·v` (σ_next − σ = −0.02).
fn cfg_update(x: &Array, cond: &Array, uncond: &Array, scale: f32) -> Result<Array> {
    let dt = cond.dtype();
    let comb = ops::add(
        uncond,
        ops::multiply(scalar(scale, dt)?, ops::subtract(cond, uncond)?)?,
    )?;
    let norm =
        |a: &Array| -> Result<Array> { Ok(ops::sqrt(ops::sum_axis(ops::square(a)?, -1, true)?)?) };
    let pred = ops::multiply(&comb, ops::divide(norm(cond)?, norm(&comb)?)?)?;
    Ok(ops::add(x, ops::multiply(&pred, scalar(-0.02, dt)?)?)?)
}

/// How a step's B=1 transformer passes are arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Passes {
    /// True CFG, the negative pass ordered after the positive one (`mlx_fastops::depends`),
    /// one evaluation per step: as the pipeline runs it.
    Ordered,
    /// True CFG, the two passes left for MLX to interleave.
    Interleaved,
    /// True CFG, the positive pass's output sent to the GPU (`async_eval`) before the
    /// negative pass is built: two evaluations per step.
    EvalBetween,
    /// CFG off: the positive pass alone and the Euler update (a Lightning step).
    CondOnly,
}

/// One denoising step from latents `x`, lazy: B=1 forwards arranged as `passes` says, or one
/// B=2 forward when `batched`. `modulation`: the step's timestep modulation computed ahead
/// (the pipeline's windows of steps); `None`: computed here, once for both passes.
fn step(
    model: &QwenImageTransformer,
    inp: &Inputs,
    x: &Array,
    batched: bool,
    passes: Passes,
    scale: f32,
    modulation: Option<&StepModulation>,
) -> Result<Array> {
    // An edit step: the pictures' tokens after the latents, their prediction dropped.
    let n = x.dim(1);
    let input = |x: &Array| -> Result<Array> {
        Ok(match &inp.pictures {
            Some(p) => ops::concatenate(&[x, p], 1)?,
            None => x.clone(),
        })
    };
    let noise_part = |v: Array| match &inp.pictures {
        Some(_) => v.index((.., ..n)),
        None => v,
    };
    ensure!(
        !(batched && inp.pictures.is_some()),
        "the batched mode does not run edit steps"
    );
    let (cond, uncond) = if batched {
        let x2 = ops::concatenate(&[x, x], 0)?;
        let v = model.forward(&x2, &inp.ctx2, None, &inp.sigma2, &inp.rope)?;
        let mut p = ops::split_equal(&v, 2, 0)?;
        let u = p.pop().context("split")?;
        (p.pop().context("split")?, Some(u))
    } else {
        // As the pipeline: the timestep modulation computed once for both passes.
        let own;
        let shared = match modulation {
            Some(m) => m,
            None => {
                own = model.modulation(&inp.sigma)?;
                &own
            }
        };
        let cond = model.forward_modulated(
            &input(x)?,
            &inp.ctx_cond,
            None,
            &inp.sigma,
            &inp.rope,
            Some(shared),
        )?;
        let cond = noise_part(cond);
        if passes == Passes::CondOnly {
            (cond, None)
        } else {
            // As the pipeline: the negative pass ordered after the positive one (one pass's
            // activations at a time), unless another arrangement is measured.
            let x_u = match passes {
                Passes::Interleaved => x.clone(),
                Passes::EvalBetween => {
                    async_eval([&cond])?;
                    x.clone()
                }
                _ => mlx_fastops::depends(std::slice::from_ref(x), std::slice::from_ref(&cond))?
                    .pop()
                    .context("depends")?,
            };
            let uncond = model.forward_modulated(
                &input(&x_u)?,
                &inp.ctx_uncond,
                None,
                &inp.sigma,
                &inp.rope,
                Some(shared),
            )?;
            (cond, Some(noise_part(uncond)))
        }
    };
    // The bf16 trap: a strong f32 constant anywhere would turn the whole graph to f32.
    ensure!(
        cond.dtype() == Dtype::Bfloat16
            && uncond.as_ref().is_none_or(|u| u.dtype() == Dtype::Bfloat16),
        "DiT output is {:?}, expected bfloat16 (an f32 constant promoted the graph?)",
        cond.dtype()
    );
    let out = match &uncond {
        Some(u) => cfg_update(x, &cond, u, scale)?,
        // CFG off: the Euler update of the one prediction.
        None => ops::add(x, ops::multiply(&cond, scalar(-0.02, cond.dtype())?)?)?,
    };
    ensure!(
        out.dtype() == Dtype::Bfloat16,
        "step output is {:?}, expected bfloat16",
        out.dtype()
    );
    Ok(out)
}

/// One measured configuration.
pub(crate) struct Row {
    pub(crate) size: usize,
    pub(crate) mode: String,
    pub(crate) kernels: String,
    pub(crate) times_ms: Vec<f64>,
    pub(crate) build_ms: Vec<f64>,
    pub(crate) flops: f64,
    pub(crate) peak_bytes: usize,
}

impl Row {
    pub(crate) fn median(&self) -> f64 {
        median(&self.times_ms)
    }
    pub(crate) fn min(&self) -> f64 {
        self.times_ms.iter().copied().fold(f64::INFINITY, f64::min)
    }
    pub(crate) fn tflops(&self) -> f64 {
        self.flops / (self.median() * 1e-3) / 1e12
    }
}

/// Per-step wall times, per-step graph-build times (host only, before `eval`) and the peak
/// memory over the timed steps.
pub(crate) fn measure(
    model: &QwenImageTransformer,
    inp: &Inputs,
    batched: bool,
    passes: Passes,
    o: &Opts,
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    for _ in 0..o.warmup {
        step(model, inp, &inp.x, batched, passes, o.cfg_scale, None)?.eval()?;
    }
    memory::clear_cache()?;
    memory::reset_peak_memory()?;
    let mut times = Vec::with_capacity(o.iters);
    let mut build = Vec::with_capacity(o.iters);
    for _ in 0..o.iters {
        let t0 = Instant::now();
        let out = step(model, inp, &inp.x, batched, passes, o.cfg_scale, None)?;
        build.push(t0.elapsed().as_secs_f64() * 1e3);
        out.eval()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((times, build, memory::peak_memory()?))
}

/// Steady-state ms per step when each step's graph is built while the GPU still runs the
/// previous one (`async_eval` after each step, as the pipeline's denoising loop does):
/// `iters` chained steps timed together, three times. Each chain takes its steps' timestep
/// modulations from a fresh [`ScheduleModulation`] with `window` steps per call (the
/// pipeline's default [`qwen_dit::MODULATION_WINDOW`]; 1: each step computes its own). Returns (per-step times, peak memory, host ms per step
/// spent building graphs, in `async_eval` — MLX encodes every op's GPU work on the calling
/// thread there, and waits while more than ten command buffers are in flight — and of that
/// the thread's time on a CPU; medians over the timed steps). When the on-CPU share reaches
/// the step time, the GPU waits on the host.
pub(crate) fn measure_pipelined(
    model: &QwenImageTransformer,
    inp: &Inputs,
    window: usize,
    passes: Passes,
    o: &Opts,
) -> Result<(Vec<f64>, usize, HostTime)> {
    let mut build = Vec::new();
    let mut encode = Vec::new();
    let mut encode_cpu = Vec::new();
    let mut chain = |n: usize, record: bool| -> Result<()> {
        let mut x = inp.x.clone();
        let timesteps = vec![inp.sigma.clone(); n];
        let mut mods = ScheduleModulation::new(model, &timesteps).with_window(window);
        for i in 0..n {
            let t0 = Instant::now();
            x = step(
                model,
                inp,
                &x,
                false,
                passes,
                o.cfg_scale,
                Some(mods.get(i)?),
            )?;
            let t1 = Instant::now();
            let c1 = thread_cpu_ms();
            async_eval([&x])?;
            if record {
                build.push((t1 - t0).as_secs_f64() * 1e3);
                encode.push(t1.elapsed().as_secs_f64() * 1e3);
                if let (Some(a), Some(b)) = (c1, thread_cpu_ms()) {
                    encode_cpu.push(b - a);
                }
            }
        }
        x.eval()?;
        Ok(())
    };
    chain(o.warmup.max(2), false)?;
    memory::clear_cache()?;
    memory::reset_peak_memory()?;
    let mut per_step = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        chain(o.iters, true)?;
        per_step.push(t0.elapsed().as_secs_f64() * 1e3 / o.iters as f64);
    }
    Ok((
        per_step,
        memory::peak_memory()?,
        HostTime {
            build: median(&build),
            encode: median(&encode),
            on_cpu: median(&encode_cpu),
        },
    ))
}

/// Host ms per pipelined step (medians): building the step's graph, inside `async_eval`, and
/// of that the thread's time on a CPU.
pub(crate) struct HostTime {
    pub(crate) build: f64,
    pub(crate) encode: f64,
    pub(crate) on_cpu: f64,
}

/// This thread's time on a CPU so far, in ms (Linux `/proc/thread-self/schedstat`; `None`
/// elsewhere): what `async_eval` spends working, as opposed to waiting for the GPU.
fn thread_cpu_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e6)
}

// ---------------------------------------------------------------------------------------
