//! Input images and masks, prepared exactly as diffusers prepares them.
//!
//! Loading follows `diffusers.utils.load_image`: the file is decoded (PNG, JPEG, WebP), its
//! EXIF orientation applied (`PIL.ImageOps.exif_transpose`), and the pixels converted to RGB
//! as PIL's `convert("RGB")` does: alpha dropped without compositing, gray replicated, a
//! palette looked up, 16-bit colour channels cut to their high byte, and — PIL's own rule —
//! 16-bit gray clipped at 255 (with a warning: such an image comes out mostly white in
//! diffusers too). Images are then resized as `VaeImageProcessor.preprocess` resizes them
//! (Pillow's LANCZOS, [`crate::resample`]) and scaled to [−1, 1]; masks are resized in RGB,
//! converted to gray with PIL's weights (`(19595·R + 38470·G + 7471·B + 2¹⁵) >> 16`) and
//! binarised (L ≥ 128 → repaint).

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader};
use mlx_rs::Array;

use crate::error::{Field, PipelineError, Result, invalid};
use crate::output::Image;
use crate::resample::lanczos_resize;

/// Largest input image side accepted, in pixels (checked from the file's header, before the
/// pixels are decoded).
pub const MAX_INPUT_SIDE: u32 = 16_384;

fn input_err(path: &Path, msg: impl Into<String>) -> PipelineError {
    PipelineError::InputImage {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// A decoded input image: 8-bit RGB, and remarks about its conversion.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The pixels, oriented, RGB.
    pub image: Image,
    /// What the conversion did that a user may not expect (16-bit gray clipped, …).
    pub notes: Vec<String>,
}

/// Loads an image file as diffusers' `load_image` does (see the module docs). Errors name the
/// file: not readable, not an image, larger than [`MAX_INPUT_SIDE`], a pixel format PIL would
/// not turn into RGB.
pub fn load_image(path: &Path) -> Result<LoadedImage> {
    let meta = std::fs::metadata(path).map_err(|e| input_err(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(input_err(
            path,
            format!(
                "is {}, not an image file",
                mlx_weights::describe_file_type(&meta)
            ),
        ));
    }
    let open = || {
        ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| input_err(path, e.to_string()))
    };
    decode(path, open()?, open()?)
}

/// [`load_image`] for an image held in memory (PNG, JPEG or WebP bytes, e.g. uploaded to a
/// server); errors name it as `name`.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<LoadedImage> {
    let path = Path::new(name);
    let open = || {
        ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| input_err(path, e.to_string()))
    };
    decode(path, open()?, open()?)
}

/// Decodes through two readers of the same image: the first only reads the header (so an
/// oversized image is refused before its pixels are allocated), the second decodes.
fn decode<R: std::io::BufRead + std::io::Seek>(
    path: &Path,
    header: ImageReader<R>,
    reader: ImageReader<R>,
) -> Result<LoadedImage> {
    let (w, h) = header
        .into_dimensions()
        .map_err(|e| input_err(path, format!("not a readable image (PNG, JPEG, WebP): {e}")))?;
    if w > MAX_INPUT_SIDE || h > MAX_INPUT_SIDE {
        return Err(input_err(
            path,
            format!("{w}×{h} px is larger than the {MAX_INPUT_SIDE} px per side accepted"),
        ));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| input_err(path, format!("not a readable image: {e}")))?;
    let orientation = decoder
        .orientation()
        .map_err(|e| input_err(path, format!("unreadable EXIF orientation: {e}")))?;
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| input_err(path, format!("cannot decode: {e}")))?;
    img.apply_orientation(orientation);
    let mut notes = Vec::new();
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = match img {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        DynamicImage::ImageLuma8(b) => b.into_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(b) => b
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0]; 3])
            .collect(),
        DynamicImage::ImageRgb16(b) => b.into_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(b) => b
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        DynamicImage::ImageLumaA16(b) => b
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| [(p[0] >> 8) as u8; 3])
            .collect(),
        DynamicImage::ImageLuma16(b) => {
            notes.push(
                "16-bit grayscale: converted as PIL (and so diffusers) converts it, clipping \
                 every value above 255 — most such images come out white; convert the file to \
                 8 bits first"
                    .to_string(),
            );
            b.into_raw()
                .iter()
                .flat_map(|&v| [v.min(255) as u8; 3])
                .collect()
        }
        other => {
            return Err(input_err(
                path,
                format!(
                    "pixel format {:?} is not supported (8- or 16-bit RGB/gray)",
                    other.color()
                ),
            ));
        }
    };
    Ok(LoadedImage {
        image: Image {
            width,
            height,
            data,
        },
        notes,
    })
}

/// The output size for an input image when none is given: its aspect ratio at about
/// `area` pixels, each side rounded to the nearest multiple of `multiple` (at least one).
/// diffusers' img2img would use 1024×1024 whatever the image (stretching it); this keeps the
/// picture's proportions.
pub fn fit_to_area(width: usize, height: usize, area: usize, multiple: usize) -> (usize, usize) {
    let ratio = width.max(1) as f64 / height.max(1) as f64;
    let w = (area as f64 * ratio).sqrt();
    let h = w / ratio;
    let snap = |v: f64| ((v / multiple as f64).round().max(1.0) as usize) * multiple;
    (snap(w), snap(h))
}

/// `image` resized to `width × height` with Pillow's LANCZOS and scaled to [−1, 1] as the
/// VAE takes it: `(1, 3, height, width)` f32, each value `(v / 255)·2 − 1` in f32.
pub fn to_vae_input(image: &Image, width: usize, height: usize) -> Result<Array> {
    let rgb = lanczos_resize(&image.data, image.width, image.height, 3, width, height);
    let mut planar = vec![0f32; 3 * width * height];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planar[c * width * height + i] = (px[c] as f32 / 255.0) * 2.0 - 1.0;
        }
    }
    Ok(Array::from_slice(
        &planar,
        &[1, 3, height as i32, width as i32],
    ))
}

/// PIL's `convert("L")` of one RGB pixel.
pub fn pil_luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// The repaint mask at pixel resolution, as diffusers' mask processor makes it: resized in
/// RGB (LANCZOS), then gray, then `L ≥ 128` → `true` (repaint).
pub fn mask_pixels(mask: &Image, width: usize, height: usize) -> Vec<bool> {
    lanczos_resize(&mask.data, mask.width, mask.height, 3, width, height)
        .chunks_exact(3)
        .map(|p| pil_luma(p[0], p[1], p[2]) >= 128)
        .collect()
}

/// Checks that an input image's size is usable (not empty).
pub(crate) fn check_image(image: &Image, field: Field) -> Result<()> {
    if image.width == 0 || image.height == 0 || image.data.len() != image.width * image.height * 3 {
        return Err(invalid(
            field,
            format!(
                "the image must be non-empty 8-bit RGB ({}×{}, {} bytes)",
                image.width,
                image.height,
                image.data.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitted_sizes_keep_the_aspect_ratio() {
        assert_eq!(fit_to_area(1024, 1024, 1 << 20, 16), (1024, 1024));
        assert_eq!(fit_to_area(4000, 3000, 1 << 20, 16), (1184, 880));
        assert_eq!(fit_to_area(3000, 4000, 1 << 20, 16), (880, 1184));
        assert_eq!(fit_to_area(100, 1, 1 << 20, 16), (10240, 96));
        // A side that would round to 0 is one multiple; the other follows the area (and a
        // request beyond the side limit is refused by the validation, naming it).
        assert_eq!(fit_to_area(1, 100_000, 256, 16), (16, 5056));
    }

    #[test]
    fn pil_luma_weights() {
        assert_eq!(pil_luma(255, 255, 255), 255);
        assert_eq!(pil_luma(0, 0, 0), 0);
        assert_eq!(pil_luma(100, 100, 100), 100);
        // Rec. 601 with PIL's rounding: 0.299·255 = 76.2 → 76.
        assert_eq!(pil_luma(255, 0, 0), 76);
        assert_eq!(pil_luma(0, 255, 0), 150);
        assert_eq!(pil_luma(0, 0, 255), 29);
    }
}
