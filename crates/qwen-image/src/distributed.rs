//! Several processes (GPUs, machines) on one request through MLX's distributed runtime.
//!
//! Start every rank with MLX's launcher, which writes the environment read here
//! ([`Cluster::from_env`]): `mlx.launch -n 2 --backend nccl -- qwen-image generate …` on one
//! machine with two GPUs, or `mlx.launch --hostfile hosts.json --backend ring -- …` across
//! machines. The ranks then share the work ([`QwenImagePipeline::run_distributed`]):
//!
//! - **CFG-parallel** (true CFG on, an even number of ranks): ranks pair up; in each pair one
//!   encodes and runs the prompt's pass, the other the negative prompt's, and after every
//!   step one all-gather of the packed predictions gives both the pair's two predictions, so
//!   both take the same guided Euler step and hold the same latents.
//! - **Batch-parallel** (`num_images` > 1): images are dealt to the pairs (or, without
//!   CFG-parallel, to the ranks) round by round; image `i` keeps seed `seed + i` wherever it
//!   runs. A rank with nothing left in a round takes part in the round's collectives only.
//!
//! Each round's final latents are all-gathered; rank 0 alone decodes every image and returns
//! them in order (the other ranks return `None`). Results are those of one process, bit for
//! bit on the CPU: every rank runs exactly the single-process arithmetic on its share, and
//! the collectives only copy.
//!
//! [`QwenImagePipeline::run_distributed`]: crate::QwenImagePipeline::run_distributed

use std::path::Path;
use std::time::Duration;

use mlx_fastops::distributed::{CommBackend, Group};

use crate::error::{PipelineError, Result};

/// How long [`Cluster::from_env`] waits for the ranks to connect by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

fn dist_err(msg: impl Into<String>) -> PipelineError {
    PipelineError::Distributed(msg.into())
}

/// The processes of one distributed run.
#[derive(Debug)]
pub struct Cluster {
    group: Group,
}

/// Ranks listed in a ring hostfile (`[["ip:port", …], …]`, one list per rank), when it parses.
fn hostfile_ranks(path: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str::<serde_json::Value>(&text).ok()? {
        serde_json::Value::Array(ranks) => Some(ranks.len()),
        _ => None,
    }
}

impl Cluster {
    /// The cluster `mlx.launch` started this process in, from its environment: `MLX_RANK`,
    /// and `NCCL_HOST_IP` + `MLX_WORLD_SIZE` (NCCL) or `MLX_HOSTFILE` (ring). `Ok(None)` when
    /// the process was not launched as one of several ranks.
    ///
    /// Connecting waits for every rank; a rank that is missing (not started, crashed, a wrong
    /// address) makes this fail after `timeout` with an error saying so, instead of the
    /// endless wait of MLX's own set-up. Then exit the process: the thread blocked in MLX
    /// cannot be stopped.
    pub fn from_env(timeout: Duration) -> Result<Option<Self>> {
        let Some(rank) = std::env::var_os("MLX_RANK") else {
            return Ok(None);
        };
        let rank: usize = rank
            .to_str()
            .and_then(|r| r.trim().parse().ok())
            .ok_or_else(|| dist_err(format!("MLX_RANK={rank:?} is not a rank number")))?;
        let (backend, size) = if std::env::var_os("NCCL_HOST_IP").is_some() {
            let size = std::env::var("MLX_WORLD_SIZE")
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    dist_err("NCCL_HOST_IP is set but MLX_WORLD_SIZE is not a number")
                })?;
            (CommBackend::Nccl, Some(size))
        } else if let Some(hostfile) = std::env::var_os("MLX_HOSTFILE") {
            (CommBackend::Ring, hostfile_ranks(Path::new(&hostfile)))
        } else {
            return Err(dist_err(
                "MLX_RANK is set, but neither MLX_HOSTFILE (ring) nor NCCL_HOST_IP (nccl): start \
                 the ranks with mlx.launch",
            ));
        };
        match size {
            Some(0 | 1) => return Ok(None),
            Some(n) if rank >= n => {
                return Err(dist_err(format!(
                    "MLX_RANK {rank} is not below the {n} ranks of the {} set-up",
                    backend.name()
                )));
            }
            _ => {}
        }
        if !backend.is_available() {
            return Err(dist_err(format!(
                "this MLX build has no {} backend",
                backend.name()
            )));
        }
        // MLX's set-up blocks while a peer is missing: wait for it on another thread.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("mlx-distributed-init".into())
            .spawn(move || {
                let _ = tx.send(Group::init(backend, true).map_err(|e| e.to_string()));
            })
            .map_err(|e| dist_err(format!("cannot start the connecting thread: {e}")))?;
        let group = match rx.recv_timeout(timeout) {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                return Err(dist_err(format!(
                    "rank {rank} could not connect to the other ranks ({}): {e}",
                    backend.name()
                )));
            }
            Err(_) => {
                return Err(dist_err(format!(
                    "rank {rank} could not connect to the other ranks within {} s (backend {}): \
                     is every rank running, and can the hosts reach each other?",
                    timeout.as_secs(),
                    backend.name()
                )));
            }
        };
        Ok((group.size() > 1).then_some(Self { group }))
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// Ranks in the cluster.
    pub fn size(&self) -> usize {
        self.group.size()
    }

    /// The backend connecting the ranks.
    pub fn backend(&self) -> CommBackend {
        self.group.backend()
    }

    /// Whether this is rank 0, the one that decodes and returns the images.
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    pub(crate) fn group(&self) -> &Group {
        &self.group
    }

    /// Every rank's `x` concatenated along axis 0, in rank order (lazy; for measurements and
    /// programs of their own).
    pub fn all_gather(&self, x: &mlx_rs::Array) -> Result<mlx_rs::Array> {
        Ok(self.group.all_gather(x)?)
    }

    /// How a request is shared: see the module docs.
    pub fn describe(&self, true_cfg: bool, num_images: usize) -> String {
        let plan = Plan::new(Some(self), true_cfg);
        format!(
            "{} ranks over {}: {}, {} image(s) in {} round(s)",
            self.size(),
            self.backend().name(),
            if plan.cfg_parallel {
                "CFG-parallel pairs"
            } else {
                "batch-parallel"
            },
            num_images,
            plan.rounds(num_images)
        )
    }
}

/// Which passes a rank runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The prompt's pass and, with true CFG, the negative prompt's.
    Both,
    /// The prompt's pass of a CFG pair.
    Cond,
    /// The negative prompt's pass of a CFG pair.
    Uncond,
}

/// How this rank takes part in a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) cfg_parallel: bool,
    /// Images processed at once: pairs (CFG-parallel) or ranks.
    pub(crate) slots: usize,
    /// This rank's slot.
    pub(crate) slot: usize,
    pub(crate) role: Role,
    pub(crate) leader: bool,
}

impl Plan {
    /// The plan of this process (a single process: one slot, both passes).
    pub(crate) fn new(cluster: Option<&Cluster>, true_cfg: bool) -> Self {
        let (rank, size) = cluster.map_or((0, 1), |c| (c.rank(), c.size()));
        Self::for_rank(rank, size, true_cfg)
    }

    /// The plan of rank `rank` of `size`.
    fn for_rank(rank: usize, size: usize, true_cfg: bool) -> Self {
        let cfg_parallel = true_cfg && size >= 2 && size.is_multiple_of(2);
        let (slots, slot, role) = if cfg_parallel {
            let role = if rank.is_multiple_of(2) {
                Role::Cond
            } else {
                Role::Uncond
            };
            (size / 2, rank / 2, role)
        } else {
            (size, rank, Role::Both)
        };
        Self {
            cfg_parallel,
            slots,
            slot,
            role,
            leader: rank == 0,
        }
    }

    /// Rounds needed for `n` images.
    pub(crate) fn rounds(&self, n: usize) -> usize {
        n.div_ceil(self.slots)
    }

    /// The image this rank works on in `round` (`None`: nothing left for it).
    pub(crate) fn image(&self, round: usize, n: usize) -> Option<usize> {
        let i = round * self.slots + self.slot;
        (i < n).then_some(i)
    }

    /// The row of a round's all-gathered latents that holds slot `s`'s image.
    pub(crate) fn row_of(&self, s: usize) -> usize {
        if self.cfg_parallel { 2 * s } else { s }
    }

    /// Whether this rank encodes and runs the prompt.
    pub(crate) fn runs_prompt(&self) -> bool {
        self.role != Role::Uncond
    }

    /// Whether this rank encodes and runs the negative prompt (when true CFG is on).
    pub(crate) fn runs_negative(&self) -> bool {
        self.role != Role::Cond
    }
}

/// The environment variable that sets [`connect_timeout_from_env`], in seconds.
pub const CONNECT_TIMEOUT_ENV: &str = "QWEN_IMAGE_CONNECT_TIMEOUT";

/// The environment variable that sets [`step_timeout_from_env`], in seconds.
pub const STEP_TIMEOUT_ENV: &str = "QWEN_IMAGE_STEP_TIMEOUT";

/// How long a distributed run may go without progress by default (see [`Watchdog`]): 900 s,
/// as a first quantized step on CUDA may compile kernels for minutes.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(900);

/// Whole seconds from an environment value, else `default`.
fn secs_or(value: Option<String>, default: Duration) -> Duration {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, Duration::from_secs)
}

/// How long the ranks may take to connect ([`Cluster::from_env`]): [`CONNECT_TIMEOUT_ENV`]
/// seconds, else [`DEFAULT_CONNECT_TIMEOUT`].
pub fn connect_timeout_from_env() -> Duration {
    secs_or(
        std::env::var(CONNECT_TIMEOUT_ENV).ok(),
        DEFAULT_CONNECT_TIMEOUT,
    )
}

/// How long a run may make no progress ([`Watchdog`]): [`STEP_TIMEOUT_ENV`] seconds, else
/// [`DEFAULT_STEP_TIMEOUT`].
pub fn step_timeout_from_env() -> Duration {
    secs_or(std::env::var(STEP_TIMEOUT_ENV).ok(), DEFAULT_STEP_TIMEOUT)
}

/// Watches a distributed run for progress. MLX's collectives wait forever on a rank that
/// stalls (ring) or dies (NCCL): a watchdog thread calls its `on_stall` (once) when
/// [`Watchdog::beat`] has not been called for the limit; a program typically reports the
/// error and exits, as the thread blocked in MLX cannot be stopped.
#[derive(Debug)]
pub struct Watchdog {
    start: std::time::Instant,
    /// Seconds since `start` at the last sign of progress.
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Watchdog {
    /// Starts watching rank `rank` (counted from now): after `limit` (whole seconds) without
    /// a beat, `on_stall` gets a [`PipelineError::Distributed`] saying so. The thread is
    /// checked every 200 ms; a watchdog whose thread cannot start watches nothing.
    pub fn start(
        rank: usize,
        limit: Duration,
        on_stall: impl FnOnce(PipelineError) + Send + 'static,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let dog = Self {
            start: std::time::Instant::now(),
            last: Default::default(),
        };
        let (start, last, limit) = (dog.start, dog.last.clone(), limit.as_secs());
        let _ = std::thread::Builder::new()
            .name("distributed-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    let idle = start
                        .elapsed()
                        .as_secs()
                        .saturating_sub(last.load(Ordering::Relaxed));
                    if idle >= limit {
                        on_stall(dist_err(format!(
                            "rank {rank} made no progress for {idle} s (another rank stopped or \
                             hangs; {STEP_TIMEOUT_ENV} sets the limit)"
                        )));
                        return;
                    }
                }
            });
        dog
    }

    /// Progress was made.
    pub fn beat(&self) {
        self.last.store(
            self.start.elapsed().as_secs(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

impl crate::QwenImagePipeline {
    /// Runs a prepared request alone ([`Self::run`]) or, with a `cluster`, as one of its ranks
    /// ([`Self::run_distributed`], not cancellable): `None` on the ranks other than 0.
    pub fn run_on(
        &mut self,
        job: &crate::PreparedRequest,
        cluster: Option<&Cluster>,
        on_event: &mut dyn FnMut(crate::Event),
    ) -> Result<Option<crate::Generation>> {
        match cluster {
            Some(c) => self.run_distributed(job, on_event, &Default::default(), c),
            None => self.run(job, on_event).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rank: usize, size: usize, cfg: bool) -> Plan {
        Plan::for_rank(rank, size, cfg)
    }

    #[test]
    fn images_are_dealt_round_by_round() {
        // 4 ranks with CFG: 2 pairs; 5 images in 3 rounds; pair 1 idle in round 2.
        let p = plan(3, 4, true);
        assert!(p.cfg_parallel && p.role == Role::Uncond && p.slot == 1);
        assert_eq!(p.rounds(5), 3);
        assert_eq!(
            (0..3).map(|r| p.image(r, 5)).collect::<Vec<_>>(),
            [Some(1), Some(3), None]
        );
        assert_eq!(p.row_of(1), 2);
        // 3 ranks with CFG: odd, so batch-parallel with both passes on each rank.
        let p = plan(2, 3, true);
        assert!(!p.cfg_parallel && p.role == Role::Both && p.runs_negative());
        assert_eq!(
            (0..2).map(|r| p.image(r, 4)).collect::<Vec<_>>(),
            [Some(2), None]
        );
        // One process: everything.
        let p = Plan::new(None, true);
        assert_eq!((p.slots, p.slot, p.role), (1, 0, Role::Both));
        assert_eq!(p.rounds(3), 3);
    }

    #[test]
    fn timeouts_from_the_environment_values() {
        let d = Duration::from_secs(60);
        assert_eq!(secs_or(Some(" 5 ".into()), d), Duration::from_secs(5));
        assert_eq!(secs_or(Some("soon".into()), d), d);
        assert_eq!(secs_or(None, d), d);
    }

    #[test]
    fn the_watchdog_reports_a_stall() {
        let (tx, rx) = std::sync::mpsc::channel();
        let dog = Watchdog::start(3, Duration::ZERO, move |e| {
            let _ = tx.send(e.to_string());
        });
        dog.beat();
        let msg = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        assert!(
            msg.starts_with("distributed run: rank 3 made no progress for 0 s")
                && msg.contains(STEP_TIMEOUT_ENV),
            "{msg}"
        );
        // Once: the thread has ended.
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    }
}
