//! `/v1/batches`: create, read, list and cancel batches, as OpenAI's Batch API does.
//! The handlers only record what was asked; the runner does the work.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use greenscale_core::{JobSpec, Limits, Priority};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{BatchState, new_id, state, unix_s};
use crate::Gateway;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::jobs::json_body;
use crate::openai::ChatRequest;

/// The one endpoint batches may call.
pub(crate) const CHAT_ENDPOINT: &str = "/v1/chat/completions";

/// A batch to create (fields GreenScale does not use, such as newer OpenAI options, are
/// ignored).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateBatch {
    /// The uploaded file (purpose `batch`) of requests, one JSON object per line.
    pub input_file_id: String,
    /// Must be `/v1/chat/completions`.
    pub endpoint: String,
    /// How long the batch may take: `24h` (OpenAI's only value), or a shorter window
    /// such as `2h` or `30m`.
    pub completion_window: String,
    /// Up to 16 string pairs kept with the batch.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Where to POST the finished batch, signed as Standard Webhooks says.
    pub webhook_url: Option<String>,
}

/// How many requests of a batch ended how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestCounts {
    /// Requests in the input file (valid or not).
    pub total: u64,
    /// Requests answered.
    pub completed: u64,
    /// Requests that failed, were malformed, or did not run (expired or cancelled).
    pub failed: u64,
}

/// One problem with a batch's input: a malformed line names its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LineError {
    /// `invalid_request`, `duplicate_custom_id`, `too_many_requests` ...
    pub code: String,
    /// What is wrong, starting with the line number.
    pub message: String,
    /// The field at fault, when one is.
    pub param: Option<String>,
    /// The line's number, from 1.
    pub line: Option<u64>,
}

/// The problems found in a batch's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchErrors {
    /// Always `list`.
    pub object: String,
    /// The first thousand problems, by line.
    pub data: Vec<LineError>,
}

/// A batch, as OpenAI's Batch API describes one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchObject {
    /// `batch_...`.
    pub id: String,
    /// Always `batch`.
    pub object: String,
    /// The endpoint its requests call.
    pub endpoint: String,
    /// Problems with its input, if any.
    pub errors: Option<BatchErrors>,
    /// Its input file.
    pub input_file_id: String,
    /// Its window.
    pub completion_window: String,
    /// validating, failed, in_progress, finalizing, completed, expired, cancelling or
    /// cancelled.
    pub status: String,
    /// The file of answers (one line per answered request, with its `custom_id`).
    pub output_file_id: Option<String>,
    /// The file of failed, malformed and unrun requests.
    pub error_file_id: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// When its requests started to be queued.
    pub in_progress_at: Option<u64>,
    /// When its window closes: requests not started by then never run.
    pub expires_at: Option<u64>,
    /// When its output started to be written.
    pub finalizing_at: Option<u64>,
    /// When it completed.
    pub completed_at: Option<u64>,
    /// When it failed (no valid request in its input).
    pub failed_at: Option<u64>,
    /// When it expired.
    pub expired_at: Option<u64>,
    /// When its cancellation was asked for.
    pub cancelling_at: Option<u64>,
    /// When it was cancelled.
    pub cancelled_at: Option<u64>,
    /// How its requests ended so far.
    pub request_counts: RequestCounts,
    /// What the creator kept with it.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// True for the statuses a batch ends in.
pub(crate) fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "expired" | "cancelled")
}

/// A batch as stored: the object, its tenant and how far its input was queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredBatch {
    #[serde(flatten)]
    pub(crate) batch: BatchObject,
    pub(crate) tenant: String,
    /// The window's end, Unix milliseconds: the deadline of its requests' jobs.
    pub(crate) deadline_at_ms: u64,
    /// Valid requests queued so far (in input order).
    #[serde(default)]
    pub(crate) queued: usize,
}

/// A page of batches.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    /// Always `list`.
    pub object: String,
    /// The batches, newest first.
    pub data: Vec<BatchObject>,
    /// Whether more follow.
    pub has_more: bool,
}

/// Paging of the batch list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct BatchQuery {
    /// At most this many (default 20).
    pub limit: Option<usize>,
    /// Batches after this id (the previous page's last).
    pub after: Option<String>,
}

pub(crate) fn record_path(id: &str) -> String {
    format!("batches/{id}.json")
}

/// The marker of a batch that is not finished: the runner works on these.
pub(crate) fn active_path(id: &str) -> String {
    format!("batch-active/{id}")
}

/// The marker of a cancellation asked for (holds its Unix seconds).
pub(crate) fn cancel_path(id: &str) -> String {
    format!("batch-cancels/{id}")
}

/// The job id of the request on `line` of batch `batch`.
pub(crate) fn job_id(batch: &str, line: u64) -> String {
    format!("{batch}-{line}")
}

/// A valid request of an input file.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) line: u64,
    pub(crate) custom_id: String,
    pub(crate) spec: JobSpec,
}

/// An input file read: its valid requests and its problems, both in line order.
#[derive(Debug, Default)]
pub(crate) struct Input {
    pub(crate) requests: Vec<Request>,
    pub(crate) errors: Vec<(Option<String>, LineError)>,
    pub(crate) lines: u64,
}

/// What the input lines of a batch are checked against.
pub(crate) struct InputRules<'a> {
    pub(crate) batch: &'a StoredBatch,
    pub(crate) routes: &'a crate::Routes,
    pub(crate) default_model: Option<&'a String>,
    pub(crate) limits: &'a Limits,
    pub(crate) max_requests: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    custom_id: String,
    method: String,
    url: String,
    body: Value,
}

/// Reads an input file: each non-empty line is one request
/// (`{"custom_id", "method": "POST", "url", "body"}`); a malformed one becomes an error
/// naming its line.
pub(crate) fn read_input(text: &[u8], rules: &InputRules) -> Input {
    let b = rules.batch;
    let mut input = Input::default();
    let mut seen = HashSet::new();
    for (i, raw) in text.split(|&c| c == b'\n').enumerate() {
        let line = i as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        input.lines += 1;
        let fail = |code: &str, message: String, param: Option<&str>| LineError {
            code: code.into(),
            message: format!("line {line}: {message}"),
            param: param.map(str::to_string),
            line: Some(line),
        };
        let custom_id = serde_json::from_slice::<Value>(raw).ok().and_then(|v| {
            v.get("custom_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let checked = (|| {
            if input.requests.len() >= rules.max_requests {
                return Err(fail(
                    "too_many_requests",
                    format!("a batch holds at most {} requests", rules.max_requests),
                    None,
                ));
            }
            let l: InputLine = serde_json::from_slice(raw).map_err(|e| {
                fail(
                    "invalid_json_line",
                    format!("not a request object ({{\"custom_id\", \"method\", \"url\", \"body\"}}): {e}"),
                    None,
                )
            })?;
            if l.custom_id.is_empty() || l.custom_id.len() > 512 {
                return Err(fail(
                    "invalid_request",
                    "custom_id must be 1 to 512 characters".into(),
                    Some("custom_id"),
                ));
            }
            if !seen.insert(l.custom_id.clone()) {
                return Err(fail(
                    "duplicate_custom_id",
                    format!("custom_id {:?} was used on an earlier line", l.custom_id),
                    Some("custom_id"),
                ));
            }
            if l.method != "POST" {
                return Err(fail(
                    "invalid_request",
                    format!("method {:?} is not POST", l.method),
                    Some("method"),
                ));
            }
            if l.url != b.batch.endpoint {
                return Err(fail(
                    "invalid_url",
                    format!(
                        "url {:?} is not the batch's endpoint {:?}",
                        l.url, b.batch.endpoint
                    ),
                    Some("url"),
                ));
            }
            let req: ChatRequest = serde_json::from_value(l.body)
                .map_err(|e| fail("invalid_request", format!("body: {e}"), Some("body")))?;
            let mut spec = req.into_spec(job_id(&b.batch.id, line), &b.tenant, rules.default_model);
            spec.priority = Some(Priority::BATCH);
            spec.deadline_at_ms = Some(b.deadline_at_ms);
            spec.metadata =
                Some(serde_json::json!({"batch_id": b.batch.id, "custom_id": l.custom_id}));
            spec.validate(rules.limits)
                .map_err(|e| fail("invalid_request", e.0, Some("body")))?;
            rules
                .routes
                .check_model(spec.model.as_deref())
                .map_err(|e| fail("model_not_found", e.message, Some("body.model")))?;
            Ok(Request {
                line,
                custom_id: l.custom_id,
                spec,
            })
        })();
        match checked {
            Ok(r) => input.requests.push(r),
            Err(e) => input.errors.push((custom_id, e)),
        }
    }
    input
}

/// The id of a batch still running whose input is file `file`, if any.
pub(crate) async fn running_with_input(
    s: &BatchState,
    file: &str,
) -> Result<Option<String>, ApiError> {
    for id in s.store.names("batch-active").await? {
        if let Some(b) = s.store.get_json::<StoredBatch>(&record_path(&id)).await?
            && b.batch.input_file_id == file
            && !is_terminal(&b.batch.status)
        {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The batch `id` as its owner sees it now (a cancellation asked for shows as
/// `cancelling` until the runner has stopped it).
pub(crate) async fn view(
    s: &BatchState,
    caller: &Caller,
    id: &str,
) -> Result<StoredBatch, ApiError> {
    let not_found = || ApiError::not_found(format!("no batch with id {id:?}"));
    if id.contains('/') || id.contains("..") {
        return Err(not_found());
    }
    let mut b = s
        .store
        .get_json::<StoredBatch>(&record_path(id))
        .await?
        .filter(|b| caller.may_see(&b.tenant))
        .ok_or_else(not_found)?;
    if !is_terminal(&b.batch.status)
        && b.batch.cancelling_at.is_none()
        && let Some(at) = s.store.get_json::<u64>(&cancel_path(id)).await?
    {
        b.batch.status = "cancelling".into();
        b.batch.cancelling_at = Some(at);
    }
    Ok(b)
}

/// Parses a completion window: `24h`, or any duration up to the limit.
fn window(text: &str, max: std::time::Duration) -> Result<std::time::Duration, ApiError> {
    let d = greenscale_core::duration::parse_duration(text).map_err(|e| {
        ApiError::invalid(format!(
            "completion_window {text:?} is not a duration such as 24h: {e}"
        ))
    })?;
    if d.is_zero() || d > max {
        return Err(ApiError::invalid(format!(
            "completion_window {text:?} must be more than 0 and at most {} h",
            max.as_secs() / 3600
        )));
    }
    Ok(d)
}

/// Create a batch from an uploaded file of requests. Each request runs as a `batch`-class
/// job of the caller's tenant, which waits for warm capacity until its window needs a pool
/// woken.
#[utoipa::path(post, path = "/v1/batches", request_body = CreateBatch,
    responses((status = 200, body = BatchObject), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<BatchObject>, ApiError> {
    let s = state(&g)?;
    let req: CreateBatch = json_body(&g, body)?;
    if req.endpoint != CHAT_ENDPOINT {
        return Err(ApiError::invalid(format!(
            "endpoint {:?} is not supported; batches call {CHAT_ENDPOINT}",
            req.endpoint
        )));
    }
    let window = window(&req.completion_window, s.config.max_window)?;
    if let Some(m) = &req.metadata
        && (m.len() > 16 || m.values().any(|v| !v.is_string()))
    {
        return Err(ApiError::invalid("metadata holds at most 16 string values"));
    }
    let input = super::files::visible(s, &caller, &req.input_file_id).await?;
    if input.file.purpose != "batch" {
        return Err(ApiError::invalid(format!(
            "file {:?} has purpose {:?}; a batch's input must be uploaded with purpose \"batch\"",
            req.input_file_id, input.file.purpose
        )));
    }
    if let Some(url) = &req.webhook_url {
        crate::webhooks::check_url(&s.config.webhooks, url).await?;
    }
    let now_ms = crate::dashboard::unix_ms();
    let created_at = now_ms / 1000;
    let deadline_at_ms = now_ms + window.as_millis() as u64;
    let batch = StoredBatch {
        batch: BatchObject {
            id: new_id("batch_"),
            object: "batch".into(),
            endpoint: req.endpoint,
            errors: None,
            input_file_id: req.input_file_id,
            completion_window: req.completion_window,
            status: "validating".into(),
            output_file_id: None,
            error_file_id: None,
            created_at,
            in_progress_at: None,
            expires_at: Some(deadline_at_ms / 1000),
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts::default(),
            metadata: req.metadata,
        },
        tenant: caller.tenant.clone(),
        deadline_at_ms,
        queued: 0,
    };
    let id = batch.batch.id.clone();
    s.store.put_json(&record_path(&id), &batch).await?;
    if let Some(url) = req.webhook_url {
        crate::webhooks::schedule(
            s,
            crate::webhooks::Subject::Batch(id.clone()),
            &caller.tenant,
            url,
        )
        .await?;
    }
    s.store.put(&active_path(&id), Bytes::new()).await?;
    s.wake.notify_one();
    tracing::info!(batch = %id, tenant = %caller.tenant, window_s = window.as_secs(), "batch created");
    Ok(axum::Json(batch.batch))
}

/// One batch.
#[utoipa::path(get, path = "/v1/batches/{id}", params(("id" = String, Path, description = "batch id")),
    responses((status = 503, description = "the object store is unavailable", body = ErrorBody), (status = 200, body = BatchObject), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<BatchObject>, ApiError> {
    let s = state(&g)?;
    Ok(axum::Json(view(s, &caller, &id).await?.batch))
}

/// The caller's batches, newest first.
#[utoipa::path(get, path = "/v1/batches", params(BatchQuery),
    responses((status = 200, body = BatchList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BatchQuery>,
) -> Result<axum::Json<BatchList>, ApiError> {
    let s = state(&g)?;
    let mut batches = Vec::new();
    for name in s.store.names("batches").await? {
        if let Some(id) = name.strip_suffix(".json")
            && let Ok(b) = view(s, &caller, id).await
        {
            batches.push(b.batch);
        }
    }
    batches.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let has_more = super::files::paginate(
        &mut batches,
        q.after.as_deref(),
        Some(q.limit.unwrap_or(20)),
        |b| &b.id,
    );
    Ok(axum::Json(BatchList {
        object: "list".into(),
        data: batches,
        has_more,
    }))
}

/// Cancel a batch: its requests not started yet never run; those running finish, and
/// every answer so far is kept in its output file.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", params(("id" = String, Path, description = "batch id")),
    responses((status = 503, description = "the object store is unavailable", body = ErrorBody), (status = 200, body = BatchObject), (status = 404, body = ErrorBody),
              (status = 409, description = "already finished", body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(g): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<axum::Json<BatchObject>, ApiError> {
    let s = state(&g)?;
    let b = view(s, &caller, &id).await?;
    if is_terminal(&b.batch.status) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("batch {id:?} is already {}", b.batch.status),
        ));
    }
    s.store.create_json(&cancel_path(&id), &unix_s()).await?;
    s.wake.notify_one();
    tracing::info!(batch = %id, tenant = %caller.tenant, "batch cancellation asked for");
    Ok(axum::Json(view(s, &caller, &id).await?.batch))
}
