//! The jobs API: submit, inspect, follow, cancel and list jobs; queue counts.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use greenscale_core::{
    ChatMessage, ErrorKind, JobRecord, JobSpec, JobStatus, QueueStats, new_job_id,
};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

use crate::Gateway;
use crate::error::{ApiError, ErrorBody};
use crate::watch::{Update, WatchOptions, watch};

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
    /// queued, running, succeeded, failed, dead or cancelled.
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
}

impl From<QueueStats> for QueueView {
    fn from(s: QueueStats) -> Self {
        QueueView {
            pending: s.pending,
            in_flight: s.in_flight,
            delayed: s.delayed,
            dead_letter: s.dead_letter,
            live_workers: s.live_workers,
        }
    }
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
/// bound (429 with `Retry-After`). The pending count is read at most every 100 ms, not once
/// per request.
pub(crate) async fn admit(g: &Gateway) -> Result<(), ApiError> {
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
    let pending = match cached {
        Some((at, n)) if at.elapsed() < PENDING_READING_TTL => n,
        _ => {
            let n = g.routes.stats().await?.pending;
            *g.pending_reading.lock().expect("pending reading lock") =
                Some((std::time::Instant::now(), n));
            n
        }
    };
    let stats = QueueStats {
        pending,
        ..QueueStats::default()
    };
    if stats.pending >= g.config.max_pending {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "{} jobs are already waiting (limit {}); try again later",
                stats.pending, g.config.max_pending
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
    };
    spec.validate(&g.config.limits)
        .map_err(|e| ApiError::invalid(e.0))?;
    admit(&g).await?;
    let id = match key {
        Some(k) => g.routes.enqueue_idempotent(spec, &k).await?.0,
        None => g.routes.enqueue(spec).await?,
    };
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
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
    let record = g
        .routes
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job with id {id:?}")))?;
    Ok(axum::Json(record.into()))
}

/// Cancel a queued or running job.
#[utoipa::path(delete, path = "/v1/jobs/{id}", params(("id" = String, Path, description = "job id")),
    responses((status = 200, description = "cancelled", body = JobView),
        (status = 404, body = ErrorBody), (status = 409, description = "already finished", body = ErrorBody),
        (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_job(
    State(g): State<Gateway>,
    Path(id): Path<String>,
) -> Result<axum::Json<JobView>, ApiError> {
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
    get_job(State(g), Path(id)).await
}

/// Filters of the job list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs with this status (queued, running, succeeded, failed, dead, cancelled).
    pub status: Option<String>,
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
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<JobList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query: {e}")))?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "unknown status {s:?} (queued, running, succeeded, failed, dead, cancelled)"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let page = g
        .routes
        .list_jobs(status, limit, q.cursor.as_deref())
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
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sub = g.hub.subscribe(&id);
    let record = g
        .routes
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job with id {id:?}")))?;
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
    let updates = watch(
        g,
        id.clone(),
        sub,
        WatchOptions {
            start_deadline: None,
            cancel_on_disconnect: false,
        },
    );
    let rest = ReceiverStream::new(updates).filter_map(move |u| {
        let id = id.clone();
        async move {
            match u {
                Update::Started if was_running => None,
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
