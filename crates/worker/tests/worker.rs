//! The worker runtime against a real Redis queue and a scripted upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use greenscale_core::{Admin, ErrorKind, JobSpec, JobStatus, Producer, QueueConfig, Reader};
use greenscale_queue::RedisQueue;
use greenscale_testkit::{FakeUpstream, RedisServer, Reply};
use greenscale_worker::{OpenAiBackend, OpenAiConfig, WorkerConfig, run_worker};
use redis::Commands;
use tokio::sync::oneshot;

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn start_worker(queue: Arc<RedisQueue>, upstream_url: &str, concurrency: usize) -> Running {
    let backend = OpenAiBackend::new(OpenAiConfig {
        url: upstream_url.to_string(),
        ..OpenAiConfig::default()
    })
    .unwrap();
    let mut config = WorkerConfig::new("test-worker", queue.config().lease);
    config.concurrency = concurrency;
    config.maintain_every = Duration::from_millis(50);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run_worker(queue, Arc::new(backend), config, Arc::default(), async {
            let _ = stopped.await;
        })
        .await;
    });
    Running { stop, task }
}

async fn wait_final(q: &RedisQueue, id: &str) -> greenscale_core::JobRecord {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(rec) = q.job(id).await.unwrap()
            && rec.status.is_terminal()
        {
            return rec;
        }
        assert!(Instant::now() < deadline, "job {id} did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config() -> QueueConfig {
    QueueConfig {
        retry_base: Duration::from_millis(20),
        ..QueueConfig::default()
    }
}

#[tokio::test]
async fn one_worker_at_concurrency_one_runs_jobs_in_fifo_order() {
    let server = RedisServer::start();
    let upstream = FakeUpstream::start(vec![], "ok").await;
    let q = Arc::new(RedisQueue::connect(&server.url(), "jobs", config()).unwrap());
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            q.enqueue(JobSpec::from_prompt(format!("p{i:02}")))
                .await
                .unwrap(),
        );
    }
    let w = start_worker(q.clone(), &upstream.url, 1);
    for id in &ids {
        assert_eq!(wait_final(&q, id).await.status, JobStatus::Succeeded);
    }
    let expected: Vec<String> = (0..30).map(|i| format!("p{i:02}")).collect();
    assert_eq!(upstream.prompts(), expected);
    w.stop.send(()).unwrap();
    w.task.await.unwrap();
}

#[tokio::test]
async fn two_server_errors_then_success_takes_three_attempts() {
    let server = RedisServer::start();
    let upstream = FakeUpstream::start(
        vec![Reply::error(500, "boom"), Reply::error(503, "busy")],
        "four",
    )
    .await;
    let q = Arc::new(RedisQueue::connect(&server.url(), "jobs", config()).unwrap());
    let id = q
        .enqueue(JobSpec::from_prompt("What is 2+2?"))
        .await
        .unwrap();
    let w = start_worker(q.clone(), &upstream.url, 4);
    let rec = wait_final(&q, &id).await;
    assert_eq!(rec.status, JobStatus::Succeeded);
    assert_eq!(rec.attempts, 3);
    assert_eq!(rec.result.as_deref(), Some("four"));
    assert_eq!(upstream.calls(), 3);
    let mut c = server.connection();
    let answer: String = c.get(format!("result:{id}")).unwrap();
    assert_eq!(answer, "four");
    w.stop.send(()).unwrap();
    w.task.await.unwrap();
}

#[tokio::test]
async fn a_rejected_request_fails_once_with_the_upstream_message() {
    let server = RedisServer::start();
    let upstream =
        FakeUpstream::start(vec![Reply::error(400, "model 'x' does not exist")], "never").await;
    let q = Arc::new(RedisQueue::connect(&server.url(), "jobs", config()).unwrap());
    let id = q.enqueue(JobSpec::from_prompt("hi")).await.unwrap();
    let w = start_worker(q.clone(), &upstream.url, 4);
    let rec = wait_final(&q, &id).await;
    assert_eq!(rec.status, JobStatus::Failed);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.error_kind, Some(ErrorKind::UpstreamRejected));
    assert!(
        rec.error_message
            .as_deref()
            .unwrap()
            .contains("model 'x' does not exist"),
        "{rec:?}"
    );
    assert!(rec.result.is_none());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.calls(), 1, "a permanent failure is not retried");
    let mut c = server.connection();
    let answer: Option<String> = c.get(format!("result:{id}")).unwrap();
    assert!(answer.is_none(), "errors are never stored as answers");
    w.stop.send(()).unwrap();
    w.task.await.unwrap();
}

#[tokio::test]
async fn malformed_entries_are_dead_lettered_and_the_worker_keeps_going() {
    let server = RedisServer::start();
    let upstream = FakeUpstream::start(vec![], "fine").await;
    let q = Arc::new(RedisQueue::connect(&server.url(), "jobs", config()).unwrap());
    let w = start_worker(q.clone(), &upstream.url, 2);
    let mut c = server.connection();
    for raw in ["{not json", "42", r#"{"job_id":"empty","prompt":""}"#] {
        let _: i64 = c.lpush("jobs", raw).unwrap();
    }
    let _: i64 = c
        .lpush("jobs", r#"{"job_id":"after","prompt":"still working?"}"#)
        .unwrap();
    let rec = wait_final(&q, "after").await;
    assert_eq!(rec.status, JobStatus::Succeeded);
    assert_eq!(q.stats().await.unwrap().dead_letter, 3);
    assert_eq!(upstream.calls(), 1);
    w.stop.send(()).unwrap();
    w.task.await.unwrap();
}

#[tokio::test]
async fn an_unreachable_model_is_retried_then_dead_lettered() {
    let server = RedisServer::start();
    let port = greenscale_testkit::free_port();
    let cfg = QueueConfig {
        max_attempts: 2,
        ..config()
    };
    let q = Arc::new(RedisQueue::connect(&server.url(), "jobs", cfg).unwrap());
    let id = q.enqueue(JobSpec::from_prompt("hello?")).await.unwrap();
    let w = start_worker(q.clone(), &format!("http://127.0.0.1:{port}/v1"), 1);
    let rec = wait_final(&q, &id).await;
    assert_eq!(rec.status, JobStatus::Dead);
    assert_eq!(rec.attempts, 2);
    let dead = q.dead_letters(5).await.unwrap();
    assert!(dead[0].reason.contains("connection"), "{:?}", dead[0]);
    w.stop.send(()).unwrap();
    w.task.await.unwrap();
}

#[tokio::test]
async fn a_running_job_that_is_cancelled_is_stopped() {
    let server = RedisServer::start();
    // A slow model: about 30 tokens at 5 tokens/s.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(greenscale_demo_model::serve(
        listener,
        greenscale_demo_model::DemoConfig {
            load_time: Duration::ZERO,
            tokens_per_sec: 5.0,
        },
        std::future::pending(),
    ));
    let q = Arc::new(RedisQueue::connect(&server.url(), "jobs", config()).unwrap());
    let id = q.enqueue(JobSpec::from_prompt("long")).await.unwrap();
    let w = start_worker(q.clone(), &url, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while q.job(&id).await.unwrap().unwrap().status != JobStatus::Running {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    q.cancel(&id, true).await.unwrap();
    // Within a couple of seconds the worker lets go of it (the run would take ~6 s).
    let deadline = Instant::now() + Duration::from_secs(3);
    while q.stats().await.unwrap().in_flight > 0 {
        assert!(
            Instant::now() < deadline,
            "the worker kept running a cancelled job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = q.job(&id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Cancelled);
    assert!(rec.result.is_none());
    w.stop.send(()).unwrap();
    w.task.await.unwrap();
}
