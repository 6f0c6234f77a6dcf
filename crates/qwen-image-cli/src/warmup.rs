//! `qwen-image warmup`: one small generation (256², 2 steps, true CFG) with the given loading
//! flags and nothing written, so that MLX compiles and caches every run-time kernel the real
//! runs will use before they start.

use std::time::Instant;

use qwen_image::{GenerateRequest, QwenImagePipeline};

use crate::args::WarmupArgs;
use crate::{eout, load_error, out};

/// Runs `warmup`.
pub fn warmup(args: &WarmupArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    let runtime = qwen_image::info::runtime_info()?;
    let env = qwen_image::hub::HubEnv::from_process();
    let dir = crate::download::resolve(&args.model, &args.load.revision, args.load.offline, &env)
        .map_err(load_error)?;
    let mut pipe = QwenImagePipeline::load(&dir, args.load.options(runtime.default_is_gpu))
        .map_err(load_error)?;
    let mut req = GenerateRequest::new("warm-up");
    req.negative_prompt = Some(" ".into());
    (req.width, req.height, req.steps) = (256, 256, 2);
    req.loras = args.load.loras()?;
    eout!(
        "qwen-image warmup: {} on {} …",
        dir.display(),
        runtime.backend
    );
    pipe.generate(&req).map_err(load_error)?;
    let cache = match &runtime.kernel_cache {
        Some(d) => format!(
            "{} ({} files)",
            d.display(),
            qwen_image::kernel_cache::cached_kernels(d)
        ),
        None => "MLX's default place".into(),
    };
    out!(
        "warm: kernels compiled and cached in {cache}, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
