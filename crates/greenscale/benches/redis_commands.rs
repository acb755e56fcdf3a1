//! Redis work per job: prototype-style jobs (`LPUSH jobs`) through one `greenscale worker`
//! (concurrency 16) against the demo model, counted from Redis's own `INFO commandstats`
//! (reset after the jobs are pushed). Commands run inside scripts are counted by Redis as
//! well as the script calls themselves, so "commands per job" is everything Redis executed,
//! and "script calls per job" the round trips that ran scripts.
//! Jobs: GREENSCALE_BENCH_JOBS (default 2000).

mod common;

use std::time::Duration;

use greenscale_testkit::RedisServer;
use redis::Commands;

fn main() {
    let jobs: usize = std::env::var("GREENSCALE_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let redis = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let mut c = redis.connection();
    let (_model, model_url) = common::demo_model();
    let mut pipe = redis::pipe();
    for i in 0..jobs {
        pipe.lpush(
            "jobs",
            format!(r#"{{"job_id":"rc-{i}","prompt":"count the commands {i}"}}"#),
        )
        .ignore();
    }
    pipe.query::<()>(&mut c).expect("push the jobs");
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut c)
        .unwrap();
    let worker = common::worker(&redis.url(), &model_url, "bench", &["--concurrency", "16"]);
    // This check's own LLEN calls, taken out of the count below (the lease script's are not).
    let mut own_llen = 0;
    loop {
        let pending: u64 = c.llen("jobs").unwrap();
        let held: u64 = c.llen("greenscale:jobs:inflight:bench").unwrap();
        own_llen += 2;
        if pending == 0 && held == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    worker.stop();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    // Lines such as `cmdstat_hset:calls=6000,usec=...`; this check's own calls left out.
    let mut counts: Vec<(String, u64)> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls: u64 = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            let calls = if name == "llen" {
                calls - own_llen
            } else {
                calls
            };
            (!matches!(name, "info" | "config|resetstat") && calls > 0)
                .then(|| (name.to_string(), calls))
        })
        .collect();
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let per_job = |n: u64| n as f64 / jobs as f64;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let scripts: u64 = counts
        .iter()
        .filter(|(name, _)| name.starts_with("eval"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "Redis work per job ({jobs} prototype-style jobs, one worker at concurrency 16, demo model)"
    );
    println!(
        "  commands executed per job, scripts' included: {:.1}; script calls per job: {:.2}",
        per_job(total),
        per_job(scripts)
    );
    let listed: Vec<String> = counts
        .iter()
        .filter(|(_, n)| per_job(*n) >= 0.05)
        .map(|(name, n)| format!("{} {:.2}", name.to_uppercase(), per_job(*n)))
        .collect();
    println!("  by command, per job: {}", listed.join(", "));
    println!(
        "  target <= 8 commands per job: {}",
        common::verdict(per_job(total) <= 8.0)
    );
}
