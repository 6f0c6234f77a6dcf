//! Strict loading: every checkpoint problem is reported, together, in one error.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use mlx_rs::{Array, Dtype};
use qwen_vae::{QwenImageVae, VaeConfig, VaeError};

fn vae_dir() -> PathBuf {
    let p = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/data/vae/tiny/vae"
    ))
    .to_path_buf();
    if p.exists() {
        p
    } else {
        Path::new("fixtures/data/vae/tiny/vae").to_path_buf()
    }
}

#[test]
fn fixture_checkpoint_loads_strictly() -> Result<()> {
    let vae = QwenImageVae::load(&vae_dir(), Dtype::Float32)?;
    assert_eq!(vae.config().z_dim, 4);
    assert_eq!(vae.spatial_compression_ratio(), 8);
    Ok(())
}

#[test]
fn missing_unexpected_and_misshaped_keys_are_reported_together() -> Result<()> {
    let dir = vae_dir();
    let cfg = VaeConfig::from_dir(&dir)?;
    let mut t = mlx_weights::load_component(&dir)?;
    t.remove("decoder.mid_block.attentions.0.proj.weight");
    t.insert("decoder.extra.weight", Array::from_slice(&[1.0f32], &[1]));
    t.insert(
        "post_quant_conv.weight",
        Array::from_slice(&[0.0f32; 16], &[4, 4, 1, 1]), // Conv2d-shaped, not Conv3d
    );
    match QwenImageVae::from_tensors(cfg, t, Dtype::Float32) {
        Err(VaeError::Weights(e)) => {
            let msg = e.to_string();
            for want in [
                "decoder.mid_block.attentions.0.proj.weight",
                "decoder.extra.weight",
                "post_quant_conv.weight",
            ] {
                assert!(msg.contains(want), "{want} not in: {msg}");
            }
            Ok(())
        }
        Err(e) => bail!("wrong error: {e}"),
        Ok(_) => bail!("a broken checkpoint was accepted"),
    }
}

#[test]
fn bad_config_is_rejected_before_weights_are_read() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"z_dim": 4, "latents_mean": [0, 0, 0], "latents_std": [1, 1, 1, 1]}"#,
    )?;
    match QwenImageVae::load(tmp.path(), Dtype::Float32) {
        Err(VaeError::InvalidConfig(m)) => {
            assert!(m.contains("latents_mean has 3 values, z_dim is 4"), "{m}");
            Ok(())
        }
        Err(e) => bail!("wrong error: {e}"),
        Ok(_) => bail!("accepted"),
    }
}

#[test]
fn wrong_input_shapes_are_errors_not_panics() -> Result<()> {
    let vae = QwenImageVae::load(&vae_dir(), Dtype::Float32)?;
    let z3 = Array::from_slice(&[0.0f32; 3 * 16], &[1, 3, 1, 4, 4]); // 3 channels, z_dim 4
    assert!(vae.decode(&z3).is_err());
    let video = Array::from_slice(&[0.0f32; 4 * 2 * 4], &[1, 4, 2, 2, 2]); // T = 2
    assert!(vae.decode(&video).is_err());
    let odd = Array::from_slice(&[0.0f32; 3 * 12 * 16], &[1, 3, 12, 16]); // 12 not a multiple of 8
    assert!(vae.encode(&odd).is_err());
    assert!(
        vae.denormalize_latents(&Array::from_slice(&[0.0f32; 4], &[4]))
            .is_err()
    );
    Ok(())
}
