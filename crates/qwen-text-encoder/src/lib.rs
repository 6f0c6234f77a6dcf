//! qwen-text-encoder
