//! # qwen-image-serve
//!
//! A local HTTP server for Qwen-Image on MLX (`qwen-image serve`): the model is loaded once
//! and kept ([`qwen_image::Residency::KeepAll`]); one worker thread owns it and runs the
//! jobs one after another from a bounded queue (a full queue answers 429 with
//! `Retry-After`); a job stops at its next denoising step when cancelled (`DELETE`, or the
//! client of a waiting request disconnecting) and frees its memory.
//!
//! Routes (JSON unless said otherwise; every `/v1` route needs `Authorization: Bearer <key>`
//! when the server has an API key):
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/images/generations` | OpenAI's images API: `prompt`, `n`, `size` (`"WxH"`/`"auto"`), `response_format` (`b64_json`, `url`), plus `negative_prompt`, `steps`, `true_cfg_scale`, `seed`, `image`/`mask` (base64) and `strength`; waits for the images |
//! | `POST /v1/jobs` | the same body; answers 202 with the queued job at once |
//! | `GET /v1/jobs`, `GET /v1/jobs/{id}` | jobs with status and progress (step i of n) |
//! | `GET /v1/jobs/{id}/events` | server-sent events: `progress`…, then `succeeded`/`failed`/`cancelled` |
//! | `GET /v1/jobs/{id}/images/{i}` | image `i` as PNG (generation parameters inside) |
//! | `DELETE /v1/jobs/{id}` | cancels |
//! | `GET /v1/models`, `GET /health` | the model and its limits; queue and memory |
//! | `GET /` | a web page: prompt, size, steps, seed, live progress, the session's images |
//!
//! Requests are checked with the command line's rules (limits, then the checkpoint's); a bad
//! one is a 400 whose JSON error names the field (`param`). Nothing a client sends names a
//! file on the server: pictures travel inline as base64.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use qwen_image_serve::{ServeConfig, Server};
//! let config = ServeConfig::new("Qwen-Image".into(), "Qwen/Qwen-Image".into());
//! let server = Server::start(config)?; // loads the model
//! println!("listening on http://{}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; })?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod api;
pub mod jobs;
mod routes;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use qwen_image::{PipelineOptions, SchedulerOverrides};

pub use api::{ApiError, ImagesRequest};
pub use jobs::{JobView, Status};

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The checkpoint folder (diffusers layout).
    pub model_dir: PathBuf,
    /// The model's name for clients (`/v1/models`, the `model` field, PNG records).
    pub model_name: String,
    /// dtype and quantization (everything stays loaded whatever the residency says).
    pub options: PipelineOptions,
    /// LoRAs merged into the served transformer.
    pub loras: Vec<qwen_image::Lora>,
    /// Scheduler config keys applied to every request (e.g. the Lightning recipe).
    pub scheduler_overrides: Option<SchedulerOverrides>,
    /// Where to listen (port 0: any free port, see [`Server::local_addr`]).
    pub addr: SocketAddr,
    /// The key clients must send; required when `addr` is not a loopback address.
    pub api_key: Option<String>,
    /// Jobs that may wait for the device; one more gets 429.
    pub max_queue: usize,
    /// Largest request body in bytes (base64 pictures are a third larger than the files).
    pub max_body_bytes: usize,
    /// Finished jobs (and their images) kept for `GET /v1/jobs/{id}`.
    pub history: usize,
}

impl ServeConfig {
    /// Defaults: 127.0.0.1:8080, no key, queue 16, 32 MiB bodies, 64 finished jobs kept,
    /// f32 on the CPU (set [`Self::options`] for a GPU).
    pub fn new(model_dir: PathBuf, model_name: String) -> Self {
        Self {
            model_dir,
            model_name,
            options: PipelineOptions::default(),
            loras: Vec::new(),
            scheduler_overrides: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            max_queue: 16,
            max_body_bytes: 32 << 20,
            history: 64,
        }
    }
}

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Listening on a non-loopback address needs an API key.
    #[error(
        "{addr} is reachable from other machines: an API key is required (--api-key or \
         QWEN_IMAGE_API_KEY), or listen on 127.0.0.1"
    )]
    KeyRequired {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// A setting that cannot work.
    #[error("{0}")]
    Config(String),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The model could not be loaded.
    #[error("loading the model: {0}")]
    Load(String),
    /// Any other I/O failure of the server.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// A started server: the model is loaded and the address bound; [`Server::run`] serves.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    state: Arc<routes::AppState>,
    worker: JoinHandle<()>,
    max_body_bytes: usize,
}

impl Server {
    /// Checks the configuration, binds the address (so a port in use fails before the long
    /// load), loads the model on the worker thread and waits until it is ready.
    pub fn start(config: ServeConfig) -> Result<Self, ServeError> {
        if !config.addr.ip().is_loopback() && config.api_key.as_deref().is_none_or(str::is_empty) {
            return Err(ServeError::KeyRequired { addr: config.addr });
        }
        if config.api_key.as_deref() == Some("") {
            return Err(ServeError::Config("the API key is empty".into()));
        }
        if config.max_queue == 0 {
            return Err(ServeError::Config(
                "the queue must hold at least 1 job".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.addr))
            .map_err(|source| ServeError::Bind {
                addr: config.addr,
                source,
            })?;
        let jobs = Arc::new(jobs::Jobs::new(config.history));
        let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel(config.max_queue);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let worker = worker::spawn(
            worker::WorkerSetup {
                model_dir: config.model_dir.clone(),
                model_name: config.model_name.clone(),
                options: config.options.clone(),
                loras: config.loras.clone(),
            },
            jobs.clone(),
            queue_rx,
            ready_tx,
        )?;
        let configs = match ready_rx.recv() {
            Ok(Ok(c)) => c,
            Ok(Err(msg)) => return Err(ServeError::Load(msg)),
            Err(_) => return Err(ServeError::Load("the worker thread stopped".into())),
        };
        let state = Arc::new(routes::AppState {
            jobs,
            queue: queue_tx,
            defaults: api::ServerDefaults {
                model: config.model_name,
                configs,
                loras: config.loras.iter().map(|l| (l.name(), l.scale)).collect(),
                scheduler_overrides: config.scheduler_overrides,
            },
            api_key: config.api_key,
            max_queue: config.max_queue,
        });
        Ok(Self {
            runtime,
            listener,
            state,
            worker,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The address served (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `shutdown` completes, then cancels every unfinished job, lets the open
    /// requests finish and waits for the worker.
    pub fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            runtime,
            listener,
            state,
            worker,
            max_body_bytes,
        } = self;
        let app = routes::router(state.clone(), max_body_bytes);
        let jobs = state.jobs.clone();
        let served = runtime.block_on(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    jobs.cancel_all();
                })
                .await
        });
        // The queue's last sender goes with the state: the worker ends after its job.
        drop(state);
        runtime.shutdown_background();
        let _ = worker.join();
        served.map_err(ServeError::Io)
    }
}

/// Resolves when the process gets Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
