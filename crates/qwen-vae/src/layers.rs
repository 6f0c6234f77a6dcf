//! Building blocks shared by the encoder and decoder: causal 3-D convolution, 2-D convolution,
//! the VAE's RMS norm, residual and attention blocks, resamplers and the middle block.
//!
//! Activations are channels-last, `(B, T, H, W, C)`. Mirrors the `QwenImage*` modules of
//! diffusers' `autoencoder_kl_qwenimage.py`.

use mlx_rs::{
    Array, Dtype,
    fast::{rms_norm, scaled_dot_product_attention},
    ops::{
        broadcast_to, concatenate, conv2d, conv3d, indexing::TryIndexOp, pad, split_equal, stack,
        zeros_dtype,
    },
    transforms::eval,
};

use crate::error::{Result, VaeError};
use crate::weights::{Loader, conv2d_to_ohwi, conv3d_to_taps, norm_gamma_to_vector};

/// Which implementation the causal 3-D convolutions use.
///
/// For one frame, a causal `k×kh×kw` convolution pads time with `k − 1` zero frames in front,
/// so only its last temporal tap ever meets data: it *is* a 2-D convolution with that tap
/// ([`ConvPath::SingleFrame`], the default and the fast path). [`ConvPath::Causal3d`] runs the
/// general causal 3-D convolution (time zero-padded in front, MLX `conv3d`); the two agree
/// exactly up to float rounding, which the tests check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConvPath {
    /// 2-D convolution with the last temporal tap (single frame only).
    #[default]
    SingleFrame,
    /// General causal 3-D convolution.
    Causal3d,
}

/// `x · sigmoid(x)` (`mlx_fastops::silu`: no constant of another dtype enters the graph).
pub(crate) fn silu(x: &Array) -> Result<Array> {
    Ok(mlx_fastops::silu(x)?)
}

/// A zero scalar in `dtype` (a strong f32 constant would promote bf16 graphs).
fn zero_of(dtype: Dtype) -> Result<Array> {
    Ok(zeros_dtype(&[], dtype)?)
}

/// diffusers' `QwenImageCausalConv3d`: a Conv3d whose time axis is zero-padded by
/// `2·padding_t` frames in front and none behind, so frame `t` only sees frames `≤ t`.
///
/// Weights are stored once per temporal tap as channels-last 2-D kernels `(O, kh, kw, I)`.
#[derive(Debug)]
pub struct CausalConv3d {
    taps: Vec<Array>,
    bias: Array,
    stride: (i32, i32, i32),
    padding: (i32, i32, i32),
}

impl CausalConv3d {
    /// Loads `{prefix}.weight` `(O, I, kt, kh, kw)` and `{prefix}.bias` `(O,)`.
    pub(crate) fn load(
        l: &mut Loader,
        prefix: &str,
        cin: usize,
        cout: usize,
        kernel: [usize; 3],
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Result<Self> {
        let [kt, kh, kw] = kernel;
        let w = l.take(&format!("{prefix}.weight"), &[cout, cin, kt, kh, kw]);
        let bias = l.take(&format!("{prefix}.bias"), &[cout]);
        let taps = conv3d_to_taps(&w)?;
        eval(taps.iter().chain(std::iter::once(&bias)))?;
        Ok(Self {
            taps,
            bias,
            stride: (stride[0] as i32, stride[1] as i32, stride[2] as i32),
            padding: (padding[0] as i32, padding[1] as i32, padding[2] as i32),
        })
    }

    /// Builds a convolution from channels-last taps (tests and benches).
    pub fn from_taps(
        taps: Vec<Array>,
        bias: Array,
        stride: (i32, i32, i32),
        padding: (i32, i32, i32),
    ) -> Self {
        Self {
            taps,
            bias,
            stride,
            padding,
        }
    }

    /// Whether one frame can run as a 2-D convolution with the last tap: the causal front
    /// padding covers exactly the other taps and time is not strided.
    fn single_frame_exact(&self) -> bool {
        self.stride.0 == 1 && 2 * self.padding.0 == self.taps.len() as i32 - 1
    }

    /// Applies the convolution to `x` `(B, T, H, W, C)` → `(B, T', H', W', O)`.
    pub fn forward(&self, x: &Array, path: ConvPath) -> Result<Array> {
        match path {
            ConvPath::SingleFrame => self.forward_single_frame(x),
            ConvPath::Causal3d => self.forward_causal3d(x),
        }
    }

    /// The fast path: one frame, last temporal tap as a 2-D convolution.
    pub fn forward_single_frame(&self, x: &Array) -> Result<Array> {
        let s = x.shape();
        if s.len() != 5 || s[1] != 1 {
            return Err(VaeError::Shape(format!(
                "single-frame convolution needs (B, 1, H, W, C), got {s:?}"
            )));
        }
        if !self.single_frame_exact() {
            return Err(VaeError::Shape(
                "this causal convolution cannot run as a single-frame 2-D convolution".into(),
            ));
        }
        let x2 = x.reshape(&[s[0], s[2], s[3], s[4]])?;
        let last = &self.taps[self.taps.len() - 1];
        let y = conv2d(
            &x2,
            last,
            (self.stride.1, self.stride.2),
            (self.padding.1, self.padding.2),
            None,
            None,
        )?
        .add(&self.bias)?;
        let ys = y.shape();
        Ok(y.reshape(&[ys[0], 1, ys[1], ys[2], ys[3]])?)
    }

    /// The general causal 3-D convolution (time padded `2·padding_t` zero frames in front).
    pub fn forward_causal3d(&self, x: &Array) -> Result<Array> {
        if x.ndim() != 5 {
            return Err(VaeError::Shape(format!(
                "causal 3-D convolution needs (B, T, H, W, C), got {:?}",
                x.shape()
            )));
        }
        let front = 2 * self.padding.0;
        let xp = if front > 0 {
            pad(
                x,
                &[(0, 0), (front, 0), (0, 0), (0, 0), (0, 0)],
                zero_of(x.dtype())?,
                None,
            )?
        } else {
            x.clone()
        };
        // (O, kt, kh, kw, I): MLX's channels-last conv3d kernel layout.
        let w = stack(&self.taps, 1)?;
        Ok(conv3d(
            &xp,
            &w,
            self.stride,
            (0, self.padding.1, self.padding.2),
            None,
            None,
        )?
        .add(&self.bias)?)
    }
}

/// A plain 2-D convolution with a channels-last `(O, kh, kw, I)` kernel.
#[derive(Debug)]
pub(crate) struct Conv2d {
    weight: Array,
    bias: Array,
    stride: i32,
    padding: i32,
}

impl Conv2d {
    /// Loads `{prefix}.weight` `(O, I, k, k)` and `{prefix}.bias` `(O,)`.
    pub(crate) fn load(
        l: &mut Loader,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let w = l.take(&format!("{prefix}.weight"), &[cout, cin, k, k]);
        let bias = l.take(&format!("{prefix}.bias"), &[cout]);
        let weight = conv2d_to_ohwi(&w)?;
        eval([&weight, &bias])?;
        Ok(Self {
            weight,
            bias,
            stride: stride as i32,
            padding: padding as i32,
        })
    }

    /// `x` `(N, H, W, C)` → `(N, H', W', O)`.
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        Ok(conv2d(
            x,
            &self.weight,
            (self.stride, self.stride),
            (self.padding, self.padding),
            None,
            None,
        )?
        .add(&self.bias)?)
    }
}

/// diffusers' `QwenImageRMS_norm`: `F.normalize(x, dim=C) · √C · γ`, which equals
/// `x / rms(x) · γ`; runs as MLX's fused RMS norm over the channel (last) axis.
#[derive(Debug)]
pub(crate) struct RmsNorm {
    gamma: Array,
    eps: f32,
}

impl RmsNorm {
    /// Loads `{prefix}.gamma`, `(C, 1, 1, 1)` (`images = false`) or `(C, 1, 1)` (`images = true`).
    pub(crate) fn load(l: &mut Loader, prefix: &str, dim: usize, images: bool) -> Result<Self> {
        let shape: &[usize] = if images {
            &[dim, 1, 1]
        } else {
            &[dim, 1, 1, 1]
        };
        let g = l.take(&format!("{prefix}.gamma"), shape);
        let gamma = norm_gamma_to_vector(&g)?;
        eval([&gamma])?;
        // F.normalize divides by max(‖x‖₂, 1e-12); ‖x‖₂ = √C · rms, so the same floor on the
        // mean square is 1e-24 / C. It only matters for all-zero channel vectors (0, not NaN).
        let eps = (1e-24 / dim as f64) as f32;
        Ok(Self { gamma, eps })
    }

    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        Ok(rms_norm(x, Some(&self.gamma), self.eps)?)
    }
}

/// diffusers' `QwenImageResidualBlock`: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
#[derive(Debug)]
pub(crate) struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub(crate) fn load(l: &mut Loader, prefix: &str, cin: usize, cout: usize) -> Result<Self> {
        let k3 = [3, 3, 3];
        let s1 = [1, 1, 1];
        let p1 = [1, 1, 1];
        Ok(Self {
            norm1: RmsNorm::load(l, &format!("{prefix}.norm1"), cin, false)?,
            conv1: CausalConv3d::load(l, &format!("{prefix}.conv1"), cin, cout, k3, s1, p1)?,
            norm2: RmsNorm::load(l, &format!("{prefix}.norm2"), cout, false)?,
            conv2: CausalConv3d::load(l, &format!("{prefix}.conv2"), cout, cout, k3, s1, p1)?,
            shortcut: if cin != cout {
                Some(CausalConv3d::load(
                    l,
                    &format!("{prefix}.conv_shortcut"),
                    cin,
                    cout,
                    [1, 1, 1],
                    s1,
                    [0, 0, 0],
                )?)
            } else {
                None
            },
        })
    }

    pub(crate) fn forward(&self, x: &Array, path: ConvPath) -> Result<Array> {
        let h = match &self.shortcut {
            Some(c) => c.forward(x, path)?,
            None => x.clone(),
        };
        let y = silu(&self.norm1.forward(x)?)?;
        let y = self.conv1.forward(&y, path)?;
        let y = silu(&self.norm2.forward(&y)?)?;
        // dropout: identity at inference
        let y = self.conv2.forward(&y, path)?;
        Ok(y.add(&h)?)
    }
}

/// diffusers' `QwenImageAttentionBlock`: single-head self-attention over the pixels of each
/// frame (head dim = channels), with RMS norm in front and a residual connection.
#[derive(Debug)]
pub(crate) struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    dim: usize,
}

impl AttentionBlock {
    pub(crate) fn load(l: &mut Loader, prefix: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::load(l, &format!("{prefix}.norm"), dim, true)?,
            to_qkv: Conv2d::load(l, &format!("{prefix}.to_qkv"), dim, 3 * dim, 1, 1, 0)?,
            proj: Conv2d::load(l, &format!("{prefix}.proj"), dim, dim, 1, 1, 0)?,
            dim,
        })
    }

    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        let s = x.shape().to_vec();
        let (b, t, h, w, c) = (s[0], s[1], s[2], s[3], s[4]);
        let x2 = x.reshape(&[b * t, h, w, c])?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&x2)?)?;
        // (BT, 1, HW, 3C); q, k, v are consecutive channel thirds, as diffusers' chunk(3, -1).
        let qkv = qkv.reshape(&[b * t, 1, h * w, 3 * c])?;
        let parts = split_equal(&qkv, 3, -1)?;
        let scale = 1.0 / (self.dim as f32).sqrt();
        let o = chunked_attention(&parts[0], &parts[1], &parts[2], scale, ATTN_QUERY_CHUNK)?;
        let o = self.proj.forward(&o.reshape(&[b * t, h, w, c])?)?;
        Ok(o.reshape(&[b, t, h, w, c])?.add(x)?)
    }
}

/// Queries per attention chunk. The mid-block attention is over every latent pixel (16 384
/// at 1024², 65 536 at 2048²) with head dim = channels (384), for which MLX has no fused
/// kernel: unchunked, the score matrix alone would take N² elements (17 GB in f32 at 2048²).
/// Chunking the queries bounds it to `chunk · N`; rows are independent, so results are equal.
const ATTN_QUERY_CHUNK: i32 = 4096;

/// Single-head attention `softmax(q kᵀ · scale) v` over `(B, 1, N, D)` arrays, computed
/// `chunk` queries at a time.
pub(crate) fn chunked_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    chunk: i32,
) -> Result<Array> {
    let n = q.shape()[2];
    if n <= chunk {
        return Ok(scaled_dot_product_attention(q, k, v, scale, None, None)?);
    }
    let mut outs = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let qc = slice_axis(q, 2, start, end)?;
        outs.push(scaled_dot_product_attention(&qc, k, v, scale, None, None)?);
        start = end;
    }
    Ok(concatenate(&outs, 2)?)
}

/// What a [`Resample`] does (diffusers' `mode` strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// diffusers' `QwenImageResample`.
///
/// For a single frame the `*3d` modes' time convolution is not applied (diffusers skips it on
/// the first chunk, where its frame cache is still empty), so both paths run the spatial part
/// only: nearest ×2 + 3×3 conv halving channels (up), or right/bottom zero pad + 3×3 stride-2
/// conv (down). The time convolution's weights are loaded (strictly) and kept.
#[derive(Debug)]
pub(crate) struct Resample {
    mode: ResampleMode,
    conv: Conv2d,
    #[allow(dead_code)] // multi-frame (video) paths only
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    pub(crate) fn load(
        l: &mut Loader,
        prefix: &str,
        dim: usize,
        mode: ResampleMode,
    ) -> Result<Self> {
        let conv_prefix = format!("{prefix}.resample.1");
        let tc = format!("{prefix}.time_conv");
        Ok(match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => Self {
                mode,
                conv: Conv2d::load(l, &conv_prefix, dim, dim / 2, 3, 1, 1)?,
                time_conv: if mode == ResampleMode::Upsample3d {
                    Some(CausalConv3d::load(
                        l,
                        &tc,
                        dim,
                        dim * 2,
                        [3, 1, 1],
                        [1, 1, 1],
                        [1, 0, 0],
                    )?)
                } else {
                    None
                },
            },
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => Self {
                mode,
                conv: Conv2d::load(l, &conv_prefix, dim, dim, 3, 2, 0)?,
                time_conv: if mode == ResampleMode::Downsample3d {
                    Some(CausalConv3d::load(
                        l,
                        &tc,
                        dim,
                        dim,
                        [3, 1, 1],
                        [2, 1, 1],
                        [0, 0, 0],
                    )?)
                } else {
                    None
                },
            },
        })
    }

    /// `x` `(B, 1, H, W, C)`; single frame (time convolution skipped, see the type's docs).
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        let s = x.shape().to_vec();
        let (b, t, h, w, c) = (s[0], s[1], s[2], s[3], s[4]);
        let x2 = x.reshape(&[b * t, h, w, c])?;
        let y = match self.mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                // nearest-exact ×2 == each pixel repeated 2×2
                let up = broadcast_to(
                    x2.reshape(&[b * t, h, 1, w, 1, c])?,
                    &[b * t, h, 2, w, 2, c],
                )?
                .reshape(&[b * t, 2 * h, 2 * w, c])?;
                self.conv.forward(&up)?
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                let padded = pad(
                    &x2,
                    &[(0, 0), (0, 1), (0, 1), (0, 0)],
                    zero_of(x.dtype())?,
                    None,
                )?;
                self.conv.forward(&padded)?
            }
        };
        let ys = y.shape().to_vec();
        Ok(y.reshape(&[b, t, ys[1], ys[2], ys[3]])?)
    }
}

/// diffusers' `QwenImageMidBlock` with one attention layer: resnet, attention, resnet.
#[derive(Debug)]
pub(crate) struct MidBlock {
    resnet0: ResidualBlock,
    attention: AttentionBlock,
    resnet1: ResidualBlock,
}

impl MidBlock {
    pub(crate) fn load(l: &mut Loader, prefix: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            resnet0: ResidualBlock::load(l, &format!("{prefix}.resnets.0"), dim, dim)?,
            attention: AttentionBlock::load(l, &format!("{prefix}.attentions.0"), dim)?,
            resnet1: ResidualBlock::load(l, &format!("{prefix}.resnets.1"), dim, dim)?,
        })
    }

    pub(crate) fn forward(&self, x: &Array, path: ConvPath) -> Result<Array> {
        let x = self.resnet0.forward(x, path)?;
        let x = self.attention.forward(&x)?;
        self.resnet1.forward(&x, path)
    }
}

/// Slices `x[.., start..end, ..]` along `axis` (0-based) of a 4- or 5-D array.
pub(crate) fn slice_axis(x: &Array, axis: usize, start: i32, end: i32) -> Result<Array> {
    let r = start..end;
    let a = match (x.ndim(), axis) {
        (4, 1) => x.try_index((.., r))?,
        (4, 2) => x.try_index((.., .., r))?,
        (4, 3) => x.try_index((.., .., .., r))?,
        (5, 1) => x.try_index((.., r))?,
        (5, 2) => x.try_index((.., .., r))?,
        (5, 3) => x.try_index((.., .., .., r))?,
        (5, 4) => x.try_index((.., .., .., .., r))?,
        (n, a) => {
            return Err(VaeError::Shape(format!(
                "cannot slice axis {a} of a {n}-D array"
            )));
        }
    };
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [−1, 1) (no RNG dependency).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    struct Spec {
        b: usize,
        t: usize,
        h: usize,
        w: usize,
        c: usize,
        o: usize,
        k: [usize; 3],
        pad: [usize; 3],
    }

    fn conv_and_input(s: &Spec) -> (CausalConv3d, Vec<Vec<f32>>, Vec<f32>, Vec<f32>, Array) {
        // Full f32 (GPU backends default to TF32 for f32 convolutions).
        mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
        let [kt, kh, kw] = s.k;
        let taps_v: Vec<Vec<f32>> = (0..kt)
            .map(|t| values(s.o * kh * kw * s.c, 11 + t as u64))
            .collect();
        let taps = taps_v
            .iter()
            .map(|v| Array::from_slice(v, &[s.o as i32, kh as i32, kw as i32, s.c as i32]))
            .collect();
        let bias_v = values(s.o, 99);
        let conv = CausalConv3d::from_taps(
            taps,
            Array::from_slice(&bias_v, &[s.o as i32]),
            (1, 1, 1),
            (s.pad[0] as i32, s.pad[1] as i32, s.pad[2] as i32),
        );
        let xv = values(s.b * s.t * s.h * s.w * s.c, 7);
        let x = Array::from_slice(
            &xv,
            &[s.b as i32, s.t as i32, s.h as i32, s.w as i32, s.c as i32],
        );
        (conv, taps_v, bias_v, xv, x)
    }

    /// Direct evaluation of PyTorch's causal conv definition (f64 accumulation).
    #[allow(clippy::needless_range_loop)] // index arithmetic mirrors the definition
    fn naive(s: &Spec, taps: &[Vec<f32>], bias: &[f32], x: &[f32]) -> Vec<f64> {
        let [kt, kh, kw] = s.k;
        let front = 2 * s.pad[0] as i64;
        let (ph, pw) = (s.pad[1] as i64, s.pad[2] as i64);
        let mut out = Vec::new();
        for b in 0..s.b {
            for t in 0..s.t {
                for y in 0..s.h {
                    for xx in 0..s.w {
                        for o in 0..s.o {
                            let mut acc = bias[o] as f64;
                            for k in 0..kt {
                                let st = t as i64 + k as i64 - front;
                                if st < 0 {
                                    continue;
                                }
                                for dy in 0..kh {
                                    for dx in 0..kw {
                                        let sy = y as i64 + dy as i64 - ph;
                                        let sx = xx as i64 + dx as i64 - pw;
                                        if sy < 0 || sx < 0 || sy >= s.h as i64 || sx >= s.w as i64
                                        {
                                            continue;
                                        }
                                        for i in 0..s.c {
                                            let wi = ((o * kh + dy) * kw + dx) * s.c + i;
                                            let xi = (((b * s.t + st as usize) * s.h
                                                + sy as usize)
                                                * s.w
                                                + sx as usize)
                                                * s.c
                                                + i;
                                            acc += taps[k][wi] as f64 * x[xi] as f64;
                                        }
                                    }
                                }
                            }
                            out.push(acc);
                        }
                    }
                }
            }
        }
        out
    }

    fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn general_causal_conv_matches_the_definition_on_several_frames() -> anyhow::Result<()> {
        // T = 4 frames: frames 0 and 1 see the zero time padding, later ones see only data.
        // f32 sums of ≤ 81 products of values in [−1, 1]: 1e-5 absolute is ample.
        for s in [
            Spec {
                b: 2,
                t: 4,
                h: 5,
                w: 6,
                c: 3,
                o: 4,
                k: [3, 3, 3],
                pad: [1, 1, 1],
            },
            Spec {
                b: 1,
                t: 3,
                h: 4,
                w: 3,
                c: 5,
                o: 2,
                k: [3, 1, 1],
                pad: [1, 0, 0],
            },
            Spec {
                b: 1,
                t: 2,
                h: 3,
                w: 4,
                c: 3,
                o: 6,
                k: [1, 1, 1],
                pad: [0, 0, 0],
            },
        ] {
            let (conv, taps, bias, xv, x) = conv_and_input(&s);
            let y = conv.forward(&x, ConvPath::Causal3d)?;
            assert_eq!(
                y.shape(),
                &[s.b as i32, s.t as i32, s.h as i32, s.w as i32, s.o as i32]
            );
            let d = max_abs_diff(y.as_slice::<f32>(), &naive(&s, &taps, &bias, &xv));
            assert!(d < 1e-5, "general causal conv off by {d}");
        }
        Ok(())
    }

    #[test]
    fn chunked_attention_equals_unchunked() -> anyhow::Result<()> {
        // Query rows are independent: chunking must not change a single value beyond
        // summation-order rounding (1e-6 on values in [−1, 1]).
        mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
        let (n, d) = (37, 6);
        let q = Array::from_slice(&values(n * d, 1), &[1, 1, n as i32, d as i32]);
        let k = Array::from_slice(&values(n * d, 2), &[1, 1, n as i32, d as i32]);
        let v = Array::from_slice(&values(n * d, 3), &[1, 1, n as i32, d as i32]);
        let full = chunked_attention(&q, &k, &v, 0.4, 1000)?;
        let chunked = chunked_attention(&q, &k, &v, 0.4, 8)?;
        assert_eq!(chunked.shape(), full.shape());
        let f: Vec<f64> = full.as_slice::<f32>().iter().map(|&x| x as f64).collect();
        assert!(max_abs_diff(chunked.as_slice::<f32>(), &f) < 1e-6);
        Ok(())
    }

    #[test]
    fn single_frame_fast_path_equals_general_path() -> anyhow::Result<()> {
        for s in [
            Spec {
                b: 2,
                t: 1,
                h: 5,
                w: 7,
                c: 3,
                o: 4,
                k: [3, 3, 3],
                pad: [1, 1, 1],
            },
            Spec {
                b: 1,
                t: 1,
                h: 3,
                w: 3,
                c: 4,
                o: 5,
                k: [1, 1, 1],
                pad: [0, 0, 0],
            },
        ] {
            let (conv, taps, bias, xv, x) = conv_and_input(&s);
            let fast = conv.forward(&x, ConvPath::SingleFrame)?;
            let general = conv.forward(&x, ConvPath::Causal3d)?;
            assert_eq!(fast.shape(), general.shape());
            let g: Vec<f64> = general
                .as_slice::<f32>()
                .iter()
                .map(|&v| v as f64)
                .collect();
            // same arithmetic up to summation order
            assert!(max_abs_diff(fast.as_slice::<f32>(), &g) < 1e-5);
            let d = max_abs_diff(fast.as_slice::<f32>(), &naive(&s, &taps, &bias, &xv));
            assert!(d < 1e-5, "fast path off by {d}");
        }
        // more than one frame is refused by the fast path
        let s = Spec {
            b: 1,
            t: 2,
            h: 3,
            w: 3,
            c: 2,
            o: 2,
            k: [3, 3, 3],
            pad: [1, 1, 1],
        };
        let (conv, ..) = conv_and_input(&s);
        let x = Array::from_slice(&values(36, 3), &[1, 2, 3, 3, 2]);
        assert!(conv.forward(&x, ConvPath::SingleFrame).is_err());
        Ok(())
    }
}
