//! The Redis queue's promises, checked against a private redis-server per test.

use std::time::Duration;

use greenscale_core::{
    Cancelled, Completion, ErrorKind, Finished, JobError, JobSpec, JobStatus, Outcome, Queue,
    QueueConfig, Usage,
};
use greenscale_queue::RedisQueue;
use greenscale_testkit::RedisServer;
use redis::Commands;

fn fast_config() -> QueueConfig {
    QueueConfig {
        lease: Duration::from_millis(300),
        retry_base: Duration::ZERO,
        ..QueueConfig::default()
    }
}

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

fn transient() -> Outcome {
    Outcome::Failed(JobError {
        kind: ErrorKind::UpstreamTransient,
        message: "upstream answered 503".into(),
        transient: true,
        retry_after: None,
    })
}

#[tokio::test]
async fn jobs_come_out_in_the_order_they_went_in() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            q.enqueue(JobSpec::from_prompt(format!("job {i}")))
                .await
                .unwrap(),
        );
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        let jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
        assert_eq!(jobs.len(), 1);
        seen.push(jobs[0].spec.job_id.clone());
        q.finish("w1", &jobs[0], success("ok")).await.unwrap();
    }
    assert_eq!(seen, ids);
    // A batch lease keeps the order too.
    let more: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(
                q.enqueue(JobSpec::from_prompt(format!("b{i}")))
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let batch = q.lease("w1", 10, Duration::ZERO).await.unwrap();
    let got: Vec<String> = batch.iter().map(|j| j.spec.job_id.clone()).collect();
    assert_eq!(got, more);
}

#[tokio::test]
async fn prototype_entry_is_processed_and_result_key_holds_the_answer() {
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
    let rec = q.job("test-001").await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.worker_id.as_deref(), Some("w1"));
    assert_eq!(rec.usage.unwrap().completion_tokens, 2);
    assert!(rec.enqueued_at_ms.is_some() && rec.started_at_ms.is_some());
    assert!(rec.finished_at_ms >= rec.started_at_ms);
}

#[tokio::test]
async fn blocking_lease_wakes_when_a_job_arrives() {
    let server = RedisServer::start();
    let q = std::sync::Arc::new(queue(&server, QueueConfig::default()));
    let q2 = q.clone();
    let waiter = tokio::spawn(async move { q2.lease("w1", 1, Duration::from_secs(1)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = q.enqueue(JobSpec::from_prompt("wake")).await.unwrap();
    let jobs = waiter.await.unwrap().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].spec.job_id, id);
}

#[tokio::test]
async fn malformed_entries_are_dead_lettered_with_a_reason() {
    let server = RedisServer::start();
    let config = QueueConfig {
        limits: greenscale_core::Limits {
            max_entry_bytes: 1000,
            ..Default::default()
        },
        ..QueueConfig::default()
    };
    let q = queue(&server, config);
    let mut c = server.connection();
    let big = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(2000));
    for raw in ["not json", r#"{"job_id":"no-prompt"}"#, big.as_str()] {
        let _: i64 = c.lpush("jobs", raw).unwrap();
    }
    let good = q.enqueue(JobSpec::from_prompt("fine")).await.unwrap();
    let jobs = q.lease("w1", 10, Duration::ZERO).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].spec.job_id, good);
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 3);
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("not valid JSON")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("prompt")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("over the limit")),
        "{reasons:?}"
    );
    assert!(dead.iter().all(|d| d.kind == "malformed"));
    let rec = q.job("no-prompt").await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Dead);
    assert_eq!(rec.error_kind.as_deref(), Some("malformed"));
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.in_flight, stats.dead_letter),
        (0, 1, 3)
    );
}

#[tokio::test]
async fn transient_failures_retry_then_dead_letter_after_the_budget() {
    let server = RedisServer::start();
    let config = QueueConfig {
        max_attempts: 3,
        ..fast_config()
    };
    let q = queue(&server, config);
    let id = q.enqueue(JobSpec::from_prompt("flaky")).await.unwrap();
    for attempt in 1..=3u32 {
        q.maintain().await.unwrap();
        let jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
        assert_eq!(jobs.len(), 1, "attempt {attempt} leased");
        assert_eq!(jobs[0].attempt, attempt);
        let r = q.finish("w1", &jobs[0], transient()).await.unwrap();
        if attempt < 3 {
            assert_eq!(r, Finished::RetryScheduled);
            let rec = q.job(&id).await.unwrap().unwrap();
            assert_eq!(rec.status, JobStatus::Queued);
            assert_eq!(rec.error_kind.as_deref(), Some("upstream_transient"));
            assert_eq!(q.stats().await.unwrap().delayed, 1);
        } else {
            assert_eq!(r, Finished::Dead);
        }
    }
    let rec = q.job(&id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Dead);
    assert_eq!(rec.attempts, 3);
    assert!(rec.result.is_none(), "errors are never stored as answers");
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].job_id.as_deref(), Some(id.as_str()));
    assert!(dead[0].reason.contains("gave up after 3 attempts"));
    let mut c = server.connection();
    let answer: Option<String> = c.get(format!("result:{id}")).unwrap();
    assert!(answer.is_none());
}

#[tokio::test]
async fn retry_waits_for_its_backoff() {
    let server = RedisServer::start();
    let config = QueueConfig {
        retry_base: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let q = queue(&server, config);
    q.enqueue(JobSpec::from_prompt("later")).await.unwrap();
    let jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    q.finish("w1", &jobs[0], transient()).await.unwrap();
    q.maintain().await.unwrap();
    assert!(q.lease("w1", 1, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(q.stats().await.unwrap().delayed, 1);
}

#[tokio::test]
async fn permanent_failure_fails_once_with_the_message() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let id = q.enqueue(JobSpec::from_prompt("bad")).await.unwrap();
    let jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    let r = q
        .finish(
            "w1",
            &jobs[0],
            Outcome::Failed(JobError {
                kind: ErrorKind::UpstreamRejected,
                message: "upstream answered 400: model not found".into(),
                transient: false,
                retry_after: None,
            }),
        )
        .await
        .unwrap();
    assert_eq!(r, Finished::Failed);
    let rec = q.job(&id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Failed);
    assert_eq!(rec.attempts, 1);
    assert!(rec.error_message.unwrap().contains("model not found"));
    assert!(rec.result.is_none());
}

#[tokio::test]
async fn expired_lease_returns_the_job_and_the_late_result_is_not_duplicated() {
    let server = RedisServer::start();
    let q = queue(&server, fast_config());
    let id = q.enqueue(JobSpec::from_prompt("slow")).await.unwrap();
    let first = q.lease("dead-worker", 1, Duration::ZERO).await.unwrap();
    assert_eq!(q.stats().await.unwrap().in_flight, 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let m = q.maintain().await.unwrap();
    assert_eq!(m.reclaimed, 1);
    assert_eq!(q.job(&id).await.unwrap().unwrap().status, JobStatus::Queued);
    let second = q.lease("w2", 1, Duration::ZERO).await.unwrap();
    assert_eq!(second[0].spec.job_id, id);
    assert_eq!(second[0].attempt, 2);
    assert_eq!(
        q.finish("w2", &second[0], success("from w2"))
            .await
            .unwrap(),
        Finished::Succeeded
    );
    // The first worker was only slow: its late answer does not overwrite the record.
    assert_eq!(
        q.finish("dead-worker", &first[0], success("late"))
            .await
            .unwrap(),
        Finished::AlreadyFinal
    );
    let rec = q.job(&id).await.unwrap().unwrap();
    assert_eq!(rec.result.as_deref(), Some("from w2"));
    assert_eq!(rec.worker_id.as_deref(), Some("w2"));
}

#[tokio::test]
async fn a_heartbeating_worker_keeps_its_jobs() {
    let server = RedisServer::start();
    let q = queue(&server, fast_config());
    q.enqueue(JobSpec::from_prompt("long")).await.unwrap();
    let _jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.heartbeat("w1").await.unwrap();
        assert_eq!(q.maintain().await.unwrap().reclaimed, 0);
    }
    assert_eq!(q.stats().await.unwrap().in_flight, 1);
    assert_eq!(q.stats().await.unwrap().live_workers, 1);
}

#[tokio::test]
async fn workers_that_keep_dying_send_the_job_to_the_dead_letter_list() {
    let server = RedisServer::start();
    let config = QueueConfig {
        max_attempts: 2,
        ..fast_config()
    };
    let q = queue(&server, config);
    let id = q.enqueue(JobSpec::from_prompt("poison")).await.unwrap();
    for w in ["a", "b"] {
        assert_eq!(q.lease(w, 1, Duration::ZERO).await.unwrap().len(), 1);
        q.deregister(w).await.unwrap();
    }
    assert!(q.lease("c", 1, Duration::ZERO).await.unwrap().is_empty());
    let rec = q.job(&id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Dead);
    assert_eq!(rec.error_kind.as_deref(), Some("lease_expired"));
    assert_eq!(rec.attempts, 2);
}

#[tokio::test]
async fn released_job_goes_back_to_the_front_without_costing_an_attempt() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let a = q.enqueue(JobSpec::from_prompt("a")).await.unwrap();
    let _b = q.enqueue(JobSpec::from_prompt("b")).await.unwrap();
    let jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    q.release("w1", &jobs[0]).await.unwrap();
    assert_eq!(q.job(&a).await.unwrap().unwrap().attempts, 0);
    let again = q.lease("w2", 1, Duration::ZERO).await.unwrap();
    assert_eq!(again[0].spec.job_id, a);
    assert_eq!(again[0].attempt, 1);
}

#[tokio::test]
async fn cancelled_queued_job_never_runs() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let a = q.enqueue(JobSpec::from_prompt("a")).await.unwrap();
    assert_eq!(q.cancel(&a, true).await.unwrap(), Cancelled::Cancelled);
    assert_eq!(q.cancel(&a, true).await.unwrap(), Cancelled::AlreadyFinal);
    assert_eq!(q.cancel("nope", true).await.unwrap(), Cancelled::NotFound);
    assert!(q.lease("w1", 5, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(
        q.job(&a).await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );
}

#[tokio::test]
async fn duplicate_ids_are_refused_and_bad_jobs_rejected() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let mut spec = JobSpec::from_prompt("x");
    spec.job_id = "same".into();
    q.enqueue(spec.clone()).await.unwrap();
    assert!(matches!(
        q.enqueue(spec).await,
        Err(greenscale_core::QueueError::Duplicate(_))
    ));
    assert!(matches!(
        q.enqueue(JobSpec::from_prompt("  ")).await,
        Err(greenscale_core::QueueError::Invalid(_))
    ));
}

#[tokio::test]
async fn dead_letters_can_be_retried_and_purged() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let mut c = server.connection();
    let _: i64 = c.lpush("jobs", "garbage").unwrap();
    let _: i64 = c.lpush("jobs", r#"{"job_id":"nop"}"#).unwrap();
    assert!(q.lease("w1", 5, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(q.stats().await.unwrap().dead_letter, 2);
    // Retrying puts the entry back; it is still malformed, so it returns to the list.
    assert_eq!(q.retry_dead(Some(&["nop".to_string()])).await.unwrap(), 1);
    assert_eq!(q.stats().await.unwrap().pending, 1);
    assert!(q.lease("w1", 5, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(q.purge_dead().await.unwrap(), 2);
    assert_eq!(q.stats().await.unwrap().dead_letter, 0);
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

#[tokio::test]
async fn idempotency_key_returns_the_first_job() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let (a, new_a) = q
        .enqueue_idempotent(JobSpec::from_prompt("once"), "key-1")
        .await
        .unwrap();
    let (b, new_b) = q
        .enqueue_idempotent(JobSpec::from_prompt("once again"), "key-1")
        .await
        .unwrap();
    assert!(new_a && !new_b);
    assert_eq!(a, b);
    assert_eq!(q.stats().await.unwrap().pending, 1);
}

#[tokio::test]
async fn jobs_are_listed_newest_first_by_page_and_status() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(
            q.enqueue(JobSpec::from_prompt(format!("l{i}")))
                .await
                .unwrap(),
        );
    }
    let jobs = q.lease("w1", 5, Duration::ZERO).await.unwrap();
    for j in &jobs {
        q.finish("w1", j, success("ok")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut times = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = q.list_jobs(None, 10, cursor.as_deref()).await.unwrap();
        seen.extend(page.jobs.iter().map(|r| r.id.clone()));
        times.extend(page.jobs.iter().map(|r| r.enqueued_at_ms.unwrap()));
        match page.next_cursor {
            Some(c) if !page.jobs.is_empty() => cursor = Some(c),
            _ => break,
        }
    }
    // Every job exactly once across pages, newest first (ties within a millisecond in
    // any order).
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    assert_eq!(sorted_seen, sorted_ids);
    let done = q
        .list_jobs(Some(JobStatus::Succeeded), 100, None)
        .await
        .unwrap();
    assert_eq!(done.jobs.len(), 5);
    assert!(q.list_jobs(None, 10, Some("garbage")).await.is_err());
}

#[tokio::test]
async fn events_reach_subscribers() {
    use futures::StreamExt;
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let mut events = q.events().await.unwrap();
    let ev = greenscale_core::JobEvent::Token { text: "hi".into() };
    q.publish("job-9", &ev).await.unwrap();
    let (id, got) = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id.as_str(), got), ("job-9", ev));
}

#[tokio::test]
async fn cancel_can_spare_running_jobs() {
    let server = RedisServer::start();
    let q = queue(&server, QueueConfig::default());
    let a = q.enqueue(JobSpec::from_prompt("a")).await.unwrap();
    q.lease("w1", 1, Duration::ZERO).await.unwrap();
    assert_eq!(q.cancel(&a, false).await.unwrap(), Cancelled::Running);
    assert_eq!(q.cancel(&a, true).await.unwrap(), Cancelled::Cancelled);
}
