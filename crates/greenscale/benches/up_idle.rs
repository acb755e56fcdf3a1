//! Idle footprint of `greenscale up` with its pool at zero (gateway, SQLite queue,
//! autoscaler; no model server), next to what the prototype keeps running while idle on
//! one machine: Redis and the Python worker waiting on it.

mod common;

use std::time::Duration;

use greenscale_testkit::RedisServer;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let port = greenscale_testkit::free_port();
    let up = common::Proc(
        common::greenscale()
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .spawn()
            .expect("spawn up"),
    );
    common::wait_for_port(port);
    let redis = RedisServer::start();
    let (_model, model_url) = common::demo_model();
    let baseline = common::baseline_worker(
        redis.port(),
        &model_url,
        "baseline",
        3600.0,
        common::Style::Prototype,
    );
    std::thread::sleep(Duration::from_secs(3));
    let cpu_before = up.cpu_time();
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let cpu = (up.cpu_time() - cpu_before).as_secs_f64() / window.as_secs_f64() * 100.0;
    let gs = up.rss_kib() as f64 / 1024.0;
    let py = baseline.rss_kib() as f64 / 1024.0;
    let redis_mb = common::rss_kib(redis.pid().expect("redis runs")) as f64 / 1024.0;
    up.stop();
    baseline.stop();
    println!("idle footprint, every pool at zero");
    println!(
        "  greenscale up (gateway + SQLite queue + autoscaler): RSS {gs:.1} MB, CPU {cpu:.2} % of one core over {} s",
        window.as_secs()
    );
    println!(
        "  prototype on one machine (Redis + Python worker): RSS {:.1} MB ({redis_mb:.1} + {py:.1})",
        redis_mb + py
    );
    println!(
        "  ratio (prototype / greenscale): {:.1}x",
        (redis_mb + py) / gs
    );
    println!("  target RSS <= 40 MB: {}", common::verdict(gs <= 40.0));
    println!("  target CPU <= 1 %: {}", common::verdict(cpu <= 1.0));
}
