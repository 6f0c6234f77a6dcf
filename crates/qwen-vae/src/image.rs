//! Conversion of decoded images to 8-bit RGB, as diffusers' `VaeImageProcessor.postprocess`
//! (`output_type="pil"`) does it.

use mlx_rs::{Array, Dtype, ops};

use crate::error::{Result, VaeError};

/// An 8-bit RGB image, row-major, 3 bytes per pixel (`data.len() == width · height · 3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixels, row by row, `R, G, B` each.
    pub data: Vec<u8>,
}

/// Converts a decoded batch `(B, 3, H, W)` (as [`crate::QwenImageVae::decode`] returns it,
/// values in [−1, 1]) to 8-bit RGB images. Evaluates the array.
///
/// Each value becomes `(x·0.5 + 0.5).clamp(0, 1)` (diffusers' `denormalize`), then
/// `(v·255).round()` with NumPy's round-half-to-even (`numpy_to_pil`); NaN becomes 0. The
/// arithmetic is always f32, on the array's device, so only the bytes travel to the host (a
/// quarter of the f32 image: on a GPU the copy is most of the cost). Bit-exact with diffusers
/// for f32 images; for a bf16 image diffusers applies `x·0.5 + 0.5` in bf16 first, so results
/// may differ by one level there.
pub fn to_rgb8(image: &Array) -> Result<Vec<RgbImage>> {
    let s = image.shape();
    if s.len() != 4 || s[1] != 3 {
        return Err(VaeError::Shape(format!(
            "to_rgb8 needs (B, 3, H, W), got {s:?}"
        )));
    }
    let (b, h, w) = (s[0] as usize, s[2] as usize, s[3] as usize);
    // f32 constants on purpose: the arithmetic is f32 whatever the image's dtype.
    let c = Array::from_f32;
    let x = image.as_dtype(Dtype::Float32)?;
    let v = ops::add(ops::multiply(&x, c(0.5))?, c(0.5))?;
    let v = ops::minimum(ops::maximum(&v, c(0.0))?, c(1.0))?;
    let v = ops::round(ops::multiply(&v, c(255.0))?, None)?;
    let v = ops::select(&ops::is_nan(&v)?, c(0.0), &v)?;
    let hwc = v
        .as_dtype(Dtype::Uint8)?
        .transpose_axes(&[0, 2, 3, 1])?
        .contiguous()?;
    hwc.eval()?;
    let bytes = hwc.try_as_slice::<u8>()?;
    let per = h * w * 3;
    Ok((0..b)
        .map(|i| RgbImage {
            width: w,
            height: h,
            data: bytes[i * per..(i + 1) * per].to_vec(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host formula, written independently of the device ops (Rust's `as u8` maps NaN
    /// to 0 and saturates).
    fn host_u8(x: f32) -> u8 {
        let v = (x * 0.5 + 0.5).clamp(0.0, 1.0);
        (v * 255.0).round_ties_even() as u8
    }

    #[test]
    fn rounding_follows_numpy_half_to_even_and_clamps() -> anyhow::Result<()> {
        // Values whose v·255 lands exactly on k + 0.5 (ties: half to even), the clamps, NaN
        // and infinities, and a dense sweep of [−1.1, 1.1].
        let mut xs = vec![
            -1.0f32,
            1.0,
            -3.0,
            7.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let mut ties = 0;
        for k in 0..255 {
            let x = ((k as f32 + 0.5) / 255.0) * 2.0 - 1.0;
            if (x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0 == k as f32 + 0.5 {
                ties += 1;
            }
            xs.push(x);
        }
        assert!(ties > 50, "only {ties} exact ties");
        xs.extend((0..3000).map(|i| -1.1 + 2.2 * i as f32 / 2999.0));
        let n = xs.len();
        // (1, 3, 1, n): the same values in the three channels.
        let rgb: Vec<f32> = xs.iter().chain(&xs).chain(&xs).copied().collect();
        let img = to_rgb8(&Array::from_slice(&rgb, &[1, 3, 1, n as i32]))?;
        for (i, &x) in xs.iter().enumerate() {
            let want = host_u8(x);
            assert_eq!(img[0].data[3 * i..3 * i + 3], [want; 3], "x = {x}");
        }
        assert_eq!(host_u8(f32::NAN), 0);
        assert_eq!(img[0].data[12], 0, "NaN → 0");
        Ok(())
    }

    #[test]
    fn layout_is_rows_of_rgb_triplets() -> anyhow::Result<()> {
        // (1, 3, 1, 2): pixel (0,0) = (-1, 0, 1), pixel (0,1) = (1, 0, -1)
        let a = Array::from_slice(&[-1.0f32, 1.0, 0.0, 0.0, 1.0, -1.0], &[1, 3, 1, 2]);
        let imgs = to_rgb8(&a)?;
        assert_eq!(imgs.len(), 1);
        assert_eq!((imgs[0].width, imgs[0].height), (2, 1));
        assert_eq!(imgs[0].data, vec![0, 128, 255, 255, 128, 0]);
        assert!(to_rgb8(&Array::from_slice(&[0.0f32; 4], &[1, 4, 1, 1])).is_err());
        Ok(())
    }
}
