//! qwen-dit
