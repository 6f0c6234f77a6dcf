//! `qwen-image`: generate images with Qwen-Image on MLX. A thin program over the `qwen_image`
//! library: arguments → request ([`args`]), the library's checks and run, a progress display
//! ([`progress`]) and a summary ([`report`]); it maps the library's typed errors onto the
//! flags the user typed.

mod args;
mod download;
mod progress;
mod report;

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use qwen_image::info::Backend;
use qwen_image::{ComputeDtype, NonFiniteAdvice, PipelineError, QwenImagePipeline};

use crate::args::{Cli, Command, GenerateArgs, TilingArg};

/// `println!` that never panics: a closed or full stdout only loses the text.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that never panics: a closed or full stderr only loses the text.
#[macro_export]
macro_rules! eout {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// A one-line notice for quantized runs on CUDA, where MLX compiles its quantized-matmul
/// kernels (JIT) the first time each shape is used: the first steps can take minutes.
fn quantize_notice(backend: Backend, quantized: bool) -> Option<&'static str> {
    (quantized && backend == Backend::Cuda).then_some(
        "note: on CUDA, MLX compiles its quantized kernels at first use; the first denoising \
         steps can take minutes (later runs reuse the compiled kernels)",
    )
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 of time and pid
    let mut z = nanos ^ ((std::process::id() as u64) << 32);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % (1 << 53)
}

/// The library's error in the words of this program's flags.
fn cli_error(e: PipelineError, args: &GenerateArgs) -> anyhow::Error {
    match &e {
        PipelineError::InvalidRequest { field, .. } => {
            anyhow::anyhow!("{}: {e}", args.flag_for(*field))
        }
        PipelineError::ModelNotFound { spec, msg } => anyhow::anyhow!("--model {spec}: {msg}"),
        PipelineError::Lora { lora, msg } => anyhow::anyhow!("--lora {lora}: {msg}"),
        PipelineError::SchedulerOverride { origin, source } => {
            anyhow::anyhow!("--scheduler-config {origin}: {source}")
        }
        PipelineError::MfluxCheckpoint { .. } => {
            anyhow::anyhow!("{e}: use it with --quantize 4|8 to quantize it on load")
        }
        PipelineError::InputImage { .. } => match (&args.image, &args.mask) {
            (Some(i), _) if e.to_string().contains(&i.display().to_string()) => {
                anyhow::anyhow!("--image: {e}")
            }
            (_, Some(_)) => anyhow::anyhow!("--mask: {e}"),
            _ => e.into(),
        },
        PipelineError::InitLatents { path: None, .. } => match &args.init_latents {
            Some(p) => anyhow::anyhow!("--init-latents {}: {e}", p.display()),
            None => e.into(),
        },
        PipelineError::NonFiniteLatents { advice, .. } => anyhow::anyhow!(
            "{e}{}",
            match advice {
                NonFiniteAdvice::UseBf16OrF32 =>
                    "; use bf16 (`--dtype bf16`) or f32 (`--dtype f32`)",
                NonFiniteAdvice::TryF32 => "; try `--dtype f32`",
                NonFiniteAdvice::CheckInputs => " (and --init-latents, when given)",
            }
        ),
        _ => e.into(),
    }
}

/// Loads an input image, passing on its conversion remarks.
fn load_input(path: &std::path::Path) -> anyhow::Result<qwen_image::Image> {
    let loaded = qwen_image::image_input::load_image(path)?;
    for n in &loaded.notes {
        eout!("warning: {}: {n}", path.display());
    }
    Ok(loaded.image)
}

fn generate(mut args: GenerateArgs) -> anyhow::Result<()> {
    let t_total = Instant::now();
    let runtime = qwen_image::info::runtime_info()?;
    let options = args.options(runtime.default_is_gpu);
    if options.dtype == ComputeDtype::F16 {
        eout!(
            "warning: --dtype f16 can overflow (the text encoder's activations are not clipped) \
             and give NaN latents; bf16 (GPU) or f32 (CPU) is safer"
        );
    }
    // Input pictures first: the output size may come from them.
    let init = match &args.image {
        Some(p) => Some((
            load_input(p)?,
            args.mask.as_deref().map(load_input).transpose()?,
        )),
        None => None,
    };
    let size = match (args.width, args.height, &init) {
        (None, None, Some((img, _))) => {
            let (w, h) = qwen_image::image_input::fit_to_area(img.width, img.height, 1 << 20, 16);
            eout!(
                "size: {w}×{h} (the {}×{} image's aspect ratio at about 1024² pixels; --width \
                 and --height set it)",
                img.width,
                img.height
            );
            (w, h)
        }
        (w, h, _) => (
            w.unwrap_or(args::DEFAULT_SIDE),
            h.unwrap_or(args::DEFAULT_SIDE),
        ),
    };
    (args.width, args.height) = (Some(size.0), Some(size.1));
    // Cheap checks first, before any path is looked at or anything is allocated from the
    // numbers: the request's limits, then the output.
    let seed = random_seed();
    qwen_image::request::check_limits(&args.request(size, seed, None, init.clone()))
        .map_err(|e| cli_error(e, &args))?;
    let loras = args.loras()?;
    anyhow::ensure!(
        !(args.vae_tiling == TilingArg::Off && args.vae_tile_size.is_some()),
        "--vae-tile-size has no effect with --vae-tiling off"
    );
    qwen_image::output::check_output_name(&args.output)?;
    let outputs = qwen_image::output::output_paths(&args.output, args.num_images);
    for o in &outputs {
        qwen_image::output::check_output(o)?;
    }

    let t_open = Instant::now();
    let env = qwen_image::hub::HubEnv::from_process();
    let model_dir = match qwen_image::hub::resolve_model(&args.model, &env) {
        Err(PipelineError::NotInCache { repo_id, .. }) if !args.offline && !env.offline => {
            download::download(&repo_id, &env)?;
            qwen_image::hub::resolve_model(&args.model, &env).map_err(|e| cli_error(e, &args))?
        }
        Err(e @ PipelineError::NotInCache { .. }) => {
            let why = if env.offline {
                "HF_HUB_OFFLINE is set"
            } else {
                "--offline is given"
            };
            anyhow::bail!(
                "{e}; {why}. Download it with `{}` (pip install -U huggingface_hub)",
                download::download_command(&args.model)
            )
        }
        other => other.map_err(|e| cli_error(e, &args))?,
    };
    let quantized = options.quantize.is_some();
    let dtype = options.dtype;
    let pipe = QwenImagePipeline::load(&model_dir, options)
        .map_err(|e| cli_error(e, &args))
        .with_context(|| format!("checkpoint {}", model_dir.display()))?;
    if let (Some(limit), Some(estimate)) = (
        runtime.memory_limit.filter(|&l| l > 0),
        pipe.weight_memory_estimate(),
    ) {
        // Only a warning: MLX's limit can be conservative (and memory may be swapped).
        if let Some(w) = estimate?.warning(limit as u64, dtype, quantized) {
            let mut advice = Vec::new();
            if w.suggest_quantize {
                advice.push("--quantize 8 (or 4)");
            }
            if w.suggest_bf16 {
                advice.push("--dtype bf16");
            }
            let advice = if advice.is_empty() {
                String::new()
            } else {
                format!(" (try {})", advice.join(", "))
            };
            eout!("WARNING: {w}{advice}");
        }
    }
    if let Some(n) = quantize_notice(runtime.backend, quantized) {
        eout!("{n}");
    }
    let init_latents = args
        .init_latents
        .as_deref()
        .map(qwen_image::latents::read_init_latents)
        .transpose()?;
    let mut request = args.request(size, seed, init_latents, init);
    request.loras = loras;
    request.scheduler_overrides = args
        .scheduler_config
        .as_deref()
        .map(qwen_image::SchedulerOverrides::from_file)
        .transpose()
        .map_err(|e| cli_error(e, &args))?;
    let mut pipe = pipe;
    let job = pipe.prepare(request).map_err(|e| cli_error(e, &args))?;
    let open_time = t_open.elapsed();
    let req = job.request();
    let mode = match &req.init_image {
        Some(i) => format!(
            ", {} at strength {} ({} of {} steps run)",
            if i.mask.is_some() {
                "inpainting"
            } else {
                "img2img"
            },
            i.strength,
            job.steps_run(),
            req.steps
        ),
        None => String::new(),
    };
    eout!(
        "qwen-image: {} on {} ({}), {}, {}×{}, {} steps, true CFG {}{mode}",
        model_dir.display(),
        runtime.backend,
        runtime.default_device,
        dtype,
        req.width,
        req.height,
        req.steps,
        if req.does_true_cfg() {
            format!("on (scale {})", req.true_cfg_scale)
        } else {
            "off".into()
        }
    );
    let mut progress = progress::Progress::new(job.total_steps());
    let result = pipe
        .run(&job, &mut |e| progress.on_event(e))
        .map_err(|e| cli_error(e, &args))?;
    let t_write = Instant::now();
    for (img, path) in result.images.iter().zip(&outputs) {
        qwen_image::output::write_png(path, img)?;
        out!("wrote {} ({}×{})", path.display(), img.width, img.height);
    }
    let times = report::CliTimes {
        open: open_time,
        write: t_write.elapsed(),
        total: t_total.elapsed(),
    };
    report::summary(&args, job.request(), &result, &times);
    Ok(())
}

/// The error and its causes, `: `-separated, skipping causes whose text an outer message
/// already includes (several stage errors print their source themselves).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => qwen_image::info::runtime_info()
            .map(|i| {
                use std::io::Write as _;
                let _ = write!(std::io::stdout(), "{i}");
            })
            .map_err(anyhow::Error::from),
        Command::Generate(args) => generate(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eout!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_notice_only_for_quantized_cuda_runs() {
        assert!(quantize_notice(Backend::Cuda, true).is_some_and(|n| n.contains("first use")));
        assert_eq!(quantize_notice(Backend::Cuda, false), None);
        assert_eq!(quantize_notice(Backend::Metal, true), None);
        assert_eq!(quantize_notice(Backend::Cpu, true), None);
    }
}
