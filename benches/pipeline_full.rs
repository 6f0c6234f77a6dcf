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
//! `--tiny`: 2-layer components at 128², f32, for a CPU smoke run.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mlx_rs::Dtype;
use qwen_image::{Event, GenerateRequest, Noise, PipelineOptions, QwenImagePipeline, Timings};
use qwen_image_benches::components::{
    fixture_tokenizer_dir, full_size_configs, random_builders, text_param_count, tiny_configs,
};
use qwen_image_benches::median;
use qwen_text_encoder::{PROMPT_TEMPLATE, QwenTokenizer, template_drop_index};

const GIB: f64 = (1u64 << 30) as f64;

struct Opts {
    width: usize,
    height: usize,
    steps: usize,
    runs: usize,
    cfg_scale: f32,
    prompt: String,
    negative_prompt: String,
    dtype: Dtype,
    seed: u64,
    json: Option<String>,
    tiny: bool,
}

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (w, h) = match s.split_once(['x', 'X']) {
        Some((w, h)) => (w.trim().parse()?, h.trim().parse()?),
        None => {
            let v: usize = s.trim().parse()?;
            (v, v)
        }
    };
    Ok((w, h))
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        width: 1024,
        height: 1024,
        steps: 20,
        runs: 2,
        cfg_scale: 4.0,
        prompt: "A red fox sitting in fresh snow at dawn, soft watercolor, pastel colors".into(),
        negative_prompt: " ".into(),
        dtype: Dtype::Bfloat16,
        seed: 0,
        json: None,
        tiny: false,
    };
    let (mut size_given, mut dtype_given) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--size" => {
                (o.width, o.height) =
                    parse_size(&val("--size")?).context("--size: N or WxH pixels")?;
                size_given = true;
            }
            "--steps" => o.steps = val("--steps")?.parse()?,
            "--runs" => o.runs = val("--runs")?.parse()?,
            "--cfg-scale" => o.cfg_scale = val("--cfg-scale")?.parse()?,
            "--prompt" => o.prompt = val("--prompt")?,
            "--negative-prompt" => o.negative_prompt = val("--negative-prompt")?,
            "--seed" => o.seed = val("--seed")?.parse()?,
            "--json" => o.json = Some(val("--json")?),
            "--dtype" => {
                o.dtype = match val("--dtype")?.as_str() {
                    "bf16" | "bfloat16" => Dtype::Bfloat16,
                    "f32" | "float32" => Dtype::Float32,
                    "f16" | "float16" => Dtype::Float16,
                    d => bail!("--dtype {d}: bf16, f32 or f16"),
                };
                dtype_given = true;
            }
            "--tiny" => o.tiny = true,
            // `cargo bench` passes `--bench`; a positional filter is ignored.
            "--bench" => {}
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => {}
        }
    }
    if o.tiny {
        if !size_given {
            (o.width, o.height) = (128, 128);
        }
        if !dtype_given {
            o.dtype = Dtype::Float32;
        }
    }
    ensure!(o.runs > 0, "--runs must be positive");
    Ok(o)
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
        ("build transformer (random)", t.load_transformer),
        ("denoise", t.denoise),
        ("build VAE (random)", t.load_vae),
        ("VAE decode", t.decode),
    ]
    .into_iter()
    .map(|(n, p)| (n, ms(p.time), p.peak_memory as f64 / GIB))
    .collect()
}

fn main() -> Result<()> {
    let o = parse_opts()?;
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
        o.width,
        o.height,
        o.steps,
        o.cfg_scale,
        o.dtype,
        o.seed,
        tokenizer.vocab_size(),
        o.runs
    );

    let builders = random_builders(&configs, tok_dir, o.seed);
    let options = PipelineOptions {
        dtype: o.dtype,
        quantize: None,
        keep_transformer: false,
    };
    let mut pipe = QwenImagePipeline::from_builders(configs, options, builders)?;
    let mut req = GenerateRequest::new(o.prompt.clone());
    req.negative_prompt = Some(o.negative_prompt.clone());
    req.true_cfg_scale = o.cfg_scale;
    req.steps = o.steps;
    req.width = o.width;
    req.height = o.height;
    req.noise = Noise::Seed(o.seed);
    ensure!(req.does_true_cfg(), "true CFG needs --cfg-scale > 1");

    let mut last = None;
    for run in 0..o.runs {
        let mut bad_dtype = None;
        let mut warnings = Vec::new();
        let want = o.dtype;
        let t0 = Instant::now();
        let generation = pipe.generate_with(&req, &mut |e| match e {
            Event::Step { latents_dtype, .. } if latents_dtype != want => {
                bad_dtype = Some(latents_dtype)
            }
            Event::Warning(w) => warnings.push(w),
            _ => {}
        })?;
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

    let (t, total) = last.context("no run")?;
    let (med, mean, mean_rest, _, _) = step_stats(&t);
    let mut s = String::new();
    writeln!(
        s,
        "\n## pipeline_full summary: {}×{}, {} steps, true CFG, {:?}, run {} of {}",
        o.width, o.height, o.steps, o.dtype, o.runs, o.runs
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
        let steps: Vec<String> = t
            .step_times
            .iter()
            .map(|d| format!("{:.3}", ms(*d)))
            .collect();
        let phases: Vec<String> = phase_rows(&t)
            .into_iter()
            .map(|(n, t_ms, p)| {
                format!("{{\"phase\": \"{n}\", \"ms\": {t_ms:.3}, \"peak_gib\": {p:.3}}}")
            })
            .collect();
        let js = format!(
            "{{\"impl\": \"mlx\", \"width\": {}, \"height\": {}, \"steps\": {}, \"dtype\": \"{:?}\", \"text_tokens\": [{t_cond}, {t_neg}], \"step_median_ms\": {med:.3}, \"step_mean_ms\": {mean:.3}, \"total_ms\": {:.3}, \"peak_gib\": {:.3}, \"phases\": [{}], \"step_ms\": [{}]}}\n",
            o.width,
            o.height,
            o.steps,
            o.dtype,
            ms(total),
            t.peak_memory() as f64 / GIB,
            phases.join(", "),
            steps.join(", ")
        );
        std::fs::write(path, js).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
