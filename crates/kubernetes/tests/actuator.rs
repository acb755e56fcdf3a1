//! The direct actuator against a scripted fake Kubernetes API (tower-test): the Lease is
//! taken, the scale PATCH carries the policy's count, and once another scaler holds the
//! Lease nothing more is sent.

use std::sync::Arc;
use std::time::Duration;

use greenscale_core::{JobSpec, Producer, QueueConfig};
use greenscale_kubernetes::actuator::{Actuator, ActuatorConfig, Step};
use greenscale_kubernetes::{ScalerMetrics, TargetSettings};
use greenscale_queue::RedisQueue;
use greenscale_testkit::RedisServer;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let body = request.into_body().collect_bytes().await.unwrap();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (value, send)
}

fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/greenscale/leases/greenscale-scaler";
const SCALE: &str = "/apis/apps/v1/namespaces/greenscale/deployments/greenscale-worker/scale";

#[tokio::test]
async fn the_leader_patches_the_scale_and_a_lost_lease_stops_it() {
    let redis = RedisServer::start();
    let queue = RedisQueue::connect(&redis.url(), "jobs", QueueConfig::default()).unwrap();
    for i in 0..3 {
        queue
            .enqueue(JobSpec::from_prompt(format!("job {i}")))
            .await
            .unwrap();
    }
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "greenscale");
    let settings =
        TargetSettings::from_metadata(&[("concurrency".to_string(), "1".to_string())].into())
            .unwrap();
    let config = ActuatorConfig {
        namespace: "greenscale".into(),
        deployment: "greenscale-worker".into(),
        lease_name: "greenscale-scaler".into(),
        identity: "scaler-a".into(),
        lease_duration: Duration::from_secs(15),
        settings,
    };
    let mut actuator = Actuator::new(
        client,
        Arc::new(queue),
        config,
        Arc::new(ScalerMetrics::default()),
    );

    let server = tokio::spawn(async move {
        // Round 1: no Lease yet → create it; read the scale and pods; patch.
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        reply(
            send,
            StatusCode::NOT_FOUND,
            json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "leases.coordination.k8s.io \"greenscale-scaler\" not found",
            "reason": "NotFound", "code": 404}),
        );
        let (lease, send) = expect(
            &mut handle,
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/greenscale/leases",
        )
        .await;
        assert_eq!(lease["spec"]["holderIdentity"], "scaler-a");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
        reply(send, StatusCode::CREATED, lease);
        let (_, send) = expect(&mut handle, Method::GET, SCALE).await;
        reply(
            send,
            StatusCode::OK,
            json!({
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": "greenscale-worker", "namespace": "greenscale"},
            "spec": {"replicas": 0}, "status": {"replicas": 0, "selector": "app=greenscale-worker"}}),
        );
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            "/api/v1/namespaces/greenscale/pods",
        )
        .await;
        reply(
            send,
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        );
        let (patch, send) = expect(&mut handle, Method::PATCH, SCALE).await;
        let replicas = patch["spec"]["replicas"].as_u64().expect("a replica count");
        assert_eq!(
            patch,
            json!({"spec": {"replicas": replicas}}),
            "a merge patch of the count only"
        );
        reply(
            send,
            StatusCode::OK,
            json!({
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": "greenscale-worker", "namespace": "greenscale"},
            "spec": {"replicas": replicas}, "status": {"replicas": 0}}),
        );

        // Round 2: another scaler renewed the Lease just now → nothing else may be sent.
        let (_, send) = expect(&mut handle, Method::GET, LEASE).await;
        reply(
            send,
            StatusCode::OK,
            json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "greenscale-scaler", "namespace": "greenscale", "resourceVersion": "7"},
            "spec": {"holderIdentity": "scaler-b", "leaseDurationSeconds": 15,
                     "renewTime": k8s_openapi::jiff::Timestamp::now().to_string()}}),
        );
        let more = handle.next_request().await;
        assert!(
            more.is_none(),
            "a request was sent without the Lease: {:?}",
            more.map(|(r, _)| r.uri().clone())
        );
        replicas
    });

    let first = actuator.step().await.unwrap();
    let Step::Scaled(0, n) = first else {
        panic!("round 1: {first:?}")
    };
    assert!(
        (1..=3).contains(&n),
        "3 waiting jobs at concurrency 1 → 1..3 replicas, got {n}"
    );
    assert_eq!(actuator.step().await.unwrap(), Step::NotLeader);
    drop(actuator);
    assert_eq!(server.await.unwrap(), n as u64);
}
