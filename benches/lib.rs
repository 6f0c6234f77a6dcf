//! End-to-end benchmarks for qwen-image-rs: shared arithmetic for the bench targets.
//!
//! The `dit_step` bench (`benches/dit_step.rs`) times one true-CFG denoising step of the
//! full-size Qwen-Image DiT with random bf16 weights, as `QwenImagePipeline` runs it at batch
//! 1 (two forwards, cond + uncond); `scripts/bench/diffusers_step.py` times diffusers'
//! `QwenImageTransformer2DModel` at the same shapes, and `docs/speed.md` holds the results.
//!
//! The `pipeline_full` bench (`benches/pipeline_full.rs`) runs the whole
//! `QwenImagePipeline` (text encode, true-CFG denoising, VAE decode) with random full-size
//! components made in memory ([`components`]).
//!
//! This library holds what the benches and their tests need: the image → token geometry
//! ([`image_tokens`]), the FLOP count of one forward from the shapes ([`forward_flops`]),
//! small timing statistics ([`median`]) and the random-weight components ([`components`]).

pub mod components;

use qwen_dit::QwenImageTransformerConfig;

/// The VAE's spatial down-sampling factor (pixels per latent, Qwen-Image's VAE: 8).
pub const VAE_SCALE_FACTOR: usize = 8;

/// Width of the sinusoidal timestep projection (fixed by the architecture).
const TIMESTEP_PROJ_DIM: usize = 256;

/// The token grid `(height, width)` of a `height_px × width_px` image: latents are
/// `px / 8`, packed `patch_size × patch_size`, as `QwenImagePipeline` rounds them
/// (`2·(px // 16)` latents, hence `px // 16` tokens with patch size 2).
pub fn image_tokens(
    config: &QwenImageTransformerConfig,
    height_px: usize,
    width_px: usize,
) -> (usize, usize) {
    let per_token = VAE_SCALE_FACTOR * config.patch_size;
    (height_px / per_token, width_px / per_token)
}

/// FLOPs of one forward, split by kind (multiply-add = 2 FLOPs; softmax, norms and other
/// elementwise work are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ForwardFlops {
    /// Image-stream block GEMMs: Q, K, V, output projection and the two FFN GEMMs.
    pub img_linear: f64,
    /// Text-stream block GEMMs (same layers, `txt_tokens` rows).
    pub txt_linear: f64,
    /// Joint attention: `Q·Kᵀ` and `P·V` over `txt + img` tokens, every head.
    pub attention: f64,
    /// Modulation Linears (`img_mod`, `txt_mod` of every block, `norm_out`) and the
    /// timestep MLP: one row per sample.
    pub modulation: f64,
    /// `img_in`, `txt_in` and `proj_out`.
    pub io: f64,
}

impl ForwardFlops {
    /// All FLOPs of the forward.
    pub fn total(&self) -> f64 {
        self.img_linear + self.txt_linear + self.attention + self.modulation + self.io
    }

    /// `self` scaled by `k` (e.g. 2 for the two forwards of a true-CFG step).
    pub fn scaled(&self, k: f64) -> Self {
        Self {
            img_linear: self.img_linear * k,
            txt_linear: self.txt_linear * k,
            attention: self.attention * k,
            modulation: self.modulation * k,
            io: self.io * k,
        }
    }
}

/// FLOPs of one forward of the DiT `config` for `batch` samples of `img_tokens` image tokens
/// and `txt_tokens` text tokens each.
pub fn forward_flops(
    config: &QwenImageTransformerConfig,
    batch: usize,
    img_tokens: usize,
    txt_tokens: usize,
) -> ForwardFlops {
    let b = batch as f64;
    let n = img_tokens as f64;
    let t = txt_tokens as f64;
    let s = n + t;
    let d = config.inner_dim() as f64;
    let f = config.ffn_dim() as f64;
    let layers = config.num_layers as f64;
    // Per token and block: 4 D×D projections (Q, K, V, out) and D→F→D.
    let per_token = 2.0 * (4.0 * d * d + 2.0 * d * f);
    // Q·Kᵀ and P·V: 2·S²·(H·hd) each.
    let attn = 4.0 * s * s * d;
    let modulation = 2.0 * (2.0 * d * 6.0 * d) * layers // img_mod + txt_mod
        + 2.0 * d * 2.0 * d // norm_out
        + 2.0 * (TIMESTEP_PROJ_DIM as f64 * d + d * d); // timestep MLP
    let io = 2.0 * n * config.in_channels as f64 * d
        + 2.0 * t * config.joint_attention_dim as f64 * d
        + 2.0 * n * d * config.proj_out_dim() as f64;
    ForwardFlops {
        img_linear: b * layers * n * per_token,
        txt_linear: b * layers * t * per_token,
        attention: b * layers * attn,
        modulation: b * modulation,
        io: b * io,
    }
}

/// What `cargo bench` passes to every benchmark program (`--bench`, a name filter), accepted
/// and ignored; flattened into each program's options.
#[derive(clap::Args, Debug, Default)]
pub struct CargoBenchArgs {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
    /// A benchmark name filter passed by `cargo bench`; ignored.
    #[arg(hide = true)]
    pub filter: Vec<String>,
}

/// Median of `xs` (the mean of the two middle values for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_pipeline_rounding() {
        let c = QwenImageTransformerConfig::default();
        assert_eq!(image_tokens(&c, 1024, 1024), (64, 64));
        assert_eq!(image_tokens(&c, 1328, 1328), (83, 83));
        assert_eq!(image_tokens(&c, 512, 768), (32, 48));
        // 1000 px → 2·(1000 // 16) = 124 latents → 62 tokens.
        assert_eq!(image_tokens(&c, 1000, 1000), (62, 62));
    }

    /// Independent count: sum 2·M·K·N over every Linear of the model (from the config's own
    /// layer list) plus the attention GEMMs written out per head.
    #[test]
    fn flops_match_a_layer_by_layer_count() {
        let c = QwenImageTransformerConfig::default();
        let (n, t) = (4096usize, 32usize);
        let mut linear = 0.0f64;
        for (name, din, dout) in c.linear_layers() {
            let rows =
                if name.contains("_mod.") || name.contains("norm_out") || name.contains("timestep")
                {
                    1
                } else if name.contains("add_") || name.contains("txt_") {
                    t
                } else {
                    n
                };
            linear += 2.0 * (rows * din * dout) as f64;
        }
        let s = (n + t) as f64;
        let hd = c.attention_head_dim as f64;
        let attention =
            c.num_layers as f64 * c.num_attention_heads as f64 * 2.0 * (2.0 * s * s * hd);
        let f = forward_flops(&c, 1, n, t);
        let rel = (f.total() - (linear + attention)).abs() / f.total();
        assert!(rel < 1e-12, "{} vs {}", f.total(), linear + attention);
        // docs/gpu.md: ~137 TFLOP per 1024² true-CFG step (two forwards).
        let step = f.scaled(2.0).total() / 1e12;
        assert!((136.0..139.0).contains(&step), "{step} TFLOP");
        // Batch 2 doubles everything.
        let f2 = forward_flops(&c, 2, n, t);
        assert!((f2.total() - 2.0 * f.total()).abs() / f2.total() < 1e-12);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
