//! `greenscale gateway` from the built binary, with a real Redis, worker and demo model,
//! checked with plain HTTP, the official OpenAI Python SDK and schemathesis.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use greenscale_testkit::{RedisServer, free_port};
use serde_json::{Value, json};

mod common;
use common::{Process, demo_model, metrics_text};

const KEY: &str = "test-key-123";

struct Stack {
    redis: RedisServer,
    model_url: String,
    base: String,
    dir: tempfile::TempDir,
    gateway: Process,
}

fn start_gateway(dir: &Path, redis: &RedisServer, extra: &[&str]) -> (Process, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = redis.url();
    let mut args = vec![
        "gateway",
        "--redis-url",
        &url,
        "--listen",
        &listen,
        "--api-key",
        KEY,
    ];
    args.extend_from_slice(extra);
    let gateway = Process::spawn(dir, "gateway", &args);
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway did not listen: {}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (gateway, base)
}

fn stack(extra: &[&str]) -> Stack {
    let redis = RedisServer::start();
    let model = demo_model(200.0);
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let args = [
        &[
            "--model",
            "greenscale-demo",
            "--object-store",
            objects.to_str().unwrap(),
        ],
        extra,
    ]
    .concat();
    let (gateway, base) = start_gateway(dir.path(), &redis, &args);
    Stack {
        redis,
        model_url: model.url,
        base,
        dir,
        gateway,
    }
}

impl Stack {
    fn worker(&self, name: &str) -> Process {
        Process::worker(
            self.dir.path(),
            name,
            &self.redis.url(),
            &self.model_url,
            &[],
        )
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(base: &str, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get(base: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{base}{path}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
}

/// Waits up to 5 s for the gateway to list one cancelled job; fails with `why` if not.
async fn wait_for_one_cancelled_job(base: &str, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list: Value = get(base, "/v1/jobs?status=cancelled")
            .await
            .json()
            .await
            .unwrap();
        if list["jobs"].as_array().unwrap().len() == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn error_type(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["error"]["type"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn errors_are_json_with_fitting_statuses() {
    let s = stack(&["--max-pending", "3", "--max-body-bytes", "2000"]);
    // 401 without (or with a wrong) key.
    let r = client()
        .get(format!("{}/v1/queue", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(error_type(r).await, "authentication_error");
    let r = client()
        .get(format!("{}/v1/queue", s.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // 400: bad JSON, no prompt, bad status filter.
    let r = client()
        .post(format!("{}/v1/jobs", s.base))
        .bearer_auth(KEY)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_type(r).await, "invalid_request_error");
    let r = post(&s.base, "/v1/jobs", json!({"prompt": ""})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(get(&s.base, "/v1/jobs?status=bogus").await.status(), 400);
    // 413: body over the limit.
    let r = post(&s.base, "/v1/jobs", json!({"prompt": "x".repeat(5000)})).await;
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "request_too_large");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("limit of 2000 bytes") && message.contains("--max-body-bytes"),
        "the limit and the flag that sets it: {message}"
    );
    // 404 for unknown jobs and endpoints.
    assert_eq!(get(&s.base, "/v1/jobs/none").await.status(), 404);
    assert_eq!(get(&s.base, "/v1/nothing").await.status(), 404);
    // 429 with Retry-After once 3 jobs are pending (no worker runs).
    for i in 0..3 {
        let r = post(&s.base, "/v1/jobs", json!({"prompt": format!("p{i}")})).await;
        assert_eq!(r.status(), 202);
    }
    // The pending count is re-read at most every 100 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = post(&s.base, "/v1/jobs", json!({"prompt": "one too many"})).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(error_type(r).await, "rate_limit_error");
    // Health, readiness, metrics and the OpenAPI document need no key.
    assert_eq!(
        client()
            .get(format!("{}/healthz", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{}/readyz", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = metrics_text(&s.base).await;
    assert!(
        metrics.contains("greenscale_jobs_submitted_total 3"),
        "{metrics}"
    );
    assert!(metrics.contains("greenscale_queue_pending 3"));
    let doc: Value = client()
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/queue",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(
        !s.gateway.log().contains(KEY),
        "API keys never appear in logs"
    );
}

#[tokio::test]
async fn jobs_api_idempotency_cancel_list_and_events() {
    let s = stack(&[]);
    // Idempotency-Key returns the same job.
    let submit = |key: &'static str| {
        let base = s.base.clone();
        async move {
            client()
                .post(format!("{base}/v1/jobs"))
                .bearer_auth(KEY)
                .header("Idempotency-Key", key)
                .json(&json!({"prompt": "same"}))
                .send()
                .await
                .unwrap()
        }
    };
    let a = submit("k1").await;
    assert_eq!(a.status(), 202);
    let location = a.headers()["location"].to_str().unwrap().to_string();
    let a: Value = a.json().await.unwrap();
    let b: Value = submit("k1").await.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(location, format!("/v1/jobs/{}", a["id"].as_str().unwrap()));
    // Cancel a queued job; cancelling again is a conflict.
    let id = a["id"].as_str().unwrap();
    let r = client()
        .delete(format!("{}/v1/jobs/{id}", s.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "cancelled");
    let r = client()
        .delete(format!("{}/v1/jobs/{id}", s.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Events arrive in order for a streamed job once a worker runs it.
    let job: Value = post(
        &s.base,
        "/v1/jobs",
        json!({"prompt": "stream me", "stream": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let events = get(&s.base, &format!("/v1/jobs/{id}/events")).await;
    assert_eq!(events.status(), 200);
    let _worker = s.worker("w1");
    let body = tokio::time::timeout(Duration::from_secs(20), events.text())
        .await
        .expect("the event stream ends when the job is done")
        .unwrap();
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"queued"), "{body}");
    assert_eq!(names.last(), Some(&"finished"), "{body}");
    let started = names.iter().position(|n| *n == "started").expect("started");
    let first_token = names.iter().position(|n| *n == "token").expect("tokens");
    assert!(started < first_token, "{names:?}");
    let text: String = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect();
    let record: Value = get(&s.base, &format!("/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(
        record["result"].as_str().unwrap(),
        text,
        "tokens add up to the answer"
    );
    // The list shows both jobs, filterable by status.
    let list: Value = get(&s.base, "/v1/jobs?limit=10")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let done: Value = get(&s.base, "/v1/jobs?status=succeeded")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["jobs"][0]["id"], id.as_str());
    let cancelled: Value = get(&s.base, "/v1/jobs?status=cancelled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["jobs"].as_array().unwrap().len(), 1);
    // Outcome counters cover every job, whoever followed it.
    let metrics = metrics_text(&s.base).await;
    assert!(
        metrics.contains("greenscale_job_runs_total{status=\"cancelled\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("greenscale_job_runs_total{status=\"succeeded\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_request_at_zero_workers_is_held_until_a_worker_starts() {
    let s = stack(&[]);
    let base = s.base.clone();
    let request = tokio::spawn(async move {
        post(
            &base,
            "/v1/chat/completions",
            json!({"model": "greenscale-demo", "messages": [{"role": "user", "content": "wake up"}]}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!request.is_finished(), "the request is held, not failed");
    let _worker = s.worker("late");
    let r = tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .expect("completes once a worker runs")
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("[demo]")
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn past_the_deadline_the_request_fails_clearly_and_its_job_is_cancelled() {
    let s = stack(&["--wait-deadline", "1s"]);
    let r = post(
        &s.base,
        "/v1/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "nobody home"}]}),
    )
    .await;
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no worker")
    );
    let list: Value = get(&s.base, "/v1/jobs?status=cancelled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_unstarted_job() {
    let s = stack(&[]);
    let r = client()
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(KEY)
        .timeout(Duration::from_millis(500))
        .json(&json!({"messages": [{"role": "user", "content": "never mind"}]}))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up");
    wait_for_one_cancelled_job(&s.base, "the job was not cancelled").await;
}

/// HTTP/2 with prior knowledge (h2c) on the gateway's port: a multiplexing proxy or client
/// holds many requests on one connection; a stream it resets cancels its unstarted job.
#[tokio::test]
async fn http2_clients_hold_many_requests_on_one_connection() {
    let s = stack(&[]);
    // curl (nghttp2) as an independent HTTP/2 peer, next to HTTP/1.1 on the same port.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--http2-prior-knowledge")
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .arg(format!("{}/v1/models", s.base))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    assert_eq!(get(&s.base, "/v1/models").await.status(), 200);

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let held: Vec<_> = (0..50)
        .map(|i| {
            let (h2, url) = (h2.clone(), format!("{}/v1/chat/completions", s.base));
            tokio::spawn(async move {
                h2.post(url)
                    .bearer_auth(KEY)
                    .json(&json!({"model": "greenscale-demo", "messages": [{"role": "user", "content": format!("held {i}")}]}))
                    .send()
                    .await
            })
        })
        .collect();
    // One more stream on its own connection, given up after half a second: reset.
    let gave_up = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(KEY)
        .json(&json!({"messages": [{"role": "user", "content": "never mind"}]}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up");
    wait_for_one_cancelled_job(&s.base, "the reset stream's job was not cancelled").await;
    assert!(
        held.iter().all(|r| !r.is_finished()),
        "all 50 are held at zero workers"
    );

    let _worker = s.worker("h2");
    for request in held {
        let r = tokio::time::timeout(Duration::from_secs(30), request)
            .await
            .expect("answered once a worker runs")
            .unwrap()
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .starts_with("[demo]")
        );
    }
}

/// With every worker gone, the gateway's own maintenance still hands a killed worker's job
/// back to the pending list, where a list-length trigger (KEDA's) sees it and wakes a pool.
#[tokio::test]
async fn a_killed_workers_job_goes_back_to_the_list_with_no_worker_left() {
    let s = stack(&[]);
    let slow = demo_model(5.0);
    let id = post(
        &s.base,
        "/v1/jobs",
        json!({"prompt": "a long answer", "model": "greenscale-demo"}),
    )
    .await
    .json::<Value>()
    .await
    .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let worker = Process::worker(
        s.dir.path(),
        "doomed",
        &s.redis.url(),
        &slow.url,
        &["--lease", "1s"],
    );
    let mut c = s.redis.connection();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::cmd("LLEN")
        .arg("greenscale:jobs:inflight:doomed")
        .query::<i64>(&mut c)
        .unwrap()
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the worker did not lease the job"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    worker.signal("KILL");
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis::cmd("LLEN").arg("jobs").query::<i64>(&mut c).unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "the job did not go back to the list"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let record: Value = get(&s.base, &format!("/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(record["status"], "queued", "{record}");
}

async fn model_ids(base: &str) -> Vec<String> {
    let list: Value = get(base, "/v1/models").await.json().await.unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_models_lists_what_the_workers_serve_and_keeps_it_while_they_are_at_zero() {
    let redis = RedisServer::start();
    let model = demo_model(200.0);
    let dir = tempfile::tempdir().unwrap();
    // No --model: the gateway lists only what workers announce, never an invented default.
    let (gateway, base) = start_gateway(dir.path(), &redis, &[]);
    assert!(model_ids(&base).await.is_empty());
    let mut worker = Process::worker(
        dir.path(),
        "w1",
        &redis.url(),
        &model.url,
        &["--model", "tiny-llama"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while model_ids(&base).await.is_empty() {
        assert!(Instant::now() < deadline, "{}", worker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(model_ids(&base).await, ["tiny-llama"]);
    // A request naming no model is answered as that model.
    let r = post(
        &base,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "which model?"}]}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", gateway.log());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["model"], "tiny-llama", "{body}");
    // Scaled to zero, the model is still listed: a client that lists models before its
    // first request must find it, or it would never wake the pool.
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(model_ids(&base).await, ["tiny-llama"]);
}

fn run_python(script: &str, base: &str) -> std::process::Output {
    let python = greenscale_testkit::python();
    Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/",
            "openai_sdk.py"
        ))
        .arg(script)
        .env("OPENAI_BASE_URL", format!("{base}/v1"))
        .env("OPENAI_API_KEY", KEY)
        .output()
        .expect("run the OpenAI SDK check")
}

#[test]
fn the_official_openai_sdk_works_unchanged() {
    let s = stack(&[]);
    let _worker = s.worker("w1");
    for mode in ["create", "stream", "models"] {
        let out = run_python(mode, &s.base);
        assert!(
            out.status.success(),
            "{mode}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn fuzzing_from_the_openapi_document_finds_no_server_errors() {
    let s = stack(&["--wait-deadline", "2s"]);
    let _worker = s.worker("w1");
    let python = greenscale_testkit::python();
    let out = Command::new(python.parent().unwrap().join("schemathesis"))
        .args(["run", &format!("{}/openapi.json", s.base)])
        .args(["--header", &format!("Authorization: Bearer {KEY}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--max-examples", "30", "--exclude-path", "/v1/jobs/{id}/events", "--request-timeout", "10"])
        .args(["--seed", "20261128"])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its cache folder goes where it runs: there, not into the source tree.
        .current_dir(s.dir.path())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn refuses_a_public_address_without_api_keys() {
    let out = Command::new(env!("CARGO_BIN_EXE_greenscale"))
        .args([
            "gateway",
            "--listen",
            "0.0.0.0:0",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .env_remove("GREENSCALE_API_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without API keys") && err.contains("--api-key"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_ends_held_requests_and_silent_connections_cleanly_and_exits_zero() {
    let mut s = stack(&[]);
    let base = s.base.clone();
    let held = tokio::spawn(async move {
        post(
            &base,
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "still waiting"}]}),
        )
        .await
    });
    // A client that connected and has sent nothing yet (the gateway would wait 30 s for
    // its request's head) does not hold up the stop.
    let _silent = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.gateway.signal("TERM");
    let r = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held request is answered")
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(error_type(r).await, "shutting_down");
    assert!(s.gateway.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_job_runs_answers_its_request_and_refuses_new_ones() {
    let mut s = stack(&[]);
    let slow = demo_model(6.0);
    let _worker = Process::worker(s.dir.path(), "w", &s.redis.url(), &slow.url, &[]);
    let base = s.base.clone();
    let waiting = tokio::spawn(async move {
        post(
            &base,
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a slow answer"}]}),
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jobs: Value = get(&s.base, "/v1/jobs?status=running")
            .await
            .json()
            .await
            .unwrap();
        if jobs["jobs"].as_array().is_some_and(|j| !j.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = post(&s.base, "/v1/jobs", json!({"prompt": "new work"})).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let r = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("answered within the grace")
        .unwrap();
    assert_eq!(r.status(), 200, "{}", s.gateway.log());
    let body: Value = r.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("[demo]")
    );
    assert!(s.gateway.wait_exit(Duration::from_secs(10)).success());
    assert!(s.gateway.log().contains("draining"), "{}", s.gateway.log());
}

/// The raw server-sent events of a streamed chat request, read until `until` is in them
/// or `within` passes.
async fn raw_stream(base: &str, progress: bool, until: &str, within: Duration) -> String {
    let mut req = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"stream": true, "messages": [{"role": "user", "content": "wake up"}]}));
    if progress {
        req = req.header("X-GreenScale-Progress", "1");
    }
    let mut r = req.send().await.unwrap();
    let deadline = Instant::now() + within;
    let mut seen = String::new();
    while !seen.contains(until) && Instant::now() < deadline {
        if let Ok(Ok(Some(b))) = tokio::time::timeout(Duration::from_millis(500), r.chunk()).await {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waiting_for_a_wake_hears_that_it_waits_and_then_gets_its_answer() {
    let s = stack(&[]);
    // No worker: the request waits. Every 5 s an SSE comment says so (ignored by clients,
    // but it keeps proxies and SDK read timeouts from cutting the stream).
    let seen = raw_stream(&s.base, false, "\n: waiting for", Duration::from_secs(8)).await;
    assert!(
        seen.contains("\n: waiting for pool greenscale-demo: 5 s so far"),
        "{seen}"
    );
    assert!(
        !seen.contains("reasoning_content"),
        "no visible text unasked: {seen}"
    );
    // Opted in, the same words come as reasoning text, which chat UIs show apart.
    let seen = raw_stream(&s.base, true, "reasoning_content", Duration::from_secs(8)).await;
    assert!(
        seen.contains(r#""reasoning_content":"waiting for pool greenscale-demo: 5 s so far\n""#),
        "{seen}"
    );
    // The official SDK streams through the comments: start a worker after 6 s.
    let (redis, model, dir) = (
        s.redis.url(),
        s.model_url.clone(),
        s.dir.path().to_path_buf(),
    );
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(6));
        Process::worker(&dir, "late", &redis, &model, &[])
    });
    let out = run_python("stream", &s.base);
    let _worker = late.join().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
