//! Overlapping-tile processing with linear blending, as diffusers' `tiled_decode` /
//! `tiled_encode` (and their `blend_v` / `blend_h`) do it.
//!
//! Tiles are laid out on a grid of origins `0, stride, 2·stride, …` (input space), each
//! processed on its own; then, row by row, every tile is blended with the (already blended)
//! tile above over `blend_h` rows and with the (already blended) tile to its left over
//! `blend_w` columns, cropped to `stride × stride` (output space) and concatenated.

use mlx_rs::{Array, ops::concatenate, transforms::eval};

use crate::error::Result;
use crate::layers::slice_axis;

/// Blends the end of `a` into the start of `b` along `axis`:
/// `b[k] = a[len_a − e + k] · (1 − k/e) + b[k] · (k/e)` for `k < e = min(len_a, len_b, extent)`.
///
/// Weights are computed in f64 and rounded to the activation dtype, as PyTorch does with the
/// Python-float factors of diffusers' loop.
pub(crate) fn blend(a: &Array, b: &Array, extent: i32, axis: usize) -> Result<Array> {
    let (la, lb) = (a.shape()[axis], b.shape()[axis]);
    let e = la.min(lb).min(extent);
    if e <= 0 {
        return Ok(b.clone());
    }
    let mut wshape = vec![1i32; b.ndim()];
    wshape[axis] = e;
    let wb: Vec<f32> = (0..e).map(|k| (k as f64 / e as f64) as f32).collect();
    let wa: Vec<f32> = (0..e).map(|k| (1.0 - k as f64 / e as f64) as f32).collect();
    let dt = b.dtype();
    let wa = Array::from_slice(&wa, &wshape).as_dtype(dt)?;
    let wb = Array::from_slice(&wb, &wshape).as_dtype(dt)?;
    let a_tail = slice_axis(a, axis, la - e, la)?;
    let b_head = slice_axis(b, axis, 0, e)?;
    let mixed = a_tail.multiply(&wa)?.add(b_head.multiply(&wb)?)?;
    if e == lb {
        return Ok(mixed);
    }
    let rest = slice_axis(b, axis, e, lb)?;
    Ok(concatenate(&[mixed, rest], axis as i32)?)
}

/// Geometry of one tiled pass (all sizes in the units named).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileGrid {
    /// Input extent (height, width) to cover.
    pub input: (i32, i32),
    /// Tile size in input units.
    pub tile_in: (i32, i32),
    /// Distance between tile origins in input units.
    pub stride_in: (i32, i32),
    /// Blend extents in output units.
    pub blend_out: (i32, i32),
    /// Crop of each blended tile in output units.
    pub stride_out: (i32, i32),
    /// Final output extent.
    pub output: (i32, i32),
}

/// Runs `f` on every tile of `x` (5-D, tiled over axes 2 and 3), evaluating each result
/// before the next tile starts so only one tile's activations are alive at a time, then
/// blends and stitches the results. `f` maps an input tile to an output tile.
pub(crate) fn tiled(
    x: &Array,
    g: TileGrid,
    mut f: impl FnMut(&Array) -> Result<Array>,
) -> Result<Array> {
    let (h, w) = g.input;
    let mut rows: Vec<Vec<Array>> = Vec::new();
    for i in (0..h).step_by(g.stride_in.0 as usize) {
        let mut row = Vec::new();
        for j in (0..w).step_by(g.stride_in.1 as usize) {
            let t = slice_axis(x, 2, i, (i + g.tile_in.0).min(h))?;
            let t = slice_axis(&t, 3, j, (j + g.tile_in.1).min(w))?;
            let out = f(&t)?;
            // Deliberate eval inside the op: bounded memory is the point of tiling.
            eval([&out])?;
            row.push(out);
        }
        rows.push(row);
    }

    let mut stitched_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut cropped = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].clone();
            if i > 0 {
                tile = blend(&rows[i - 1][j], &tile, g.blend_out.0, 2)?;
            }
            if j > 0 {
                tile = blend(&rows[i][j - 1], &tile, g.blend_out.1, 3)?;
            }
            // diffusers blends in place: later tiles see this tile's blended values.
            rows[i][j] = tile.clone();
            let th = tile.shape()[2].min(g.stride_out.0);
            let tw = tile.shape()[3].min(g.stride_out.1);
            let c = slice_axis(&tile, 2, 0, th)?;
            cropped.push(slice_axis(&c, 3, 0, tw)?);
        }
        stitched_rows.push(concatenate(&cropped, 3)?);
    }
    let out = concatenate(&stitched_rows, 2)?;
    let out = slice_axis(&out, 2, 0, g.output.0.min(out.shape()[2]))?;
    slice_axis(&out, 3, 0, g.output.1.min(out.shape()[3]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::ops::{broadcast_to, mean_axes};

    fn ramp(shape: &[i32]) -> Array {
        let n: i32 = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5)
            .collect();
        Array::from_slice(&v, shape)
    }

    fn max_abs(a: &Array, b: &Array) -> f32 {
        assert_eq!(a.shape(), b.shape());
        let (a, b) = (a.contiguous().unwrap(), b.contiguous().unwrap());
        a.as_slice::<f32>()
            .iter()
            .zip(b.as_slice::<f32>())
            .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    /// A position-preserving stand-in for the decoder: nearest ×r upsampling.
    fn upsample(x: &Array, r: i32) -> Result<Array> {
        let s = x.shape().to_vec();
        let (b, t, h, w, c) = (s[0], s[1], s[2], s[3], s[4]);
        let y = broadcast_to(x.reshape(&[b, t, h, 1, w, 1, c])?, &[b, t, h, r, w, r, c])?;
        Ok(y.reshape(&[b, t, h * r, w * r, c])?)
    }

    /// A position-preserving stand-in for the encoder: r×r average pooling.
    fn pool(x: &Array, r: i32) -> Result<Array> {
        let s = x.shape().to_vec();
        let (b, t, h, w, c) = (s[0], s[1], s[2], s[3], s[4]);
        let y = x.reshape(&[b, t, h / r, r, w / r, r, c])?;
        Ok(mean_axes(&y, &[3, 5], false)?)
    }

    #[test]
    fn tiling_a_local_map_reproduces_it() -> anyhow::Result<()> {
        // For a map without long-range interactions, overlapping tiles agree on the overlap,
        // so tiled == untiled up to the blend's rounding (a·(1−t) + a·t, ≤ 1e-6 here). A
        // misplaced origin, crop or blend extent would mix values from different positions.
        // (The real VAE's mid-block attention is global, so on a random tiny model tiled and
        // untiled decodes differ a lot; parity there is checked against diffusers' tiling.)
        let r = 8;
        let z = ramp(&[2, 1, 11, 13, 3]);
        let dec = TileGrid {
            input: (11, 13),
            tile_in: (4, 5),
            stride_in: (3, 4),
            blend_out: (8, 8),
            stride_out: (24, 32),
            output: (88, 104),
        };
        let tiled_dec = tiled(&z, dec, |t| upsample(t, r))?;
        assert!(max_abs(&tiled_dec, &upsample(&z, r)?) <= 1e-6);

        let x = ramp(&[1, 1, 56, 80, 3]);
        let enc = TileGrid {
            input: (56, 80),
            tile_in: (32, 40),
            stride_in: (24, 32),
            blend_out: (1, 1),
            stride_out: (3, 4),
            output: (7, 10),
        };
        let tiled_enc = tiled(&x, enc, |t| pool(t, r))?;
        assert!(max_abs(&tiled_enc, &pool(&x, r)?) <= 1e-6);
        Ok(())
    }

    #[test]
    fn blend_matches_the_loop_definition() -> anyhow::Result<()> {
        // a: 1×1×4×1×1 = [10, 20, 30, 40]; b = [1, 2, 3]; extent 3 → e = 3:
        // b'[k] = a[1 + k]·(1 − k/3) + b[k]·k/3
        let a = Array::from_slice(&[10.0f32, 20.0, 30.0, 40.0], &[1, 1, 4, 1, 1]);
        let b = Array::from_slice(&[1.0f32, 2.0, 3.0], &[1, 1, 3, 1, 1]);
        let r = blend(&a, &b, 3, 2)?;
        let want: Vec<f32> = (0..3)
            .map(|k| {
                let t = k as f64 / 3.0;
                (20.0 + 10.0 * k as f64) as f32 * (1.0 - t) as f32 + (k + 1) as f32 * t as f32
            })
            .collect();
        assert_eq!(r.as_slice::<f32>(), want.as_slice());
        // extent 0 leaves b alone; extent beyond both lengths clips to the shorter
        assert_eq!(blend(&a, &b, 0, 2)?.as_slice::<f32>(), &[1.0, 2.0, 3.0]);
        assert_eq!(blend(&a, &b, 10, 2)?.shape(), &[1, 1, 3, 1, 1]);
        // along axis 3, only the first e columns change
        let a = Array::from_slice(&[5.0f32; 4], &[1, 1, 1, 4, 1]);
        let b = Array::from_slice(&[1.0f32, 1.0, 1.0, 1.0], &[1, 1, 1, 4, 1]);
        let r = blend(&a, &b, 2, 3)?;
        assert_eq!(r.as_slice::<f32>(), &[5.0, 3.0, 1.0, 1.0]);
        Ok(())
    }
}
