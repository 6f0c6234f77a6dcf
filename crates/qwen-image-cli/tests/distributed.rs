//! `qwen-image generate` as two ranks of MLX's ring backend on loopback (the environment
//! `mlx.launch` writes: `MLX_HOSTFILE`, `MLX_RANK`), on the tiny fixture in f32: the PNGs rank
//! 0 writes are byte for byte those of one process, CFG-parallel (one pair, two rounds) and
//! batch-parallel (three images over two ranks, rank 1 idle in the last round); through
//! `mlx.launch` itself (installed by setup.sh); a missing peer fails within the connect
//! timeout, and a peer killed mid-run stops the other at once — exit 1, a clear message,
//! nothing written; a peer that stalls (stopped, not dead) is caught by the progress watchdog.
//!
//! Bugs injected once to see these tests fail (2026-11-30): the negative pass's row swapped
//! with the prompt's in the exchange (CFG-parallel images differ); image seeds numbered per
//! rank instead of globally (batch-parallel image 1 differs); the connect timeout dropped
//! (the missing-peer test runs into its 60 s limit).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A ring hostfile for `n` ranks on loopback.
fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let ranks: Vec<String> = (0..n)
        .map(|_| format!("[\"127.0.0.1:{}\"]", free_port()))
        .collect();
    let path = dir.join("hosts.json");
    std::fs::write(&path, format!("[{}]", ranks.join(","))).expect("hostfile");
    path
}

fn generate_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "generate",
        "--prompt",
        "A cat sitting on a mat",
        "--steps",
        "3",
        "--width",
        "64",
        "--height",
        "48",
        "--seed",
        "5",
        "--dtype",
        "f32",
        "--output",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    a.push("--model".into());
    a.push(fixtures().join("tiny").display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn rank(hosts: &Path, r: usize, args: &[String], env: &[(&str, &str)]) -> Child {
    let mut c = bin();
    c.args(args)
        .env("MLX_HOSTFILE", hosts)
        .env("MLX_RANK", r.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("rank starts")
}

/// A true-CFG run long enough to interfere with (1000 steps at 256²) writing `out`.
fn long_run_args(out: &Path) -> Vec<String> {
    let mut args = generate_args(out, &["--negative-prompt", "x"]);
    for (flag, value) in [("--steps", "1000"), ("--width", "256"), ("--height", "256")] {
        set(&mut args, flag, value);
    }
    args
}

/// Waits for `child` (at most `limit`); exit code and stderr.
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let t = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One process's files, then the same run on two ranks; the files must be equal.
fn same_as_one_process(extra: &[&str], files: &[&str]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let single = tmp.path().join("single");
    let dist = tmp.path().join("dist");
    std::fs::create_dir_all(&single).expect("dir");
    std::fs::create_dir_all(&dist).expect("dir");
    let o = run(bin().args(generate_args(&single.join("img.png"), extra)));
    assert!(o.status.success(), "{}", text(&o));
    let hosts = hostfile(tmp.path(), 2);
    let args = generate_args(&dist.join("img.png"), extra);
    let children: Vec<Child> = (0..2).map(|r| rank(&hosts, r, &args, &[])).collect();
    for (r, c) in children.into_iter().enumerate() {
        let (code, err) = finish(c, Duration::from_secs(120));
        assert_eq!(code, Some(0), "rank {r}: {err}");
        if r == 0 {
            assert!(err.contains("distributed: 2 ranks over ring"), "{err}");
        }
    }
    for f in files {
        let a = std::fs::read(single.join(f)).expect("single-process file");
        let b = std::fs::read(dist.join(f)).expect("distributed file");
        assert!(a == b, "{f} differs from the single-process run");
    }
    // Only rank 0 wrote, and only the expected files.
    assert_eq!(
        std::fs::read_dir(&dist).map(|d| d.count()).unwrap_or(0),
        files.len()
    );
}

#[test]
fn cfg_parallel_pairs_give_the_single_process_images() {
    same_as_one_process(
        &["--negative-prompt", "blurry", "--num-images", "2"],
        &["img-0.png", "img-1.png"],
    );
}

#[test]
fn batch_parallel_ranks_give_the_single_process_images() {
    same_as_one_process(
        &["--true-cfg-scale", "1", "--num-images", "3"],
        &["img-0.png", "img-1.png", "img-2.png"],
    );
}

#[test]
fn mlx_launch_starts_the_ranks() {
    let launch = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.mlx/bin/mlx.launch");
    if cfg!(target_os = "macos") && !launch.exists() {
        return; // macOS: mlx.launch comes with `pip install mlx`, not with setup.sh
    }
    assert!(
        launch.exists(),
        "scripts/setup.sh installs .mlx/bin/mlx.launch on Linux: run it"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra = ["--negative-prompt", "blurry"];
    let one = tmp.path().join("one.png");
    let o = run(bin().args(generate_args(&one, &extra)));
    assert!(o.status.success(), "{}", text(&o));
    let two = tmp.path().join("two.png");
    let o = run(Command::new(&launch)
        .args(["-n", "2", "--backend", "ring", "--starting-port"])
        .arg(free_port().to_string())
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_qwen-image"))
        .args(generate_args(&two, &extra))
        .env("HF_HUB_OFFLINE", "1"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(&one).ok() == std::fs::read(&two).ok());
}

#[test]
fn a_missing_peer_fails_within_the_connect_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts = hostfile(tmp.path(), 2);
    let out = tmp.path().join("never.png");
    let t = Instant::now();
    let (code, err) = finish(
        rank(
            &hosts,
            0,
            &generate_args(&out, &[]),
            &[("QWEN_IMAGE_CONNECT_TIMEOUT", "3")],
        ),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(
        err.contains("rank 0 could not connect to the other ranks within 3 s"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_peer_killed_mid_run_stops_the_other_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts = hostfile(tmp.path(), 2);
    let out = tmp.path().join("never.png");
    let args = long_run_args(&out);
    let r0 = rank(&hosts, 0, &args, &[]);
    let mut r1 = rank(&hosts, 1, &args, &[]);
    std::thread::sleep(Duration::from_secs(4));
    let _ = r1.kill();
    let _ = r1.wait();
    let t = Instant::now();
    let (code, err) = finish(r0, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(err.contains("distributed run: rank 0"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_stalled_peer_is_caught_by_the_watchdog() {
    // A rank alive but stopped (SIGSTOP): ring's collectives would wait forever.
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts = hostfile(tmp.path(), 2);
    let out = tmp.path().join("never.png");
    let args = long_run_args(&out);
    let env = [("QWEN_IMAGE_STEP_TIMEOUT", "3")];
    let r0 = rank(&hosts, 0, &args, &env);
    let mut r1 = rank(&hosts, 1, &args, &env);
    std::thread::sleep(Duration::from_secs(3));
    let pid = r1.id().to_string();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    let t = Instant::now();
    let (code, err) = finish(r0, Duration::from_secs(60));
    let _ = r1.kill();
    let _ = r1.wait();
    assert_eq!(code, Some(1), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(err.contains("rank 0 made no progress for"), "{err}");
    assert!(!out.exists());
}
