//! `greenscale gateway`: the HTTP front door on a Redis queue, with a drain on SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::GatewayArgs;
use crate::commands::shared::{
    batch_config, bind, build_gateway, open_queue, redacted, shutdown_signal, store_tenants,
};

/// Runs `greenscale gateway` until SIGTERM or SIGINT, then drains within `--drain-grace`.
pub(super) async fn gateway(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let queue = open_queue(&args.queue).await?;
    if let Err(e) = queue.ping().await {
        tracing::warn!(error = %e, "Redis is not reachable yet; /readyz will say so until it is");
    }
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let queue = Arc::new(queue);
    tokio::spawn(maintain(queue.clone()));
    let routes = greenscale_gateway::Routes::single(queue);
    {
        // Redis may come up later: keep trying to store the tenants' settings until it does.
        let (http, routes) = (args.http.clone(), routes.clone());
        tokio::spawn(async move {
            while let Err(e) = store_tenants(&http, &routes).await {
                tracing::warn!(error = %format!("{e:#}"), "tenant settings not stored yet; trying again in 2 s");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        });
    }
    let mut gateway =
        build_gateway(&args.http, routes, args.models.clone(), stop_rx)?.with_draining(drain_rx);
    if let Some(batches) = batch_config(&args.http, None).await? {
        gateway = gateway.with_batches(batches);
    }
    let listener = bind(args.http.listen).await?;
    tracing::info!(
        listen = %args.http.listen,
        redis = %redacted(&args.queue.redis_url()),
        api_keys = if args.http.api_keys.is_empty() { "none (loopback only)" } else { "required" },
        "gateway listening; OpenAI-compatible base URL http://{}/v1",
        args.http.listen
    );
    let drain = {
        let gateway = gateway.clone();
        async move {
            shutdown_signal().await;
            // New work gets 503; requests waiting on running jobs get their answers within
            // the grace; then everything stops.
            let _ = drain_tx.send(true);
            let since = std::time::Instant::now();
            tracing::info!(
                waiting = gateway.waiting_requests(),
                grace_s = args.drain_grace.as_secs(),
                "draining: no new work; waiting requests get their answers (Ctrl-C again to stop at once)"
            );
            let mut progress = tokio::time::interval(std::time::Duration::from_millis(200));
            let mut last_log = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown_signal() => {
                        tracing::warn!(waiting = gateway.waiting_requests(), "second signal: stopping now; the jobs keep running on the workers");
                        break;
                    }
                    _ = progress.tick() => {}
                }
                let waiting = gateway.waiting_requests();
                let left = args.drain_grace.saturating_sub(since.elapsed());
                if waiting == 0 || left.is_zero() {
                    break;
                }
                if last_log.elapsed() >= std::time::Duration::from_secs(2) {
                    last_log = std::time::Instant::now();
                    tracing::info!(
                        "draining: {waiting} requests waiting for answers, {} s left",
                        left.as_secs()
                    );
                }
            }
            let _ = stop_tx.send(true);
        }
    };
    greenscale_gateway::serve(listener, greenscale_gateway::app(gateway), drain).await;
    tracing::info!("gateway stopped");
    Ok(ExitCode::SUCCESS)
}

/// How often a gateway runs the queue's maintenance.
const MAINTAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The queue's maintenance, from the gateway too: while every worker is scaled to zero,
/// the jobs of a worker that died still go back to the queue (where a list-length trigger
/// sees them and wakes the pool), due retries are promoted, and ended jobs' records are
/// forgotten after the retention.
async fn maintain(queue: Arc<greenscale_queue::RedisQueue>) {
    use greenscale_core::Consumer;
    loop {
        tokio::time::sleep(MAINTAIN_EVERY).await;
        if let Err(e) = queue.maintain().await {
            tracing::debug!(error = %e, "queue maintenance failed; will try again");
        }
    }
}
