//! qwen-vae
