//! `--profile SIZE`: one block's pieces (GEMMs, attention, elementwise ops) timed alone at
//! the real shapes, and a table of their share of the measured forward.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;
use mlx_rs::error::Exception;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{Array, Dtype, ops};
use qwen_dit::{QwenImageTransformerConfig, RopeTables};
use qwen_image_benches::{image_tokens, median};

use crate::step::Rng;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
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

pub(crate) struct Piece {
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

/// The shapes one profile runs at.
struct Shapes {
    n: usize,
    t: usize,
    s: usize,
    d: usize,
    f: usize,
    heads: usize,
    hd: usize,
}

/// Chain length and repetitions of every timing.
const K: usize = 10;
const REPS: usize = 5;
/// Bytes per bf16 element.
const EB: f64 = 2.0;

fn piece(name: &str, kind: Kind, per_block: f64, ms: f64, flops: f64, bytes: f64) -> Piece {
    Piece {
        name: name.to_string(),
        kind,
        per_block,
        ms,
        flops,
        bytes,
    }
}

/// The block's GEMMs: Q/K/V/out projections, the same as one fused QKV GEMM, the FFN and
/// the modulation Linear.
fn gemm_pieces(sh: &Shapes, rng: &mut Rng) -> Result<Vec<Piece>> {
    let dt = Dtype::Bfloat16;
    let (n, t, d, f) = (sh.n, sh.t, sh.d, sh.f);
    let di = d as i32;
    let (k, reps, eb) = (K, REPS, EB);
    let mut pieces = Vec::new();
    let mut add = |name: &str, kind: Kind, per_block: f64, ms: f64, flops: f64, bytes: f64| {
        pieces.push(piece(name, kind, per_block, ms, flops, bytes));
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
            &format!("{label} out proj (as Q/K/V unfused)  ({rows}×{d}·{d}×{d})"),
            Kind::Gemm,
            1.0,
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
                "{label} Q/K/V as one {rows}×{d}·{d}×{} GEMM, per Q/K/V",
                3 * d
            ),
            Kind::Gemm,
            3.0,
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
            "  (img_mod/txt_mod through MLX's addmm)",
            Kind::Gemm,
            0.0,
            ms,
            2.0 * (6 * d * d) as f64,
            eb * (6 * d * d) as f64,
        );
        // As the model runs it: the fastops matrix-vector kernel; computed once per step
        // for both CFG passes, so one per block and forward.
        let ms = time_chain(k, reps, &x, &|i, x| {
            let (w, b) = &wmod[i % 2];
            let y = mlx_fastops::linear(x, w, b)?;
            Ok(ops::split_equal(&y, 6, -1)?.swap_remove(0))
        })?;
        add(
            &format!("img_mod/txt_mod, fastops linear (1×{d}·{d}×{})", 6 * d),
            Kind::Gemm,
            1.0,
            ms,
            2.0 * (6 * d * d) as f64,
            eb * (6 * d * d) as f64,
        );
    }
    drop((wdd, wup, wdown, wmod, wqkv));
    Ok(pieces)
}

/// Attention: SDPA on contiguous inputs and as the block calls it.
fn attention_pieces(sh: &Shapes, rng: &mut Rng) -> Result<Vec<Piece>> {
    let dt = Dtype::Bfloat16;
    let (s, d, heads, hd) = (sh.s, sh.d, sh.heads, sh.hd);
    let (si, di, hi, hdi) = (s as i32, d as i32, heads as i32, hd as i32);
    let (k, reps, eb) = (K, REPS, EB);
    let mut pieces = Vec::new();
    let mut add = |name: &str, kind: Kind, per_block: f64, ms: f64, flops: f64, bytes: f64| {
        pieces.push(piece(name, kind, per_block, ms, flops, bytes));
    };
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
    Ok(pieces)
}

/// Elementwise and normalisation ops, fused and as plain-MLX references, with the compiled
/// GELU and the per-op floor for comparison.
fn elementwise_pieces(
    cfg: &QwenImageTransformerConfig,
    size: usize,
    sh: &Shapes,
    rng: &mut Rng,
) -> Result<Vec<Piece>> {
    let dt = Dtype::Bfloat16;
    let (h, w) = image_tokens(cfg, size, size);
    let (n, t, s, d, f) = (sh.n, sh.t, sh.s, sh.d, sh.f);
    let (ti, si, di, fi, hi, hdi) = (
        t as i32,
        s as i32,
        d as i32,
        f as i32,
        sh.heads as i32,
        sh.hd as i32,
    );
    let (k, reps, eb) = (K, REPS, EB);
    let mut pieces = Vec::new();
    let mut add = |name: &str, kind: Kind, per_block: f64, ms: f64, flops: f64, bytes: f64| {
        pieces.push(piece(name, kind, per_block, ms, flops, bytes));
    };
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
            &format!("  ({label} per-head RMSNorm (q, k), unfused)"),
            Kind::Elementwise,
            0.0,
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
            "  (concat [txt, img] (q, k, v), unfused)",
            Kind::Elementwise,
            0.0,
            ms,
            0.0,
            eb * 2.0 * sd,
        );
        let rope = RopeTables::new(cfg, &[(1, h, w)], t)?;
        let ms = time_chain(k, reps, &x4, &|_, x| {
            Ok(mlx_fastops::apply_rope(x, rope.cos(), rope.sin())?)
        })?;
        add(
            "  (RoPE (q, k) alone, fused)",
            Kind::Elementwise,
            0.0,
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
        // As the model runs it: per-head q/k RMSNorm, the join and RoPE in one kernel from
        // the packed Q/K/V projections (reads and writes q, k and v once).
        let qkv_t = rng.normal(&[1, ti, 3 * di], 1.0, dt)?;
        let qkv_i = rng.normal(&[1, si - ti, 3 * di], 1.0, dt)?;
        let wn = rng.normal(&[hdi], 1.0, dt)?;
        let ms = time_chain(k, reps, &qkv_i, &|_, x| {
            let qkv = mlx_fastops::joint_qkv_heads(&mlx_fastops::JointQkv {
                first: &qkv_t,
                second: x,
                norms: [&wn, &wn, &wn, &wn],
                heads: hi,
                eps: 1e-6,
                cos: rope.cos(),
                sin: rope.sin(),
            })?;
            // the same input again, after this one: the chain runs the kernel k times in turn
            let mut next = mlx_fastops::depends(std::slice::from_ref(x), &qkv)?;
            Ok(next.swap_remove(0))
        })?;
        add(
            "q/k RMSNorm + join + RoPE, fused (joint_qkv_heads)",
            Kind::Elementwise,
            1.0,
            ms,
            0.0,
            eb * 2.0 * 3.0 * sd,
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
        let eps = mlx_fastops::scalar(1e-3, dt)?;
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
    Ok(pieces)
}

/// The table of `pieces` and their per-forward sums.
fn report(
    cfg: &QwenImageTransformerConfig,
    size: usize,
    sh: &Shapes,
    pieces: &[Piece],
    fwd_ms: Option<f64>,
) -> Result<String> {
    let (n, t, k) = (sh.n, sh.t, K);
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
    for p in pieces {
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

/// One block's pieces at `size`² with `txt` text tokens; `fwd_ms`, the measured forward,
/// gives each piece's share.
pub(crate) fn profile(
    cfg: &QwenImageTransformerConfig,
    size: usize,
    txt: usize,
    fwd_ms: Option<f64>,
    rng: &mut Rng,
) -> Result<String> {
    let (h, w) = image_tokens(cfg, size, size);
    let (n, t) = (h * w, txt);
    let sh = Shapes {
        n,
        t,
        s: n + t,
        d: cfg.inner_dim(),
        f: cfg.ffn_dim(),
        heads: cfg.num_attention_heads,
        hd: cfg.attention_head_dim,
    };
    let mut pieces = gemm_pieces(&sh, rng)?;
    pieces.extend(attention_pieces(&sh, rng)?);
    pieces.extend(elementwise_pieces(cfg, size, &sh, rng)?);
    report(cfg, size, &sh, &pieces, fwd_ms)
}
