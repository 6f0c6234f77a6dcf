//! The summary printed after a run: files, seed, per-phase times and peak memory.

use std::time::Duration;

use qwen_image::info::human_bytes;
use qwen_image::{AUTO_TILING_MIN_PIXELS, GenerateRequest, Generation, Noise};

use crate::args::{GenerateArgs, TilingArg};
use crate::out;

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Wall times measured outside the library.
pub struct CliTimes {
    /// Resolving and checking the checkpoint.
    pub open: Duration,
    /// Writing the PNG files.
    pub write: Duration,
    /// The whole command.
    pub total: Duration,
}

/// Prints the summary of a finished generation on stdout.
pub fn summary(args: &GenerateArgs, req: &GenerateRequest, result: &Generation, times: &CliTimes) {
    let t = &result.timings;
    match &req.noise {
        Noise::Seed(s) if req.num_images > 1 => {
            out!("seed:     {s} (image i uses seed {s} + i)")
        }
        Noise::Seed(s) => out!("seed:     {s}"),
        Noise::Latents(_) => out!(
            "noise:    {}",
            args.init_latents
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    }
    out!(
        "load:     {} (checkpoint check {}, text encoder {}, transformer {}, VAE {})",
        secs(times.open + t.load_total()),
        secs(times.open),
        secs(t.load_text_encoder.time),
        secs(t.load_transformer.time),
        secs(t.load_vae.time)
    );
    out!("encode:   {}", secs(t.encode.time));
    out!(
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
    out!(
        "decode:   {} ({}; --vae-tiling {})",
        secs(t.decode.time),
        qwen_image::request::describe_tiles(result.vae_tiles.as_ref()),
        match args.vae_tiling {
            TilingArg::Auto => format!(
                "auto: tiles above {:.1} MPx",
                AUTO_TILING_MIN_PIXELS as f64 / 1e6
            ),
            TilingArg::On => "on".into(),
            TilingArg::Off => "off".into(),
        }
    );
    for (l, scale) in result.loras.iter().zip(req.loras.iter().map(|l| l.scale)) {
        out!(
            "lora:     {} (scale {scale}, {}): {} layers changed",
            l.name,
            l.layout,
            l.layers
        );
    }
    if args.load.quantize.is_some() || result.quantized_layers > 0 {
        out!("quantized transformer layers: {}", result.quantized_layers);
    }
    out!("write:    {}", secs(times.write));
    out!("total:    {}", secs(times.total));
    out!(
        "peak memory: {} (text encoder {}, denoise {}, decode {})",
        human_bytes(t.peak_memory()),
        human_bytes(t.encode.peak_memory.max(t.load_text_encoder.peak_memory)),
        human_bytes(t.denoise.peak_memory.max(t.load_transformer.peak_memory)),
        human_bytes(t.decode.peak_memory.max(t.load_vae.peak_memory))
    );
}
