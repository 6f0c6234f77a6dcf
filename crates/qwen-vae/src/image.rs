//! Conversion of decoded images to 8-bit RGB, as diffusers' `VaeImageProcessor.postprocess`
//! (`output_type="pil"`) does it.

use mlx_rs::{Array, Dtype};

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

/// One value in [−1, 1] → u8: `(x·0.5 + 0.5).clamp(0, 1)` (diffusers' `denormalize`), then
/// `(v·255).round()` with NumPy's round-half-to-even (`numpy_to_pil`), all in f32.
fn to_u8(x: f32) -> u8 {
    let v = (x * 0.5 + 0.5).clamp(0.0, 1.0);
    (v * 255.0).round_ties_even() as u8
}

/// Converts a decoded batch `(B, 3, H, W)` (as [`crate::QwenImageVae::decode`] returns it,
/// values in [−1, 1]) to 8-bit RGB images. Evaluates the array.
///
/// The arithmetic is always f32 (bit-exact with diffusers for f32 images); for a bf16 image
/// diffusers applies `x·0.5 + 0.5` in bf16 first, so results may differ by one level there.
pub fn to_rgb8(image: &Array) -> Result<Vec<RgbImage>> {
    let s = image.shape();
    if s.len() != 4 || s[1] != 3 {
        return Err(VaeError::Shape(format!(
            "to_rgb8 needs (B, 3, H, W), got {s:?}"
        )));
    }
    let (b, h, w) = (s[0] as usize, s[2] as usize, s[3] as usize);
    let hwc = image
        .transpose_axes(&[0, 2, 3, 1])?
        .as_dtype(Dtype::Float32)?
        .contiguous()?;
    hwc.eval()?;
    let v = hwc.try_as_slice::<f32>()?;
    let per = h * w * 3;
    Ok((0..b)
        .map(|i| RgbImage {
            width: w,
            height: h,
            data: v[i * per..(i + 1) * per]
                .iter()
                .map(|&x| to_u8(x))
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_follows_numpy_half_to_even_and_clamps() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(-3.0), 0);
        assert_eq!(to_u8(7.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
        // v·255 = 0.5 exactly → 0 (half to even), 1.5 → 2, 2.5 → 2
        for (k, want) in [(0.5f32, 0u8), (1.5, 2), (2.5, 2)] {
            let x = (k / 255.0) * 2.0 - 1.0;
            let v = (x * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0;
            if v == k {
                assert_eq!(to_u8(x), want, "k = {k}");
            }
        }
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
