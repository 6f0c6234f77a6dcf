//! Where MLX keeps the GPU kernels it compiles at run time.
//!
//! On CUDA, MLX compiles some kernels (its quantized matmul among them) with NVRTC the first
//! time each is used — 46 s for the quantized matmul on an H200, more than 8 minutes seen on an
//! H100 — and caches them in `MLX_PTX_CACHE_DIR`, by default under `/tmp`, which many systems
//! empty at boot. [`use_persistent_cache`] points MLX at a per-user cache directory instead
//! (unless the variable is set), so the compile happens once per machine, and
//! [`first_use_notice`] tells the user when a run is about to pay for it.

use std::path::{Path, PathBuf};

use mlx_fastops::Backend;

/// The variable MLX reads for its compiled-kernel cache.
pub const CACHE_ENV: &str = "MLX_PTX_CACHE_DIR";

/// `${XDG_CACHE_HOME:-$HOME/.cache}/qwen-image-rs/mlx-kernels/<mlx_version>` (`None` without
/// either variable).
pub fn default_dir(mlx_version: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(
        base.join("qwen-image-rs")
            .join("mlx-kernels")
            .join(mlx_version),
    )
}

/// The cache MLX will use: `MLX_PTX_CACHE_DIR` when set; otherwise sets it to
/// [`default_dir`] (creating it) and returns that. `None` when no directory can be had (then
/// MLX keeps its own default).
///
/// # Safety
/// Changes the process environment: call it before any other thread may read or write the
/// environment (first thing in `main`), and before MLX compiles a kernel.
pub unsafe fn use_persistent_cache(mlx_version: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let dir = default_dir(mlx_version)?;
    std::fs::create_dir_all(&dir).ok()?;
    // SAFETY: the caller guarantees no concurrent access to the environment.
    unsafe { std::env::set_var(CACHE_ENV, &dir) };
    Some(dir)
}

/// Files in the cache (0 when it is missing).
pub fn cached_kernels(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter_map(|e| e.ok()).count())
}

/// What to tell the user before a quantized run on CUDA whose kernel cache is empty: the
/// first denoising steps wait for MLX's compiler, once. `None` when nothing will be compiled
/// (another backend, a float model, or kernels already cached).
pub fn first_use_notice(backend: Backend, quantized: bool, cache: Option<&Path>) -> Option<String> {
    if !quantized || backend != Backend::Cuda {
        return None;
    }
    let place = match cache {
        Some(dir) if cached_kernels(dir) > 0 => return None,
        Some(dir) => format!("they are kept in {} for later runs", dir.display()),
        None => "no cache directory could be set (HOME unset): every run compiles them".into(),
    };
    Some(format!(
        "note: first quantized run on this machine: MLX compiles its quantized CUDA kernels \
         at first use, so the first steps wait (about a minute on an H200); {place}. \
         `qwen-image warmup` does it ahead of time"
    ))
}

/// Where the kernels are cached, for messages: `DIR (N files)`, or `MLX's default place`
/// when no folder is set.
pub fn describe_cache(cache: Option<&Path>) -> String {
    match cache {
        Some(d) => format!("{} ({} files)", d.display(), cached_kernels(d)),
        None => "MLX's default place".into(),
    }
}

/// A small request that makes MLX compile every run-time kernel a real run of the same model
/// uses (true CFG, so both passes run): 256², 2 steps, the prompt `warm-up` against a
/// negative prompt of one space. Add the run's LoRAs (they change the transformer's layers).
pub fn warmup_request() -> crate::GenerateRequest {
    let mut req = crate::GenerateRequest::new("warm-up");
    req.negative_prompt = Some(" ".into());
    (req.width, req.height, req.steps) = (256, 256, 2);
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_only_when_a_cuda_quantized_run_will_compile() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let n = first_use_notice(Backend::Cuda, true, Some(dir)).unwrap_or_default();
        assert!(n.contains("first quantized run") && n.contains(&dir.display().to_string()));
        assert!(first_use_notice(Backend::Cuda, false, Some(dir)).is_none());
        assert!(first_use_notice(Backend::Metal, true, Some(dir)).is_none());
        assert!(first_use_notice(Backend::Cpu, true, None).is_none());
        assert!(
            first_use_notice(Backend::Cuda, true, None).is_some_and(|n| n.contains("every run"))
        );
        std::fs::write(dir.join("kernel.ptx"), b"x")?;
        assert_eq!(cached_kernels(dir), 1);
        assert!(first_use_notice(Backend::Cuda, true, Some(dir)).is_none());
        assert_eq!(
            describe_cache(Some(dir)),
            format!("{} (1 files)", dir.display())
        );
        assert_eq!(describe_cache(None), "MLX's default place");
        let req = warmup_request();
        assert!(req.does_true_cfg() && (req.width, req.height, req.steps) == (256, 256, 2));
        Ok(())
    }

    #[test]
    fn default_dir_is_per_user_and_per_version() {
        if let Some(d) = default_dir("0.32.2") {
            assert!(
                d.ends_with("qwen-image-rs/mlx-kernels/0.32.2"),
                "{}",
                d.display()
            );
        }
    }
}
