//! The Qwen2.5-VL vision tower (transformers 5.23 `Qwen2_5_VisionTransformerPretrainedModel`,
//! `models/qwen2_5_vl/modeling_qwen2_5_vl.py`, with `vision_utils.py` for the position ids,
//! the attention windows and the segments): what turns an input picture into the image tokens
//! Qwen-Image-Edit's text encoder reads in place of its `<|image_pad|>` tokens.
//!
//! From the image processor's patches (`pixel_values`, one row of `C·T·P·P` values per patch,
//! the patches of each 2×2 merge unit consecutive) and each image's `(t, h, w)` patch grid:
//! 1. patch embedding (the Conv3d with stride = kernel, i.e. one matrix product, no bias);
//! 2. the merge units reordered window by window (windows of `window_size` pixels, cut at the
//!    grid's bottom and right edges; [`window_index`]), the 2-D rotary tables with them;
//! 3. blocks: RMSNorm → attention (one QKV projection, rotary on q and k in f32 over halves,
//!    softmax attention inside each window, or inside each image in the blocks of
//!    `fullatt_block_indexes`) → residual; RMSNorm → SiLU-gated MLP → residual;
//! 4. the patch merger (RMSNorm, 4 patches' features side by side, Linear → exact GELU →
//!    Linear to the language model's width), units put back in row-major order per image.
//!
//! The weights are the checkpoint's `visual.*` tensors (or `model.visual.*`); text-to-image
//! never loads them ([`crate::IGNORED_PREFIXES`]).

use std::path::Path;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype, ops};
use mlx_weights::{Role, StrictLoader, Vars};
use serde::Deserialize;

use crate::error::{Result, TextEncoderError};

/// RMSNorm epsilon of the tower's norms (hard-coded in transformers).
const NORM_EPS: f32 = 1e-6;

fn bad(msg: impl Into<String>) -> TextEncoderError {
    TextEncoderError::InvalidConfig(msg.into())
}

/// `vision_config` of a Qwen2.5-VL `text_encoder/config.json`, as saved by transformers 4.x
/// (`in_chans`, no rope keys) and 5.x (`in_channels`, `rope_parameters`).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    /// Number of blocks.
    pub depth: usize,
    /// Width of the blocks.
    pub hidden_size: usize,
    /// Width of the blocks' MLP.
    pub intermediate_size: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Patches per merge-unit side (2: 2×2 patches become one image token).
    #[serde(default = "d_two")]
    pub spatial_merge_size: usize,
    /// Frames per patch (images are repeated to fill them).
    #[serde(default = "d_two")]
    pub temporal_patch_size: usize,
    /// Attention window side in pixels.
    pub window_size: usize,
    /// Blocks that attend over each whole image instead of windows.
    #[serde(default)]
    pub fullatt_block_indexes: Vec<usize>,
    /// Output width (the language model's hidden size).
    pub out_hidden_size: usize,
    /// Input channels (transformers 5.x name).
    #[serde(default)]
    pub in_channels: Option<usize>,
    /// Input channels (transformers 4.x name).
    #[serde(default)]
    pub in_chans: Option<usize>,
    /// The MLP's activation (only `silu` exists in Qwen2.5-VL).
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// Rotary settings of 5.x saves (`rope_type` "axial", `rope_theta`).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
}

fn d_two() -> usize {
    2
}

impl VisionConfig {
    /// Reads the `vision_config` object of a `text_encoder/config.json` and checks it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let root = mlx_weights::read_json_object(path)?;
        let v = root
            .get("vision_config")
            .cloned()
            .ok_or_else(|| bad(format!("{} has no `vision_config`", path.display())))?;
        let cfg: Self = serde_json::from_value(v).map_err(|e| TextEncoderError::json(path, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Input channels (`in_channels`, else `in_chans`, else 3).
    pub fn channels(&self) -> usize {
        self.in_channels.or(self.in_chans).unwrap_or(3)
    }

    /// Values per patch row of `pixel_values`: channels × frames × patch².
    pub fn patch_width(&self) -> usize {
        self.channels() * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// The rotary base (`rope_parameters.rope_theta`, default 10000).
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(10000.0)
    }

    /// Merge units per window side.
    pub fn window_units(&self) -> usize {
        self.window_size / self.spatial_merge_size.max(1) / self.patch_size.max(1)
    }

    /// Checks what the forward relies on.
    pub fn validate(&self) -> Result<()> {
        let hd = self.head_dim();
        let mut problems = Vec::new();
        if self.depth == 0 || self.hidden_size == 0 || self.num_heads == 0 {
            problems.push("depth, hidden_size and num_heads must be positive".to_string());
        }
        if !self.hidden_size.is_multiple_of(self.num_heads.max(1)) || !hd.is_multiple_of(4) {
            problems.push(format!(
                "hidden_size {} must split into {} heads of a width divisible by 4",
                self.hidden_size, self.num_heads
            ));
        }
        if self.patch_size == 0 || self.spatial_merge_size == 0 || self.temporal_patch_size == 0 {
            problems.push(
                "patch_size, spatial_merge_size, temporal_patch_size must be positive".into(),
            );
        }
        if self.window_units() == 0 {
            problems.push(format!(
                "window_size {} is smaller than one merge unit ({} px)",
                self.window_size,
                self.spatial_merge_size * self.patch_size
            ));
        }
        if let Some(i) = self
            .fullatt_block_indexes
            .iter()
            .find(|&&i| i >= self.depth)
        {
            problems.push(format!(
                "fullatt_block_indexes names block {i} of {}",
                self.depth
            ));
        }
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            problems.push(format!("hidden_act `{act}` (Qwen2.5-VL's tower uses silu)"));
        }
        if let Some(t) = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_type"))
            .and_then(serde_json::Value::as_str)
            && t != "axial"
        {
            problems.push(format!("vision rope_type `{t}` (only `axial` exists)"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("vision_config: {}", problems.join("; "))))
        }
    }
}

/// One image's patch grid: frames, rows and columns of patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Frames (1 for an image).
    pub t: usize,
    /// Patch rows.
    pub h: usize,
    /// Patch columns.
    pub w: usize,
}

impl Grid {
    /// Patches of the grid.
    pub fn patches(&self) -> usize {
        self.t * self.h * self.w
    }
}

/// The order in which the tower visits the merge units (transformers'
/// `get_vision_window_index`): per image, windows of `window_units`² units row-major over the
/// window grid (cut at the bottom and right edges), units row-major inside a window; and the
/// cumulative patch counts at the window boundaries (starting at 0, no empty windows).
pub fn window_index(grids: &[Grid], merge: usize, window_units: usize) -> (Vec<usize>, Vec<usize>) {
    let unit = merge * merge;
    let mut index = Vec::new();
    let mut cu = vec![0usize];
    let mut offset = 0;
    for g in grids {
        let (lh, lw) = (g.h / merge, g.w / merge);
        let nwh = lh / window_units + 1;
        let nww = lw / window_units + 1;
        for t in 0..g.t {
            for wy in 0..nwh {
                for wx in 0..nww {
                    let mut count = 0;
                    for y in wy * window_units..((wy + 1) * window_units).min(lh) {
                        for x in wx * window_units..((wx + 1) * window_units).min(lw) {
                            index.push(offset + (t * lh + y) * lw + x);
                            count += 1;
                        }
                    }
                    let last = *cu.last().unwrap_or(&0);
                    if count > 0 {
                        cu.push(last + count * unit);
                    }
                }
            }
        }
        offset += g.t * lh * lw;
    }
    (index, cu)
}

/// Each patch's (row, column) in its image's grid, in the processor's patch order (merge
/// units row-major, the patches of a unit row-major inside it; frames repeat the grid).
pub fn patch_positions(grids: &[Grid], merge: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for g in grids {
        for _ in 0..g.t {
            for bh in 0..g.h / merge {
                for bw in 0..g.w / merge {
                    for dy in 0..merge {
                        for dx in 0..merge {
                            out.push((bh * merge + dy, bw * merge + dx));
                        }
                    }
                }
            }
        }
    }
    out
}

/// A Linear layer with bias, `x·wᵀ + b`.
struct Dense {
    w: Array,
    b: Array,
}

impl Dense {
    fn load(v: &mut Vars<'_>, name: &str, dout: usize, din: usize) -> Self {
        let (o, i) = (dout as i32, din as i32);
        Self {
            w: v.take(
                &format!("{name}.weight"),
                &[o, i],
                Role::Weight { fan_in: din },
            ),
            b: v.take(&format!("{name}.bias"), &[o], Role::Bias),
        }
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        Ok(mlx_fastops::linear(x, &self.w, &self.b)?)
    }

    fn arrays(&self) -> [&Array; 2] {
        [&self.w, &self.b]
    }
}

struct Block {
    norm1: Array,
    norm2: Array,
    qkv: Dense,
    proj: Dense,
    gate: Dense,
    up: Dense,
    down: Dense,
}

impl Block {
    fn load(v: &mut Vars<'_>, cfg: &VisionConfig) -> Self {
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        Self {
            norm1: v.take("norm1.weight", &[c as i32], Role::NormWeight),
            norm2: v.take("norm2.weight", &[c as i32], Role::NormWeight),
            qkv: Dense::load(v, "attn.qkv", 3 * c, c),
            proj: Dense::load(v, "attn.proj", c, c),
            gate: Dense::load(v, "mlp.gate_proj", f, c),
            up: Dense::load(v, "mlp.up_proj", f, c),
            down: Dense::load(v, "mlp.down_proj", c, f),
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.norm1, &self.norm2];
        for d in [&self.qkv, &self.proj, &self.gate, &self.up, &self.down] {
            v.extend(d.arrays());
        }
        v
    }
}

/// Whether a checkpoint key belongs to the vision tower.
fn is_visual(key: &str) -> bool {
    key.starts_with("visual.") || key.starts_with("model.visual.")
}

/// The tower's key prefix in a checkpoint holding `keys`: `model.visual` (transformers 5.x's
/// in-memory layout) or `visual` (what it saves, and what Qwen-Image-Edit ships).
fn visual_prefix<'a>(mut keys: impl Iterator<Item = &'a str>) -> &'static str {
    if keys.any(|k| k.starts_with("model.visual.")) {
        "model.visual"
    } else {
        "visual"
    }
}

/// Checks the vision tower of a `text_encoder/` folder from its config and the safetensors
/// headers alone, before anything is loaded: one error lists every missing, unexpected,
/// mis-shaped or non-float `visual.*` tensor (an edit checkpoint without the tower's
/// weights fails here, naming the keys).
pub fn check_checkpoint(dir: &Path) -> Result<()> {
    let cfg = VisionConfig::from_file(&dir.join("config.json"))?;
    cfg.validate()?;
    let visual: std::collections::BTreeMap<_, _> = mlx_weights::inventory(dir)?
        .into_iter()
        .filter(|(k, _)| is_visual(k))
        .collect();
    let prefix = visual_prefix(visual.keys().map(String::as_str));
    let mut rec = mlx_weights::ShapeRecorder::new(Dtype::Float32);
    VisionTower::declare(&mut Vars::new(&mut rec).pp(prefix), cfg, Dtype::Float32);
    let expected = rec.into_expected();
    Ok(mlx_weights::check_inventory(dir, &expected, &visual, &[])?)
}

/// The tower's weights and settings.
pub struct VisionTower {
    cfg: VisionConfig,
    dtype: Dtype,
    /// The patch embedding as a matrix, `(hidden, C·T·P·P)`.
    patch: Array,
    blocks: Vec<Block>,
    ln_q: Array,
    fc1: Dense,
    fc2: Dense,
}

/// `q·cos + rotate_half(q)·sin` in f32 (halves, not interleaved pairs), cast back.
fn rotary(x: &Array, cos: &Array, sin: &Array) -> Result<Array> {
    let dt = x.dtype();
    let xf = x.as_dtype(Dtype::Float32)?;
    let half = x.dim(-1) / 2;
    let parts = ops::split_at_indices(&xf, &[half], -1)?;
    let rot = ops::concatenate(&[ops::negative(&parts[1])?, parts[0].clone()], -1)?;
    let out = ops::add(ops::multiply(&xf, cos)?, ops::multiply(&rot, sin)?)?;
    Ok(out.as_dtype(dt)?)
}

/// RMSNorm as transformers computes it here: `w · (x·rsqrt(mean(x²) + eps))` (MLX's fast
/// RMSNorm: f32 accumulation, rounded to x's dtype before the weight).
fn rms_norm(x: &Array, w: &Array) -> Result<Array> {
    Ok(mlx_fastops::rms_norm(x, w, NORM_EPS)?)
}

/// GELU with `erf` (PyTorch `nn.GELU()`): `0.5·x·(1 + erf(x/√2))`, constants in x's dtype.
fn gelu_erf(x: &Array) -> Result<Array> {
    let dt = x.dtype();
    let c = |v: f32| mlx_fastops::scalar(v, dt);
    let e = ops::erf(ops::multiply(x, c(std::f32::consts::FRAC_1_SQRT_2)?)?)?;
    Ok(ops::multiply(
        ops::multiply(x, c(0.5)?)?,
        ops::add(e, c(1.0)?)?,
    )?)
}

/// Attention restricted to segments of the sequence (windows, or whole images), computed
/// segment by segment: the segments are gathered into a batch padded to the longest one
/// (padding rows read an appended zero row and are masked out as keys), attended in one
/// batched call, and scattered back — work and memory grow with N·L, not N², for segments of
/// at most L positions.
struct Segments {
    /// `(S·L,)`: each batch slot's position in the sequence, or N for padding.
    gather: Array,
    /// `(N,)`: each position's slot in the batch.
    scatter: Array,
    /// `(S, 1, 1, L)` valid keys, `None` when no segment is padded.
    mask: Option<Array>,
    count: i32,
    len: i32,
}

impl Segments {
    /// From cumulative boundaries `cu` over `n` positions (empty segments skipped).
    fn new(cu: &[usize], n: usize) -> Self {
        let spans: Vec<(usize, usize)> = cu
            .windows(2)
            .map(|w| (w[0].min(n), w[1].min(n)))
            .filter(|(a, b)| b > a)
            .collect();
        let len = spans.iter().map(|(a, b)| b - a).max().unwrap_or(1);
        let mut gather = Vec::with_capacity(spans.len() * len);
        let mut scatter = vec![0i32; n];
        let mut valid = Vec::with_capacity(spans.len() * len);
        for (si, &(a, b)) in spans.iter().enumerate() {
            for j in 0..len {
                if a + j < b {
                    gather.push((a + j) as i32);
                    scatter[a + j] = (si * len + j) as i32;
                    valid.push(true);
                } else {
                    gather.push(n as i32);
                    valid.push(false);
                }
            }
        }
        let (count, len) = (spans.len() as i32, len as i32);
        let padded = valid.iter().any(|v| !v);
        Self {
            gather: Array::from_slice(&gather, &[count * len]),
            scatter: Array::from_slice(&scatter, &[n as i32]),
            mask: padded.then(|| Array::from_slice(&valid, &[count, 1, 1, len])),
            count,
            len,
        }
    }

    /// Softmax attention of `q`, `k`, `v` `(N, H, D)` within each segment: `(N, H, D)`.
    fn attend(&self, q: &Array, k: &Array, v: &Array, scale: f32) -> Result<Array> {
        let (n, h, d) = (q.dim(0), q.dim(1), q.dim(2));
        // One segment holding the whole sequence (a full-attention block over one image):
        // the gather and the scatter would be identities.
        let whole = self.count == 1 && self.len == n;
        let batch = |x: &Array| -> Result<Array> {
            let rows = if whole {
                x.clone()
            } else if self.mask.is_some() {
                // Padding slots read the appended zero row.
                ops::concatenate(&[x.clone(), ops::zeros_like(x.index(..1))?], 0)?
                    .take_axis(&self.gather, 0)?
            } else {
                x.take_axis(&self.gather, 0)?
            };
            Ok(rows
                .reshape(&[self.count, self.len, h, d])?
                .transpose_axes(&[0, 2, 1, 3])?)
        };
        let o = mlx_fastops::sdpa(
            &batch(q)?,
            &batch(k)?,
            &batch(v)?,
            scale,
            self.mask.as_ref(),
        )?;
        let o = o
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[self.count * self.len, h, d])?;
        Ok(if whole {
            o
        } else {
            o.take_axis(&self.scatter, 0)?
        })
    }
}

impl VisionTower {
    /// Loads the tower of a `text_encoder/` folder: its config's `vision_config` and every
    /// `visual.*` (or `model.visual.*`) tensor, strictly (missing, unexpected and mis-shaped
    /// keys listed together), cast to `dtype` and evaluated.
    pub fn load(dir: &Path, dtype: Dtype) -> Result<Self> {
        let cfg = VisionConfig::from_file(&dir.join("config.json"))?;
        let tensors = mlx_weights::load_component_filtered(dir, &is_visual)?;
        let prefix = visual_prefix(tensors.keys());
        let mut l = StrictLoader::new(tensors, dtype);
        let tower = {
            let mut v = Vars::new(&mut l);
            let mut v = v.pp(prefix);
            Self::take(&mut v, cfg, dtype)?
        };
        l.finish(&[])?;
        let mut all: Vec<&Array> = vec![&tower.patch, &tower.ln_q];
        all.extend(tower.fc1.arrays());
        all.extend(tower.fc2.arrays());
        for b in &tower.blocks {
            all.extend(b.arrays());
        }
        mlx_rs::transforms::eval(all)?;
        Ok(tower)
    }

    /// A tower with seeded random weights of `cfg`'s shapes (for benchmarks: the work does
    /// not depend on the values).
    pub fn random(cfg: VisionConfig, dtype: Dtype, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut src = mlx_weights::RandomSource::new(seed, dtype)?;
        let tower = Self::take(&mut Vars::new(&mut src), cfg, dtype)?;
        src.finish()?;
        Ok(tower)
    }

    fn take(v: &mut Vars<'_>, cfg: VisionConfig, dtype: Dtype) -> Result<Self> {
        let mut tower = Self::declare(v, cfg, dtype);
        let (c, w) = (tower.cfg.hidden_size as i32, tower.cfg.patch_width() as i32);
        tower.patch = tower.patch.reshape(&[c, w])?;
        Ok(tower)
    }

    /// Takes every tensor from `v` as the checkpoint stores it (the patch embedding still the
    /// Conv3d kernel).
    fn declare(v: &mut Vars<'_>, cfg: VisionConfig, dtype: Dtype) -> Self {
        let c = cfg.hidden_size;
        let (p, t) = (cfg.patch_size as i32, cfg.temporal_patch_size as i32);
        let patch = v.take(
            "patch_embed.proj.weight",
            &[c as i32, cfg.channels() as i32, t, p, p],
            Role::Weight {
                fan_in: cfg.patch_width(),
            },
        );
        let blocks = (0..cfg.depth)
            .map(|i| Block::load(&mut v.pp(format!("blocks.{i}")), &cfg))
            .collect();
        let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let ln_q = v.take("merger.ln_q.weight", &[c as i32], Role::NormWeight);
        let fc1 = Dense::load(v, "merger.mlp.0", c * unit, c * unit);
        let fc2 = Dense::load(v, "merger.mlp.2", cfg.out_hidden_size, c * unit);
        Self {
            cfg,
            dtype,
            patch,
            blocks,
            ln_q,
            fc1,
            fc2,
        }
    }

    /// The settings.
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Image tokens for `pixel_values` (patches × [`VisionConfig::patch_width`], the
    /// processor's order) of images with patch `grids`: `(Σ t·h·w / merge², out_hidden_size)`,
    /// each image's tokens row-major over its merge units, images in order. The pixel values
    /// are cast to the tower's dtype first, as transformers does.
    pub fn forward(&self, pixel_values: &Array, grids: &[Grid]) -> Result<Array> {
        let cfg = &self.cfg;
        let m = cfg.spatial_merge_size;
        let unit = m * m;
        let n: usize = grids.iter().map(Grid::patches).sum();
        if grids.is_empty()
            || grids
                .iter()
                .any(|g| g.t == 0 || g.h % m != 0 || g.w % m != 0 || g.h == 0 || g.w == 0)
        {
            return Err(TextEncoderError::InvalidInput(format!(
                "image grids {grids:?} must be non-empty with rows and columns multiples of {m}"
            )));
        }
        if pixel_values.shape() != [n as i32, cfg.patch_width() as i32] {
            return Err(TextEncoderError::InvalidInput(format!(
                "pixel_values {:?} must be ({n}, {}) for grids {grids:?}",
                pixel_values.shape(),
                cfg.patch_width()
            )));
        }
        let (c, heads, hd) = (cfg.hidden_size as i32, cfg.num_heads as i32, cfg.head_dim());
        let ni = n as i32;
        let x = pixel_values.as_dtype(self.dtype)?;
        let mut h = ops::matmul(&x, self.patch.t())?;

        // Window order of the patches (each unit's patches stay together).
        let (units, cu_window) = window_index(grids, m, cfg.window_units());
        let order: Vec<i32> = units
            .iter()
            .flat_map(|&u| (0..unit).map(move |j| (u * unit + j) as i32))
            .collect();
        h = h.take_axis(Array::from_slice(&order, &[ni]), 0)?;

        // 2-D rotary tables in that order: [h·f, w·f, h·f, w·f] over the head width.
        let pos = patch_positions(grids, m);
        let quarter = hd / 4;
        let spatial = (hd / 2) as f64;
        let inv: Vec<f32> = (0..quarter)
            .map(|i| (1.0 / cfg.rope_theta().powf((2 * i) as f64 / spatial)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        for &o in &order {
            let (py, px) = pos[o as usize];
            for _ in 0..2 {
                for (p, _) in [(py, 0), (px, 1)] {
                    for f in &inv {
                        let a = p as f32 * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        let cos = Array::from_slice(&cos, &[ni, 1, hd as i32]);
        let sin = Array::from_slice(&sin, &[ni, 1, hd as i32]);

        // Segments: windows, or whole images (frames) in the full-attention blocks.
        let mut cu_full = vec![0usize];
        for g in grids {
            for _ in 0..g.t {
                let last = *cu_full.last().unwrap_or(&0);
                cu_full.push(last + g.h * g.w);
            }
        }
        let windows = Segments::new(&cu_window, n);
        let images = Segments::new(&cu_full, n);
        let scale = 1.0 / (hd as f32).sqrt();

        for (i, b) in self.blocks.iter().enumerate() {
            let segments = if cfg.fullatt_block_indexes.contains(&i) {
                &images
            } else {
                &windows
            };
            let qkv = b
                .qkv
                .forward(&rms_norm(&h, &b.norm1)?)?
                .reshape(&[ni, 3, heads, hd as i32])?;
            let parts = ops::split_equal(&qkv, 3, 1)?;
            let sq = |a: &Array| ops::squeeze_axes(a, &[1]);
            let q = rotary(&sq(&parts[0])?, &cos, &sin)?;
            let k = rotary(&sq(&parts[1])?, &cos, &sin)?;
            let v = sq(&parts[2])?;
            let o = segments.attend(&q, &k, &v, scale)?.reshape(&[ni, c])?;
            h = ops::add(&h, &b.proj.forward(&o)?)?;
            let n2 = rms_norm(&h, &b.norm2)?;
            let gated = ops::multiply(
                &mlx_fastops::silu(&b.gate.forward(&n2)?)?,
                &b.up.forward(&n2)?,
            )?;
            h = ops::add(&h, &b.down.forward(&gated)?)?;
        }

        let merged = rms_norm(&h, &self.ln_q)?.reshape(&[ni / unit as i32, c * unit as i32])?;
        let merged = self.fc2.forward(&gelu_erf(&self.fc1.forward(&merged)?)?)?;
        // Back to row-major units per image.
        let mut back = vec![0i32; units.len()];
        for (pos, &u) in units.iter().enumerate() {
            back[u] = pos as i32;
        }
        Ok(merged.take_axis(Array::from_slice(&back, &[units.len() as i32]), 0)?)
    }
}

/// `embeds` `(B, T, C)` with the rows of the image tokens (`input_ids[b][t] ==
/// image_token_id`) replaced by `features` `(N, C)` in row-major order (row by row, then
/// along each row), as transformers' `masked_scatter` does; the token count must equal N.
pub fn place_image_tokens(
    embeds: &Array,
    input_ids: &[Vec<i32>],
    image_token_id: i32,
    features: &Array,
) -> Result<Array> {
    let (b, t, c) = (embeds.dim(0), embeds.dim(1), embeds.dim(2));
    if input_ids.len() != b as usize || input_ids.iter().any(|r| r.len() != t as usize) {
        return Err(TextEncoderError::InvalidInput(format!(
            "token ids ({} rows) do not match embeddings ({b}, {t})",
            input_ids.len()
        )));
    }
    let n = features.dim(0);
    let slots = input_ids
        .iter()
        .flatten()
        .filter(|&&id| id == image_token_id)
        .count();
    if slots != n as usize || features.ndim() != 2 || features.dim(1) != c {
        return Err(TextEncoderError::InvalidInput(format!(
            "{slots} image tokens in the prompt for image features {:?} (width {c} expected)",
            features.shape()
        )));
    }
    // Gather from [embeddings; features]: each position takes its own row or the next image
    // feature.
    let total = b * t;
    let mut next = total;
    let index: Vec<i32> = input_ids
        .iter()
        .flatten()
        .enumerate()
        .map(|(p, &id)| {
            if id == image_token_id {
                next += 1;
                next - 1
            } else {
                p as i32
            }
        })
        .collect();
    let both = ops::concatenate(
        &[
            embeds.reshape(&[total, c])?,
            features.as_dtype(embeds.dtype())?,
        ],
        0,
    )?;
    Ok(both
        .take_axis(Array::from_slice(&index, &[total]), 0)?
        .reshape(&[b, t, c])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segment attention (batched, padded or not, or the whole sequence) equals attending each
    /// segment on its own.
    #[test]
    fn segments_attend_each_segment_alone() -> Result<()> {
        let (h, d) = (2, 8);
        for (cu, n) in [
            (vec![0, 16, 32, 48], 48),     // equal segments: no padding
            (vec![0, 16, 20, 36, 40], 40), // unequal: padded
            (vec![0, 24], 24),             // one segment: the whole sequence
        ] {
            let key = mlx_rs::random::key(n as u64)?;
            let qkv = mlx_rs::random::normal::<f32>(&[3, n as i32, h, d], None, None, &key)?;
            let parts = ops::split_equal(&qkv, 3, 0)?;
            let sq = |a: &Array| ops::squeeze_axes(a, &[0]);
            let (q, k, v) = (sq(&parts[0])?, sq(&parts[1])?, sq(&parts[2])?);
            let got = Segments::new(&cu, n).attend(&q, &k, &v, 0.3)?;
            let mut want = Vec::new();
            for w in cu.windows(2) {
                let idx = Array::from_slice(
                    &(w[0] as i32..w[1] as i32).collect::<Vec<_>>(),
                    &[(w[1] - w[0]) as i32],
                );
                let hf = |a: &Array| -> Result<Array> {
                    Ok(a.take_axis(&idx, 0)?
                        .transpose_axes(&[1, 0, 2])?
                        .expand_dims(0)?)
                };
                let o = mlx_fastops::sdpa(&hf(&q)?, &hf(&k)?, &hf(&v)?, 0.3, None)?;
                want.push(o.squeeze_axes(&[0])?.transpose_axes(&[1, 0, 2])?);
            }
            let want = ops::concatenate(&want, 0)?;
            let diff = ops::max(&ops::abs(&ops::subtract(&got, &want)?)?, None)?;
            diff.eval()?;
            // f32, the same softmax over the same keys (padding masked): rounding only.
            assert!(
                diff.item_exact::<f32>() < 1e-5,
                "{cu:?}: {}",
                diff.item_exact::<f32>()
            );
        }
        Ok(())
    }

    /// The `vision_config` block of the real Qwen-Image `text_encoder/config.json` (saved by
    /// transformers 4.53: `in_chans` and `in_channels`, no rope keys).
    #[test]
    fn the_released_config_parses() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TextEncoderError::io("tempdir", e))?;
        let path = dir.path().join("config.json");
        let json = serde_json::json!({
            "model_type": "qwen2_5_vl",
            "vision_config": {
                "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                "num_heads": 16, "in_chans": 3, "in_channels": 3, "out_hidden_size": 3584,
                "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                "temporal_patch_size": 2, "window_size": 112, "tokens_per_second": 2,
                "fullatt_block_indexes": [7, 15, 23, 31], "model_type": "qwen2_5_vl"
            }
        });
        std::fs::write(&path, json.to_string()).map_err(|e| TextEncoderError::io(&path, e))?;
        let cfg = VisionConfig::from_file(&path)?;
        assert_eq!(
            (cfg.patch_width(), cfg.head_dim(), cfg.window_units()),
            (1176, 80, 4)
        );
        assert_eq!(cfg.rope_theta(), 10000.0);
        // A 1024² picture becomes a 74×74 patch grid (1036² after the processor's resize):
        // 37×37 units in 10×10 windows of up to 4×4, 1369 tokens.
        let (index, cu) = window_index(&[Grid { t: 1, h: 74, w: 74 }], 2, 4);
        assert_eq!(index.len(), 37 * 37);
        assert_eq!(cu.len(), 10 * 10 + 1);
        assert_eq!(*cu.last().unwrap_or(&0), 74 * 74);
        // A config the tower cannot run is refused, naming the key.
        let mut broken = json.clone();
        broken["vision_config"]["hidden_act"] = "gelu".into();
        std::fs::write(&path, broken.to_string()).map_err(|e| TextEncoderError::io(&path, e))?;
        let e = VisionConfig::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("hidden_act"), "{e}");
        Ok(())
    }
}
