//! The Qwen2.5-VL vision tower against transformers 5.23 on a tiny random tower
//! (`fixtures/gen/vision.py`): two images whose merge units do not fill the attention
//! windows (3×5 units in 2×2 windows) or leave whole windows empty (2×4), full attention in
//! blocks 1 and 3.
//!
//! Tolerance: f32 on both sides, the same operations up to summation order and the f32
//! transcendental functions: 5.8e-6 relative to the output's scale; 1e-4 (the bound)
//! rejects every structural mistake injected (recorded in the test's comments).

mod common;

use std::path::PathBuf;

use mlx_rs::{Array, Dtype};
use qwen_text_encoder::vision::{Grid, VisionTower, patch_positions, window_index};

fn fixture(rel: &str) -> PathBuf {
    common::fixture_in("vision", rel)
}

fn io() -> mlx_weights::Tensors {
    mlx_weights::load_file(&fixture("io.safetensors")).expect("fixture io.safetensors")
}

fn ints(a: &Array) -> Vec<i32> {
    let a = a.as_dtype(Dtype::Int32).unwrap();
    a.eval().unwrap();
    a.as_slice::<i32>().to_vec()
}

fn floats(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

fn grids(t: &mlx_weights::Tensors) -> Vec<Grid> {
    ints(t.get("grid_thw").unwrap())
        .chunks(3)
        .map(|g| Grid {
            t: g[0] as usize,
            h: g[1] as usize,
            w: g[2] as usize,
        })
        .collect()
}

#[test]
fn window_order_is_transformers() {
    let t = io();
    let (index, cu) = window_index(&grids(&t), 2, 2);
    let want: Vec<usize> = ints(t.get("window_index").unwrap())
        .into_iter()
        .map(|v| v as usize)
        .collect();
    assert_eq!(index, want);
    let want_cu: Vec<usize> = ints(t.get("cu_window_seqlens").unwrap())
        .into_iter()
        .map(|v| v as usize)
        .collect();
    assert_eq!(cu, want_cu);
    // Positions: the first merge unit's four patches, then the next unit to the right.
    let pos = patch_positions(&[Grid { t: 1, h: 4, w: 4 }], 2);
    assert_eq!(&pos[..6], &[(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3)]);
}

#[test]
fn tower_matches_transformers() -> anyhow::Result<()> {
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    let t = io();
    let tower = VisionTower::load(&fixture("text_encoder"), Dtype::Float32)?;
    let out = tower.forward(t.get("pixel_values").unwrap(), &grids(&t))?;
    let want = t.get("merged").unwrap();
    assert_eq!(out.shape(), want.shape());
    let err = common::max_rel_err(&floats(&out), &floats(want));
    // Measured 2026-11-30 (CPU, f32): 5.8e-6. Bugs injected once into src/vision.rs, each
    // failed this bound: full attention in every block 1.3e0, rotary off 1.1e0, rotate_half's
    // sign flipped 1.2e0, rows and columns swapped in the rotary 1.6e0, patches not put in
    // window order 1.3e0, units left in window order 1.0e0, tanh GELU in the merger 1.5e-4.
    assert!(
        err <= 1e-4,
        "vision tower vs transformers: max rel err {err:.3e}"
    );
    Ok(())
}

#[test]
fn bad_inputs_are_refused() -> anyhow::Result<()> {
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    let t = io();
    let tower = VisionTower::load(&fixture("text_encoder"), Dtype::Float32)?;
    let px = t.get("pixel_values").unwrap();
    // A grid that does not match the patches, an odd grid, none.
    for g in [
        vec![Grid { t: 1, h: 6, w: 10 }],
        vec![Grid { t: 1, h: 5, w: 10 }, Grid { t: 1, h: 4, w: 8 }],
        vec![],
    ] {
        let e = tower.forward(px, &g).expect_err("refused").to_string();
        assert!(e.contains("grid") || e.contains("pixel_values"), "{e}");
    }
    // A folder without the tower's weights names what is missing.
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        fixture("text_encoder/config.json"),
        dir.path().join("config.json"),
    )?;
    let mut only = std::collections::BTreeMap::new();
    only.insert(
        "visual.merger.ln_q.weight".to_string(),
        mlx_rs::ops::ones::<f32>(&[32])?,
    );
    mlx_weights::save_file(&dir.path().join("model.safetensors"), &only)?;
    let e = VisionTower::load(dir.path(), Dtype::Float32)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("visual.blocks.0.attn.qkv.weight"), "{e}");
    Ok(())
}

/// The language model reading the two images inside a prompt: image features in place of the
/// image-pad tokens, 3-D M-RoPE positions from the token types, against transformers' last
/// hidden state with `mm_token_type_ids` (how Qwen-Image-Edit was released, and diffusers
/// after PR #14189). The same call without the token types (transformers 5.x then silently
/// uses positions 0..T: diffusers 0.42.1's bug #14194) gives a different state; ours must be
/// the 3-D one, and with 1-D positions it reproduces the buggy one (so the test tells them
/// apart).
#[test]
fn the_language_model_reads_the_images_with_3d_positions() -> anyhow::Result<()> {
    use qwen_text_encoder::rope::rope_index;
    use qwen_text_encoder::vision::place_image_tokens;
    use qwen_text_encoder::{Qwen2_5_VLConfig, QwenTextModel, load_weights};
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    let io = io();
    let lm = mlx_weights::load_file(&fixture("lm_io.safetensors"))?;
    let dir = fixture("text_encoder");
    let cfg = Qwen2_5_VLConfig::from_file(&dir.join("config.json"))?.resolve()?;
    let model = QwenTextModel::new(
        cfg.clone(),
        load_weights(&dir, &cfg, Dtype::Float32)?,
        Dtype::Float32,
    )?;
    let tower = VisionTower::load(&dir, Dtype::Float32)?;
    let gs = grids(&io);
    let features = tower.forward(io.get("pixel_values").unwrap(), &gs)?;
    let ids = lm.get("input_ids").unwrap();
    let row: Vec<i32> = ints(ids);
    let embeds = place_image_tokens(
        &model.embed(ids)?,
        std::slice::from_ref(&row),
        60,
        &features,
    )?;

    let is_image: Vec<bool> = row.iter().map(|&i| i == 60).collect();
    let valid = vec![true; row.len()];
    let pos = rope_index(&is_image, &valid, &mut gs.iter().copied(), 2)?;
    let want_pos = ints(lm.get("position_ids").unwrap());
    let got_pos: Vec<i32> = pos.iter().flatten().map(|&p| p as i32).collect();
    assert_eq!(got_pos, want_pos, "3-D M-RoPE positions");

    let hidden = model.forward_embeds(&embeds, Some(&[pos]), None)?;
    let want_3d = floats(lm.get("hidden_3d").unwrap());
    let want_1d = floats(lm.get("hidden_1d").unwrap());
    let got = floats(&hidden);
    let err = common::max_rel_err(&got, &want_3d);
    let off = common::max_rel_err(&got, &want_1d);
    // Measured 2026-11-30 (CPU, f32): 5.3e-6 against the 3-D reference, 7.3e-1 against the
    // 1-D one. Injected once, each failed: the running position advanced by the token count
    // (positions differ), rows and columns swapped (positions differ), image pads left as
    // token embeddings (9.9e-1).
    assert!(err <= 1e-4, "3-D positions vs transformers: {err:.3e}");
    assert!(off > 1e-2, "the 1-D fallback must be told apart: {off:.3e}");
    // Text positions 0..T everywhere reproduce the fallback (the bug diffusers 0.42.1 has).
    let flat = floats(&model.forward_embeds(&embeds, None, None)?);
    let err_1d = common::max_rel_err(&flat, &want_1d);
    assert!(
        err_1d <= 1e-4,
        "1-D positions vs transformers' fallback: {err_1d:.3e}"
    );
    Ok(())
}

/// Qwen2-VL's image processor against transformers (PIL backend): `smart_resize` at the real
/// factor 28 and bounds for a table of sizes, and the patches of three pictures (within, above
/// and below the bounds at patch 4) bit for bit from the Pillow-resized pixels.
#[test]
fn the_image_processor_matches_transformers() -> anyhow::Result<()> {
    use qwen_text_encoder::ImageProcessorConfig;
    let real = ImageProcessorConfig {
        min_pixels: Some(3136),
        max_pixels: Some(12_845_056),
        ..Default::default()
    };
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("processor.json"))?)?;
    for case in table.as_array().unwrap() {
        let (h, w) = (
            case["height"].as_u64().unwrap(),
            case["width"].as_u64().unwrap(),
        );
        let want = (
            case["resized"][0].as_u64().unwrap() as usize,
            case["resized"][1].as_u64().unwrap() as usize,
        );
        assert_eq!(real.smart_resize(h as usize, w as usize)?, want, "{h}×{w}");
    }
    assert!(
        real.smart_resize(10, 2001).is_err(),
        "aspect ratio above 200"
    );
    let tiny = ImageProcessorConfig {
        min_pixels: Some(256),
        max_pixels: Some(1600),
        patch_size: 4,
        ..Default::default()
    };
    let t = mlx_weights::load_file(&fixture("processor.safetensors"))?;
    for i in 0..3 {
        let image = t.get(&format!("image{i}")).unwrap();
        let resized = t.get(&format!("resized{i}")).unwrap();
        let (h, w) = (image.shape()[0] as usize, image.shape()[1] as usize);
        let (rh, rw) = (resized.shape()[0] as usize, resized.shape()[1] as usize);
        assert_eq!(tiny.smart_resize(h, w)?, (rh, rw), "picture {i}");
        let (pv, grid) = tiny.pixel_values(resized.as_slice::<u8>(), rw, rh)?;
        let want_grid = ints(t.get(&format!("grid{i}")).unwrap());
        assert_eq!(vec![grid.t as i32, grid.h as i32, grid.w as i32], want_grid);
        let want = floats(t.get(&format!("pixel_values{i}")).unwrap());
        assert_eq!(floats(&pv), want, "picture {i}: pixel values");
    }
    Ok(())
}
