//! The `qwen-image generate` command: bad input fails early with a clear message and a
//! non-zero exit, without writing anything; good input behaves as documented.

mod common;

use std::fs;
use std::path::Path;

use common::*;

#[test]
fn size_not_a_multiple_of_16() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let mut a = base_args(&out);
    set(&mut a, "--width", "40");
    fails(&a, &out, &["width 40", "multiple of 16"]);
    let mut a = base_args(&out);
    set(&mut a, "--height", "0");
    fails(&a, &out, &["height 0", "multiple of 16"]);
}

#[test]
fn empty_prompt_zero_steps_and_other_bad_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let mut a = base_args(&out);
    set(&mut a, "--prompt", "  ");
    fails(&a, &out, &["prompt is empty"]);
    let mut a = base_args(&out);
    set(&mut a, "--steps", "0");
    fails(&a, &out, &["steps must be at least 1"]);
    let mut a = base_args(&out);
    set(&mut a, "--max-sequence-length", "2000");
    fails(&a, &out, &["max sequence length"]);
    let mut a = base_args(&out);
    set(&mut a, "--num-images", "0");
    fails(&a, &out, &["at least 1"]);
    let mut a = base_args(&out);
    set(&mut a, "--quantize", "3");
    fails(&a, &out, &["--quantize"]);
    let mut a = base_args(&out);
    set(&mut a, "--dtype", "f64");
    fails(&a, &out, &["--dtype"]);
}

#[test]
fn bad_vae_tiling_values() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    // Not a whole number of latents (the VAE compresses 8×): the VAE's own check.
    let mut a = base_args(&out);
    set(&mut a, "--vae-tile-size", "12");
    fails(
        &a,
        &out,
        &["--vae-tile-size 12", "multiples of the compression ratio 8"],
    );
    let mut a = base_args(&out);
    set(&mut a, "--vae-tile-size", "0");
    fails(
        &a,
        &out,
        &["--vae-tile-size 0", "at least the compression ratio 8"],
    );
    // Checked under auto too, though this image is too small to be tiled.
    let mut a = base_args(&out);
    set(&mut a, "--vae-tiling", "auto");
    set(&mut a, "--vae-tile-size", "20");
    fails(&a, &out, &["--vae-tile-size 20"]);
    let mut a = base_args(&out);
    set(&mut a, "--vae-tile-size", "big");
    fails(&a, &out, &["--vae-tile-size"]);
    let mut a = base_args(&out);
    set(&mut a, "--vae-tiling", "off");
    set(&mut a, "--vae-tile-size", "64");
    fails(
        &a,
        &out,
        &["--vae-tile-size has no effect with --vae-tiling off"],
    );
    let mut a = base_args(&out);
    set(&mut a, "--vae-tiling", "sometimes");
    fails(&a, &out, &["--vae-tiling", "sometimes"]);
}

#[test]
fn unwritable_output() {
    let tmp = tempfile::tempdir().unwrap();
    // folder does not exist
    let out = tmp.path().join("no/such/dir/o.png");
    fails(&base_args(&out), &out, &["does not exist"]);
    // parent is a regular file
    let file = tmp.path().join("plain");
    fs::write(&file, b"x").unwrap();
    let out = file.join("o.png");
    fails(&base_args(&out), &out, &["does not exist"]);
    // not a PNG name
    let out = tmp.path().join("o.jpg");
    fails(&base_args(&out), &out, &[".png"]);
    // a directory
    let out = tmp.path().join("d.png");
    fs::create_dir(&out).unwrap();
    let o = run(bin().args(base_args(&out)));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a directory"));
}

#[test]
fn missing_component_and_missing_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let m = tiny_copy(tmp.path());
    fs::remove_dir_all(m.join("vae")).unwrap();
    let mut a = base_args(&out);
    set(&mut a, "--model", m.to_str().unwrap());
    fails(&a, &out, &["vae/", "incomplete checkpoint"]);

    let m2 = tmp.path().join("model2");
    copy_dir(&fixtures().join("tiny"), &m2);
    fs::remove_file(m2.join("model_index.json")).unwrap();
    set(&mut a, "--model", m2.to_str().unwrap());
    fails(&a, &out, &["model_index.json", "missing"]);

    let m3 = tmp.path().join("model3");
    copy_dir(&fixtures().join("tiny"), &m3);
    fs::remove_file(m3.join("tokenizer/tokenizer.json")).unwrap();
    set(&mut a, "--model", m3.to_str().unwrap());
    fails(&a, &out, &["tokenizer", "vocab.json"]);

    set(&mut a, "--model", tmp.path().join("nope").to_str().unwrap());
    fails(&a, &out, &["no such directory"]);
}

#[test]
fn corrupt_weights_are_found_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let m = tiny_copy(tmp.path());
    let w = m.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = fs::read(&w).unwrap();
    fs::write(&w, &bytes[..bytes.len() - 100]).unwrap();
    let mut a = base_args(&out);
    set(&mut a, "--model", m.to_str().unwrap());
    fails(
        &a,
        &out,
        &["diffusion_pytorch_model.safetensors", "truncated"],
    );
    fs::write(&w, b"garbage").unwrap();
    fails(&a, &out, &["corrupt safetensors"]);
    // a broken config
    fs::write(&w, &bytes).unwrap();
    fs::write(m.join("vae/config.json"), b"{ not json").unwrap();
    fails(&a, &out, &["vae", "config"]);
}

#[test]
fn inconsistent_components() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let m = tiny_copy(tmp.path());
    // swap in the other checkpoint's VAE (z_dim 6 instead of 4)
    fs::remove_dir_all(m.join("vae")).unwrap();
    copy_dir(&fixtures().join("tiny_slow/vae"), &m.join("vae"));
    let mut a = base_args(&out);
    set(&mut a, "--model", m.to_str().unwrap());
    fails(&a, &out, &["in_channels", "z_dim"]);
}

fn write_latents(path: &Path, key: &str, a: mlx_rs::Array) {
    let mut map = std::collections::BTreeMap::new();
    map.insert(key.to_string(), a);
    mlx_weights::save_file(path, &map).unwrap();
}

#[test]
fn bad_init_latents() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let mut a = base_args(&out);
    let lat = tmp.path().join("l.safetensors");
    set(&mut a, "--init-latents", lat.to_str().unwrap());
    fails(&a, &out, &["init latents", "no such file"]);

    // wrong shape: the 48×48 case needs (1, 1, 4, 6, 6)
    write_latents(
        &lat,
        "latents",
        mlx_rs::Array::zeros::<f32>(&[1, 1, 4, 6, 8]).unwrap(),
    );
    fails(&a, &out, &["[1, 1, 4, 6, 8]", "[1, 1, 4, 6, 6]"]);
    // packed layout is rejected too
    write_latents(
        &lat,
        "latents",
        mlx_rs::Array::zeros::<f32>(&[1, 9, 16]).unwrap(),
    );
    fails(&a, &out, &["shape"]);
    // wrong dtype
    let z16 = mlx_rs::Array::zeros::<f32>(&[1, 1, 4, 6, 6])
        .unwrap()
        .as_dtype(mlx_rs::Dtype::Float16)
        .unwrap();
    write_latents(&lat, "latents", z16);
    fails(&a, &out, &["float32", "Float16"]);
    // missing tensor
    write_latents(
        &lat,
        "noise",
        mlx_rs::Array::zeros::<f32>(&[1, 1, 4, 6, 6]).unwrap(),
    );
    fails(&a, &out, &["no tensor named `latents`", "noise"]);
    // not a safetensors file
    fs::write(&lat, b"hello").unwrap();
    fails(&a, &out, &["init latents"]);
    // --seed and --init-latents together
    let mut b = base_args(&out);
    b.push("--seed".into());
    b.push("1".into());
    fails(&b, &out, &["--seed"]);
    // with a model that is not there, nothing runs either
    remove(&mut b, "--seed");
}

#[test]
fn hub_id_not_in_cache_says_how_to_download() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let mut a = base_args(&out);
    set(&mut a, "--model", "Qwen/Qwen-Image");
    let o = run(bin()
        .args(&a)
        .env("HF_HUB_CACHE", tmp.path().join("cache"))
        .env_remove("HF_HOME"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("qwen-image download Qwen/Qwen-Image"), "{err}");
    assert!(!out.exists());
}

#[test]
fn hub_id_resolves_to_the_cached_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hf/hub");
    let repo = cache.join("models--Qwen--Qwen-Image");
    copy_dir(&fixtures().join("tiny"), &repo.join("snapshots/0123abcd"));
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let out = tmp.path().join("o.png");
    let mut a = base_args(&out);
    set(&mut a, "--model", "Qwen/Qwen-Image");
    let o = run(bin()
        .args(&a)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", tmp.path().join("hf")));
    assert!(o.status.success(), "{}", text(&o));
    let got = image::open(&out).unwrap().to_rgb8();
    let (_, _, want) = reference_image(CASE);
    assert!(psnr(got.as_raw(), &want) >= 40.0);
}

#[test]
fn seeds_and_several_images() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("img.png");
    let mut a = base_args(&out);
    remove(&mut a, "--init-latents");
    set(&mut a, "--seed", "7");
    set(&mut a, "--num-images", "2");
    set(&mut a, "--steps", "2");
    let o = run(bin().args(&a));
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("seed:     7"), "{stdout}");
    assert!(stdout.contains("peak memory"), "{stdout}");
    assert!(!out.exists());
    let i0 = image::open(tmp.path().join("img-0.png")).unwrap().to_rgb8();
    let i1 = image::open(tmp.path().join("img-1.png")).unwrap().to_rgb8();
    assert_ne!(i0.as_raw(), i1.as_raw());

    // image 1 of seed 7 is image 0 of seed 8; runs are deterministic
    let out2 = tmp.path().join("single.png");
    let mut b = a.clone();
    set(&mut b, "--seed", "8");
    set(&mut b, "--num-images", "1");
    set(&mut b, "--output", out2.to_str().unwrap());
    let o = run(bin().args(&b));
    assert!(o.status.success(), "{}", text(&o));
    let s = image::open(&out2).unwrap().to_rgb8();
    assert_eq!(s.as_raw(), i1.as_raw());
}

#[test]
fn help_lists_every_flag() {
    let o = run(bin().args(["generate", "--help"]));
    assert!(o.status.success());
    let h = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--model",
        "--prompt",
        "--negative-prompt",
        "--true-cfg-scale",
        "--steps",
        "--width",
        "--height",
        "--seed",
        "--init-latents",
        "--dtype",
        "--quantize",
        "--num-images",
        "--output",
        "--max-sequence-length",
        "--vae-tiling",
        "--vae-tile-size",
    ] {
        assert!(h.contains(flag), "help lacks {flag}:\n{h}");
    }
}

#[test]
fn huge_sizes_steps_and_image_counts_fail_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    for (flag, value, needles) in [
        ("--width", "8208", ["--width 8208", "maximum 8192"]),
        (
            "--height",
            "4294967296",
            ["--height 4294967296", "maximum 8192"],
        ),
        (
            "--steps",
            "4000000000",
            ["--steps 4000000000", "maximum 1000"],
        ),
        ("--steps", "1001", ["--steps 1001", "maximum 1000"]),
        ("--num-images", "65", ["--num-images 65", "maximum 64"]),
        (
            "--num-images",
            "18446744073709551615",
            ["--num-images 18446744073709551615", "maximum 64"],
        ),
    ] {
        let mut a = base_args(&out);
        // Without --init-latents: its shape check must not be what rejects the request.
        remove(&mut a, "--init-latents");
        set(&mut a, "--seed", "1");
        set(&mut a, flag, value);
        fails(&a, &out, &needles);
        // Rejected before the checkpoint is even looked for.
        set(&mut a, "--model", tmp.path().join("nope").to_str().unwrap());
        fails(&a, &out, &needles);
    }
    // The limits themselves are accepted by the checks (the 48×48 case at 8192 would be a
    // heavy run, so only the library check is exercised for the edge values).
    let pipe = qwen_image::QwenImagePipeline::load(
        &fixtures().join("tiny"),
        qwen_image::PipelineOptions::default(),
    )
    .unwrap();
    let mut req = qwen_image::GenerateRequest::new("a");
    req.width = qwen_image::MAX_IMAGE_SIDE;
    req.height = qwen_image::MAX_IMAGE_SIDE;
    req.steps = qwen_image::MAX_STEPS;
    req.num_images = qwen_image::MAX_NUM_IMAGES;
    pipe.validate(&req).unwrap();
    for f in [
        |r: &mut qwen_image::GenerateRequest| r.width += 16,
        |r: &mut qwen_image::GenerateRequest| r.height += 16,
        |r: &mut qwen_image::GenerateRequest| r.steps += 1,
        |r: &mut qwen_image::GenerateRequest| r.num_images += 1,
    ] {
        let mut r = req.clone();
        f(&mut r);
        let e = pipe.validate(&r).unwrap_err().to_string();
        assert!(e.contains("above the maximum"), "{e}");
    }
}

/// NaN / infinite denoised latents (an overflow: here a transformer whose output projection
/// is scaled far up, so the velocity overflows f32 — or, with a milder scale, only f16) stop
/// the run after denoising, before the VAE, with advice on the dtype; no image is written.
#[test]
fn non_finite_latents_fail_before_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    for (factor, dtype, advice) in [
        (1e37f32, "f32", "check the weights and the initial latents"),
        (1e4f32, "f16", "use bf16 (`--dtype bf16`)"),
    ] {
        let m = tiny_copy(tmp.path());
        let file = m.join("transformer/diffusion_pytorch_model.safetensors");
        let mut t = mlx_weights::load_file(&file).unwrap().into_map();
        let w = t.remove("proj_out.weight").unwrap();
        t.insert(
            "proj_out.weight".into(),
            w.multiply(mlx_rs::Array::from_f32(factor)).unwrap(),
        );
        mlx_weights::save_file(&file, &t).unwrap();
        let mut a = base_args(&out);
        set(&mut a, "--model", m.to_str().unwrap());
        set(&mut a, "--dtype", dtype);
        let o = run(bin().args(&a));
        let all = text(&o);
        assert!(!o.status.success(), "expected failure:\n{all}");
        let err = String::from_utf8_lossy(&o.stderr);
        for n in ["not finite", "image(s) [0]", advice, "loading transformer"] {
            assert!(err.contains(n), "stderr lacks {n:?}:\n{all}");
        }
        assert!(!err.contains("loading VAE"), "decoded anyway:\n{all}");
        assert!(!out.exists(), "output written:\n{all}");
        std::fs::remove_dir_all(&m).unwrap();
    }
}

/// NaN or infinity in --init-latents is found before any component is loaded.
#[test]
fn non_finite_init_latents_fail_first() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let lat = tmp.path().join("l.safetensors");
    let mut a = base_args(&out);
    set(&mut a, "--init-latents", lat.to_str().unwrap());
    for bad in [f32::NAN, f32::INFINITY] {
        let mut v = vec![0.5f32; 4 * 6 * 6];
        v[17] = bad;
        write_latents(
            &lat,
            "latents",
            mlx_rs::Array::from_slice(&v, &[1, 1, 4, 6, 6]),
        );
        let err = fails(&a, &out, &["--init-latents", "NaN or infinity"]);
        assert!(!err.contains("loading text encoder"), "{err}");
    }
}

#[test]
fn f16_prints_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let mut a = base_args(&out);
    set(&mut a, "--dtype", "f16");
    // Fails in validation, after the dtype is chosen and before anything heavy.
    set(&mut a, "--steps", "0");
    let err = fails(&a, &out, &["steps must be at least 1"]);
    assert!(
        err.contains("warning: --dtype f16") && err.contains("bf16"),
        "{err}"
    );
    let mut a = base_args(&out);
    set(&mut a, "--steps", "0");
    let err = fails(&a, &out, &["steps must be at least 1"]);
    assert!(!err.contains("warning: --dtype f16"), "{err}");
}

/// A safetensors file holding one f32 scalar, with `metadata` as its `__metadata__`.
fn write_safetensors_with_metadata(path: &Path, metadata: &str) {
    let header = format!(
        r#"{{"__metadata__":{metadata},"w":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&1.0f32.to_le_bytes());
    fs::write(path, bytes).unwrap();
}

#[test]
fn mflux_converted_checkpoints_are_recognised() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let advice = [
        "mflux/MLX-converted checkpoint",
        "diffusers layout (e.g. Qwen/Qwen-Image)",
        "--quantize 4|8",
    ];
    // mflux's layout: numbered shards per component, no model_index.json, no configs.
    let m = tmp.path().join("mflux");
    for c in ["transformer", "text_encoder", "vae"] {
        fs::create_dir_all(m.join(c)).unwrap();
        write_safetensors_with_metadata(&m.join(c).join("0.safetensors"), "{}");
    }
    fs::create_dir_all(m.join("tokenizer")).unwrap();
    let mut a = base_args(&out);
    set(&mut a, "--model", m.to_str().unwrap());
    let err = fails(&a, &out, &advice);
    assert!(err.contains("text_encoder/0.safetensors"), "{err}");

    // Only the metadata gives it away.
    let m2 = tmp.path().join("mflux2");
    fs::create_dir_all(m2.join("transformer")).unwrap();
    write_safetensors_with_metadata(
        &m2.join("transformer/model.safetensors"),
        r#"{"quantization_level":"4","mflux_version":"0.9"}"#,
    );
    set(&mut a, "--model", m2.to_str().unwrap());
    let err = fails(&a, &out, &advice);
    assert!(err.contains("`quantization_level` metadata"), "{err}");

    // Other safetensors without model_index.json: the generic message.
    write_safetensors_with_metadata(
        &m2.join("transformer/model.safetensors"),
        r#"{"format":"pt"}"#,
    );
    let err = fails(&a, &out, &["not a diffusers checkpoint folder"]);
    assert!(!err.contains("mflux/MLX"), "{err}");
}
