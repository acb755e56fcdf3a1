//! The jobs API: submit, inspect, follow, cancel and list jobs; queue counts.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use greenscale_core::{
    ChatMessage, ErrorKind, JobRecord, JobSpec, JobStatus, Priority, QueueStats, new_job_id,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::Gateway;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::watch::{Update, Watch, WatchOptions};
use crate::webhooks::Subject;

/// A job to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// A single user prompt (or use `messages`).
    #[schema(min_length = 1)]
    pub prompt: Option<String>,
    /// A chat conversation (instead of `prompt`).
    #[schema(min_items = 1)]
    pub messages: Option<Vec<Message>>,
    /// Model to use (default: the worker's).
    pub model: Option<String>,
    /// Upper bound on generated tokens.
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f32>,
    /// Free-form data kept with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Publish tokens as they are generated (for `GET /v1/jobs/{id}/events`).
    pub stream: Option<bool>,
    /// Priority class: `interactive` (default), `batch`, or a whole number from -100 to 100
    /// (higher is served first; below 0 may wait for warm capacity).
    #[schema(value_type = Option<String>, example = "batch")]
    pub priority: Option<Priority>,
    /// The job must start within this many milliseconds, or it becomes `expired` and never
    /// runs (also the `Deadline` header).
    #[schema(minimum = 1)]
    pub deadline_ms: Option<u64>,
    /// Where to POST the job's record when it ends, signed as Standard Webhooks says
    /// (see `GET /v1/webhooks/secret`).
    pub webhook_url: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// Token counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
}

/// A job's record.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// Its priority class.
    pub priority: String,
    /// When it must have started, Unix milliseconds.
    pub deadline_at_ms: Option<u64>,
    /// queued, running, succeeded, failed, dead, cancelled or expired.
    #[schema(value_type = String, example = "queued")]
    pub status: JobStatus,
    /// Runs started.
    pub attempts: u32,
    /// Enqueue time, Unix milliseconds.
    pub enqueued_at_ms: Option<u64>,
    /// Start of the latest run, Unix milliseconds.
    pub started_at_ms: Option<u64>,
    /// End time, Unix milliseconds.
    pub finished_at_ms: Option<u64>,
    /// The latest run's worker.
    pub worker_id: Option<String>,
    /// Kind of the latest error.
    #[schema(value_type = Option<String>, example = "upstream_transient")]
    pub error_kind: Option<ErrorKind>,
    /// Message of the latest error.
    pub error_message: Option<String>,
    /// Token usage.
    pub usage: Option<UsageView>,
    /// Milliseconds from run start to first token.
    pub ttft_ms: Option<u64>,
    /// The answer (only on success).
    pub result: Option<String>,
    /// The model asked for.
    pub model: Option<String>,
    /// The conversation sent.
    pub messages: Option<Vec<Message>>,
}

impl From<JobRecord> for JobView {
    fn from(r: JobRecord) -> Self {
        JobView {
            id: r.id,
            tenant: r.tenant,
            priority: r
                .spec
                .as_ref()
                .map_or(Priority::INTERACTIVE, JobSpec::priority)
                .name(),
            deadline_at_ms: r.spec.as_ref().and_then(|s| s.deadline_at_ms),
            status: r.status,
            attempts: r.attempts,
            enqueued_at_ms: r.enqueued_at_ms,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            worker_id: r.worker_id,
            error_kind: r.error_kind,
            error_message: r.error_message,
            usage: r.usage.map(|u| UsageView {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            }),
            ttft_ms: r.ttft_ms,
            result: r.result,
            model: r.spec.as_ref().and_then(|s| s.model.clone()),
            messages: r.spec.map(|s| {
                s.chat_messages()
                    .into_iter()
                    .map(|m| Message {
                        role: m.role,
                        content: m.content,
                    })
                    .collect()
            }),
        }
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent at the end.
    pub next_cursor: Option<String>,
}

/// One server-sent event, as the streaming endpoints send them.
#[derive(Debug, Serialize, ToSchema)]
pub struct SseEvent {
    /// The event's data: JSON text, or `[DONE]` at the end of a chat stream.
    pub data: String,
    /// The event's name (`queued`, `started`, `token`, `finished`, `failed` for job events).
    pub event: Option<String>,
    /// Unused.
    pub id: Option<String>,
    /// Unused.
    pub retry: Option<u64>,
}

/// Queue counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// Jobs waiting to start.
    pub pending: u64,
    /// Jobs running.
    pub in_flight: u64,
    /// Jobs waiting for a retry.
    pub delayed: u64,
    /// Dead-letter entries.
    pub dead_letter: u64,
    /// Workers with a current heartbeat.
    pub live_workers: u64,
    /// Of `pending`, jobs of deferrable classes (below interactive).
    pub deferrable: u64,
}

impl From<QueueStats> for QueueView {
    fn from(s: QueueStats) -> Self {
        QueueView {
            deferrable: s.deferrable,
            pending: s.pending,
            in_flight: s.in_flight,
            delayed: s.delayed,
            dead_letter: s.dead_letter,
            live_workers: s.live_workers,
        }
    }
}

/// One tenant's counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// The tenant.
    pub tenant: String,
    /// Jobs waiting (retries included).
    pub queued: u64,
    /// Jobs running.
    pub running: u64,
    /// Tokens its jobs used this minute.
    pub tokens_this_minute: u64,
    /// Runs by how they ended (succeeded, retry, failed, dead, cancelled, expired).
    #[schema(value_type = Object)]
    pub outcomes: std::collections::BTreeMap<String, u64>,
}

/// The tenants' counts: every tenant for an admin key, the caller's own otherwise.
#[utoipa::path(get, path = "/v1/tenants",
    responses((status = 200, body = [TenantView]), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn tenants(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::Json<Vec<TenantView>>, ApiError> {
    let all = g.routes.tenants().await?;
    Ok(axum::Json(
        all.into_iter()
            .filter(|t| caller.may_see(&t.tenant))
            .map(|t| TenantView {
                tenant: t.tenant,
                queued: t.queued,
                running: t.running,
                tokens_this_minute: t.tokens_this_minute,
                outcomes: t.outcomes,
            })
            .collect(),
    ))
}

/// Reads a JSON body, turning every failure into a JSON error.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    g: &Gateway,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!(
                    "the request body is larger than the limit of {} bytes (set by --max-body-bytes or GREENSCALE_MAX_BODY_BYTES)",
                    g.config.max_body_bytes
                ),
            )
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// How long a pending-count reading is reused for admission decisions.
const PENDING_READING_TTL: std::time::Duration = std::time::Duration::from_millis(100);

/// Refuses new work during a drain (503 with `Retry-After`) and while the queue is over its
/// bound (429 with `Retry-After`). Interactive work is bounded by the jobs of its own
/// classes (a large batch waiting for warm capacity does not turn it away); deferrable
/// work by all. The counts are read at most every 100 ms, not once per request.
pub(crate) async fn admit(g: &Gateway, deferrable: bool) -> Result<(), ApiError> {
    if *g.draining.borrow() {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "GreenScale is shutting down and takes no new work; running jobs are finishing. Try again shortly.",
        );
        e.retry_after = Some(5);
        return Err(e);
    }
    let cached = *g.pending_reading.lock().expect("pending reading lock");
    let load = match cached {
        Some((at, load)) if at.elapsed() < PENDING_READING_TTL => load,
        _ => {
            let stats = g.routes.stats().await?;
            let load = crate::QueueLoad {
                pending: stats.pending,
                deferrable: stats.deferrable.min(stats.pending),
            };
            *g.pending_reading.lock().expect("pending reading lock") =
                Some((std::time::Instant::now(), load));
            load
        }
    };
    let counted = if deferrable {
        load.pending
    } else {
        load.pending - load.deferrable
    };
    if counted >= g.config.max_pending {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "{counted} jobs are already waiting (limit {}); try again later",
                g.config.max_pending
            ),
        );
        e.retry_after = Some(5);
        return Err(e);
    }
    Ok(())
}

/// Submit a job. Repeating a request with the same `Idempotency-Key` returns the first job.
#[utoipa::path(post, path = "/v1/jobs", request_body = JobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "returns the same job for a repeated submit")),
    responses(
        (status = 202, description = "accepted", body = JobView),
        (status = 400, description = "bad request", body = ErrorBody),
        (status = 401, description = "missing or wrong API key", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too much pending work", body = ErrorBody),
        (status = 503, description = "queue unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_job(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: JobRequest = json_body(&g, body)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 200)
                .ok_or_else(|| {
                    ApiError::invalid("Idempotency-Key must be 1 to 200 visible characters")
                })?;
            Some(k.to_string())
        }
    };
    let spec = JobSpec {
        job_id: new_job_id(),
        prompt: req.prompt,
        messages: req.messages.map(|ms| {
            ms.into_iter()
                .map(|m| ChatMessage {
                    role: m.role,
                    content: m.content,
                })
                .collect()
        }),
        model: req.model,
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        metadata: req.metadata,
        stream: req.stream,
        notify: None,
        tenant: Some(caller.tenant.clone()),
        priority: match req.priority {
            Some(p) => Some(p),
            None => priority_header(&headers)?,
        },
        deadline_at_ms: deadline_at(&headers, req.deadline_ms)?,
    };
    spec.validate(&g.config.limits)
        .map_err(|e| ApiError::invalid(e.0))?;
    admit(&g, spec.priority().is_deferrable()).await?;
    crate::admission::check_deadline(&g, &spec)?;
    // The delivery is recorded before the job, so a job that ends is always reported.
    let webhook = match req.webhook_url {
        Some(url) => {
            let s = crate::batch::state(&g).map_err(|e| ApiError::invalid(e.message))?;
            crate::webhooks::check_url(&s.config.webhooks, &url).await?;
            let subject = Subject::Job(spec.job_id.clone());
            crate::webhooks::schedule(s, subject.clone(), &caller.tenant, url.clone()).await?;
            Some((s, subject, url))
        }
        None => None,
    };
    let stored = match key {
        Some(k) => g
            .routes
            .enqueue_idempotent(spec, &k)
            .await
            .map(|(id, _)| id),
        None => g.routes.enqueue(spec).await,
    };
    if let Some((s, subject, url)) = webhook {
        match &stored {
            Ok(id) if Subject::Job(id.clone()) != subject => {
                // A repeated key: the first job is the one reported.
                crate::webhooks::unschedule(s, &subject).await?;
                crate::webhooks::schedule(s, Subject::Job(id.clone()), &caller.tenant, url).await?;
            }
            Ok(_) => {}
            Err(_) => crate::webhooks::unschedule(s, &subject).await?,
        }
    }
    let id = stored?;
    g.metrics.submitted();
    let record = g
        .routes
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("the job expired"))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/jobs/{id}"))],
        axum::Json(JobView::from(record)),
    )
        .into_response())
}

/// One job's record.
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_job(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    Ok(axum::Json(visible_job(&g, &caller, &id).await?.into()))
}

/// The record of a job the caller may see; another tenant's job is "not found", as if it
/// did not exist.
async fn visible_job(g: &Gateway, caller: &Caller, id: &str) -> Result<JobRecord, ApiError> {
    g.routes
        .job(id)
        .await?
        .filter(|r| caller.may_see(&r.tenant))
        .ok_or_else(|| ApiError::not_found(format!("no job with id {id:?}")))
}

/// Reads the `X-GreenScale-Priority` header (as the `priority` field).
pub(crate) fn priority_header(headers: &HeaderMap) -> Result<Option<Priority>, ApiError> {
    match headers.get("x-greenscale-priority") {
        None => Ok(None),
        Some(v) => {
            let text = v.to_str().map_err(|_| {
                ApiError::invalid("X-GreenScale-Priority must be visible characters")
            })?;
            Priority::parse(text)
                .map(Some)
                .map_err(|e| ApiError::invalid(e.0))
        }
    }
}

/// The deadline of a job, Unix milliseconds: `deadline_ms` of the body, else the
/// `Deadline` header (milliseconds from now), counted from now.
pub(crate) fn deadline_at(
    headers: &HeaderMap,
    body_ms: Option<u64>,
) -> Result<Option<u64>, ApiError> {
    let ms = match (body_ms, headers.get("deadline")) {
        (Some(ms), _) => ms,
        (None, None) => return Ok(None),
        (None, Some(v)) => v
            .to_str()
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::invalid("the Deadline header must be a number of milliseconds from now")
            })?,
    };
    if ms == 0 || ms > 366 * 24 * 3600 * 1000 {
        return Err(ApiError::invalid(
            "a deadline must be 1 ms to 366 days from now",
        ));
    }
    Ok(Some(crate::dashboard::unix_ms() + ms))
}

/// Cancel a queued or running job.
#[utoipa::path(delete, path = "/v1/jobs/{id}", params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "cancelled", body = JobView),
        (status = 404, body = ErrorBody), (status = 409, description = "already finished", body = ErrorBody),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_job(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    visible_job(&g, &caller, &id).await?;
    match g.routes.cancel(&id, true).await? {
        greenscale_core::Cancelled::NotFound => {
            return Err(ApiError::not_found(format!("no job with id {id:?}")));
        }
        greenscale_core::Cancelled::AlreadyFinal => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the job has already finished",
            ));
        }
        _ => {}
    }
    get_job(State(g), Extension(caller), Path(id)).await
}

/// Filters of the job list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs with this status (queued, running, succeeded, failed, dead, cancelled,
    /// expired).
    pub status: Option<String>,
    /// Only this tenant's jobs (an admin key's choice; other keys see only their own).
    pub tenant: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Recent jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_jobs(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<JobList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query: {e}")))?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown status {s:?} (queued, running, succeeded, failed, dead, cancelled, expired)"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let tenant = if caller.admin {
        q.tenant.as_deref().filter(|t| !t.is_empty())
    } else {
        Some(caller.tenant.as_str())
    };
    let page = g
        .routes
        .list_jobs(tenant, status, limit, q.cursor.as_deref())
        .await?;
    Ok(axum::Json(JobList {
        jobs: page.jobs.into_iter().map(JobView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Queue counts.
#[utoipa::path(get, path = "/v1/queue",
    responses((status = 200, body = QueueView), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn queue_stats(State(g): State<Gateway>) -> Result<axum::Json<QueueView>, ApiError> {
    Ok(axum::Json(g.routes.stats().await?.into()))
}

fn sse_event(name: &str, data: serde_json::Value) -> Result<Event, Infallible> {
    Ok(Event::default().event(name).data(data.to_string()))
}

/// Follow a job as server-sent events: `queued`, `started`, `token` (text as it is
/// generated, for jobs submitted with `stream`), then `finished` or `failed` with the record.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "text/event-stream of job events", content_type = "text/event-stream", body = SseEvent),
        (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn job_events(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sub = g.hub.subscribe(&id);
    let record = visible_job(&g, &caller, &id).await?;
    let first = match record.status {
        JobStatus::Queued => sse_event("queued", serde_json::json!({"id": id})),
        JobStatus::Running => sse_event("started", serde_json::json!({"id": id})),
        _ => {
            let name = if record.status == JobStatus::Succeeded {
                "finished"
            } else {
                "failed"
            };
            let view = serde_json::to_value(JobView::from(record)).expect("serializable");
            let stream = futures::stream::once(async move { sse_event(name, view) });
            return Ok(Sse::new(stream).into_response());
        }
    };
    let was_running = record.status == JobStatus::Running;
    let watch = Watch::new(
        g,
        id.clone(),
        sub,
        WatchOptions {
            start_deadline: None,
            cancel_on_disconnect: false,
            waiting_every: None,
            stored_record: true,
        },
    );
    let updates =
        futures::stream::unfold(watch, |mut w| async move { w.next().await.map(|u| (u, w)) });
    let rest = updates.filter_map(move |u| {
        let id = id.clone();
        async move {
            match u {
                Update::Started if was_running => None,
                Update::Waiting(_) => None,
                Update::Started => Some(sse_event("started", serde_json::json!({"id": id}))),
                Update::Token(text) => Some(sse_event("token", serde_json::json!({"text": text}))),
                Update::Done(rec) => {
                    let name = if rec.status == JobStatus::Succeeded {
                        "finished"
                    } else {
                        "failed"
                    };
                    Some(sse_event(
                        name,
                        serde_json::to_value(JobView::from(*rec)).expect("serializable"),
                    ))
                }
                Update::NotStarted => Some(sse_event(
                    "end",
                    serde_json::json!({"reason": "no worker started the job before the deadline"}),
                )),
                Update::ShuttingDown(why) => {
                    Some(sse_event("end", serde_json::json!({"reason": why})))
                }
            }
        }
    });
    let stream = futures::stream::once(async move { first }).chain(rest);
    Ok(Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response())
}
