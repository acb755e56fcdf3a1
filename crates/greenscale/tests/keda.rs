//! `greenscale scaler` as KEDA really calls it: every ScaledObject of every rendered overlay,
//! with the metadata KEDA sends, over KEDA's own wire types (`greenscale_testkit::keda`, which
//! lists the facts of KEDA's behaviour it encodes); two ScaledObjects served at once by one
//! scaler through the KEDA emulator, with real Redis and real workers playing the
//! Deployments; and the same over mutual TLS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenscale_testkit::keda::{
    self, Connection, Emulated, HpaTiming, ScaledObject, ScalerClient, TestPki,
};
use greenscale_testkit::{RedisServer, free_port};
use serde_json::Value;

mod common;
use common::{Process, demo_model};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every overlay and example, rendered.
fn rendered() -> Vec<(String, Vec<Value>)> {
    let mut dirs = Vec::new();
    for group in ["deploy/overlays", "deploy/examples"] {
        for entry in std::fs::read_dir(root().join(group)).unwrap().flatten() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    dirs.iter()
        .map(|d| {
            let name = d.file_name().unwrap().to_string_lossy().to_string();
            (name, keda::render_kustomization(d))
        })
        .collect()
}

/// The rendered `keda-external-push` ScaledObject.
fn external_push_object() -> ScaledObject {
    let docs = keda::render_kustomization(&root().join("deploy/overlays/keda-external-push"));
    keda::scaled_objects(&docs).remove(0)
}

/// A running `greenscale scaler` with its gRPC address.
struct Scaler {
    process: Process,
    grpc: String,
}

fn start_scaler(dir: &Path, redis: &RedisServer, extra: &[&str]) -> Scaler {
    start_scaler_at(dir, redis, &format!("127.0.0.1:{}", free_port()), extra)
}

fn start_scaler_at(dir: &Path, redis: &RedisServer, grpc: &str, extra: &[&str]) -> Scaler {
    let grpc = grpc.to_string();
    let http = format!("127.0.0.1:{}", free_port());
    let url = redis.url();
    let mut args = vec![
        "scaler",
        "--redis-url",
        &url,
        "--grpc-listen",
        &grpc,
        "--http-listen",
        &http,
    ];
    args.extend_from_slice(extra);
    let process = Process::spawn(dir, "scaler", &args);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&grpc).is_err() {
        assert!(
            Instant::now() < deadline,
            "scaler did not start: {}",
            process.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Scaler { process, grpc }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_scaled_object_is_served_with_the_metadata_keda_sends() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let scaler = start_scaler(dir.path(), &redis, &[]);
    let mut served = Vec::new();
    for (overlay, docs) in rendered() {
        for so in keda::scaled_objects(&docs) {
            for (i, trigger) in so.triggers.iter().enumerate() {
                if !trigger.kind.starts_with("external") {
                    continue;
                }
                // KEDA's own keys travel with GreenScale's.
                assert!(
                    trigger.metadata.contains_key("scalerAddress"),
                    "{overlay}: {trigger:?}"
                );
                let object = so.object_ref(i);
                let conn = Connection {
                    address: scaler.grpc.clone(),
                    ..Connection::default()
                };
                if trigger
                    .metadata
                    .get("enableTLS")
                    .is_some_and(|v| v == "true")
                {
                    // The TLS overlay is driven over TLS in its own test below.
                    served.push(format!("{overlay} (TLS)"));
                    continue;
                }
                let mut client = ScalerClient::new(conn.channel(&trigger.metadata).await.unwrap());
                let spec = client
                    .get_metric_spec(&object)
                    .await
                    .unwrap_or_else(|e| panic!("{overlay}: GetMetricSpec: {e}"));
                let name = &spec.metric_specs[0].metric_name;
                let metrics = client
                    .get_metrics(&object, name)
                    .await
                    .unwrap_or_else(|e| panic!("{overlay}: GetMetrics: {e}"));
                assert_eq!(&metrics.metric_values[0].metric_name, name);
                client
                    .is_active(&object)
                    .await
                    .unwrap_or_else(|e| panic!("{overlay}: IsActive: {e}"));
                let mut stream = client
                    .stream_is_active(&object)
                    .await
                    .unwrap_or_else(|e| panic!("{overlay}: StreamIsActive: {e}"));
                let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
                    .await
                    .expect("StreamIsActive answers at once");
                assert!(first.is_ok(), "{overlay}: {first:?}");
                served.push(overlay.clone());
            }
        }
    }
    for needed in [
        "keda-external-push",
        "keda-external-push-tls",
        "vllm-sidecar",
    ] {
        assert!(
            served.iter().any(|s| s.starts_with(needed)),
            "{needed} not served: {served:?}"
        );
    }

    // A misspelt GreenScale key is still refused, naming the key it resembles.
    let mut object = external_push_object().object_ref(0);
    let list = object.scaler_metadata.remove("listFromEnv").unwrap();
    object.scaler_metadata.insert("lsit".into(), list);
    let conn = Connection {
        address: scaler.grpc.clone(),
        ..Connection::default()
    };
    let mut client = ScalerClient::new(conn.channel(&HashMap::new()).await.unwrap());
    let err = client.get_metric_spec(&object).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("did you mean \"list\"?"), "{err}");
}

/// Plays the Deployment of one ScaledObject: keeps as many `greenscale worker` processes
/// running on `list` as the emulated KEDA asks for; scale-down sends SIGTERM to the newest.
fn play_deployment(
    dir: PathBuf,
    redis_url: String,
    model_url: String,
    list: String,
    mut replicas: tokio::sync::watch::Receiver<u32>,
    stop: Arc<Mutex<bool>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut running: Vec<Process> = Vec::new();
        let mut stopping: Vec<Process> = Vec::new();
        let mut started = 0;
        while !*stop.lock().unwrap() {
            let want = *replicas.borrow_and_update() as usize;
            while running.len() < want {
                started += 1;
                running.push(Process::worker(
                    &dir,
                    &format!("{list}-worker-{started}"),
                    &redis_url,
                    &model_url,
                    // The overlay's worker settings; a short grace, so that a scale-down
                    // under a running job would hand it back (and show as attempts = 2).
                    &["--list", &list, "--concurrency", "4", "--grace", "1s"],
                ));
            }
            while running.len() > want {
                let p = running.pop().unwrap();
                p.signal("TERM");
                stopping.push(p);
            }
            stopping.retain_mut(|p| p.try_exit().is_none());
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

fn lpush(redis: &RedisServer, list: &str, id: &str, max_tokens: u32) {
    let mut c = redis.connection();
    let job = format!(r#"{{"job_id":"{id}","prompt":"count slowly","max_tokens":{max_tokens}}}"#);
    let _: i64 = redis::cmd("LPUSH")
        .arg(list)
        .arg(job)
        .query(&mut c)
        .unwrap();
}

fn record(redis: &RedisServer, list: &str, id: &str) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_greenscale"))
        .args(["status", id, "--json", "--redis-url", &redis.url()])
        .args(["--list", list])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Waits until every job of `ids` on `list` has a final status.
async fn wait_done(redis: &RedisServer, list: &str, ids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done = ids.iter().all(|id| {
            let s = record(redis, list, id)["status"].clone();
            s == "succeeded" || s == "failed" || s == "dead"
        });
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "jobs on {list} did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_replicas(e: &Emulated, want: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while *e.replicas.borrow() != want {
        assert!(
            Instant::now() < deadline,
            "replicas stayed {} (wanted {want}): {:?}",
            *e.replicas.borrow(),
            e.timeline()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_timeline(name: &str, e: &Emulated) {
    println!("{name}: replicas over time (s → replicas)");
    for ev in e.events.lock().unwrap().iter() {
        if let keda::Event::Scaled {
            at, from, to, why, ..
        } = ev
        {
            println!("  {at:6.2} s  {from} → {to}  ({why})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_scales_two_scaled_objects_from_zero_to_n_and_back_without_interrupting_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    // 3 tokens per second: a demo answer (13 to 32 tokens) runs 4 to 11 s, longer than
    // KEDA's polling interval and cooldown in the overlay (5 s each), so KEDA's own Redis
    // trigger would drop to zero under it once the list is empty.
    let model = demo_model(3.0);
    let scaler = start_scaler(dir.path(), &redis, &[]);

    // Object A: the overlay's ScaledObject as rendered. Object B: the same with its own
    // list and policy, served by the same scaler at once.
    let mut a = external_push_object();
    // With no measured cold start, the greenscale policy keeps a replica warm for the
    // break-even time (cold start + cold_cost: 150 s by default); a small cold_cost and
    // a known cold start make that a few seconds here.
    let meta = &mut a.triggers[0].metadata;
    meta.insert("policy".into(), "greenscale:cold_cost=3".into());
    meta.insert("coldStart".into(), "2s".into());
    let mut b = a.clone();
    b.name = "greenscale-worker-batch".into();
    b.triggers[0]
        .metadata
        .insert("listFromEnv".into(), "batch".into());
    b.triggers[0]
        .metadata
        .insert("policy".into(), "keepalive:3s".into());
    let list_a = a.triggers[0].metadata["listFromEnv"].clone();
    assert_eq!(list_a, "jobs", "resolved from the worker's REDIS_LIST_NAME");
    // The HPA's timing is shortened (sync 3 s, stabilization 10 s) to keep the test short;
    // KEDA's polling interval and cooldown are the overlay's.
    let hpa = HpaTiming {
        sync_period: Duration::from_secs(3),
        downscale_stabilization: Duration::from_secs(10),
    };
    let conn = Connection {
        address: scaler.grpc.clone(),
        ..Connection::default()
    };
    let ea = keda::emulate(a.clone(), conn.clone(), hpa.clone()).await;
    let eb = keda::emulate(b.clone(), conn, hpa).await;
    let stop = Arc::new(Mutex::new(false));
    let deployments = [(&ea, list_a.clone()), (&eb, "batch".to_string())].map(|(e, list)| {
        play_deployment(
            dir.path().to_path_buf(),
            redis.url(),
            model.url.clone(),
            list,
            e.replicas.clone(),
            stop.clone(),
        )
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((*ea.replicas.borrow(), *eb.replicas.borrow()), (0, 0));

    // Nine long jobs on A: more than two workers of concurrency 4 hold.
    let ids_a: Vec<String> = (1..=9).map(|i| format!("a-{i}")).collect();
    let pushed = Instant::now();
    for id in &ids_a {
        lpush(&redis, &list_a, id, 100);
    }
    wait_replicas(&ea, 1, Duration::from_secs(3)).await;
    let woke = pushed.elapsed();
    // Two short jobs on B.
    let ids_b: Vec<String> = (1..=2).map(|i| format!("b-{i}")).collect();
    for id in &ids_b {
        lpush(&redis, "batch", id, 4);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ea.timeline().iter().all(|(_, r)| *r < 3) {
        assert!(
            Instant::now() < deadline,
            "A never reached 3: {:?}",
            ea.timeline()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_done(&redis, "batch", &ids_b, Duration::from_secs(30)).await;
    wait_done(&redis, &list_a, &ids_a, Duration::from_secs(90)).await;
    wait_replicas(&ea, 0, Duration::from_secs(60)).await;
    wait_replicas(&eb, 0, Duration::from_secs(60)).await;
    *stop.lock().unwrap() = true;
    for d in deployments {
        d.join().unwrap();
    }
    print_timeline("A (greenscale:cold_cost=3, list jobs)", &ea);
    print_timeline("B (keepalive:3s, list batch)", &eb);
    println!(
        "A woke {:.0} ms after the LPUSH",
        woke.as_secs_f64() * 1000.0
    );

    // Woken by the push, not by a poll.
    let first = ea.events.lock().unwrap().iter().find_map(|e| match e {
        keda::Event::Scaled { why, .. } => Some(why.clone()),
        _ => None,
    });
    assert_eq!(first.as_deref(), Some("KEDA: pushed active"));
    assert!(woke < Duration::from_millis(1500), "woke after {woke:?}");
    // 0 → N → 0 for both, with N > 1 for A.
    for (e, peak) in [(&ea, 3), (&eb, 1)] {
        let t = e.timeline();
        assert!(t.iter().any(|(_, r)| *r >= peak), "{t:?}");
        assert_eq!(t.last().map(|(_, r)| *r), Some(0), "{t:?}");
    }
    // No job was cut short by a scale-down: every one ran once and succeeded.
    for (list, ids) in [(&list_a, &ids_a), (&"batch".to_string(), &ids_b)] {
        for id in ids {
            let r = record(&redis, list, id);
            assert_eq!(r["status"], "succeeded", "{r}");
            assert_eq!(r["attempts"], 1, "interrupted and retried: {r}");
        }
    }
    // A went to zero once, at the end, never in between while its jobs ran.
    let zeros = ea.timeline().iter().filter(|(_, r)| *r == 0).count();
    assert_eq!(zeros, 1, "{:?}", ea.timeline());
    // What KEDA calls: GetMetricSpec once, then GetMetrics and IsActive every poll.
    assert_eq!(ea.calls("GetMetricSpec"), 1);
    assert!(ea.calls("GetMetrics") >= 2);
    assert_eq!(ea.calls("GetMetrics"), ea.calls("IsActive"));
    assert!(ea.errors().is_empty(), "{:?}", ea.errors());
    assert!(eb.errors().is_empty(), "{:?}", eb.errors());
    drop(scaler);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_keda_is_served_and_a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let host = "greenscale-scaler.greenscale.svc.cluster.local";
    let pki = TestPki::generate(&[host]);
    let file = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_string_lossy().to_string()
    };
    let (cert, key, ca) = (
        file("tls.crt", &pki.server_cert),
        file("tls.key", &pki.server_key),
        file("ca.crt", &pki.ca_cert),
    );
    let scaler = start_scaler(
        dir.path(),
        &redis,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    );
    common::wait_until(
        "the scaler says it serves mutual TLS",
        Duration::from_secs(5),
        || scaler.process.log().contains("mutual TLS"),
    );
    let docs = keda::render_kustomization(&root().join("deploy/overlays/keda-external-push-tls"));
    let so = keda::scaled_objects(&docs).remove(0);
    assert_eq!(
        so.triggers[0].metadata.get("enableTLS").map(String::as_str),
        Some("true")
    );
    let tls = Connection {
        address: scaler.grpc.clone(),
        ca_cert: Some(pki.ca_cert.clone()),
        client_identity: Some((pki.client_cert.clone(), pki.client_key.clone())),
        server_name: Some(host.into()),
    };
    let e = keda::emulate(so.clone(), tls.clone(), HpaTiming::default()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list = so.triggers[0].metadata["listFromEnv"].clone();
    let pushed = Instant::now();
    lpush(&redis, &list, "tls-1", 4);
    wait_replicas(&e, 1, Duration::from_secs(3)).await;
    println!(
        "woken over mutual TLS {:.0} ms after the LPUSH",
        pushed.elapsed().as_secs_f64() * 1000.0
    );
    assert!(e.errors().is_empty(), "{:?}", e.errors());

    // Without a client certificate, or in plaintext, nothing gets through.
    for (what, conn) in [
        (
            "no client certificate",
            Connection {
                client_identity: None,
                ..tls.clone()
            },
        ),
        (
            "plaintext",
            Connection {
                address: scaler.grpc.clone(),
                ..Connection::default()
            },
        ),
    ] {
        let refused = match conn.channel(&HashMap::new()).await {
            Err(_) => true,
            Ok(ch) => ScalerClient::new(ch)
                .is_active(&so.object_ref(0))
                .await
                .is_err(),
        };
        assert!(refused, "{what}: the scaler answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_scaler_restarts_keda_reopens_the_stream_and_pushes_work_again() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let scaler = start_scaler(dir.path(), &redis, &[]);
    let grpc = scaler.grpc.clone();
    let so = external_push_object();
    let list = so.triggers[0].metadata["listFromEnv"].clone();
    let conn = Connection {
        address: grpc.clone(),
        ..Connection::default()
    };
    let e = keda::emulate(so, conn, HpaTiming::default()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The scaler goes away (a rollout, a crash) and comes back on the same address.
    drop(scaler);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _scaler = start_scaler_at(dir.path(), &redis, &grpc, &[]);
    let broke = e.events.lock().unwrap().iter().any(|ev| {
        matches!(
            ev,
            keda::Event::Call {
                method: "StreamIsActive",
                ..
            }
        )
    });
    assert!(
        broke,
        "the stream's end was seen: {:?}",
        e.events.lock().unwrap()
    );
    // KEDA reopens the stream 2 s after it ended; a job pushed after that wakes the pool at
    // once again, without waiting for a poll.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pushed = Instant::now();
    lpush(&redis, &list, "after-restart", 4);
    wait_replicas(&e, 1, Duration::from_secs(3)).await;
    let why = e.events.lock().unwrap().iter().find_map(|ev| match ev {
        keda::Event::Scaled { why, .. } => Some(why.clone()),
        _ => None,
    });
    assert_eq!(why.as_deref(), Some("KEDA: pushed active"));
    println!(
        "woken {:.0} ms after the LPUSH through the reopened stream",
        pushed.elapsed().as_secs_f64() * 1000.0
    );
}
