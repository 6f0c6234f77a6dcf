//! Initial noise, initial-latents files, and the 2×2 packing of latents into DiT tokens
//! (diffusers `QwenImagePipeline.prepare_latents` / `_pack_latents` / `_unpack_latents`).
//!
//! Unpacked latents have the pipeline's noise layout `(B, 1, C, h, w)` (frame before
//! channel); packed latents are `(B, (h/p)·(w/p), C·p²)` with the channel of a token ordered
//! `c·p² + dy·p + dx` (p = patch size, 2). Unpacking gives the VAE layout `(B, C, 1, h, w)`.

use std::path::Path;

use mlx_rs::{Array, Dtype, random};

use crate::error::{PipelineError, Result};

/// `(B, 1, C, h, w)` → `(B, (h/p)(w/p), C·p²)`.
pub fn pack_latents(latents: &Array, patch: usize) -> Result<Array> {
    let s = latents.shape();
    let p = patch as i32;
    if s.len() != 5 || s[1] != 1 || s[3] % p != 0 || s[4] % p != 0 {
        return Err(PipelineError::Shape(format!(
            "latents to pack must be (B, 1, C, h, w) with h, w multiples of {p}, got {s:?}"
        )));
    }
    let (b, c, h, w) = (s[0], s[2], s[3], s[4]);
    Ok(latents
        .reshape(&[b, c, h / p, p, w / p, p])?
        .transpose_axes(&[0, 2, 4, 1, 3, 5])?
        .reshape(&[b, (h / p) * (w / p), c * p * p])?)
}

/// `(B, (h/p)(w/p), C·p²)` → `(B, C, 1, h, w)` for latent height `h` and width `w`.
pub fn unpack_latents(packed: &Array, h: usize, w: usize, patch: usize) -> Result<Array> {
    let s = packed.shape();
    let p = patch as i32;
    let (h, w) = (h as i32, w as i32);
    if s.len() != 3 || h % p != 0 || w % p != 0 || s[1] != (h / p) * (w / p) || s[2] % (p * p) != 0
    {
        return Err(PipelineError::Shape(format!(
            "packed latents {s:?} do not fit a {h}×{w} latent grid with patch {p}"
        )));
    }
    let (b, c) = (s[0], s[2] / (p * p));
    Ok(packed
        .reshape(&[b, h / p, w / p, c, p, p])?
        .transpose_axes(&[0, 3, 1, 4, 2, 5])?
        .reshape(&[b, c, 1, h, w])?)
}

/// Standard normal noise `(1, 1, C, h, w)` in f32 from MLX's counter-based generator with
/// `seed` (the same seed gives the same noise on every backend).
pub fn seeded_noise(seed: u64, channels: usize, h: usize, w: usize) -> Result<Array> {
    let key = random::key(seed)?;
    Ok(random::normal::<f32>(
        &[1, 1, channels as i32, h as i32, w as i32],
        None,
        None,
        &key,
    )?)
}

/// Standard normal noise `(1, C, 1, h, w)` in f32 for the posterior sample of an init image
/// (the VAE's layout), from the second half of `seed`'s key (the first makes
/// [`seeded_noise`]).
pub fn seeded_image_noise(seed: u64, channels: usize, h: usize, w: usize) -> Result<Array> {
    let (_, key) = random::split(&random::key(seed)?, 2)?;
    Ok(random::normal::<f32>(
        &[1, channels as i32, 1, h as i32, w as i32],
        None,
        None,
        &key,
    )?)
}

/// What an initial-latents file holds.
#[derive(Debug, Clone)]
pub struct InitLatents {
    /// The diffusion noise, `(images, 1, channels, h, w)` (diffusers' unpacked layout).
    pub latents: Array,
    /// The ε of the init image's posterior samples, `(images, channels, 1, h, w)` (the
    /// VAE's layout), when the file has it (img2img and inpainting).
    pub image_noise: Option<Array>,
}

/// A seed for a run that was given none: from the clock and the process id (splitmix64),
/// below 2⁵³ so that it survives JSON and JavaScript numbers.
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos ^ ((std::process::id() as u64) << 32);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % (1 << 53)
}

/// Reads an initial-latents safetensors file: an f32 tensor `latents` in diffusers' unpacked
/// noise layout `(images, 1, channels, h, w)` and, optionally, an f32 `image_noise`
/// `(images, channels, 1, h, w)`. Other tensors are ignored. Shapes are checked against a
/// request by [`crate::request::validate`].
pub fn read_init_latents(path: &Path) -> Result<InitLatents> {
    let err = |msg: String| PipelineError::InitLatents {
        path: Some(path.to_path_buf()),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => err("no such file".into()),
        _ => err(e.to_string()),
    })?;
    if !meta.is_file() {
        return Err(err(format!(
            "is {}, not a safetensors file",
            mlx_weights::describe_file_type(&meta)
        )));
    }
    let mut tensors = mlx_weights::load_file(path).map_err(|e| err(e.to_string()))?;
    let Some(a) = tensors.remove("latents") else {
        let keys: Vec<&str> = tensors.keys().collect();
        return Err(err(format!(
            "no tensor named `latents` (the file holds {keys:?})"
        )));
    };
    let image_noise = tensors.remove("image_noise");
    for (name, t) in [("latents", Some(&a)), ("image_noise", image_noise.as_ref())] {
        if let Some(t) = t
            && t.dtype() != Dtype::Float32
        {
            return Err(err(format!(
                "`{name}` must be float32, got {:?}",
                t.dtype()
            )));
        }
    }
    Ok(InitLatents {
        latents: a,
        image_noise,
    })
}

/// The indices of the `false` entries of a 1-D boolean array (evaluated here): the images
/// whose per-image check failed.
pub(crate) fn false_rows(flags: &Array) -> Result<Vec<usize>> {
    flags.eval()?;
    Ok(flags
        .as_slice::<bool>()
        .iter()
        .enumerate()
        .filter_map(|(i, &ok)| (!ok).then_some(i))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing against index arithmetic written from the layout's definition: token
    /// (y, x) channel c·4 + dy·2 + dx holds latent (c, 2y + dy, 2x + dx).
    #[test]
    fn pack_matches_the_channel_order_and_unpack_inverts_it() -> anyhow::Result<()> {
        let (c, h, w) = (3usize, 4usize, 6usize);
        let vals: Vec<f32> = (0..c * h * w).map(|i| i as f32).collect();
        let x = Array::from_slice(&vals, &[1, 1, c as i32, h as i32, w as i32]);
        let packed = pack_latents(&x, 2)?;
        assert_eq!(packed.shape(), &[1, 6, 12]);
        let pv = packed.as_slice::<f32>().to_vec();
        for y in 0..h / 2 {
            for xx in 0..w / 2 {
                for ci in 0..c {
                    for dy in 0..2 {
                        for dx in 0..2 {
                            let tok = y * (w / 2) + xx;
                            let ch = ci * 4 + dy * 2 + dx;
                            let src = ci * h * w + (2 * y + dy) * w + (2 * xx + dx);
                            assert_eq!(pv[tok * 12 + ch], vals[src]);
                        }
                    }
                }
            }
        }
        let back = unpack_latents(&packed, h, w, 2)?;
        assert_eq!(back.shape(), &[1, c as i32, 1, h as i32, w as i32]);
        assert_eq!(back.as_slice::<f32>(), &vals[..]);
        assert!(unpack_latents(&packed, h, w + 2, 2).is_err());
        assert!(pack_latents(&Array::zeros::<f32>(&[1, 1, 2, 3, 4])?, 2).is_err());
        Ok(())
    }

    #[test]
    fn seeded_noise_is_deterministic_and_standard() -> anyhow::Result<()> {
        let a = seeded_noise(7, 4, 16, 16)?;
        let b = seeded_noise(7, 4, 16, 16)?;
        let c = seeded_noise(8, 4, 16, 16)?;
        assert_eq!(a.as_slice::<f32>(), b.as_slice::<f32>());
        assert_ne!(a.as_slice::<f32>(), c.as_slice::<f32>());
        let v = a.as_slice::<f32>();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        // 1024 samples: mean within ±0.2 and variance within [0.8, 1.2] is ~6 sigma loose.
        assert!(
            mean.abs() < 0.2 && (0.8..1.2).contains(&var),
            "{mean} {var}"
        );
        Ok(())
    }
}
