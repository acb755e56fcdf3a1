//! What only the Redis backend promises (the prototype's `result:{id}` key, surviving a
//! Redis restart); the shared promises are in `conformance.rs`.

use std::time::Duration;

use greenscale_core::{
    Completion, Consumer, Finished, JobSpec, JobStatus, Outcome, Producer, QueueConfig, Reader,
    Usage,
};
use greenscale_queue::RedisQueue;
use greenscale_testkit::RedisServer;
use redis::Commands;

fn queue(server: &RedisServer, config: QueueConfig) -> RedisQueue {
    RedisQueue::connect(&server.url(), "jobs", config).unwrap()
}

fn success(text: &str) -> Outcome {
    Outcome::Succeeded(Completion {
        text: text.into(),
        usage: Usage {
            prompt_tokens: 4,
            completion_tokens: 2,
        },
        ttft_ms: Some(5),
    })
}

#[tokio::test]
/// The prototype's `result:{id}` string (the job record itself is checked, for both
/// backends, in `conformance.rs`).
async fn prototype_result_key_holds_the_answer() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let mut c = server.connection();
    let _: i64 = c
        .lpush("jobs", r#"{"job_id":"test-001","prompt":"What is 2+2?"}"#)
        .unwrap();
    let jobs = q.lease("w1", 4, Duration::from_millis(200)).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].spec.job_id, "test-001");
    assert_eq!(jobs[0].attempt, 1);
    let r = q.finish("w1", &jobs[0], success("4")).await.unwrap();
    assert_eq!(r, Finished::Succeeded);
    let answer: String = c.get("result:test-001").unwrap();
    assert_eq!(answer, "4");
    let ttl: i64 = c.ttl("result:test-001").unwrap();
    assert!(
        ttl > 23 * 3600,
        "result kept for the retention period, ttl {ttl}"
    );
}

#[tokio::test]
async fn redis_restart_loses_nothing() {
    let mut server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            q.enqueue(JobSpec::from_prompt(format!("j{i}")))
                .await
                .unwrap(),
        );
    }
    let held = q.lease("w1", 3, Duration::ZERO).await.unwrap();
    server.restart();
    // The connection comes back by itself; the held jobs can still be finished.
    let mut finished = 0;
    for job in &held {
        let mut tries = 0;
        loop {
            match q.finish("w1", job, success("ok")).await {
                Ok(_) => break,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 50, "queue did not reconnect: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        finished += 1;
    }
    let rest = q.lease("w1", 20, Duration::ZERO).await.unwrap();
    assert_eq!(finished + rest.len(), 10);
    for job in &rest {
        q.finish("w1", job, success("ok")).await.unwrap();
    }
    for id in &ids {
        assert_eq!(
            q.job(id).await.unwrap().unwrap().status,
            JobStatus::Succeeded
        );
    }
}

/// Every command Redis executed since the last `CONFIG RESETSTAT` (commands run inside
/// scripts included; this check's own `INFO` and `CONFIG RESETSTAT` left out), and how
/// many of them were script calls.
fn commands_executed(c: &mut redis::Connection) -> (u64, u64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    let (mut all, mut scripts) = (0, 0);
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls: u64 = rest
            .strip_prefix("calls=")
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        if matches!(name, "info" | "config|resetstat") {
            continue;
        }
        all += calls;
        if name.starts_with("eval") {
            scripts += calls;
        }
    }
    (all, scripts)
}

#[tokio::test]
/// What a prototype-style job (`LPUSH jobs`) costs Redis on its way through a worker that
/// leases and records outcomes 16 at a time, read from Redis's own `INFO commandstats`:
/// at most 8 commands executed per job, scripts' own included (before the lean path: 31 in
/// `bench/run redis_commands`; 8.7 before a lease started its jobs itself and ended records
/// were forgotten by maintenance instead of expiring one by one), and two script calls (the
/// lease, which starts its jobs, and the finish) per 16 jobs.
async fn a_job_costs_redis_few_commands() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let mut c = server.connection();
    let jobs = 320;
    for i in 0..jobs {
        let _: i64 = c
            .lpush(
                "jobs",
                format!(r#"{{"job_id":"cost-{i}","prompt":"p{i}"}}"#),
            )
            .unwrap();
    }
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let mut done = 0;
    while done < jobs {
        let leased = q.lease("w1", 16, Duration::ZERO).await.unwrap();
        assert_eq!(leased.len(), 16, "a full lease while jobs wait");
        let outcomes: Vec<_> = leased.into_iter().map(|j| (j, success("ok"))).collect();
        let finished = q.finish_all("w1", &outcomes).await.unwrap();
        assert!(finished.iter().all(|f| *f == Finished::Succeeded));
        done += outcomes.len();
    }
    let (all, scripts) = commands_executed(&mut c);
    let per_job = all as f64 / jobs as f64;
    let calls_per_job = scripts as f64 / jobs as f64;
    println!("{per_job:.2} commands and {calls_per_job:.3} script calls per job");
    assert!(per_job <= 8.0, "{per_job:.2} commands per job");
    assert!(
        calls_per_job <= 0.15,
        "{calls_per_job:.3} script calls per job"
    );
    let answer: String = c.get("result:cost-0").unwrap();
    assert_eq!(answer, "ok");
}
