//! Resident memory of an idle worker (connected, waiting for jobs), next to the
//! prototype-design Python worker waiting on the same Redis.

mod common;

use std::time::Duration;

use greenscale_testkit::RedisServer;

fn main() {
    let redis = RedisServer::start();
    let (_model, model_url) = common::demo_model();
    let worker = common::worker(&redis.url(), &model_url, "idle", &[]);
    let baseline = common::baseline_worker(
        redis.port(),
        &model_url,
        "baseline",
        3600.0,
        common::Style::Prototype,
    );
    std::thread::sleep(Duration::from_secs(3));
    let cpu_before = worker.cpu_time();
    std::thread::sleep(Duration::from_secs(5));
    let cpu = (worker.cpu_time() - cpu_before).as_secs_f64() / 5.0 * 100.0;
    let gs = worker.rss_kib() as f64 / 1024.0;
    let py = baseline.rss_kib() as f64 / 1024.0;
    worker.stop();
    baseline.stop();
    println!("idle worker footprint (connected to Redis, no jobs)");
    println!("  greenscale worker: RSS {gs:.1} MB, CPU {cpu:.2} % of one core over 5 s");
    println!("  prototype design (Python redis-py + requests): RSS {py:.1} MB");
    println!("  ratio (prototype / greenscale): {:.1}x", py / gs);
    println!("  target <= 15 MB: {}", common::verdict(gs <= 15.0));
}
