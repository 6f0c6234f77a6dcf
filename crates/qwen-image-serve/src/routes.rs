//! The HTTP routes: the images API, jobs (status, events, images, cancellation), health,
//! models and the web page; the API-key check.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::Stream;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::api::{self, ApiError, ResponseFormat, ServerDefaults};
use crate::jobs::{Jobs, Status, unix_now};
use crate::worker::WorkItem;

/// What every handler shares.
pub struct AppState {
    /// The jobs.
    pub jobs: Arc<Jobs>,
    /// The worker's queue (bounded: a full queue answers 429).
    pub queue: SyncSender<WorkItem>,
    /// The model, its configs and the server-wide request settings.
    pub defaults: ServerDefaults,
    /// The API key, when one is required.
    pub api_key: Option<String>,
    /// The queue's capacity.
    pub max_queue: usize,
}

type Shared = Arc<AppState>;

/// The router over `state`, with bodies limited to `max_body_bytes`.
pub fn router(state: Shared, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/images/generations", axum::routing::post(generations))
        .route("/v1/jobs", get(list_jobs).post(submit_job))
        .route("/v1/jobs/{id}", get(job).delete(cancel_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/jobs/{id}/images/{index}", get(job_image))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            refuse_declared_oversize(max_body_bytes, req, next)
        }))
        .with_state(state)
}

/// 413 for a request whose declared `Content-Length` is over the limit, before any of its
/// body is read: a client that sent `Expect: 100-continue` is answered without sending
/// the body, and none is read just to be refused. (A body without a declared length is
/// still cut at the limit by `DefaultBodyLimit`.)
async fn refuse_declared_oversize(max: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body of {n} bytes is over this server's limit of {max} bytes"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// `Authorization: Bearer <key>` on every `/v1` route when a key is set, compared in
/// constant time.
async fn require_key(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key (Authorization: Bearer <key>)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn health(State(st): State<Shared>) -> Json<serde_json::Value> {
    let (waiting, running) = st.jobs.load();
    Json(serde_json::json!({
        "status": "ok",
        "model": st.defaults.model,
        "queue": { "waiting": waiting, "running": running, "max": st.max_queue },
        "auth_required": st.api_key.is_some(),
        "mlx_active_memory_bytes": mlx_rs::memory::active_memory().ok(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn models(State(st): State<Shared>) -> Json<serde_json::Value> {
    let c = &st.defaults.configs;
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": st.defaults.model,
            "object": "model",
            "owned_by": "qwen-image-rs",
            "size_multiple": c.size_multiple(),
            "max_side": qwen_image::MAX_IMAGE_SIDE,
            "max_steps": qwen_image::MAX_STEPS,
            "max_n": qwen_image::MAX_NUM_IMAGES,
            "img2img": true,
            "inpainting": true,
            "loras": st.defaults.loras.iter().map(|(name, scale)| serde_json::json!({"name": name, "scale": scale})).collect::<Vec<_>>(),
        }],
    }))
}

/// Parses, checks and queues a request: its id, format and a receiver of its changes.
fn submit(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(String, ResponseFormat, watch::Receiver<u64>), ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let request = api::parse(&body)?;
    let checked = request.check(&st.defaults, qwen_image::latents::random_seed())?;
    let (id, rx, cancel) = st.jobs.insert(checked.params);
    let item = WorkItem {
        id: id.clone(),
        request: checked.request,
        cancel,
    };
    match st.queue.try_send(item) {
        Ok(()) => Ok((id, checked.format, rx)),
        Err(TrySendError::Full(_)) => {
            st.jobs.remove(&id);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the queue is full ({} jobs waiting); retry later",
                    st.max_queue
                ),
            );
            e.retry_after = Some(st.jobs.retry_after().as_secs());
            Err(e)
        }
        Err(TrySendError::Disconnected(_)) => {
            st.jobs.remove(&id);
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ))
        }
    }
}

/// Cancels its job when dropped before [`CancelOnDrop::disarm`]: a request whose client went
/// away stops its job.
struct CancelOnDrop {
    jobs: Arc<Jobs>,
    id: Option<String>,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.jobs.cancel(&id);
        }
    }
}

/// Waits until the job is finished (or forgotten).
async fn wait_done(jobs: &Jobs, id: &str, mut rx: watch::Receiver<u64>) {
    loop {
        match jobs.status(id) {
            Some(s) if !s.is_terminal() => {}
            _ => return,
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The public URL of this server, from the request's `Host`.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// OpenAI's images response of a finished job.
fn images_response(
    jobs: &Jobs,
    id: &str,
    format: ResponseFormat,
    headers: &HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (status, images, error) = jobs
        .outcome(id)
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the job was lost"))?;
    match status {
        Status::Succeeded => {}
        Status::Cancelled => {
            return Err(ApiError::new(StatusCode::CONFLICT, "the job was cancelled"));
        }
        _ => {
            return Err(error.unwrap_or_else(|| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the job failed")
            }));
        }
    }
    let base = base_url(headers);
    let data: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(i, im)| match format {
            ResponseFormat::B64Json => serde_json::json!({
                "b64_json": STANDARD.encode(&im.png), "seed": im.seed,
                "width": im.width, "height": im.height,
            }),
            ResponseFormat::Url => serde_json::json!({
                "url": format!("{base}/v1/jobs/{id}/images/{i}"), "seed": im.seed,
                "width": im.width, "height": im.height,
            }),
        })
        .collect();
    let view = jobs.view(id);
    Ok(Json(serde_json::json!({
        "created": unix_now(),
        "id": id,
        "data": data,
        "seconds": view.and_then(|v| v.seconds),
    })))
}

/// `POST /v1/images/generations`: waits for the images. A client that disconnects cancels
/// its job.
async fn generations(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (id, format, rx) = submit(&st, body)?;
    let guard = CancelOnDrop {
        jobs: st.jobs.clone(),
        id: Some(id.clone()),
    };
    wait_done(&st.jobs, &id, rx).await;
    guard.disarm();
    images_response(&st.jobs, &id, format, &headers)
}

/// `POST /v1/jobs`: queues and answers at once (202) with the job; follow it with
/// `GET /v1/jobs/{id}` or `/events`.
async fn submit_job(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let (id, _, _) = submit(&st, body)?;
    let view = st.jobs.view(&id);
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!(view))))
}

async fn list_jobs(State(st): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "object": "list", "data": st.jobs.list() }))
}

fn no_job(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no job {id:?} (finished jobs are kept for a while only)"),
    )
}

async fn job(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let view = st.jobs.view(&id).ok_or_else(|| no_job(&id))?;
    Ok(Json(serde_json::json!(view)))
}

/// `DELETE /v1/jobs/{id}`: a queued job is cancelled at once, a running one at its next
/// step; the answer is the job as it is then.
async fn cancel_job(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    st.jobs.cancel(&id).ok_or_else(|| no_job(&id))?;
    let view = st.jobs.view(&id).ok_or_else(|| no_job(&id))?;
    Ok(Json(serde_json::json!(view)))
}

async fn job_image(
    State(st): State<Shared>,
    Path((id, index)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (status, images, _) = st.jobs.outcome(&id).ok_or_else(|| no_job(&id))?;
    if status != Status::Succeeded {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {id} has no images (it is {status:?})"),
        ));
    }
    let image = index
        .trim_end_matches(".png")
        .parse::<usize>()
        .ok()
        .and_then(|i| images.get(i))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("job {id} has no image {index}"),
            )
        })?;
    Ok(([(header::CONTENT_TYPE, "image/png")], image.png.clone()).into_response())
}

/// `GET /v1/jobs/{id}/events`: the job as server-sent events — `progress` on every change,
/// then one of `succeeded`, `failed`, `cancelled`, and the end of the stream.
async fn job_events(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let rx = st.jobs.subscribe(&id).ok_or_else(|| no_job(&id))?;
    let jobs = st.jobs.clone();
    let stream = futures_util::stream::unfold(
        (jobs, id, rx, false, false),
        |(jobs, id, mut rx, first_sent, ended)| async move {
            if ended {
                return None;
            }
            if first_sent && rx.changed().await.is_err() {
                return None;
            }
            rx.mark_unchanged();
            let view = jobs.view(&id)?;
            let name = match view.status {
                Status::Queued | Status::Running => "progress",
                Status::Succeeded => "succeeded",
                Status::Failed => "failed",
                Status::Cancelled => "cancelled",
            };
            let terminal = view.status.is_terminal();
            let data = serde_json::to_string(&view).unwrap_or_default();
            let event = SseEvent::default().event(name).data(data);
            Some((Ok(event), (jobs, id, rx, true, terminal)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(5))))
}
