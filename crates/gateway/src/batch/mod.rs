//! OpenAI's Batch API on a pool that sleeps: files of requests in, files of answers out.
//! Each request runs as a job of class `batch` with the batch's window as its deadline, so
//! it waits for warm capacity and wakes a pool only when the window needs it.
//!
//! Files, batches and webhook deliveries live in an object store shared by every gateway
//! (see [`open_object_store`]); a batch's progress is re-derived from its jobs' records, so
//! any gateway, or a restarted one, carries it on.

pub(crate) mod batches;
pub(crate) mod files;
mod runner;
pub(crate) mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use crate::Gateway;
use crate::error::ApiError;
use crate::webhooks::WebhookConfig;
use store::Store;
pub use store::open_object_store;

/// Settings of the Batch API and of webhooks.
#[derive(Clone)]
pub struct BatchConfig {
    /// Where files, batches and webhook deliveries are kept.
    pub store: Arc<dyn object_store::ObjectStore>,
    /// Largest uploaded file, bytes.
    pub max_file_bytes: usize,
    /// Most requests in one batch's input file.
    pub max_requests: usize,
    /// Longest completion window a batch may ask for.
    pub max_window: Duration,
    /// Webhook signing and delivery.
    pub webhooks: WebhookConfig,
}

impl BatchConfig {
    /// The defaults (OpenAI's limits: 200 MB files, 50,000 requests, a 24 h window) on `store`.
    pub fn new(store: Arc<dyn object_store::ObjectStore>, webhooks: WebhookConfig) -> Self {
        BatchConfig {
            store,
            max_file_bytes: 200 * 1000 * 1000,
            max_requests: 50_000,
            max_window: Duration::from_secs(24 * 3600),
            webhooks,
        }
    }
}

/// What the Batch API handlers and background tasks share.
pub(crate) struct BatchState {
    pub(crate) config: BatchConfig,
    pub(crate) store: Store,
    /// Wakes the batch runner (a batch was created or cancelled).
    pub(crate) wake: tokio::sync::Notify,
}

impl BatchState {
    pub(crate) fn new(config: BatchConfig) -> Self {
        BatchState {
            store: Store(config.store.clone()),
            config,
            wake: tokio::sync::Notify::new(),
        }
    }
}

/// The Batch API state, or 404 saying how to turn it on.
pub(crate) fn state(g: &Gateway) -> Result<&Arc<BatchState>, ApiError> {
    g.batches.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            "files, batches and webhooks need an object store, and this gateway has none: \
             start it with --object-store (a folder or s3://BUCKET/PREFIX); `greenscale up` \
             keeps them in its data folder",
        )
    })
}

/// Starts the batch runner and the webhook sender; both stop when the gateway shuts down.
pub(crate) fn start(g: &Gateway) {
    if g.batches.is_some() {
        tokio::spawn(runner::run(g.clone()));
        tokio::spawn(crate::webhooks::run(g.clone()));
    }
}

/// Unix seconds now.
pub(crate) fn unix_s() -> u64 {
    crate::dashboard::unix_ms() / 1000
}

/// A fresh opaque id with `prefix`.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}
