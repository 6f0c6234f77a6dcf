//! `qwen-image serve`: the arguments → a `qwen_image_serve::ServeConfig`, the model found (or
//! downloaded), the server started and run until Ctrl-C / SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use qwen_image_serve::{ServeConfig, Server};

use crate::args::ServeArgs;
use crate::{eout, load_error, out};

/// Runs `serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::new(args.host, args.port);
    let runtime = qwen_image::info::runtime_info()?;
    let load = args.load.settings();
    let options = load.options(runtime.default_is_gpu);
    let loras = load.loras().map_err(load_error)?;
    let scheduler_overrides = load.scheduler_overrides().map_err(load_error)?;
    let model_dir = crate::progress::resolve(&args.model, &load).map_err(load_error)?;
    let mut config = ServeConfig::new(model_dir.clone(), args.model.clone());
    config.options = options;
    config.loras = loras;
    config.scheduler_overrides = scheduler_overrides;
    config.addr = addr;
    config.api_key = args.api_key.clone();
    config.max_queue = args.max_queue as usize;
    config.max_body_bytes = (args.max_body_mb as usize) << 20;
    let model = runtime.describe_model(&model_dir, config.options.dtype);
    eout!("qwen-image serve: loading {model} …");
    if let Some(n) = runtime.first_use_notice(config.options.quantize.is_some()) {
        eout!("{n}");
    }
    let server = Server::start(config).map_err(|e| match e {
        qwen_image_serve::ServeError::KeyRequired { .. } => {
            anyhow::anyhow!("--host {}: {e}", args.host)
        }
        qwen_image_serve::ServeError::Bind { .. } => anyhow::anyhow!("--host/--port: {e}"),
        e => e.into(),
    })?;
    // The one line on stdout: scripts (and the tests) read the address from it.
    out!("listening on http://{}", server.local_addr());
    eout!(
        "qwen-image serve: ready; web page at http://{}/, API at /v1 (Ctrl-C stops)",
        server.local_addr()
    );
    server
        .run(qwen_image_serve::shutdown_signal())
        .context("serving")?;
    eout!("qwen-image serve: stopped");
    Ok(())
}
