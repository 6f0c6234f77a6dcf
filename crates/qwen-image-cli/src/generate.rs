//! `qwen-image generate`: from arguments (and a PNG's stored parameters) to one request per
//! prompt, run on one loaded pipeline, written with their parameters.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::ArgMatches;
use clap::parser::ValueSource;
use qwen_image::metadata::{GenerationRecord, read_png_record};
use qwen_image::{ComputeDtype, Noise, QwenImagePipeline};

use crate::args::{self, GenerateArgs, TilingArg};
use crate::{cli_error, eout, out, progress, report};

/// Loads an input image, passing on its conversion remarks.
fn load_input(path: &Path) -> anyhow::Result<qwen_image::Image> {
    let loaded = qwen_image::image_input::load_image(path)?;
    for n in &loaded.notes {
        eout!("warning: {}: {n}", path.display());
    }
    Ok(loaded.image)
}

/// Whether `id` was typed on the command line (then it wins over a PNG's record).
fn given(matches: Option<&ArgMatches>, id: &str) -> bool {
    matches.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine)
}

/// Fills the arguments not given on the command line from a PNG's record.
fn apply_record(args: &mut GenerateArgs, r: &GenerationRecord, m: Option<&ArgMatches>) {
    macro_rules! take {
        ($id:literal, $field:expr, $value:expr) => {
            if !given(m, $id) {
                $field = $value;
            }
        };
    }
    take!("model", args.model, Some(r.model.clone()));
    if !given(m, "prompt_file") {
        take!("prompt", args.prompt, Some(r.prompt.clone()));
    }
    take!(
        "negative_prompt",
        args.negative_prompt,
        r.negative_prompt.clone()
    );
    if !given(m, "init_latents") {
        take!("seed", args.seed, r.seed);
    }
    take!("steps", args.steps, r.steps);
    take!("true_cfg_scale", args.true_cfg_scale, r.true_cfg_scale);
    if !given(m, "aspect") {
        take!("width", args.width, Some(r.width));
        take!("height", args.height, Some(r.height));
    }
    take!(
        "max_sequence_length",
        args.max_sequence_length,
        r.max_sequence_length
    );
    take!(
        "dtype",
        args.load.dtype,
        r.dtype.parse::<ComputeDtype>().ok()
    );
    take!(
        "quantize",
        args.load.quantize,
        r.quantize.map(|q| q.to_string())
    );
    if !given(m, "lora") {
        args.load.lora = r.loras.iter().map(|(n, _)| PathBuf::from(n)).collect();
        args.load.lora_scale = r.loras.iter().map(|(_, s)| *s).collect();
    }
    take!(
        "image",
        args.image,
        r.init_image.as_ref().map(PathBuf::from)
    );
    take!("mask", args.mask, r.mask.as_ref().map(PathBuf::from));
    if let Some(st) = r.strength {
        take!("strength", args.strength, st);
    }
}

/// Runs `generate`.
pub fn generate(mut args: GenerateArgs, matches: Option<&ArgMatches>) -> anyhow::Result<()> {
    let t_total = Instant::now();
    if let Some(p) = args.from_png.clone() {
        let r = read_png_record(&p).with_context(|| "--from-png".to_string())?;
        apply_record(&mut args, &r, matches);
    }
    let model = args.model.clone().context("--model is required")?;
    let runtime = qwen_image::info::runtime_info()?;
    let mut options = args.load.options(runtime.default_is_gpu);
    if options.dtype == ComputeDtype::F16 {
        eout!(
            "warning: --dtype f16 can overflow (the text encoder's activations are not clipped) \
             and give NaN latents; bf16 (GPU) or f32 (CPU) is safer"
        );
    }
    let prompts: Vec<(Option<usize>, String)> = match &args.prompt_file {
        Some(f) => qwen_image::metadata::read_prompt_file(f)?
            .into_iter()
            .map(|(l, p)| (Some(l), p))
            .collect(),
        None => vec![(None, args.prompt.clone().unwrap_or_default())],
    };
    // Several prompts share one loaded transformer.
    if prompts.len() > 1 {
        options.residency = qwen_image::Residency::KeepTransformer;
    }
    // Input pictures first: the output size may come from them.
    let init = match &args.image {
        Some(p) => Some((
            load_input(p)?,
            args.mask.as_deref().map(load_input).transpose()?,
        )),
        None => None,
    };
    let size = match (args.aspect, args.width, args.height, &init) {
        (Some(wh), ..) => wh,
        (None, None, None, Some((img, _))) => {
            let (w, h) = qwen_image::image_input::fit_to_area(img.width, img.height, 1 << 20, 16);
            eout!(
                "size: {w}×{h} (the {}×{} image's aspect ratio at about 1024² pixels; --width \
                 and --height set it)",
                img.width,
                img.height
            );
            (w, h)
        }
        (None, w, h, _) => (
            w.unwrap_or(args::DEFAULT_SIDE),
            h.unwrap_or(args::DEFAULT_SIDE),
        ),
    };
    (args.width, args.height) = (Some(size.0), Some(size.1));
    // Cheap checks first, before any path is looked at or anything is allocated from the
    // numbers: the request's limits, then the outputs.
    let seed = qwen_image::latents::random_seed();
    for (_, p) in &prompts {
        let mut probe = args.request(size, seed, None, init.clone());
        probe.prompt = p.clone();
        qwen_image::request::check_limits(&probe).map_err(|e| cli_error(e, &args))?;
    }
    let loras = args.load.loras()?;
    anyhow::ensure!(
        !(args.vae_tiling == TilingArg::Off && args.vae_tile_size.is_some()),
        "--vae-tile-size has no effect with --vae-tiling off"
    );
    qwen_image::output::check_output_name(&args.output)?;
    let outputs: Vec<Vec<PathBuf>> = prompts
        .iter()
        .map(|(line, _)| qwen_image::output::output_paths_for(&args.output, *line, args.num_images))
        .collect();
    for o in outputs.iter().flatten() {
        qwen_image::output::check_output(o)?;
    }

    // Launched by mlx.launch as one of several ranks: connect first (bounded wait).
    let cluster = qwen_image::distributed::Cluster::from_env(connect_timeout())?;
    let leader = cluster.as_ref().is_none_or(|c| c.is_leader());
    let t_open = Instant::now();
    let env = qwen_image::hub::HubEnv::from_process();
    let model_dir = crate::download::resolve(&model, &args.load.revision, args.load.offline, &env)
        .map_err(|e| cli_error(e, &args))?;
    let quantized = options.quantize.is_some();
    let dtype = options.dtype;
    let mut pipe = QwenImagePipeline::load(&model_dir, options)
        .map_err(|e| cli_error(e, &args))
        .with_context(|| format!("checkpoint {}", model_dir.display()))?;
    if let (Some(limit), Some(estimate)) = (
        runtime.memory_limit.filter(|&l| l > 0),
        pipe.weight_memory_estimate(),
    ) {
        // Only a warning: MLX's limit can be conservative (and memory may be swapped).
        if let Some(w) = estimate?.warning(limit as u64, dtype, quantized) {
            let advice: Vec<&str> = [
                w.suggest_quantize.then_some("--quantize 8 (or 4)"),
                w.suggest_bf16.then_some("--dtype bf16"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let advice = match advice.is_empty() {
                true => String::new(),
                false => format!(" (try {})", advice.join(", ")),
            };
            eout!("WARNING: {w}{advice}");
        }
    }
    let cache = runtime.kernel_cache.as_deref();
    if let Some(n) = qwen_image::kernel_cache::first_use_notice(runtime.backend, quantized, cache) {
        eout!("{n}");
    }
    let init_latents = args
        .init_latents
        .as_deref()
        .map(qwen_image::latents::read_init_latents)
        .transpose()?;
    let mut base = args.request(size, seed, init_latents, init);
    base.loras = loras;
    base.scheduler_overrides = args
        .load
        .scheduler_config
        .as_deref()
        .map(qwen_image::SchedulerOverrides::from_file)
        .transpose()
        .map_err(|e| cli_error(e, &args))?;
    let open_time = t_open.elapsed();
    // A rank that stalls (or a backend that waits forever on a dead peer) must not hang the
    // others: every rank exits when its run makes no progress for too long.
    let heartbeat = cluster.as_ref().map(|c| Watchdog::start(c.rank()));
    let mut runs = Vec::new();
    for ((line, prompt), outputs) in prompts.iter().zip(&outputs) {
        let mut request = base.clone();
        request.prompt = prompt.clone();
        let job = pipe.prepare(request).map_err(|e| cli_error(e, &args))?;
        let req = job.request();
        if let Some(c) = &cluster {
            if c.rank() > 0 {
                // Its share of the work; rank 0 reports and writes.
                pipe.run_distributed(
                    &job,
                    &mut |_| heartbeat.iter().for_each(Watchdog::beat),
                    &Default::default(),
                    c,
                )
                .map_err(|e| cli_error(e, &args))?;
                continue;
            }
            eout!(
                "qwen-image: distributed: {}",
                c.describe(req.does_true_cfg(), req.num_images)
            );
        }
        eout!(
            "qwen-image: {} on {} ({}), {}, {}{}",
            model_dir.display(),
            runtime.backend,
            runtime.default_device,
            dtype,
            job.describe(),
            line.map(|l| format!(", prompt of line {l}"))
                .unwrap_or_default()
        );
        let mut progress = progress::Progress::new(job.total_steps());
        let result = match &cluster {
            Some(c) => pipe
                .run_distributed(
                    &job,
                    &mut |e| {
                        heartbeat.iter().for_each(Watchdog::beat);
                        progress.on_event(e)
                    },
                    &Default::default(),
                    c,
                )
                .map_err(|e| cli_error(e, &args))?
                .context("rank 0 received no images")?,
            None => pipe
                .run(&job, &mut |e| progress.on_event(e))
                .map_err(|e| cli_error(e, &args))?,
        };
        let t_write = Instant::now();
        for (i, (img, path)) in result.images.iter().zip(outputs).enumerate() {
            let text = if args.no_metadata {
                Vec::new()
            } else {
                GenerationRecord::for_request(
                    req,
                    &model,
                    dtype,
                    args.load.quantize.as_deref().and_then(|q| q.parse().ok()),
                    i,
                    args.image.as_deref(),
                    args.mask.as_deref(),
                )
                .chunks()
            };
            qwen_image::output::write_png_with_text(path, img, &text)?;
            if !args.json {
                out!("wrote {} ({}×{})", path.display(), img.width, img.height);
            }
        }
        let times = report::CliTimes {
            open: open_time,
            write: t_write.elapsed(),
            total: t_total.elapsed(),
        };
        if args.json {
            let mut run = result.summary_json();
            run["prompt"] = req.prompt.clone().into();
            run["prompt_line"] = serde_json::json!(line);
            run["files"] = serde_json::json!(outputs);
            run["seed"] = serde_json::json!(match req.noise {
                Noise::Seed(s) => Some(s),
                Noise::Latents(_) => None,
            });
            run["timings"]["open_ms"] = (times.open.as_secs_f64() * 1e3).into();
            run["timings"]["write_ms"] = (times.write.as_secs_f64() * 1e3).into();
            runs.push(run);
        } else {
            report::summary(&args, req, &result, &times);
        }
    }
    if args.json && leader {
        let doc = serde_json::json!({
            "files": outputs.iter().flatten().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "runs": runs,
            "total_ms": t_total.elapsed().as_secs_f64() * 1e3,
        });
        out!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

/// How long the ranks of a distributed run may take to connect: `QWEN_IMAGE_CONNECT_TIMEOUT`
/// seconds, else the library's default.
fn connect_timeout() -> std::time::Duration {
    std::env::var("QWEN_IMAGE_CONNECT_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(
            qwen_image::distributed::DEFAULT_CONNECT_TIMEOUT,
            std::time::Duration::from_secs,
        )
}

/// Ends the process when a distributed run shows no progress (no pipeline event: phase or
/// step) for `QWEN_IMAGE_STEP_TIMEOUT` seconds (default 900: a first quantized step on CUDA
/// may compile kernels for minutes). MLX's collectives wait forever on a rank that stalls
/// (ring) or dies (NCCL); this bounds that wait.
struct Watchdog {
    start: Instant,
    /// Seconds since `start` at the last sign of progress.
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Watchdog {
    fn start(rank: usize) -> Self {
        let limit = std::env::var("QWEN_IMAGE_STEP_TIMEOUT")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(900);
        let dog = Self {
            start: Instant::now(),
            last: Default::default(),
        };
        let (start, last) = (dog.start, dog.last.clone());
        let _ = std::thread::Builder::new()
            .name("distributed-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    let now = start.elapsed().as_secs();
                    let idle = now.saturating_sub(last.load(std::sync::atomic::Ordering::Relaxed));
                    if idle >= limit {
                        eout!(
                            "error: distributed run: rank {rank} made no progress for {idle} s \
                             (another rank stopped or hangs; QWEN_IMAGE_STEP_TIMEOUT sets the \
                             limit)"
                        );
                        std::process::exit(1);
                    }
                }
            });
        dog
    }

    /// Progress was made.
    fn beat(&self) {
        self.last.store(
            self.start.elapsed().as_secs(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}
