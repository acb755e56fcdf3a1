//! The web dashboard at `/`: the page, script and style compiled into the binary; a live
//! overview pushed as server-sent events; the timeline history and the task that samples it.
//! Every number comes from the queue, the pools (under `greenscale up`) or job records.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Extension, Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use greenscale_core::status::{GpuStatus, PoolStatus};
use greenscale_core::{JobRecord, JobStatus, QueueStats, TenantStats};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::Gateway;
use crate::auth::Caller;
use crate::error::ApiError;

/// Live state of the pools behind a gateway (supplied by `greenscale up`).
pub trait PoolsStatus: Send + Sync {
    /// The pools now.
    fn pools(&self) -> Vec<PoolStatus>;

    /// The GPUs and what is placed on them (none without GPU limits).
    fn gpus(&self) -> Vec<GpuStatus> {
        Vec::new()
    }
}

/// How often the overview is rebuilt while someone watches it.
const OVERVIEW_EVERY: Duration = Duration::from_secs(1);
/// How often the timeline is sampled: twice within any burst of a second or more.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// What one kept timeline point covers: the peak of the samples in it, so that a burst
/// shorter than this still shows.
const POINT_SPAN: Duration = Duration::from_secs(5);
/// How much timeline is kept.
const HISTORY: Duration = Duration::from_secs(24 * 3600);
/// The window of the wait, run and first-token percentiles.
const TIMINGS_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Most points a timeline answer has per pool.
const MAX_POINTS: usize = 360;

/// One timeline sample of one pool.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    t_ms: u64,
    replicas: u64,
    pending: u64,
    in_flight: u64,
}

impl Sample {
    /// Keeps, of this and `other`, the highest value of each series.
    fn keep_peak(&mut self, other: &Sample) {
        self.replicas = self.replicas.max(other.replicas);
        self.pending = self.pending.max(other.pending);
        self.in_flight = self.in_flight.max(other.in_flight);
    }
}

/// Percentiles of one timing, seconds.
#[derive(Debug, Clone, Default, Serialize)]
struct Spread {
    p50_s: Option<f64>,
    p95_s: Option<f64>,
    n: usize,
}

/// Wait, run and first-token percentiles of a pool's jobs finished in the window.
#[derive(Debug, Clone, Default, Serialize)]
struct Timings {
    jobs: usize,
    wait: Spread,
    run: Spread,
    ttft: Spread,
}

/// Who a pool is: under `greenscale up`, its whole status; for a standalone gateway, the
/// queue its workers lease from.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum PoolIdentity {
    Managed(Box<PoolStatus>),
    Workers { name: String, kind: &'static str },
}

impl PoolIdentity {
    fn name(&self) -> &str {
        match self {
            PoolIdentity::Managed(p) => &p.name,
            PoolIdentity::Workers { name, .. } => name,
        }
    }

    /// Replicas under `up`; live workers otherwise.
    fn replicas(&self, queue: &QueueStats) -> u64 {
        match self {
            PoolIdentity::Managed(p) => p.replicas.len() as u64,
            PoolIdentity::Workers { .. } => queue.live_workers,
        }
    }
}

/// One pool card of the overview.
#[derive(Debug, Clone, Serialize)]
struct PoolOverview {
    #[serde(flatten)]
    identity: PoolIdentity,
    queue: QueueStats,
    timings: Timings,
}

/// Everything the overview shows.
#[derive(Debug, Clone, Default, Serialize)]
struct Overview {
    now_ms: u64,
    managed: bool,
    timings_window_s: u64,
    pools: Vec<PoolOverview>,
    gpus: Vec<GpuStatus>,
    /// Each tenant's counts (a tenant's key sees only its own row).
    tenants: Vec<TenantStats>,
}

/// The dashboard's shared state: the latest overview and the sampled timeline.
#[derive(Default)]
pub(crate) struct DashboardState {
    overview: watch::Sender<Arc<Overview>>,
    history: Mutex<HashMap<String, VecDeque<Sample>>>,
}

pub(crate) use greenscale_core::unix_ms;

/// Starts the task that samples the timeline (every `SAMPLE_EVERY`) and pushes the
/// overview to watchers (every `OVERVIEW_EVERY`). It ends with the gateway's shutdown.
pub(crate) fn start(g: Gateway) {
    tokio::spawn(async move {
        let mut shutdown = g.shutdown.clone();
        let mut last_push: Option<std::time::Instant> = None;
        let mut timings: Option<(std::time::Instant, HashMap<String, Timings>)> = None;
        loop {
            let watched = g.dashboard.overview.receiver_count() > 0;
            if watched && timings.as_ref().is_none_or(|t| t.0.elapsed() >= POINT_SPAN) {
                timings = Some((std::time::Instant::now(), recent_timings(&g).await));
            }
            let timings_now = timings.as_ref().map(|t| &t.1);
            if let Ok(overview) = build_overview(&g, timings_now, watched).await {
                record_sample(&g, &overview);
                // Watchers get it once a second; unwatched, it is kept fresh for the next.
                if !watched || last_push.is_none_or(|t| t.elapsed() >= OVERVIEW_EVERY) {
                    last_push = Some(std::time::Instant::now());
                    g.dashboard.overview.send_replace(Arc::new(overview));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
}

fn display_name(g: &Gateway, name: &str) -> String {
    if name.is_empty() {
        g.config
            .models
            .first()
            .cloned()
            .unwrap_or_else(|| "queue".into())
    } else {
        name.to_string()
    }
}

/// Everything the overview shows, per pool; the tenants' counts only `with_tenants` (they
/// are shown, not sampled into the timeline, so nobody watching means nobody needs them).
async fn build_overview(
    g: &Gateway,
    timings: Option<&HashMap<String, Timings>>,
    with_tenants: bool,
) -> Result<Overview, ApiError> {
    let stats = g.routes.stats_by_pool().await?;
    let mut managed = g.pools.as_ref().map(|p| p.pools());
    let mut pools = Vec::new();
    for (name, queue) in stats {
        let name = display_name(g, &name);
        let status = managed.as_mut().and_then(|m| {
            let at = m.iter().position(|p| p.name == name)?;
            Some(m.swap_remove(at))
        });
        let identity = match status {
            Some(p) => PoolIdentity::Managed(Box::new(p)),
            None => PoolIdentity::Workers {
                name,
                kind: "workers",
            },
        };
        let timings = timings
            .and_then(|t| t.get(identity.name()).cloned())
            .unwrap_or_default();
        pools.push(PoolOverview {
            identity,
            queue,
            timings,
        });
    }
    Ok(Overview {
        now_ms: unix_ms(),
        managed: managed.is_some(),
        timings_window_s: TIMINGS_WINDOW.as_secs(),
        pools,
        gpus: g.pools.as_ref().map(|p| p.gpus()).unwrap_or_default(),
        tenants: if with_tenants {
            g.routes.tenants().await?
        } else {
            Vec::new()
        },
    })
}

fn record_sample(g: &Gateway, overview: &Overview) {
    let now = unix_ms();
    let mut history = g.dashboard.history.lock().expect("history lock");
    for pool in &overview.pools {
        let q = &pool.queue;
        let samples = history.entry(pool.identity.name().to_string()).or_default();
        let sample = Sample {
            t_ms: now,
            replicas: pool.identity.replicas(q),
            pending: q.pending + q.delayed,
            in_flight: q.in_flight,
        };
        let span = POINT_SPAN.as_millis() as u64;
        match samples.back_mut() {
            Some(last) if last.t_ms / span == now / span => last.keep_peak(&sample),
            _ => samples.push_back(sample),
        }
        while samples
            .front()
            .is_some_and(|s| now.saturating_sub(s.t_ms) > HISTORY.as_millis() as u64)
        {
            samples.pop_front();
        }
    }
}

/// The `q`-quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn spread(mut values: Vec<f64>) -> Spread {
    values.sort_by(f64::total_cmp);
    Spread {
        p50_s: quantile(&values, 0.5),
        p95_s: quantile(&values, 0.95),
        n: values.len(),
    }
}

/// Wait, run and first-token percentiles of the jobs finished in the window, per model.
async fn recent_timings(g: &Gateway) -> HashMap<String, Timings> {
    let since = unix_ms().saturating_sub(TIMINGS_WINDOW.as_millis() as u64);
    let mut by_pool: HashMap<String, Vec<JobRecord>> = HashMap::new();
    let Ok(page) = g.routes.list_jobs(None, None, 1000, None).await else {
        return HashMap::new();
    };
    // A job whose model names no pool ran in the first (the default) one.
    let names = g.routes.names();
    let default = display_name(g, names.first().map(String::as_str).unwrap_or(""));
    for rec in page.jobs {
        let finished = rec.finished_at_ms.is_some_and(|t| t >= since);
        let ran = matches!(
            rec.status,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Dead
        );
        if finished && ran {
            let model = rec.spec.as_ref().and_then(|s| s.model.as_deref());
            let name = match names.iter().find(|n| Some(n.as_str()) == model) {
                Some(n) => n.clone(),
                None => default.clone(),
            };
            by_pool.entry(name).or_default().push(rec);
        }
    }
    let secs = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1000.0),
        _ => None,
    };
    let mut out = HashMap::new();
    for (name, recs) in by_pool {
        let wait = recs
            .iter()
            .filter_map(|r| secs(r.enqueued_at_ms, r.started_at_ms))
            .collect();
        let run = recs
            .iter()
            .filter_map(|r| secs(r.started_at_ms, r.finished_at_ms))
            .collect();
        let ttft = recs
            .iter()
            .filter_map(|r| r.ttft_ms.map(|t| t as f64 / 1000.0))
            .collect();
        out.insert(
            name,
            Timings {
                jobs: recs.len(),
                wait: spread(wait),
                run: spread(run),
                ttft: spread(ttft),
            },
        );
    }
    out
}

/// The live overview as server-sent events: an `overview` event at once and on every
/// change (about once a second), until the client goes or the gateway stops.
pub async fn events(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = g.dashboard.overview.subscribe();
    let first = build_overview(&g, Some(&recent_timings(&g).await), true)
        .await
        .ok()
        .map(Arc::new);
    let stream = futures::stream::unfold(
        (rx, g.shutdown.clone(), first, caller),
        move |(mut rx, mut shutdown, first, caller)| async move {
            if let Some(v) = first {
                return Some((overview_event(&v, &caller), (rx, shutdown, None, caller)));
            }
            let changed = tokio::select! {
                changed = rx.changed() => changed.is_ok(),
                _ = shutdown.wait_for(|s| *s) => false,
            };
            if !changed {
                return None;
            }
            let v = rx.borrow_and_update().clone();
            Some((overview_event(&v, &caller), (rx, shutdown, None, caller)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The overview as `caller` may see it (a tenant's key: only its own tenant's row).
fn overview_event(v: &Overview, caller: &Caller) -> Result<Event, Infallible> {
    let json = if caller.admin {
        serde_json::to_string(v)
    } else {
        let mut own = v.clone();
        own.tenants.retain(|t| caller.may_see(&t.tenant));
        serde_json::to_string(&own)
    };
    let json = json.expect("the overview serializes");
    Ok(Event::default().event("overview").data(json))
}

/// A change of a pool's replica count, as the timeline marks it.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleEvent {
    t_ms: u64,
    from: u32,
    to: u32,
    reason: String,
}

/// The timeline: samples and scale events per pool over a window.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    window_s: u64,
    from_ms: u64,
    now_ms: u64,
    sample_every_s: f64,
    point_span_s: u64,
    series: HashMap<String, Vec<Sample>>,
    events: HashMap<String, Vec<ScaleEvent>>,
}

/// Timeline query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// `15m` (default), `1h` or `24h`.
    pub window: Option<String>,
}

/// Replicas and queue depth over a window, per pool, at most 360 points each (the maximum of
/// each slice), and the scale events in it.
#[utoipa::path(get, path = "/v1/dashboard/history", params(HistoryQuery),
    responses((status = 200, description = "series per pool and scale events", body = Object),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn history(
    State(g): State<Gateway>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<History>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query: {e}")))?;
    let window = match q.window.as_deref().unwrap_or("15m") {
        "15m" => Duration::from_secs(15 * 60),
        "1h" => Duration::from_secs(3600),
        "24h" => Duration::from_secs(24 * 3600),
        other => {
            return Err(ApiError::invalid(format!(
                "window must be 15m, 1h or 24h, not {other:?}"
            )));
        }
    };
    let now = unix_ms();
    let from = now.saturating_sub(window.as_millis() as u64);
    let slice = (window.as_millis() as u64 / MAX_POINTS as u64).max(1);
    let history = g.dashboard.history.lock().expect("history lock").clone();
    let mut series = HashMap::new();
    for (name, samples) in history {
        let mut points: Vec<Sample> = Vec::new();
        for s in samples.iter().filter(|s| s.t_ms >= from) {
            let bucket = (s.t_ms - from) / slice;
            match points.last_mut() {
                Some(p) if (p.t_ms - from) / slice == bucket => p.keep_peak(s),
                _ => points.push(*s),
            }
        }
        series.insert(name, points);
    }
    let mut events = HashMap::new();
    for p in g.pools.as_ref().map(|p| p.pools()).unwrap_or_default() {
        let list = p
            .decisions
            .into_iter()
            .filter(|d| d.desired != d.current && d.at_ms >= from)
            .map(|d| ScaleEvent {
                t_ms: d.at_ms,
                from: d.current,
                to: d.desired,
                reason: d.reason,
            })
            .collect();
        events.insert(p.name, list);
    }
    Ok(axum::Json(History {
        window_s: window.as_secs(),
        from_ms: from,
        now_ms: now,
        sample_every_s: SAMPLE_EVERY.as_secs_f64(),
        point_span_s: POINT_SPAN.as_secs(),
        series,
        events,
    }))
}

/// The pools' live state under `greenscale up`: replicas, cold starts, recorded scaling
/// decisions, replica-seconds (`[]` for a standalone gateway).
#[utoipa::path(get, path = "/v1/pools",
    responses((status = 200, description = "one object per pool", body = Vec<Object>),
        (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn pools(State(g): State<Gateway>) -> axum::Json<Vec<PoolStatus>> {
    axum::Json(g.pools.as_ref().map(|p| p.pools()).unwrap_or_default())
}

/// The GPUs under `greenscale up` and what each holds: memory per replica, in which state
/// (`[]` without GPU limits, and for a standalone gateway).
#[utoipa::path(get, path = "/v1/gpus",
    responses((status = 200, description = "one object per GPU", body = Vec<Object>),
        (status = 401, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn gpus(State(g): State<Gateway>) -> axum::Json<Vec<GpuStatus>> {
    axum::Json(g.pools.as_ref().map(|p| p.gpus()).unwrap_or_default())
}

const INDEX: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/style.css");

/// Only the page's own script and style run; nothing is loaded from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The dashboard's script.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The dashboard's style sheet.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
