//! `greenscale worker`: leases jobs from Redis and runs them against a model.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use greenscale_worker::{OpenAiBackend, OpenAiConfig, WorkerConfig, default_worker_id, run_worker};

use crate::cli::WorkerArgs;
use crate::commands::shared::{open_queue, redacted, shutdown_signal};

/// Runs `greenscale worker` until SIGTERM or SIGINT, then drains.
pub(super) async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let model_url = args
        .model_url
        .clone()
        .or_else(|| std::env::var("NEYSA_API_URL").ok().filter(|s| !s.is_empty()))
        .context("no model URL: pass --model-url or set GREENSCALE_MODEL_URL (or the prototype's NEYSA_API_URL)")?;
    let api_key = args.api_key.clone().or_else(|| {
        std::env::var("NEYSA_API_KEY")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let backend = OpenAiBackend::new(OpenAiConfig {
        url: model_url,
        api_key,
        model: args.model.clone(),
        fixed_model: None,
        temperature: args.temperature,
        max_tokens: args.max_tokens,
        timeout: args.job_timeout,
    })?;
    let queue = open_queue(&args.queue).await?;
    let id = args.worker_id.clone().unwrap_or_else(default_worker_id);
    tracing::info!(
        worker = %id,
        redis = %redacted(&args.queue.redis_url()),
        list = %args.queue.list,
        model_url = %backend.url(),
        model = %args.model,
        "connecting"
    );
    if let Err(e) = queue.ping().await {
        tracing::warn!(error = %e, "Redis is not reachable yet; will keep trying");
    }
    let mut config = WorkerConfig::new(id, args.queue.tuning.lease);
    config.concurrency = args.concurrency as usize;
    config.grace = args.grace;
    config.models = vec![args.model.clone()];
    run_worker(
        Arc::new(queue),
        Arc::new(backend),
        config,
        Arc::default(),
        shutdown_signal(),
    )
    .await;
    Ok(ExitCode::SUCCESS)
}
