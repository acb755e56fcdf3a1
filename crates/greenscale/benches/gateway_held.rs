//! Gateway memory with 10,000 OpenAI-compatible requests held open while no worker runs,
//! next to the idle gateway, then all of them completing once a worker starts.
//! Requests: GREENSCALE_BENCH_HELD (default 10000).

mod common;

use std::time::{Duration, Instant};

use greenscale_testkit::RedisServer;

#[tokio::main]
async fn main() {
    let held: usize = std::env::var("GREENSCALE_BENCH_HELD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // The gateway and this client each hold a socket per request.
    let limit = open_file_limit();
    assert!(
        held + 200 <= limit,
        "cannot hold {held} requests: the open-file limit is {limit} (bench/run raises it with \
         ulimit -n 65536 where the hard limit allows; `ulimit -Hn` shows that limit)"
    );
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let (_model, model_url) = common::demo_model();
    let (gateway, port) = common::gateway(
        &redis.url(),
        &["--max-pending", "1000000", "--wait-deadline", "600s"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = gateway.rss_kib() as f64 / 1024.0;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "held"}]});
    let mut tasks = Vec::with_capacity(held);
    for _ in 0..held {
        let (url, body) = (url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .expect("client");
            match client.post(&url).json(&body).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }));
    }
    let queue_url = format!("http://127.0.0.1:{port}/v1/queue");
    let probe = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pending = match probe.get(&queue_url).send().await {
            Ok(r) => pending_of(r).await.unwrap_or(0),
            Err(_) => 0,
        };
        if pending >= held as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "the requests did not all arrive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held_rss = gateway.rss_kib() as f64 / 1024.0;
    let started = Instant::now();
    let worker = common::worker(&redis.url(), &model_url, "bench", &["--concurrency", "256"]);
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    let drain = started.elapsed().as_secs_f64();
    worker.stop();
    println!("gateway holding requests while the pool is at zero");
    println!("  idle gateway: RSS {idle_rss:.1} MB");
    println!(
        "  {held} requests held open: RSS {held_rss:.1} MB ({:.1} KB per held request)",
        (held_rss - idle_rss) * 1024.0 / held as f64
    );
    println!("  after a worker started: {ok}/{held} completed in {drain:.1} s");
    println!(
        "  target <= 200 MB: {}; all complete: {}",
        common::verdict(held_rss <= 200.0),
        common::verdict(ok == held)
    );
}

/// Reads `pending` from a `/v1/queue` answer.
/// This process's open-file limit (the gateway inherits it), from /proc.
fn open_file_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(usize::MAX)
}

async fn pending_of(r: reqwest::Response) -> Option<u64> {
    let v: serde_json::Value = r.json().await.ok()?;
    v["pending"].as_u64()
}
