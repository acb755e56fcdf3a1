//! Overhead of the GreenScale path — client → gateway → queue → worker → demo model (zero
//! delay) — against the client calling the demo model directly, at 1 and 64 concurrent
//! clients, in one run: p50/p99 latency, the latency GreenScale adds, and requests/s.
//! Requests per level: GREENSCALE_BENCH_REQUESTS (default 2000).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use greenscale_testkit::RedisServer;

async fn run(url: &str, clients: usize, total: usize) -> (Vec<f64>, f64) {
    let client = reqwest::Client::new();
    let body = serde_json::json!({
        "model": "greenscale-demo",
        "messages": [{"role": "user", "content": "benchmark"}],
    });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, body, next, url) =
            (client.clone(), body.clone(), next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let t = Instant::now();
                let r = client.post(&url).json(&body).send().await.expect("request");
                assert!(r.status().is_success(), "status {}", r.status());
                r.bytes().await.expect("body");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let rate = all.len() as f64 / secs;
    (all, rate)
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("GREENSCALE_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let (_model, model_url) = common::demo_model();
    let _worker = common::worker(&redis.url(), &model_url, "bench", &["--concurrency", "128"]);
    let (_gateway, port) = common::gateway(
        &redis.url(),
        &["--max-pending", "1000000", "--model", "greenscale-demo"],
    );
    let direct = format!("{model_url}/chat/completions");
    let via = format!("http://127.0.0.1:{port}/v1/chat/completions");
    // Warm up both paths (connections, worker lease loop).
    run(&direct, 8, 200).await;
    run(&via, 8, 200).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "gateway overhead: client -> gateway -> Redis -> worker -> demo model, against client -> demo model"
    );
    for clients in [1usize, 64] {
        let (d, d_rate) = run(&direct, clients, total).await;
        let (g, g_rate) = run(&via, clients, total).await;
        let (d50, d99) = (common::quantile(&d, 0.5), common::quantile(&d, 0.99));
        let (g50, g99) = (common::quantile(&g, 0.5), common::quantile(&g, 0.99));
        println!("  {clients:>2} concurrent clients, {total} requests each way:");
        println!("     direct:     p50 {d50:7.3} ms  p99 {d99:7.3} ms  {d_rate:8.0} req/s");
        println!("     greenscale: p50 {g50:7.3} ms  p99 {g99:7.3} ms  {g_rate:8.0} req/s");
        println!(
            "     added:      p50 {:7.3} ms  p99 {:7.3} ms  (throughput ratio {:.2}){}",
            g50 - d50,
            g99 - d99,
            g_rate / d_rate,
            if clients == 64 {
                format!(
                    "  target p50 <= 5 ms: {}; p99 <= 10 ms: {}",
                    common::verdict(g50 - d50 <= 5.0),
                    common::verdict(g99 - d99 <= 10.0)
                )
            } else {
                String::new()
            }
        );
    }
}
