//! Warm dispatch latency: from the moment a job is enqueued to the moment the model
//! receives its request, with an idle worker waiting. GreenScale's worker next to the
//! prototype's design (Python BLPOP loop), same Redis, same stand-in model, same run.
//! Samples: GREENSCALE_BENCH_SAMPLES (default 1000) each.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use greenscale_core::{JobSpec, Producer, QueueConfig};
use greenscale_queue::RedisQueue;
use greenscale_testkit::RedisServer;
use tokio::sync::mpsc;

type Arrivals = mpsc::UnboundedReceiver<(String, Instant)>;

/// A model that notes when each request arrives (keyed by its prompt) and answers at once.
async fn recording_model() -> (String, Arrivals) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Arc::new(tx);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: String| {
            let at = Instant::now();
            let tx = tx.clone();
            async move {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let prompt = v["messages"][0]["content"].as_str().unwrap_or("").to_string();
                let _ = tx.send((prompt, at));
                axum::Json(serde_json::json!({
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn wait_arrival(rx: &mut Arrivals, prompt: &str) -> Instant {
    loop {
        let (p, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the model got the request within 10 s")
            .expect("model alive");
        if p == prompt {
            return at;
        }
    }
}

fn summary(name: &str, mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (common::quantile(&ms, 0.5), common::quantile(&ms, 0.99));
    println!(
        "  {name}: p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms ({} samples)",
        ms.last().unwrap(),
        ms.len()
    );
    (p50, p99)
}

#[tokio::main]
async fn main() {
    let samples: usize = std::env::var("GREENSCALE_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let (model_url, mut arrivals) = recording_model().await;
    let queue = RedisQueue::connect(&redis.url(), "jobs", QueueConfig::default()).unwrap();
    queue.ping().await.unwrap();

    let worker = common::worker(&redis.url(), &model_url, "bench", &["--concurrency", "4"]);
    // Warm up: the worker connects and the first job pays for connection set-up.
    for i in 0..20 {
        let p = format!("warm-{i}");
        queue.enqueue(JobSpec::from_prompt(&p)).await.unwrap();
        wait_arrival(&mut arrivals, &p).await;
    }
    let mut gs = Vec::with_capacity(samples);
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let p = format!("gs-{i}");
        let t0 = Instant::now();
        queue.enqueue(JobSpec::from_prompt(&p)).await.unwrap();
        gs.push((wait_arrival(&mut arrivals, &p).await - t0).as_secs_f64() * 1000.0);
    }
    worker.stop();

    let baseline = common::baseline_worker(redis.port(), &model_url, "baseline", 30.0);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let push = |c: &mut redis::aio::MultiplexedConnection, p: String| {
        let mut c = c.clone();
        async move {
            redis::cmd("LPUSH")
                .arg("baseline")
                .arg(format!(r#"{{"job_id":"{p}","prompt":"{p}"}}"#))
                .query_async::<i64>(&mut c)
                .await
                .unwrap();
        }
    };
    for i in 0..20 {
        let p = format!("pywarm-{i}");
        push(&mut c, p.clone()).await;
        wait_arrival(&mut arrivals, &p).await;
    }
    let mut py = Vec::with_capacity(samples);
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let p = format!("py-{i}");
        let t0 = Instant::now();
        push(&mut c, p.clone()).await;
        py.push((wait_arrival(&mut arrivals, &p).await - t0).as_secs_f64() * 1000.0);
    }
    baseline.stop();

    println!(
        "warm dispatch latency: enqueue -> the model receives the request, idle worker waiting"
    );
    let (p50, p99) = summary("greenscale worker", gs);
    let (py50, py99) = summary("prototype design (Python BLPOP)", py);
    println!(
        "  ratio (prototype / greenscale): p50 {:.2}x, p99 {:.2}x",
        py50 / p50,
        py99 / p99
    );
    println!(
        "  target p50 <= 1 ms: {}; target p99 <= 5 ms: {}",
        common::verdict(p50 <= 1.0),
        common::verdict(p99 <= 5.0)
    );
}
