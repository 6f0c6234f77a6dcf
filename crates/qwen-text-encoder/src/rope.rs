//! Multimodal RoPE (M-RoPE) of Qwen2.5-VL's language model, for text positions.
//!
//! Mirrors `Qwen2_5_VLRotaryEmbedding` and `apply_rotary_pos_emb` in transformers'
//! `modeling_qwen2_5_vl.py`. Every token has three position ids (temporal, height, width);
//! the head's `head_dim / 2` frequency pairs are split into `mrope_section` groups and group
//! `i` takes its angle from position component `i % 3`; the table is then duplicated
//! (`cat(freq, freq)`) and applied by rotating halves (`x·cos + rotate_half(x)·sin`, with
//! `rotate_half(x) = [-x₂, x₁]`) — not interleaved pairs as in the DiT.
//!
//! For pure text the three components are the same position, so the table equals the standard
//! rotate-half RoPE table; [`mrope_cos_sin`] still builds it from the sections (tested against
//! the plain formula), so a change of `mrope_section` or of the position layout stays correct.

use mlx_rs::{Array, Dtype, ops};

use crate::error::{Result, TextEncoderError};

/// Inverse frequencies `θ^(-2j/d)`, `j < d/2`, computed in f32 as transformers does
/// (`1 / base ** (arange(0, d, 2).float() / d)`).
pub fn inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    let d = head_dim as f32;
    let base = theta as f32;
    (0..head_dim / 2)
        .map(|j| 1.0 / base.powf((2 * j) as f32 / d))
        .collect()
}

/// Builds the M-RoPE `(cos, sin)` tables, each `(T, head_dim)` in f32, for the three position
/// components `positions[c][t]` (c = temporal, height, width).
///
/// Returns host vectors in row-major order; [`text_rope_tables`] wraps them as arrays.
pub fn mrope_cos_sin(
    positions: [&[i64]; 3],
    head_dim: usize,
    theta: f64,
    mrope_section: &[usize],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let half = head_dim / 2;
    if mrope_section.iter().sum::<usize>() != half {
        return Err(TextEncoderError::InvalidConfig(format!(
            "mrope_section {mrope_section:?} does not sum to head_dim / 2 = {half}"
        )));
    }
    let t_len = positions[0].len();
    if positions.iter().any(|p| p.len() != t_len) {
        return Err(TextEncoderError::InvalidInput(
            "the three M-RoPE position rows differ in length".to_string(),
        ));
    }
    // Component used by each frequency pair: section i → component i % 3.
    let mut component = Vec::with_capacity(half);
    for (i, &n) in mrope_section.iter().enumerate() {
        component.extend(std::iter::repeat_n(i % 3, n));
    }
    let inv = inv_freq(head_dim, theta);
    let mut cos = vec![0f32; t_len * head_dim];
    let mut sin = vec![0f32; t_len * head_dim];
    let rows = cos.chunks_mut(head_dim).zip(sin.chunks_mut(head_dim));
    for (t, (crow, srow)) in rows.enumerate() {
        for (j, (&comp, &f)) in component.iter().zip(&inv).enumerate() {
            // The angle is rounded to f32 as in transformers (f32 positions × f32 inv_freq);
            // cos/sin of that f32 angle are then evaluated accurately.
            let angle = positions[comp][t] as f32 * f;
            let (s, c) = (angle as f64).sin_cos();
            crow[j] = c as f32;
            crow[j + half] = c as f32;
            srow[j] = s as f32;
            srow[j + half] = s as f32;
        }
    }
    Ok((cos, sin))
}

/// `(cos, sin)` arrays of shape `(T, head_dim)` in `dtype` for text positions `0..T` (all
/// three M-RoPE components equal, as transformers builds them for text without images).
pub fn text_rope_tables(
    t_len: usize,
    head_dim: usize,
    theta: f64,
    mrope_section: &[usize],
    dtype: Dtype,
) -> Result<(Array, Array)> {
    let pos: Vec<i64> = (0..t_len as i64).collect();
    let (cos, sin) = mrope_cos_sin([&pos, &pos, &pos], head_dim, theta, mrope_section)?;
    let shape = [t_len as i32, head_dim as i32];
    // transformers casts cos/sin to the activation dtype before applying them.
    let cos = Array::from_slice(&cos, &shape).as_dtype(dtype)?;
    let sin = Array::from_slice(&sin, &shape).as_dtype(dtype)?;
    Ok((cos, sin))
}

/// 3-D M-RoPE position ids of one prompt row with images, as transformers' `get_rope_index`
/// builds them from the processor's `mm_token_type_ids` (here `is_image`): over the valid
/// tokens, consecutive text tokens count up from the running position on all three axes; a
/// run of image tokens takes the next grid of `grids` and places its merge units at
/// `(cur, cur + row, cur + column)`, after which the running position advances by
/// `max(rows, columns)` in merge units (not by the token count). Padding gets 0.
pub fn rope_index(
    is_image: &[bool],
    valid: &[bool],
    grids: &mut dyn Iterator<Item = crate::vision::Grid>,
    merge: usize,
) -> Result<[Vec<i64>; 3]> {
    if is_image.len() != valid.len() {
        return Err(TextEncoderError::InvalidInput(
            "token types and validity differ in length".to_string(),
        ));
    }
    let n = is_image.len();
    let mut out = [vec![0i64; n], vec![0i64; n], vec![0i64; n]];
    let kept: Vec<usize> = (0..n).filter(|&i| valid[i]).collect();
    let mut cur = 0i64;
    let mut k = 0;
    while k < kept.len() {
        let image = is_image[kept[k]];
        let mut end = k;
        while end < kept.len() && is_image[kept[end]] == image {
            end += 1;
        }
        let run = &kept[k..end];
        if image {
            let g = grids.next().ok_or_else(|| {
                TextEncoderError::InvalidInput("more image-token runs than image grids".to_string())
            })?;
            let (lt, lh, lw) = (g.t, g.h / merge.max(1), g.w / merge.max(1));
            if run.len() != lt * lh * lw {
                return Err(TextEncoderError::InvalidInput(format!(
                    "a run of {} image tokens for a grid of {} merge units",
                    run.len(),
                    lt * lh * lw
                )));
            }
            for (j, &i) in run.iter().enumerate() {
                let (t, rest) = (j / (lh * lw), j % (lh * lw));
                out[0][i] = cur + t as i64;
                out[1][i] = cur + (rest / lw) as i64;
                out[2][i] = cur + (rest % lw) as i64;
            }
            cur += lh.max(lw) as i64;
        } else {
            for (j, &i) in run.iter().enumerate() {
                for axis in &mut out {
                    axis[i] = cur + j as i64;
                }
            }
            cur += run.len() as i64;
        }
        k = end;
    }
    Ok(out)
}

/// Per-pair periods `θ^(2j/d) = 1 / inv_freq[j]` as MLX's fused RoPE takes them (`freqs`).
///
/// For text the three M-RoPE components share one position, so every pair's angle is
/// `p · inv_freq[j]` whatever `mrope_section` says ([`mrope_cos_sin`] proves the reduction in
/// its tests); the fused kernel then rotates halves (`traditional = false`) with these periods.
pub fn text_rope_periods(head_dim: usize, theta: f64) -> Array {
    let periods: Vec<f32> = inv_freq(head_dim, theta).iter().map(|f| 1.0 / f).collect();
    Array::from_slice(&periods, &[(head_dim / 2) as i32])
}

/// Fused rotate-half RoPE for text positions `0..T` along axis −2 of `x` `(B, H, T, D)`:
/// equal to [`apply_rope`] with [`text_rope_tables`] (tested), in one kernel.
pub fn apply_text_rope(x: &Array, periods: &Array) -> Result<Array> {
    let d = x.shape().last().copied().unwrap_or(0);
    Ok(mlx_rs::fast::rope(x, d, false, None, 1.0, 0, periods)?)
}

/// `[-x₂, x₁]` where `x₁, x₂` are the first and second halves of the last axis.
pub fn rotate_half(x: &Array) -> Result<Array> {
    let parts = x.split_equal(2, -1)?;
    Ok(ops::concatenate(
        &[parts[1].negative()?, parts[0].clone()],
        -1,
    )?)
}

/// Applies rotate-half RoPE: `x·cos + rotate_half(x)·sin`; `x` is `(B, H, T, D)`, the tables
/// `(T, D)` broadcast over batch and heads.
pub fn apply_rope(x: &Array, cos: &Array, sin: &Array) -> Result<Array> {
    Ok(x.multiply(cos)?.add(rotate_half(x)?.multiply(sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::ops::indexing::IndexOp;

    /// With identical positions in the three components, the M-RoPE table is the standard
    /// rotate-half table `cos(p·θ^(-2j/d))` duplicated over both halves, for any sectioning.
    #[test]
    fn text_positions_reduce_to_standard_rope() {
        let d = 16;
        let theta = 10_000.0;
        let pos: Vec<i64> = (0..40).collect();
        for sections in [[2usize, 3, 3], [8, 0, 0], [1, 1, 6]] {
            let (cos, sin) = mrope_cos_sin([&pos, &pos, &pos], d, theta, &sections).unwrap();
            for t in 0..pos.len() {
                for j in 0..d {
                    let k = j % (d / 2);
                    let a = t as f64 * theta.powf(-(2.0 * k as f64) / d as f64);
                    // f32 angle rounding: |Δangle| ≤ t·2⁻²³·|θ^(-2k/d)|·few ≤ 1e-5 here.
                    assert!((cos[t * d + j] as f64 - a.cos()).abs() < 2e-5);
                    assert!((sin[t * d + j] as f64 - a.sin()).abs() < 2e-5);
                }
            }
        }
    }

    /// Distinct positions per component pick the angle of the component that owns each
    /// section (section i → component i % 3), as `recomposition_frequencies` does.
    #[test]
    fn sections_take_their_component() {
        let d = 16;
        let t: Vec<i64> = vec![3];
        let h: Vec<i64> = vec![5];
        let w: Vec<i64> = vec![7];
        let (cos, _) = mrope_cos_sin([&t, &h, &w], d, 100.0, &[2, 3, 3]).unwrap();
        let inv = inv_freq(d, 100.0);
        let expect = |p: i64, j: usize| ((p as f32 * inv[j]) as f64).cos() as f32;
        let owners = [3, 3, 5, 5, 5, 7, 7, 7];
        for j in 0..8 {
            assert_eq!(cos[j], expect(owners[j], j));
            assert_eq!(cos[j + 8], expect(owners[j], j));
        }
        assert!(mrope_cos_sin([&t, &h, &w], d, 100.0, &[2, 3, 4]).is_err());
    }

    /// The fused kernel with periods equals the table formula, up to the largest positions the
    /// pipeline uses (1024 + 34 template tokens and more). Bound: f32 angles up to ~1100 rad
    /// carry ~1e-4 absolute rounding whichever way they are formed, hence 1e-3 on unit inputs.
    #[test]
    fn fused_rope_equals_the_table_formula() {
        let (b, h, t, d) = (1, 3, 1200, 16);
        let n = (b * h * t * d) as usize;
        let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.618).sin()).collect();
        let xa = Array::from_slice(&x, &[b, h, t, d]);
        let (cos, sin) =
            text_rope_tables(t as usize, d as usize, 1e4, &[2, 3, 3], Dtype::Float32).unwrap();
        let want = apply_rope(&xa, &cos, &sin).unwrap();
        let got = apply_text_rope(&xa, &text_rope_periods(d as usize, 1e4)).unwrap();
        let diff = got
            .subtract(&want)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap();
        let early = got.subtract(&want).unwrap().abs().unwrap();
        let early = early.index((.., .., ..64, ..)).max(None).unwrap();
        assert!(
            diff.item_exact::<f32>() < 1e-3,
            "{}",
            diff.item_exact::<f32>()
        );
        assert!(
            early.item_exact::<f32>() < 1e-5,
            "{}",
            early.item_exact::<f32>()
        );
    }

    /// `apply_rope` rotates halves: out₁ = x₁cos − x₂sin, out₂ = x₂cos + x₁sin.
    #[test]
    fn apply_rope_rotates_halves() {
        let d = 8;
        let x: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.37).sin() + 0.1).collect();
        let xa = Array::from_slice(&x, &[1, 1, 2, d as i32]);
        let (cos, sin) = text_rope_tables(2, d, 50.0, &[1, 1, 2], Dtype::Float32).unwrap();
        let out = apply_rope(&xa, &cos, &sin).unwrap();
        let out: Vec<f32> = out.as_slice::<f32>().to_vec();
        let inv = inv_freq(d, 50.0);
        for t in 0..2 {
            for j in 0..d / 2 {
                let a = ((t as f32) * inv[j]) as f64;
                let (s, c) = (a.sin() as f32, a.cos() as f32);
                let (x1, x2) = (x[t * d + j], x[t * d + j + d / 2]);
                assert!((out[t * d + j] - (x1 * c - x2 * s)).abs() < 1e-6);
                assert!((out[t * d + j + d / 2] - (x2 * c + x1 * s)).abs() < 1e-6);
            }
        }
    }
}
