//! The OpenAI-compatible API: `/v1/chat/completions` (streaming or not) and `/v1/models`.
//! A request that arrives while no worker runs waits, as Knative's activator does, until a
//! worker starts it or the deadline passes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::{Either, FutureExt, ready};
use greenscale_core::{ChatMessage, JobRecord, JobSpec, JobStatus, Priority, new_job_id};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::Gateway;
use crate::auth::Caller;
use crate::dashboard::PoolsStatus;
use crate::error::{ApiError, ErrorBody};
use crate::jobs::{admit, json_body};
use crate::watch::{Update, Watch, WatchOptions};

/// A chat message's content: text, or a list of parts of which the text ones are used.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`).
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    /// The part's type; only `text` parts are used.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// One message of a chat request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequestMessage {
    /// `system`, `user`, `assistant` ...
    pub role: String,
    /// The content.
    pub content: Content,
}

/// Streaming options.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with token usage.
    pub include_usage: Option<bool>,
}

/// An OpenAI chat completions request (fields GreenScale does not use are ignored).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The model (pool) to use.
    pub model: Option<String>,
    /// The conversation.
    #[schema(min_items = 1)]
    pub messages: Vec<ChatRequestMessage>,
    /// Upper bound on generated tokens.
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    /// Newer name of `max_tokens`.
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f32>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// OpenAI's processing tier: `flex` runs as the `batch` class (it may wait for warm
    /// capacity), `priority` above interactive; `auto` and `default` are interactive.
    pub service_tier: Option<String>,
}

/// The assistant's message.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    /// The answer.
    pub content: String,
}

/// One choice of a completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct Choice {
    /// Always 0.
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// Always `stop`.
    pub finish_reason: String,
}

/// Token usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

/// A chat completion (non-streaming).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatResponse {
    /// `chatcmpl-<job id>`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// One choice.
    pub choices: Vec<Choice>,
    /// Token usage.
    pub usage: ChatUsage,
}

/// One model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelCard {
    /// Its name.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds (0: unknown).
    pub created: u64,
    /// Always `greenscale`.
    pub owned_by: String,
}

/// The models served.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelCard>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The models this gateway serves: those it was configured with, then those its workers
/// announced (served within the queue's retention, so a pool scaled to zero still lists its
/// model).
#[utoipa::path(get, path = "/v1/models",
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_models(State(g): State<Gateway>) -> Result<axum::Json<ModelList>, ApiError> {
    let mut models = g.config.models.clone();
    for m in g.routes.served_models().await? {
        if !models.contains(&m) {
            models.push(m);
        }
    }
    Ok(axum::Json(ModelList {
        object: "list".into(),
        data: models
            .into_iter()
            .map(|id| ModelCard {
                id,
                object: "model".into(),
                created: 0,
                owned_by: "greenscale".into(),
            })
            .collect(),
    }))
}

/// The priority class a request asks for: the `X-GreenScale-Priority` header, else its
/// `service_tier`.
fn priority_of(headers: &HeaderMap, tier: Option<&str>) -> Result<Option<Priority>, ApiError> {
    if let Some(p) = crate::jobs::priority_header(headers)? {
        return Ok(Some(p));
    }
    match tier {
        None | Some("auto" | "default") => Ok(None),
        Some("flex") => Ok(Some(Priority::BATCH)),
        Some("priority") => Ok(Some(Priority(10))),
        Some(t) => Err(ApiError::invalid(format!(
            "service_tier {t:?} is not one of auto, default, flex, priority"
        ))),
    }
}

impl ChatRequest {
    /// The job this request asks for, of `tenant` (not validated; interactive, no deadline).
    pub(crate) fn into_spec(
        self,
        job_id: String,
        tenant: &str,
        default_model: Option<&String>,
    ) -> JobSpec {
        let messages = self
            .messages
            .into_iter()
            .map(|m| ChatMessage {
                role: m.role,
                content: match m.content {
                    Content::Text(t) => t,
                    Content::Parts(parts) => parts
                        .into_iter()
                        .filter(|p| p.kind == "text")
                        .filter_map(|p| p.text)
                        .collect::<Vec<_>>()
                        .join("\n"),
                },
            })
            .collect();
        JobSpec {
            job_id,
            prompt: None,
            messages: Some(messages),
            model: self.model.or_else(|| default_model.cloned()),
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            metadata: None,
            stream: None,
            notify: None,
            tenant: Some(tenant.to_string()),
            priority: None,
            deadline_at_ms: None,
        }
    }
}

fn to_spec(
    g: &Gateway,
    caller: &Caller,
    headers: &HeaderMap,
    req: ChatRequest,
) -> Result<JobSpec, ApiError> {
    let priority = priority_of(headers, req.service_tier.as_deref())?;
    let streamed = req.stream == Some(true);
    let mut spec = req.into_spec(new_job_id(), &caller.tenant, g.config.models.first());
    // A streaming client follows every token; one waiting for the whole answer, the end.
    if streamed {
        spec.stream = Some(true);
    } else {
        spec.notify = Some(true);
    }
    spec.priority = priority;
    spec.deadline_at_ms = crate::jobs::deadline_at(headers, None)?;
    spec.validate(&g.config.limits)
        .map_err(|e| ApiError::invalid(e.0))?;
    Ok(spec)
}

/// The chat completion a succeeded job's record answers with.
pub(crate) fn completion(id: &str, model: String, created: u64, rec: JobRecord) -> ChatResponse {
    let usage = rec.usage.unwrap_or_default();
    ChatResponse {
        id: format!("chatcmpl-{id}"),
        object: "chat.completion".into(),
        created,
        model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".into(),
                content: rec.result.unwrap_or_default(),
            },
            finish_reason: "stop".into(),
        }],
        usage: ChatUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
        },
    }
}

fn failure(rec: &JobRecord) -> ApiError {
    match rec.status {
        JobStatus::Cancelled => ApiError::new(
            StatusCode::CONFLICT,
            "cancelled",
            "the request's job was cancelled",
        ),
        _ => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            format!(
                "the model failed: {}",
                rec.error_message.as_deref().unwrap_or("unknown error")
            ),
        ),
    }
}

fn not_started(deadline: Duration) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!(
            "no worker started the request within {} s; the pool may be unable to scale up",
            deadline.as_secs()
        ),
    )
}

/// Create a chat completion. At zero workers the request waits while the pool wakes.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest,
    responses(
        (status = 200, description = "the completion, or with stream: true an event stream of chunks",
            content((ChatResponse = "application/json"), (crate::jobs::SseEvent = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody),
        (status = 503, body = ErrorBody), (status = 504, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) fn chat_completions(
    g: Gateway,
    request: Request,
) -> impl Future<Output = Result<Response, Infallible>> + Send {
    // Submitting and waiting are boxed apart and chained, not one handler: a request held
    // while the pool wakes keeps only its wait, neither its headers and body (which share
    // the connection's read buffer) nor the queue call's state.
    Box::pin(submit(g, request)).then(|submitted| match submitted {
        Ok(Submitted::Waiting(waiting)) => Either::Right(Box::pin((*waiting).answer())),
        Ok(Submitted::Streamed(response)) => Either::Left(ready(Ok(response))),
        Err(e) => Either::Left(ready(Ok(e.into_response()))),
    })
}

/// A chat request whose job is queued: streamed (the response is its event stream), or
/// waiting for the whole answer.
enum Submitted {
    /// The event-stream response, which follows the job itself.
    Streamed(Response),
    /// A request waiting for its job's end.
    Waiting(Box<WaitingAnswer>),
}

/// Validates a chat request, admits it and queues its job.
async fn submit(g: Gateway, request: Request) -> Result<Submitted, ApiError> {
    // The auth layer in front of every /v1 route puts the caller there.
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request reached the chat endpoint without passing the key check",
            )
        })?;
    let (mut parts, body) = request.into_parts();
    let headers = std::mem::take(&mut parts.headers);
    let body = Bytes::from_request(Request::from_parts(parts, body), &()).await;
    let progress = headers
        .get(PROGRESS_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let req: ChatRequest = json_body(&g, body)?;
    let stream = req.stream.unwrap_or(false);
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let mut spec = to_spec(&g, &caller, &headers, req)?;
    drop(headers);
    admit(&g, spec.priority().is_deferrable()).await?;
    crate::admission::check_deadline(&g, &spec)?;
    if spec.model.is_none() {
        // No model named and none configured: the one workers announced last, so the
        // response names the model that answers.
        spec.model = g.routes.served_models().await?.into_iter().next();
    }
    let id = spec.job_id.clone();
    let model = spec.model.clone().unwrap_or_default();
    let sub = g.hub.subscribe(&id);
    g.routes.enqueue(spec).await?;
    g.metrics.submitted();
    let watch = Watch::new(
        g.clone(),
        id.clone(),
        sub,
        WatchOptions {
            start_deadline: Some(g.config.wait_deadline),
            cancel_on_disconnect: true,
            waiting_every: stream.then_some(WAITING_EVERY),
            stored_record: false,
        },
    );
    if stream {
        let wake = Wake {
            pools: g.pools.clone(),
            progress,
        };
        return Ok(Submitted::Streamed(stream_response(
            id,
            model,
            include_usage,
            wake,
            watch,
        )));
    }
    Ok(Submitted::Waiting(Box::new(WaitingAnswer {
        id,
        model,
        watch,
    })))
}

/// A non-streamed chat request waiting for its job's end.
struct WaitingAnswer {
    id: String,
    model: String,
    watch: Watch,
}

impl WaitingAnswer {
    /// The completion, or the error the job ended with.
    async fn answer(self) -> Result<Response, Infallible> {
        Ok(self
            .outcome()
            .await
            .unwrap_or_else(IntoResponse::into_response))
    }

    async fn outcome(mut self) -> Result<Response, ApiError> {
        while let Some(update) = self.watch.next().await {
            match update {
                Update::Done(rec) if rec.status == JobStatus::Succeeded => {
                    let done = completion(&self.id, self.model, unix_now(), *rec);
                    return Ok(axum::Json(done).into_response());
                }
                Update::Done(rec) => return Err(failure(&rec)),
                Update::NotStarted => return Err(not_started(self.watch.deadline())),
                Update::ShuttingDown(why) => {
                    let mut e =
                        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", why);
                    e.retry_after = Some(5);
                    return Err(e);
                }
                Update::Started | Update::Token(_) | Update::Waiting(_) => {}
            }
        }
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "lost track of the job",
        ))
    }
}

/// One streamed chunk in OpenAI's shape; `usage` only on the last one.
fn chunk(
    id: &str,
    model: &str,
    created: u64,
    choices: serde_json::Value,
    usage: Option<serde_json::Value>,
) -> Event {
    let mut v = json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    Event::default().data(v.to_string())
}

/// The `choices` of a chunk carrying `delta`.
fn delta(delta: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
    json!([{"index": 0, "delta": delta, "finish_reason": finish}])
}

fn error_event(e: ApiError) -> Event {
    Event::default().data(json!({"error": {"type": e.kind, "message": e.message}}).to_string())
}

/// Request header opting in to a visible progress message while the pool wakes.
pub const PROGRESS_HEADER: &str = "x-greenscale-progress";

/// How often a streamed request waiting for a worker hears that it still waits.
const WAITING_EVERY: Duration = Duration::from_secs(5);

/// What a streamed request is told while no worker has started its job.
struct Wake {
    /// The pools under `up`, read only once a request has waited (for the measured cold
    /// start), not for every request.
    pools: Option<Arc<dyn PoolsStatus>>,
    /// Whether the client asked for a visible message (`X-GreenScale-Progress: 1`).
    progress: bool,
}

impl Wake {
    /// The words for a request that has waited `waited` so far.
    fn message(&self, model: &str, waited: Duration) -> String {
        let pool = if model.is_empty() {
            "a worker".to_string()
        } else {
            format!("pool {model}")
        };
        let cold_start_s = self.pools.as_ref().and_then(|p| {
            p.pools()
                .into_iter()
                .find(|s| s.name == model)
                .and_then(|s| s.cold_starts.p50_s)
        });
        let usual = match cold_start_s {
            Some(s) => format!(" (it usually takes {s:.1} s to start)"),
            None => String::new(),
        };
        format!("waiting for {pool}: {} s so far{usual}", waited.as_secs())
    }
}

fn stream_response(
    id: String,
    model: String,
    include_usage: bool,
    wake: Wake,
    watch: Watch,
) -> Response {
    let created = unix_now();
    let first = chunk(
        &id,
        &model,
        created,
        delta(json!({"role": "assistant", "content": ""}), None),
        None,
    );
    let updates =
        futures::stream::unfold(watch, |mut w| async move { w.next().await.map(|u| (u, w)) });
    let events = updates.flat_map(move |u| {
        let mut out: Vec<Event> = Vec::new();
        match u {
            Update::Waiting(waited) => {
                // A comment keeps proxies and SDKs from timing out; an opted-in client
                // also gets the words as reasoning text, which chat UIs show apart.
                let message = wake.message(&model, waited);
                out.push(Event::default().comment(message.clone()));
                if wake.progress {
                    out.push(chunk(
                        &id,
                        &model,
                        created,
                        delta(json!({"reasoning_content": format!("{message}\n")}), None),
                        None,
                    ));
                }
            }
            Update::Started => {}
            Update::Token(text) => out.push(chunk(
                &id,
                &model,
                created,
                delta(json!({"content": text}), None),
                None,
            )),
            Update::Done(rec) if rec.status == JobStatus::Succeeded => {
                out.push(chunk(
                    &id,
                    &model,
                    created,
                    delta(json!({}), Some("stop")),
                    None,
                ));
                if include_usage {
                    let u = rec.usage.unwrap_or_default();
                    let usage = json!({
                        "prompt_tokens": u.prompt_tokens,
                        "completion_tokens": u.completion_tokens,
                        "total_tokens": u.prompt_tokens + u.completion_tokens
                    });
                    out.push(chunk(&id, &model, created, json!([]), Some(usage)));
                }
                out.push(Event::default().data("[DONE]"));
            }
            Update::Done(rec) => out.push(error_event(failure(&rec))),
            Update::NotStarted => out.push(error_event(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "no worker started the request before the deadline",
            ))),
            Update::ShuttingDown(why) => out.push(error_event(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                why,
            ))),
        }
        futures::stream::iter(out.into_iter().map(Ok::<_, Infallible>))
    });
    let stream = futures::stream::once(async move { Ok::<_, Infallible>(first) }).chain(events);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
