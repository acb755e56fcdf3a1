//! The scaler's Prometheus metrics and its small HTTP server (`/metrics`, `/healthz`).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use greenscale_core::metrics::PoolFamilies;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabel {
    list: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

/// Metrics of the scaler and the actuator, with `greenscale_` names.
pub struct ScalerMetrics {
    registry: Mutex<Registry>,
    desired: Family<ListLabel, Gauge>,
    calls: Family<MethodLabel, Counter>,
    pushes: Counter,
    pools: PoolFamilies,
    /// Scale changes sent (actuator).
    pub scale_patches: Counter,
    /// 1 while this scaler holds the Lease (actuator).
    pub leader: Gauge,
}

impl Default for ScalerMetrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("greenscale");
        let m = ScalerMetrics {
            registry: Mutex::new(Registry::default()),
            desired: Family::default(),
            calls: Family::default(),
            pushes: Counter::default(),
            pools: PoolFamilies::register(&mut r),
            scale_patches: Counter::default(),
            leader: Gauge::default(),
        };
        r.register(
            "desired_replicas",
            "Replicas the scaling policy asks for, per list",
            m.desired.clone(),
        );
        r.register(
            "scaler_calls",
            "External-scaler calls from KEDA, by method",
            m.calls.clone(),
        );
        r.register(
            "scaler_pushes",
            "`true` pushed on StreamIsActive (wake-ups without waiting for a poll)",
            m.pushes.clone(),
        );
        r.register(
            "scale_patches",
            "Scale subresource changes sent (direct actuator)",
            m.scale_patches.clone(),
        );
        r.register(
            "scaler_leader",
            "1 while this scaler holds the Lease (direct actuator)",
            m.leader.clone(),
        );
        *m.registry.lock().expect("registry lock") = r;
        m
    }
}

impl ScalerMetrics {
    /// Records the desired replicas of `list`.
    pub fn desired(&self, list: &str, n: u32) {
        self.desired
            .get_or_create(&ListLabel {
                list: list.to_string(),
            })
            .set(n as i64);
    }

    /// Records the worker replicas of `pool` (its list) by state.
    pub fn set_replicas(&self, pool: &str, starting: u32, ready: u32) {
        self.pools
            .set_replicas(pool, &[("starting", starting), ("ready", ready)]);
    }

    /// Records a measured cold start of a `pool` replica.
    pub fn cold_start(&self, pool: &str, seconds: f64) {
        self.pools.cold_start(pool, seconds);
    }

    /// Counts a call of `method`.
    pub fn call(&self, method: &'static str) {
        self.calls.get_or_create(&MethodLabel { method }).inc();
    }

    /// Counts a pushed wake-up.
    pub fn pushed(&self) {
        self.pushes.inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("registry lock"),
        )
        .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` completes.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<ScalerMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                        .into_response()
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
