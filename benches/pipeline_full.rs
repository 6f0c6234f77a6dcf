//! The whole Qwen-Image pipeline with random full-size weights: text encode (prompt and
//! negative prompt), true-CFG denoising, VAE decode, as `QwenImagePipeline::generate_with`
//! runs them, with its memory staging (the ~14 GiB text encoder is built, run and freed before
//! the ~38 GiB transformer is built; the transformer is freed before the VAE is built). Prints
//! per-phase time and MLX peak memory, per-step times, and a summary table.
//!
//! ```text
//! pipeline_full [--size 1024 | --size 1664x928] [--steps 20] [--runs 2] [--cfg-scale 4]
//!               [--prompt S] [--negative-prompt S] [--dtype bf16|f32] [--seed N]
//!               [--json PATH] [--tiny]
//! ```
//! Weights are random (built in memory: the "build" phases stand in for loading a checkpoint
//! and say nothing about disk speed); the text goes through the small fixture tokenizer
//! (byte-level pieces: more tokens per word than Qwen's real vocabulary, and a 95-token
//! template prefix instead of 34), so the text encoder sees a few dozen more tokens than it
//! would — at most a few ms at this size. Every run rebuilds all components (so each run
//! stages memory as a first generation does); the first run also pays one-time costs (kernel
//! JIT, allocator growth), the last run is the one summarised.
//!
//! Step times are from one step's completion to the next (the loop builds step i+1's graph
//! before waiting for step i): on a GPU-bound run they are the device time per step; on a
//! host-bound one (`--tiny` on a CPU) the first step carries two graph builds and the last
//! almost none. Their sum is the loop's wall time.
//!
//! `--tiny`: 2-layer components at 128², f32, for a CPU smoke run. `--edit`: a
//! Qwen-Image-Edit run (one random picture of the output's size; the vision tower and the
//! VAE encode are timed in "encode" and "VAE encode").

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use qwen_image::ComputeDtype;
use qwen_image::{
    Event, GenerateRequest, Lora, LoraSource, Noise, PipelineOptions, QwenImagePipeline,
    SchedulerOverrides, Timings,
};
use qwen_image_benches::components::{
    fixture_tokenizer_dir, full_size_configs, random_builders, text_param_count, tiny_configs,
    with_edit_encoder,
};
use qwen_image_benches::median;
use qwen_text_encoder::{PROMPT_TEMPLATE, QwenTokenizer, template_drop_index};

const GIB: f64 = (1u64 << 30) as f64;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "pipeline_full",
    about = "The whole pipeline with random full-size weights"
)]
struct Opts {
    /// Image size: N (square) or WxH pixels [default: 1024; 128 with --tiny].
    #[arg(long, value_parser = parse_size)]
    size: Option<(usize, usize)>,
    /// Denoising steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Runs (every run rebuilds all components; the last is summarised).
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// True CFG scale.
    #[arg(long, default_value_t = 4.0)]
    cfg_scale: f32,
    /// The prompt.
    #[arg(
        long,
        default_value = "A red fox sitting in fresh snow at dawn, soft watercolor, pastel colors"
    )]
    prompt: String,
    /// The negative prompt.
    #[arg(long, default_value = " ")]
    negative_prompt: String,
    /// Compute dtype: f32, bf16 or f16 [default: bf16; f32 with --tiny].
    #[arg(long)]
    dtype: Option<ComputeDtype>,
    /// Seed of the weights and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the summary as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<std::path::PathBuf>,
    /// 2-layer components at 128², f32 (CPU smoke run).
    #[arg(long)]
    tiny: bool,
    /// Merge a random LoRA of this rank into every Linear of the transformer (bf16 tensors in
    /// memory, in diffusers' key layout, alpha = rank); its merge shows in "build transformer".
    #[arg(long, value_name = "R")]
    lora_rank: Option<usize>,
    /// Bounds the denoising's activations to this many GiB above what is resident (MLX's
    /// memory limit while denoising) [default: the pipeline's, ActivationBudget::Auto].
    #[arg(long, value_name = "GIB")]
    activation_budget_gib: Option<f64>,
    /// With --lora-rank: write the random LoRA to a safetensors file first (not timed) and
    /// load it from there, as a LoRA file is loaded.
    #[arg(long, requires = "lora_rank")]
    lora_file: bool,
    /// img2img from a random picture at this strength (the VAE encode is timed).
    #[arg(long, value_name = "STRENGTH")]
    img2img: Option<f64>,
    /// A Qwen-Image-Edit run (QwenImageEditPipeline) of one random picture of the output's
    /// size: the vision tower reads it, the VAE encodes it, the DiT sees its tokens after the
    /// noise's.
    #[arg(long, conflicts_with = "img2img")]
    edit: bool,
    /// The Qwen-Image-Lightning recipe: the Lightning scheduler overrides and no CFG (pass
    /// `--steps 8` or 4).
    #[arg(long)]
    lightning: bool,
    #[command(flatten)]
    cargo: qwen_image_benches::CargoBenchArgs,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let num = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v}: {e}"));
    match s.split_once(['x', 'X']) {
        Some((w, h)) => Ok((num(w)?, num(h)?)),
        None => num(s).map(|v| (v, v)),
    }
}

impl Opts {
    fn width_height(&self) -> (usize, usize) {
        self.size
            .unwrap_or(if self.tiny { (128, 128) } else { (1024, 1024) })
    }

    fn dtype(&self) -> ComputeDtype {
        self.dtype.unwrap_or(if self.tiny {
            ComputeDtype::F32
        } else {
            ComputeDtype::Bf16
        })
    }
}

/// Text tokens the DiT sees for `prompt` (template applied, prefix dropped), with the
/// tokenizer the bench uses.
fn text_tokens(tokenizer: &QwenTokenizer, prompt: &str) -> Result<usize> {
    let drop = template_drop_index(tokenizer)?;
    let text = PROMPT_TEMPLATE.replace("{}", prompt);
    Ok(tokenizer.encode(&text)?.len().saturating_sub(drop))
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Per-step statistics in ms: (median, mean, mean without the first step, min, max).
fn step_stats(t: &Timings) -> (f64, f64, f64, f64, f64) {
    let v: Vec<f64> = t.step_times.iter().map(|d| ms(*d)).collect();
    let mean = |x: &[f64]| {
        if x.is_empty() {
            f64::NAN
        } else {
            x.iter().sum::<f64>() / x.len() as f64
        }
    };
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&v), mean(&v), mean(&v[1.min(v.len())..]), min, max)
}

fn phase_rows(t: &Timings) -> Vec<(&'static str, f64, f64)> {
    [
        ("build text encoder (random)", t.load_text_encoder),
        ("text encode (prompt + negative)", t.encode),
        (
            "VAE encode of the init image / edit pictures",
            t.encode_image,
        ),
        ("build transformer (random)", t.load_transformer),
        ("denoise", t.denoise),
        ("build VAE (random)", t.load_vae),
        ("VAE decode", t.decode),
    ]
    .into_iter()
    .map(|(n, p)| (n, ms(p.time), p.peak_memory as f64 / GIB))
    .collect()
}

/// A random LoRA in diffusers' layout on every Linear of the transformer: bf16 `lora_A`
/// N(0, 1/in), `lora_B` N(0, 0.01²), evaluated.
fn random_lora(cfg: &qwen_dit::QwenImageTransformerConfig, rank: usize, seed: u64) -> Result<Lora> {
    let mut tensors = std::collections::BTreeMap::new();
    let mut key = mlx_rs::random::key(seed.wrapping_add(77))?;
    for (path, din, dout) in cfg.linear_layers() {
        let (k1, rest) = mlx_rs::random::split(&key, 2)?;
        let (k2, k3) = mlx_rs::random::split(&rest, 2)?;
        key = k3;
        let (r, din, dout) = (rank as i32, din as i32, dout as i32);
        let a = mlx_rs::random::normal::<f32>(&[r, din], 0.0, 1.0 / (din as f32).sqrt(), &k1)?
            .as_dtype(mlx_rs::Dtype::Bfloat16)?;
        let b = mlx_rs::random::normal::<f32>(&[dout, r], 0.0, 0.01, &k2)?
            .as_dtype(mlx_rs::Dtype::Bfloat16)?;
        mlx_rs::transforms::eval([&a, &b])?;
        tensors.insert(format!("transformer.{path}.lora_A.weight"), a);
        tensors.insert(format!("transformer.{path}.lora_B.weight"), b);
    }
    Ok(Lora {
        source: LoraSource::Tensors {
            name: format!("random rank-{rank}"),
            tensors,
            metadata: Default::default(),
        },
        scale: 1.0,
    })
}

fn main() -> Result<()> {
    let o = Opts::parse();
    let (width, height) = o.width_height();
    let dtype = o.dtype();
    let configs = if o.tiny {
        tiny_configs()
    } else {
        full_size_configs()
    };
    let tok_dir = fixture_tokenizer_dir();
    let tokenizer = QwenTokenizer::from_dir(&tok_dir)
        .with_context(|| format!("tokenizer {}", tok_dir.display()))?;
    let (t_cond, t_neg) = (
        text_tokens(&tokenizer, &o.prompt)?,
        text_tokens(&tokenizer, &o.negative_prompt)?,
    );
    println!(
        "qwen-image-rs pipeline_full: backend {} (fused path {:?}), cuda available {}",
        mlx_fastops::current_backend(),
        mlx_fastops::fused_path(),
        mlx_fastops::cuda_available()
    );
    let (dit, text, vae) = (&configs.transformer, &configs.text, &configs.vae);
    println!(
        "DiT: {} layers, {} heads × {}, joint dim {} ({:.2} B params); text model: hidden {}, {} layers, {}/{} heads, MLP {}, vocab {} ({:.2} B params); VAE: base_dim {}, z {}, dim_mult {:?}, {} res blocks",
        dit.num_layers,
        dit.num_attention_heads,
        dit.attention_head_dim,
        dit.joint_attention_dim,
        dit.param_count() as f64 / 1e9,
        text.hidden_size,
        text.num_hidden_layers,
        text.num_attention_heads,
        text.num_key_value_heads,
        text.intermediate_size,
        text.vocab_size,
        text_param_count(text) as f64 / 1e9,
        vae.base_dim,
        vae.z_dim,
        vae.dim_mult,
        vae.num_res_blocks
    );
    println!(
        "request: {}×{}, {} steps, true CFG scale {}, dtype {:?}, seed {}; text tokens: prompt {t_cond}, negative {t_neg} (fixture tokenizer, {} tokens); {} run(s), every component rebuilt each run",
        width,
        height,
        o.steps,
        o.cfg_scale,
        dtype,
        o.seed,
        tokenizer.vocab_size(),
        o.runs
    );

    let mut configs = configs;
    let mut builders = random_builders(&configs, tok_dir.clone(), o.seed);
    if o.edit {
        configs.kind = qwen_image::PipelineKind::Edit;
        builders = with_edit_encoder(
            builders,
            &configs.text,
            configs.kind,
            o.tiny,
            tok_dir,
            o.seed,
        )?;
    }
    let options = PipelineOptions {
        dtype,
        quantize: None,
        residency: qwen_image::Residency::Staged,
        activation_budget: match o.activation_budget_gib {
            Some(g) => qwen_image::ActivationBudget::Bytes((g * (1u64 << 30) as f64) as usize),
            None => qwen_image::ActivationBudget::Auto,
        },
    };
    let mut pipe = QwenImagePipeline::from_builders(configs, options, builders)?;
    let mut req = GenerateRequest::new(o.prompt.clone());
    req.negative_prompt = Some(o.negative_prompt.clone());
    req.true_cfg_scale = o.cfg_scale;
    req.steps = o.steps;
    req.width = width;
    req.height = height;
    req.noise = Noise::Seed(o.seed);
    if o.lightning {
        req.true_cfg_scale = 1.0;
        req.negative_prompt = None;
        let recipe: serde_json::Value = serde_json::from_str(include_str!(
            "../configs/qwen-image-lightning-scheduler.json"
        ))?;
        req.scheduler_overrides = Some(SchedulerOverrides {
            origin: "configs/qwen-image-lightning-scheduler.json".into(),
            keys: recipe.as_object().cloned().context("recipe is an object")?,
        });
    } else {
        ensure!(req.does_true_cfg(), "true CFG needs --cfg-scale > 1");
    }
    let _lora_dir;
    if let Some(rank) = o.lora_rank {
        let t0 = Instant::now();
        let lora = random_lora(&pipe.configs().transformer, rank, o.seed)?;
        req.loras = vec![match (&lora.source, o.lora_file) {
            (LoraSource::Tensors { tensors, .. }, true) => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("random-lora.safetensors");
                mlx_weights::save_file(&path, tensors)?;
                _lora_dir = dir;
                Lora::file(path, 1.0)
            }
            _ => lora,
        }];
        mlx_rs::memory::clear_cache()?;
        println!(
            "random rank-{rank} LoRA on every Linear made{} in {:.1} s (not part of the phases)",
            if o.lora_file {
                " and written to a file"
            } else {
                ""
            },
            t0.elapsed().as_secs_f64()
        );
    }
    let n = width * height * 3;
    let picture = qwen_image::Image {
        width,
        height,
        data: (0..n)
            .map(|i| ((i as u64).wrapping_mul(2654435761).wrapping_add(o.seed) >> 7) as u8)
            .collect(),
    };
    if o.edit {
        req.edit_images = vec![picture.clone()];
    }
    if let Some(strength) = o.img2img {
        req.init_image = Some(qwen_image::InitImage {
            image: picture,
            mask: None,
            strength,
            image_noise: None,
            noise_seed: o.seed,
        });
    }

    // Started by mlx.launch (or its environment) as one of several ranks: share each run.
    let cluster = qwen_image::distributed::Cluster::from_env(
        qwen_image::distributed::DEFAULT_CONNECT_TIMEOUT,
    )?;
    if let Some(c) = &cluster {
        let tokens = (height / 16) * (width / 16);
        let probe = mlx_rs::ops::zeros_dtype(&[1, tokens as i32, 64], dtype.dtype())?;
        let group_time = time_all_gather(c, &probe, 20)?;
        // One layer's q (24 heads × 128) at 1024² and 2048² (+ 32 text tokens): what a
        // sequence-parallel attention would move per layer (docs/distributed.md).
        let mut q_times = Vec::new();
        for side in [1024usize, 2048] {
            let t = (side / 16) * (side / 16) + 32;
            let q = mlx_rs::ops::zeros_dtype(&[1, 24, t as i32, 128], dtype.dtype())?;
            q_times.push((side, t, time_all_gather(c, &q, 10)?));
        }
        if c.is_leader() {
            println!(
                "distributed: {}; all-gather of one step's packed prediction (1×{tokens}×64 {:?}): {:.3} ms",
                c.describe(req.does_true_cfg(), 1),
                dtype,
                group_time * 1e3
            );
            for (side, t, secs) in q_times {
                let mib = (24 * t * 128 * 2) as f64 / (1 << 20) as f64;
                println!(
                    "all-gather of one layer's q at {side}² (1×24×{t}×128, {mib:.1} MiB per rank): {:.3} ms, {:.1} GB/s per rank",
                    secs * 1e3,
                    mib * (1 << 20) as f64 / secs / 1e9
                );
            }
        }
    }
    let mut last = None;
    for run in 0..o.runs {
        let mut bad_dtype = None;
        let mut warnings = Vec::new();
        let want = dtype.dtype();
        let t0 = Instant::now();
        let mut on_event = |e: Event| match e {
            Event::Step { latents_dtype, .. } if latents_dtype != want => {
                bad_dtype = Some(latents_dtype)
            }
            Event::Warning(w) => warnings.push(w),
            _ => {}
        };
        let generation = match &cluster {
            None => pipe.generate_with(&req, &mut on_event)?,
            Some(c) => {
                let job = pipe.prepare(req.clone())?;
                match pipe.run_distributed(&job, &mut on_event, &Default::default(), c)? {
                    Some(g) => g,
                    None => continue, // not rank 0: its share is done
                }
            }
        };
        let total = t0.elapsed();
        // The bf16 trap: a strong f32 constant would have promoted the denoising graph.
        ensure!(
            bad_dtype.is_none(),
            "latents came out as {bad_dtype:?}, expected {want:?}"
        );
        let t = &generation.timings;
        let (med, mean, mean_rest, min, max) = step_stats(t);
        let img = &generation.images[0];
        let px_mean = img.data.iter().map(|&v| v as f64).sum::<f64>() / img.data.len() as f64;
        println!(
            "\n## run {} of {}{}",
            run + 1,
            o.runs,
            if run == 0 && o.runs > 1 {
                " (first: includes one-time costs)"
            } else {
                ""
            }
        );
        for w in &warnings {
            println!("warning: {w}");
        }
        println!("| phase | ms | peak GiB (MLX, during the phase) |");
        println!("|---|---|---|");
        for (name, t_ms, peak) in phase_rows(t) {
            println!("| {name} | {t_ms:.1} | {peak:.2} |");
        }
        println!(
            "steps: median {med:.1} ms, mean {mean:.1} ms (without the first: {mean_rest:.1}), min {min:.1}, max {max:.1}; [{}]",
            t.step_times
                .iter()
                .map(|d| format!("{:.1}", ms(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "total {:.1} ms wall (builds {:.1} ms; encode + denoise + decode {:.1} ms); overall peak {:.2} GiB; image {}×{}, mean pixel {px_mean:.1}",
            ms(total),
            ms(t.load_total()),
            ms(t.encode.time + t.denoise.time + t.decode.time),
            t.peak_memory() as f64 / GIB,
            img.width,
            img.height
        );
        last = Some((generation.timings, total));
    }

    if cluster.as_ref().is_some_and(|c| !c.is_leader()) {
        return Ok(()); // rank 0 reports
    }
    let (t, total) = last.context("no run")?;
    let (med, mean, mean_rest, _, _) = step_stats(&t);
    let mut s = String::new();
    writeln!(
        s,
        "\n## pipeline_full summary: {}×{}, {} steps, {}, {:?}{}, run {} of {}",
        width,
        height,
        o.steps,
        if o.lightning {
            "CFG off (Lightning scheduler)"
        } else {
            "true CFG"
        },
        dtype,
        o.lora_rank
            .map(|r| format!(", rank-{r} LoRA merged"))
            .unwrap_or_default(),
        o.runs,
        o.runs
    )?;
    writeln!(s, "| what | ms | peak GiB |")?;
    writeln!(s, "|---|---|---|")?;
    writeln!(
        s,
        "| text encode (2 prompts) | {:.1} | {:.2} |",
        ms(t.encode.time),
        t.encode.peak_memory as f64 / GIB
    )?;
    writeln!(
        s,
        "| denoise step (median / mean / mean w/o first) | {med:.1} / {mean:.1} / {mean_rest:.1} | {:.2} |",
        t.denoise.peak_memory as f64 / GIB
    )?;
    writeln!(
        s,
        "| denoise, all {} steps | {:.1} | {:.2} |",
        t.step_times.len(),
        ms(t.denoise.time),
        t.denoise.peak_memory as f64 / GIB
    )?;
    writeln!(
        s,
        "| VAE decode | {:.1} | {:.2} |",
        ms(t.decode.time),
        t.decode.peak_memory as f64 / GIB
    )?;
    writeln!(
        s,
        "| encode + denoise + decode | {:.1} | {:.2} |",
        ms(t.encode.time + t.denoise.time + t.decode.time),
        t.peak_memory() as f64 / GIB
    )?;
    writeln!(
        s,
        "| total incl. random builds | {:.1} | {:.2} |",
        ms(total),
        t.peak_memory() as f64 / GIB
    )?;
    print!("{s}");

    if let Some(path) = &o.json {
        let phases: Vec<serde_json::Value> = phase_rows(&t)
            .into_iter()
            .map(|(n, t_ms, p)| serde_json::json!({"phase": n, "ms": t_ms, "peak_gib": p}))
            .collect();
        let js = serde_json::json!({
            "impl": "mlx",
            "width": width,
            "height": height,
            "steps": o.steps,
            "dtype": dtype.to_string(),
            "text_tokens": [t_cond, t_neg],
            "step_median_ms": med,
            "step_mean_ms": mean,
            "total_ms": ms(total),
            "peak_gib": t.peak_memory() as f64 / GIB,
            "phases": phases,
            "step_ms": t.step_times.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&js)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Mean seconds of an all-gather of `x` over the cluster (after one untimed call).
fn time_all_gather(
    c: &qwen_image::distributed::Cluster,
    x: &mlx_rs::Array,
    n: usize,
) -> Result<f64> {
    let once = || -> Result<()> {
        c.all_gather(x)?.eval()?;
        Ok(())
    };
    once()?;
    let t0 = Instant::now();
    for _ in 0..n {
        once()?;
    }
    Ok(t0.elapsed().as_secs_f64() / n as f64)
}
