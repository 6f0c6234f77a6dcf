//! VAE tiling in the pipeline (the command line's `--vae-tiling` is tested with the
//! program): `VaeTiling::On` decodes exactly as `QwenImageVae::decode_tiled`
//! called directly on the pipeline's final latents, `Off` exactly as `QwenImageVae::decode`
//! (the decode before tiling existed, which tests/parity.rs holds to diffusers), `Auto` leaves
//! small images untiled.
//!
//! The comparisons are exact: the pipeline and the direct calls run the same MLX ops on the
//! same f32 inputs on one device. The tiny fixture VAE's mid-block attention is global, so a
//! tiled decode of it differs visibly from a whole one: the tests check that too, so a
//! pipeline that ignored the setting would fail. `decode_tiled` itself is held to diffusers'
//! tiled decode in qwen-vae's tests.

mod common;

use common::*;
use qwen_image::{
    GenerateRequest, Generation, PipelineOptions, QwenImagePipeline, Tiles, TilingConfig, VaeTiling,
};
use qwen_vae::QwenImageVae;

/// Non-square tiles (16×32 px, strides 8×24 px: 2×4-latent tiles 1×3 latents apart) on an
/// 80×32 image: 4 tile rows × 4 tile columns, overlaps blended both ways.
const TILES: TilingConfig = TilingConfig {
    tile_sample_min_height: 16,
    tile_sample_min_width: 32,
    tile_sample_stride_height: 8,
    tile_sample_stride_width: 24,
};

fn request(pipe: &QwenImagePipeline, name: &str) -> anyhow::Result<GenerateRequest> {
    case_request(pipe, name)
}

fn pipeline(name: &str) -> anyhow::Result<QwenImagePipeline> {
    Ok(QwenImagePipeline::load(
        &fixtures().join(case(name).model),
        PipelineOptions {
            dtype: qwen_image::ComputeDtype::F32,
            quantize: None,
            residency: qwen_image::Residency::KeepTransformer,
            activation_budget: qwen_image::ActivationBudget::Auto,
        },
    )?)
}

/// The image `vae` makes of a generation's packed latents, whole or tiled.
fn direct_decode(
    pipe: &QwenImagePipeline,
    req: &GenerateRequest,
    vae: &QwenImageVae,
    gen_: &Generation,
    tiles: Option<&TilingConfig>,
) -> anyhow::Result<Vec<u8>> {
    let (h, w) = pipe.latent_size(req.width, req.height);
    let z =
        qwen_image::latents::unpack_latents(&gen_.latents[0], h, w, pipe.configs().patch_size())?;
    let z = vae.denormalize_latents(&z)?;
    let img = match tiles {
        Some(t) => vae.decode_tiled(&z, t)?,
        None => vae.decode(&z)?,
    };
    Ok(qwen_vae::to_rgb8(&img)?.remove(0).data)
}

#[test]
fn on_is_decode_tiled_off_is_decode_auto_leaves_small_images_whole() -> anyhow::Result<()> {
    let name = "tiny_wide_cfg";
    let mut pipe = pipeline(name)?;
    let mut req = request(&pipe, name)?;
    assert_eq!((req.width, req.height), (80, 32));

    req.vae_tiling = VaeTiling::On(Tiles::Custom(TILES));
    let on = pipe.generate_with(&req, &mut |_| {})?;
    req.vae_tiling = VaeTiling::Off;
    let off = pipe.generate_with(&req, &mut |_| {})?;
    req.vae_tiling = VaeTiling::default();
    let auto = pipe.generate_with(&req, &mut |_| {})?;

    assert_eq!(on.vae_tiles, Some(TILES));
    assert_eq!(off.vae_tiles, None);
    assert_eq!(auto.vae_tiles, None);
    // Tiling changes the decode only: the denoised latents are the same.
    assert_eq!(on.latents.len(), 1);
    assert_eq!(
        on.latents[0].as_slice::<f32>(),
        off.latents[0].as_slice::<f32>()
    );
    let (w, h, want) = reference_image(name);
    for g in [&on, &off, &auto] {
        assert_eq!((g.images[0].width, g.images[0].height), (w, h));
    }

    let vae = QwenImageVae::load(&pipe.paths().unwrap().vae, mlx_rs::Dtype::Float32)?;
    assert_eq!(
        on.images[0].data,
        direct_decode(&pipe, &req, &vae, &on, Some(&TILES))?
    );
    assert_eq!(
        off.images[0].data,
        direct_decode(&pipe, &req, &vae, &off, None)?
    );
    assert_eq!(auto.images[0].data, off.images[0].data);
    // Off is the untiled decode the parity tests hold to diffusers.
    assert!(psnr(&off.images[0].data, &want) >= 40.0);
    // The setting took effect: the tiny VAE's global attention makes tiles differ.
    let p = psnr(&on.images[0].data, &off.images[0].data);
    eprintln!("tiled vs whole decode: {p:.1} dB");
    assert!(p.is_finite(), "tiled decode is identical to the whole one");
    Ok(())
}

#[test]
fn bad_tiles_are_rejected_by_validate() -> anyhow::Result<()> {
    let name = "tiny_square_cfg";
    let pipe = pipeline(name)?;
    let mut req = request(&pipe, name)?;
    for (tiles, needle) in [
        (
            VaeTiling::square_tiles(12, 8),
            "multiples of the compression ratio 8",
        ),
        (
            VaeTiling::square_tiles(0, 8),
            "at least the compression ratio 8",
        ),
        (
            TilingConfig {
                tile_sample_stride_width: 64,
                ..VaeTiling::square_tiles(32, 8)
            },
            "larger than the tile",
        ),
    ] {
        for mode in [
            VaeTiling::On(Tiles::Custom(tiles)),
            VaeTiling::Auto(Tiles::Custom(tiles)),
        ] {
            req.vae_tiling = mode;
            let e = pipe.validate(&req).unwrap_err().to_string();
            assert!(e.contains("VAE tiling") && e.contains(needle), "{e}");
        }
    }
    req.vae_tiling = VaeTiling::Off;
    pipe.validate(&req)?;
    Ok(())
}
