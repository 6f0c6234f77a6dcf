//! The qwen-image pipeline: text → prompt embeddings → denoising with the flow-matching
//! scheduler → VAE decode → image, assembled from the stage crates of qwen-image-rs
//! (`qwen-text-encoder`, `qwen-dit`, `flow-scheduler`, `qwen-vae`, `mlx-fastops`).
//!
//! This crate is the only one that knows all stages; the `qwen-image` binary is a thin
//! command line over it.

pub mod info;
