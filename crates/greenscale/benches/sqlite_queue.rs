//! The embedded SQLite queue, as `greenscale up` runs it: the queue and a worker in one
//! process (the worker runtime `up` gives each replica), the model a separate process.
//! Two figures, each next to the Redis figure of the same run:
//! - end-to-end throughput: jobs stored in the queue, then one worker at concurrency 64
//!   against the demo model with zero delay runs them all (GREENSCALE_BENCH_JOBS, default
//!   20000);
//! - warm dispatch latency: from a job's enqueue to the moment the model receives its
//!   request, an idle worker waiting (GREENSCALE_BENCH_SAMPLES, default 1000).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{dispatch_samples, recording_model};
use greenscale_core::{JobSpec, Queue, QueueConfig, WorkerQueue};
use greenscale_queue::{RedisQueue, SqliteQueue};
use greenscale_testkit::RedisServer;
use greenscale_worker::{OpenAiBackend, OpenAiConfig, WorkerConfig, run_worker};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A worker of this process on `queue`, calling `model_url`, until the returned sender is
/// dropped or sent to.
fn start_worker(
    queue: Arc<dyn WorkerQueue>,
    model_url: &str,
    concurrency: usize,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let backend = OpenAiBackend::new(OpenAiConfig {
        url: model_url.to_string(),
        ..OpenAiConfig::default()
    })
    .expect("backend");
    let mut config = WorkerConfig::new("bench", QueueConfig::default().lease);
    config.concurrency = concurrency;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run_worker(queue, Arc::new(backend), config, Arc::default(), async {
            let _ = stopped.await;
        })
        .await;
    });
    (stop, task)
}

/// Stores `jobs` jobs, runs them with one worker at concurrency 64; jobs per second.
async fn throughput(queue: Arc<dyn Queue>, model_url: &str, jobs: usize) -> f64 {
    for i in 0..jobs {
        queue
            .enqueue(JobSpec::from_prompt(format!("benchmark job {i}")))
            .await
            .expect("enqueue");
    }
    let started = Instant::now();
    let (stop, task) = start_worker(queue.clone(), model_url, 64);
    loop {
        let stats = queue.stats().await.expect("stats");
        if stats.pending == 0 && stats.in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    task.await.expect("worker");
    jobs as f64 / secs
}

/// Warm dispatch latency samples, ms.
async fn dispatch(queue: Arc<dyn Queue>, label: &str, samples: usize) -> Vec<f64> {
    let (model_url, mut arrivals) = recording_model().await;
    let (stop, task) = start_worker(queue.clone(), &model_url, 4);
    let ms = dispatch_samples(&mut arrivals, label, samples, |p| {
        let queue = queue.clone();
        async move {
            queue.enqueue(JobSpec::from_prompt(p)).await.unwrap();
        }
    })
    .await;
    let _ = stop.send(());
    task.await.expect("worker");
    ms
}

fn p50_p99(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (common::quantile(&ms, 0.5), common::quantile(&ms, 0.99))
}

#[tokio::main]
async fn main() {
    let jobs = env_or("GREENSCALE_BENCH_JOBS", 20_000);
    let samples = env_or("GREENSCALE_BENCH_SAMPLES", 1000);
    let (_model, model_url) = common::demo_model();
    let dir = tempfile::tempdir().expect("temp dir");
    let open_sqlite = |name: &str| -> Arc<dyn Queue> {
        Arc::new(
            SqliteQueue::open(
                &dir.path().join(format!("{name}.db")),
                "jobs",
                QueueConfig::default(),
            )
            .expect("open SQLite"),
        )
    };
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let open_redis = |list: &str| -> Arc<dyn Queue> {
        Arc::new(RedisQueue::connect(&redis.url(), list, QueueConfig::default()).expect("Redis"))
    };

    let sqlite_rate = throughput(open_sqlite("throughput"), &model_url, jobs).await;
    let redis_rate = throughput(open_redis("throughput"), &model_url, jobs).await;
    let (s50, s99) = p50_p99(dispatch(open_sqlite("dispatch"), "sqlite", samples).await);
    let (r50, r99) = p50_p99(dispatch(open_redis("dispatch"), "redis", samples).await);

    println!("embedded SQLite queue (as under greenscale up), worker in the same process");
    println!(
        "  throughput, {jobs} jobs, concurrency 64, demo model with zero delay: SQLite {sqlite_rate:.0} jobs/s, Redis {redis_rate:.0} jobs/s (SQLite / Redis {:.2}x)",
        sqlite_rate / redis_rate
    );
    println!(
        "  warm dispatch, enqueue -> the model receives the request ({samples} samples): SQLite p50 {s50:.3} ms, p99 {s99:.3} ms; Redis p50 {r50:.3} ms, p99 {r99:.3} ms"
    );
    println!(
        "  target dispatch p50 <= 1 ms and p99 <= 5 ms on SQLite: {}",
        common::verdict(s50 <= 1.0 && s99 <= 5.0)
    );
}
