//! Editing pictures: diffusers 0.42.1 `QwenImageEditPipeline` (Qwen-Image-Edit, exactly one
//! picture) and `QwenImageEditPlusPipeline` (Edit-2509 and Edit-2511, one or more;
//! `pipelines/qwenimage/pipeline_qwenimage_edit*.py`). The checkpoint's `model_index.json`
//! says which ([`PipelineKind`]).
//!
//! Each picture is used twice:
//! - **what the text encoder sees**: resized with Pillow's LANCZOS to
//!   [`calculate_dimensions`] of [`VAE_IMAGE_AREA`] (Edit) or [`CONDITION_IMAGE_AREA`] (Plus),
//!   then by the Qwen2-VL image processor (its bicubic resize to multiples of 28, patches),
//!   through the vision tower in place of the prompt's `<|image_pad|>` tokens, with 3-D M-RoPE
//!   positions (`qwen_text_encoder::EditEncoder`). The negative prompt carries the same
//!   pictures;
//! - **what the transformer sees**: resized with LANCZOS to [`calculate_dimensions`] of
//!   [`VAE_IMAGE_AREA`], scaled to [−1, 1], encoded by the VAE — the posterior **mean** —
//!   normalised and packed like the latents; every step the pictures' tokens follow the noise
//!   tokens (each picture with its own entry in the RoPE grid list, frame index 1, 2, …), and
//!   only the noise tokens' prediction is kept. With the transformer's `zero_cond_t`
//!   (Edit-2511) the picture tokens are modulated at timestep 0 (in `qwen-dit`).
//!
//! The output size, when not given, is [`calculate_dimensions`] of 1024² for the first
//! picture (Edit) or the last (Plus); a side given alone replaces only that side. The
//! schedule's shift comes from the noise tokens alone. Only the noise latents are decoded.

use mlx_rs::{Array, ops};
use qwen_text_encoder::{EditEncoder, EditTemplate, Grid, PromptEmbeds};
use qwen_vae::QwenImageVae;

use crate::checkpoint::PipelineKind;
use crate::error::{Field, PipelineError, Result, invalid};
use crate::latents::pack_latents;
use crate::output::Image;
use crate::resample::{Filter, resize};

/// Pixel area of the pictures the VAE encodes (diffusers' `VAE_IMAGE_SIZE`), and of the
/// default output.
pub const VAE_IMAGE_AREA: usize = 1024 * 1024;

/// Pixel area of the pictures Edit-Plus shows the text encoder (`CONDITION_IMAGE_SIZE`).
pub const CONDITION_IMAGE_AREA: usize = 384 * 384;

/// Most pictures one edit takes (each adds ~4096 transformer tokens at 1024²).
pub const MAX_EDIT_PICTURES: usize = 8;

/// Sides of the pictures' sizes are multiples of this (`calculate_dimensions`).
const SIDE_MULTIPLE: f64 = 32.0;

/// diffusers' `calculate_dimensions(target_area, ratio)` for a `width`×`height` picture:
/// `w = √(area·ratio)`, `h = w / ratio`, each rounded (half to even, as Python's `round`) to
/// a multiple of 32. A side may round to 0 for extreme aspect ratios.
pub fn calculate_dimensions(target_area: usize, width: usize, height: usize) -> (usize, usize) {
    let ratio = width as f64 / height as f64;
    let w = (target_area as f64 * ratio).sqrt();
    let h = w / ratio;
    let snap = |v: f64| ((v / SIDE_MULTIPLE).round_ties_even() * SIDE_MULTIPLE) as usize;
    (snap(w), snap(h))
}

/// The sizes one picture is brought to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureSizes {
    /// What the VAE encodes, `(width, height)`.
    pub vae: (usize, usize),
    /// What the image processor receives (before its own resize), `(width, height)`.
    pub condition: (usize, usize),
}

/// The sizes of picture `index` (a `width`×`height` picture) for `kind`; an error names the
/// picture when a side rounds to 0.
pub fn picture_sizes(
    kind: PipelineKind,
    index: usize,
    (width, height): (usize, usize),
) -> Result<PictureSizes> {
    let bad = |what: &str, (w, h): (usize, usize)| {
        invalid(
            Field::EditImages,
            format!(
                "picture {} ({width}×{height}) is too elongated: its {what} size rounds to \
                 {w}×{h} (diffusers' calculate_dimensions; sides from 1 to {} pixels)",
                index + 1,
                crate::MAX_IMAGE_SIDE
            ),
        )
    };
    if width == 0 || height == 0 {
        return Err(bad("own", (width, height)));
    }
    let vae = calculate_dimensions(VAE_IMAGE_AREA, width, height);
    if vae.0 == 0 || vae.1 == 0 || vae.0.max(vae.1) > crate::MAX_IMAGE_SIDE {
        return Err(bad("VAE", vae));
    }
    let condition = match kind {
        PipelineKind::EditPlus => calculate_dimensions(CONDITION_IMAGE_AREA, width, height),
        _ => vae,
    };
    if condition.0 == 0 || condition.1 == 0 {
        return Err(bad("condition", condition));
    }
    Ok(PictureSizes { vae, condition })
}

/// The output size when none is given: [`calculate_dimensions`] of 1024² for the first
/// picture (Edit) or the last (Plus), each side then floored to a multiple of `multiple`
/// (the VAE's compression × the patch size), as the pipelines do.
pub fn default_size(
    kind: PipelineKind,
    pictures: &[(usize, usize)],
    multiple: usize,
) -> Result<(usize, usize)> {
    let index = match kind {
        PipelineKind::EditPlus => pictures.len().saturating_sub(1),
        _ => 0,
    };
    let &picture = pictures
        .get(index)
        .ok_or_else(|| invalid(Field::EditImages, "an edit needs at least one picture"))?;
    let s = picture_sizes(kind, index, picture)?;
    let m = multiple.max(1);
    Ok((s.vae.0 / m * m, s.vae.1 / m * m))
}

/// Checks the pictures of an edit request against the checkpoint's pipeline: their count
/// and that every size they are brought to is non-empty.
pub fn check_pictures(kind: PipelineKind, pictures: &[Image]) -> Result<()> {
    match (kind, pictures.len()) {
        (PipelineKind::TextToImage, _) => Err(PipelineError::WrongPipeline {
            class: kind.class_name().into(),
            msg: format!(
                "this checkpoint's pipeline generates from text and does not edit pictures; \
                 editing needs a {} checkpoint (Qwen-Image-Edit, -2509, -2511)",
                crate::checkpoint::EDIT_PIPELINE_CLASSES.join(" or ")
            ),
        }),
        (_, 0) => Err(invalid(
            Field::EditImages,
            "an edit needs at least one picture",
        )),
        (PipelineKind::Edit, n) if n > 1 => Err(invalid(
            Field::EditImages,
            format!(
                "{n} pictures given, but this checkpoint's QwenImageEditPipeline edits exactly \
                 one (QwenImageEditPlusPipeline checkpoints — Edit-2509, Edit-2511 — take several)"
            ),
        )),
        (_, n) if n > MAX_EDIT_PICTURES => Err(invalid(
            Field::EditImages,
            format!("{n} pictures given; at most {MAX_EDIT_PICTURES}"),
        )),
        _ => pictures
            .iter()
            .enumerate()
            .try_for_each(|(i, p)| picture_sizes(kind, i, (p.width, p.height)).map(|_| ())),
    }
}

/// One picture made ready for the text encoder (`condition`, 8-bit RGB at its condition
/// size) and the VAE (`vae`, `(1, 3, 1, H, W)` float32 in [−1, 1]).
#[derive(Debug)]
pub struct PreparedPicture {
    /// The picture the image processor receives.
    pub condition: Image,
    /// The VAE's input.
    pub vae: Array,
    /// Its sizes.
    pub sizes: PictureSizes,
}

/// Resizes each picture for the text encoder and the VAE (Pillow's LANCZOS from the
/// original, as `VaeImageProcessor.resize` / `.preprocess` do).
pub fn prepare_pictures(kind: PipelineKind, pictures: &[Image]) -> Result<Vec<PreparedPicture>> {
    check_pictures(kind, pictures)?;
    pictures
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let sizes = picture_sizes(kind, i, (p.width, p.height))?;
            let (cw, ch) = sizes.condition;
            let condition = Image {
                width: cw,
                height: ch,
                data: resize(&p.data, (p.width, p.height), 3, (cw, ch), Filter::Lanczos),
            };
            let (vw, vh) = sizes.vae;
            let vae = crate::image_input::to_vae_input(p, vw, vh)?;
            Ok(PreparedPicture {
                condition,
                vae,
                sizes,
            })
        })
        .collect()
}

/// The pictures' tokens as the transformer sees them after the noise tokens.
#[derive(Debug, Clone)]
pub struct PictureTokens {
    /// Each picture's normalised posterior-mean latents packed like the noise, concatenated
    /// in order: `(1, Σ tokens, z·p²)` in the compute dtype.
    pub tokens: Array,
    /// Each picture's `(frames, rows, cols)` token grid (its entry in the RoPE grid list).
    pub grids: Vec<(usize, usize, usize)>,
}

/// Packs each picture's normalised latents `(1, z, 1, h, w)` and concatenates them.
pub fn pack_pictures(latents: &[Array], patch: usize) -> Result<PictureTokens> {
    let mut packed = Vec::with_capacity(latents.len());
    let mut grids = Vec::with_capacity(latents.len());
    for z in latents {
        let s = z.shape();
        if s.len() != 5 || s[0] != 1 || s[2] != 1 {
            return Err(PipelineError::Runtime(format!(
                "picture latents must be (1, z, 1, h, w), got {s:?}"
            )));
        }
        let (h, w) = (s[3] as usize, s[4] as usize);
        // (1, z, 1, h, w) → the noise layout (1, 1, z, h, w), then packed.
        packed.push(pack_latents(&z.transpose_axes(&[0, 2, 1, 3, 4])?, patch)?);
        grids.push((1, h / patch, w / patch));
    }
    Ok(PictureTokens {
        tokens: ops::concatenate(&packed, 1)?,
        grids,
    })
}

/// Encodes the prepared pictures with the VAE (in its dtype, the posterior mean,
/// normalised) and packs them ([`pack_pictures`]), evaluated.
pub fn encode_pictures(
    vae: &QwenImageVae,
    pictures: &[PreparedPicture],
    patch: usize,
) -> Result<PictureTokens> {
    let latents = pictures
        .iter()
        .map(|p| {
            // diffusers casts the picture to the pipeline's dtype before the VAE.
            let z = vae.encode_normalized(&p.vae.as_dtype(vae.dtype())?)?;
            z.eval()?;
            Ok(z)
        })
        .collect::<Result<Vec<Array>>>()?;
    let out = pack_pictures(&latents, patch)?;
    out.tokens.eval()?;
    Ok(out)
}

/// The prompt template of a pipeline kind.
pub fn template(kind: PipelineKind) -> Result<EditTemplate> {
    match kind {
        PipelineKind::Edit => Ok(EditTemplate::Edit),
        PipelineKind::EditPlus => Ok(EditTemplate::Plus),
        PipelineKind::TextToImage => Err(PipelineError::WrongPipeline {
            class: kind.class_name().into(),
            msg: "not an edit pipeline".into(),
        }),
    }
}

/// Each picture as the vision tower reads it: resized by the image processor (Pillow's
/// bicubic to its `smart_resize` size) and cut into patches.
pub fn condition_patches(
    encoder: &EditEncoder,
    pictures: &[PreparedPicture],
) -> Result<Vec<(Array, Grid)>> {
    let proc = encoder.processor();
    pictures
        .iter()
        .map(|p| {
            let c = &p.condition;
            let (h, w) = proc.smart_resize(c.height, c.width)?;
            let rgb = resize(&c.data, (c.width, c.height), 3, (w, h), Filter::Bicubic);
            Ok(proc.pixel_values(&rgb, w, h)?)
        })
        .collect()
}

/// The prompt's and the negative prompt's embeddings (each `None` when not asked for), both
/// with the same pictures, evaluated.
pub fn encode_prompts(
    encoder: &EditEncoder,
    (prompt, negative): (Option<&str>, Option<&str>),
    pictures: &[PreparedPicture],
) -> Result<(Option<PromptEmbeds>, Option<PromptEmbeds>)> {
    let patches = condition_patches(encoder, pictures)?;
    let encode = |p: &str| encoder.encode(p, &patches);
    let cond = prompt.map(encode).transpose()?;
    let neg = negative.map(encode).transpose()?;
    let to_eval: Vec<&Array> = cond.iter().chain(&neg).map(|e| &e.embeds).collect();
    mlx_rs::transforms::eval(to_eval)?;
    Ok((cond, neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calculate_dimensions_matches_diffusers() {
        // Values of diffusers' calculate_dimensions (Python floats, round half to even).
        for ((w, h), area, want) in [
            ((1024, 1024), VAE_IMAGE_AREA, (1024, 1024)),
            ((1024, 768), VAE_IMAGE_AREA, (1184, 896)),
            ((1920, 1080), VAE_IMAGE_AREA, (1376, 768)),
            ((1000, 1500), VAE_IMAGE_AREA, (832, 1248)),
            ((1024, 1024), CONDITION_IMAGE_AREA, (384, 384)),
            ((1024, 768), CONDITION_IMAGE_AREA, (448, 320)),
            ((1920, 1080), CONDITION_IMAGE_AREA, (512, 288)),
            ((1000, 1500), CONDITION_IMAGE_AREA, (320, 480)),
        ] {
            assert_eq!(calculate_dimensions(area, w, h), want, "{w}×{h} at {area}");
        }
        // 4000×1: the height rounds to 0.
        assert_eq!(calculate_dimensions(CONDITION_IMAGE_AREA, 4000, 1).1, 0);
    }

    #[test]
    fn default_size_takes_the_first_or_the_last_picture() -> Result<()> {
        let pics = [(1024, 768), (1000, 1500)];
        assert_eq!(default_size(PipelineKind::Edit, &pics, 16)?, (1184, 896));
        assert_eq!(
            default_size(PipelineKind::EditPlus, &pics, 16)?,
            (832, 1248)
        );
        // Floored to the checkpoint's multiple.
        assert_eq!(default_size(PipelineKind::Edit, &pics, 48)?, (1152, 864));
        Ok(())
    }

    #[test]
    fn pictures_are_checked_against_the_pipeline() {
        let pic = |w: usize, h: usize| Image {
            width: w,
            height: h,
            data: vec![0; w * h * 3],
        };
        let two = [pic(8, 8), pic(9, 7)];
        let msg = |r: Result<()>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(check_pictures(PipelineKind::Edit, &two)).contains("exactly one"));
        assert!(check_pictures(PipelineKind::EditPlus, &two).is_ok());
        assert!(msg(check_pictures(PipelineKind::EditPlus, &[])).contains("at least one"));
        assert!(
            msg(check_pictures(PipelineKind::TextToImage, &two))
                .contains("QwenImageEditPipeline or QwenImageEditPlusPipeline")
        );
        let e = msg(check_pictures(
            PipelineKind::EditPlus,
            &[pic(8, 8), pic(4000, 1)],
        ));
        assert!(e.contains("picture 2 (4000×1)"), "{e}");
        assert!(e.contains("rounds to"), "{e}");
    }
}
