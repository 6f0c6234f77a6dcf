//! One true-CFG denoising step of the full-size Qwen-Image DiT with random bf16 weights.
//!
//! As `QwenImagePipeline` runs it at batch 1: two forwards (cond + uncond, `--txt` text
//! tokens each, no text mask), the true-CFG combine with its norm rescale, and the Euler
//! update; evaluated once per step. The pipelined rows take the timestep modulation the way
//! the pipeline does (`qwen_dit::ScheduleModulation`, a window of 8 steps per call; one
//! window per timed chain of `--iters` steps); the plain rows compute it in each step.
//! Also, where asked: the same step with CFG batched as one B=2 forward, the step with
//! `mlx-fastops`' plain-MLX references instead of its fused kernels, and a breakdown of one
//! block's time into its GEMMs, attention and elementwise ops at the real shapes
//! (`--profile SIZE`).
//!
//! ```text
//! dit_step [--sizes 512,1024,1328] [--warmup 2] [--iters 5] [--txt 32] [--layers N]
//!          [--no-batched] [--no-reference] [--pipelined [--modulation-per-step] [--pass-variants]]
//!          [--quantize 8|4] [--activation-budget-gib G | --memory-limit-gib G]
//!          [--profile 1024 | --profile 0] [--tiny] [--edit-pictures N] [--json PATH]
//! ```
//! `--tiny` runs a 2-layer, 32-wide model at 64² and 128² (a CPU smoke test). Prints one
//! table row per (size, mode): median / min ms per step, achieved TFLOP/s (FLOPs counted from
//! the shapes, see `qwen_image_benches::forward_flops`) and MLX's peak memory.

mod profile;
mod step;

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use mlx_rs::{Dtype, memory};
use qwen_dit::{QwenImageTransformer, QwenImageTransformerConfig};
use qwen_image_benches::{forward_flops, median};

use crate::step::{Passes, Rng, Row, inputs, measure, measure_pipelined};

const GIB: f64 = (1u64 << 30) as f64;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "dit_step",
    about = "One true-CFG step of the full-size DiT (random bf16 weights)"
)]
pub(crate) struct Opts {
    /// Image sizes in pixels (square) [default: 512,1024,1328; 64,128 with --tiny].
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Untimed steps before measuring.
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub(crate) iters: usize,
    /// Text tokens per prompt.
    #[arg(long, default_value_t = 32)]
    txt: usize,
    /// An edit step: this many reference pictures of the output's size appended after the
    /// noise tokens (each its own RoPE grid entry), their prediction dropped, as the
    /// Qwen-Image-Edit pipelines call the transformer (the batched mode is skipped).
    #[arg(long, default_value_t = 0)]
    pub(crate) edit_pictures: usize,
    /// Blocks of the model [default: the config's 60].
    #[arg(long)]
    layers: Option<usize>,
    /// Skip the CFG-as-one-batch-of-2 mode.
    #[arg(long)]
    no_batched: bool,
    /// Skip the plain-MLX reference kernels mode.
    #[arg(long)]
    no_reference: bool,
    /// Also time steps built while the previous one runs (as the pipeline does).
    #[arg(long)]
    pipelined: bool,
    /// Also time the pipelined step with each step computing its own timestep modulation
    /// (a modulation window of 1 step instead of the pipeline's 8), same process.
    #[arg(long)]
    modulation_per_step: bool,
    /// Also time the two CFG passes left to interleave (without the ordering the pipeline
    /// uses), for their peak memory.
    #[arg(long)]
    interleaved: bool,
    /// With --pipelined, also time (same process) the pipelined step with an evaluation
    /// between the two CFG passes instead of one per step, and a CFG-off step (one forward,
    /// as a Lightning step): what pairing the passes in one evaluation costs.
    #[arg(long, requires = "pipelined")]
    pass_variants: bool,
    /// Also time the pipelined step with this op's fused kernel switched off (its plain-MLX
    /// reference instead), in the same process right after the pipelined row: a same-run
    /// comparison of one kernel (e.g. `linear`, `joint_qkv_heads`). Repeatable.
    #[arg(long, value_name = "OP")]
    without_kernel: Vec<String>,
    /// MLX's memory limit in GiB while stepping (MLX's eval waits for the GPU to free memory
    /// when above it: the peak stays near it).
    #[arg(long, value_name = "GIB")]
    memory_limit_gib: Option<f64>,
    /// Also time the pipelined step with the pipeline's activation budget, once per value
    /// given: MLX's memory limit set to what is resident after loading (the weights) plus
    /// this many GiB for that row, then put back (comma-separated: same-process rows).
    #[arg(
        long,
        value_name = "GIB",
        value_delimiter = ',',
        conflicts_with = "memory_limit_gib"
    )]
    activation_budget_gib: Vec<f64>,
    /// Quantize the random model's Linear layers to 4 or 8 bits (MLX affine, group 64).
    #[arg(long, value_name = "BITS")]
    quantize: Option<i32>,
    /// Profile one block at this size (0: no profile) [default: 1024; 128 with --tiny].
    #[arg(long)]
    profile: Option<usize>,
    /// A 2-layer, 32-wide model at small sizes (CPU smoke test).
    #[arg(long)]
    tiny: bool,
    /// Also write the rows as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<std::path::PathBuf>,
    /// True CFG scale.
    #[arg(long, default_value_t = 4.0)]
    pub(crate) cfg_scale: f32,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    cargo: qwen_image_benches::CargoBenchArgs,
}

impl Opts {
    fn sizes(&self) -> Vec<usize> {
        match (self.sizes.is_empty(), self.tiny) {
            (false, _) => self.sizes.clone(),
            (true, true) => vec![64, 128],
            (true, false) => vec![512, 1024, 1328],
        }
    }

    fn profile_size(&self) -> Option<usize> {
        match self.profile {
            Some(0) => None,
            Some(p) => Some(p),
            None if self.tiny => Some(128),
            None => Some(1024),
        }
    }
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

/// One measured configuration of the step.
#[derive(Debug, Clone)]
struct Mode {
    label: String,
    /// CFG as one B=2 forward.
    batched: bool,
    /// `mlx-fastops`' plain-MLX references instead of its fused kernels.
    reference: bool,
    /// Steps built while the previous one runs.
    pipelined: bool,
    /// How the B=1 passes are arranged.
    passes: Passes,
    /// A fused kernel switched off.
    off: Option<String>,
    /// Steps per modulation window (pipelined chains).
    window: usize,
    /// The activation budget above the resident memory, GiB.
    budget_gib: Option<f64>,
}

/// One row as JSON.
fn row_json(r: &Row) -> serde_json::Value {
    serde_json::json!({
        "impl": "mlx",
        "size": r.size,
        "mode": r.mode,
        "kernels": r.kernels,
        "median_ms": r.median(),
        "min_ms": r.min(),
        "tflops": r.tflops(),
        "flops_per_step": r.flops,
        "peak_bytes": r.peak_bytes,
        "graph_build_ms": median(&r.build_ms),
        "times_ms": r.times_ms,
    })
}

fn main() -> Result<()> {
    let o = Opts::parse();
    ensure!(o.iters > 0, "--iters must be positive");
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
    let mut model = QwenImageTransformer::random(cfg.clone(), dt, o.seed)?;
    if let Some(bits) = o.quantize {
        model.quantize(&qwen_dit::QuantizeSpec::new(bits))?;
        memory::clear_cache()?;
    }
    // As the pipeline: Q/K/V as one GEMM per stream.
    model.fuse_projections()?;
    memory::clear_cache()?;
    println!(
        "random bf16 weights built{} in {:.1} s; active memory {:.2} GiB",
        o.quantize
            .map(|b| format!(" and quantized to {b} bits"))
            .unwrap_or_default(),
        t0.elapsed().as_secs_f64(),
        memory::active_memory()? as f64 / GIB
    );
    let resident = memory::active_memory()?;
    if let Some(g) = o.memory_limit_gib {
        let previous = memory::set_memory_limit((g * GIB) as usize)?;
        println!(
            "memory limit {g:.1} GiB (was {:.1} GiB)",
            previous as f64 / GIB
        );
    }
    let mut rng = Rng {
        seed: o.seed + 1,
        n: 0,
    };

    let w = qwen_dit::MODULATION_WINDOW;
    let plain = Mode {
        label: "2×B=1".into(),
        batched: false,
        reference: false,
        pipelined: false,
        passes: Passes::Ordered,
        off: None,
        window: w,
        budget_gib: None,
    };
    let mut modes = vec![plain.clone()];
    if o.interleaved {
        let label = "2×B=1 interleaved".into();
        modes.push(Mode {
            label,
            passes: Passes::Interleaved,
            ..plain.clone()
        });
    }
    if !o.no_batched {
        modes.push(Mode {
            label: "B=2".into(),
            batched: true,
            ..plain.clone()
        });
    }
    if o.pipelined {
        let piped = Mode {
            label: "2×B=1 pipelined".into(),
            pipelined: true,
            ..plain.clone()
        };
        modes.push(piped.clone());
        if o.pass_variants {
            modes.push(Mode {
                label: "2×B=1 pipelined, an evaluation after each pass".into(),
                passes: Passes::EvalBetween,
                ..piped.clone()
            });
            modes.push(Mode {
                label: "1×B=1 pipelined, CFG off (one forward)".into(),
                passes: Passes::CondOnly,
                ..piped.clone()
            });
        }
        if o.modulation_per_step {
            let label = "2×B=1 pipelined, modulation per step".into();
            modes.push(Mode {
                label,
                window: 1,
                ..piped.clone()
            });
        }
        for op in &o.without_kernel {
            modes.push(Mode {
                off: Some(op.clone()),
                ..piped.clone()
            });
        }
        for &b in &o.activation_budget_gib {
            let label = format!("2×B=1 pipelined, activation budget {b} GiB");
            modes.push(Mode {
                label,
                budget_gib: Some(b),
                ..piped.clone()
            });
        }
    }
    if !o.no_reference {
        modes.push(Mode {
            reference: true,
            ..plain
        });
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut fwd_ms_at_profile = None;
    for size in o.sizes() {
        let inp = inputs(&cfg, size, o.txt, o.edit_pictures, &mut rng)?;
        let fl = forward_flops(&cfg, 1, inp.img_tokens * (1 + o.edit_pictures), o.txt)
            .scaled(2.0)
            .total();
        for m in &modes {
            let (batched, reference, pipelined) = (m.batched, m.reference, m.pipelined);
            let (passes, off, mode) = (m.passes, m.off.as_deref(), m.label.clone());
            let limit = match m.budget_gib {
                Some(b) => Some(memory::set_memory_limit(resident + (b * GIB) as usize)?),
                None => None,
            };
            mlx_fastops::set_force_reference(reference);
            if let Some(op) = off {
                mlx_fastops::fused::set_kernel_disabled(op, true);
            }
            let (times_ms, build_ms, peak) = if pipelined {
                let (t, p, h) = measure_pipelined(&model, &inp, m.window, passes, &o)?;
                println!(
                    "{size:>5}² pipelined: host time per step {:.1} ms (graph build {:.1} + async_eval {:.1}, of which on a CPU {:.1})",
                    h.build + h.encode,
                    h.build,
                    h.encode,
                    h.on_cpu
                );
                (t, Vec::new(), p)
            } else {
                measure(&model, &inp, batched, passes, &o)
                    .with_context(|| format!("{size}² {mode} reference={reference}"))?
            };
            mlx_fastops::set_force_reference(false);
            if let Some(op) = off {
                mlx_fastops::fused::set_kernel_disabled(op, false);
            }
            if let Some(previous) = limit {
                memory::set_memory_limit(previous)?;
            }
            let row = Row {
                size,
                mode: mode.clone(),
                kernels: match (reference, off) {
                    (true, _) => "reference".to_string(),
                    (false, Some(op)) => format!("fused, no {op}"),
                    (false, None) => "fused".to_string(),
                },
                times_ms,
                build_ms,
                // A CFG-off step is one forward.
                flops: if passes == Passes::CondOnly {
                    fl / 2.0
                } else {
                    fl
                },
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
            if Some(size) == o.profile_size()
                && !batched
                && !reference
                && !pipelined
                && off.is_none()
            {
                fwd_ms_at_profile = Some(row.median() / 2.0);
            }
            rows.push(row);
        }
        drop(inp);
        memory::clear_cache()?;
    }

    let prof = match o.profile_size() {
        Some(size) => Some(profile::profile(
            &cfg,
            size,
            o.txt,
            fwd_ms_at_profile,
            &mut rng,
        )?),
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
        let rows: Vec<serde_json::Value> = rows.iter().map(row_json).collect();
        let text = serde_json::to_string_pretty(&rows)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
