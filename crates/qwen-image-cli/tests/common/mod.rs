//! Helpers of the program's integration tests: the library's fixture helpers, and running
//! the `qwen-image` binary.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../qwen-image/tests/common/mod.rs"]
mod fixtures;
pub use fixtures::*;

/// The `qwen-image` binary with a clean Hugging Face environment (offline, empty cache).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwen-image"));
    c.env("HF_HUB_OFFLINE", "1");
    c
}

/// What every reference run passes: the command, its model, prompts, guidance and steps,
/// f32, the case's initial latents and the output file.
pub struct ReferenceRun<'a> {
    pub command: &'a str,
    pub model: &'a Path,
    pub prompt: &'a str,
    pub negative_prompt: Option<&'a str>,
    pub true_cfg_scale: f32,
    pub steps: usize,
    pub init_latents: &'a Path,
    pub output: &'a Path,
}

impl ReferenceRun<'_> {
    /// The arguments; callers add their mode's own flags.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            self.command.to_string(),
            "--model".into(),
            self.model.display().to_string(),
            "--prompt".into(),
            self.prompt.to_string(),
            "--true-cfg-scale".into(),
            self.true_cfg_scale.to_string(),
            "--steps".into(),
            self.steps.to_string(),
            "--dtype".into(),
            "f32".into(),
            "--init-latents".into(),
            self.init_latents.display().to_string(),
            "--output".into(),
            self.output.display().to_string(),
        ];
        if let Some(n) = self.negative_prompt {
            a.extend(["--negative-prompt".into(), n.to_string()]);
        }
        a
    }
}

/// `generate` arguments reproducing a reference case (f32, its initial latents).
pub fn case_args(name: &str, output: &Path) -> Vec<String> {
    let c = case(name);
    let mut args = ReferenceRun {
        command: "generate",
        model: &fixtures().join(&c.model),
        prompt: &c.prompt,
        negative_prompt: c.negative_prompt.as_deref(),
        true_cfg_scale: c.true_cfg_scale,
        steps: c.steps,
        init_latents: &fixtures().join(format!("{name}.safetensors")),
        output,
    }
    .args();
    args.extend([
        "--width".into(),
        c.width.to_string(),
        "--height".into(),
        c.height.to_string(),
        "--max-sequence-length".into(),
        c.max_sequence_length.to_string(),
    ]);
    args
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run qwen-image")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The reference case the bad-input tests start from.
pub const CASE: &str = "tiny_square_cfg";

pub fn base_args(out: &Path) -> Vec<String> {
    case_args(CASE, out)
}

pub fn set(args: &mut Vec<String>, flag: &str, value: &str) {
    if let Some(i) = args.iter().position(|a| a == flag) {
        args[i + 1] = value.to_string();
    } else {
        args.push(flag.to_string());
        args.push(value.to_string());
    }
}

pub fn remove(args: &mut Vec<String>, flag: &str) {
    if let Some(i) = args.iter().position(|a| a == flag) {
        args.drain(i..i + 2);
    }
}

/// Runs and expects failure whose stderr contains every `needles`; checks no output exists
/// and nothing heavy ran (no phase started) — `heavy_ok` allows phases.
pub fn fails(args: &[String], out: &Path, needles: &[&str]) -> String {
    let o = run(bin().args(args));
    let all = text(&o);
    assert!(!o.status.success(), "expected failure:\n{all}");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{all}");
    }
    assert!(
        !err.contains("loading text encoder"),
        "heavy work started before the error:\n{all}"
    );
    assert!(!out.exists(), "output written on failure:\n{all}");
    if let Some(dir) = out.parent()
        && let Ok(rd) = fs::read_dir(dir)
    {
        let left: Vec<_> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp") || n.contains("probe"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
    err
}

pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap().flatten() {
        let p = e.path();
        let q = dst.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &q);
        } else {
            fs::copy(&p, &q).unwrap();
        }
    }
}

pub fn tiny_copy(tmp: &Path) -> PathBuf {
    let m = tmp.join("model");
    copy_dir(&fixtures().join("tiny"), &m);
    m
}
