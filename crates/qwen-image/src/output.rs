//! Output files: names for several images, an up-front writability check, and atomic PNG
//! writes (a temporary file in the destination folder, renamed into place), so a failed run
//! never leaves a partial or stale image under the requested name.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{PipelineError, Result};

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
pub use qwen_vae::RgbImage as Image;

fn out_err(path: &Path, msg: impl Into<String>) -> PipelineError {
    PipelineError::Output {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The files `n` images go to: `output` itself for one image, otherwise
/// `<stem>-0.png`, `<stem>-1.png`, … next to it.
pub fn output_paths(output: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![output.to_path_buf()];
    }
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (0..n)
        .map(|i| output.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

/// The files of `n` images of the prompt on line `line` of a prompt file: `<stem>-<line>.png`
/// (then numbered as [`output_paths`] numbers them); without a line, [`output_paths`].
pub fn output_paths_for(output: &Path, line: Option<usize>, n: usize) -> Vec<PathBuf> {
    let base = match line {
        Some(l) => {
            let stem = output
                .file_stem()
                .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
            output.with_file_name(format!("{stem}-{l}.png"))
        }
        None => output.to_path_buf(),
    };
    output_paths(&base, n)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Longest file name (one path component) accepted, in bytes: the common file systems'
/// limit (`NAME_MAX`), so an over-long name fails before the run instead of at the write.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// Checks an output name alone: a `.png` file name no longer than the file system allows.
/// The same rule holds for one image and for numbered images (`NAME-0.png`, …).
pub fn check_output_name(path: &Path) -> Result<()> {
    let is_png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(out_err(path, "the output must be a .png file"));
    }
    if let Some(name) = path.file_name()
        && name.len() > MAX_FILE_NAME_BYTES
    {
        return Err(out_err(
            path,
            format!(
                "the file name is {} bytes, longer than file systems allow ({MAX_FILE_NAME_BYTES})",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Checks, before any heavy work, that `path` can receive a PNG: its name
/// ([`check_output_name`]), it is not a directory, and its folder exists and accepts a new
/// file (probed with an unnamed temporary file).
pub fn check_output(path: &Path) -> Result<()> {
    check_output_name(path)?;
    if path.is_dir() {
        return Err(out_err(path, "is a directory"));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(out_err(
            path,
            format!("folder {} does not exist", dir.display()),
        ));
    }
    // An unnamed temporary file (O_TMPFILE where available; otherwise a random name created
    // exclusively and removed at once): nothing a planted link could redirect.
    if let Err(e) = tempfile::tempfile_in(&dir) {
        return Err(out_err(
            path,
            format!("cannot write into {}: {e}", dir.display()),
        ));
    }
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().readonly()
    {
        return Err(out_err(path, "exists and is read-only"));
    }
    Ok(())
}

/// Encodes `image` as PNG into `path` atomically (an exclusive temporary file with an
/// unpredictable name in the same folder, then a rename): nothing appears under `path`
/// unless the whole file was written, and no planted link is followed.
pub fn write_png(path: &Path, image: &Image) -> Result<()> {
    write_png_with_text(path, image, &[])
}

/// [`write_png`] with text chunks (keyword, UTF-8 text; written as `iTXt` before the image
/// data), e.g. [`crate::metadata::GenerationRecord::chunks`].
pub fn write_png_with_text(path: &Path, image: &Image, text: &[(String, String)]) -> Result<()> {
    let bytes = encode_png(image, text).map_err(|msg| out_err(path, msg))?;
    mlx_weights::persist_atomic(path, |file| file.write_all(&bytes)).map_err(|e| match e {
        mlx_weights::WeightsError::Io { source, .. } => out_err(path, source.to_string()),
        e => out_err(path, e.to_string()),
    })
}

/// The PNG file of `image` with text chunks (as [`write_png_with_text`] writes it), in
/// memory; the error says what is wrong (a buffer that does not fit the size, a keyword PNG
/// cannot hold).
pub fn encode_png(
    image: &Image,
    text: &[(String, String)],
) -> std::result::Result<Vec<u8>, String> {
    if image.data.len() != image.width * image.height * 3 {
        return Err(format!(
            "image buffer has {} bytes for {}×{} RGB",
            image.data.len(),
            image.width,
            image.height
        ));
    }
    let mut bytes = Vec::new();
    let encoded = (|| -> std::result::Result<(), png::EncodingError> {
        let mut enc = png::Encoder::new(&mut bytes, image.width as u32, image.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_itxt_chunk(k.clone(), v.clone())?;
        }
        let mut writer = enc.write_header()?;
        writer.write_image_data(&image.data)?;
        writer.finish()
    })();
    encoded.map_err(|e| format!("PNG encoding failed: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_names_for_several_images() {
        assert_eq!(
            output_paths(Path::new("out/fox.png"), 1),
            vec![PathBuf::from("out/fox.png")]
        );
        assert_eq!(
            output_paths(Path::new("out/fox.png"), 3),
            vec![
                PathBuf::from("out/fox-0.png"),
                PathBuf::from("out/fox-1.png"),
                PathBuf::from("out/fox-2.png")
            ]
        );
    }

    #[test]
    fn png_round_trip_and_checks() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("a.png");
        check_output(&path)?;
        let img = Image {
            width: 3,
            height: 2,
            data: (0..18).map(|i| (i * 13) as u8).collect(),
        };
        write_png(&path, &img)?;
        let back = image::open(&path)?.to_rgb8();
        assert_eq!(back.dimensions(), (3, 2));
        assert_eq!(back.into_raw(), img.data);
        // no temporary file left behind
        assert_eq!(fs::read_dir(tmp.path())?.count(), 1);

        assert!(check_output(&tmp.path().join("a.jpg")).is_err());
        assert!(check_output(&tmp.path().join("missing/a.png")).is_err());
        let d = tmp.path().join("d.png");
        fs::create_dir(&d)?;
        assert!(check_output(&d).is_err());
        Ok(())
    }
}
