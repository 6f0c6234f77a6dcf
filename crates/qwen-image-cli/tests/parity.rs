//! End-to-end parity: `qwen-image generate --dtype f32 --init-latents …` on the tiny
//! checkpoints of fixtures/data/pipeline against diffusers' `QwenImagePipeline` images.
//!
//! Bar: PSNR ≥ 40 dB on 8-bit RGB (the brief's bar). Everything runs in f32 on both sides;
//! the only differences are float summation orders (MLX vs PyTorch GEMMs, reductions), which
//! can move a pixel by one 8-bit level (observed on Linux CPU: five cases bit-identical, one
//! at 82 dB).
//!
//! Sensitivity (bugs injected into this crate one at a time, PSNR of the cases they affect):
//! CFG without the norm rescale 29.0 / 35.0 / 36.7 dB; dy/dx swapped in both packing and
//! unpacking 10.9–13.0 dB; no dynamic shift (static shift 1) 23.2–30.3 dB on the 3-step cases
//! (2-step schedules are [1, 0.02] whatever μ, because of shift_terminal); timestep / 100
//! instead of / 1000 18.8–22.5 dB; one more template token dropped from the prompt
//! embeddings 24.2–35.0 dB (40.5 on one case without CFG); cond/uncond swapped in CFG
//! 16.2–18.7 dB. Each fails at least three of the six cases. For scale: diffusers itself
//! gives 26 dB when one prompt word changes and 21 dB without CFG.

mod common;

use common::*;

/// Minimum PSNR in dB; see the module docs.
const MIN_PSNR_DB: f64 = 40.0;

fn check(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let o = run(bin().args(case_args(name, &out)));
    assert!(o.status.success(), "{}", text(&o));
    let got = image::open(&out).unwrap().to_rgb8();
    let (w, h, want) = reference_image(name);
    assert_eq!(
        (got.width() as usize, got.height() as usize),
        (w, h),
        "{name}"
    );
    let p = psnr(got.as_raw(), &want);
    eprintln!("{name}: PSNR {p:.1} dB");
    assert!(p >= MIN_PSNR_DB, "{name}: PSNR {p:.1} dB < {MIN_PSNR_DB}");
}

#[test]
fn square_true_cfg_fast_tokenizer() {
    check("tiny_square_cfg");
}

#[test]
fn square_no_negative_prompt() {
    check("tiny_square_nocfg");
}

#[test]
fn wide_true_cfg_scale_3() {
    check("tiny_wide_cfg");
}

#[test]
fn tall_cfg_scale_1() {
    check("tiny_tall_nocfg");
}

#[test]
fn vocab_merges_tokenizer_4x_vae_true_cfg() {
    check("slow_square_cfg");
}

#[test]
fn vocab_merges_tokenizer_4x_vae_wide() {
    check("slow_wide_nocfg");
}
