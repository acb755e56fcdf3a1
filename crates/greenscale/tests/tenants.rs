//! Tenants, priority classes, quotas and deadlines end to end, through the HTTP API with
//! tenants' keys: on `greenscale up` (SQLite) and on a gateway and worker sharing Redis.

mod common;

use std::time::Duration;

use common::{Process, Up, demo_model, wait_until};
use greenscale_testkit::{RedisServer, free_port};
use serde_json::{Value, json};

const KEYS: [&str; 6] = [
    "--api-key",
    "a:key-a",
    "--api-key",
    "b:key-b",
    "--admin-key",
    "key-root",
];

/// An HTTP client for a GreenScale API that sends tenants' keys.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Self {
        Api {
            base: base.to_string(),
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/jobs", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn submit(&self, key: &str, body: Value) -> String {
        let r = self.post(key, body).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    async fn job(&self, id: &str) -> Value {
        self.get("key-root", &format!("/v1/jobs/{id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Every record of `tenant` (as the admin sees them), following the pages.
    async fn jobs_of(&self, tenant: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page: Value = self
                .get(
                    "key-root",
                    &format!("/v1/jobs?tenant={tenant}&limit=1000{cursor}"),
                )
                .await
                .json()
                .await
                .unwrap();
            let jobs = page["jobs"]
                .as_array()
                .unwrap_or_else(|| panic!("a page: {page}"));
            out.extend(jobs.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => return out,
            }
        }
    }

    async fn wait_done(&self, ids: &[String], within: Duration) {
        let deadline = std::time::Instant::now() + within;
        for id in ids {
            loop {
                let rec = self.job(id).await;
                if rec["status"] == "succeeded" {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "job {id} did not finish: {rec}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn ms(rec: &Value, field: &str) -> f64 {
    rec[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {rec}"))
}

fn p95(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 * 0.95).ceil() as usize).clamp(1, values.len()) - 1]
}

/// Tenant A floods 2,000 jobs, then tenant B sends 20 (equal weights, one replica of
/// concurrency 4): every B job finishes before A's backlog is half done, and B waits a
/// small multiple of a job's run time, where one FIFO would make it wait for all of A's.
async fn a_flood_does_not_hold_up_another_tenant(api: &Api) {
    // The flood arrives faster than the pool runs it (8 senders at once).
    let mut a = Vec::new();
    for chunk in 0..250 {
        let sends = (0..8).map(|k| {
            let i = chunk * 8 + k;
            api.submit(
                "key-a",
                json!({"prompt": format!("a {i}"), "max_tokens": 4}),
            )
        });
        a.extend(futures::future::join_all(sends).await);
    }
    let mut b = Vec::new();
    for i in 0..20 {
        b.push(
            api.submit(
                "key-b",
                json!({"prompt": format!("b {i}"), "max_tokens": 4}),
            )
            .await,
        );
    }
    api.wait_done(&b, Duration::from_secs(120)).await;
    let b_records: Vec<Value> = {
        let mut v = Vec::new();
        for id in &b {
            v.push(api.job(id).await);
        }
        v
    };
    assert!(b_records.iter().all(|r| r["tenant"] == "b"));
    let last_b = b_records
        .iter()
        .map(|r| ms(r, "finished_at_ms"))
        .fold(0.0, f64::max);
    let a_records = api.jobs_of("a").await;
    assert_eq!(a_records.len(), 2000);
    let a_done_before = a_records
        .iter()
        .filter(|r| r["finished_at_ms"].as_f64().is_some_and(|t| t <= last_b))
        .count();
    let waits: Vec<f64> = b_records
        .iter()
        .map(|r| ms(r, "started_at_ms") - ms(r, "enqueued_at_ms"))
        .collect();
    let runs: Vec<f64> = b_records
        .iter()
        .map(|r| ms(r, "finished_at_ms") - ms(r, "started_at_ms"))
        .collect();
    let run = runs.iter().sum::<f64>() / runs.len() as f64;
    let b_p95 = p95(waits);
    eprintln!(
        "B's 20 jobs done when A had {a_done_before} of 2000 done; B's p95 wait {b_p95:.0} ms, \
         {:.1}x its mean run time of {run:.1} ms",
        b_p95 / run.max(1.0)
    );
    assert!(
        a_done_before < 1000,
        "every B job finishes before half of A's backlog ({a_done_before} done)"
    );
    assert!(
        b_p95 <= 25.0 * run.max(5.0),
        "B's p95 wait {b_p95:.0} ms is a small multiple of its run time {run:.1} ms"
    );
    // A tenant sees only its own jobs; another's is "not found".
    let r = api.get("key-b", &format!("/v1/jobs/{}", a[0])).await;
    assert_eq!(r.status(), 404);
    let page: Value = api
        .get("key-b", "/v1/jobs?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    let seen = page["jobs"].as_array().unwrap();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|j| j["tenant"] == "b"));
}

/// A batch backlog of 500 and one interactive job submitted after it: the interactive job
/// starts on the next free slot.
async fn interactive_work_starts_ahead_of_a_batch_backlog(api: &Api) {
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.push(
            api.submit(
                "key-a",
                json!({"prompt": format!("batch {i}"), "max_tokens": 4, "priority": "batch"}),
            )
            .await,
        );
    }
    let urgent = api
        .submit("key-b", json!({"prompt": "now please", "max_tokens": 4}))
        .await;
    api.wait_done(std::slice::from_ref(&urgent), Duration::from_secs(60))
        .await;
    let rec = api.job(&urgent).await;
    assert_eq!(rec["priority"], "interactive");
    let (enqueued, started) = (ms(&rec, "enqueued_at_ms"), ms(&rec, "started_at_ms"));
    let mut jumped = 0;
    for id in &batch {
        let r = api.job(id).await;
        if r["started_at_ms"]
            .as_f64()
            .is_some_and(|s| s > enqueued && s < started)
        {
            jumped += 1;
        }
    }
    eprintln!(
        "the interactive job started {:.0} ms after it was sent; {jumped} batch jobs started in between",
        started - enqueued
    );
    // A worker leases up to its free slots in one call; one such call may have been
    // under way when the interactive job arrived.
    assert!(
        jumped <= 4,
        "{jumped} batch jobs started between its arrival and its start"
    );
}

const POOL: [&str; 8] = [
    "--demo-load-time",
    "100ms",
    "--demo-tokens-per-sec",
    "100",
    "--concurrency",
    "4",
    "--max-replicas",
    "1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_an_up_pool_fairly_and_interactive_work_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), "up", &[&POOL[..], &KEYS[..]].concat()).await;
    let api = Api::new(&up.base);
    a_flood_does_not_hold_up_another_tenant(&api).await;
    interactive_work_starts_ahead_of_a_batch_backlog(&api).await;
}

/// A gateway and a worker sharing a private Redis, the gateway with tenants' keys.
fn redis_stack(dir: &std::path::Path, redis: &RedisServer, extra: &[&str]) -> (Process, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let url = redis.url();
    let args = [
        &["gateway", "--redis-url", &url, "--listen", &listen][..],
        &KEYS[..],
        extra,
    ]
    .concat();
    let gateway = Process::spawn(dir, "gateway", &args);
    wait_until("the gateway listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&listen).is_ok()
    });
    (gateway, format!("http://{listen}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_redis_workers_fairly_and_interactive_work_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let model = demo_model(100.0);
    let (_gateway, base) = redis_stack(dir.path(), &redis, &[]);
    let _worker = Process::worker(
        dir.path(),
        "worker",
        &redis.url(),
        &model.url,
        &["--concurrency", "4"],
    );
    let api = Api::new(&base);
    a_flood_does_not_hold_up_another_tenant(&api).await;
    interactive_work_starts_ahead_of_a_batch_backlog(&api).await;
}

/// Polls a job until `done` holds for its record.
async fn wait_record(
    api: &Api,
    id: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let rec = api.job(id).await;
        if done(&rec) {
            return rec;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {rec}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tenant(api: &Api, name: &str) -> Value {
    let all: Value = api
        .get("key-root", "/v1/tenants")
        .await
        .json()
        .await
        .unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_deadlines_hold_across_a_sigkilled_up_and_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        &[
            "--demo-load-time",
            "100ms",
            "--demo-tokens-per-sec",
            "20",
            "--concurrency",
            "1",
            "--max-replicas",
            "1",
            "--tenant",
            "a:max_queued=3",
        ][..],
        &KEYS[..],
    ]
    .concat();
    let mut up = Up::start(dir.path(), "up-1", &flags).await;
    let api = Api::new(&up.base);
    let long = json!({"prompt": "a long one", "max_tokens": 60});
    let first = api.submit("key-a", long.clone()).await;
    wait_record(
        &api,
        &first,
        "the first job runs",
        Duration::from_secs(30),
        |r| r["status"] == "running",
    )
    .await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(api.submit("key-a", long.clone()).await);
    }
    let refused = api.post("key-a", long.clone()).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "quota_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_queued"),
        "{body}"
    );
    // Another tenant is not held to a's quota; its job's deadline passes while a's run.
    let late = api
        .submit(
            "key-b",
            json!({"prompt": "in time?", "max_tokens": 4, "deadline_ms": 500}),
        )
        .await;
    assert!(api.job(&late).await["deadline_at_ms"].as_u64().is_some());

    up.process.signal("KILL");
    up.process.wait_exit(Duration::from_secs(10));
    let up = Up::start(dir.path(), "up-2", &flags).await;
    let api = Api::new(&up.base);
    let refused = api.post("key-a", long.clone()).await;
    assert_eq!(refused.status(), 429, "the quota holds after the restart");
    let rec = wait_record(
        &api,
        &late,
        "the late job expires",
        Duration::from_secs(60),
        |r| r["status"] == "expired",
    )
    .await;
    assert_eq!(rec["attempts"], 0, "an expired job never ran: {rec}");
    assert!(rec["started_at_ms"].is_null());
    assert!(rec["error_message"].as_str().unwrap().contains("deadline"));
    for id in std::iter::once(&first).chain(&queued) {
        wait_record(
            &api,
            id,
            "every job of a completes",
            Duration::from_secs(90),
            |r| r["status"] == "succeeded",
        )
        .await;
    }
    let a = tenant(&api, "a").await;
    assert_eq!(a["outcomes"]["succeeded"], 4, "counted once each: {a}");
    assert_eq!(
        (a["queued"].as_u64(), a["running"].as_u64()),
        (Some(0), Some(0))
    );
    let b = tenant(&api, "b").await;
    assert_eq!(b["outcomes"]["expired"], 1, "{b}");
    assert!(b["outcomes"].get("succeeded").is_none(), "{b}");
    let metrics = up.metrics().await;
    assert!(
        metrics.contains(r#"greenscale_tenant_outcomes_total{tenant="b",status="expired"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_workers_job_past_its_deadline_expires_instead_of_running_late() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let model = demo_model(20.0);
    let (_gateway, base) = redis_stack(dir.path(), &redis, &[]);
    let worker_flags = ["--concurrency", "1", "--lease", "1s"];
    let mut worker = Process::worker(dir.path(), "w1", &redis.url(), &model.url, &worker_flags);
    let api = Api::new(&base);
    let id = api
        .submit(
            "key-a",
            json!({"prompt": "cut short", "max_tokens": 80, "deadline_ms": 2500}),
        )
        .await;
    wait_record(&api, &id, "the job runs", Duration::from_secs(20), |r| {
        r["status"] == "running"
    })
    .await;
    worker.signal("KILL");
    worker.wait_exit(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let _w2 = Process::worker(dir.path(), "w2", &redis.url(), &model.url, &worker_flags);
    let rec = wait_record(&api, &id, "the job expires", Duration::from_secs(30), |r| {
        r["status"] == "expired"
    })
    .await;
    assert!(
        rec["error_message"].as_str().unwrap().contains("deadline"),
        "{rec}"
    );
    assert_eq!(rec["worker_id"], "w1", "no second run started: {rec}");
    let a = tenant(&api, "a").await;
    assert_eq!(
        (a["queued"].as_u64(), a["running"].as_u64()),
        (Some(0), Some(0)),
        "{a}"
    );
    assert_eq!(a["outcomes"]["expired"], 1, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_shorter_than_the_measured_cold_start_at_zero_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--demo-load-time",
        "2s",
        "--concurrency",
        "1",
        "--max-replicas",
        "1",
        "--policy",
        "keepalive:1s",
    ];
    let up = Up::start(dir.path(), "up", &flags).await;
    // One job measures the cold start; then the pool goes back to zero.
    up.run_job(
        json!({"prompt": "wake up", "max_tokens": 2}),
        Duration::from_secs(30),
    )
    .await;
    up.wait_for(
        "the pool is back at zero",
        Duration::from_secs(30),
        || async { up.pool().await["replicas"].as_array().unwrap().is_empty() },
    )
    .await;
    let r = up
        .client
        .post(up.url("/v1/jobs"))
        .header("Deadline", "500")
        .json(&json!({"prompt": "right now", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (2..=4).contains(&retry),
        "Retry-After is the expected start: {retry}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "deadline_unreachable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("to start"), "{message}");
    // Nothing was stored for it, and a deadline the pool can meet is taken.
    let listed = up.get("/v1/jobs?limit=10").await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    up.run_job(
        json!({"prompt": "in time", "max_tokens": 2, "deadline_ms": 30000}),
        Duration::from_secs(30),
    )
    .await;
}
