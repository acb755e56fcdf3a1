//! GreenScale against a real llama.cpp `llama-server` (built from source by
//! `scripts/llama-server`, with tiny random-weight models the tests write): the official
//! OpenAI SDK through `up`, the loading phase, a prompt over the context, a server killed
//! mid-stream, nothing left after scale to zero, and `greenscale worker` on Redis.
//!
//! What llama-server does that these tests rely on is listed in `greenscale_testkit::llama`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use greenscale_testkit::llama::{self, ModelSize};
use greenscale_testkit::{RedisServer, free_port};
use serde_json::{Value, json};

mod common;
use common::{Process, Up, cmdline, group_members, pgids, wait_until};

/// The `--model-cmd` of a llama-server replica for `model`, with `extra` flags.
fn llama_cmd(model: &Path, extra: &str) -> String {
    format!(
        "{} -m {} --host 127.0.0.1 --port {{port}} --threads 1 {extra}",
        llama::server().binary.display(),
        model.display()
    )
}

/// Runs `tests/python/llama_sdk.py` (the official OpenAI SDK) against `base_url`.
fn sdk(base_url: &str, mode: &str, model: &str, prompt: &str, max_tokens: u32) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/llama_sdk.py");
    let out = Command::new(greenscale_testkit::python())
        .arg(script)
        .args([mode, model, prompt, &max_tokens.to_string()])
        .env("OPENAI_BASE_URL", base_url)
        .env("OPENAI_API_KEY", "unused")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llama_sdk.py {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// llama-server's own counts of each finished request, from its log lines
/// `prompt eval time = … / N tokens` and `eval time = … / M tokens`: `(N, M)` in order.
fn llama_reported(log: &str) -> Vec<(u64, u64)> {
    let count = |line: &str| -> Option<u64> {
        let tail = line.rsplit_once(" / ")?.1;
        tail.split_whitespace().next()?.parse().ok()
    };
    let mut out = Vec::new();
    let mut prompt = None;
    for line in log.lines() {
        if line.contains("prompt eval time =") {
            prompt = count(line);
        } else if line.contains("eval time =")
            && let (Some(p), Some(m)) = (prompt.take(), count(line))
        {
            out.push((p, m));
        }
    }
    out
}

/// Seconds since it started at which the last llama-server logged `model loaded`.
fn llama_loaded_at(log: &str) -> Option<f64> {
    // The last replica's (a slow client can outlast the keep-alive and see a second one).
    let line = log.lines().rfind(|l| l.contains("model loaded"))?;
    // llama.cpp's log stamp: `M.SS.mmm.uuu` (minutes, seconds, ms, µs) since its start.
    let stamp = line
        .split_whitespace()
        .find(|w| w.matches('.').count() == 3)?;
    let p: Vec<f64> = stamp.split('.').filter_map(|x| x.parse().ok()).collect();
    (p.len() == 4).then(|| p[0] * 60.0 + p[1] + p[2] / 1e3 + p[3] / 1e6)
}

/// llama-server processes started on `path`, and any process that has it mapped (a loaded
/// model shows up in `/proc/PID/maps`). `up` itself only carries the path in its arguments.
fn holders_of(path: &Path) -> Vec<u64> {
    let needle = path.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u64>().ok())
        .filter(|pid| {
            (cmdline(*pid).contains(&needle)
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "llama-server"))
                || std::fs::read_to_string(format!("/proc/{pid}/maps"))
                    .is_ok_and(|m| m.contains(&needle))
        })
        .collect()
}

/// Whether a plain HTTP GET of `url` (`http://127.0.0.1:PORT/path`) answers 200.
fn http_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

async fn jobs(up: &Up) -> Vec<Value> {
    up.get("/v1/jobs?limit=100").await["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_through_up_gets_llama_cpps_tokens_usage_and_real_cold_start() {
    let dir = tempfile::tempdir().unwrap();
    let model = llama::model(ModelSize::TINY);
    // Without prompt caching, llama-server's "prompt eval" line counts the whole prompt.
    let cmd = llama_cmd(&model, "-c 512 --no-cache-prompt");
    let up = Up::start(
        dir.path(),
        "up",
        &[
            "--model-cmd",
            &cmd,
            "--model",
            "tiny",
            "--policy",
            "keepalive:2s",
        ],
    )
    .await;
    let base = up.url("/v1");

    let plain = sdk(&base, "create", "tiny", "Say something.", 24);
    assert!(!plain["text"].as_str().unwrap().is_empty(), "{plain}");
    let streamed = sdk(
        &base,
        "stream",
        "tiny",
        "Say something else, at length.",
        48,
    );
    let chunks = streamed["chunks"].as_array().unwrap();
    let completion = streamed["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion > 8, "{streamed}");
    // One chunk per generated token (llama-server streams one per token; GreenScale keeps it).
    let joined: String = chunks.iter().map(|c| c[1].as_str().unwrap()).collect();
    assert_eq!(joined, streamed["text"].as_str().unwrap());
    assert!(
        chunks.len() as u64 >= completion * 9 / 10,
        "{} chunks for {completion} tokens: {streamed}",
        chunks.len()
    );

    // The usage the SDK saw, the job records' usage and llama.cpp's own counts agree.
    let reported = llama_reported(&up.process.log());
    assert_eq!(reported.len(), 2, "{}", up.process.log());
    for (got, (prompt, generated)) in [&plain, &streamed].iter().zip(&reported) {
        assert_eq!(got["usage"]["completion_tokens"], json!(generated), "{got}");
        assert_eq!(got["usage"]["prompt_tokens"], json!(prompt), "{got}");
    }
    let records = jobs(&up).await;
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r["status"], "succeeded", "{r}");
        let usage = &r["usage"];
        assert!(
            reported
                .iter()
                .any(|(p, m)| usage["prompt_tokens"] == json!(p)
                    && usage["completion_tokens"] == json!(m)),
            "record usage {usage} is not what llama.cpp reported: {reported:?}"
        );
    }

    // The cold start recorded covers llama-server's real load (and not much more).
    let pool = up.pool().await;
    let cold = pool["cold_starts"]["last_s"].as_f64().unwrap();
    let loaded = llama_loaded_at(&up.process.log()).expect("llama-server logs 'model loaded'");
    assert!(
        cold >= loaded && cold < loaded + 2.0,
        "cold start {cold} s vs llama-server loaded at {loaded} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_reaches_llama_server_while_it_answers_503_loading() {
    let dir = tempfile::tempdir().unwrap();
    let model = llama::model(ModelSize::SLOW_LOADING);
    // Read the whole file instead of mapping it, so the loading phase lasts.
    let cmd = llama_cmd(&model, "-c 512 --load-mode none");
    let up = Up::start(dir.path(), "up", &["--model-cmd", &cmd, "--model", "slow"]).await;
    let id = up
        .submit(json!({"prompt": "hello", "model": "slow", "max_tokens": 4}))
        .await;
    // While the replica is starting, its server says 503 "Loading model".
    let mut loading_seen = 0;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = up.pool().await;
        let replica = &pool["replicas"][0];
        if replica["state"] == "ready" || up.job(&id).await["status"] != "queued" {
            break;
        }
        if let Some(port) = replica["port"].as_u64()
            && let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
            && r.status() == 503
        {
            let body = r.text().await.unwrap_or_default();
            assert!(body.contains("Loading model"), "{body}");
            loading_seen += 1;
        }
        assert!(Instant::now() < deadline, "{}", up.process.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        loading_seen > 0,
        "the loading phase was not observed\n{}",
        up.process.log()
    );
    up.wait_for("the job succeeds", Duration::from_secs(60), || async {
        up.job(&id).await["status"] == "succeeded"
    })
    .await;
    let job = up.job(&id).await;
    // Sent before the model was loaded, it would have got a 503 and been retried.
    assert_eq!(job["attempts"], 1, "{job}");
    let cold = up.pool().await["cold_starts"]["last_s"].as_f64().unwrap();
    let loaded = llama_loaded_at(&up.process.log()).unwrap();
    assert!(cold >= loaded, "cold start {cold} s < load {loaded} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_over_the_context_fails_at_once_with_llama_cpps_message() {
    let dir = tempfile::tempdir().unwrap();
    let model = llama::model(ModelSize::TINY);
    let cmd = llama_cmd(&model, "-c 128");
    let up = Up::start(dir.path(), "up", &["--model-cmd", &cmd, "--model", "tiny"]).await;
    let long = "hello world ".repeat(200);
    let id = up
        .submit(json!({"prompt": long, "model": "tiny", "max_tokens": 4}))
        .await;
    up.wait_for("the job fails", Duration::from_secs(60), || async {
        up.job(&id).await["status"] == "failed"
    })
    .await;
    let job = up.job(&id).await;
    assert_eq!(
        job["attempts"], 1,
        "a permanent failure is not retried: {job}"
    );
    let message = job["error_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("exceeds the available context size"),
        "llama.cpp's own message: {job}"
    );
    assert!(
        job["result"].is_null(),
        "an error is never stored as an answer: {job}"
    );
    // The worker goes on.
    let ok = up
        .submit(json!({"prompt": "hi", "model": "tiny", "max_tokens": 4}))
        .await;
    up.wait_for("the next job succeeds", Duration::from_secs(60), || async {
        up.job(&ok).await["status"] == "succeeded"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_server_killed_mid_stream_is_replaced_the_job_retried_and_nothing_left_after_zero() {
    let dir = tempfile::tempdir().unwrap();
    // The larger model generates at tens of tokens per second on one thread: slow enough to
    // kill the server in the middle of an answer.
    let shared = llama::model(ModelSize::SLOW_LOADING);
    // A name of this test's own, so that "nothing holds the model" speaks of this test only.
    let model = shared.with_file_name(format!("killed-mid-stream-{}.gguf", std::process::id()));
    let _ = std::fs::remove_file(&model);
    std::fs::hard_link(&shared, &model).unwrap();
    let cmd = llama_cmd(&model, "-c 512");
    let up = Up::start(
        dir.path(),
        "up",
        &[
            "--model-cmd",
            &cmd,
            "--model",
            "slow",
            "--policy",
            "keepalive:2s",
        ],
    )
    .await;
    let id = up
        .submit(json!({"prompt": "go on", "model": "slow", "max_tokens": 150, "stream": true}))
        .await;
    // Follow the job's events until text arrives, then SIGKILL llama-server.
    let mut events = up
        .client
        .get(up.url(&format!("/v1/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    while !seen.contains("event: token") {
        assert!(
            Instant::now() < deadline,
            "no token: {seen}\n{}",
            up.process.log()
        );
        if let Ok(Ok(Some(b))) = tokio::time::timeout(Duration::from_secs(5), events.chunk()).await
        {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }
    let group = pgids(&up.pool().await)[0];
    let servers: Vec<u64> = group_members(group)
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "llama-server")
        })
        .collect();
    assert_eq!(servers.len(), 1, "one llama-server in group {group}");
    // Tokens are flowing, so the job is in flight when the server dies. (Right after the kill
    // it may already be handed back and queued again: that is the point of the test.)
    assert_eq!(up.job(&id).await["status"], "running");
    assert!(
        Command::new("kill")
            .args(["-KILL", &servers[0].to_string()])
            .status()
            .unwrap()
            .success()
    );
    up.wait_for(
        "the job succeeds on a new replica",
        Duration::from_secs(120),
        || async { up.job(&id).await["status"] == "succeeded" },
    )
    .await;
    let job = up.job(&id).await;
    assert!(job["attempts"].as_u64().unwrap() >= 2, "{job}");
    assert_eq!(job["usage"]["completion_tokens"], 150, "{job}");
    let pool = up.pool().await;
    assert!(
        pool["cold_starts"]["count"].as_u64().unwrap() >= 2,
        "replaced: {pool}"
    );

    // After the keep-alive the pool goes to zero: no llama-server, nothing holding the model.
    up.wait_for("scaled to zero", Duration::from_secs(60), || async {
        up.pool().await["replicas"].as_array().unwrap().is_empty()
    })
    .await;
    wait_until(
        "no process holds the model",
        Duration::from_secs(10),
        || holders_of(&model).is_empty(),
    );
    assert!(group_members(group).is_empty());
    let _ = std::fs::remove_file(&model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_worker_runs_prototype_jobs_against_llama_server() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let model = llama::model(ModelSize::TINY);
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("llama.log")).unwrap();
    let mut server = Command::new(llama::server().binary)
        .args(["-m", model.to_str().unwrap(), "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--threads", "1", "-c", "512"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/health");
    wait_until("llama-server is ready", Duration::from_secs(30), || {
        http_ok(&health)
    });
    let model_url = format!("http://127.0.0.1:{port}/v1");
    let _worker = Process::worker(
        dir.path(),
        "worker",
        &redis.url(),
        &model_url,
        &["--model", "tiny"],
    );
    let mut c = redis.connection();
    let _: i64 = redis::cmd("LPUSH")
        .arg("jobs")
        .arg(r#"{"job_id":"llama-001","prompt":"What is 2+2?"}"#)
        .query(&mut c)
        .unwrap();
    wait_until("result:llama-001 is set", Duration::from_secs(60), || {
        redis::cmd("EXISTS")
            .arg("result:llama-001")
            .query::<i64>(&mut c)
            .unwrap()
            == 1
    });
    let answer: String = redis::cmd("GET")
        .arg("result:llama-001")
        .query(&mut c)
        .unwrap();
    assert!(!answer.is_empty());
    let out = Command::new(env!("CARGO_BIN_EXE_greenscale"))
        .args(["status", "llama-001", "--json", "--redis-url", &redis.url()])
        .output()
        .unwrap();
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "succeeded", "{record}");
    let reported = llama_reported(&std::fs::read_to_string(dir.path().join("llama.log")).unwrap());
    assert_eq!(
        record["usage"]["completion_tokens"],
        json!(reported[0].1),
        "{record} vs {reported:?}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_that_fit_one_at_a_time_on_a_declared_gpu_swap_without_cutting_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let shared = llama::model(ModelSize::TINY);
    // A model file of its own per pool, so that which one is loaded shows in /proc.
    let models: Vec<std::path::PathBuf> = ["a", "b"]
        .iter()
        .map(|p| {
            let m = shared.with_file_name(format!("gpu-swap-{p}-{}.gguf", std::process::id()));
            let _ = std::fs::remove_file(&m);
            std::fs::hard_link(&shared, &m).unwrap();
            m
        })
        .collect();
    let pool = |name: &str, model: &Path| {
        format!(
            "[[pool]]\nname = \"{name}\"\ncommand = \"{}\"\ngpu_memory = \"600MiB\"\nmax_replicas = 1\npolicy = \"keepalive:60s\"\n",
            llama_cmd(model, "-c 512")
        )
    };
    let config = dir.path().join("pools.toml");
    std::fs::write(
        &config,
        format!(
            "[[gpu]]\nmemory = \"1GiB\"\n\n{}\n{}",
            pool("a", &models[0]),
            pool("b", &models[1])
        ),
    )
    .unwrap();
    let up = Up::start(dir.path(), "up", &["--config", config.to_str().unwrap()]).await;

    // Watch the process list the whole time: never both models loaded at once.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (watching, models) = (watching.clone(), models.clone());
        std::thread::spawn(move || {
            let mut both = 0;
            let mut samples = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let loaded = models.iter().filter(|m| !holders_of(m).is_empty()).count();
                both += (loaded == 2) as u32;
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (both, samples)
        })
    };

    let mut environ_checked = false;
    for round in 0..4 {
        let model = ["a", "b"][round % 2];
        let job = up
            .run_job(
                json!({"prompt": "hello", "model": model, "max_tokens": 8}),
                Duration::from_secs(90),
            )
            .await;
        assert_eq!(job["attempts"], 1, "no request is cut: {job}");
        if !environ_checked {
            // The replica got its device in its environment.
            let server = holders_of(&models[0])[0];
            let environ = std::fs::read(format!("/proc/{server}/environ")).unwrap();
            assert!(
                environ
                    .split(|b| *b == 0)
                    .any(|v| v == b"CUDA_VISIBLE_DEVICES=0"),
                "CUDA_VISIBLE_DEVICES of the llama-server"
            );
            environ_checked = true;
        }
        // What the GPU holds now: the pool that answered, alone.
        assert_eq!(up.first_gpu_holders().await, [model]);
        let gpus = up.get("/v1/gpus").await;
        assert_eq!(gpus[0]["memory_bytes"], 1u64 << 30);
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let (both, samples) = sampler.join().unwrap();
    assert_eq!(
        both, 0,
        "both models loaded at once in {both} of {samples} samples"
    );
    let pools = up.get("/v1/pools").await;
    let swaps: u64 = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["evicted"].as_u64().unwrap())
        .sum();
    assert_eq!(swaps, 3, "a → b → a → b is three swaps: {pools}");
    let metrics = up.metrics().await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("greenscale_replica_evictions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 3.0, "{metrics}");
    println!("4 alternating requests, {swaps} swaps, never both loaded ({samples} samples)");
    for m in &models {
        let _ = std::fs::remove_file(m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_llama_cpp_router_sleeps_and_wakes_in_the_same_process_and_the_policy_plans_with_the_wake()
 {
    let dir = tempfile::tempdir().unwrap();
    // Router mode: llama-server with a models folder and no `-m`; its instance of the
    // model is a child process, loaded by `POST /models/load` and gone after
    // `/models/unload` (see greenscale_testkit::llama).
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let model = models.join("tiny.gguf");
    std::fs::hard_link(llama::model(ModelSize::TINY), &model)
        .or_else(|_| std::fs::copy(llama::model(ModelSize::TINY), &model).map(|_| ()))
        .unwrap();
    let command = format!(
        "{} --models-dir {} --models-max 1 --host 127.0.0.1 --port {{port}} --threads 1 -c 512",
        llama::server().binary.display(),
        models.display()
    );
    let config = dir.path().join("pools.toml");
    // cold_cost 1: a short keep-warm (about the priced wake); sleep_cost 0.01: then asleep
    // for a while before it would stop.
    std::fs::write(
        &config,
        format!(
            "[[pool]]\nname = \"tiny\"\ncommand = \"{command}\"\nsleep = \"llama.cpp\"\nmax_replicas = 1\npolicy = \"greenscale:cold_cost=1,sleep_cost=0.01\"\n"
        ),
    )
    .unwrap();
    let up = Up::start(dir.path(), "up", &["--config", config.to_str().unwrap()]).await;
    let run = |prompt: &'static str| {
        up.run_job(
            json!({"prompt": prompt, "model": "tiny", "max_tokens": 8}),
            Duration::from_secs(90),
        )
    };
    let first = run("hello").await;
    assert_eq!(first["attempts"], 1, "{first}");
    let router = pgids(&up.pool().await)[0];

    // Idle: the replica falls asleep; the router lives, the model's instance is gone.
    up.wait_for("the replica is asleep", Duration::from_secs(30), || async {
        up.pool().await["replicas"][0]["state"] == "asleep"
    })
    .await;
    assert!(
        holders_of(&model).is_empty(),
        "asleep, nothing holds the model"
    );
    assert!(
        !group_members(router).is_empty(),
        "the router process lives"
    );
    let pool = up.pool().await;
    assert_eq!(pool["sleeps"], 1, "{pool}");
    assert_eq!(pool["sleep_engine"], "llama.cpp");
    let host = pool["replicas"][0]["asleep_host_bytes"].as_u64().unwrap();
    assert!(host > 0, "{pool}");
    let reasons: Vec<String> = pool["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("asleep until")),
        "the policy chose the sleep tier: {reasons:?}"
    );

    // A job wakes the same process: no new cold start, and the wake is measured.
    let second = run("hello again").await;
    assert_eq!(second["attempts"], 1, "{second}");
    let pool = up.pool().await;
    assert_eq!(pgids(&pool), [router], "the same router served: {pool}");
    assert_eq!(pool["cold_starts"]["count"], 1, "{pool}");
    assert_eq!(pool["wakes"]["count"], 1, "{pool}");
    let wake = pool["wakes"]["last_s"].as_f64().unwrap();
    let cold = pool["cold_starts"]["last_s"].as_f64().unwrap();
    assert!(wake > 0.0, "{pool}");
    assert!(!holders_of(&model).is_empty(), "awake, the model is loaded");

    // The policy plans the next idle period with the measured wake: a sleep tier is worth
    // having only while a wake costs less than a cold start. (The router loads a model by
    // starting a process for it, so its wake saves only the router's own start; on these
    // tiny models the two are close, and either branch may run.)
    if wake < cold {
        let planned = format!("wakes in {wake:.2} s");
        up.wait_for(
            "asleep again, planned with the measured wake",
            Duration::from_secs(30),
            || async {
                let pool = up.pool().await;
                let planned_with = pool["decisions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["reason"].as_str().is_some_and(|r| r.contains(&planned)));
                planned_with && pool["sleeps"] == 2
            },
        )
        .await;
    } else {
        up.wait_for(
            "stopped without sleeping again",
            Duration::from_secs(30),
            || async { up.pool().await["replicas"].as_array().unwrap().is_empty() },
        )
        .await;
        assert_eq!(up.pool().await["sleeps"], 1);
    }
    let metrics = up.metrics().await;
    let sleeps = up.pool().await["sleeps"].as_u64().unwrap();
    assert!(
        metrics.contains(&format!(
            "greenscale_replica_sleeps_total{{pool=\"tiny\"}} {sleeps}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("greenscale_wake_seconds_count{pool=\"tiny\"} 1"),
        "{metrics}"
    );
    println!(
        "llama.cpp router: cold start {cold:.3} s, wake {wake:.3} s, asleep it holds {} of host memory",
        greenscale_core::format_bytes(host)
    );
}
