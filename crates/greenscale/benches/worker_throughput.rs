//! End-to-end throughput: jobs through Redis and one `greenscale worker` (concurrency 64)
//! against the demo model with zero delay, next to two Python loops of the prototype's
//! design (redis-py BLPOP/SET calling the same demo model): as the prototype wrote it, and
//! as well as it can be written (kept-alive connection, streamed), in the same run.
//! Jobs: GREENSCALE_BENCH_JOBS (default 100000); baseline: GREENSCALE_BENCH_BASELINE_JOBS
//! (default 5000).

mod common;

use std::time::{Duration, Instant};

use common::Style;
use greenscale_testkit::RedisServer;
use redis::Commands;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn preload(c: &mut redis::Connection, list: &str, prefix: &str, n: usize) {
    for start in (0..n).step_by(1000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 1000).min(n) {
            pipe.lpush(
                list,
                format!(r#"{{"job_id":"{prefix}-{i}","prompt":"benchmark job {i}"}}"#),
            )
            .ignore();
        }
        pipe.query::<()>(c).expect("preload");
    }
}

fn results_present(c: &mut redis::Connection, prefix: &str, n: usize) -> usize {
    let mut present = 0;
    for start in (0..n).step_by(1000) {
        let mut pipe = redis::pipe();
        for i in start..(start + 1000).min(n) {
            pipe.exists(format!("result:{prefix}-{i}"));
        }
        let found: Vec<bool> = pipe.query(c).expect("check results");
        present += found.into_iter().filter(|f| *f).count();
    }
    present
}

fn main() {
    let jobs = env_or("GREENSCALE_BENCH_JOBS", 100_000);
    let baseline_jobs = env_or("GREENSCALE_BENCH_BASELINE_JOBS", 5_000);
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let mut c = redis.connection();
    let (_model, model_url) = common::demo_model();

    preload(&mut c, "jobs", "gs", jobs);
    let started = Instant::now();
    let worker = common::worker(&redis.url(), &model_url, "bench", &["--concurrency", "64"]);
    loop {
        let pending: u64 = c.llen("jobs").unwrap();
        let held: u64 = c.llen("greenscale:jobs:inflight:bench").unwrap();
        if pending == 0 && held == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let gs_secs = started.elapsed().as_secs_f64();
    let worker_rss = worker.rss_kib();
    worker.stop();
    let gs_done = results_present(&mut c, "gs", jobs);
    assert_eq!(gs_done, jobs, "every job must have its answer");

    let mut baselines = Vec::new();
    for style in Style::BOTH {
        let (list, prefix) = ("baseline", format!("py-{}", baselines.len()));
        preload(&mut c, list, &prefix, baseline_jobs);
        let started = Instant::now();
        let baseline = common::baseline_worker(redis.port(), &model_url, list, 2.0, style);
        while results_present(&mut c, &prefix, baseline_jobs) < baseline_jobs {
            std::thread::sleep(Duration::from_millis(20));
        }
        let secs = started.elapsed().as_secs_f64();
        baseline.stop();
        baselines.push((style, secs));
    }

    let gs_rate = jobs as f64 / gs_secs;
    println!(
        "worker throughput (demo model, zero delay, Redis AOF everysec, 2 cores shared by all processes)"
    );
    println!(
        "  greenscale worker, concurrency 64: {jobs} jobs in {gs_secs:.2} s = {gs_rate:.0} jobs/s (worker RSS at end {:.1} MB)",
        worker_rss as f64 / 1024.0
    );
    let mut ratios = Vec::new();
    for (style, secs) in &baselines {
        let rate = baseline_jobs as f64 / secs;
        println!(
            "  {}: {baseline_jobs} jobs in {secs:.2} s = {rate:.0} jobs/s; greenscale is {:.1}x",
            style.label(),
            gs_rate / rate
        );
        ratios.push(gs_rate / rate);
    }
    println!(
        "  target >= 10000 jobs/s: {}; target >= 10x the prototype design: {}",
        common::verdict(gs_rate >= 10_000.0),
        common::verdict(ratios[0] >= 10.0)
    );
}
