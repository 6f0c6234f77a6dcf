//! One true-CFG denoising step of the full-size Qwen-Image DiT with random bf16 weights.
//!
//! As `QwenImagePipeline` runs it at batch 1: two forwards (cond + uncond, `--txt` text
//! tokens each, no text mask), the true-CFG combine with its norm rescale, and the Euler
//! update; evaluated once per step. Also, where asked: the same step with CFG batched as one
//! B=2 forward, the step with `mlx-fastops`' plain-MLX references instead of its fused
//! kernels, and a breakdown of one block's time into its GEMMs, attention and elementwise
//! ops at the real shapes (`--profile SIZE`).
//!
//! ```text
//! dit_step [--sizes 512,1024,1328] [--warmup 2] [--iters 5] [--txt 32] [--layers N]
//!          [--no-batched] [--no-reference] [--pipelined] [--profile 1024 | --profile 0] [--tiny]
//!          [--json PATH]
//! ```
//! `--tiny` runs a 2-layer, 32-wide model at 64² and 128² (a CPU smoke test). Prints one
//! table row per (size, mode): median / min ms per step, achieved TFLOP/s (FLOPs counted from
//! the shapes, see `qwen_image_benches::forward_flops`) and MLX's peak memory.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use std::cell::RefCell;

use mlx_rs::error::Exception;
use mlx_rs::transforms::async_eval;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{Array, Dtype, memory, ops, random};
use qwen_dit::{QwenImageTransformer, QwenImageTransformerConfig, RopeTables};
use qwen_image_benches::{forward_flops, image_tokens, median};

const GIB: f64 = (1u64 << 30) as f64;

/// Command-line options.
struct Opts {
    sizes: Vec<usize>,
    warmup: usize,
    iters: usize,
    txt: usize,
    layers: Option<usize>,
    batched: bool,
    reference: bool,
    pipelined: bool,
    profile: Option<usize>,
    tiny: bool,
    json: Option<String>,
    cfg_scale: f32,
    seed: u64,
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        sizes: vec![512, 1024, 1328],
        warmup: 2,
        iters: 5,
        txt: 32,
        layers: None,
        batched: true,
        reference: true,
        pipelined: false,
        profile: Some(1024),
        tiny: false,
        json: None,
        cfg_scale: 4.0,
        seed: 0,
    };
    let mut sizes_given = false;
    let mut profile_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--sizes" => {
                o.sizes = val("--sizes")?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--sizes: comma-separated pixel sizes")?;
                sizes_given = true;
            }
            "--warmup" => o.warmup = val("--warmup")?.parse()?,
            "--iters" => o.iters = val("--iters")?.parse()?,
            "--txt" => o.txt = val("--txt")?.parse()?,
            "--layers" => o.layers = Some(val("--layers")?.parse()?),
            "--cfg-scale" => o.cfg_scale = val("--cfg-scale")?.parse()?,
            "--seed" => o.seed = val("--seed")?.parse()?,
            "--profile" => {
                let p: usize = val("--profile")?.parse()?;
                o.profile = (p > 0).then_some(p);
                profile_given = true;
            }
            "--json" => o.json = Some(val("--json")?),
            "--no-batched" => o.batched = false,
            "--no-reference" => o.reference = false,
            "--pipelined" => o.pipelined = true,
            "--tiny" => o.tiny = true,
            // `cargo bench` passes `--bench`; a positional filter is ignored.
            "--bench" => {}
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => {}
        }
    }
    if o.tiny {
        if !sizes_given {
            o.sizes = vec![64, 128];
        }
        if !profile_given {
            o.profile = Some(128);
        }
    }
    ensure!(o.iters > 0, "--iters must be positive");
    Ok(o)
}

/// The Qwen-Image DiT configuration (diffusers defaults), or a 2-layer toy for `--tiny`.
fn config(o: &Opts) -> QwenImageTransformerConfig {
    let mut c = if o.tiny {
        QwenImageTransformerConfig {
            num_layers: 2,
            attention_head_dim: 16,
            num_attention_heads: 2,
            joint_attention_dim: 32,
            axes_dims_rope: vec![4, 6, 6],
            ..Default::default()
        }
    } else {
        QwenImageTransformerConfig::default()
    };
    if let Some(l) = o.layers {
        c.num_layers = l;
    }
    c
}

/// A scalar in `dt` (a strong f32 constant would promote the bf16 graph).
fn scalar(v: f32, dt: Dtype) -> Result<Array> {
    Ok(Array::from_f32(v).as_dtype(dt)?)
}

/// Deterministic random arrays: N(0, std²) in `dt`, one fresh key per call.
struct Rng {
    seed: u64,
    n: u64,
}

impl Rng {
    fn normal(&mut self, shape: &[i32], std: f32, dt: Dtype) -> Result<Array> {
        self.n += 1;
        let key = random::key(self.seed.wrapping_mul(1_000_003).wrapping_add(self.n))?;
        let a = random::normal::<f32>(shape, 0.0, std, &key)?.as_dtype(dt)?;
        a.eval()?;
        Ok(a)
    }
}

/// Inputs of one step at one image size.
struct Inputs {
    x: Array,
    ctx_cond: Array,
    ctx_uncond: Array,
    sigma: Array,
    ctx2: Array,
    sigma2: Array,
    rope: RopeTables,
    img_tokens: usize,
}

fn inputs(
    cfg: &QwenImageTransformerConfig,
    size: usize,
    txt: usize,
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
    let rope = RopeTables::new(cfg, &[(1, h, w)], txt)?;
    mlx_rs::transforms::eval([&ctx2, &sigma, &sigma2, rope.cos(), rope.sin()])?;
    Ok(Inputs {
        x,
        ctx_cond,
        ctx_uncond,
        sigma,
        ctx2,
        sigma2,
        rope,
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

/// One denoising step from latents `x`, lazy: two B=1 forwards, or one B=2 forward when
/// `batched`.
fn step(
    model: &QwenImageTransformer,
    inp: &Inputs,
    x: &Array,
    batched: bool,
    scale: f32,
) -> Result<Array> {
    let (cond, uncond) = if batched {
        let x2 = ops::concatenate(&[x, x], 0)?;
        let v = model.forward(&x2, &inp.ctx2, None, &inp.sigma2, &inp.rope)?;
        let mut p = ops::split_equal(&v, 2, 0)?;
        let u = p.pop().context("split")?;
        (p.pop().context("split")?, u)
    } else {
        (
            model.forward(x, &inp.ctx_cond, None, &inp.sigma, &inp.rope)?,
            model.forward(x, &inp.ctx_uncond, None, &inp.sigma, &inp.rope)?,
        )
    };
    // The bf16 trap: a strong f32 constant anywhere would turn the whole graph to f32.
    ensure!(
        cond.dtype() == Dtype::Bfloat16 && uncond.dtype() == Dtype::Bfloat16,
        "DiT output is {:?}, expected bfloat16 (an f32 constant promoted the graph?)",
        cond.dtype()
    );
    let out = cfg_update(x, &cond, &uncond, scale)?;
    ensure!(
        out.dtype() == Dtype::Bfloat16,
        "step output is {:?}, expected bfloat16",
        out.dtype()
    );
    Ok(out)
}

/// One measured configuration.
struct Row {
    size: usize,
    mode: &'static str,
    kernels: &'static str,
    times_ms: Vec<f64>,
    build_ms: Vec<f64>,
    flops: f64,
    peak_bytes: usize,
}

impl Row {
    fn median(&self) -> f64 {
        median(&self.times_ms)
    }
    fn min(&self) -> f64 {
        self.times_ms.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn tflops(&self) -> f64 {
        self.flops / (self.median() * 1e-3) / 1e12
    }
}

/// Per-step wall times, per-step graph-build times (host only, before `eval`) and the peak
/// memory over the timed steps.
fn measure(
    model: &QwenImageTransformer,
    inp: &Inputs,
    batched: bool,
    o: &Opts,
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    for _ in 0..o.warmup {
        step(model, inp, &inp.x, batched, o.cfg_scale)?.eval()?;
    }
    memory::clear_cache()?;
    memory::reset_peak_memory()?;
    let mut times = Vec::with_capacity(o.iters);
    let mut build = Vec::with_capacity(o.iters);
    for _ in 0..o.iters {
        let t0 = Instant::now();
        let out = step(model, inp, &inp.x, batched, o.cfg_scale)?;
        build.push(t0.elapsed().as_secs_f64() * 1e3);
        out.eval()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((times, build, memory::peak_memory()?))
}

/// Steady-state ms per step when each step's graph is built while the GPU still runs the
/// previous one (`async_eval` after each step, as a denoising loop can do): `iters` chained
/// steps timed together, three times. Returns (per-step times, peak memory).
fn measure_pipelined(
    model: &QwenImageTransformer,
    inp: &Inputs,
    o: &Opts,
) -> Result<(Vec<f64>, usize)> {
    let chain = |n: usize| -> Result<()> {
        let mut x = inp.x.clone();
        for _ in 0..n {
            x = step(model, inp, &x, false, o.cfg_scale)?;
            async_eval([&x])?;
        }
        x.eval()?;
        Ok(())
    };
    chain(o.warmup.max(2))?;
    memory::clear_cache()?;
    memory::reset_peak_memory()?;
    let mut per_step = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        chain(o.iters)?;
        per_step.push(t0.elapsed().as_secs_f64() * 1e3 / o.iters as f64);
    }
    Ok((per_step, memory::peak_memory()?))
}

// ---------------------------------------------------------------------------------------
// Profile: one block's pieces at the real shapes.

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gemm,
    Attention,
    Elementwise,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gemm => "GEMM",
            Kind::Attention => "attention",
            Kind::Elementwise => "elementwise",
        }
    }
}

struct Piece {
    name: String,
    kind: Kind,
    /// Times the piece runs per block (0: a comparison row, not part of the sum).
    per_block: f64,
    ms: f64,
    flops: f64,
    bytes: f64,
}

/// Median ms of one application of `f`, chained `k` times inside one evaluation (so the
/// per-eval synchronisation is amortised), over `reps` evaluations after one warm-up.
fn time_chain(
    k: usize,
    reps: usize,
    x0: &Array,
    f: &dyn Fn(usize, &Array) -> Result<Array>,
) -> Result<f64> {
    let run = || -> Result<f64> {
        let t0 = Instant::now();
        let mut y = x0.clone();
        for i in 0..k {
            y = f(i, &y)?;
        }
        y.eval()?;
        Ok(t0.elapsed().as_secs_f64() * 1e3 / k as f64)
    };
    run()?;
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        ts.push(run()?);
    }
    Ok(median(&ts))
}

/// GELU-tanh written with plain MLX ops (as `mlx_fastops::gelu_tanh`), for `compile`.
fn gelu_body(x: &Array) -> std::result::Result<Array, Exception> {
    let dt = x.dtype();
    let c = |v: f32| Array::from_f32(v).as_dtype(dt);
    let inner = ops::multiply(
        x,
        ops::add(ops::multiply(ops::square(x)?, c(0.044_715)?)?, c(1.0)?)?,
    )?;
    let t = ops::tanh(ops::multiply(
        inner,
        c((2.0f32 / std::f32::consts::PI).sqrt())?,
    )?)?;
    ops::multiply(ops::multiply(x, c(0.5)?)?, ops::add(t, c(1.0)?)?)
}

fn linear(x: &Array, w: &Array, b: &Array) -> Result<Array> {
    Ok(ops::addmm(b, x, w.t(), None, None)?)
}

/// Weights `(dout, din)` with biases, `count` distinct copies (so chained GEMMs do not hit
/// L2-resident weights).
fn weights(rng: &mut Rng, count: usize, din: usize, dout: usize) -> Result<Vec<(Array, Array)>> {
    let std = 1.0 / (din as f32).sqrt();
    (0..count)
        .map(|_| {
            Ok((
                rng.normal(&[dout as i32, din as i32], std, Dtype::Bfloat16)?,
                rng.normal(&[dout as i32], 0.02, Dtype::Bfloat16)?,
            ))
        })
        .collect()
}

fn profile(
    cfg: &QwenImageTransformerConfig,
    size: usize,
    o: &Opts,
    fwd_ms: Option<f64>,
    rng: &mut Rng,
) -> Result<String> {
    let dt = Dtype::Bfloat16;
    let (h, w) = image_tokens(cfg, size, size);
    let (n, t) = (h * w, o.txt);
    let s = n + t;
    let (d, f) = (cfg.inner_dim(), cfg.ffn_dim());
    let (heads, hd) = (cfg.num_attention_heads, cfg.attention_head_dim);
    let (ti, si, di, fi, hi, hdi) = (
        t as i32,
        s as i32,
        d as i32,
        f as i32,
        heads as i32,
        hd as i32,
    );
    let (k, reps) = (10, 5);
    let eb = 2.0; // bytes per bf16 element
    let mut pieces: Vec<Piece> = Vec::new();
    let mut add = |name: &str, kind: Kind, per_block: f64, ms: f64, flops: f64, bytes: f64| {
        pieces.push(Piece {
            name: name.to_string(),
            kind,
            per_block,
            ms,
            flops,
            bytes,
        });
    };

    // GEMMs: 4 distinct weight sets cycled (D×D: 4 × 18.9 MB > L2).
    let wdd = weights(rng, 4, d, d)?;
    let wup = weights(rng, 2, d, f)?;
    let wdown = weights(rng, 2, f, d)?;
    let wmod = weights(rng, 2, d, 6 * d)?;
    let wqkv = weights(rng, 2, d, 3 * d)?;
    for (label, rows) in [("img", n), ("txt", t)] {
        let x = rng.normal(&[1, rows as i32, di], 1.0, dt)?;
        let ms = time_chain(k, reps, &x, &|i, x| {
            let (w, b) = &wdd[i % wdd.len()];
            linear(x, w, b)
        })?;
        let r = rows as f64;
        add(
            &format!("{label} Q/K/V/out proj  ({rows}×{d}·{d}×{d})"),
            Kind::Gemm,
            4.0,
            ms,
            2.0 * r * (d * d) as f64,
            eb * (2.0 * r * d as f64 + (d * d) as f64),
        );
        // Comparison: Q, K, V as one GEMM against concatenated weights (3 launches → 1).
        let ms = time_chain(k, reps, &x, &|i, x| {
            let (w, b) = &wqkv[i % wqkv.len()];
            Ok(ops::split_equal(&linear(x, w, b)?, 3, -1)?.swap_remove(0))
        })?;
        add(
            &format!(
                "  (Q/K/V fused as one {rows}×{d}·{d}×{} GEMM, per Q/K/V)",
                3 * d
            ),
            Kind::Gemm,
            0.0,
            ms / 3.0,
            2.0 * r * (d * d) as f64,
            eb * (r * d as f64 / 3.0 + r * d as f64 + (d * d) as f64),
        );
        let ms = time_chain(k, reps, &x, &|i, x| {
            let (w1, b1) = &wup[i % 2];
            let (w2, b2) = &wdown[i % 2];
            linear(&linear(x, w1, b1)?, w2, b2)
        })?;
        add(
            &format!("{label} FFN up+down     ({rows}×{d}→{f}→{d})"),
            Kind::Gemm,
            1.0,
            ms,
            4.0 * r * (d * f) as f64,
            eb * (2.0 * r * (d + f) as f64 + 2.0 * (d * f) as f64),
        );
    }
    {
        let x = rng.normal(&[1, di], 1.0, dt)?;
        let ms = time_chain(k, reps, &x, &|i, x| {
            let (w, b) = &wmod[i % 2];
            Ok(ops::split_equal(&linear(x, w, b)?, 6, -1)?.swap_remove(0))
        })?;
        add(
            &format!("img_mod/txt_mod      (1×{d}·{d}×{})", 6 * d),
            Kind::Gemm,
            2.0,
            ms,
            2.0 * (6 * d * d) as f64,
            eb * (6 * d * d) as f64,
        );
    }
    drop((wdd, wup, wdown, wmod, wqkv));

    // Attention.
    let scale = 1.0 / (hd as f32).sqrt();
    let attn_flops = 4.0 * (s * s * d) as f64;
    let attn_bytes = eb * 4.0 * (s * d) as f64;
    {
        let q = rng.normal(&[1, hi, si, hdi], 1.0, dt)?;
        let kk = rng.normal(&[1, hi, si, hdi], 1.0, dt)?;
        let v = rng.normal(&[1, hi, si, hdi], 1.0, dt)?;
        let ms = time_chain(k, reps, &q, &|_, q| {
            Ok(mlx_fastops::sdpa(q, &kk, &v, scale, None)?)
        })?;
        add(
            &format!("SDPA, contiguous (1×{heads}×{s}×{hd})"),
            Kind::Attention,
            0.0,
            ms,
            attn_flops,
            attn_bytes,
        );
        // As the block calls it: (B, S, H, hd) inputs transposed to (B, H, S, hd), output
        // transposed back and flattened to (B, S, D).
        let perm = [0, 2, 1, 3];
        let q4 = rng.normal(&[1, si, hi, hdi], 1.0, dt)?;
        let k4 = rng.normal(&[1, si, hi, hdi], 1.0, dt)?;
        let v4 = rng.normal(&[1, si, hi, hdi], 1.0, dt)?;
        let ms = time_chain(k, reps, &q4, &|_, q| {
            let o = mlx_fastops::sdpa(
                &q.transpose_axes(&perm)?,
                &k4.transpose_axes(&perm)?,
                &v4.transpose_axes(&perm)?,
                scale,
                None,
            )?;
            Ok(o.transpose_axes(&perm)?
                .reshape(&[1, si, di])?
                .reshape(&[1, si, hi, hdi])?)
        })?;
        add(
            "SDPA as the block calls it (transposes + out reshape)",
            Kind::Attention,
            1.0,
            ms,
            attn_flops,
            attn_bytes,
        );
    }

    // Elementwise / normalisation.
    for (label, rows) in [("img", n), ("txt", t)] {
        let r = rows as i32;
        let x = rng.normal(&[1, r, di], 1.0, dt)?;
        let shift = rng.normal(&[1, di], 0.5, dt)?;
        let sc = rng.normal(&[1, di], 0.5, dt)?;
        let nd = (rows * d) as f64;
        let ms = time_chain(k, reps, &x, &|_, x| {
            Ok(mlx_fastops::layer_norm_modulate(x, &shift, &sc, 1e-6)?)
        })?;
        add(
            &format!("{label} LayerNorm·(1+scale)+shift, fused"),
            Kind::Elementwise,
            2.0,
            ms,
            0.0,
            eb * 2.0 * nd,
        );
        let ms = time_chain(k, reps, &x, &|_, x| {
            Ok(mlx_fastops::reference::layer_norm_modulate(
                x, &shift, &sc, 1e-6,
            )?)
        })?;
        add(
            "  (same, plain-MLX reference)",
            Kind::Elementwise,
            0.0,
            ms,
            0.0,
            eb * 2.0 * nd,
        );
        let y = rng.normal(&[1, r, di], 1.0, dt)?;
        let gate = rng.normal(&[1, di], 0.1, dt)?;
        let ms = time_chain(k, reps, &x, &|_, x| {
            Ok(mlx_fastops::gated_residual(x, &gate, &y)?)
        })?;
        add(
            &format!("{label} x + gate·y, fused"),
            Kind::Elementwise,
            2.0,
            ms,
            0.0,
            eb * 3.0 * nd,
        );
        let ms = time_chain(k, reps, &x, &|_, x| {
            Ok(mlx_fastops::reference::gated_residual(x, &gate, &y)?)
        })?;
        add(
            "  (same, plain-MLX reference)",
            Kind::Elementwise,
            0.0,
            ms,
            0.0,
            eb * 3.0 * nd,
        );
        let x4 = rng.normal(&[1, r, hi, hdi], 1.0, dt)?;
        let wn = rng.normal(&[hdi], 1.0, dt)?;
        let ms = time_chain(k, reps, &x4, &|_, x| {
            Ok(mlx_fastops::rms_norm(x, &wn, 1e-6)?)
        })?;
        add(
            &format!("{label} per-head RMSNorm (q, k)"),
            Kind::Elementwise,
            2.0,
            ms,
            0.0,
            eb * 2.0 * nd,
        );
        let xf = rng.normal(&[1, r, fi], 1.0, dt)?;
        let ms = time_chain(k, reps, &xf, &|_, x| Ok(mlx_fastops::gelu_tanh(x)?))?;
        add(
            &format!("{label} GELU-tanh ({rows}×{f})"),
            Kind::Elementwise,
            1.0,
            ms,
            0.0,
            eb * 2.0 * (rows * f) as f64,
        );
    }
    {
        let sd = (s * d) as f64;
        let x4 = rng.normal(&[1, si, hi, hdi], 1.0, dt)?;
        let ms = time_chain(k, reps, &x4, &|_, x| {
            let p = ops::split_at_indices(x, &[ti], 1)?;
            Ok(ops::concatenate(&[&p[0], &p[1]], 1)?)
        })?;
        add(
            "concat [txt, img] (q, k, v)",
            Kind::Elementwise,
            3.0,
            ms,
            0.0,
            eb * 2.0 * sd,
        );
        let rope = RopeTables::new(cfg, &[(1, h, w)], t)?;
        let ms = time_chain(k, reps, &x4, &|_, x| {
            Ok(mlx_fastops::apply_rope(x, rope.cos(), rope.sin())?)
        })?;
        add(
            "RoPE (q, k), fused",
            Kind::Elementwise,
            2.0,
            ms,
            0.0,
            eb * 2.0 * sd,
        );
        let ms = time_chain(k, reps, &x4, &|_, x| {
            Ok(mlx_fastops::reference::apply_rope(
                x,
                rope.cos(),
                rope.sin(),
            )?)
        })?;
        add(
            "  (same, plain-MLX reference)",
            Kind::Elementwise,
            0.0,
            ms,
            0.0,
            eb * 2.0 * sd,
        );
    }
    // What one pass would cost: the same GELU through MLX's compiler (one fused kernel).
    {
        let xf = rng.normal(&[1, n as i32, fi], 1.0, dt)?;
        let compiled = RefCell::new(compile(|x: &Array| gelu_body(x), true));
        let ms = time_chain(k, reps, &xf, &|_, x| Ok((*compiled.borrow_mut())(x)?))?;
        add(
            "  (img GELU through mlx compile: one fused kernel)",
            Kind::Elementwise,
            0.0,
            ms,
            0.0,
            eb * 2.0 * (n * f) as f64,
        );
    }
    // The per-op floor: a chain of 200 tiny adds (launch + dispatch, no data).
    {
        let x = rng.normal(&[1, 32], 1.0, dt)?;
        let eps = scalar(1e-3, dt)?;
        let ms = time_chain(200, reps, &x, &|_, x| Ok(ops::add(x, &eps)?))?;
        add(
            "tiny op (1×32 add): per-op launch/dispatch floor",
            Kind::Elementwise,
            0.0,
            ms,
            0.0,
            0.0,
        );
    }
    // Elementwise ops run per forward whose arithmetic is negligible but that the block
    // still launches: the modulation split and the output split are views (no kernel).

    // Report.
    let layers = cfg.num_layers as f64;
    let mut out = String::new();
    writeln!(
        out,
        "\n## profile at {size}² (B=1, {n} image + {t} text tokens), one block's pieces timed alone"
    )?;
    writeln!(
        out,
        "(wall time per piece, chained {k}× per eval: each includes 1/{k} of the per-eval overhead \
         (H100, 2026-11-24: ~0.05-0.07 ms per piece), so small ops read high and the pieces sum to \
         more than the forward. Pure kernel time: ncu + scripts/bench/ncu_summary.py)"
    )?;
    writeln!(
        out,
        "{:<58} {:>5} {:>9} {:>9} {:>8} {:>8} {:>7}",
        "piece", "×blk", "ms each", "ms/fwd", "TFLOP/s", "GB/s", "% fwd"
    )?;
    let mut by_kind = [
        (Kind::Gemm, 0.0f64),
        (Kind::Attention, 0.0),
        (Kind::Elementwise, 0.0),
    ];
    for p in &pieces {
        let per_fwd = p.ms * p.per_block * layers;
        for (kk, acc) in by_kind.iter_mut() {
            if *kk == p.kind {
                *acc += per_fwd;
            }
        }
        let tf = if p.flops > 0.0 {
            format!("{:.0}", p.flops / (p.ms * 1e-3) / 1e12)
        } else {
            "-".into()
        };
        let gbs = p.bytes / (p.ms * 1e-3) / 1e9;
        let pct = fwd_ms
            .map(|f| format!("{:.1}", 100.0 * per_fwd / f))
            .unwrap_or_else(|| "-".into());
        let blk = if p.per_block > 0.0 {
            format!("{}", p.per_block)
        } else {
            "cmp".into()
        };
        let per_fwd_s = if p.per_block > 0.0 {
            format!("{per_fwd:.2}")
        } else {
            "-".into()
        };
        writeln!(
            out,
            "{:<58} {:>5} {:>9.4} {:>9} {:>8} {:>8.0} {:>7}",
            p.name,
            blk,
            p.ms,
            per_fwd_s,
            tf,
            gbs,
            if p.per_block > 0.0 { pct } else { "-".into() }
        )?;
    }
    let total: f64 = by_kind.iter().map(|(_, v)| v).sum();
    writeln!(
        out,
        "\nper forward ({} blocks; head/tail layers not included):",
        cfg.num_layers
    )?;
    for (kk, v) in by_kind {
        let pct = fwd_ms
            .map(|f| format!(" ({:.1}% of the measured forward)", 100.0 * v / f))
            .unwrap_or_default();
        writeln!(out, "  {:<12} {:>9.2} ms{pct}", kk.name(), v)?;
    }
    writeln!(out, "  {:<12} {:>9.2} ms", "sum", total)?;
    if let Some(fw) = fwd_ms {
        writeln!(
            out,
            "  measured forward (half a CFG step): {fw:.2} ms; difference {:.2} ms ({:.1}%; > 0: launch gaps and ops not listed, < 0: host-bound pieces that overlap with the GPU in the forward)",
            fw - total,
            100.0 * (fw - total) / fw
        )?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------

fn main() -> Result<()> {
    let o = parse_opts()?;
    let cfg = config(&o);
    let dt = Dtype::Bfloat16;
    println!(
        "qwen-image-rs dit_step: backend {} (fused path {:?}), cuda available {}",
        mlx_fastops::current_backend(),
        mlx_fastops::fused_path(),
        mlx_fastops::cuda_available()
    );
    println!(
        "config: {} layers, {} heads × {}, joint dim {}, in {}, out {}, axes {:?}; {} params; text tokens {}",
        cfg.num_layers,
        cfg.num_attention_heads,
        cfg.attention_head_dim,
        cfg.joint_attention_dim,
        cfg.in_channels,
        cfg.out_channels(),
        cfg.axes_dims_rope,
        cfg.param_count(),
        o.txt
    );
    let t0 = Instant::now();
    let model = QwenImageTransformer::random(cfg.clone(), dt, o.seed)?;
    println!(
        "random bf16 weights built in {:.1} s; active memory {:.2} GiB",
        t0.elapsed().as_secs_f64(),
        memory::active_memory()? as f64 / GIB
    );
    let mut rng = Rng {
        seed: o.seed + 1,
        n: 0,
    };

    // (label, CFG batched, reference kernels, pipelined)
    let mut modes: Vec<(&'static str, bool, bool, bool)> = vec![("2×B=1", false, false, false)];
    if o.batched {
        modes.push(("B=2", true, false, false));
    }
    if o.pipelined {
        modes.push(("2×B=1 pipelined", false, false, true));
    }
    if o.reference {
        modes.push(("2×B=1", false, true, false));
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut fwd_ms_at_profile = None;
    for &size in &o.sizes {
        let inp = inputs(&cfg, size, o.txt, &mut rng)?;
        let fl = forward_flops(&cfg, 1, inp.img_tokens, o.txt)
            .scaled(2.0)
            .total();
        for &(mode, batched, reference, pipelined) in &modes {
            mlx_fastops::set_force_reference(reference);
            let (times_ms, build_ms, peak) = if pipelined {
                let (t, p) = measure_pipelined(&model, &inp, &o)?;
                (t, Vec::new(), p)
            } else {
                measure(&model, &inp, batched, &o)
                    .with_context(|| format!("{size}² {mode} reference={reference}"))?
            };
            mlx_fastops::set_force_reference(false);
            let row = Row {
                size,
                mode,
                kernels: if reference { "reference" } else { "fused" },
                times_ms,
                build_ms,
                flops: fl,
                peak_bytes: peak,
            };
            println!(
                "{size:>5}² {mode:<15} {:<9} median {:>8.1} ms  min {:>8.1} ms  {:>6.1} TFLOP/s  peak {:>6.2} GiB  graph build {:.1} ms  [{}]",
                row.kernels,
                row.median(),
                row.min(),
                row.tflops(),
                peak as f64 / GIB,
                median(&row.build_ms),
                row.times_ms
                    .iter()
                    .map(|t| format!("{t:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if Some(size) == o.profile && !batched && !reference && !pipelined {
                fwd_ms_at_profile = Some(row.median() / 2.0);
            }
            rows.push(row);
        }
        drop(inp);
        memory::clear_cache()?;
    }

    let prof = match o.profile {
        Some(size) => Some(profile(&cfg, size, &o, fwd_ms_at_profile, &mut rng)?),
        None => None,
    };

    println!(
        "\n## one true-CFG step, qwen-image-rs (MLX), bf16, {} text tokens, {} iters after {} warm-up",
        o.txt, o.iters, o.warmup
    );
    println!(
        "| size | CFG | kernels | ms/step (median) | min | TFLOP/s | peak GiB | graph build ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {}² | {} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} |",
            r.size,
            r.mode,
            r.kernels,
            r.median(),
            r.min(),
            r.tflops(),
            r.peak_bytes as f64 / GIB,
            median(&r.build_ms)
        );
    }
    if let Some(p) = &prof {
        println!("{p}");
    }
    if let Some(path) = &o.json {
        let mut js = String::from("[\n");
        for (i, r) in rows.iter().enumerate() {
            let times: Vec<String> = r.times_ms.iter().map(|t| format!("{t:.3}")).collect();
            writeln!(
                js,
                "  {{\"impl\": \"mlx\", \"size\": {}, \"mode\": \"{}\", \"kernels\": \"{}\", \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"tflops\": {:.2}, \"flops_per_step\": {:.6e}, \"peak_bytes\": {}, \"graph_build_ms\": {:.3}, \"times_ms\": [{}]}}{}",
                r.size,
                r.mode,
                r.kernels,
                r.median(),
                r.min(),
                r.tflops(),
                r.flops,
                r.peak_bytes,
                median(&r.build_ms),
                times.join(", "),
                if i + 1 < rows.len() { "," } else { "" }
            )?;
        }
        js.push_str("]\n");
        std::fs::write(path, js).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
