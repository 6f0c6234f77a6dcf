//! Parity with diffusers' `AutoencoderKLQwenImage` (fixtures from `fixtures/gen/vae.py`, f32 CPU).
//!
//! Error metric ("max relative error"): `max_i |ours_i − ref_i| / max_i |ref_i|`, the largest
//! absolute deviation relative to the reference's largest magnitude. Bound 1e-4: both sides
//! run f32 through ~30 convolutions (sums of up to 27·C products) and an attention softmax;
//! different summation orders (MLX vs oneDNN/ATen) leave ~1e-6 relative, so 1e-4 leaves
//! margin for accumulation while any real bug (wrong tap, layout, norm, order of mean/std,
//! missing clamp) gives errors of 1e-2 or more (see the sensitivity notes in the report).
//!
//! The tests pin MLX to the CPU: the bound is for full f32, while MLX's GPU backends run f32
//! convolutions/matmuls as TF32 by default (`MLX_ENABLE_TF32=1`), which alone gives ~1e-2
//! here. (With `MLX_ENABLE_TF32=0` on an H100 the same tests reached ≤ 2.7e-5.)

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use mlx_rs::{Array, Dtype};
use qwen_vae::{ConvPath, QwenImageVae, TilingConfig, to_rgb8};

const TOL: f32 = 1e-4;

fn fixtures(rel: &str) -> PathBuf {
    let p = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/data/vae"
    ))
    .join(rel);
    if p.exists() {
        p
    } else {
        Path::new("fixtures/data/vae").join(rel)
    }
}

struct Case {
    vae: QwenImageVae,
    t: mlx_weights::Tensors,
    meta: serde_json::Value,
}

/// Full-f32 CPU execution (see the module docs).
fn pin_cpu() {
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
}

fn load(model: &str) -> Result<Case> {
    pin_cpu();
    let dir = fixtures(model);
    let vae = QwenImageVae::load(&dir.join("vae"), Dtype::Float32)?;
    let t = mlx_weights::load_file(&dir.join("cases.safetensors"))?;
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json"))?)?;
    Ok(Case { vae, t, meta })
}

impl Case {
    fn get(&self, key: &str) -> Result<Array> {
        self.t
            .get(key)
            .cloned()
            .with_context(|| format!("fixture key {key}"))
    }
    fn tiles(&self, case: &str) -> Result<TilingConfig> {
        Ok(serde_json::from_value(self.meta[case]["tiles"].clone())?)
    }
}

fn to_vec(a: &Array) -> Result<Vec<f32>> {
    let a = a.as_dtype(Dtype::Float32)?.contiguous()?;
    a.eval()?;
    Ok(a.try_as_slice::<f32>()?.to_vec())
}

/// Max |a − b| / max |b| (see the module docs).
fn max_rel_err(ours: &Array, reference: &Array) -> Result<f32> {
    ensure!(
        ours.shape() == reference.shape(),
        "shape {:?} vs reference {:?}",
        ours.shape(),
        reference.shape()
    );
    let (a, b) = (to_vec(ours)?, to_vec(reference)?);
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let err = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    ensure!(err.is_finite(), "non-finite output");
    Ok(err / scale)
}

fn assert_close(what: &str, ours: &Array, reference: &Array, tol: f32) -> Result<()> {
    let e = max_rel_err(ours, reference)?;
    eprintln!("{what}: max rel err {e:.3e}");
    ensure!(e <= tol, "{what}: max rel err {e:.3e} > {tol:.0e}");
    Ok(())
}

/// `(B, C, 1, H, W)` → `(B, C, H, W)` (the pipeline's `[:, :, 0]`).
fn frame0(a: &Array) -> Result<Array> {
    let s = a.shape();
    Ok(a.reshape(&[s[0], s[1], s[3], s[4]])?)
}

fn check_decode(model: &str, case: &str) -> Result<()> {
    let c = load(model)?;
    let z = c.get(&format!("{case}.z"))?;
    let zd = c.vae.denormalize_latents(&z)?;
    assert_close(
        &format!("{model}/{case} denorm"),
        &zd,
        &c.get(&format!("{case}.z_denorm"))?,
        1e-6,
    )?;
    let want = frame0(&c.get(&format!("{case}.decoded"))?)?;
    let img = c.vae.decode(&c.get(&format!("{case}.z_denorm"))?)?;
    assert_eq!(img.dtype(), Dtype::Float32);
    assert_close(&format!("{model}/{case} decode"), &img, &want, TOL)?;

    // 8-bit conversion: exact on the reference image; on ours, at most one level off
    // (values within ~1e-6 of a rounding boundary may flip).
    let rgb_ref = c.get(&format!("{case}.rgb"))?;
    let rgb_ref: Vec<u8> = rgb_ref.try_as_slice::<u8>()?.to_vec();
    let from_ref: Vec<u8> = to_rgb8(&want)?.into_iter().flat_map(|i| i.data).collect();
    ensure!(
        from_ref == rgb_ref,
        "{model}/{case}: to_rgb8(reference) != diffusers postprocess"
    );
    let ours = to_rgb8(&img)?;
    ensure!(ours[0].width as i32 == want.shape()[3] && ours[0].height as i32 == want.shape()[2]);
    let ours: Vec<u8> = ours.into_iter().flat_map(|i| i.data).collect();
    let worst = ours.iter().zip(&rgb_ref).map(|(a, b)| a.abs_diff(*b)).max();
    ensure!(worst <= Some(1), "{model}/{case}: rgb off by {worst:?}");
    Ok(())
}

fn check_encode(model: &str, case: &str) -> Result<()> {
    let c = load(model)?;
    let image = c.get(&format!("{case}.image"))?;
    let d = c.vae.encode(&image)?;
    assert_close(
        &format!("{model}/{case} mean"),
        &d.mean,
        &c.get(&format!("{case}.mean"))?,
        TOL,
    )?;
    assert_close(
        &format!("{model}/{case} logvar"),
        &d.logvar,
        &c.get(&format!("{case}.logvar"))?,
        TOL,
    )?;
    // the 4-D image layout gives the same result
    let s = image.shape();
    let d4 = c.vae.encode(&image.reshape(&[s[0], s[1], s[3], s[4]])?)?;
    assert_close("4-D input", &d4.mean, &d.mean, 0.0)?;
    assert_close(
        "encode_normalized",
        &c.vae.encode_normalized(&image)?,
        &c.get(&format!("{case}.normalized"))?,
        TOL,
    )?;
    let n = c.vae.normalize_latents(&d.mean)?;
    assert_close(
        &format!("{model}/{case} normalized"),
        &n,
        &c.get(&format!("{case}.normalized"))?,
        TOL,
    )
}

#[test]
fn decode_square_matches_diffusers() -> Result<()> {
    check_decode("tiny", "dec_square")
}

#[test]
fn decode_nonsquare_batch2_matches_diffusers() -> Result<()> {
    check_decode("tiny", "dec_nonsquare_b2")
}

#[test]
fn decode_attn_variant_matches_diffusers() -> Result<()> {
    check_decode("tiny_attn", "dec_square")
}

#[test]
fn encode_square_matches_diffusers() -> Result<()> {
    check_encode("tiny", "enc_square")
}

#[test]
fn encode_nonsquare_batch2_matches_diffusers() -> Result<()> {
    check_encode("tiny", "enc_nonsquare_b2")
}

#[test]
fn encode_attn_variant_matches_diffusers() -> Result<()> {
    check_encode("tiny_attn", "enc_square")
}

#[test]
fn decode_accepts_4d_latents() -> Result<()> {
    let c = load("tiny")?;
    let z = c.get("dec_square.z_denorm")?;
    let s = z.shape();
    let a = c.vae.decode(&z)?;
    let b = c.vae.decode(&z.reshape(&[s[0], s[1], s[3], s[4]])?)?;
    assert_close("4-D latents", &b, &a, 0.0)
}

#[test]
fn tiled_decode_matches_diffusers_enable_tiling() -> Result<()> {
    let c = load("tiny")?;
    let tiles = c.tiles("dec_tiled")?;
    let z = c.get("dec_tiled.z_denorm")?;
    let ours = c.vae.decode_tiled(&z, &tiles)?;
    // diffusers returns the tiled result unclamped; ours is clamped like decode().
    let lo = Array::from_f32(-1.0);
    let hi = Array::from_f32(1.0);
    let want = mlx_rs::ops::clip(frame0(&c.get("dec_tiled.decoded_tiled")?)?, (&lo, &hi))?;
    assert_close("tiled decode", &ours, &want, TOL)?;
    // and the untiled decode of the same latents matches diffusers' untiled decode
    let full = c.vae.decode(&z)?;
    assert_close(
        "untiled decode",
        &full,
        &frame0(&c.get("dec_tiled.decoded")?)?,
        TOL,
    )
}

#[test]
fn tiled_encode_matches_diffusers_enable_tiling() -> Result<()> {
    let c = load("tiny")?;
    let tiles = c.tiles("enc_tiled")?;
    let image = c.get("enc_tiled.image")?;
    let d = c.vae.encode_tiled(&image, &tiles)?;
    assert_close(
        "tiled encode mean",
        &d.mean,
        &c.get("enc_tiled.mean_tiled")?,
        TOL,
    )?;
    assert_close(
        "tiled encode logvar",
        &d.logvar,
        &c.get("enc_tiled.logvar_tiled")?,
        TOL,
    )?;
    let full = c.vae.encode(&image)?;
    assert_close(
        "untiled encode mean",
        &full.mean,
        &c.get("enc_tiled.mean")?,
        TOL,
    )
}

#[test]
fn one_tile_covering_everything_equals_untiled() -> Result<()> {
    // With a tile at least as large as the image there is a single tile, no blending: the
    // tiled code path must reproduce the untiled result exactly.
    let c = load("tiny")?;
    let z = c.get("dec_tiled.z_denorm")?;
    let big = TilingConfig {
        tile_sample_min_height: 128,
        tile_sample_min_width: 128,
        tile_sample_stride_height: 96,
        tile_sample_stride_width: 96,
    };
    assert_close(
        "one-tile decode",
        &c.vae.decode_tiled(&z, &big)?,
        &c.vae.decode(&z)?,
        0.0,
    )?;
    let img = c.get("enc_tiled.image")?;
    let e1 = c.vae.encode_tiled(&img, &big)?;
    let e0 = c.vae.encode(&img)?;
    assert_close("one-tile encode", &e1.mean, &e0.mean, 0.0)
}

#[test]
fn single_frame_fast_path_equals_general_causal_3d_path() -> Result<()> {
    // Same model, every causal conv run as conv3d over time-padded input vs as a 2-D conv
    // with the last tap. Only float summation order differs: 1e-5 relative.
    for model in ["tiny", "tiny_attn"] {
        let c = load(model)?;
        let z = c.get("dec_square.z_denorm")?;
        let fast = c.vae.decode_with_path(&z, ConvPath::SingleFrame)?;
        let general = c.vae.decode_with_path(&z, ConvPath::Causal3d)?;
        assert_close(&format!("{model} decode fast vs 3d"), &fast, &general, 1e-5)?;
        let img = c.get("enc_square.image")?;
        let fast = c.vae.encode_with_path(&img, ConvPath::SingleFrame)?;
        let general = c.vae.encode_with_path(&img, ConvPath::Causal3d)?;
        assert_close(
            &format!("{model} encode fast vs 3d"),
            &fast.mean,
            &general.mean,
            1e-5,
        )?;
    }
    Ok(())
}

#[test]
fn bf16_model_keeps_bf16_activations() -> Result<()> {
    // The bf16 trap: a strong f32 constant anywhere would promote the output to f32.
    pin_cpu();
    let dir = fixtures("tiny");
    let vae = QwenImageVae::load(&dir.join("vae"), Dtype::Bfloat16)?;
    let t = mlx_weights::load_file(&dir.join("cases.safetensors"))?;
    let z = t.get("dec_square.z").context("z")?;
    let img = vae.decode(&vae.denormalize_latents(z)?)?;
    assert_eq!(img.dtype(), Dtype::Bfloat16);
    let d = vae.encode(t.get("enc_square.image").context("image")?)?;
    assert_eq!(d.mean.dtype(), Dtype::Bfloat16);
    assert_eq!(vae.normalize_latents(&d.mean)?.dtype(), Dtype::Bfloat16);
    // bf16 (8-bit mantissa) through the whole random decoder is far from f32 at the worst
    // pixel (diffusers itself in bf16: max rel err 0.15), so bound the mean absolute error
    // instead: diffusers in bf16 reaches 7.8e-3 on this case; allow 4x that.
    let want = frame0(t.get("dec_square.decoded").context("decoded")?)?;
    let (a, b) = (to_vec(&img)?, to_vec(&want)?);
    let mae = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    eprintln!("bf16 decode mean abs err {mae:.3e}");
    ensure!(mae < 0.03, "bf16 decode far off: mean abs err {mae}");
    Ok(())
}
