//! What users of other engines expect: generation parameters in the PNG (and `--from-png` to
//! repeat a run), `--prompt-file`, the model card's sizes (`--aspect`), and a JSON summary
//! (`--json`).

mod common;

use std::path::Path;

use common::*;

/// A seeded run of the reference case (no --init-latents), `extra` flags appended.
fn seeded(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = base_args(out);
    remove(&mut a, "--init-latents");
    set(&mut a, "--seed", "42");
    set(&mut a, "--steps", "2");
    for pair in extra.chunks(2) {
        if pair.len() == 2 {
            set(&mut a, pair[0], pair[1]);
        } else {
            a.push(pair[0].to_string());
        }
    }
    run(bin().args(&a))
}

/// The text chunks of a PNG (keyword → text), read with the `png` crate.
fn chunks(path: &Path) -> std::collections::BTreeMap<String, String> {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let reader = png::Decoder::new(file).read_info().unwrap();
    let info = reader.info();
    let mut out: std::collections::BTreeMap<String, String> = info
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    for c in &info.uncompressed_latin1_text {
        out.insert(c.keyword.clone(), c.text.clone());
    }
    out
}

#[test]
fn parameters_are_written_and_a_run_repeats_from_its_png() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first.png");
    let o = seeded(&first, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let c = chunks(&first);
    let record: serde_json::Value = serde_json::from_str(&c["qwen-image"]).unwrap();
    let case = case(CASE);
    assert_eq!(record["prompt"], case.prompt);
    assert_eq!(record["negative_prompt"], case.negative_prompt.unwrap());
    assert_eq!(record["seed"], 42);
    assert_eq!(record["steps"], 2);
    assert_eq!(
        (record["width"].clone(), record["height"].clone()),
        (48.into(), 48.into())
    );
    assert_eq!(record["dtype"], "f32");
    assert!(
        record["engine"]
            .as_str()
            .unwrap()
            .starts_with("qwen-image-rs ")
    );
    let params = &c["parameters"];
    for needle in [
        "Negative prompt: ",
        "Steps: 2",
        "Seed: 42",
        "Size: 48x48",
        "CFG scale: 4",
    ] {
        assert!(params.contains(needle), "{needle:?} not in {params}");
    }
    assert!(params.starts_with(&case.prompt));

    // --from-png repeats it exactly (model, prompt, seed, steps, size, dtype from the PNG).
    let again = tmp.path().join("again.png");
    let o = run(bin().args([
        "generate",
        "--from-png",
        first.to_str().unwrap(),
        "--output",
        again.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let (a, b) = (image::open(&first).unwrap(), image::open(&again).unwrap());
    assert_eq!(a.to_rgb8().into_raw(), b.to_rgb8().into_raw());
    // Flags on the command line win.
    let third = tmp.path().join("third.png");
    let o = run(bin().args([
        "generate",
        "--from-png",
        first.to_str().unwrap(),
        "--steps",
        "3",
        "--output",
        third.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let r3: serde_json::Value = serde_json::from_str(&chunks(&third)["qwen-image"]).unwrap();
    assert_eq!(
        (r3["steps"].clone(), r3["seed"].clone()),
        (3.into(), 42.into())
    );
    // --no-metadata writes none; --from-png then says why it cannot use the file.
    let bare = tmp.path().join("bare.png");
    assert!(seeded(&bare, &["--no-metadata"]).status.success());
    assert!(chunks(&bare).is_empty());
    let o = run(bin().args(["generate", "--from-png", bare.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no `qwen-image` text chunk"));
}

#[test]
fn prompt_files_name_images_by_line() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "# two prompts\n\na red fox\n\n  # skipped\na blue bird\n",
    )
    .unwrap();
    let out = tmp.path().join("img.png");
    let mut a = base_args(&out);
    remove(&mut a, "--prompt");
    remove(&mut a, "--init-latents");
    set(&mut a, "--seed", "5");
    set(&mut a, "--steps", "2");
    set(&mut a, "--num-images", "2");
    set(&mut a, "--prompt-file", prompts.to_str().unwrap());
    let o = run(bin().args(&a));
    assert!(o.status.success(), "{}", text(&o));
    for (line, prompt) in [(3, "a red fox"), (6, "a blue bird")] {
        for i in 0..2 {
            let p = tmp.path().join(format!("img-{line}-{i}.png"));
            let r: serde_json::Value = serde_json::from_str(&chunks(&p)["qwen-image"]).unwrap();
            assert_eq!(r["prompt"], prompt);
            assert_eq!(r["seed"], 5 + i);
        }
    }
    // An empty file is an error naming it.
    std::fs::write(&prompts, "# nothing\n\n").unwrap();
    let o = run(bin().args(&a));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("prompts.txt"));
}

#[test]
fn aspect_presets_and_json_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.png");
    // Conflicts and unknown ratios are refused by name.
    let o = seeded(&out, &["--aspect", "16:9", "--width", "48"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--aspect"));
    let o = seeded(&out, &["--aspect", "5:4"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3"));
    // 16:9 is 1664×928: the size reaches the request (a 48×48 init-latents file is refused
    // for needing the 928/8 × 1664/8 latent grid; a full run at that size takes half a minute
    // on two CPU cores).
    let mut a = base_args(&out);
    remove(&mut a, "--width");
    remove(&mut a, "--height");
    set(&mut a, "--aspect", "16:9");
    let o = run(bin().args(&a));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("[1, 1, 4, 116, 208]"), "{err}");
    // --json prints one JSON document on stdout.
    let mut a = base_args(&out);
    remove(&mut a, "--init-latents");
    set(&mut a, "--seed", "1");
    set(&mut a, "--steps", "2");
    a.push("--json".into());
    let o = run(bin().args(&a));
    assert!(o.status.success(), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(doc["files"][0], out.display().to_string());
    let run0 = &doc["runs"][0];
    assert_eq!(run0["images"][0], serde_json::json!([48, 48]));
    assert_eq!(
        (run0["seed"].clone(), run0["steps_run"].clone()),
        (1.into(), 2.into())
    );
    assert!(run0["timings"]["denoise"]["ms"].as_f64().unwrap() > 0.0);
    assert!(run0["peak_memory_bytes"].as_u64().unwrap() > 0);
}
