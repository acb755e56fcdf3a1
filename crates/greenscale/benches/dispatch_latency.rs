//! Warm dispatch latency: from the moment a job is enqueued to the moment the model
//! receives its request, with an idle worker waiting. GreenScale's worker next to two
//! Python BLPOP loops of the prototype's design (as the prototype wrote it, and tuned: a
//! kept-alive connection, streamed), same Redis, same stand-in model, same run.
//! Samples: GREENSCALE_BENCH_SAMPLES (default 1000) each.

mod common;

use common::{Style, dispatch_samples, recording_model};
use greenscale_core::{JobSpec, Producer, QueueConfig};
use greenscale_queue::RedisQueue;
use greenscale_testkit::RedisServer;

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
    let gs = dispatch_samples(&mut arrivals, "gs", samples, |p| {
        let queue = &queue;
        async move {
            queue.enqueue(JobSpec::from_prompt(p)).await.unwrap();
        }
    })
    .await;
    worker.stop();

    let client = redis::Client::open(redis.url()).unwrap();
    let c = client.get_multiplexed_async_connection().await.unwrap();
    let mut baselines = Vec::new();
    for style in Style::BOTH {
        let baseline = common::baseline_worker(redis.port(), &model_url, "baseline", 30.0, style);
        let prefix = format!("py-{}", baselines.len());
        let py = dispatch_samples(&mut arrivals, &prefix, samples, |p| {
            let mut c = c.clone();
            async move {
                redis::cmd("LPUSH")
                    .arg("baseline")
                    .arg(format!(r#"{{"job_id":"{p}","prompt":"{p}"}}"#))
                    .query_async::<i64>(&mut c)
                    .await
                    .unwrap();
            }
        })
        .await;
        baseline.stop();
        baselines.push((style, py));
    }

    println!(
        "warm dispatch latency: enqueue -> the model receives the request, idle worker waiting"
    );
    let (p50, p99) = summary("greenscale worker", gs);
    for (style, py) in baselines {
        let (py50, py99) = summary(style.label(), py);
        println!(
            "    ratio ({} / greenscale): p50 {:.2}x, p99 {:.2}x",
            style.label(),
            py50 / p50,
            py99 / p99
        );
    }
    println!(
        "  target p50 <= 1 ms: {}; target p99 <= 5 ms: {}",
        common::verdict(p50 <= 1.0),
        common::verdict(p99 <= 5.0)
    );
}
