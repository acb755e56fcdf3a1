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
