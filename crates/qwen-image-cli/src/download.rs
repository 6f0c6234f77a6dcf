//! Fetching a hub id missing from the cache with the Hugging Face CLI (`hf`, else
//! `huggingface-cli`), when one is installed.

use std::process::{Command, Stdio};

use qwen_image::hub::HubEnv;

use crate::eout;

/// The command that downloads `repo_id` into the cache.
pub fn download_command(repo_id: &str) -> String {
    format!("hf download {repo_id}")
}

/// A CLI that downloads from the hub, if one is on `PATH`.
fn downloader() -> Option<&'static str> {
    ["hf", "huggingface-cli"].into_iter().find(|cmd| {
        Command::new(cmd)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Downloads `repo_id` into the cache with the installed CLI (its own progress shows).
/// The error says which command to run when none is installed or it fails.
pub fn download(repo_id: &str, env: &HubEnv) -> anyhow::Result<()> {
    let how = format!(
        "download it with `{}` (install the CLI with `pip install -U huggingface_hub`), or pass \
         --model a directory in the diffusers layout",
        download_command(repo_id)
    );
    let Some(cli) = downloader() else {
        anyhow::bail!("no `hf` / `huggingface-cli` program is installed to download it: {how}");
    };
    eout!(
        "{repo_id} is not in the Hugging Face cache: downloading it with `{cli} download {repo_id}`"
    );
    let mut cmd = Command::new(cli);
    cmd.arg("download").arg(repo_id);
    if let Some(c) = &env.hf_hub_cache {
        cmd.arg("--cache-dir").arg(c);
    }
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("could not run `{cli} download {repo_id}`: {e}"))?;
    anyhow::ensure!(
        status.success(),
        "`{cli} download {repo_id}` failed ({status}); check the network and run it by hand"
    );
    Ok(())
}
