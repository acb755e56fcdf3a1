//! What tenants and priority classes cost: end-to-end jobs/s and warm dispatch latency
//! through Redis and one `greenscale worker`, with every job of one tenant in one class
//! (one FIFO, as the prototype) next to the same jobs spread over 8 tenants of different
//! weights in 2 classes, in the same run. Jobs are stored as the gateway stores them.
//! Jobs: GREENSCALE_BENCH_JOBS (default 20000); latency samples: GREENSCALE_BENCH_SAMPLES
//! (default 500). Throughput is measured in three alternating rounds; the medians are
//! compared.

mod common;

use std::time::{Duration, Instant};

use common::{dispatch_samples, recording_model};
use greenscale_core::{
    Admin, JobSpec, Priority, Producer, QueueConfig, Reader, TenantSettings, Tenants,
};
use greenscale_queue::RedisQueue;
use greenscale_testkit::RedisServer;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Job `i` of a run: one tenant and class, or one of 8 tenants and 2 classes.
fn job(i: usize, mixed: bool, prompt: String) -> JobSpec {
    let mut spec = JobSpec::from_prompt(prompt);
    if mixed {
        spec.tenant = Some(format!("tenant-{}", i % 8));
        spec.priority = Some(if i.is_multiple_of(3) {
            Priority::BATCH
        } else {
            Priority::INTERACTIVE
        });
    }
    spec
}

/// A queue on its own list, with 8 tenants of weights 1 to 4 configured when `mixed`.
async fn queue(redis: &RedisServer, list: &str, mixed: bool) -> RedisQueue {
    let q = RedisQueue::connect(&redis.url(), list, QueueConfig::default()).unwrap();
    q.ping().await.unwrap();
    if mixed {
        let tenants: Tenants = (0..8)
            .map(|t| {
                let settings = TenantSettings {
                    weight: 1.0 + (t % 4) as f64,
                    ..TenantSettings::default()
                };
                (format!("tenant-{t}"), settings)
            })
            .collect();
        q.set_tenants(&tenants).await.unwrap();
    }
    q
}

/// Jobs/s of `jobs` stored first, then run by a worker of concurrency 64.
async fn throughput(
    redis: &RedisServer,
    model_url: &str,
    list: &str,
    jobs: usize,
    mixed: bool,
) -> f64 {
    let q = queue(redis, list, mixed).await;
    for i in 0..jobs {
        q.enqueue(job(i, mixed, format!("{list}-{i}")))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let worker = common::worker(
        &redis.url(),
        model_url,
        &format!("{list}-worker"),
        &["--list", list, "--concurrency", "64"],
    );
    loop {
        let done = q
            .counters()
            .await
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == "succeeded")
            .map_or(0, |(_, v)| v);
        if done as usize >= jobs {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "run stalled at {done}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    worker.stop();
    rate
}

/// Warm dispatch latency (enqueue → the model receives the request) in ms, p50 and p99.
async fn dispatch(redis: &RedisServer, list: &str, samples: usize, mixed: bool) -> (f64, f64) {
    let (model_url, mut arrivals) = recording_model().await;
    let q = queue(redis, list, mixed).await;
    let worker = common::worker(
        &redis.url(),
        &model_url,
        &format!("{list}-worker"),
        &["--list", list, "--concurrency", "4"],
    );
    let mut i = 0;
    let mut ms = dispatch_samples(&mut arrivals, list, samples, |p| {
        i += 1;
        let spec = job(i, mixed, p);
        let q = &q;
        async move {
            q.enqueue(spec).await.unwrap();
        }
    })
    .await;
    worker.stop();
    ms.sort_by(f64::total_cmp);
    (common::quantile(&ms, 0.5), common::quantile(&ms, 0.99))
}

#[tokio::main]
async fn main() {
    let jobs = env_or("GREENSCALE_BENCH_JOBS", 20_000);
    let samples = env_or("GREENSCALE_BENCH_SAMPLES", 500);
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let (_model, model_url) = common::demo_model();
    println!("tenants and classes against one FIFO: Redis, one worker, the demo model");

    // Three rounds, alternating, and the median of each: the machine is shared and noisy.
    let (mut fifo, mut mixed) = (Vec::new(), Vec::new());
    for round in 0..3 {
        fifo.push(throughput(&redis, &model_url, &format!("fifo-{round}"), jobs, false).await);
        mixed.push(throughput(&redis, &model_url, &format!("mixed-{round}"), jobs, true).await);
    }
    println!("  rounds, jobs/s: one FIFO {fifo:.0?}; 8 tenants x 2 classes {mixed:.0?}");
    fifo.sort_by(f64::total_cmp);
    mixed.sort_by(f64::total_cmp);
    let (fifo_rate, mixed_rate) = (fifo[1], mixed[1]);
    let (fifo_p50, fifo_p99) = dispatch(&redis, "fifo-d", samples, false).await;
    let (mixed_p50, mixed_p99) = dispatch(&redis, "mixed-d", samples, true).await;

    println!(
        "  end to end ({jobs} jobs, concurrency 64, median of 3): one FIFO {fifo_rate:.0} jobs/s; \
         8 tenants x 2 classes {mixed_rate:.0} jobs/s; ratio {:.2}",
        mixed_rate / fifo_rate
    );
    println!(
        "  warm dispatch ({samples} samples): one FIFO p50 {fifo_p50:.3} ms, p99 {fifo_p99:.3} ms; \
         8 tenants x 2 classes p50 {mixed_p50:.3} ms, p99 {mixed_p99:.3} ms; p50 ratio {:.2}",
        mixed_p50 / fifo_p50
    );
    println!(
        "  target jobs/s within 10 %: {}; target dispatch p50 within 10 %: {}",
        common::verdict(mixed_rate >= 0.9 * fifo_rate),
        common::verdict(mixed_p50 <= 1.1 * fifo_p50)
    );
}
