//! Native download from the Hugging Face hub, against a small hub the test starts on
//! 127.0.0.1 (never the real one): the hub's API shape (`/api/models/{id}/revision/{rev}`,
//! `/{id}/resolve/{rev}/{path}` with `x-repo-commit`, `etag`, range requests answered 206),
//! serving the tiny fixture checkpoint plus files the engine never reads. Cases: a clean
//! download into the standard cache layout (only the needed files), a connection dropped
//! mid-file (resumed), a partial file left by a failed run (resumed by the next run), a
//! private repository (401 without a token, fine with HF_TOKEN), an unknown repository
//! (404), and generating straight from a hub id.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_secret";

/// What the mock hub serves and how it misbehaves.
#[derive(Default)]
struct Hub {
    /// Repository files (path → bytes).
    files: BTreeMap<String, Vec<u8>>,
    /// Files whose body is cut in half this many more times.
    drop_mid_file: Mutex<BTreeMap<String, usize>>,
    /// Range starts asked for, per file (downloads only, not the 0-0 probe).
    ranges: Mutex<Vec<(String, u64)>>,
    /// Requests seen.
    requests: AtomicUsize,
}

fn authorized(repo: &str, headers: &HeaderMap) -> bool {
    repo != "acme/private"
        || headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"))
}

fn known(repo: &str) -> bool {
    matches!(repo, "acme/tiny" | "acme/private")
}

async fn info(
    State(hub): State<Arc<Hub>>,
    UrlPath((owner, name, _rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    hub.requests.fetch_add(1, Ordering::SeqCst);
    let repo = format!("{owner}/{name}");
    if !known(&repo) {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    }
    if !authorized(&repo, &headers) {
        return (StatusCode::UNAUTHORIZED, "Invalid credentials").into_response();
    }
    let siblings: Vec<_> = hub
        .files
        .keys()
        .map(|f| serde_json::json!({ "rfilename": f }))
        .collect();
    axum::Json(serde_json::json!({ "id": repo, "sha": COMMIT, "siblings": siblings }))
        .into_response()
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    UrlPath((owner, name, _rev, path)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    hub.requests.fetch_add(1, Ordering::SeqCst);
    let repo = format!("{owner}/{name}");
    if !known(&repo) {
        return (StatusCode::NOT_FOUND, "Repository not found").into_response();
    }
    if !authorized(&repo, &headers) {
        return (StatusCode::UNAUTHORIZED, "Invalid credentials").into_response();
    }
    let Some(data) = hub.files.get(&path) else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let total = data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: u64 = a.parse().unwrap_or(0);
            let b: u64 = b.parse().unwrap_or(total.saturating_sub(1));
            (a, b.min(total.saturating_sub(1)))
        });
    let (start, end) = range.unwrap_or((0, total.saturating_sub(1)));
    if start >= total {
        return (StatusCode::RANGE_NOT_SATISFIABLE, "").into_response();
    }
    let probe = range == Some((0, 0)) && total > 1;
    if !probe {
        hub.ranges.lock().unwrap().push((path.clone(), start));
    }
    let body = data[start as usize..=end as usize].to_vec();
    let cut = !probe && {
        let mut d = hub.drop_mid_file.lock().unwrap();
        match d.get_mut(&path) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    let len = body.len();
    let stream_body = if cut {
        // Half the bytes (given time to reach the client), then the connection breaks.
        let half = body[..len / 2].to_vec();
        let first = futures_util::stream::iter([Ok::<_, std::io::Error>(half)]);
        let broken = futures_util::stream::once(async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            Err::<Vec<u8>, _>(std::io::Error::other("connection dropped by the test hub"))
        });
        use futures_util::StreamExt as _;
        Body::from_stream(first.chain(broken))
    } else {
        Body::from(body)
    };
    Response::builder()
        .status(if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header("x-repo-commit", COMMIT)
        .header(header::ETAG, format!("\"etag-{}\"", path.replace('/', "-")))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}"),
        )
        .body(stream_body)
        .unwrap()
}

/// A running mock hub on 127.0.0.1 serving `files` under `acme/tiny` and `acme/private`.
struct Server {
    url: String,
    hub: Arc<Hub>,
    _runtime: tokio::runtime::Runtime,
}

fn start(hub: Hub) -> Server {
    let hub = Arc::new(hub);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/api/models/{owner}/{name}/revision/{rev}", get(info))
        .route("/{owner}/{name}/resolve/{rev}/{*path}", get(resolve))
        .with_state(hub.clone());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        url,
        hub,
        _runtime: runtime,
    }
}

/// The tiny checkpoint's files by repository path, plus files the engine never reads.
fn tiny_files() -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let root = fixtures().join("tiny");
    let mut files = BTreeMap::new();
    walk(&root, &root, &mut files);
    files.insert("README.md".into(), b"# tiny".to_vec());
    files.insert(
        "transformer/diffusion_pytorch_model.bin".into(),
        vec![7u8; 64],
    );
    files.insert("assets/cat.png".into(), vec![1u8; 10]);
    files
}

const BIG: &str = "transformer/diffusion_pytorch_model.safetensors";

/// `qwen-image` with the mock hub as endpoint and `cache` as the hub cache; no proxy, no
/// token unless given.
fn qi(server: &Server, cache: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_qwen-image"));
    c.env("HF_ENDPOINT", &server.url)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("home"))
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    for p in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(p);
    }
    c
}

fn snapshot(cache: &Path, repo: &str) -> PathBuf {
    cache
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(COMMIT)
}

/// A clean download: only the files the engine reads, in huggingface_hub's cache layout,
/// each equal to the served bytes; a connection dropped mid-file is resumed with a range
/// request; a second run fetches nothing.
#[test]
fn download_into_the_standard_cache_and_resume_a_dropped_connection() {
    let files = tiny_files();
    let hub = Hub {
        files: files.clone(),
        ..Default::default()
    };
    hub.drop_mid_file.lock().unwrap().insert(BIG.into(), 1);
    let server = start(hub);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let o = qi(&server, &cache)
        .args(["download", "acme/tiny"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let snap = snapshot(&cache, "acme/tiny");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        snap.display().to_string()
    );
    for (f, data) in &files {
        let p = snap.join(f);
        let needed = qwen_image::download::is_needed(f);
        assert_eq!(p.exists(), needed, "{f}");
        if needed {
            assert_eq!(&std::fs::read(&p).unwrap(), data, "{f}");
            // a relative link into blobs/, as huggingface_hub writes it
            let link = std::fs::read_link(&p).unwrap();
            assert!(link.to_string_lossy().contains("blobs"), "{f}: {link:?}");
        }
    }
    let refs = cache.join("models--acme--tiny/refs/main");
    assert_eq!(std::fs::read_to_string(refs).unwrap().trim(), COMMIT);
    // The dropped file was asked for again from where it stopped.
    let ranges = server.hub.ranges.lock().unwrap().clone();
    let big: Vec<u64> = ranges
        .iter()
        .filter(|(f, _)| f == BIG)
        .map(|(_, s)| *s)
        .collect();
    let half = (files[BIG].len() / 2) as u64;
    assert_eq!(big, vec![0, half], "{ranges:?}");
    // Everything cached: nothing more to fetch.
    let before = server.hub.ranges.lock().unwrap().len();
    let o = qi(&server, &cache)
        .args(["download", "acme/tiny"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.hub.ranges.lock().unwrap().len(), before);
}

/// A run that fails mid-file leaves its partial file; the next run resumes it.
#[test]
fn a_failed_run_is_resumed_by_the_next() {
    let files = tiny_files();
    let hub = Hub {
        files: files.clone(),
        ..Default::default()
    };
    // More drops than the retries allow: the first run gives up.
    hub.drop_mid_file.lock().unwrap().insert(BIG.into(), 100);
    let server = start(hub);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let o = qi(&server, &cache)
        .args(["download", "acme/tiny"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("acme/tiny") && err.contains(BIG), "{err}");
    let parts: Vec<_> = std::fs::read_dir(cache.join("models--acme--tiny/blobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert_eq!(parts.len(), 1, "one partial file");
    let have = parts[0].metadata().unwrap().len();
    assert!(have > 0);
    server.hub.drop_mid_file.lock().unwrap().clear();
    server.hub.ranges.lock().unwrap().clear();
    let o = qi(&server, &cache)
        .args(["download", "acme/tiny"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let ranges = server.hub.ranges.lock().unwrap().clone();
    assert!(
        ranges.contains(&(BIG.to_string(), have)),
        "not resumed at {have}: {ranges:?}"
    );
    assert_eq!(
        std::fs::read(snapshot(&cache, "acme/tiny").join(BIG)).unwrap(),
        files[BIG]
    );
}

/// 401 without a token (the message says to set HF_TOKEN), success with it; 404 for an
/// unknown repository; offline refuses to download.
#[test]
fn tokens_unknown_repositories_and_offline() {
    let server = start(Hub {
        files: tiny_files(),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let o = qi(&server, &cache)
        .args(["download", "acme/private"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("401") && err.contains("HF_TOKEN"), "{err}");
    let o = qi(&server, &cache)
        .env("HF_TOKEN", TOKEN)
        .args(["download", "acme/private"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = qi(&server, &cache)
        .args(["download", "acme/nothing"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("404") && err.contains("acme/nothing"), "{err}");
    let o = qi(&server, &cache)
        .env("HF_HUB_OFFLINE", "1")
        .args(["download", "acme/tiny"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("offline"));
}

/// `generate --model acme/tiny` downloads what is missing and generates the reference image;
/// then works offline from the cache.
#[test]
fn generate_from_a_hub_id() {
    let server = start(Hub {
        files: tiny_files(),
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let out = tmp.path().join("o.png");
    let mut a = base_args(&out);
    set(&mut a, "--model", "acme/tiny");
    let o = qi(&server, &cache).args(&a).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let got = image::open(&out).unwrap().to_rgb8();
    let (_, _, want) = reference_image(CASE);
    assert!(psnr(got.as_raw(), &want) >= 40.0);
    std::fs::remove_file(&out).unwrap();
    let o = qi(&server, &cache)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .args(&a)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}
