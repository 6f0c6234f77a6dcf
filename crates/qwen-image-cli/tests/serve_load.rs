//! `qwen-image serve` under load, on the tiny fixture: 50 clients at once against a queue of
//! 16. Every request is answered, 200 or 429 (with Retry-After); no image is lost or given to
//! the wrong client (each equals the same request run alone afterwards, byte for byte, PNG
//! metadata included); MLX's memory is back at its idle level afterwards. The throughput and
//! the latency percentiles are printed (`cargo test --test serve_load -- --nocapture`).

mod common;
mod server;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;
use server::*;

const CLIENTS: usize = 50;

fn request(i: usize) -> serde_json::Value {
    // Distinct prompt and seed per client, so that a mix-up cannot go unnoticed.
    json!({
        "prompt": format!("client {i}: a lighthouse at dusk"),
        "size": "64x48", "steps": 4, "seed": 1000 + i,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn fifty_clients_all_answered_none_mixed_up_memory_back_to_idle() {
    let s = Arc::new(start(&[]));
    let agent = client(Duration::from_secs(300));
    let (code, _) = post(&s, &agent, "/v1/images/generations", &request(999));
    assert_eq!(code, 200);
    let idle = active_memory(&s, &agent);

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                let agent = client(Duration::from_secs(300));
                barrier.wait();
                let t = Instant::now();
                let res = agent
                    .post(&s.at("/v1/images/generations"))
                    .header("Content-Type", "application/json")
                    .send(request(i).to_string());
                let retry_after = res
                    .as_ref()
                    .ok()
                    .and_then(|r| r.headers().get("retry-after").cloned());
                let (code, body) = json(res);
                (i, code, body, retry_after, t.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let wall = t0.elapsed();

    let mut ok = Vec::new();
    let mut latencies = Vec::new();
    let mut refused = 0;
    for (i, code, body, retry_after, latency) in results {
        match code {
            200 => {
                let b64 = body["data"][0]["b64_json"]
                    .as_str()
                    .expect("image")
                    .to_string();
                assert_eq!(body["data"][0]["seed"], 1000 + i as u64);
                ok.push((i, b64));
                latencies.push(latency);
            }
            429 => {
                refused += 1;
                assert!(retry_after.is_some(), "429 without Retry-After");
                assert_eq!(body["error"]["type"], "rate_limit_error");
            }
            other => panic!("client {i}: status {other}: {body}"),
        }
    }
    assert_eq!(ok.len() + refused, CLIENTS);
    // The queue holds 16 and one job runs: at least that many were served.
    assert!(ok.len() >= 17, "only {} served", ok.len());
    latencies.sort();
    eprintln!(
        "load: {CLIENTS} clients, {} served, {refused} refused (429) in {:.2} s: {:.1} images/s; \
         latency of served requests p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ok.len(),
        wall.as_secs_f64(),
        ok.len() as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.9).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );

    // Each served image is exactly what the same request gives alone.
    for (i, b64) in &ok {
        let (code, alone) = post(&s, &agent, "/v1/images/generations", &request(*i));
        assert_eq!(code, 200);
        assert!(
            alone["data"][0]["b64_json"].as_str() == Some(b64.as_str()),
            "client {i} got another image than its request gives alone"
        );
    }
    assert_eq!(active_memory(&s, &agent), idle, "memory not back to idle");
}
