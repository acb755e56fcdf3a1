//! `greenscale scaler` from the built binary: KEDA's calls over gRPC against a real Redis,
//! `/healthz` and `/metrics`, and a clean exit on SIGTERM.

use std::time::{Duration, Instant};

use greenscale_kubernetes::proto::ScaledObjectRef;
use greenscale_kubernetes::proto::external_scaler_client::ExternalScalerClient;
use greenscale_testkit::{RedisServer, free_port, keda};

mod common;
use common::Process;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_answers_keda_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let (grpc, http) = (free_port(), free_port());
    let grpc_listen = format!("127.0.0.1:{grpc}");
    let http_listen = format!("127.0.0.1:{http}");
    let mut scaler = Process::spawn(
        dir.path(),
        "scaler",
        &[
            "scaler",
            "--redis-url",
            &redis.url(),
            "--grpc-listen",
            &grpc_listen,
            "--http-listen",
            &http_listen,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        match ExternalScalerClient::connect(format!("http://{grpc_listen}")).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "scaler did not start: {e}\n{}",
                    scaler.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // What KEDA sends for the rendered keda-external-push overlay.
    let overlay = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/overlays/keda-external-push"
    );
    let so =
        keda::scaled_objects(&keda::render_kustomization(std::path::Path::new(overlay))).remove(0);
    let object = ScaledObjectRef {
        name: so.name.clone(),
        namespace: so.namespace.clone(),
        scaler_metadata: so.triggers[0].metadata.clone(),
    };
    assert!(
        !client
            .is_active(object.clone())
            .await
            .unwrap()
            .into_inner()
            .result
    );
    let mut conn = redis.connection();
    redis::cmd("LPUSH")
        .arg("jobs")
        .arg(r#"{"job_id":"k-1","prompt":"hi"}"#)
        .query::<()>(&mut conn)
        .unwrap();
    assert!(
        client
            .is_active(object.clone())
            .await
            .unwrap()
            .into_inner()
            .result
    );

    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://{http_listen}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = http
        .get(format!("http://{http_listen}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("greenscale_desired_replicas{list=\"jobs\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("greenscale_scaler_calls_total{method=\"IsActive\"} 2"),
        "{metrics}"
    );

    scaler.signal("TERM");
    assert!(
        scaler.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        scaler.log()
    );
}
