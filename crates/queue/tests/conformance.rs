//! The queue conformance suite: every promise of the `Queue` trait, checked against each
//! backend (Redis with a private redis-server, SQLite in a temporary folder).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use greenscale_core::{
    Cancelled, Completion, ErrorKind, Finished, JobError, JobSpec, JobStatus, Outcome, Priority,
    Queue, QueueConfig, QueueError, Quota, TenantSettings, Tenants, Usage,
};
use greenscale_queue::{RedisQueue, SqliteQueue};
use greenscale_testkit::RedisServer;

/// Pushes a raw entry the way a producer that bypasses GreenScale would.
type PushRaw = Box<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A queue under test, with the backend-specific ways to poke at it.
struct Fixture {
    queue: Arc<dyn Queue>,
    push: PushRaw,
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

impl Fixture {
    fn q(&self) -> &dyn Queue {
        &*self.queue
    }

    fn shared(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    /// Pushes a raw entry as a producer that bypasses GreenScale would.
    async fn push_raw(&self, raw: impl Into<String>) {
        (self.push)(raw.into()).await
    }
}

type Open = fn(QueueConfig) -> Pin<Box<dyn Future<Output = Fixture> + Send>>;

fn open_redis(config: QueueConfig) -> Pin<Box<dyn Future<Output = Fixture> + Send>> {
    Box::pin(async move {
        let server = RedisServer::start();
        let queue = Arc::new(RedisQueue::connect(&server.url(), "jobs", config).unwrap());
        let url = server.url();
        Fixture {
            queue,
            push: Box::new(move |raw| {
                let url = url.clone();
                Box::pin(async move {
                    let client = redis::Client::open(url).unwrap();
                    let mut c = client.get_multiplexed_async_connection().await.unwrap();
                    redis::cmd("LPUSH")
                        .arg("jobs")
                        .arg(raw)
                        .query_async::<i64>(&mut c)
                        .await
                        .unwrap();
                })
            }),
            _keep: Box::new(server),
        }
    })
}

fn open_sqlite(config: QueueConfig) -> Pin<Box<dyn Future<Output = Fixture> + Send>> {
    Box::pin(async move {
        let dir = tempfile::tempdir().unwrap();
        let queue =
            Arc::new(SqliteQueue::open(&dir.path().join("queue.db"), "jobs", config).unwrap());
        let pusher = queue.clone();
        Fixture {
            queue,
            push: Box::new(move |raw| {
                let q = pusher.clone();
                Box::pin(async move { q.push_raw(&raw).await.unwrap() })
            }),
            _keep: Box::new(dir),
        }
    })
}

fn fast_config() -> QueueConfig {
    QueueConfig {
        lease: Duration::from_millis(300),
        retry_base: Duration::ZERO,
        ..QueueConfig::default()
    }
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
async fn prototype_entry_is_processed() {
    for open in [open_redis as Open, open_sqlite] {
        let f = open(QueueConfig::default()).await;
        let q = f.q();
        f.push_raw(r#"{"job_id":"test-001","prompt":"What is 2+2?"}"#)
            .await;
        let jobs = q.lease("w1", 4, Duration::from_millis(200)).await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].spec.job_id, "test-001");
        assert_eq!(
            q.finish("w1", &jobs[0], success("4")).await.unwrap(),
            Finished::Succeeded
        );
        let rec = q.job("test-001").await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Succeeded);
        assert_eq!(rec.result.as_deref(), Some("4"));
        assert_eq!(rec.attempts, 1);
        assert_eq!(rec.worker_id.as_deref(), Some("w1"));
        assert_eq!(rec.usage.unwrap().completion_tokens, 2);
        assert!(rec.enqueued_at_ms.is_some() && rec.started_at_ms.is_some());
        assert!(rec.finished_at_ms >= rec.started_at_ms);
    }
}

async fn jobs_come_out_in_the_order_they_went_in(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
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

async fn blocking_lease_wakes_when_a_job_arrives(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.shared();
    let q2 = q.clone();
    let waiter = tokio::spawn(async move { q2.lease("w1", 1, Duration::from_secs(1)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = q.enqueue(JobSpec::from_prompt("wake")).await.unwrap();
    let jobs = waiter.await.unwrap().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].spec.job_id, id);
}

async fn malformed_entries_are_dead_lettered_with_a_reason(open: Open) {
    let config = QueueConfig {
        limits: greenscale_core::Limits {
            max_entry_bytes: 1000,
            ..Default::default()
        },
        ..QueueConfig::default()
    };
    let f = open(config).await;
    let q = f.q();
    let big = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(2000));
    for raw in ["not json", r#"{"job_id":"no-prompt"}"#, big.as_str()] {
        f.push_raw(raw).await;
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
    assert_eq!(rec.error_kind, Some(ErrorKind::Malformed));
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.in_flight, stats.dead_letter),
        (0, 1, 3)
    );
}

async fn transient_failures_retry_then_dead_letter_after_the_budget(open: Open) {
    let config = QueueConfig {
        max_attempts: 3,
        ..fast_config()
    };
    let f = open(config).await;
    let q = f.q();
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
            assert_eq!(rec.error_kind, Some(ErrorKind::UpstreamTransient));
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
}

async fn retry_waits_for_its_backoff(open: Open) {
    let config = QueueConfig {
        retry_base: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let f = open(config).await;
    let q = f.q();
    q.enqueue(JobSpec::from_prompt("later")).await.unwrap();
    let jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    q.finish("w1", &jobs[0], transient()).await.unwrap();
    q.maintain().await.unwrap();
    assert!(q.lease("w1", 1, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(q.stats().await.unwrap().delayed, 1);
}

async fn permanent_failure_fails_once_with_the_message(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
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

async fn expired_lease_returns_the_job_and_the_late_result_is_not_duplicated(open: Open) {
    let f = open(fast_config()).await;
    let q = f.q();
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

async fn a_heartbeating_worker_keeps_its_jobs(open: Open) {
    let f = open(fast_config()).await;
    let q = f.q();
    q.enqueue(JobSpec::from_prompt("long")).await.unwrap();
    let _jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.heartbeat("w1", &[]).await.unwrap();
        assert_eq!(q.maintain().await.unwrap().reclaimed, 0);
    }
    assert_eq!(q.stats().await.unwrap().in_flight, 1);
    assert_eq!(q.stats().await.unwrap().live_workers, 1);
}

async fn models_announced_in_heartbeats_are_listed_until_the_retention_passes(open: Open) {
    let config = QueueConfig {
        retention: Duration::from_millis(800),
        ..fast_config()
    };
    let f = open(config).await;
    let q = f.q();
    assert!(q.served_models().await.unwrap().is_empty());
    q.heartbeat("w1", &["llama".into()]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    q.heartbeat("w2", &["qwen".into(), "llama".into()])
        .await
        .unwrap();
    // Both models were announced just now; "llama" by w2 too, ties go by name.
    let listed = q.served_models().await.unwrap();
    assert_eq!(listed, ["llama", "qwen"], "{listed:?}");
    // A worker that stops (scaled to zero) leaves its model listed...
    q.deregister("w1").await.unwrap();
    q.deregister("w2").await.unwrap();
    assert_eq!(q.served_models().await.unwrap(), ["llama", "qwen"]);
    // ...until nothing has announced it for the retention period.
    tokio::time::sleep(Duration::from_millis(500)).await;
    q.heartbeat("w3", &["qwen".into()]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(q.served_models().await.unwrap(), ["qwen"]);
}

/// An ended job's record is kept for the retention from its end, then maintenance deletes
/// it; one still queued is kept however long it waits, and a dead letter put back on the
/// queue is no longer an ended job's.
async fn ended_records_are_forgotten_after_the_retention(open: Open) {
    let config = QueueConfig {
        retention: Duration::from_millis(1500),
        max_attempts: 1,
        ..fast_config()
    };
    let f = open(config).await;
    let q = f.q();
    let done = q.enqueue(JobSpec::from_prompt("done")).await.unwrap();
    let revived = q.enqueue(JobSpec::from_prompt("revived")).await.unwrap();
    let cancelled = q.enqueue(JobSpec::from_prompt("cancelled")).await.unwrap();
    let jobs = q.lease("w1", 2, Duration::ZERO).await.unwrap();
    assert_eq!(jobs[0].spec.job_id, done);
    q.finish("w1", &jobs[0], success("ok")).await.unwrap();
    assert_eq!(
        q.finish("w1", &jobs[1], transient()).await.unwrap(),
        Finished::Dead
    );
    assert_eq!(
        q.retry_dead(Some(std::slice::from_ref(&revived)))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        q.cancel(&cancelled, false).await.unwrap(),
        Cancelled::Cancelled
    );
    let waiting = q.enqueue(JobSpec::from_prompt("waiting")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A job that ends later is kept for the retention from its own end.
    let late = q.enqueue(JobSpec::from_prompt("late")).await.unwrap();
    q.cancel(&late, false).await.unwrap();
    q.maintain().await.unwrap();
    assert!(
        q.job(&done).await.unwrap().is_some(),
        "kept within the retention"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    q.maintain().await.unwrap();
    assert!(
        q.job(&done).await.unwrap().is_none(),
        "forgotten after the retention"
    );
    assert!(q.job(&cancelled).await.unwrap().is_none());
    assert!(
        q.job(&late).await.unwrap().is_some(),
        "{late} ended 1.1 s ago"
    );
    for id in [&waiting, &revived] {
        let rec = q.job(id).await.unwrap().expect("a queued job is kept");
        assert_eq!(rec.status, JobStatus::Queued);
    }
}

async fn workers_that_keep_dying_send_the_job_to_the_dead_letter_list(open: Open) {
    let config = QueueConfig {
        max_attempts: 2,
        ..fast_config()
    };
    let f = open(config).await;
    let q = f.q();
    let id = q.enqueue(JobSpec::from_prompt("poison")).await.unwrap();
    for w in ["a", "b"] {
        assert_eq!(q.lease(w, 1, Duration::ZERO).await.unwrap().len(), 1);
        q.deregister(w).await.unwrap();
    }
    assert!(q.lease("c", 1, Duration::ZERO).await.unwrap().is_empty());
    let rec = q.job(&id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Dead);
    assert_eq!(rec.error_kind, Some(ErrorKind::LeaseExpired));
    assert_eq!(rec.attempts, 2);
}

async fn released_job_goes_back_to_the_front_without_costing_an_attempt(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    let a = q.enqueue(JobSpec::from_prompt("a")).await.unwrap();
    let _b = q.enqueue(JobSpec::from_prompt("b")).await.unwrap();
    let jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    q.release("w1", &jobs[0]).await.unwrap();
    assert_eq!(q.job(&a).await.unwrap().unwrap().attempts, 0);
    let again = q.lease("w2", 1, Duration::ZERO).await.unwrap();
    assert_eq!(again[0].spec.job_id, a);
    assert_eq!(again[0].attempt, 1);
}

async fn cancelled_queued_job_never_runs(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
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

async fn duplicate_ids_are_refused_and_bad_jobs_rejected(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
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

async fn dead_letters_can_be_retried_and_purged(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    f.push_raw("garbage").await;
    f.push_raw(r#"{"job_id":"nop"}"#).await;
    assert!(q.lease("w1", 5, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(q.stats().await.unwrap().dead_letter, 2);
    // Retrying puts the entry back; it is still malformed, so it returns to the list.
    assert_eq!(q.retry_dead(Some(&["nop".to_string()])).await.unwrap(), 1);
    assert_eq!(q.stats().await.unwrap().pending, 1);
    assert!(q.lease("w1", 5, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(q.purge_dead().await.unwrap(), 2);
    assert_eq!(q.stats().await.unwrap().dead_letter, 0);
}

async fn idempotency_key_returns_the_first_job(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
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

async fn jobs_are_listed_newest_first_by_page_and_status(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
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
        let page = q
            .list_jobs(None, None, 10, cursor.as_deref())
            .await
            .unwrap();
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
        .list_jobs(None, Some(JobStatus::Succeeded), 100, None)
        .await
        .unwrap();
    assert_eq!(done.jobs.len(), 5);
    assert!(q.list_jobs(None, None, 10, Some("garbage")).await.is_err());
}

async fn events_reach_subscribers(open: Open) {
    use futures::StreamExt;
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    let mut events = q.events().await.unwrap();
    let ev = greenscale_core::JobEvent::Token { text: "hi".into() };
    q.publish("job-9", &ev).await.unwrap();
    let (id, got) = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id.as_str(), got), ("job-9", ev));
}

async fn cancel_can_spare_running_jobs(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    let a = q.enqueue(JobSpec::from_prompt("a")).await.unwrap();
    q.lease("w1", 1, Duration::ZERO).await.unwrap();
    assert_eq!(q.cancel(&a, false).await.unwrap(), Cancelled::Running);
    assert_eq!(q.cancel(&a, true).await.unwrap(), Cancelled::Cancelled);
}

async fn a_job_cancelled_while_running_stays_cancelled_when_its_worker_answers(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    let id = q.enqueue(JobSpec::from_prompt("a")).await.unwrap();
    let leased = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    assert_eq!(q.cancel(&id, true).await.unwrap(), Cancelled::Cancelled);
    let outcomes = [(leased[0].clone(), success("too late"))];
    assert_eq!(
        q.finish_all("w1", &outcomes).await.unwrap(),
        [Finished::AlreadyFinal]
    );
    let rec = q.job(&id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Cancelled);
    assert_eq!(rec.result, None);
    assert_eq!(q.stats().await.unwrap().in_flight, 0);
}

async fn two_runs_of_one_job_ending_together_keep_the_first_answer(open: Open) {
    let f = open(QueueConfig::default()).await;
    // A producer pushed the same job twice; both entries are leased and run at once.
    f.push_raw(r#"{"job_id":"twice","prompt":"p"}"#).await;
    f.push_raw(r#"{"job_id":"twice","prompt":"p"}"#).await;
    let q = f.q();
    let leased = q.lease("w1", 2, Duration::ZERO).await.unwrap();
    assert_eq!(leased.len(), 2);
    let outcomes = [
        (leased[0].clone(), success("first")),
        (leased[1].clone(), success("second")),
    ];
    assert_eq!(
        q.finish_all("w1", &outcomes).await.unwrap(),
        [Finished::Succeeded, Finished::AlreadyFinal]
    );
    let rec = q.job("twice").await.unwrap().unwrap();
    assert_eq!(rec.result.as_deref(), Some("first"));
    assert_eq!(q.stats().await.unwrap().in_flight, 0);
}

async fn outcomes_are_counted(open: Open) {
    let f = open(fast_config()).await;
    let q = f.q();
    let a = q.enqueue(JobSpec::from_prompt("a")).await.unwrap();
    q.enqueue(JobSpec::from_prompt("b")).await.unwrap();
    let jobs = q.lease("w1", 2, Duration::ZERO).await.unwrap();
    let (ja, jb) = if jobs[0].spec.job_id == a {
        (&jobs[0], &jobs[1])
    } else {
        (&jobs[1], &jobs[0])
    };
    q.finish("w1", ja, success("ok")).await.unwrap();
    q.finish("w1", jb, transient()).await.unwrap();
    let c = q.enqueue(JobSpec::from_prompt("c")).await.unwrap();
    q.cancel(&c, true).await.unwrap();
    f.push_raw("not json").await;
    q.lease("w1", 5, Duration::ZERO).await.unwrap();
    let counters: std::collections::HashMap<String, u64> =
        q.counters().await.unwrap().into_iter().collect();
    assert_eq!(counters.get("succeeded"), Some(&1), "{counters:?}");
    assert_eq!(counters.get("retry"), Some(&1), "{counters:?}");
    assert_eq!(counters.get("cancelled"), Some(&1), "{counters:?}");
    assert_eq!(counters.get("dead"), Some(&1), "{counters:?}");
    assert_eq!(
        counters.get("error:upstream_transient"),
        Some(&1),
        "{counters:?}"
    );
    assert_eq!(counters.get("error:malformed"), Some(&1), "{counters:?}");
}

async fn leases_whose_reply_was_lost_are_handed_back(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    let a = q.enqueue(JobSpec::from_prompt("a")).await.unwrap();
    let b = q.enqueue(JobSpec::from_prompt("b")).await.unwrap();
    let kept = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    // The reply of this lease is "lost": the worker never learns it holds `b`.
    let _lost = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    let held: Vec<String> = kept.iter().map(|j| j.token.clone()).collect();
    assert_eq!(q.reclaim_unknown("w1", &held).await.unwrap(), 1);
    assert_eq!(q.job(&b).await.unwrap().unwrap().status, JobStatus::Queued);
    let again = q.lease("w2", 5, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].spec.job_id, b);
    assert_eq!(
        again[0].attempt, 1,
        "the lost lease does not cost an attempt"
    );
    // The job the worker knows about stays with it.
    assert_eq!(
        q.finish("w1", &kept[0], success("ok")).await.unwrap(),
        Finished::Succeeded
    );
    assert_eq!(kept[0].spec.job_id, a);
}

fn job_of(tenant: &str, priority: Priority, text: &str) -> JobSpec {
    JobSpec {
        tenant: Some(tenant.into()),
        priority: Some(priority),
        ..JobSpec::from_prompt(text)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Leases one at a time, finishing each, and returns the tenants in lease order.
async fn serve_one_by_one(q: &dyn Queue, n: usize) -> Vec<String> {
    let mut order = Vec::new();
    for _ in 0..n {
        let jobs = q.lease("w1", 1, Duration::ZERO).await.unwrap();
        let Some(job) = jobs.into_iter().next() else {
            break;
        };
        order.push(job.spec.tenant().to_string());
        q.finish("w1", &job, success("ok")).await.unwrap();
    }
    order
}

/// A flood of one tenant does not hold up another's jobs: with equal weights the leases
/// alternate once both have work; with weight 2 a tenant gets two of every three.
async fn tenants_share_leases_by_weight(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    for i in 0..40 {
        q.enqueue(job_of("a", Priority::INTERACTIVE, &format!("a{i}")))
            .await
            .unwrap();
    }
    for i in 0..10 {
        q.enqueue(job_of("b", Priority::INTERACTIVE, &format!("b{i}")))
            .await
            .unwrap();
    }
    let order = serve_one_by_one(q, 20).await;
    let b_done = order.iter().filter(|t| *t == "b").count();
    assert_eq!(
        b_done, 10,
        "b's 10 jobs among the first 20 leases: {order:?}"
    );
    let mut tenants = Tenants::new();
    tenants.insert(
        "a".into(),
        TenantSettings {
            weight: 2.0,
            ..TenantSettings::default()
        },
    );
    q.set_tenants(&tenants).await.unwrap();
    for i in 0..30 {
        q.enqueue(job_of("b", Priority::INTERACTIVE, &format!("b{i}")))
            .await
            .unwrap();
    }
    let order = serve_one_by_one(q, 30).await;
    let a = order.iter().filter(|t| *t == "a").count();
    assert!(
        (19..=21).contains(&a),
        "a (weight 2) gets two of three: {order:?}"
    );
    let stats = q.tenants().await.unwrap();
    let b = stats.iter().find(|t| t.tenant == "b").unwrap();
    assert_eq!(b.outcomes.get("succeeded"), Some(&20));
    assert_eq!(b.queued, 20);
    let page = q.list_jobs(Some("b"), None, 1000, None).await.unwrap();
    assert_eq!(page.jobs.len(), 40);
    assert!(page.jobs.iter().all(|r| r.tenant == "b"));
}

/// A worker leases from the highest class with work; FIFO holds within a tenant's class.
async fn interactive_work_goes_ahead_of_batch(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.push(
            q.enqueue(job_of("a", Priority::BATCH, &format!("batch {i}")))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.pending, stats.deferrable), (50, 50));
    assert!(stats.oldest_deferrable_ms.is_some_and(|age| age >= 20));
    let first = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    assert_eq!(first[0].spec.job_id, batch[0]);
    let urgent = q
        .enqueue(job_of("b", Priority::INTERACTIVE, "now"))
        .await
        .unwrap();
    f.push_raw(r#"{"job_id":"raw-1","prompt":"from the prototype"}"#)
        .await;
    let next = q.lease("w1", 3, Duration::ZERO).await.unwrap();
    let ids: Vec<&str> = next.iter().map(|j| j.spec.job_id.as_str()).collect();
    assert_eq!(ids, [urgent.as_str(), "raw-1", batch[1].as_str()]);
}

/// Quotas: max_queued refuses with the quota named; max_running holds a tenant's further
/// jobs back while others run; the token budget refuses until the minute ends.
async fn quotas_refuse_and_hold_back(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    let mut tenants = Tenants::new();
    tenants.insert(
        "a".into(),
        TenantSettings {
            max_queued: Some(3),
            max_running: Some(1),
            tokens_per_minute: Some(10),
            ..TenantSettings::default()
        },
    );
    q.set_tenants(&tenants).await.unwrap();
    for i in 0..3 {
        q.enqueue(job_of("a", Priority::INTERACTIVE, &format!("a{i}")))
            .await
            .unwrap();
    }
    match q
        .enqueue(job_of("a", Priority::INTERACTIVE, "one more"))
        .await
    {
        Err(QueueError::OverQuota { quota, limit, .. }) => {
            assert_eq!((quota, limit), (Quota::Queued, 3));
        }
        other => panic!("expected the max_queued quota, got {other:?}"),
    }
    q.enqueue(job_of("b", Priority::INTERACTIVE, "b0"))
        .await
        .unwrap();
    let got = q.lease("w1", 4, Duration::ZERO).await.unwrap();
    let tenants_leased: Vec<&str> = got.iter().map(|j| j.spec.tenant()).collect();
    assert_eq!(tenants_leased, ["a", "b"], "a runs one at a time");
    assert!(q.lease("w2", 4, Duration::ZERO).await.unwrap().is_empty());
    let a_job = got.into_iter().find(|j| j.spec.tenant() == "a").unwrap();
    let big = Outcome::Succeeded(Completion {
        text: "long".into(),
        usage: Usage {
            prompt_tokens: 6,
            completion_tokens: 6,
        },
        ttft_ms: None,
    });
    q.finish("w1", &a_job, big).await.unwrap();
    assert_eq!(q.lease("w2", 4, Duration::ZERO).await.unwrap().len(), 1);
    match q
        .enqueue(job_of("a", Priority::INTERACTIVE, "over budget"))
        .await
    {
        Err(QueueError::OverQuota {
            quota, retry_after, ..
        }) => {
            assert_eq!(quota, Quota::Tokens);
            assert!(retry_after <= Duration::from_secs(60));
        }
        other => panic!("expected the token quota, got {other:?}"),
    }
    let a = q
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.tenant == "a")
        .unwrap();
    assert_eq!((a.queued, a.running, a.tokens_this_minute), (1, 1, 12));
}

/// A job not started before its deadline becomes expired, with a reason, and never runs:
/// caught when leased, and by maintenance while no worker leases.
async fn jobs_past_their_deadline_expire_unrun(open: Open) {
    let f = open(QueueConfig::default()).await;
    let q = f.q();
    let soon = JobSpec {
        deadline_at_ms: Some(now_ms() + 150),
        ..JobSpec::from_prompt("in time?")
    };
    let soon = q.enqueue(soon).await.unwrap();
    let later = JobSpec {
        deadline_at_ms: Some(now_ms() + 60_000),
        ..JobSpec::from_prompt("plenty of time")
    };
    let later = q.enqueue(later).await.unwrap();
    let other = JobSpec {
        deadline_at_ms: Some(now_ms() + 150),
        ..JobSpec::from_prompt("expired by maintenance")
    };
    let other = q.enqueue(other).await.unwrap();
    assert!(
        q.stats()
            .await
            .unwrap()
            .deadline_in_ms
            .is_some_and(|d| d <= 150)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = q.lease("w1", 1, Duration::ZERO).await.unwrap();
    assert!(got.is_empty(), "the expired head is dropped, not run");
    q.maintain().await.unwrap();
    for id in [&soon, &other] {
        let rec = q.job(id).await.unwrap().unwrap();
        assert_eq!(rec.status, JobStatus::Expired);
        assert!(rec.error_message.unwrap().contains("deadline"));
        assert_eq!(rec.attempts, 0);
    }
    let got = q.lease("w1", 4, Duration::ZERO).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|j| j.spec.job_id.as_str()).collect();
    assert_eq!(ids, [later.as_str()]);
    let counters: std::collections::HashMap<String, u64> =
        q.counters().await.unwrap().into_iter().collect();
    assert_eq!(counters.get("expired"), Some(&2));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod redis_backend {
            $( #[tokio::test] async fn $name() { super::$name(super::open_redis).await } )*
        }
        mod sqlite_backend {
            $( #[tokio::test] async fn $name() { super::$name(super::open_sqlite).await } )*
        }
    };
}

conformance!(
    a_job_cancelled_while_running_stays_cancelled_when_its_worker_answers,
    two_runs_of_one_job_ending_together_keep_the_first_answer,
    leases_whose_reply_was_lost_are_handed_back,
    outcomes_are_counted,
    jobs_come_out_in_the_order_they_went_in,
    blocking_lease_wakes_when_a_job_arrives,
    malformed_entries_are_dead_lettered_with_a_reason,
    transient_failures_retry_then_dead_letter_after_the_budget,
    retry_waits_for_its_backoff,
    permanent_failure_fails_once_with_the_message,
    expired_lease_returns_the_job_and_the_late_result_is_not_duplicated,
    a_heartbeating_worker_keeps_its_jobs,
    models_announced_in_heartbeats_are_listed_until_the_retention_passes,
    ended_records_are_forgotten_after_the_retention,
    workers_that_keep_dying_send_the_job_to_the_dead_letter_list,
    released_job_goes_back_to_the_front_without_costing_an_attempt,
    cancelled_queued_job_never_runs,
    duplicate_ids_are_refused_and_bad_jobs_rejected,
    dead_letters_can_be_retried_and_purged,
    idempotency_key_returns_the_first_job,
    jobs_are_listed_newest_first_by_page_and_status,
    events_reach_subscribers,
    cancel_can_spare_running_jobs,
    tenants_share_leases_by_weight,
    interactive_work_goes_ahead_of_batch,
    quotas_refuse_and_hold_back,
    jobs_past_their_deadline_expire_unrun,
);
