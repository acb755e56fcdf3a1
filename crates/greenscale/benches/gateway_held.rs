//! Gateway memory with OpenAI-compatible requests held open while no worker runs, next to
//! the idle gateway, then all of them completing once a worker starts. Twice, each on a
//! fresh gateway and Redis: over HTTP/1.1, a connection per request, as most clients
//! send them (GREENSCALE_BENCH_HELD, default 10000; each needs a socket on both sides, so
//! the open-file limit bounds it), and over HTTP/2, 200 requests per connection, as a
//! multiplexing proxy or client sends them (GREENSCALE_BENCH_HELD_H2, default 100000).

mod common;

use std::time::{Duration, Instant};

use greenscale_testkit::RedisServer;

/// Requests a connection carries over HTTP/2: the gateway's limit of concurrent streams.
const STREAMS_PER_CONNECTION: usize = 200;

#[tokio::main]
async fn main() {
    let held = count("GREENSCALE_BENCH_HELD", 10_000);
    let held_h2 = count("GREENSCALE_BENCH_HELD_H2", 100_000);
    // The gateway and this client each hold a socket per HTTP/1.1 request.
    let limit = open_file_limit();
    assert!(
        held + 200 <= limit,
        "cannot hold {held} requests over HTTP/1.1: the open-file limit is {limit} (bench/run \
         raises it where the hard limit allows; `ulimit -Hn` shows that limit)"
    );
    println!("gateway holding requests while the pool is at zero");
    let h1 = hold(held, Protocol::Http1).await;
    let h2 = hold(held_h2, Protocol::Http2).await;
    println!(
        "  target <= 12 KB per held request (<= 120 MB for 10,000) over HTTP/1.1: {}; \
         {held_h2} held over HTTP/2: {}; all complete: {}",
        common::verdict(h1.per_request_kb <= 12.0),
        common::verdict(h2.completed == held_h2),
        common::verdict(h1.completed == held && h2.completed == held_h2)
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Http1,
    Http2,
}

/// What one phase measured.
struct Held {
    per_request_kb: f64,
    completed: usize,
}

/// Holds `n` requests on a fresh gateway, measures it, then starts a worker and counts the
/// answers.
async fn hold(n: usize, protocol: Protocol) -> Held {
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let (_model, model_url) = common::demo_model();
    let (gateway, port) = common::gateway(
        &redis.url(),
        &["--max-pending", "10000000", "--wait-deadline", "900s"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = gateway.rss_kib() as f64 / 1024.0;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "held"}]});
    // HTTP/1.1: a client (so a connection) per request; HTTP/2: one per 200 requests.
    let per_client = match protocol {
        Protocol::Http1 => 1,
        Protocol::Http2 => STREAMS_PER_CONNECTION,
    };
    let mut tasks = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(per_client) {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(900));
        if protocol == Protocol::Http2 {
            builder = builder.http2_prior_knowledge();
        }
        let client = builder.build().expect("client");
        for _ in 0..per_client.min(n - chunk * per_client) {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                match client.post(&url).json(&body).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }));
        }
    }
    let queue_url = format!("http://127.0.0.1:{port}/v1/queue");
    let probe = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let pending = match probe.get(&queue_url).send().await {
            Ok(r) => pending_of(r).await.unwrap_or(0),
            Err(_) => 0,
        };
        if pending >= n as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "the requests did not all arrive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held_rss = gateway.rss_kib() as f64 / 1024.0;
    let peak_rss = gateway.peak_rss_kib() as f64 / 1024.0;
    let started = Instant::now();
    let worker = common::worker(&redis.url(), &model_url, "bench", &["--concurrency", "256"]);
    let mut completed = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            completed += 1;
        }
    }
    let drain = started.elapsed().as_secs_f64();
    worker.stop();
    let per_request_kb = (held_rss - idle_rss) * 1024.0 / n as f64;
    let (name, connections) = match protocol {
        Protocol::Http1 => ("HTTP/1.1", n),
        Protocol::Http2 => ("HTTP/2", n.div_ceil(STREAMS_PER_CONNECTION)),
    };
    println!("  {name}: {n} requests held on {connections} connections");
    println!("    idle gateway: RSS {idle_rss:.1} MB");
    println!(
        "    held: RSS {held_rss:.1} MB ({per_request_kb:.1} KB per held request); peak RSS \
         while they arrived {peak_rss:.1} MB"
    );
    println!("    after a worker started: {completed}/{n} completed in {drain:.1} s");
    Held {
        per_request_kb,
        completed,
    }
}

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

/// Reads `pending` from a `/v1/queue` answer.
async fn pending_of(r: reqwest::Response) -> Option<u64> {
    let v: serde_json::Value = r.json().await.ok()?;
    v["pending"].as_u64()
}
