//! `qwen-image generate --vae-tiling`: the images the library makes with the same tiles (see
//! the library's tests/tiling.rs for the pipeline itself).

mod common;

use common::*;
use qwen_image::{PipelineOptions, QwenImagePipeline, Tiles, VaeTiling};

/// The command line: `--vae-tiling on --vae-tile-size 32` (32/24 px tiles) writes the image
/// the API makes with those tiles and says so; `--vae-tiling off` writes the same file as the
/// default (auto, untiled at this size).
#[test]
fn cli_on_off_auto() -> anyhow::Result<()> {
    let name = "tiny_square_cfg";
    let tmp = tempfile::tempdir()?;
    let png = |tag: &str, extra: &[&str]| -> anyhow::Result<(Vec<u8>, String)> {
        let out = tmp.path().join(format!("{tag}.png"));
        let mut args = case_args(name, &out);
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = run(bin().args(&args));
        assert!(o.status.success(), "{}", text(&o));
        let img = image::open(&out)?.to_rgb8();
        let (w, h, _) = reference_image(name);
        assert_eq!((img.width() as usize, img.height() as usize), (w, h));
        Ok((
            img.into_raw(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ))
    };
    let (on, on_log) = png("on", &["--vae-tiling", "on", "--vae-tile-size", "32"])?;
    assert!(
        on_log.contains("tiled, 32 px tiles, 24 px stride; --vae-tiling on"),
        "{on_log}"
    );
    let (off, off_log) = png("off", &["--vae-tiling", "off"])?;
    assert!(off_log.contains("untiled; --vae-tiling off"), "{off_log}");
    let (auto, auto_log) = png("auto", &[])?;
    assert!(
        auto_log.contains("untiled; --vae-tiling auto"),
        "{auto_log}"
    );
    assert_eq!(off, auto);
    assert_ne!(on, off);

    let mut pipe = QwenImagePipeline::load(
        &fixtures().join(case(name).model),
        PipelineOptions {
            dtype: qwen_image::ComputeDtype::F32,
            ..Default::default()
        },
    )?;
    let mut req = case_request(&pipe, name)?;
    req.vae_tiling = VaeTiling::On(Tiles::Square(32));
    let api = pipe.generate(&req)?;
    assert_eq!(api[0].data, on);
    Ok(())
}
