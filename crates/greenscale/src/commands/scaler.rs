//! `greenscale scaler`: KEDA's external scaler over gRPC, `/metrics` and `/healthz` over
//! HTTP, and with `--actuator kubernetes` the direct actuator.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use greenscale_core::QueueConfig;
use greenscale_kubernetes::actuator::{Actuator, ActuatorConfig};
use greenscale_kubernetes::{ExternalScalerServer, Scaler, ScalerMetrics, TargetSettings};
use greenscale_queue::RedisQueue;

use crate::cli::{ScalerArgs, redis_url_or_fallback};
use crate::commands::shared::{redacted, shutdown_signal};

/// Runs the scaler until SIGTERM or SIGINT.
pub async fn run(args: ScalerArgs) -> anyhow::Result<ExitCode> {
    let url = redis_url_or_fallback(args.redis_url.as_deref());
    let metrics = Arc::new(ScalerMetrics::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut actuator_task = None;
    if args.actuator == "kubernetes" {
        let deployment = args
            .deployment
            .clone()
            .context("--deployment is needed with --actuator kubernetes")?;
        let namespace = args
            .namespace
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
            })
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "default".into());
        let meta = [
            ("list".to_string(), args.list.clone()),
            ("policy".to_string(), args.policy.clone()),
            ("concurrency".to_string(), args.concurrency.to_string()),
            ("maxReplicas".to_string(), args.max_replicas.to_string()),
        ]
        .into();
        let settings = TargetSettings::from_metadata(&meta)?;
        let client = kube::Client::try_default().await.context(
            "cannot reach Kubernetes (no in-cluster service account and no usable kubeconfig)",
        )?;
        let queue = RedisQueue::connect(&url, &args.list, QueueConfig::default())?;
        let identity = args
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(greenscale_worker::default_worker_id);
        let config = ActuatorConfig {
            namespace: namespace.clone(),
            deployment: deployment.clone(),
            lease_name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(15),
            settings,
        };
        let actuator = Actuator::new(client, Arc::new(queue), config, metrics.clone());
        tracing::info!(%namespace, %deployment, %identity, list = %args.list, policy = %args.policy, "direct actuator on");
        actuator_task = Some(tokio::spawn(
            actuator.run(Duration::from_secs(1), stopped(stop_rx.clone())),
        ));
    }

    let listener = crate::commands::shared::bind(args.http_listen).await?;
    let http = tokio::spawn(greenscale_kubernetes::metrics::serve_http(
        listener,
        metrics.clone(),
        stopped(stop_rx.clone()),
    ));
    match RedisQueue::connect(&url, &args.list, QueueConfig::default()) {
        Ok(q) => {
            if let Err(e) = q.ping().await {
                tracing::warn!(redis = %redacted(&url), error = %e, "Redis is not reachable yet; KEDA's calls fail with Unavailable until it is");
            }
        }
        Err(greenscale_core::QueueError::Invalid(m)) => {
            anyhow::bail!("--redis-url {}: {m}", redacted(&url))
        }
        Err(e) => anyhow::bail!("--redis-url {}: {e}", redacted(&url)),
    }
    let redis_url = url.clone();
    let open: greenscale_kubernetes::external::OpenQueue = Arc::new(move |list: &str| {
        let queue = RedisQueue::connect(&redis_url, list, QueueConfig::default())?;
        Ok(Arc::new(queue) as Arc<dyn greenscale_core::Reader>)
    });
    let scaler = Scaler::new(open, metrics);
    let mut server = tonic::transport::Server::builder();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let config = greenscale_kubernetes::tls::server_config(
                cert,
                key,
                args.tls_client_ca.as_deref(),
            )?;
            server = server
                .tls_config(config)
                .context("cannot set up gRPC TLS")?;
            if args.tls_client_ca.is_some() {
                "mutual TLS"
            } else {
                "TLS"
            }
        }
        _ => "plaintext",
    };
    tracing::info!(
        grpc = %args.grpc_listen,
        http = %args.http_listen,
        redis = %redacted(&url),
        transport = tls,
        "KEDA external scaler listening"
    );
    server
        .add_service(ExternalScalerServer::new(scaler))
        .serve_with_shutdown(args.grpc_listen, async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
        .await
        .with_context(|| format!("cannot serve gRPC on {}", args.grpc_listen))?;
    if let Some(t) = actuator_task {
        let _ = t.await;
    }
    if let Ok(Err(e)) = http.await {
        tracing::warn!(error = %e, "the metrics server failed");
    }
    tracing::info!("scaler stopped");
    Ok(ExitCode::SUCCESS)
}
