//! The external scaler over real gRPC, with a real Redis, through a client generated from
//! the same proto, with the metadata KEDA sends for the rendered `keda-external-push` overlay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenscale_core::{Completion, Consumer, JobSpec, Outcome, Producer, QueueConfig, Reader};
use greenscale_kubernetes::external::OpenQueue;
use greenscale_kubernetes::proto::external_scaler_client::ExternalScalerClient;
use greenscale_kubernetes::proto::{GetMetricsRequest, ScaledObjectRef};
use greenscale_kubernetes::{ExternalScalerServer, Scaler, ScalerMetrics};
use greenscale_queue::RedisQueue;
use greenscale_testkit::{RedisServer, free_port, keda};
use tonic::transport::Channel;

async fn start(redis: &RedisServer) -> ExternalScalerClient<Channel> {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = redis.url();
    let open: OpenQueue = Arc::new(move |list: &str| {
        let queue = RedisQueue::connect(&url, list, QueueConfig::default())?;
        Ok(Arc::new(queue) as Arc<dyn Reader>)
    });
    let scaler = Scaler::new(open, Arc::new(ScalerMetrics::default()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalScalerServer::new(scaler))
            .serve(addr),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ExternalScalerClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "scaler did not start: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The ScaledObjectRef KEDA sends for the `keda-external-push` overlay as rendered, with
/// the list and any other keys set to `extra` (as another ScaledObject would have them).
fn object(list: &str, extra: &[(&str, &str)]) -> ScaledObjectRef {
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/overlays/keda-external-push"
    );
    let so =
        keda::scaled_objects(&keda::render_kustomization(std::path::Path::new(root))).remove(0);
    let mut meta: HashMap<String, String> = so.triggers[0].metadata.clone();
    meta.insert("listFromEnv".into(), list.into());
    for (k, v) in extra {
        meta.insert(k.to_string(), v.to_string());
    }
    ScaledObjectRef {
        name: so.name,
        namespace: so.namespace,
        scaler_metadata: meta,
    }
}

async fn metric(client: &mut ExternalScalerClient<Channel>, o: &ScaledObjectRef) -> f64 {
    let r = client
        .get_metrics(GetMetricsRequest {
            scaled_object_ref: Some(o.clone()),
            metric_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    r.metric_values[0].metric_value_float
}

async fn active(client: &mut ExternalScalerClient<Channel>, o: &ScaledObjectRef) -> bool {
    client
        .is_active(o.clone())
        .await
        .unwrap()
        .into_inner()
        .result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pushed_at_zero_is_streamed_as_active_within_50_ms() {
    let redis = RedisServer::start();
    let mut client = start(&redis).await;
    let o = object("jobs", &[]);
    let mut stream = client
        .stream_is_active(o.clone())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(!first.result, "an empty queue at zero is inactive");
    // Let the subscription settle, then push the way the prototype's producers do.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = redis.connection();
    let pushed = Instant::now();
    redis::cmd("LPUSH")
        .arg("jobs")
        .arg(r#"{"job_id":"wake-1","prompt":"hello"}"#)
        .query::<()>(&mut conn)
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a push")
        .unwrap()
        .unwrap();
    let took = pushed.elapsed();
    assert!(next.result);
    assert!(took < Duration::from_millis(50), "pushed after {took:?}");
    println!(
        "StreamIsActive pushed true {:.1} ms after LPUSH",
        took.as_secs_f64() * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_keeps_a_replica_until_it_ends_then_the_pool_goes_to_zero() {
    let redis = RedisServer::start();
    let mut client = start(&redis).await;
    let o = object(
        "work",
        &[
            ("policy", "greenscale:cold_cost=1"),
            ("coldStart", "1s"),
            ("concurrency", "2"),
        ],
    );
    let spec = client
        .get_metric_spec(o.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spec.metric_specs[0].target_size_float, 1.0);
    assert_eq!(spec.metric_specs[0].metric_name, "greenscale-work");

    let queue = RedisQueue::connect(&redis.url(), "work", QueueConfig::default()).unwrap();
    queue
        .enqueue(JobSpec::from_prompt("long job"))
        .await
        .unwrap();
    let leased = queue.lease("w1", 1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(queue.stats().await.unwrap().pending, 0, "the list is empty");
    // Long past any keep-alive, the running job still holds a replica.
    for _ in 0..8 {
        queue.heartbeat("w1", &[]).await.unwrap();
        assert!(metric(&mut client, &o).await >= 1.0);
        assert!(active(&mut client, &o).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    queue
        .finish("w1", &leased[0], Outcome::Succeeded(Completion::default()))
        .await
        .unwrap();
    queue.deregister("w1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while active(&mut client, &o).await {
        assert!(
            Instant::now() < deadline,
            "still active long after the keep-alive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(&mut client, &o).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_metric_spec_is_unimplemented_and_bad_metadata_is_refused() {
    let redis = RedisServer::start();
    let mut client = start(&redis).await;
    let err = client
        .stream_metric_spec(object("jobs", &[]))
        .await
        .expect_err("not implemented");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    let err = client
        .is_active(object("jobs", &[("policy", "nope")]))
        .await
        .expect_err("bad policy");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("policy"), "{}", err.message());
}
