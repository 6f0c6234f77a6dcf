//! `qwen-image generate`: from arguments (and a PNG's stored parameters) to the library's
//! settings, then one request per prompt, run on one loaded pipeline, written with their
//! parameters; this file words what the library finds for the terminal.

use std::time::Instant;

use anyhow::Context;
use clap::ArgMatches;
use clap::parser::ValueSource;
use qwen_image::distributed::{Cluster, Watchdog, connect_timeout_from_env, step_timeout_from_env};
use qwen_image::report::{WallTimes, batch_json, describe_run, summary_json, summary_text};
use qwen_image::settings::{GenerationSettings, SizeSource};
use qwen_image::{ComputeDtype, QwenImagePipeline};

use crate::args::{EditArgs, GenerateArgs};
use crate::{cli_error, eout, out, progress};

/// Whether `id` was typed on the command line (then it wins over a PNG's record).
fn given(matches: Option<&ArgMatches>, id: &str) -> bool {
    matches.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine)
}

/// Runs `generate`.
pub fn generate(args: GenerateArgs, matches: Option<&ArgMatches>) -> anyhow::Result<()> {
    let t_total = Instant::now();
    let mut job = args.settings();
    if let Some(p) = &args.from_png {
        let r = qwen_image::metadata::read_png_record(p).context("--from-png")?;
        job.apply_record(&r, |s| given(matches, s.name()));
    }
    run(job, args.json, t_total)
}

/// Runs `edit`: the same run, its pictures given to an edit pipeline.
pub fn edit(args: &EditArgs) -> anyhow::Result<()> {
    run(args.settings(), args.json, Instant::now())
}

/// A run of `generate` (the settings' `edit_images` empty) or of `edit`.
fn run(mut job: GenerationSettings, json: bool, t_total: Instant) -> anyhow::Result<()> {
    let editing = !job.edit_images.is_empty();
    let model = job.model.clone().context("--model is required")?;
    let runtime = qwen_image::info::runtime_info()?;
    if job.load.dtype == Some(ComputeDtype::F16) {
        eout!(
            "warning: --dtype f16 can overflow (the text encoder's activations are not clipped) \
             and give NaN latents; bf16 (GPU) or f32 (CPU) is safer"
        );
    }
    let prompts = job.prompts()?;
    // Several prompts share one loaded transformer.
    let options = job.options(runtime.default_is_gpu, prompts.len());
    // Input pictures first: the output size may come from them.
    let mut note = |p: &std::path::Path, n: &str| eout!("warning: {}: {n}", p.display());
    let init = job.load_inputs(&mut note)?;
    let pictures = job.load_edit_images(&mut note)?;
    // An edit's size depends on its pipeline: fixed once the checkpoint is open.
    if !editing
        && let ((w, h), SizeSource::Image { width, height }) =
            job.resolve_size(init.as_ref().map(|(img, _)| img))
    {
        eout!(
            "size: {w}×{h} (the {width}×{height} image's aspect ratio at about 1024² pixels; \
             --width and --height set it)"
        );
    }
    // Cheap checks first, before any path is looked at or anything is allocated from the
    // numbers: the request's limits, then the outputs.
    let seed = qwen_image::latents::random_seed();
    let loras = job
        .check(&prompts, seed, init.as_ref())
        .map_err(|e| cli_error(e, &job))?;
    let outputs = job.outputs(&prompts)?;

    // Launched by mlx.launch as one of several ranks: connect first (bounded wait).
    let cluster = Cluster::from_env(connect_timeout_from_env())?;
    let leader = cluster.as_ref().is_none_or(|c| c.is_leader());
    let t_open = Instant::now();
    let model_dir = crate::progress::resolve(&model, &job.load).map_err(|e| cli_error(e, &job))?;
    let quantized = options.quantize.is_some();
    let dtype = options.dtype;
    let mut pipe = QwenImagePipeline::load(&model_dir, options)
        .map_err(|e| cli_error(e, &job))
        .with_context(|| format!("checkpoint {}", model_dir.display()))?;
    if let Some(w) = qwen_image::memory::weights_warning(&pipe, runtime.memory_limit)? {
        let advice = w.advice("--quantize 8 (or 4)", "--dtype bf16");
        eout!("WARNING: {w}{advice}");
    }
    if let Some(n) = runtime.first_use_notice(quantized) {
        eout!("{n}");
    }
    if editing {
        let c = pipe.configs();
        let ((w, h), source) = job
            .resolve_edit_size(c.kind, &pictures, c.size_multiple())
            .map_err(|e| cli_error(e, &job))?;
        if let SizeSource::EditPicture(n) = source {
            eout!(
                "size: {w}×{h} (picture {n}'s aspect ratio at about 1024² pixels, as {}; \
                 --width and --height set it)",
                c.kind.class_name()
            );
        }
    }
    let mut base = job
        .base_request(seed, init, loras)
        .map_err(|e| cli_error(e, &job))?;
    base.edit_images = pictures;
    let open_time = t_open.elapsed();
    // A rank that stalls (or a backend that waits forever on a dead peer) must not hang the
    // others: every rank exits when its run makes no progress for too long.
    let heartbeat = cluster.as_ref().map(|c| {
        Watchdog::start(c.rank(), step_timeout_from_env(), |e| {
            eout!("error: {e}");
            std::process::exit(1)
        })
    });
    let model_line = runtime.describe_model(&model_dir, dtype);
    let mut runs = Vec::new();
    for ((line, prompt), outputs) in prompts.iter().zip(&outputs) {
        let mut request = base.clone();
        request.prompt = prompt.clone();
        let prepared = pipe.prepare(request).map_err(|e| cli_error(e, &job))?;
        let req = prepared.request();
        // Rank 0 reports and writes; the other ranks only do their share of the work.
        if leader {
            for l in describe_run(&model_line, &prepared, *line, cluster.as_ref()) {
                eout!("qwen-image: {l}");
            }
        }
        let total = prepared.total_steps();
        let mut progress = leader.then(progress::Bar::default);
        let result = pipe
            .run_on(&prepared, cluster.as_ref(), &mut |e| {
                heartbeat.iter().for_each(Watchdog::beat);
                if let Some(p) = &mut progress {
                    p.on_event(e, total);
                }
            })
            .map_err(|e| cli_error(e, &job))?;
        let result = match result {
            Some(r) => r,
            None if !leader => continue,
            None => anyhow::bail!("rank 0 received no images"),
        };
        let t_write = Instant::now();
        job.write_images(req, dtype, &result.images, outputs, &mut |path, img| {
            if !json {
                out!("wrote {} ({}×{})", path.display(), img.width, img.height);
            }
        })?;
        let times = WallTimes {
            open: open_time,
            write: t_write.elapsed(),
            total: t_total.elapsed(),
        };
        if json {
            runs.push(summary_json(req, &result, &times, *line, outputs));
        } else {
            let text = summary_text(&job, req, &result, &times, "--vae-tiling");
            out!("{text}");
        }
    }
    if json && leader {
        let doc = batch_json(&outputs, runs, t_total.elapsed());
        out!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}
