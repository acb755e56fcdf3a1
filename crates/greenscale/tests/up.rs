//! `greenscale up` from the built binary: the demo pool scaling 0 → k → 0, a model server
//! killed mid-job, SIGTERM with jobs running and a restart, a remote-API pool, and broken
//! configs and commands.

use std::time::{Duration, Instant};

use greenscale_testkit::free_port;
use serde_json::{Value, json};

mod common;
use common::{Up, children_of, cmdline, demo_model, group_members, pgids};

fn replicas(pool: &Value) -> usize {
    pool["replicas"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_wakes_the_demo_pool_from_zero_and_it_returns_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(
        dir.path(),
        "up",
        &[
            "--demo-load-time",
            "1s",
            "--concurrency",
            "2",
            "--max-replicas",
            "4",
            "--policy",
            "greenscale:cold_cost=2",
        ],
    )
    .await;
    let pool = up.pool().await;
    assert_eq!(pool["name"], "demo");
    assert_eq!(pool["demo"], true);
    assert_eq!(replicas(&pool), 0, "starts at zero");

    let submits =
        (0..30).map(|i| up.submit(json!({"prompt": format!("job {i}"), "max_tokens": 20})));
    let ids = futures::future::join_all(submits).await;

    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = up.pool().await;
        peak = peak.max(replicas(&pool));
        let jobs = up.get("/v1/jobs?limit=100").await;
        let done = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["status"] == "succeeded")
            .count();
        if done == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not finish: {}",
            up.process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        peak > 1,
        "a burst of 30 at concurrency 2 needs more than one replica; peak {peak}"
    );
    for id in &ids {
        let job = up.job(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert!(
            job["worker_id"].as_str().unwrap().contains("demo-"),
            "{job}"
        );
    }

    up.wait_for("replicas back to zero", Duration::from_secs(30), || async {
        replicas(&up.pool().await) == 0
    })
    .await;
    // The model server's own lines are shown as they are, after the replica's name, not
    // wrapped in a second timestamp and level.
    let log = up.process.log();
    let model_line = log
        .lines()
        .find(|l| l.contains("GreenScale demo model"))
        .expect("the model server's output is in the log");
    assert!(model_line.starts_with("demo/demo-"), "{model_line}");
    assert!(!log.contains("greenscale::model:"), "{log}");
    // Every replica's guard was collected as it ended: up has no exited children left.
    let up_pid = up.process.pid() as u64;
    common::wait_until(
        "up reaps its replica guards",
        Duration::from_secs(5),
        || children_of(up_pid).iter().all(|(_, state)| state != "Z"),
    );
    let pool = up.pool().await;
    let cold = &pool["cold_starts"];
    assert!(cold["count"].as_u64().unwrap() >= 2, "{pool}");
    assert!(
        cold["p50_s"].as_f64().unwrap() >= 1.0,
        "cold start below the 1 s load time: {pool}"
    );
    assert!(cold["last_s"].as_f64().unwrap() >= 1.0, "{pool}");
    let decisions = pool["decisions"].as_array().unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d["on_arrival"] == true && d["desired"].as_u64() > Some(0)),
        "waking from zero was decided on arrival: {pool}"
    );
    assert!(
        decisions.last().unwrap()["desired"] == 0,
        "the last decision scales to zero: {pool}"
    );
    assert!(pool["replica_seconds"].as_f64().unwrap() > 1.0);
    let metrics = up.metrics().await;
    assert!(
        metrics.contains("greenscale_cold_start_seconds_count{pool=\"demo\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("greenscale_replicas{pool=\"demo\",state=\"ready\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_server_killed_mid_job_is_replaced_and_the_job_retried() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(
        dir.path(),
        "up",
        &[
            "--demo-load-time",
            "500ms",
            "--demo-tokens-per-sec",
            "10",
            "--concurrency",
            "1",
        ],
    )
    .await;
    let id = up
        .submit(json!({"prompt": "a long answer please", "max_tokens": 60}))
        .await;
    up.wait_for("the job runs", Duration::from_secs(20), || async {
        up.job(&id).await["status"] == "running"
    })
    .await;
    let pool = up.pool().await;
    let group = pgids(&pool)[0];
    let servers: Vec<u64> = group_members(group)
        .into_iter()
        .filter(|&p| cmdline(p).contains("demo-model"))
        .collect();
    assert!(!servers.is_empty(), "no model server in group {group}");
    for pid in &servers {
        assert!(
            std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
    up.wait_for(
        "the job succeeds on another replica",
        Duration::from_secs(60),
        || async { up.job(&id).await["status"] == "succeeded" },
    )
    .await;
    let job = up.job(&id).await;
    assert!(job["attempts"].as_u64().unwrap() >= 2, "{job}");
    let pool = up.pool().await;
    assert!(
        pool["cold_starts"]["count"].as_u64().unwrap() >= 2,
        "replaced: {pool}"
    );
    assert!(
        pool["last_failure"]
            .as_str()
            .unwrap()
            .contains("exited unexpectedly"),
        "{pool}"
    );
    assert!(
        group_members(group).is_empty(),
        "the dead replica's group is cleaned up"
    );
    let up_pid = up.process.pid() as u64;
    common::wait_until(
        "up reaps the dead replica's guard",
        Duration::from_secs(5),
        || children_of(up_pid).iter().all(|(_, state)| state != "Z"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_leaves_no_process_and_queued_jobs_complete_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--demo-load-time",
        "300ms",
        "--demo-tokens-per-sec",
        "20",
        "--concurrency",
        "1",
        "--max-replicas",
        "1",
    ];
    let mut up = Up::start(dir.path(), "up-1", &flags).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            up.submit(json!({"prompt": format!("job {i}"), "max_tokens": 30}))
                .await,
        );
    }
    up.wait_for("a job runs", Duration::from_secs(20), || async {
        up.job(&ids[0]).await["status"] == "running"
    })
    .await;
    let groups = pgids(&up.pool().await);
    assert!(!groups.is_empty());
    up.process.signal("TERM");
    let status = up.process.wait_exit(Duration::from_secs(40));
    assert!(
        status.success(),
        "up exits 0 after draining: {}",
        up.process.log()
    );
    for g in &groups {
        assert!(group_members(*g).is_empty(), "a model server outlived up");
    }
    let log = up.process.log();
    assert!(log.contains("draining"), "{log}");

    let up = Up::start(dir.path(), "up-2", &flags).await;
    for id in &ids {
        up.wait_for(
            "every job completes after the restart",
            Duration::from_secs(60),
            || async { up.job(id).await["status"] == "succeeded" },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_api_pool_runs_jobs_without_local_processes() {
    let dir = tempfile::tempdir().unwrap();
    let model = demo_model(0.0);
    let up = Up::start(
        dir.path(),
        "up",
        &["--model-url", &model.url, "--model", "remote-llm"],
    )
    .await;
    let id = up
        .submit(json!({"prompt": "hello", "model": "remote-llm"}))
        .await;
    up.wait_for("the job succeeds", Duration::from_secs(20), || async {
        up.job(&id).await["status"] == "succeeded"
    })
    .await;
    let pool = up.pool().await;
    assert_eq!(pool["kind"], "remote");
    assert!(pgids(&pool).is_empty(), "no local model process: {pool}");
    // An unknown model is refused, not queued where nobody serves it.
    let r = up
        .client
        .post(up.url("/v1/jobs"))
        .json(&json!({"prompt": "x", "model": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "model_not_found");
}

#[test]
fn malformed_config_files_are_refused_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for (text, line, field) in [
        (
            "[[pool]]\nname = \"a\"\ncommand = \"srv --port {port}\"\nconcurency = 2\n",
            4,
            "concurency",
        ),
        ("[[pool]]\nname = \"a\"\ncommand = \"srv\"\n", 3, "command"),
        (
            "[[pool]]\nname = \"a\"\ncommand = \"srv {port}\"\npolicy = \"nope\"\n",
            4,
            "policy",
        ),
        (
            "[[pool]]\nname = \"a\"\nurl = \"http://x/v1\"\nmax_replicas = -1\n",
            4,
            "max_replicas",
        ),
    ] {
        let path = dir.path().join("pools.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_greenscale"))
            .args(["up", "--config", path.to_str().unwrap(), "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("pools.toml:{line}:")) && err.contains(field),
            "{text:?} → {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_model_commands_keep_jobs_queued_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pools.toml");
    std::fs::write(
        &config,
        r#"
[[pool]]
name = "crashes"
command = "echo 'cannot load model on port {port}' >&2; exit 3"

[[pool]]
name = "hangs"
command = "sleep 600 # never listens on {port}"
startup_timeout = "1s"
stop_timeout = "1s"
"#,
    )
    .unwrap();
    let mut up = Up::start(
        dir.path(),
        "up",
        &[
            "--config",
            config.to_str().unwrap(),
            "--wait-deadline",
            "2s",
        ],
    )
    .await;
    let crash_job = up.submit(json!({"prompt": "x", "model": "crashes"})).await;
    let hang_job = up.submit(json!({"prompt": "x", "model": "hangs"})).await;
    up.wait_for(
        "both pools report failures",
        Duration::from_secs(30),
        || async {
            let pools = up.get("/v1/pools").await;
            pools
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["failures_in_a_row"].as_u64() >= Some(2))
        },
    )
    .await;
    let pools = up.get("/v1/pools").await;
    let failure = |i: usize| pools[i]["last_failure"].as_str().unwrap().to_string();
    assert!(failure(0).contains("exited during startup"), "{pools}");
    assert!(
        failure(1).contains("did not pass its health check"),
        "{pools}"
    );
    assert!(
        up.process.log().contains("cannot load model on port"),
        "model output is logged"
    );
    for id in [&crash_job, &hang_job] {
        assert_eq!(
            up.job(id).await["status"],
            "queued",
            "jobs wait for a working replica"
        );
    }
    // A held OpenAI request gives up at the deadline with 504.
    let r = up
        .client
        .post(up.url("/v1/chat/completions"))
        .json(&json!({"model": "crashes", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);

    up.process.signal("TERM");
    assert!(up.process.wait_exit(Duration::from_secs(20)).success());
    let leftovers: Vec<u64> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u64>().ok())
        .filter(|&p| cmdline(p).contains("never listens on"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "a hanging model server outlived up: {leftovers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_redis_queue_jobs_go_to_a_list_named_after_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let redis = greenscale_testkit::RedisServer::start();
    let model = demo_model(0.0);
    let url = redis.url();
    let up = Up::start(
        dir.path(),
        "up",
        &["--queue", &url, "--model-url", &model.url, "--model", "llm"],
    )
    .await;
    let id = up.submit(json!({"prompt": "hello"})).await;
    up.wait_for("the job succeeds", Duration::from_secs(20), || async {
        up.job(&id).await["status"] == "succeeded"
    })
    .await;
    let mut conn = redis.connection();
    let answer: String = redis::cmd("GET")
        .arg(format!("result:{id}"))
        .query(&mut conn)
        .unwrap();
    assert!(answer.starts_with("[demo]"), "{answer}");
    let record: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("greenscale:job:{id}"))
        .query(&mut conn)
        .unwrap();
    assert!(
        record.get("spec").is_some_and(|s| s.contains("\"llm\"")),
        "{record:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_to_the_least_loaded_ready_replica() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(
        dir.path(),
        "up",
        &[
            "--demo-load-time",
            "300ms",
            "--demo-tokens-per-sec",
            "10",
            "--concurrency",
            "2",
            "--max-replicas",
            "2",
            "--policy",
            "keepalive:60s",
        ],
    )
    .await;
    // Warm two replicas.
    let warm = futures::future::join_all(
        (0..4).map(|i| up.submit(json!({"prompt": format!("warm {i}"), "max_tokens": 3}))),
    )
    .await;
    for id in &warm {
        up.wait_for("warm-up jobs done", Duration::from_secs(30), || async {
            up.job(id).await["status"] == "succeeded"
        })
        .await;
    }
    up.wait_for("two ready replicas", Duration::from_secs(10), || async {
        let pool = up.pool().await;
        pool["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "ready")
            .count()
            == 2
    })
    .await;
    // One long job runs on one replica, which still has a free slot; the next job must go
    // to the idle replica.
    let a = up
        .submit(json!({"prompt": "first", "max_tokens": 40}))
        .await;
    up.wait_for("the first job runs", Duration::from_secs(10), || async {
        up.job(&a).await["status"] == "running"
    })
    .await;
    let b = up
        .submit(json!({"prompt": "second", "max_tokens": 40}))
        .await;
    up.wait_for("the second job runs", Duration::from_secs(10), || async {
        up.job(&b).await["status"] == "running"
    })
    .await;
    let (wa, wb) = (
        up.job(&a).await["worker_id"].clone(),
        up.job(&b).await["worker_id"].clone(),
    );
    assert_ne!(
        wa, wb,
        "both jobs went to the same replica while another was idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_refuses_new_work_but_the_waiting_client_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(
        dir.path(),
        "up",
        &["--demo-load-time", "200ms", "--demo-tokens-per-sec", "8"],
    )
    .await;
    // A client waiting for its answer, as a user runs it.
    let out = dir.path().join("submit.out");
    let mut submit = std::process::Command::new(env!("CARGO_BIN_EXE_greenscale"))
        .args(["submit", "--url", &up.base, "--wait", "tell me a story"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    up.wait_for("the job runs", Duration::from_secs(20), || async {
        up.get("/v1/jobs?status=running").await["jobs"]
            .as_array()
            .is_some_and(|j| !j.is_empty())
    })
    .await;
    up.process.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New work is refused while the drain runs, with a time to come back.
    let r = up
        .client
        .post(up.url("/v1/jobs"))
        .json(&json!({"prompt": "one more"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "shutting_down", "{body}");
    // The waiting client gets its answer and exits 0; so does up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = submit.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "submit --wait did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let answer = std::fs::read_to_string(&out).unwrap();
    assert!(
        status.success(),
        "submit --wait: {status}, {answer}\n{}",
        up.process.log()
    );
    assert!(answer.contains("[demo]"), "{answer}");
    let mut up = up;
    let code = up.process.wait_exit(Duration::from_secs(30));
    assert!(code.success(), "{}", up.process.log());
    let log = up.process.log();
    assert!(log.contains("draining:"), "the drain is logged: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(
        dir.path(),
        "up",
        &["--demo-load-time", "200ms", "--demo-tokens-per-sec", "2"],
    )
    .await;
    let id = up.submit(json!({"prompt": "a slow one"})).await;
    up.wait_for("the job runs", Duration::from_secs(20), || async {
        up.job(&id).await["status"] == "running"
    })
    .await;
    let groups = pgids(&up.pool().await);
    up.process.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.process.signal("INT");
    let code = up.process.wait_exit(Duration::from_secs(5));
    assert_eq!(code.code(), Some(130), "{}", up.process.log());
    assert!(
        up.process.log().contains("second signal"),
        "{}",
        up.process.log()
    );
    common::wait_until(
        "no model server outlives up",
        Duration::from_secs(10),
        || groups.iter().all(|g| group_members(*g).is_empty()),
    );
    // The job was not lost: it runs at the next start.
    let up = Up::start(dir.path(), "up-2", &["--demo-load-time", "200ms"]).await;
    up.wait_for(
        "the job completes after the restart",
        Duration::from_secs(60),
        || async { up.job(&id).await["status"] == "succeeded" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_the_warm_replica_drains_before_a_cold_start_starts_no_replica() {
    let dir = tempfile::tempdir().unwrap();
    // Concurrency 4, answers of ~0.5 s, a 3 s cold start.
    let up = Up::start(
        dir.path(),
        "up",
        &[
            "--demo-load-time",
            "3s",
            "--demo-tokens-per-sec",
            "50",
            "--concurrency",
            "4",
        ],
    )
    .await;
    // Warm: one replica, its service time measured.
    for i in 0..3 {
        let id = up.submit(json!({"prompt": format!("warm {i}")})).await;
        up.wait_for("a warm-up job", Duration::from_secs(30), || async {
            up.job(&id).await["status"] == "succeeded"
        })
        .await;
    }
    assert_eq!(up.pool().await["peak_replicas"], 1);
    // A burst of 10: the warm replica runs them all in well under the 3 s a new one needs.
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(up.submit(json!({"prompt": format!("burst {i}")})).await);
    }
    for id in &ids {
        up.wait_for("the burst finishes", Duration::from_secs(30), || async {
            up.job(id).await["status"] == "succeeded"
        })
        .await;
    }
    let pool = up.pool().await;
    assert_eq!(
        pool["peak_replicas"], 1,
        "a replica was started for nothing: {pool}"
    );
    assert_eq!(pool["cold_starts"]["count"], 1, "{pool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_a_containers_first_process_up_reaps_orphans() {
    // `unshare --pid --fork` makes `greenscale up` PID 1 of a new PID namespace, as the
    // image's entrypoint is in a container.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let exe = env!("CARGO_BIN_EXE_greenscale");
    // The model command leaves an orphan behind: a short sleep whose parent exits at once.
    let cmd = format!("(sleep 0.3 &); exec {exe} demo-model --port {{port}}");
    let mut unshare = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--", exe, "up"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--model-cmd",
            &cmd,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("up.log")).unwrap())
        .spawn()
        .expect("unshare (util-linux) runs greenscale in a PID namespace; it needs root");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "up did not start in its namespace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up_pid = children_of(unshare.id() as u64)[0].0;
    let r = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"prompt": "wake up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The orphan was re-parented to up; once it exits, up collects it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let zombies: Vec<_> = children_of(up_pid)
        .into_iter()
        .filter(|(_, state)| state == "Z")
        .collect();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &up_pid.to_string()])
        .status();
    let _ = unshare.wait();
    assert!(
        zombies.is_empty(),
        "zombies under up: {zombies:?}\n{}",
        std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_on_a_shared_gpu_lets_a_waiting_pool_take_its_turn_without_cutting_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_greenscale");
    // Two pools that fit one at a time on a declared GPU; one job at a time each, so a
    // second job of `a` would keep its warm replica busy — unless `b` gets its turn.
    let pool = |name: &str| {
        format!(
            "[[pool]]\nname = \"{name}\"\ncommand = \"{exe} demo-model --port {{port}} --tokens-per-sec 4\"\ngpu_memory = \"600MiB\"\nconcurrency = 1\nmax_replicas = 1\npolicy = \"keepalive:60s\"\nstop_timeout = \"5s\"\n"
        )
    };
    let config = dir.path().join("pools.toml");
    std::fs::write(
        &config,
        format!(
            "gpu_turn = \"1s\"\n\n[[gpu]]\nmemory = \"1GiB\"\n\n{}\n{}",
            pool("a"),
            pool("b")
        ),
    )
    .unwrap();
    let up = Up::start(dir.path(), "up", &["--config", config.to_str().unwrap()]).await;
    // a1 runs at least 3 s (the demo's answers have 13 tokens or more, at 4 per second):
    // longer than the turn plus a decision tick. a2 queues behind it; then b1 comes.
    let a1 = up
        .submit(json!({"prompt": "first", "model": "a", "max_tokens": 100}))
        .await;
    up.wait_for("a1 runs", Duration::from_secs(20), || async {
        up.job(&a1).await["status"] == "running"
    })
    .await;
    let a2 = up
        .submit(json!({"prompt": "second", "model": "a", "max_tokens": 5}))
        .await;
    let b1 = up
        .submit(json!({"prompt": "other", "model": "b", "max_tokens": 5}))
        .await;
    for id in [&a1, &a2, &b1] {
        up.wait_for("every job succeeds", Duration::from_secs(60), || async {
            up.job(id).await["status"] == "succeeded"
        })
        .await;
    }
    let job = |v: Value| {
        (
            v["attempts"].as_u64(),
            v["started_at_ms"].as_u64().unwrap(),
            v["finished_at_ms"].as_u64().unwrap(),
        )
    };
    let (a1_attempts, _, a1_end) = job(up.job(&a1).await);
    let (_, a2_start, _) = job(up.job(&a2).await);
    let (_, b1_start, _) = job(up.job(&b1).await);
    assert_eq!(a1_attempts, Some(1), "a1 ran to its end, not cut");
    // b got its turn once a1 was done: before a2, which had waited longer.
    assert!(
        b1_start >= a1_end,
        "b1 started at {b1_start}, a1 ended at {a1_end}"
    );
    assert!(
        b1_start < a2_start,
        "b1 ({b1_start}) before a2 ({a2_start})"
    );
    let log = up.process.log();
    assert!(log.contains("evicting replica"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_energy_is_estimated_from_the_declared_board_power_and_labelled_so() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_greenscale");
    let config = dir.path().join("pools.toml");
    // Half of a 300 W board: 150 W per replica; 400 gCO2e per kWh.
    std::fs::write(
        &config,
        format!(
            "grid_intensity = 400\n\n[[gpu]]\nmemory = \"1GiB\"\npower = \"300W\"\n\n[[pool]]\nname = \"demo\"\ncommand = \"{exe} demo-model --port {{port}}\"\ngpu_memory = \"512MiB\"\npolicy = \"keepalive:1s\"\n"
        ),
    )
    .unwrap();
    let up = Up::start(dir.path(), "up", &["--config", config.to_str().unwrap()]).await;
    let id = up.submit(json!({"prompt": "watts"})).await;
    up.wait_for("the job succeeds", Duration::from_secs(30), || async {
        up.job(&id).await["status"] == "succeeded"
    })
    .await;
    up.wait_for("back at zero", Duration::from_secs(30), || async {
        up.pool().await["replicas"].as_array().unwrap().is_empty()
    })
    .await;
    let pool = up.pool().await;
    let energy = &pool["energy"];
    let kwh = energy["kwh"].as_f64().unwrap();
    let expected = pool["replica_seconds"].as_f64().unwrap() * 150.0 / 3.6e6;
    assert!(
        (kwh - expected).abs() <= expected * 0.02,
        "{kwh} kWh, expected {expected}: {pool}"
    );
    assert!(energy["always_on_kwh"].as_f64().unwrap() > kwh, "{pool}");
    assert_eq!(energy["estimated"], true);
    assert_eq!(energy["grid_g_per_kwh"], 400.0);
    let status = std::process::Command::new(exe)
        .args(["status", "--url", &up.base])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("gCO2e") && text.contains("estimated from the GPUs' board power"),
        "{text}"
    );
    let metrics = up.metrics().await;
    assert!(
        metrics.contains("greenscale_replica_energy_joules_total{pool=\"demo\"}"),
        "{metrics}"
    );
}

/// A pool of the vLLM emulator (`tests/python/vllm_sleep.py`, which lists the facts of
/// vLLM's sleep API it encodes) with the `vllm` sleep preset.
fn vllm_pool(name: &str, extra: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/vllm_sleep.py");
    format!(
        "[[pool]]\nname = \"{name}\"\ncommand = \"python3 {script} --port {{port}} --enable-sleep-mode --weights-mib 64 --load-s 1.5 --wake-s 0.2\"\nsleep = \"vllm\"\nmax_replicas = 1\nconcurrency = 2\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vllm_pool_drains_before_it_sleeps_holds_its_weights_in_host_memory_and_wakes_fast() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pools.toml");
    std::fs::write(
        &config,
        vllm_pool(
            "emu",
            "policy = \"greenscale:cold_cost=2,sleep_cost=0.01\"\n",
        ),
    )
    .unwrap();
    let up = Up::start(dir.path(), "up", &["--config", config.to_str().unwrap()]).await;
    let run_all = |n: usize| {
        let up = &up;
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                let body = json!({"prompt": format!("p{i}"), "model": "emu", "max_tokens": 20});
                ids.push(up.submit(body).await);
            }
            for id in &ids {
                up.wait_for("the job succeeds", Duration::from_secs(60), || async {
                    up.job(id).await["status"] == "succeeded"
                })
                .await;
                let job = up.job(id).await;
                assert_eq!(job["attempts"], 1, "no request is cut by a sleep: {job}");
            }
        }
    };
    run_all(4).await;
    let pgid = pgids(&up.pool().await)[0];
    up.wait_for("the replica is asleep", Duration::from_secs(30), || async {
        up.pool().await["replicas"][0]["state"] == "asleep"
    })
    .await;
    let pool = up.pool().await;
    assert_eq!(pool["sleep_engine"], "vllm");
    // Level 1: the weights (64 MiB here) moved to host memory, which the sleeper holds.
    let host = pool["replicas"][0]["asleep_host_bytes"].as_u64().unwrap();
    assert!(
        host >= 64 << 20,
        "a level-1 sleeper holds its weights: {host} bytes"
    );
    let log = up.process.log();
    assert!(
        log.contains("sleep level=1; aborted 0 requests in flight"),
        "{log}"
    );
    assert!(
        !log.contains("dev mode False"),
        "VLLM_SERVER_DEV_MODE=1 was set: {log}"
    );

    // Jobs arriving while it sleeps wake the same process, far faster than its start.
    run_all(3).await;
    let pool = up.pool().await;
    assert_eq!(pgids(&pool), [pgid], "{pool}");
    assert_eq!(pool["cold_starts"]["count"], 1, "{pool}");
    assert_eq!(pool["wakes"]["count"], 1, "{pool}");
    let wake = pool["wakes"]["last_s"].as_f64().unwrap();
    let cold = pool["cold_starts"]["last_s"].as_f64().unwrap();
    assert!(
        wake >= 0.2 && wake < cold,
        "wake {wake} s, cold start {cold} s"
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_greenscale"))
        .args(["status", "--url", &up.base])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("sleep        vllm: 1 sleeps, 1 wakes"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_that_take_turns_on_a_gpu_put_each_other_to_sleep_instead_of_restarting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pools.toml");
    let gpu = "gpu_memory = \"600MiB\"\npolicy = \"greenscale:cold_cost=120\"\n";
    std::fs::write(
        &config,
        format!(
            "[[gpu]]\nmemory = \"1GiB\"\n\n{}\n{}",
            vllm_pool("a", gpu),
            vllm_pool("b", gpu)
        ),
    )
    .unwrap();
    let up = Up::start(dir.path(), "up", &["--config", config.to_str().unwrap()]).await;
    let pool_of = |pools: &Value, name: &str| -> Value {
        pools
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    let mut first_pgid = std::collections::HashMap::new();
    for round in 0..4 {
        let model = ["a", "b"][round % 2];
        let job = up
            .run_job(
                json!({"prompt": "hi", "model": model, "max_tokens": 8}),
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(job["attempts"], 1, "round {round}: {job}");
        let pools = up.get("/v1/pools").await;
        let pool = pool_of(&pools, model);
        let pgid = pgids(&pool)[0];
        assert_eq!(
            *first_pgid.entry(model).or_insert(pgid),
            pgid,
            "the same process: {pool}"
        );
        // The GPU holds the pool that answered, alone: the other sleeps, holding nothing.
        assert_eq!(up.first_gpu_holders().await, [model]);
    }
    let pools = up.get("/v1/pools").await;
    for name in ["a", "b"] {
        let p = pool_of(&pools, name);
        assert_eq!(p["cold_starts"]["count"], 1, "woken, not restarted: {p}");
    }
    let (a, b) = (pool_of(&pools, "a"), pool_of(&pools, "b"));
    assert_eq!(
        a["wakes"]["count"].as_u64().unwrap() + b["wakes"]["count"].as_u64().unwrap(),
        2,
        "{pools}"
    );
    assert_eq!(
        a["evicted"].as_u64().unwrap() + b["evicted"].as_u64().unwrap(),
        3,
        "{pools}"
    );
    assert_eq!(b["replicas"][0]["state"], "ready");
    assert_eq!(a["replicas"][0]["state"], "asleep", "{a}");
}
