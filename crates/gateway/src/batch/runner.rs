//! The batch runner: every gateway runs one. Each second (and at once when a batch is
//! created or cancelled) it carries every unfinished batch one step on: it queues the
//! input's requests as jobs while the queue has room, learns how they ended, and when all
//! have ended writes the output and error files.
//!
//! Everything it does is idempotent, so any gateway, or a restarted one, can do it: a
//! request's job id is `{batch}-{line}` (queueing it again finds the first one), a
//! request's answer is read from its job's record (one record, however many times the job
//! ran), and the files are written whole from those records.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures::StreamExt;
use greenscale_core::{JobRecord, JobStatus};
use serde_json::json;

use super::batches::{
    BatchErrors, Input, InputRules, StoredBatch, active_path, cancel_path, read_input, record_path,
};
use super::{BatchState, files, unix_s};
use crate::Gateway;
use crate::error::ApiError;

/// Requests queued per batch and step at most (the rest follow a second later).
const QUEUE_STEP: usize = 2_000;
/// Unfinished jobs whose records are read per batch and step at most.
const READ_STEP: usize = 4_000;
/// Queue and record calls in flight at once.
const IN_FLIGHT: usize = 16;
/// Input problems listed in a batch's `errors` (all of them are in its error file).
const LISTED_ERRORS: usize = 1_000;

/// What the runner remembers of a batch between steps (re-read after a restart).
struct Progress {
    input: Arc<Input>,
    /// Per valid request, the status its job ended with once seen.
    ended: Vec<Option<JobStatus>>,
}

/// Runs until the gateway shuts down.
pub(super) async fn run(g: Gateway) {
    let s = g
        .batches
        .clone()
        .expect("the runner runs with the Batch API on");
    let mut progress: HashMap<String, Progress> = HashMap::new();
    let mut shutdown = g.shutdown.clone();
    loop {
        match s.store.names("batch-active").await {
            Ok(ids) => {
                progress.retain(|id, _| ids.contains(id));
                for id in ids {
                    if let Err(e) = step(&g, &s, &mut progress, &id).await {
                        tracing::warn!(batch = %id, error = %e, "batch step failed; trying again in 1 s");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the unfinished batches"),
        }
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
    }
}

/// Carries batch `id` one step on.
async fn step(
    g: &Gateway,
    s: &BatchState,
    progress: &mut HashMap<String, Progress>,
    id: &str,
) -> Result<(), ApiError> {
    let Some(mut b) = s.store.get_json::<StoredBatch>(&record_path(id)).await? else {
        return s.store.delete(&active_path(id)).await;
    };
    if super::batches::is_terminal(&b.batch.status) {
        progress.remove(id);
        return s.store.delete(&active_path(id)).await;
    }
    let before = b.clone();
    let now = unix_s();
    if !progress.contains_key(id) {
        let bytes = match files::content(s, &b.batch.input_file_id).await {
            Ok(bytes) => bytes,
            Err(e) if e.status == StatusCode::NOT_FOUND => {
                return fail(s, b, "the input file was deleted before the batch started").await;
            }
            Err(e) => return Err(e),
        };
        let rules = InputRules {
            batch: &b,
            routes: &g.routes,
            default_model: g.config.models.first(),
            limits: &g.config.limits,
            max_requests: s.config.max_requests,
        };
        let input = read_input(&bytes, &rules);
        progress.insert(
            id.to_string(),
            Progress {
                ended: vec![None; input.requests.len()],
                input: Arc::new(input),
            },
        );
    }
    let p = progress.get_mut(id).expect("inserted above");
    if b.batch.status == "validating" {
        b.batch.request_counts.total = p.input.lines;
        if !p.input.errors.is_empty() {
            b.batch.errors = Some(BatchErrors {
                object: "list".into(),
                data: p
                    .input
                    .errors
                    .iter()
                    .take(LISTED_ERRORS)
                    .map(|(_, e)| e.clone())
                    .collect(),
            });
        }
        if p.input.requests.is_empty() {
            let why = if p.input.lines == 0 {
                "the input file holds no requests"
            } else {
                "no line of the input file is a valid request (see errors)"
            };
            let input = p.input.clone();
            progress.remove(id);
            b.batch.error_file_id = write_errors(s, &b, error_lines(&input, &[])).await?;
            return fail(s, b, why).await;
        }
        b.batch.status = "in_progress".into();
        b.batch.in_progress_at = Some(now);
        tracing::info!(batch = %id, requests = p.input.requests.len(), malformed = p.input.errors.len(), "batch in progress");
    }
    let cancel = s.store.get_json::<u64>(&cancel_path(id)).await?;
    if let Some(at) = cancel
        && b.batch.cancelling_at.is_none()
    {
        b.batch.status = "cancelling".into();
        b.batch.cancelling_at = Some(at);
    }
    let expired = crate::dashboard::unix_ms() >= b.deadline_at_ms;
    let stopping = cancel.is_some() || expired;
    if !stopping {
        queue_more(g, &mut b, p).await?;
    }
    read_ended(g, &b, p, stopping).await?;
    let ran_failed = p
        .ended
        .iter()
        .filter(|e| e.is_some_and(|s| s != JobStatus::Succeeded))
        .count();
    let succeeded = p
        .ended
        .iter()
        .filter(|e| **e == Some(JobStatus::Succeeded))
        .count();
    b.batch.request_counts.completed = succeeded as u64;
    b.batch.request_counts.failed = (p.input.errors.len() + ran_failed) as u64;
    let settled = p.ended[..b.queued].iter().all(Option::is_some);
    if settled && (stopping || b.queued == p.input.requests.len()) {
        let input = p.input.clone();
        progress.remove(id);
        let end = if cancel.is_some() {
            End::Cancelled
        } else if b.queued < input.requests.len() || expired {
            End::Expired
        } else {
            End::Completed
        };
        return finish(g, s, b, &input, end).await;
    }
    if b.batch != before.batch || b.queued != before.queued {
        s.store.put_json(&record_path(id), &b).await?;
    }
    Ok(())
}

/// Queues the next requests while the queue is under its bound of pending jobs and the
/// tenant under its quota.
async fn queue_more(g: &Gateway, b: &mut StoredBatch, p: &Progress) -> Result<(), ApiError> {
    let total = p.input.requests.len();
    if b.queued >= total {
        return Ok(());
    }
    let pending = g.routes.stats().await?.pending;
    let room = g.config.max_pending.saturating_sub(pending) as usize;
    let end = total.min(b.queued + room.min(QUEUE_STEP));
    let specs: Vec<_> = p.input.requests[b.queued..end]
        .iter()
        .map(|r| r.spec.clone())
        .collect();
    let mut stored = futures::stream::iter(specs)
        .map(|spec| g.routes.store(spec))
        .buffered(IN_FLIGHT);
    while let Some(r) = stored.next().await {
        match r {
            Ok(_) => b.queued += 1,
            Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => {
                tracing::debug!(batch = %b.batch.id, error = %e, "batch waits for its tenant's quota");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the records of queued requests not seen ended yet; when the batch is stopping,
/// cancels those not started (running ones finish).
async fn read_ended(
    g: &Gateway,
    b: &StoredBatch,
    p: &mut Progress,
    stopping: bool,
) -> Result<(), ApiError> {
    let open: Vec<usize> = (0..b.queued)
        .filter(|&i| p.ended[i].is_none())
        .take(READ_STEP)
        .collect();
    let input = p.input.clone();
    let records: Vec<(usize, Result<Option<JobRecord>, ApiError>)> = futures::stream::iter(open)
        .map(|i| {
            let input = input.clone();
            async move { (i, g.routes.job(&input.requests[i].spec.job_id).await) }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for (i, rec) in records {
        match rec? {
            Some(rec) if rec.status.is_terminal() => p.ended[i] = Some(rec.status),
            Some(rec) => {
                if stopping && rec.status == JobStatus::Queued {
                    g.routes.cancel(&rec.id, false).await?;
                }
            }
            // Gone: kept less long than the batch ran (see --retention).
            None => p.ended[i] = Some(JobStatus::Dead),
        }
    }
    Ok(())
}

/// How a batch ends.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Completed,
    Expired,
    Cancelled,
}

/// Marks a batch that cannot run as failed.
async fn fail(s: &BatchState, mut b: StoredBatch, why: &str) -> Result<(), ApiError> {
    let now = unix_s();
    b.batch.status = "failed".into();
    b.batch.failed_at = Some(now);
    b.batch.request_counts.failed = b.batch.request_counts.total;
    if b.batch.errors.is_none() {
        b.batch.errors = Some(BatchErrors {
            object: "list".into(),
            data: vec![super::batches::LineError {
                code: "invalid_input".into(),
                message: why.into(),
                param: Some("input_file_id".into()),
                line: None,
            }],
        });
    }
    s.store.put_json(&record_path(&b.batch.id), &b).await?;
    s.store.delete(&active_path(&b.batch.id)).await?;
    tracing::warn!(batch = %b.batch.id, why, "batch failed");
    Ok(())
}

/// The error file's lines of the malformed requests, merged by line with `more`.
fn error_lines(input: &Input, more: &[(u64, String)]) -> Vec<(u64, String)> {
    let mut lines: Vec<(u64, String)> = input
        .errors
        .iter()
        .map(|(custom_id, e)| {
            let line = e.line.unwrap_or(0);
            (
                line,
                json!({
                    "id": format!("batch_req_line_{line}"),
                    "custom_id": custom_id,
                    "response": null,
                    "error": {"code": e.code, "message": e.message, "line": line},
                })
                .to_string(),
            )
        })
        .collect();
    lines.extend(more.iter().cloned());
    lines.sort_by_key(|(line, _)| *line);
    lines
}

/// Writes the error file of batch `b` if it has lines; its id.
async fn write_errors(
    s: &BatchState,
    b: &StoredBatch,
    lines: Vec<(u64, String)>,
) -> Result<Option<String>, ApiError> {
    write_lines(s, b, "errors", lines.into_iter().map(|(_, l)| l).collect()).await
}

/// Writes `lines` as the `kind` file of batch `b` (none when there are no lines).
async fn write_lines(
    s: &BatchState,
    b: &StoredBatch,
    kind: &str,
    lines: Vec<String>,
) -> Result<Option<String>, ApiError> {
    if lines.is_empty() {
        return Ok(None);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    let id = format!("file-{}-{kind}", b.batch.id);
    let name = format!("{}_{kind}.jsonl", b.batch.id);
    files::save(
        s,
        id.clone(),
        &b.tenant,
        name,
        "batch_output",
        Bytes::from(text),
    )
    .await?;
    Ok(Some(id))
}

/// Writes the output and error files from the jobs' records and ends the batch.
async fn finish(
    g: &Gateway,
    s: &BatchState,
    mut b: StoredBatch,
    input: &Input,
    end: End,
) -> Result<(), ApiError> {
    b.batch.status = "finalizing".into();
    b.batch.finalizing_at = Some(unix_s());
    s.store.put_json(&record_path(&b.batch.id), &b).await?;
    let queued = b.queued;
    let ids: Vec<String> = input.requests[..queued]
        .iter()
        .map(|r| r.spec.job_id.clone())
        .collect();
    let records: Vec<Option<JobRecord>> = futures::stream::iter(ids)
        .map(|id| async move { g.routes.job(&id).await })
        .buffered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut records = records.into_iter();
    let (mut output, mut errors) = (Vec::new(), Vec::new());
    let (mut completed, mut failed) = (0u64, input.errors.len() as u64);
    let not_run = match end {
        End::Cancelled => (
            "batch_cancelled",
            "the batch was cancelled before it started",
        ),
        _ => (
            "batch_expired",
            "the batch's window closed before it started",
        ),
    };
    for (i, r) in input.requests.iter().enumerate() {
        let id = format!("batch_req_{}", r.spec.job_id);
        let rec = if i < queued {
            records.next().flatten()
        } else {
            None
        };
        match rec {
            Some(rec) if rec.status == JobStatus::Succeeded => {
                completed += 1;
                let model = r.spec.model.clone().unwrap_or_default();
                let created = rec.finished_at_ms.unwrap_or(0) / 1000;
                let body = crate::openai::completion(&r.spec.job_id, model, created, rec);
                output.push(
                    json!({
                        "id": id,
                        "custom_id": r.custom_id,
                        "response": {"status_code": 200, "request_id": r.spec.job_id, "body": body},
                        "error": null,
                    })
                    .to_string(),
                );
            }
            other => {
                failed += 1;
                let (code, message) = match &other {
                    Some(rec) => match rec.status {
                        JobStatus::Cancelled | JobStatus::Expired => {
                            (not_run.0.to_string(), not_run.1.to_string())
                        }
                        s => (
                            rec.error_kind
                                .map_or(s.as_str(), |k| k.as_str())
                                .to_string(),
                            rec.error_message
                                .clone()
                                .unwrap_or_else(|| format!("the request ended {s}")),
                        ),
                    },
                    None if i < queued => (
                        "lost".to_string(),
                        "the request's job record is gone (kept less long than the batch ran)"
                            .to_string(),
                    ),
                    None => (not_run.0.to_string(), not_run.1.to_string()),
                };
                errors.push((
                    r.line,
                    json!({
                        "id": id,
                        "custom_id": r.custom_id,
                        "response": null,
                        "error": {"code": code, "message": message, "line": r.line},
                    })
                    .to_string(),
                ));
            }
        }
    }
    b.batch.output_file_id = write_lines(s, &b, "output", output).await?;
    b.batch.error_file_id = write_errors(s, &b, error_lines(input, &errors)).await?;
    b.batch.request_counts.completed = completed;
    b.batch.request_counts.failed = failed;
    let now = Some(unix_s());
    match end {
        End::Completed => (b.batch.status, b.batch.completed_at) = ("completed".into(), now),
        End::Expired => (b.batch.status, b.batch.expired_at) = ("expired".into(), now),
        End::Cancelled => (b.batch.status, b.batch.cancelled_at) = ("cancelled".into(), now),
    }
    s.store.put_json(&record_path(&b.batch.id), &b).await?;
    s.store.delete(&active_path(&b.batch.id)).await?;
    s.store.delete(&cancel_path(&b.batch.id)).await?;
    tracing::info!(batch = %b.batch.id, status = %b.batch.status, completed, failed, "batch finished");
    Ok(())
}
