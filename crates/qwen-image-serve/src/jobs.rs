//! The jobs a server knows: queued, running and recently finished generations, their
//! progress, images and errors. Every change is announced on the job's watch channel (what
//! the waiting request handlers and the event streams listen to).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qwen_image::CancelToken;
use serde::Serialize;
use tokio::sync::watch;

use crate::api::ApiError;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for the device.
    Queued,
    /// Being generated.
    Running,
    /// Done: its images can be fetched.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Stopped by `DELETE`, by its client going away, or by the server shutting down.
    Cancelled,
}

impl Status {
    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// How far a job is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// The pipeline phase running (`encoding prompt`, `denoising`, `decoding`, …).
    pub phase: Option<String>,
    /// Image being denoised (0-based) and images in the job.
    pub image: usize,
    /// Images in the job.
    pub images: usize,
    /// Denoising steps done for the current image.
    pub step: usize,
    /// Steps per image.
    pub steps: usize,
    /// Fraction of all denoising steps done, 0..=1.
    pub fraction: f64,
}

/// One generated image.
#[derive(Debug, Clone)]
pub struct JobImage {
    /// The PNG file (with the generation parameters as text chunks).
    pub png: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The seed that reproduces it alone.
    pub seed: u64,
}

/// A job as clients see it (no image bytes).
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Its id.
    pub id: String,
    /// `"job"`.
    pub object: &'static str,
    /// Unix time of its submission.
    pub created: u64,
    /// Where it is.
    pub status: Status,
    /// How far it is.
    pub progress: Progress,
    /// The request's parameters as the server resolved them (size, seed, steps, …).
    pub params: serde_json::Value,
    /// Per image: size and seed, once succeeded.
    pub images: Vec<ImageInfo>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// Seconds from start to end, once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// An image of a [`JobView`].
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// Index in the job.
    pub index: usize,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The seed that reproduces it alone.
    pub seed: u64,
}

struct Job {
    created: u64,
    params: serde_json::Value,
    status: Status,
    progress: Progress,
    images: Arc<Vec<JobImage>>,
    error: Option<ApiError>,
    cancel: CancelToken,
    started: Option<Instant>,
    seconds: Option<f64>,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Job>,
    /// Finished jobs, oldest first (evicted beyond the history length).
    finished: VecDeque<String>,
    next_id: u64,
    /// Mean seconds of the last jobs (for Retry-After).
    mean_seconds: Option<f64>,
}

/// Every job of a server.
pub struct Jobs {
    inner: Mutex<Inner>,
    history: usize,
    salt: u64,
}

impl Jobs {
    /// A store keeping at most `history` finished jobs (their images included).
    pub fn new(history: usize) -> Self {
        // Ids are not guessable from each other (a client cannot walk other clients' jobs).
        let salt = qwen_image::latents::random_seed();
        Self {
            inner: Mutex::new(Inner::default()),
            history: history.max(1),
            salt,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a job half-updated in a way that
        // matters more than serving on: take the data as it is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a queued job; returns its id, a receiver of its changes and its cancel token.
    pub fn insert(&self, params: serde_json::Value) -> (String, watch::Receiver<u64>, CancelToken) {
        let mut inner = self.lock();
        inner.next_id += 1;
        let n = inner.next_id;
        let id = format!("job-{n}-{:08x}", mix(self.salt ^ n) as u32);
        let (tx, rx) = watch::channel(0);
        let cancel = CancelToken::new();
        inner.jobs.insert(
            id.clone(),
            Job {
                created: unix_now(),
                params,
                status: Status::Queued,
                progress: Progress::default(),
                images: Arc::default(),
                error: None,
                cancel: cancel.clone(),
                started: None,
                seconds: None,
                changed: tx,
            },
        );
        (id, rx, cancel)
    }

    /// Forgets a job that never reached the queue.
    pub fn remove(&self, id: &str) {
        self.lock().jobs.remove(id);
    }

    fn with_job(&self, id: &str, f: impl FnOnce(&mut Job)) {
        let mut inner = self.lock();
        if let Some(job) = inner.jobs.get_mut(id) {
            f(job);
            job.changed.send_modify(|v| *v += 1);
        }
    }

    /// The worker took the job.
    pub fn start(&self, id: &str) {
        self.with_job(id, |j| {
            j.status = Status::Running;
            j.started = Some(Instant::now());
        });
    }

    /// A progress report of the running job.
    pub fn progress(&self, id: &str, f: impl FnOnce(&mut Progress)) {
        self.with_job(id, |j| f(&mut j.progress));
    }

    /// The job ended with `status` (and its images or error).
    pub fn finish(&self, id: &str, status: Status, images: Vec<JobImage>, error: Option<ApiError>) {
        let mut inner = self.lock();
        let Some(job) = inner.jobs.get_mut(id) else {
            return;
        };
        let seconds = job.started.map(|t| t.elapsed().as_secs_f64());
        job.status = status;
        job.images = Arc::new(images);
        job.error = error;
        job.seconds = seconds;
        if status == Status::Succeeded {
            job.progress.fraction = 1.0;
        }
        job.changed.send_modify(|v| *v += 1);
        if let (Some(s), Status::Succeeded) = (seconds, status) {
            inner.mean_seconds = Some(match inner.mean_seconds {
                Some(m) => 0.8 * m + 0.2 * s,
                None => s,
            });
        }
        inner.finished.push_back(id.to_string());
        while inner.finished.len() > self.history {
            if let Some(old) = inner.finished.pop_front() {
                inner.jobs.remove(&old);
            }
        }
    }

    /// Asks a job to stop: a queued one is cancelled at once, a running one at its next
    /// step. `None` when there is no such job.
    pub fn cancel(&self, id: &str) -> Option<Status> {
        let status = {
            let inner = self.lock();
            let job = inner.jobs.get(id)?;
            job.cancel.cancel();
            job.status
        };
        if status == Status::Queued {
            self.finish(id, Status::Cancelled, Vec::new(), None);
        }
        Some(status)
    }

    /// Cancels every unfinished job (shutdown).
    pub fn cancel_all(&self) {
        let ids: Vec<String> = {
            let inner = self.lock();
            inner
                .jobs
                .iter()
                .filter(|(_, j)| !j.status.is_terminal())
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in ids {
            self.cancel(&id);
        }
    }

    /// Whether the job's token was cancelled (the worker skips such queued jobs).
    pub fn status(&self, id: &str) -> Option<Status> {
        self.lock().jobs.get(id).map(|j| j.status)
    }

    /// The client's view of a job.
    pub fn view(&self, id: &str) -> Option<JobView> {
        let inner = self.lock();
        inner.jobs.get(id).map(|j| view(id, j))
    }

    /// Every job, newest first.
    pub fn list(&self) -> Vec<JobView> {
        let inner = self.lock();
        let mut all: Vec<(u64, JobView)> = inner
            .jobs
            .iter()
            .map(|(id, j)| (job_number(id), view(id, j)))
            .collect();
        all.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        all.into_iter().map(|(_, v)| v).collect()
    }

    /// A receiver of the job's changes.
    pub fn subscribe(&self, id: &str) -> Option<watch::Receiver<u64>> {
        self.lock().jobs.get(id).map(|j| j.changed.subscribe())
    }

    /// The images of a succeeded job and its error otherwise.
    pub fn outcome(&self, id: &str) -> Option<(Status, Arc<Vec<JobImage>>, Option<ApiError>)> {
        let inner = self.lock();
        inner
            .jobs
            .get(id)
            .map(|j| (j.status, j.images.clone(), j.error.clone()))
    }

    /// Jobs waiting, and whether one is running.
    pub fn load(&self) -> (usize, bool) {
        let inner = self.lock();
        let waiting = inner
            .jobs
            .values()
            .filter(|j| j.status == Status::Queued)
            .count();
        let running = inner.jobs.values().any(|j| j.status == Status::Running);
        (waiting, running)
    }

    /// A guess of how long until a place in the queue frees: the mean job time (1 s before
    /// any job finished), at least 1 s.
    pub fn retry_after(&self) -> Duration {
        let mean = self.lock().mean_seconds.unwrap_or(1.0);
        Duration::from_secs_f64(mean.clamp(1.0, 3600.0).ceil())
    }
}

fn view(id: &str, j: &Job) -> JobView {
    JobView {
        id: id.to_string(),
        object: "job",
        created: j.created,
        status: j.status,
        progress: j.progress.clone(),
        params: j.params.clone(),
        images: j
            .images
            .iter()
            .enumerate()
            .map(|(index, im)| ImageInfo {
                index,
                width: im.width,
                height: im.height,
                seed: im.seed,
            })
            .collect(),
        error: j.error.as_ref().map(ApiError::body),
        seconds: j.seconds,
    }
}

fn job_number(id: &str) -> u64 {
    id.split('-')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// SplitMix64's finaliser: spreads a counter over 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_jobs_cancel_at_once_and_history_is_bounded() {
        let jobs = Jobs::new(2);
        let (a, mut rx, token) = jobs.insert(serde_json::json!({}));
        assert_eq!(jobs.status(&a), Some(Status::Queued));
        assert_eq!(jobs.cancel(&a), Some(Status::Queued));
        assert!(token.is_cancelled());
        assert_eq!(jobs.status(&a), Some(Status::Cancelled));
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();

        let (b, _, _) = jobs.insert(serde_json::json!({}));
        let (c, _, _) = jobs.insert(serde_json::json!({}));
        jobs.start(&b);
        // A running job is only asked to stop: the worker ends it.
        assert_eq!(jobs.cancel(&b), Some(Status::Running));
        assert_eq!(jobs.status(&b), Some(Status::Running));
        jobs.finish(&b, Status::Cancelled, Vec::new(), None);
        jobs.start(&c);
        jobs.finish(&c, Status::Succeeded, Vec::new(), None);
        // History 2: the oldest finished job (a) is forgotten.
        assert_eq!(jobs.status(&a), None);
        assert!(jobs.status(&b).is_some() && jobs.status(&c).is_some());
        assert_eq!(jobs.list().first().map(|v| v.id.clone()), Some(c.clone()));
        assert_ne!(b, c);
        assert!(jobs.cancel("job-99-00000000").is_none());
    }
}
