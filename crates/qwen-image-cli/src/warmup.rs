//! `qwen-image warmup`: one small generation (256², 2 steps, true CFG) with the given loading
//! flags and nothing written, so that MLX compiles and caches every run-time kernel the real
//! runs will use before they start.

use std::time::Instant;

use qwen_image::QwenImagePipeline;

use crate::args::WarmupArgs;
use crate::{eout, load_error, out};

/// Runs `warmup`.
pub fn warmup(args: &WarmupArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    let runtime = qwen_image::info::runtime_info()?;
    let load = args.load.settings();
    let dir = crate::progress::resolve(&args.model, &load).map_err(load_error)?;
    let mut pipe =
        QwenImagePipeline::load(&dir, load.options(runtime.default_is_gpu)).map_err(load_error)?;
    let mut req = qwen_image::kernel_cache::warmup_request();
    req.loras = load.loras().map_err(load_error)?;
    eout!(
        "qwen-image warmup: {} on {} …",
        dir.display(),
        runtime.backend
    );
    pipe.generate(&req).map_err(load_error)?;
    let cache = qwen_image::kernel_cache::describe_cache(runtime.kernel_cache.as_deref());
    out!(
        "warm: kernels compiled and cached in {cache}, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
