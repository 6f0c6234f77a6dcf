//! qwen-image pipeline
