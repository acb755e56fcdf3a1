//! The Batch API and webhooks end to end: the official OpenAI Python SDK runs batches on
//! `greenscale up` and on gateways sharing Redis and an object store, through a SIGKILLed
//! `up`, worker and gateway; webhooks are verified by the Standard Webhooks library.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Process, Up, demo_model, wait_until};
use greenscale_testkit::{RedisServer, free_port};
use serde_json::{Value, json};

/// Runs `openai_batch.py ARGS` with the SDK pointed at `base`; its stdout, or a panic with
/// its output.
fn sdk(base: &str, args: &[&str]) -> String {
    run_sdk(base, args, None)
}

/// Creates a batch of one request whose webhook_url is `url`; its id.
fn sdk_with_webhook(base: &str, url: &str) -> String {
    run_sdk(base, &["create", "1"], Some(url))
}

fn run_sdk(base: &str, args: &[&str], webhook: Option<&str>) -> String {
    let mut cmd = Command::new(greenscale_testkit::python());
    if let Some(url) = webhook {
        cmd.env("BATCH_WEBHOOK_URL", url);
    }
    let out = cmd
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/openai_batch.py"
        ))
        .args(args)
        .env("OPENAI_BASE_URL", format!("{base}/v1"))
        .env("OPENAI_API_KEY", "key-a")
        .output()
        .expect("run the OpenAI SDK batch script");
    assert!(
        out.status.success(),
        "openai_batch.py {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth("key-a")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(base: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth("key-a")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Polls batch `id` until `done` holds for it.
async fn wait_batch(
    base: &str,
    id: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let b = get(base, &format!("/v1/batches/{id}")).await;
        if done(&b) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}: {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Demo pool flags: fast loads, short answers.
const FAST: [&str; 4] = ["--demo-load-time", "100ms", "--demo-tokens-per-sec", "400"];

/// One replica of a slower demo model (about 0.2 s a request), batches run at once: a
/// batch of a few hundred lasts long enough to be interrupted.
const ONE_SLOW_REPLICA: [&str; 8] = [
    "--policy",
    "greenscale:batch_max_wait=0s",
    "--demo-load-time",
    "100ms",
    "--demo-tokens-per-sec",
    "40",
    "--max-replicas",
    "1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_runs_a_thousand_line_batch_and_a_malformed_line_names_its_number() {
    let dir = tempfile::tempdir().unwrap();
    // The default policy: a thousand requests are worth waking the idle pool for.
    let up = Up::start(dir.path(), "up", &FAST).await;
    let batch = sdk(&up.base, &["create", "1000", "17"]);
    let summary = sdk(&up.base, &["wait", &batch, "1000", "17"]);
    println!("{summary}");
    // Each request ran as a batch-class job of the caller's tenant.
    let job = up.job(&format!("{batch}-1")).await;
    assert_eq!(job["priority"], "batch", "{job}");
    assert_eq!(job["status"], "succeeded", "{job}");
    let reasons: Vec<String> = up.pool().await["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("worth a wake")),
        "the pile of batch work woke the pool: {reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_at_zero_for_warm_capacity_and_runs_on_it_once_other_work_wakes_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), "up", &FAST).await;
    let batch = sdk(&up.base, &["create", "20"]);
    let b = wait_batch(
        &up.base,
        &batch,
        "the batch is queued",
        Duration::from_secs(20),
        |b| b["status"] == "in_progress",
    )
    .await;
    assert_eq!(b["request_counts"]["total"], 20);
    // Nothing else needs the pool: it stays at zero, and says why.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pool = up.pool().await;
    assert_eq!(pool["replicas"].as_array().map(Vec::len), Some(0), "{pool}");
    let reason = pool["last_decision"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("batch jobs wait for warm capacity"),
        "{pool}"
    );
    let b = get(&up.base, &format!("/v1/batches/{batch}")).await;
    assert_eq!(b["request_counts"]["completed"], 0, "{b}");
    // An interactive request wakes it; the batch runs on the warm replica.
    up.run_job(
        json!({"prompt": "wake up", "max_tokens": 4}),
        Duration::from_secs(30),
    )
    .await;
    sdk(&up.base, &["wait", &batch, "20"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_a_sigkilled_up_and_answers_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [&ONE_SLOW_REPLICA[..], &["--lease", "2s"][..]].concat();
    let mut up = Up::start(dir.path(), "up-1", &flags).await;
    let batch = sdk(&up.base, &["create", "150"]);
    wait_batch(
        &up.base,
        &batch,
        "a part of the batch is done",
        Duration::from_secs(60),
        |b| b["request_counts"]["completed"].as_u64() >= Some(20),
    )
    .await;
    up.process.signal("KILL");
    up.process.wait_exit(Duration::from_secs(10));
    let up = Up::start(dir.path(), "up-2", &flags).await;
    let summary = sdk(&up.base, &["wait", &batch, "150"]);
    println!("{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_and_gateway_leave_the_batch_to_the_others_with_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let model = demo_model(40.0);
    let objects = dir.path().join("objects");
    let gateway = |name: &str| {
        let listen = format!("127.0.0.1:{}", free_port());
        let p = Process::spawn(
            dir.path(),
            name,
            &[
                "gateway",
                "--redis-url",
                &redis.url(),
                "--listen",
                &listen,
                "--object-store",
                objects.to_str().unwrap(),
                "--model",
                "demo",
            ],
        );
        wait_until("the gateway listens", Duration::from_secs(10), || {
            std::net::TcpStream::connect(&listen).is_ok()
        });
        (p, format!("http://{listen}"))
    };
    let (mut g1, base1) = gateway("gateway-1");
    let (_g2, base2) = gateway("gateway-2");
    let worker_flags = ["--concurrency", "4", "--lease", "1s"];
    let mut w1 = Process::worker(dir.path(), "w1", &redis.url(), &model.url, &worker_flags);
    let batch = sdk(&base1, &["create", "200"]);
    wait_batch(
        &base2,
        &batch,
        "a part of the batch is done",
        Duration::from_secs(60),
        |b| b["request_counts"]["completed"].as_u64() >= Some(20),
    )
    .await;
    w1.signal("KILL");
    w1.wait_exit(Duration::from_secs(10));
    g1.signal("KILL");
    g1.wait_exit(Duration::from_secs(10));
    let _w2 = Process::worker(dir.path(), "w2", &redis.url(), &model.url, &worker_flags);
    let summary = sdk(&base2, &["wait", &batch, "200"]);
    println!("{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_batch_stops_its_unstarted_requests_and_keeps_its_answers() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ONE_SLOW_REPLICA;
    let up = Up::start(dir.path(), "up", &flags).await;
    let batch = sdk(&up.base, &["create", "300"]);
    wait_batch(
        &up.base,
        &batch,
        "a part of the batch is done",
        Duration::from_secs(60),
        |b| b["request_counts"]["completed"].as_u64() >= Some(10),
    )
    .await;
    assert_eq!(sdk(&up.base, &["cancel", &batch]), "cancelling");
    let b = wait_batch(
        &up.base,
        &batch,
        "the batch is cancelled",
        Duration::from_secs(60),
        |b| b["status"] == "cancelled",
    )
    .await;
    let done = b["request_counts"]["completed"].as_u64().unwrap();
    assert!((10..300).contains(&done), "{b}");
    assert_eq!(
        b["request_counts"]["failed"].as_u64().unwrap(),
        300 - done,
        "{b}"
    );
    let text = |id: &str| {
        let url = format!("{}/v1/files/{id}/content", up.base);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let output = text(b["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.lines().count() as u64, done, "every answer is kept");
    let errors = text(b["error_file_id"].as_str().unwrap()).await;
    assert_eq!(errors.lines().count() as u64, 300 - done);
    let first: Value = serde_json::from_str(errors.lines().next().unwrap()).unwrap();
    assert_eq!(first["error"]["code"], "batch_cancelled", "{first}");
    // A finished batch cannot be cancelled again.
    let again = post(&up.base, &format!("/v1/batches/{batch}/cancel"), json!({})).await;
    assert_eq!(again.status(), 409);
}

/// The webhook receiver (verifying with the Standard Webhooks library) on a free port.
struct Receiver {
    _process: KillOnDrop,
    port: u16,
    log: std::path::PathBuf,
}

impl Receiver {
    fn start(dir: &Path, secret: &str) -> Receiver {
        let port = free_port();
        let log = dir.join("webhooks.jsonl");
        let process = Command::new(greenscale_testkit::python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/webhook_receiver.py"
            ))
            .args([&port.to_string(), secret, log.to_str().unwrap()])
            .spawn()
            .expect("start the webhook receiver");
        wait_until("the receiver listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Receiver {
            _process: KillOnDrop(process),
            port,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The requests received so far for message `id`.
    fn tries(&self, id: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["id"] == id)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_as_standard_webhooks_say_retried_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        &FAST[..],
        &[
            "--api-key",
            "a:key-a",
            "--policy",
            "greenscale:batch_max_wait=0s",
            "--webhook-allow",
            "127.0.0.1/32",
            "--webhook-retry",
            "200ms",
            "--webhook-attempts",
            "3",
        ][..],
    ]
    .concat();
    let up = Up::start(dir.path(), "up", &flags).await;
    let secret = get(&up.base, "/v1/webhooks/secret").await;
    assert_eq!(secret["tenant"], "a");
    let receiver = Receiver::start(dir.path(), secret["secret"].as_str().unwrap());

    // A receiver that fails twice gets the third try, and it verifies.
    let r = post(
        &up.base,
        "/v1/jobs",
        json!({"prompt": "tell me when done", "max_tokens": 4, "webhook_url": receiver.url("/flaky")}),
    )
    .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let job = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let msg = format!("msg_{job}");
    wait_until("the third try", Duration::from_secs(30), || {
        receiver.tries(&msg).len() >= 3
    });
    std::thread::sleep(Duration::from_millis(1500));
    let tries = receiver.tries(&msg);
    assert_eq!(
        tries.len(),
        3,
        "no try after the one that succeeded: {tries:?}"
    );
    assert!(tries.iter().all(|t| t["verified"] == true), "{tries:?}");
    assert_eq!(tries[2]["type"], "job.succeeded");
    assert_eq!(tries[2]["data"]["id"], job.as_str());
    assert!(
        tries[2]["data"]["result"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    // A batch's webhook reports the finished batch.
    let batch = sdk_with_webhook(&up.base, &receiver.url("/ok"));
    let msg = format!("msg_{batch}");
    wait_until("the batch's webhook", Duration::from_secs(30), || {
        !receiver.tries(&msg).is_empty()
    });
    let hook = &receiver.tries(&msg)[0];
    assert_eq!(hook["verified"], true);
    assert_eq!(hook["type"], "batch.completed", "{hook}");
    assert_eq!(hook["data"]["request_counts"]["completed"], 1, "{hook}");

    // A receiver that always fails is dead-lettered after the last try, with the reason.
    let r = post(
        &up.base,
        "/v1/jobs",
        json!({"prompt": "nobody listens", "max_tokens": 2, "webhook_url": receiver.url("/down")}),
    )
    .await;
    let job = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let msg = format!("msg_{job}");
    up.wait_for(
        "the delivery is dead-lettered",
        Duration::from_secs(30),
        || async {
            get(&up.base, "/v1/webhooks/dead").await["data"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x["id"] == msg.as_str()))
        },
    )
    .await;
    assert_eq!(receiver.tries(&msg).len(), 3);
    let dead = get(&up.base, "/v1/webhooks/dead").await;
    let entry = dead["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == msg.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["attempts"], 3);
    assert!(
        entry["last_error"].as_str().unwrap().contains("500"),
        "{entry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_url_of_a_private_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), "up", &FAST).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://localhost/hook",
        "ftp://example.com/hook",
    ] {
        let r = post(
            &up.base,
            "/v1/jobs",
            json!({"prompt": "x", "webhook_url": url}),
        )
        .await;
        assert_eq!(r.status(), 400, "{url}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("refused"),
            "{url}: {body}"
        );
    }
    // Nothing was queued for the refused requests.
    let stats = get(&up.base, "/v1/queue").await;
    assert_eq!(stats["pending"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_window_closes_expires_with_its_answers_kept_and_the_rest_unrun() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--demo-load-time",
        "100ms",
        "--demo-tokens-per-sec",
        "20",
        "--concurrency",
        "1",
        "--max-replicas",
        "1",
    ];
    let up = Up::start(dir.path(), "up", &flags).await;
    // 30 requests of about 0.4 s each, one at a time, in a 5 s window: some cannot start.
    let batch = sdk(&up.base, &["create", "30", "0", "5s"]);
    let b = wait_batch(
        &up.base,
        &batch,
        "the batch expires",
        Duration::from_secs(90),
        |b| b["status"] == "expired",
    )
    .await;
    let done = b["request_counts"]["completed"].as_u64().unwrap();
    assert!(done < 30, "{b}");
    assert_eq!(
        b["request_counts"]["failed"].as_u64().unwrap(),
        30 - done,
        "{b}"
    );
    assert!(b["expired_at"].as_u64().is_some(), "{b}");
    let errors = reqwest::get(format!(
        "{}/v1/files/{}/content",
        up.base,
        b["error_file_id"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert_eq!(errors.lines().count() as u64, 30 - done);
    for line in errors.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["error"]["code"], "batch_expired", "{e}");
    }
}

/// An S3-compatible server (moto's, which keeps objects in memory and, as S3 does, refuses
/// a put with `If-None-Match: *` over an existing object) with one bucket.
struct S3Server {
    _process: KillOnDrop,
    endpoint: String,
}

impl S3Server {
    fn start(bucket: &str) -> S3Server {
        let port = free_port();
        let python = greenscale_testkit::python();
        let process = Command::new(python.parent().unwrap().join("moto_server"))
            .args(["-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_until("the S3 server listens", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let made = Command::new(&python)
            .args(["-c", &format!(
                "import boto3; boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', \
                 aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')"
            )])
            .status()
            .unwrap();
        assert!(made.success(), "cannot create the bucket");
        S3Server {
            _process: KillOnDrop(process),
            endpoint,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_keep_files_and_batches_in_an_s3_bucket_and_sign_alike() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start("greenscale-batches");
    let redis = RedisServer::start();
    let model = demo_model(400.0);
    let gateway = |name: &str| {
        let listen = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_greenscale"))
            .args(["gateway", "--redis-url", &redis.url(), "--listen", &listen])
            .args(["--object-store", "s3://greenscale-batches/tenants-batches"])
            .args(["--model", "demo", "--api-key", "a:key-a"])
            .env("AWS_ENDPOINT", &s3.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .stderr(log)
            .spawn()
            .unwrap();
        wait_until("the gateway listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&listen).is_ok()
        });
        (KillOnDrop(child), format!("http://{listen}"))
    };
    let (_g1, base1) = gateway("gateway-1");
    let (_g2, base2) = gateway("gateway-2");
    let _worker = Process::worker(dir.path(), "w1", &redis.url(), &model.url, &[]);
    let batch = sdk(&base1, &["create", "50", "3"]);
    // The other gateway reads the same bucket: it reports and finishes the batch too.
    sdk(&base2, &["wait", &batch, "50", "3"]);
    assert_eq!(
        get(&base1, "/v1/webhooks/secret").await["secret"],
        get(&base2, "/v1/webhooks/secret").await["secret"],
        "the signing key made by the first gateway is the one both use"
    );
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
