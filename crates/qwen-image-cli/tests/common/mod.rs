//! Helpers of the program's integration tests: the library's fixture helpers, and running
//! the `qwen-image` binary.
#![allow(dead_code)]

use std::path::Path;
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

/// `generate` arguments reproducing a reference case (f32, its initial latents).
pub fn case_args(name: &str, output: &Path) -> Vec<String> {
    let c = case(name);
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        fixtures().join(&c.model).display().to_string(),
        "--prompt".into(),
        c.prompt.clone(),
        "--true-cfg-scale".into(),
        c.true_cfg_scale.to_string(),
        "--steps".into(),
        c.steps.to_string(),
        "--width".into(),
        c.width.to_string(),
        "--height".into(),
        c.height.to_string(),
        "--dtype".into(),
        "f32".into(),
        "--max-sequence-length".into(),
        c.max_sequence_length.to_string(),
        "--init-latents".into(),
        fixtures()
            .join(format!("{name}.safetensors"))
            .display()
            .to_string(),
        "--output".into(),
        output.display().to_string(),
    ];
    if let Some(n) = &c.negative_prompt {
        args.push("--negative-prompt".into());
        args.push(n.clone());
    }
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
