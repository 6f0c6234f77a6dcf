//! A `qwen-image serve` process for the server tests: started on a free port on the tiny
//! fixture, its address read from the one line it prints, killed when dropped; an HTTP
//! client that never goes through a proxy and treats every status as an answer.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// A running server.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// What it printed on stderr, once it exited (see [`Server::stop`]).
    stderr: Option<std::process::ChildStderr>,
}

/// Starts `qwen-image serve --model <tiny> --port 0 --dtype f32 <extra…>` and waits for it.
pub fn start(extra: &[&str]) -> Server {
    start_with_env(extra, &[])
}

/// [`start`] with environment variables.
pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
    let model = crate::common::fixtures().join("tiny");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qwen-image"));
    cmd.args(["serve", "--model"])
        .arg(&model)
        .args(["--port", "0", "--dtype", "f32"])
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("QWEN_IMAGE_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("qwen-image serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reads the address line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("no address line (got {line:?}); stderr: {err}")
        })
        .to_string();
    let stderr = child.stderr.take();
    Server { child, url, stderr }
}

impl Server {
    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit; its status and stderr.
    pub fn stop(mut self, limit: Duration) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let t = Instant::now();
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s.code();
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client: no proxy, statuses are answers, `timeout` for the whole call.
pub fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// Status and JSON body of a response.
pub fn json(
    res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> (u16, serde_json::Value) {
    let mut res = res.expect("an HTTP answer");
    let status = res.status().as_u16();
    let text = res
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_string()
        .expect("body");
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, value)
}

/// Sends only the head of a JSON POST to `path` declaring a `len`-byte body with
/// `Expect: 100-continue`, and reads the answer the server gives before any body: its
/// status and JSON body (the server must answer without the body, e.g. 413 for a body over
/// its limit).
pub fn head_only_post(s: &Server, path: &str, len: usize) -> (u16, serde_json::Value) {
    use std::io::Write as _;
    let addr = s.url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        sock,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .expect("write the head");
    let mut reader = BufReader::new(sock);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
    let mut content_length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; content_length.expect("a Content-Length")];
    reader.read_exact(&mut body).expect("body");
    let text = String::from_utf8_lossy(&body).into_owned();
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, value)
}

/// POSTs JSON to `path`.
pub fn post(
    s: &Server,
    agent: &ureq::Agent,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    json(
        agent
            .post(&s.at(path))
            .header("Content-Type", "application/json")
            .send(body.to_string()),
    )
}

/// GETs `path` as JSON.
pub fn get(s: &Server, agent: &ureq::Agent, path: &str) -> (u16, serde_json::Value) {
    json(agent.get(&s.at(path)).call())
}

/// The RGB pixels (width, height, bytes) of a base64 PNG.
pub fn b64_pixels(b64: &str) -> (u32, u32, Vec<u8>) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    png_pixels(&bytes)
}

/// The RGB pixels of PNG bytes.
pub fn png_pixels(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let img = image::load_from_memory(bytes).expect("a PNG").to_rgb8();
    (img.width(), img.height(), img.into_raw())
}

/// Polls `GET /v1/jobs/{id}` until `done` says so (at most `limit`); the last view.
pub fn wait_job(
    s: &Server,
    agent: &ureq::Agent,
    id: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let (code, view) = get(s, agent, &format!("/v1/jobs/{id}"));
        assert_eq!(code, 200, "{view}");
        if done(&view) {
            return view;
        }
        assert!(t.elapsed() < limit, "job {id} never got there: {view}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// MLX's active memory as the server reports it.
pub fn active_memory(s: &Server, agent: &ureq::Agent) -> u64 {
    let (_, h) = get(s, agent, "/health");
    h["mlx_active_memory_bytes"]
        .as_u64()
        .expect("memory in /health")
}
