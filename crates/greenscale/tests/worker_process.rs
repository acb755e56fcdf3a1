//! The `greenscale worker` process under faults: killed, stopped, Redis restarted.
//! Each test starts its own redis-server and demo model.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use greenscale_testkit::RedisServer;
use redis::Commands;

mod common;
use common::{DemoModel, Process, demo_model, wait_until};

fn worker(
    redis: &RedisServer,
    model: &DemoModel,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Process {
    Process::worker(dir, name, &redis.url(), &model.url, extra)
}

fn record(c: &mut redis::Connection, id: &str) -> HashMap<String, String> {
    c.hgetall(format!("greenscale:job:{id}")).unwrap()
}

fn succeeded_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("job succeeded"))
        .filter_map(|l| {
            let start = l.find("job_id=")? + "job_id=".len();
            let value = l[start..].split_whitespace().next()?;
            Some(value.trim_matches('"').to_string())
        })
        .collect()
}

#[test]
fn prototype_contract_with_redis_cli() {
    let redis = RedisServer::start();
    let model = demo_model(0.0);
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(&redis, &model, dir.path(), "w1", &[]);
    let port = redis.port().to_string();
    let pushed = Command::new("redis-cli")
        .args([
            "-p",
            &port,
            "LPUSH",
            "jobs",
            r#"{"job_id":"test-001","prompt":"What is 2+2?"}"#,
        ])
        .output()
        .expect("redis-cli is installed with redis-server");
    assert!(pushed.status.success());
    let mut answer = String::new();
    wait_until("result:test-001", Duration::from_secs(10), || {
        let out = Command::new("redis-cli")
            .args(["-p", &port, "GET", "result:test-001"])
            .output()
            .unwrap();
        answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        !answer.is_empty()
    });
    assert!(
        answer.starts_with("[demo]"),
        "answer text, not JSON or an error: {answer}"
    );
}

#[test]
fn prototype_environment_variables_still_work() {
    let redis = RedisServer::start();
    let model = demo_model(0.0);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("env.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_greenscale"))
        .arg("worker")
        .env("REDIS_HOST", "127.0.0.1")
        .env("REDIS_PORT", redis.port().to_string())
        .env("NEYSA_API_URL", format!("{}/chat/completions", model.url))
        .env("NEYSA_API_KEY", "sk-very-secret-key")
        .env_remove("REDIS_URL")
        .env_remove("GREENSCALE_MODEL_URL")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut c = redis.connection();
    let _: i64 = c
        .lpush("jobs", r#"{"job_id":"env-1","prompt":"hi"}"#)
        .unwrap();
    wait_until("result:env-1", Duration::from_secs(10), || {
        c.exists("result:env-1").unwrap()
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("sk-very-secret-key"),
        "the API key must never be logged"
    );
}

#[test]
fn sigkilled_worker_job_completes_once_through_another_worker() {
    let redis = RedisServer::start();
    // About 30 tokens at 15 tokens/s: a job runs for ~2 s.
    let model = demo_model(15.0);
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.connection();
    let mut w1 = worker(&redis, &model, dir.path(), "w1", &["--lease", "1s"]);
    let _: i64 = c
        .lpush("jobs", r#"{"job_id":"slow-1","prompt":"take your time"}"#)
        .unwrap();
    wait_until("job running on w1", Duration::from_secs(10), || {
        record(&mut c, "slow-1").get("status").map(String::as_str) == Some("running")
    });
    w1.signal("KILL");
    w1.wait_exit(Duration::from_secs(5));
    let w2 = worker(&redis, &model, dir.path(), "w2", &["--lease", "1s"]);
    wait_until("job succeeded", Duration::from_secs(20), || {
        record(&mut c, "slow-1").get("status").map(String::as_str) == Some("succeeded")
    });
    let rec = record(&mut c, "slow-1");
    assert_eq!(rec["attempts"], "2");
    assert_eq!(rec["worker_id"], "w2");
    assert_eq!(succeeded_lines(&w2.log()), vec!["slow-1".to_string()]);
    assert!(succeeded_lines(&w1.log()).is_empty());
}

#[test]
fn no_job_is_lost_over_500_jobs_with_repeated_kills() {
    let redis = RedisServer::start();
    let model = demo_model(40.0);
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.connection();
    let total = 500;
    for i in 0..total {
        let entry = format!(r#"{{"job_id":"chaos-{i}","prompt":"chaos job {i}"}}"#);
        let _: i64 = c.lpush("jobs", entry).unwrap();
    }
    let args = ["--lease", "1s", "--concurrency", "16"];
    let mut logs = Vec::new();
    let mut workers: Vec<Process> = (0..3)
        .map(|i| worker(&redis, &model, dir.path(), &format!("w{i}"), &args))
        .collect();
    let mut next = workers.len();
    let mut kills = 0;
    let done = |c: &mut redis::Connection| -> usize {
        (0..total)
            .filter(|i| c.exists(format!("result:chaos-{i}")).unwrap())
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while done(&mut c) < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} jobs finished",
            done(&mut c)
        );
        std::thread::sleep(Duration::from_millis(400));
        if kills < 8 {
            let mut victim = workers.remove(0);
            victim.signal("KILL");
            victim.wait_exit(Duration::from_secs(5));
            logs.push(victim.log());
            kills += 1;
            workers.push(worker(
                &redis,
                &model,
                dir.path(),
                &format!("w{next}"),
                &args,
            ));
            next += 1;
        }
    }
    for mut w in workers {
        w.signal("TERM");
        assert!(w.wait_exit(Duration::from_secs(30)).success());
        logs.push(w.log());
    }
    assert_eq!(kills, 8);
    // Every job has one record, succeeded, with its answer; no answer was recorded twice.
    let mut completions: HashMap<String, usize> = HashMap::new();
    for log in &logs {
        for id in succeeded_lines(log) {
            *completions.entry(id).or_default() += 1;
        }
    }
    for i in 0..total {
        let id = format!("chaos-{i}");
        let rec = record(&mut c, &id);
        assert_eq!(
            rec.get("status").map(String::as_str),
            Some("succeeded"),
            "{id}: {rec:?}"
        );
        // A worker killed right after recording an answer may not have logged it, so the
        // logs can show 0 completions for a succeeded job; they must never show 2.
        assert!(
            completions.get(&id).copied().unwrap_or(0) <= 1,
            "{id} completed {:?} times",
            completions.get(&id)
        );
    }
    let pending: i64 = c.llen("jobs").unwrap();
    let dead: i64 = c.llen("greenscale:jobs:dead").unwrap();
    assert_eq!((pending, dead), (0, 0));
}

#[test]
fn sigterm_lets_the_running_job_finish_and_exits_zero() {
    let redis = RedisServer::start();
    let model = demo_model(15.0);
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.connection();
    let mut w = worker(&redis, &model, dir.path(), "w1", &["--grace", "20s"]);
    let _: i64 = c
        .lpush("jobs", r#"{"job_id":"term-1","prompt":"finish me"}"#)
        .unwrap();
    let _: i64 = c
        .lpush("jobs", r#"{"job_id":"term-2","prompt":"second"}"#)
        .unwrap();
    wait_until("job running", Duration::from_secs(10), || {
        record(&mut c, "term-1").get("status").map(String::as_str) == Some("running")
    });
    w.signal("TERM");
    let status = w.wait_exit(Duration::from_secs(25));
    assert!(status.success(), "worker exit status {status:?}");
    assert_eq!(record(&mut c, "term-1")["status"], "succeeded");
    // Whatever it had not started is still there for the next worker.
    let rec2 = record(&mut c, "term-2");
    let st = rec2.get("status").map(String::as_str);
    assert!(
        st == Some("succeeded") || c.llen::<_, i64>("jobs").unwrap() == 1,
        "{rec2:?}"
    );
}

#[test]
fn sigterm_past_the_grace_period_hands_the_job_back() {
    let redis = RedisServer::start();
    let model = demo_model(5.0);
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.connection();
    let mut w = worker(&redis, &model, dir.path(), "w1", &["--grace", "300ms"]);
    let _: i64 = c
        .lpush("jobs", r#"{"job_id":"long-1","prompt":"too long"}"#)
        .unwrap();
    wait_until("job running", Duration::from_secs(10), || {
        record(&mut c, "long-1").get("status").map(String::as_str) == Some("running")
    });
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(10)).success());
    let rec = record(&mut c, "long-1");
    assert_eq!(rec["status"], "queued");
    assert_eq!(rec["attempts"], "0");
    let pending: Vec<String> = c.lrange("jobs", 0, -1).unwrap();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].contains("long-1"));
    assert!(w.log().contains("handed back"));
}

#[test]
fn redis_restart_with_aof_loses_nothing() {
    let mut redis = RedisServer::start();
    let model = demo_model(100.0);
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.connection();
    let total = 60;
    for i in 0..total {
        let _: i64 = c
            .lpush(
                "jobs",
                format!(r#"{{"job_id":"r-{i}","prompt":"restart {i}"}}"#),
            )
            .unwrap();
    }
    let mut w = worker(&redis, &model, dir.path(), "w1", &["--concurrency", "4"]);
    wait_until("some jobs done", Duration::from_secs(20), || {
        (0..total).any(|i| c.exists(format!("result:r-{i}")).unwrap())
    });
    redis.restart();
    let mut c = redis.connection();
    let before_restart_done = (0..total)
        .filter(|i| c.exists(format!("result:r-{i}")).unwrap())
        .count();
    assert!(
        before_restart_done < total,
        "the restart happened while jobs were still queued"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..total).all(|i| c.exists(format!("result:r-{i}")).unwrap()) {
        if Instant::now() > deadline {
            let mut missing = Vec::new();
            for i in 0..total {
                if !c.exists::<_, bool>(format!("result:r-{i}")).unwrap() {
                    missing.push(format!("r-{i}: {:?}", record(&mut c, &format!("r-{i}"))));
                }
            }
            let inflight: Vec<String> = c.lrange("greenscale:jobs:inflight:w1", 0, -1).unwrap();
            panic!(
                "jobs not done after the restart: {missing:?}\nin flight: {inflight:?}\nworker log:\n{}",
                w.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    w.signal("TERM");
    assert!(w.wait_exit(Duration::from_secs(30)).success());
    for i in 0..total {
        assert_eq!(record(&mut c, &format!("r-{i}"))["status"], "succeeded");
    }
}
