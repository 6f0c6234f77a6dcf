//! Rotary position tables of the joint [text, image] sequence (diffusers `QwenEmbedRope`).
//!
//! Per axis `a` of (frame, height, width) with `d_a = axes_dims_rope[a]`, position `p` has the
//! angles `p · θ^(−2k/d_a)`, `k < d_a/2` (θ = 10000); the three axes' angles are concatenated
//! (frame first) into `attention_head_dim / 2` angles per token, applied to interleaved pairs
//! `(2k, 2k+1)` of every head.
//!
//! Positions, as diffusers 0.42.1 builds them (`scale_rope=True`):
//! - image `i` of the list (the pipeline has one) with grid (f, h, w) in tokens: frame
//!   `i + t`, row `r − (h − h//2)`, column `c − (w − w//2)` — centred, an odd size giving the
//!   extra position to the negative side (5 → −3 … 1); tokens in (frame, row, column)
//!   order, images concatenated;
//! - text token `k` (of the padded text length): `m + k` on all three axes, with `m` the
//!   largest `max(h//2, w//2)` over the images.
//!
//! Every element of a batch shares one table: diffusers uses the first sample's image shapes
//! and the padded text length for the whole batch.

use mlx_rs::Array;

use crate::config::{QwenImageTransformerConfig, ROPE_THETA};
use crate::error::{DitError, Result};

/// The cos/sin tables for one (image grid(s), text length) pair, in the joint order
/// `[text, image]`. Build once per resolution and prompt length, pass to every forward.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `(txt_len + img_len, 1, head_dim/2)` f32.
    cos: Array,
    /// `(txt_len + img_len, 1, head_dim/2)` f32.
    sin: Array,
    txt_len: usize,
    img_len: usize,
    first_img_len: usize,
    head_dim: usize,
}

/// Per-token angles (`head_dim/2` each) for the joint sequence, computed in f32 as diffusers
/// does (inverse frequencies `1/θ^(2k/d)` in f32, then `position × inv_freq` rounded to f32).
pub fn rope_angles(
    axes_dims: &[usize],
    img_shapes: &[(usize, usize, usize)],
    txt_len: usize,
) -> Result<(Vec<f32>, usize, usize)> {
    if axes_dims.len() != 3 {
        return Err(DitError::InvalidInput(format!(
            "axes_dims_rope must have 3 entries, got {axes_dims:?}"
        )));
    }
    if img_shapes.is_empty() {
        return Err(DitError::InvalidInput(
            "RoPE needs at least one image grid".into(),
        ));
    }
    let inv: Vec<Vec<f32>> = axes_dims
        .iter()
        .map(|&d| {
            (0..d / 2)
                .map(|k| {
                    // torch: 1.0 / pow(theta, arange(0, d, 2).float() / d), all f32
                    let e = (2 * k) as f32 / d as f32;
                    1.0f32 / (ROPE_THETA as f64).powf(e as f64) as f32
                })
                .collect()
        })
        .collect();
    let half: usize = axes_dims.iter().map(|d| d / 2).sum();
    let push = |out: &mut Vec<f32>, pos: [i64; 3]| {
        for (a, inv_a) in inv.iter().enumerate() {
            for &f in inv_a {
                out.push(pos[a] as f32 * f);
            }
        }
    };
    let mut img = Vec::new();
    let mut img_len = 0usize;
    let mut max_vid_index = 0usize;
    for (idx, &(f, h, w)) in img_shapes.iter().enumerate() {
        if f == 0 || h == 0 || w == 0 {
            return Err(DitError::InvalidInput(format!(
                "image grid ({f}, {h}, {w}) has a zero extent"
            )));
        }
        let (h_neg, w_neg) = ((h - h / 2) as i64, (w - w / 2) as i64);
        for t in 0..f {
            for r in 0..h {
                for c in 0..w {
                    push(
                        &mut img,
                        [(idx + t) as i64, r as i64 - h_neg, c as i64 - w_neg],
                    );
                }
            }
        }
        img_len += f * h * w;
        max_vid_index = max_vid_index.max(h / 2).max(w / 2);
    }
    let mut out = Vec::with_capacity((txt_len + img_len) * half);
    for k in 0..txt_len {
        let p = (max_vid_index + k) as i64;
        push(&mut out, [p, p, p]);
    }
    out.extend_from_slice(&img);
    Ok((out, txt_len, img_len))
}

impl RopeTables {
    /// Tables for `img_shapes` — the (frames, height, width) grids, in tokens (latent size /
    /// patch size), of the images of one sample (the text-to-image pipeline passes one) — and
    /// a text sequence of `txt_len` tokens (the padded length of the batch).
    pub fn new(
        config: &QwenImageTransformerConfig,
        img_shapes: &[(usize, usize, usize)],
        txt_len: usize,
    ) -> Result<Self> {
        let (angles, txt_len, img_len) = rope_angles(&config.axes_dims_rope, img_shapes, txt_len)?;
        let half = config.attention_head_dim / 2;
        let n = (txt_len + img_len) as i32;
        let cos: Vec<f32> = angles.iter().map(|&a| (a as f64).cos() as f32).collect();
        let sin: Vec<f32> = angles.iter().map(|&a| (a as f64).sin() as f32).collect();
        let shape = [n, 1, half as i32];
        let (f, h, w) = img_shapes[0];
        Ok(Self {
            first_img_len: f * h * w,
            cos: Array::from_slice(&cos, &shape),
            sin: Array::from_slice(&sin, &shape),
            txt_len,
            img_len,
            head_dim: config.attention_head_dim,
        })
    }

    /// Text tokens the tables cover.
    pub fn txt_len(&self) -> usize {
        self.txt_len
    }

    /// Image tokens the tables cover.
    pub fn img_len(&self) -> usize {
        self.img_len
    }

    /// Tokens of the first image (the generated one; later images are references).
    pub fn first_img_len(&self) -> usize {
        self.first_img_len
    }

    /// Head width the tables were built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// `cos` of the angles, `(txt_len + img_len, 1, head_dim/2)`, f32, text first.
    pub fn cos(&self) -> &Array {
        &self.cos
    }

    /// `sin` of the angles, `(txt_len + img_len, 1, head_dim/2)`, f32, text first.
    pub fn sin(&self) -> &Array {
        &self.sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(grid: (usize, usize, usize), txt: usize) -> Vec<[f32; 3]> {
        // with axes (2, 2, 2) each axis has one frequency, 1.0: angles are the positions
        let (a, _, _) = rope_angles(&[2, 2, 2], &[grid], txt).unwrap();
        a.chunks(3).map(|c| [c[0], c[1], c[2]]).collect()
    }

    #[test]
    fn image_positions_are_centred_and_text_follows() {
        let p = positions((1, 5, 2), 2);
        // text: max(5//2, 2//2) = 2, then 3
        assert_eq!(p[0], [2.0, 2.0, 2.0]);
        assert_eq!(p[1], [3.0, 3.0, 3.0]);
        // odd height 5 → rows −3 … 1; width 2 → columns −1, 0
        let rows: Vec<f32> = p[2..].iter().step_by(2).map(|q| q[1]).collect();
        assert_eq!(rows, vec![-3.0, -2.0, -1.0, 0.0, 1.0]);
        let cols: Vec<f32> = p[2..4].iter().map(|q| q[2]).collect();
        assert_eq!(cols, vec![-1.0, 0.0]);
        assert!(p[2..].iter().all(|q| q[0] == 0.0));
    }

    #[test]
    fn several_images_get_frame_offsets() {
        let (a, t, n) = rope_angles(&[2, 2, 2], &[(1, 2, 2), (1, 4, 2)], 1).unwrap();
        assert_eq!((t, n), (1, 12));
        // text starts after the largest half-extent (4//2 = 2)
        assert_eq!(&a[0..3], &[2.0, 2.0, 2.0]);
        // second image is frame 1
        assert_eq!(a[3 * (1 + 4)], 1.0);
    }

    #[test]
    fn bad_grids_are_rejected() {
        assert!(rope_angles(&[2, 2, 2], &[], 3).is_err());
        assert!(rope_angles(&[2, 2, 2], &[(1, 0, 3)], 3).is_err());
    }
}
