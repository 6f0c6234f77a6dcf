//! The summary of a finished generation: for people (aligned lines: seed, the time of each
//! phase, LoRAs, quantized layers, peak memory) and for programs (JSON), with the wall times a
//! program measures around the pipeline ([`WallTimes`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::distributed::Cluster;
#[cfg(doc)]
use crate::info::RuntimeInfo;
use crate::info::human_bytes;
use crate::settings::GenerationSettings;
use crate::{GenerateRequest, Generation, Noise, PreparedRequest};

/// Wall times measured outside the pipeline's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallTimes {
    /// Resolving and checking the checkpoint.
    pub open: Duration,
    /// Writing the PNG files.
    pub write: Duration,
    /// The whole program until now.
    pub total: Duration,
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The summary of `generation`, run for `req` made from `settings`, one line per item:
/// `seed:`, `load:`, `encode:`, `picture:` (img2img, inpainting, edit), `denoise:`, `decode:`,
/// each LoRA, the quantized layers (with
/// quantization set, or any), `write:`, `total:`, `peak memory:`. `tiling_name` is how the
/// program names the tiling setting, written before its mode on the `decode:` line.
pub fn summary_text(
    settings: &GenerationSettings,
    req: &GenerateRequest,
    generation: &Generation,
    times: &WallTimes,
    tiling_name: &str,
) -> String {
    let t = &generation.timings;
    let mut lines = vec![match &req.noise {
        Noise::Seed(s) if req.num_images > 1 => {
            format!("seed:     {s} (image i uses seed {s} + i)")
        }
        Noise::Seed(s) => format!("seed:     {s}"),
        Noise::Latents(_) => format!(
            "noise:    {}",
            settings
                .init_latents
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    }];
    lines.push(format!(
        "load:     {} (checkpoint check {}, text encoder {}, transformer {}, VAE {})",
        secs(times.open + t.load_total()),
        secs(times.open),
        secs(t.load_text_encoder.time),
        secs(t.load_transformer.time),
        secs(t.load_vae.time)
    ));
    lines.push(format!("encode:   {}", secs(t.encode.time)));
    if req.init_image.is_some() || !req.edit_images.is_empty() {
        lines.push(format!(
            "picture:  {} (VAE encode)",
            secs(t.encode_image.time)
        ));
    }
    lines.push(format!(
        "denoise:  {} ({} steps, {:.1} ms/step{})",
        secs(t.denoise.time),
        t.step_times.len(),
        ms(t.mean_step()),
        if req.does_true_cfg() {
            ", 2 transformer passes each"
        } else {
            ""
        }
    ));
    lines.push(format!(
        "decode:   {} ({}; {tiling_name} {})",
        secs(t.decode.time),
        crate::request::describe_tiles(generation.vae_tiles.as_ref()),
        settings.vae_tiling.describe()
    ));
    for (l, scale) in generation
        .loras
        .iter()
        .zip(req.loras.iter().map(|l| l.scale))
    {
        lines.push(format!(
            "lora:     {} (scale {scale}, {}): {} layers changed",
            l.name, l.layout, l.layers
        ));
    }
    if settings.load.quantize.is_some() || generation.quantized_layers > 0 {
        lines.push(format!(
            "quantized transformer layers: {}",
            generation.quantized_layers
        ));
    }
    lines.push(format!("write:    {}", secs(times.write)));
    lines.push(format!("total:    {}", secs(times.total)));
    lines.push(format!(
        "peak memory: {} (text encoder {}, denoise {}, decode {})",
        human_bytes(t.peak_memory()),
        human_bytes(t.encode.peak_memory.max(t.load_text_encoder.peak_memory)),
        human_bytes(t.denoise.peak_memory.max(t.load_transformer.peak_memory)),
        human_bytes(t.decode.peak_memory.max(t.load_vae.peak_memory))
    ));
    lines.join("\n")
}

/// The lines that introduce a run of `job`: with a `cluster`, how the ranks share it
/// (`distributed: …`), then where it runs (`model`, e.g. [`RuntimeInfo::describe_model`]),
/// what it asks for ([`PreparedRequest::describe`]) and, from a prompt file, the prompt's
/// line.
pub fn describe_run(
    model: &str,
    job: &PreparedRequest,
    prompt_line: Option<usize>,
    cluster: Option<&Cluster>,
) -> Vec<String> {
    let req = job.request();
    let mut lines: Vec<String> = cluster
        .map(|c| {
            let plan = c.describe(req.does_true_cfg(), req.num_images);
            format!("distributed: {plan}")
        })
        .into_iter()
        .collect();
    lines.push(format!(
        "{model}, {}{}",
        job.describe(),
        prompt_line
            .map(|l| format!(", prompt of line {l}"))
            .unwrap_or_default()
    ));
    lines
}

/// The machine-readable summary of one prompt's run: [`Generation::summary_json`] with the
/// prompt, its line in the prompt file (`null` for a single prompt), the files, the seed
/// (`null` for initial latents) and the wall times `open_ms` and `write_ms` in `timings`.
pub fn summary_json(
    req: &GenerateRequest,
    generation: &Generation,
    times: &WallTimes,
    prompt_line: Option<usize>,
    files: &[PathBuf],
) -> serde_json::Value {
    let mut run = generation.summary_json();
    run["prompt"] = req.prompt.clone().into();
    run["prompt_line"] = serde_json::json!(prompt_line);
    run["files"] = serde_json::json!(files);
    run["seed"] = serde_json::json!(match req.noise {
        Noise::Seed(s) => Some(s),
        Noise::Latents(_) => None,
    });
    run["timings"]["open_ms"] = ms(times.open).into();
    run["timings"]["write_ms"] = ms(times.write).into();
    run
}

/// The machine-readable summary of several runs ([`summary_json`] each): every file, the
/// runs and the total time.
pub fn batch_json(
    files: &[Vec<PathBuf>],
    runs: Vec<serde_json::Value>,
    total: Duration,
) -> serde_json::Value {
    serde_json::json!({
        "files": files.iter().flatten().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "runs": runs,
        "total_ms": ms(total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TilingMode;
    use crate::{PhaseStats, Timings};

    fn generation() -> Generation {
        let phase = |ms: u64, mb: usize| PhaseStats {
            time: Duration::from_millis(ms),
            peak_memory: mb << 20,
        };
        Generation {
            images: Vec::new(),
            timings: Timings {
                load_text_encoder: phase(1000, 10),
                encode: phase(250, 30),
                load_transformer: phase(2000, 20),
                denoise: phase(4000, 40),
                step_times: vec![Duration::from_millis(500); 8],
                load_vae: phase(500, 5),
                decode: phase(750, 50),
                ..Default::default()
            },
            warnings: Vec::new(),
            quantized_layers: 0,
            loras: Vec::new(),
            vae_tiles: None,
            latents: Vec::new(),
        }
    }

    #[test]
    fn text_summary_lines() {
        let mut req = GenerateRequest::new("p");
        (req.num_images, req.noise) = (2, Noise::Seed(5));
        req.negative_prompt = Some(" ".into());
        let times = WallTimes {
            open: Duration::from_millis(100),
            write: Duration::from_millis(20),
            total: Duration::from_secs(9),
        };
        let mut settings = GenerationSettings::default();
        let text = summary_text(&settings, &req, &generation(), &times, "tiling");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "seed:     5 (image i uses seed 5 + i)");
        assert_eq!(
            lines[1],
            "load:     3.60 s (checkpoint check 0.10 s, text encoder 1.00 s, transformer 2.00 \
             s, VAE 0.50 s)"
        );
        assert_eq!(
            lines[3],
            "denoise:  4.00 s (8 steps, 500.0 ms/step, 2 transformer passes each)"
        );
        assert_eq!(
            lines[4],
            "decode:   0.75 s (untiled; tiling auto: tiles above 2.1 MPx)"
        );
        assert_eq!(lines[5], "write:    0.02 s");
        assert_eq!(lines.len(), 8);
        (settings.load.quantize, settings.vae_tiling) = (Some(8), TilingMode::Off);
        let text = summary_text(&settings, &req, &generation(), &times, "tiling");
        assert!(text.contains("quantized transformer layers: 0\n"), "{text}");
        assert!(text.contains("; tiling off)"), "{text}");
    }

    #[test]
    fn run_header_lines() -> anyhow::Result<()> {
        let dir = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/data/pipeline/tiny"
        ));
        let pipe = crate::QwenImagePipeline::load(dir, Default::default())?;
        let mut req = GenerateRequest::new("p");
        (req.width, req.height, req.steps) = (64, 64, 2);
        let job = pipe.prepare(req)?;
        let lines = describe_run("m on cpu", &job, Some(3), None);
        assert_eq!(
            lines,
            [format!("m on cpu, {}, prompt of line 3", job.describe())]
        );
        let lines = describe_run("m on cpu", &job, None, None);
        assert_eq!(lines, ["m on cpu, 64×64, 2 steps, true CFG off"]);
        Ok(())
    }

    #[test]
    fn json_summary_has_the_program_fields() {
        let mut req = GenerateRequest::new("a fox");
        req.noise = Noise::Seed(11);
        let times = WallTimes {
            open: Duration::from_millis(3),
            write: Duration::from_millis(4),
            total: Duration::from_millis(5),
        };
        let files = vec![PathBuf::from("a-2.png")];
        let run = summary_json(&req, &generation(), &times, Some(2), &files);
        assert_eq!(run["prompt"], "a fox");
        assert_eq!(run["prompt_line"], 2);
        assert_eq!(run["seed"], 11);
        assert_eq!(run["files"][0], "a-2.png");
        assert_eq!(run["timings"]["write_ms"], 4.0);
        let doc = batch_json(&[files], vec![run], Duration::from_millis(5));
        assert_eq!(doc["files"][0], "a-2.png");
        assert_eq!(doc["runs"].as_array().map(Vec::len), Some(1));
    }
}
