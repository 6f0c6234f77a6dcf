//! Prompt encoding of the edit pipelines against diffusers 0.42.1 (`fixtures/gen/vision.py`,
//! `edit/`): pictures resized with Pillow's bicubic to the processor's size, cut into patches,
//! through the vision tower and the language model with 3-D M-RoPE positions, the system
//! prefix dropped — for `QwenImageEditPipeline` (one picture) and `QwenImageEditPlusPipeline`
//! (two pictures of different shapes). The reference forwards `mm_token_type_ids` as diffusers
//! PR #14189 does (0.42.1 drops it: issue #14194).
//!
//! Tolerance: f32 on both sides; 1e-4 of the output's scale (measured 2026-11-30: 2.7e-6 for
//! Edit, 3.9e-6 for Plus). Bugs injected once into `qwen_text_encoder::edit`, each failed:
//! no `Picture i:` labels (58 tokens instead of 76), one token too many dropped (drop index
//! 226 vs 225), 1-D positions as diffusers 0.42.1 gives them (9.7e-1), the pictures swapped
//! (their token runs no longer fit their grids: refused).

mod common;

use common::*;
use mlx_rs::{Array, Dtype};
use qwen_image::resample::{Filter, resize};
use qwen_text_encoder::{EditEncoder, EditTemplate};

fn floats(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap();
    a.eval().unwrap();
    a.as_slice::<f32>().to_vec()
}

#[test]
fn edit_prompts_encode_as_diffusers() -> anyhow::Result<()> {
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    let dir = fixtures().join("../vision/edit");
    let cases = mlx_weights::load_file(&dir.join("cases.safetensors"))?;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json"))?)?;
    for (kind, template) in [("edit", EditTemplate::Edit), ("plus", EditTemplate::Plus)] {
        let enc = EditEncoder::load(
            &dir.join("text_encoder"),
            &dir.join("processor"),
            template,
            Dtype::Float32,
        )?;
        assert_eq!(
            enc.drop_index() as u64,
            meta[kind]["drop_index"].as_u64().unwrap()
        );
        let n = meta[kind]["pictures"].as_u64().unwrap() as usize;
        let want_grids = cases.get(&format!("{kind}_grids")).unwrap();
        let want_grids = want_grids.as_slice::<i32>().to_vec();
        let mut pictures = Vec::new();
        for i in 0..n {
            let pic = cases.get(&format!("{kind}_picture{i}")).unwrap();
            let (h, w) = (pic.shape()[0] as usize, pic.shape()[1] as usize);
            let (rh, rw) = enc.processor().smart_resize(h, w)?;
            let resized = resize(pic.as_slice::<u8>(), (w, h), 3, (rw, rh), Filter::Bicubic);
            let (pv, grid) = enc.processor().pixel_values(&resized, rw, rh)?;
            assert_eq!(
                [grid.t as i32, grid.h as i32, grid.w as i32],
                want_grids[3 * i..3 * i + 3],
                "{kind} picture {i}"
            );
            pictures.push((pv, grid));
        }
        let prompt = meta[kind]["prompt"].as_str().unwrap();
        let out = enc.encode(prompt, &pictures)?;
        let want = cases.get(&format!("{kind}_embeds")).unwrap();
        assert_eq!(out.embeds.shape(), want.shape(), "{kind}");
        let (got, want) = (floats(&out.embeds), floats(want));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(err <= 1e-4, "{kind}: max rel err {err:.3e}");
    }
    Ok(())
}
