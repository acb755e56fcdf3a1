//! GreenScale's gateway: the jobs API, an OpenAI-compatible API that holds requests while
//! the worker pool wakes, API keys, limits and backpressure, Prometheus metrics and an
//! OpenAPI document. It works with any queue backend through the `Queue` trait.

mod admission;
pub mod auth;
pub mod batch;
pub mod dashboard;
pub mod error;
pub mod events;
mod jobs;
pub mod metrics;
mod openai;
pub mod routes;
mod serve;
mod watch;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use greenscale_core::Limits;
use utoipa::OpenApi;

pub use auth::{ApiKeys, Caller};
pub use batch::{BatchConfig, open_object_store};
pub use dashboard::PoolsStatus;
pub use error::ApiError;
use events::EventHub;
pub use metrics::Metrics;
pub use routes::{Route, Routes};
pub use serve::serve;
pub use webhooks::WebhookConfig;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Accepted API keys; none means no authentication (loopback only).
    pub api_keys: ApiKeys,
    /// How long a request waits for a worker to start its job before it fails.
    pub wait_deadline: Duration,
    /// Pending jobs above which new requests get 429.
    pub max_pending: u64,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Prompt limits.
    pub limits: Limits,
    /// Models listed by `/v1/models` before those workers announce (the first is the
    /// default for requests naming none; with none, the worker's own default applies).
    pub models: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            api_keys: ApiKeys::default(),
            wait_deadline: Duration::from_secs(300),
            max_pending: 10_000,
            max_body_bytes: 1024 * 1024,
            limits: Limits::default(),
            models: Vec::new(),
        }
    }
}

/// A listen address that would expose an unauthenticated API to the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to listen on {0} without API keys: anyone who can reach it could submit jobs. \
     Set --api-key (or GREENSCALE_API_KEYS=key1,key2), or listen on 127.0.0.1"
)]
pub struct ExposedWithoutKeys(pub SocketAddr);

/// Refuses a configuration that would expose an unauthenticated API to the network.
pub fn check_exposure(listen: &SocketAddr, keys: &ApiKeys) -> Result<(), ExposedWithoutKeys> {
    if !listen.ip().is_loopback() && keys.is_empty() {
        return Err(ExposedWithoutKeys(*listen));
    }
    Ok(())
}

/// Shared state of the gateway's handlers.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) routes: Routes,
    pub(crate) pools: Option<Arc<dyn PoolsStatus>>,
    pub(crate) dashboard: Arc<dashboard::DashboardState>,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) hub: EventHub,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
    /// True from the start of a drain: new work is refused, answers are still served.
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
    /// Requests waiting for a job's answer now.
    pub(crate) waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// The last pending-count reading used for admission, and when it was taken.
    pub(crate) pending_reading: Arc<std::sync::Mutex<Option<(std::time::Instant, QueueLoad)>>>,
    /// The Batch API and webhooks, when an object store is configured.
    pub(crate) batches: Option<Arc<batch::BatchState>>,
}

/// The pending counts admission decisions use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLoad {
    /// Jobs waiting.
    pub(crate) pending: u64,
    /// Of them, jobs of deferrable classes.
    pub(crate) deferrable: u64,
}

impl Gateway {
    /// A gateway submitting to `routes`. Call inside a Tokio runtime (it starts the event
    /// hub). Streams end when `shutdown` turns true.
    pub fn new(
        routes: Routes,
        config: GatewayConfig,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let hub = EventHub::start(routes.queues());
        hub.alert_on(shutdown.clone());
        Gateway {
            hub,
            routes,
            pools: None,
            dashboard: Arc::default(),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
            shutdown,
            draining: tokio::sync::watch::channel(false).1,
            waiting: Arc::default(),
            pending_reading: Arc::default(),
            batches: None,
        }
    }

    /// Serves files, batches and webhooks, kept in `config`'s object store.
    pub fn with_batches(mut self, config: BatchConfig) -> Self {
        self.batches = Some(Arc::new(batch::BatchState::new(config)));
        self
    }

    /// Drains when `draining` turns true: from then on new jobs and chat requests get 503
    /// with `Retry-After`, requests waiting on jobs that are running keep waiting for their
    /// answers, and those whose job has not started are answered 503 at once (a chat
    /// request's unstarted job is cancelled, since its client will retry).
    pub fn with_draining(mut self, draining: tokio::sync::watch::Receiver<bool>) -> Self {
        self.hub.alert_on(draining.clone());
        self.draining = draining;
        self
    }

    /// How many requests are waiting for a job's answer (or following its events) now.
    pub fn waiting_requests(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shows the state of these pools (at `/v1/pools` and on the dashboard).
    pub fn with_pools(mut self, pools: Arc<dyn PoolsStatus>) -> Self {
        self.pools = Some(pools);
        self
    }

    /// Uses `metrics` (in which other components registered their own metrics too).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "GreenScale gateway", description = "Jobs API and OpenAI-compatible API of GreenScale."),
    paths(
        jobs::create_job,
        jobs::list_jobs,
        jobs::get_job,
        jobs::cancel_job,
        jobs::job_events,
        jobs::queue_stats,
        jobs::tenants,
        openai::chat_completions,
        openai::list_models,
        batch::files::upload,
        batch::files::list,
        batch::files::get,
        batch::files::get_content,
        batch::files::delete,
        batch::batches::create,
        batch::batches::list,
        batch::batches::get,
        batch::batches::cancel,
        webhooks::secret,
        webhooks::dead,
        dashboard::pools,
        dashboard::gpus,
        dashboard::history,
        healthz,
        readyz,
    ),
    components(schemas(
        error::ErrorBody,
        error::ErrorDetail,
        jobs::JobRequest,
        jobs::Message,
        jobs::JobView,
        jobs::UsageView,
        jobs::JobList,
        jobs::QueueView,
        jobs::TenantView,
        jobs::SseEvent,
        openai::ChatRequest,
        openai::ChatResponse,
        openai::ModelList,
        batch::files::FileObject,
        batch::files::FileList,
        batch::files::FileDeleted,
        batch::batches::CreateBatch,
        batch::batches::BatchObject,
        batch::batches::BatchList,
        batch::batches::BatchErrors,
        batch::batches::LineError,
        batch::batches::RequestCounts,
        webhooks::WebhookSecret,
        webhooks::DeliveryList,
        webhooks::Delivery,
        webhooks::Subject,
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, generated from the handlers and types.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The gateway's routes. The dashboard page and its assets, `/healthz`, `/readyz`,
/// `/metrics` and `/openapi.json` are open; everything under `/v1` needs an API key when
/// keys are configured. Starts the dashboard's sampling task.
pub fn app(gateway: Gateway) -> Router {
    dashboard::start(gateway.clone());
    batch::start(&gateway);
    let keys = gateway.config.api_keys.clone();
    let limit = gateway.config.max_body_bytes;
    // An upload may be as large as the file limit, plus its form's framing.
    let file_limit = gateway
        .batches
        .as_ref()
        .map_or(limit, |b| b.config.max_file_bytes.saturating_add(64 * 1024));
    let api = Router::new()
        .route("/v1/jobs", get(jobs::list_jobs).post(jobs::create_job))
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::cancel_job))
        .route("/v1/jobs/{id}/events", get(jobs::job_events))
        .route("/v1/queue", get(jobs::queue_stats))
        .route("/v1/tenants", get(jobs::tenants))
        .route(
            "/v1/chat/completions",
            axum::routing::post_service(tower::service_fn({
                let g = gateway.clone();
                move |request| openai::chat_completions(g.clone(), request)
            })),
        )
        .route("/v1/models", get(openai::list_models))
        .route(
            "/v1/files",
            get(batch::files::list)
                .post(batch::files::upload)
                .layer(DefaultBodyLimit::max(file_limit)),
        )
        .route(
            "/v1/files/{id}",
            get(batch::files::get).delete(batch::files::delete),
        )
        .route("/v1/files/{id}/content", get(batch::files::get_content))
        .route(
            "/v1/batches",
            get(batch::batches::list).post(batch::batches::create),
        )
        .route("/v1/batches/{id}", get(batch::batches::get))
        .route(
            "/v1/batches/{id}/cancel",
            axum::routing::post(batch::batches::cancel),
        )
        .route("/v1/webhooks/secret", get(webhooks::secret))
        .route("/v1/webhooks/dead", get(webhooks::dead))
        .route("/v1/pools", get(dashboard::pools))
        .route("/v1/gpus", get(dashboard::gpus))
        .route("/v1/dashboard/events", get(dashboard::events))
        .route("/v1/dashboard/history", get(dashboard::history))
        .route_layer(auth::require_key(keys));
    Router::new()
        .merge(api)
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/style.css", get(dashboard::style))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gateway)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the queue answers.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "the queue is reachable"),
    (status = 503, description = "the queue is not reachable", body = error::ErrorBody)))]
async fn readyz(State(g): State<Gateway>) -> Response {
    match g.routes.stats().await {
        Ok(_) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(g): State<Gateway>) -> Response {
    let stats = g.routes.stats().await.ok();
    let counters = g.routes.counters().await.unwrap_or_default();
    let tenants = g.routes.tenants().await.unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        g.metrics.render(stats, &counters, &tenants),
    )
        .into_response()
}

async fn openapi_json() -> Response {
    axum::Json(openapi()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method; see /openapi.json",
    )
}
