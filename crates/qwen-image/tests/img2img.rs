//! Input pictures prepared as diffusers prepares them: Pillow's LANCZOS resize bit for bit,
//! EXIF orientation and PIL's RGB conversion on loading. (End-to-end parity of img2img and
//! inpainting with diffusers: the program's tests/img2img.rs.)

mod common;

use std::path::PathBuf;

use common::*;
use qwen_image::image_input::load_image;
use qwen_image::resample::{Filter, lanczos_resize, resize};

fn dir() -> PathBuf {
    fixtures().join("../img2img")
}

/// Seven resizes made by Pillow 13.0 (up, down, one axis, 1×1, noisy images where the
/// 8-bit rounding between the passes shows, and a squash that Pillow 13 runs vertical pass
/// first): every byte equal.
#[test]
fn lanczos_matches_pillow_bit_for_bit() -> anyhow::Result<()> {
    let mut n = 0;
    for e in std::fs::read_dir(dir().join("resize"))? {
        let path = e?.path();
        let t = mlx_weights::load_file(&path)?;
        let input = t.get("input").unwrap();
        let output = t.get("output").unwrap();
        let (ih, iw) = (input.shape()[0] as usize, input.shape()[1] as usize);
        let (oh, ow) = (output.shape()[0] as usize, output.shape()[1] as usize);
        let got = lanczos_resize(input.as_slice::<u8>(), iw, ih, 3, ow, oh);
        let want = output.as_slice::<u8>();
        let diff = got.iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{}: {diff} bytes differ", path.display());
        n += 1;
    }
    assert_eq!(n, 7);
    Ok(())
}

/// Pillow 13.0's BICUBIC resize (what Qwen2-VL's image processor runs before the vision
/// tower; `fixtures/gen/vision.py`): three pictures resized up, down and across, every byte
/// equal.
#[test]
fn bicubic_matches_pillow_bit_for_bit() -> anyhow::Result<()> {
    let t = mlx_weights::load_file(&fixtures().join("../vision/processor.safetensors"))?;
    for i in 0..3 {
        let input = t.get(&format!("image{i}")).unwrap();
        let output = t.get(&format!("resized{i}")).unwrap();
        let (ih, iw) = (input.shape()[0] as usize, input.shape()[1] as usize);
        let (oh, ow) = (output.shape()[0] as usize, output.shape()[1] as usize);
        let got = resize(
            input.as_slice::<u8>(),
            (iw, ih),
            3,
            (ow, oh),
            Filter::Bicubic,
        );
        let diff = got
            .iter()
            .zip(output.as_slice::<u8>())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diff, 0,
            "picture {i} ({iw}×{ih} → {ow}×{oh}): {diff} bytes differ"
        );
    }
    Ok(())
}

/// `exif6.png` is stored 60×40 with orientation 6 (rotate 90° clockwise to display): loaded
/// it is 40×60 and pixel (x, y) of the result is stored pixel (y, 39 − x).
#[test]
fn exif_orientation_is_applied() -> anyhow::Result<()> {
    let path = dir().join("images/exif6.png");
    let loaded = load_image(&path)?.image;
    assert_eq!((loaded.width, loaded.height), (40, 60));
    let raw = image::open(&path)?.to_rgb8();
    assert_eq!(raw.dimensions(), (60, 40));
    for y in 0..60 {
        for x in 0..40 {
            let got = &loaded.data[(y * 40 + x) * 3..][..3];
            let want = raw.get_pixel(y as u32, 39 - x as u32).0;
            assert_eq!(got, want, "({x}, {y})");
        }
    }
    Ok(())
}

/// RGBA loses its alpha without compositing; gray is replicated; 16-bit colour keeps the high
/// byte (PIL's rules, which differ from the image crate's own conversions).
#[test]
fn pixel_formats_convert_as_pil() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let rgba = tmp.path().join("a.png");
    image::RgbaImage::from_pixel(2, 1, image::Rgba([200, 100, 50, 7])).save(&rgba)?;
    assert_eq!(
        load_image(&rgba)?.image.data,
        vec![200, 100, 50, 200, 100, 50]
    );
    let gray = tmp.path().join("g.png");
    image::GrayImage::from_pixel(1, 1, image::Luma([77])).save(&gray)?;
    assert_eq!(load_image(&gray)?.image.data, vec![77, 77, 77]);
    let rgb16 = tmp.path().join("c.png");
    image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(
        1,
        1,
        image::Rgb([0x12ff, 0x8080, 0xff7f]),
    )
    .save(&rgb16)?;
    // PIL: high byte; (v + 128) / 257 would give 0x13, 0x80, 0xff.
    assert_eq!(load_image(&rgb16)?.image.data, vec![0x12, 0x80, 0xff]);
    let gray16 = tmp.path().join("g16.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(1, 1, image::Luma([300u16]))
        .save(&gray16)?;
    let l = load_image(&gray16)?;
    assert_eq!(l.image.data, vec![255, 255, 255]);
    assert!(l.notes[0].contains("16-bit grayscale"), "{:?}", l.notes);
    Ok(())
}
