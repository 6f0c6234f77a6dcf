//! `qwen-image`: generate images with Qwen-Image on MLX.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mlx_rs::Dtype;
use qwen_image::info::{Backend, human_bytes};
use qwen_image::{
    AUTO_TILING_MIN_PIXELS, DEFAULT_VAE_TILE_SIZE, Event, GenerateRequest, MAX_IMAGE_SIDE,
    MAX_NUM_IMAGES, MAX_STEPS, Noise, Phase, PipelineOptions, QwenImagePipeline, TilingConfig,
    VaeTiling,
};

/// Qwen-Image text-to-image inference on MLX (Metal, CUDA or CPU).
///
/// `qwen-image generate --model Qwen/Qwen-Image --prompt "..." --output out.png` generates an
/// image; `qwen-image info` shows the MLX runtime. See `qwen-image generate --help`.
#[derive(Debug, Parser)]
#[command(name = "qwen-image", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the MLX version, the backend in use, the default device and its memory.
    Info,
    /// Generate images from a text prompt.
    ///
    /// Example: qwen-image generate --model Qwen/Qwen-Image --prompt "a red fox in the snow,
    /// watercolor" --negative-prompt " " --seed 42 --output fox.png
    Generate(Box<GenerateArgs>),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TilingArg {
    /// Tile images of more than 2²¹ pixels (2.1 MPx, e.g. 2048×1152 and up); every official
    /// Qwen-Image size (up to 1328²) decodes whole.
    Auto,
    /// Always tile.
    On,
    /// Never tile (memory grows with about the square of the pixel count).
    Off,
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// Checkpoint: a directory in the diffusers layout (model_index.json, transformer/, vae/,
    /// text_encoder/, tokenizer/, scheduler/) or a Hugging Face id such as Qwen/Qwen-Image,
    /// looked up in the local Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
    /// ~/.cache/huggingface/hub). A hub id missing from the cache is downloaded with the
    /// `hf` CLI when it is installed; otherwise the error names the command to run.
    #[arg(long, value_name = "DIR|HUB_ID")]
    model: String,
    /// The text prompt.
    #[arg(long)]
    prompt: String,
    /// Negative prompt. True CFG (two transformer passes per step) runs only with a negative
    /// prompt and --true-cfg-scale > 1.
    #[arg(long)]
    negative_prompt: Option<String>,
    /// True classifier-free guidance scale.
    #[arg(long, default_value_t = 4.0)]
    true_cfg_scale: f32,
    /// Denoising steps (1..=1000).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Image width in pixels (a multiple of 16, at most 8192).
    #[arg(long, default_value_t = 1024)]
    width: usize,
    /// Image height in pixels (a multiple of 16, at most 8192).
    #[arg(long, default_value_t = 1024)]
    height: usize,
    /// Seed of the initial noise (MLX's generator); image i of --num-images uses seed + i.
    /// Random (and printed) when absent.
    #[arg(long, conflicts_with = "init_latents")]
    seed: Option<u64>,
    /// Initial noise from a safetensors file: a float32 tensor `latents` of shape
    /// (N, 1, 16, H/8, W/8) (diffusers' unpacked noise layout; N = --num-images).
    #[arg(long, value_name = "FILE")]
    init_latents: Option<PathBuf>,
    /// Compute dtype [default: bf16 on a GPU, f32 on the CPU].
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Quantize the transformer's Linear layers to 4 or 8 bits when loading (MLX affine,
    /// group size 64).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["4", "8"]))]
    quantize: Option<String>,
    /// Number of images (1..=64). With N > 1 the files are FILE-0.png, FILE-1.png, … next to --output.
    #[arg(long, default_value_t = 1)]
    num_images: usize,
    /// Output PNG (written atomically: nothing appears under this name unless the run
    /// succeeds).
    #[arg(long, value_name = "FILE.png", default_value = "qwen-image.png")]
    output: PathBuf,
    /// Maximum prompt length in tokens after the template (1..=1024).
    #[arg(long, default_value_t = qwen_text_encoder::DEFAULT_MAX_SEQUENCE_LENGTH)]
    max_sequence_length: usize,
    /// Never download: fail when a hub id is not in the local cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// When the VAE decodes tile by tile (overlapping tiles, linearly blended, as diffusers'
    /// `vae.enable_tiling()`), which bounds decode memory by one tile whatever the image
    /// size; tiled and whole decodes differ slightly.
    #[arg(long, value_enum, default_value_t = TilingArg::Auto)]
    vae_tiling: TilingArg,
    /// Square tile size in pixels for tiled decode: a positive multiple of the VAE's
    /// compression (8); tiles are 3/4 of it apart (1024 → 768 px stride, 256 px overlap).
    /// 256 is diffusers' size: ~8× less memory, ~3× slower than 1024 [default: 1024].
    #[arg(long, value_name = "PX")]
    vae_tile_size: Option<usize>,
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `tiled, 1024 px tiles, 768 px stride` / `untiled`.
fn describe_tiles(t: Option<&TilingConfig>) -> String {
    let Some(t) = t else {
        return "untiled".into();
    };
    let dims = |a: usize, b: usize| {
        if a == b {
            format!("{a}")
        } else {
            format!("{a}×{b}")
        }
    };
    format!(
        "tiled, {} px tiles, {} px stride",
        dims(t.tile_sample_min_width, t.tile_sample_min_height),
        dims(t.tile_sample_stride_width, t.tile_sample_stride_height)
    )
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

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let t_total = Instant::now();
    // Cheap checks first: nothing heavy runs before the output is known to be writable.
    anyhow::ensure!(args.num_images >= 1, "--num-images must be at least 1");
    // Upper bounds before anything is allocated from these numbers (output names, σ tables,
    // RoPE tables, latents); the pipeline checks them again.
    anyhow::ensure!(
        args.num_images <= MAX_NUM_IMAGES,
        "--num-images {} is above the maximum {MAX_NUM_IMAGES}",
        args.num_images
    );
    anyhow::ensure!(
        args.steps <= MAX_STEPS,
        "--steps {} is above the maximum {MAX_STEPS} (the scheduler's training timesteps)",
        args.steps
    );
    for (flag, v) in [("--width", args.width), ("--height", args.height)] {
        anyhow::ensure!(
            v <= MAX_IMAGE_SIDE,
            "{flag} {v} is above the maximum {MAX_IMAGE_SIDE} px (Qwen-Image was trained up to \
             1664 px; the cap keeps RoPE positions and MLX's i32 shapes in range)"
        );
    }
    anyhow::ensure!(
        !(args.vae_tiling == TilingArg::Off && args.vae_tile_size.is_some()),
        "--vae-tile-size has no effect with --vae-tiling off"
    );
    let outputs = qwen_image::output::output_paths(&args.output, args.num_images);
    for o in &outputs {
        qwen_image::output::check_output(o)?;
    }
    let runtime = qwen_image::info::runtime_info()?;
    let dtype = match args.dtype {
        Some(DtypeArg::F32) => Dtype::Float32,
        Some(DtypeArg::Bf16) => Dtype::Bfloat16,
        Some(DtypeArg::F16) => Dtype::Float16,
        None if runtime.default_is_gpu => Dtype::Bfloat16,
        None => Dtype::Float32,
    };
    if dtype == Dtype::Float16 {
        eprintln!(
            "warning: --dtype f16 can overflow (the text encoder's activations are not clipped) \
             and give NaN latents; bf16 (GPU) or f32 (CPU) is safer"
        );
    }
    let quantize = args
        .quantize
        .as_deref()
        .map(|b| b.parse::<i32>().map(qwen_dit::QuantizeSpec::new))
        .transpose()
        .context("--quantize")?;

    let t_open = Instant::now();
    let env = qwen_image::hub::HubEnv::from_process();
    let model_dir = qwen_image::hub::resolve_model(&args.model, &env, !args.offline)?;
    let quantized = quantize.is_some();
    let options = PipelineOptions {
        dtype,
        quantize,
        keep_transformer: false,
    };
    let mut pipe = QwenImagePipeline::load(&model_dir, options)
        .with_context(|| format!("checkpoint {}", model_dir.display()))?;
    if let (Some(limit), Some(estimate)) = (
        runtime.memory_limit.filter(|&l| l > 0),
        pipe.weight_memory_estimate(),
    ) {
        // Only a warning: MLX's limit can be conservative (and memory may be swapped).
        if let Some(w) = estimate?.warning(limit as u64, dtype, quantized) {
            eprintln!("WARNING: {w}");
        }
    }
    if let Some(n) = quantize_notice(runtime.backend, quantized) {
        eprintln!("{n}");
    }
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut req = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        true_cfg_scale: args.true_cfg_scale,
        steps: args.steps,
        width: args.width,
        height: args.height,
        num_images: args.num_images,
        noise: Noise::Seed(seed),
        max_sequence_length: args.max_sequence_length,
        vae_tiling: VaeTiling::Off,
    };
    // Tiles of --vae-tile-size px, strides on whole latents of this checkpoint's VAE; the
    // VAE's own check (in `validate`) rejects sizes it cannot tile with.
    let tiles = VaeTiling::square_tiles(
        args.vae_tile_size.unwrap_or(DEFAULT_VAE_TILE_SIZE),
        pipe.configs().vae_scale_factor(),
    );
    req.vae_tiling = match args.vae_tiling {
        TilingArg::Auto => VaeTiling::Auto(tiles),
        TilingArg::On => VaeTiling::On(tiles),
        TilingArg::Off => VaeTiling::Off,
    };
    pipe.validate(&req)
        .map_err(|e| match (&e, args.vae_tile_size) {
            (qwen_image::PipelineError::InvalidRequest(m), Some(px))
                if m.starts_with("VAE tiling") =>
            {
                anyhow::anyhow!("--vae-tile-size {px}: {e}")
            }
            _ => e.into(),
        })?;
    if let Some(path) = &args.init_latents {
        let (h, w) = pipe.latent_size(req.width, req.height);
        let z = pipe.configs().latent_channels();
        req.noise = Noise::Latents(qwen_image::latents::load_init_latents(
            path,
            req.num_images,
            z,
            h,
            w,
        )?);
        pipe.validate(&req)?;
    }
    let open_time = t_open.elapsed();

    eprintln!(
        "qwen-image: {} on {} ({}), {:?}, {}×{}, {} steps, true CFG {}",
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
    // Both are bounded above (≤ 1000 × 64), so this cannot overflow; checked all the same.
    let total_steps = (req.steps as u64)
        .checked_mul(req.num_images as u64)
        .context("--steps × --num-images overflows")?;
    let mut bar: Option<ProgressBar> = None;
    let mut on_event = |e: Event| match e {
        Event::PhaseStart(Phase::Denoise) => {
            let b = ProgressBar::new(total_steps);
            b.set_style(
                ProgressStyle::with_template(
                    "denoising {bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar = Some(b);
        }
        Event::PhaseStart(p) => eprintln!("{p} …"),
        Event::PhaseEnd(Phase::Denoise, _) => {
            if let Some(b) = bar.take() {
                b.finish();
            }
        }
        Event::PhaseEnd(..) => {}
        Event::Step {
            image,
            num_images,
            elapsed,
            ..
        } => {
            if let Some(b) = &bar {
                if num_images > 1 {
                    b.set_message(format!(
                        "image {}/{num_images}, {:.0} ms/step",
                        image + 1,
                        elapsed.as_secs_f64() * 1e3
                    ));
                } else {
                    b.set_message(format!("{:.0} ms/step", elapsed.as_secs_f64() * 1e3));
                }
                b.inc(1);
            }
        }
        Event::Warning(w) => match &bar {
            Some(b) => b.println(format!("warning: {w}")),
            None => eprintln!("warning: {w}"),
        },
    };
    let result = pipe.generate_with(&req, &mut on_event)?;
    let t_write = Instant::now();
    for (img, path) in result.images.iter().zip(&outputs) {
        qwen_image::output::write_png(path, img)?;
        println!("wrote {} ({}×{})", path.display(), img.width, img.height);
    }
    let write_time = t_write.elapsed();

    let t = &result.timings;
    match &req.noise {
        Noise::Seed(s) if req.num_images > 1 => {
            println!("seed:     {s} (image i uses seed {s} + i)")
        }
        Noise::Seed(s) => println!("seed:     {s}"),
        Noise::Latents(_) => println!(
            "noise:    {}",
            args.init_latents
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    }
    println!(
        "load:     {} (checkpoint check {}, text encoder {}, transformer {}, VAE {})",
        secs(open_time + t.load_total()),
        secs(open_time),
        secs(t.load_text_encoder.time),
        secs(t.load_transformer.time),
        secs(t.load_vae.time)
    );
    println!("encode:   {}", secs(t.encode.time));
    println!(
        "denoise:  {} ({} steps, {:.1} ms/step{})",
        secs(t.denoise.time),
        t.step_times.len(),
        t.mean_step().as_secs_f64() * 1e3,
        if req.does_true_cfg() {
            ", 2 transformer passes each"
        } else {
            ""
        }
    );
    println!(
        "decode:   {} ({}; --vae-tiling {})",
        secs(t.decode.time),
        describe_tiles(result.vae_tiles.as_ref()),
        match args.vae_tiling {
            TilingArg::Auto => format!(
                "auto: tiles above {:.1} MPx",
                AUTO_TILING_MIN_PIXELS as f64 / 1e6
            ),
            TilingArg::On => "on".into(),
            TilingArg::Off => "off".into(),
        }
    );
    if args.quantize.is_some() || result.quantized_layers > 0 {
        println!("quantized transformer layers: {}", result.quantized_layers);
    }
    println!("write:    {}", secs(write_time));
    println!("total:    {}", secs(t_total.elapsed()));
    println!(
        "peak memory: {} (text encoder {}, denoise {}, decode {})",
        human_bytes(t.peak_memory()),
        human_bytes(t.encode.peak_memory.max(t.load_text_encoder.peak_memory)),
        human_bytes(t.denoise.peak_memory.max(t.load_transformer.peak_memory)),
        human_bytes(t.decode.peak_memory.max(t.load_vae.peak_memory))
    );
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
        Command::Info => qwen_image::info::runtime_info().map(|i| print!("{i}")),
        Command::Generate(args) => generate(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
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
