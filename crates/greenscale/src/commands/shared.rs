//! Helpers the subcommands share: queue connections, signals, the HTTP listener, times, and the checks `submit` and `status` both make.

use std::time::Duration;

use anyhow::Context;
use greenscale_core::status::PoolStatus;
use greenscale_queue::RedisQueue;

use crate::cli::{HttpArgs, QueueArgs};

/// A Redis URL with any password replaced, for logs.
pub(crate) fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

pub(crate) async fn open_queue(args: &QueueArgs) -> anyhow::Result<RedisQueue> {
    let url = args.redis_url();
    let queue = RedisQueue::connect(&url, &args.list, args.tuning.queue_config())?;
    Ok(queue)
}

pub(crate) async fn connected_queue(args: &QueueArgs) -> anyhow::Result<RedisQueue> {
    let queue = open_queue(args).await?;
    queue.ping().await.with_context(|| {
        format!(
            "cannot reach Redis at {} (set --redis-url or REDIS_URL)",
            redacted(&args.redis_url())
        )
    })?;
    Ok(queue)
}

/// Resolves when SIGTERM or SIGINT arrives.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// The gateway for `routes`, configured from the HTTP flags. Fails when the listen address
/// would expose an unauthenticated API.
pub(crate) fn build_gateway(
    http: &HttpArgs,
    routes: greenscale_gateway::Routes,
    models: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<greenscale_gateway::Gateway> {
    let keys = greenscale_gateway::ApiKeys::new(http.api_keys.clone(), http.admin_keys.clone())
        .map_err(|e| anyhow::anyhow!("--api-key/--admin-key: {}", e.0))?;
    greenscale_gateway::check_exposure(&http.listen, &keys)?;
    let config = greenscale_gateway::GatewayConfig {
        api_keys: keys,
        wait_deadline: http.wait_deadline,
        max_pending: http.max_pending,
        max_body_bytes: http.max_body_bytes,
        limits: greenscale_core::Limits {
            max_prompt_chars: http.max_prompt_chars,
            ..greenscale_core::Limits::default()
        },
        models,
    };
    Ok(greenscale_gateway::Gateway::new(routes, config, stop))
}

/// The Batch API's settings from the HTTP flags: in `--object-store`, else in
/// `default_store` (a folder), else none.
pub(crate) async fn batch_config(
    http: &HttpArgs,
    default_store: Option<&std::path::Path>,
) -> anyhow::Result<Option<greenscale_gateway::BatchConfig>> {
    let location = match (&http.object_store, default_store) {
        (Some(l), _) => l.clone(),
        (None, Some(dir)) => dir.display().to_string(),
        (None, None) => return Ok(None),
    };
    let store = greenscale_gateway::open_object_store(&location)
        .map_err(|e| anyhow::anyhow!("--object-store: {e}"))?;
    let key = match &http.webhook_key {
        Some(k) => k.as_bytes().to_vec(),
        None => greenscale_gateway::webhooks::stored_signing_key(&store)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read or make the webhook signing key: {e}"))?,
    };
    let mut webhooks = greenscale_gateway::WebhookConfig::new(key);
    webhooks.allow = http.webhook_allow.clone();
    webhooks.retry_base = http.webhook_retry;
    webhooks.max_attempts = http.webhook_attempts;
    let mut config = greenscale_gateway::BatchConfig::new(store, webhooks);
    config.max_file_bytes = http.max_file_bytes;
    tracing::info!(object_store = %location, "files, batches and webhooks are kept in the object store");
    Ok(Some(config))
}

/// Stores the tenants' settings of the HTTP flags in every queue of `routes` (replacing what
/// was stored), so workers and other gateways sharing a queue apply them too.
pub(crate) async fn store_tenants(
    http: &HttpArgs,
    routes: &greenscale_gateway::Routes,
) -> anyhow::Result<()> {
    let tenants: greenscale_core::Tenants = http.tenants.iter().cloned().collect();
    routes
        .set_tenants(&tenants)
        .await
        .context("cannot store the tenants' settings in the queue")?;
    for (name, s) in &tenants {
        tracing::info!(tenant = %name, weight = s.weight, max_running = ?s.max_running, max_queued = ?s.max_queued, tokens_per_minute = ?s.tokens_per_minute, "tenant settings");
    }
    Ok(())
}

/// Binds the HTTP listener, saying which address failed.
pub(crate) async fn bind(listen: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

pub(crate) use greenscale_core::unix_ms as now_ms;

pub(crate) fn ago(ms: Option<u64>, now: u64) -> String {
    match ms {
        Some(t) => format!("{:.1} s ago", now.saturating_sub(t) as f64 / 1000.0),
        None => "-".into(),
    }
}

/// Where `greenscale up` listens by default.
pub(crate) const UP_DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Without `--url`, `submit` and `status` use Redis; when a `greenscale up` answers on its
/// default address, that is almost certainly not what was meant: say where `what` went.
pub(crate) async fn warn_if_up_runs_here(queue: &QueueArgs, what: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build();
    let Ok(client) = client else { return };
    let answered = match client
        .get(format!("{UP_DEFAULT_URL}/v1/pools"))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .is_ok_and(|v| v.as_array().is_some_and(|a| !a.is_empty())),
        _ => false,
    };
    if answered {
        eprintln!(
            "note: {what} Redis at {} (list {}), but a `greenscale up` is running at {UP_DEFAULT_URL}; \
             to use it, add --url {UP_DEFAULT_URL}",
            redacted(&queue.redis_url()),
            queue.list
        );
    }
}

/// For the pool serving `model` (or the only pool), its failed starts in a row and a line
/// saying so, when there are any.
pub(crate) fn failing_pool(pools: &[PoolStatus], model: Option<&str>) -> Option<(u32, String)> {
    let pool = match model {
        Some(m) => pools.iter().find(|p| p.name == m),
        None if pools.len() == 1 => pools.first(),
        None => None,
    }?;
    let failures = Some(pool.failures_in_a_row).filter(|n| *n > 0)?;
    Some((
        failures,
        format!(
            "pool {}: {failures} failed starts in a row, last: {}",
            pool.name,
            pool.last_failure.as_deref().unwrap_or("unknown")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
    }
}
