//! `qwen-image`: generate images with Qwen-Image on MLX.

use clap::{Parser, Subcommand};

/// Qwen-Image text-to-image inference on MLX (Metal, CUDA or CPU).
#[derive(Debug, Parser)]
#[command(name = "qwen-image", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the MLX version, the backend in use, the default device and its memory.
    Info,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info => {
            print!("{}", qwen_image::info::runtime_info()?);
        }
    }
    Ok(())
}
