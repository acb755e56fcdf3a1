//! Following one job from the gateway: events as they are published, the record as the
//! source of truth, a deadline for a worker to start it, and cancellation when the client
//! goes away before it started.

use std::time::{Duration, Instant};

use greenscale_core::{JobEvent, JobRecord, JobStatus};
use tokio::sync::mpsc;

use crate::Gateway;
use crate::events::Subscription;

/// What happened to a watched job.
#[derive(Debug, Clone)]
pub enum Update {
    /// A worker started a run.
    Started,
    /// More generated text.
    Token(String),
    /// The job reached a final status.
    Done(Box<JobRecord>),
    /// No worker started it before the deadline; it was cancelled.
    NotStarted,
    /// The gateway is shutting down before the job finished; why, for the client.
    ShuttingDown(&'static str),
}

/// How to watch.
pub struct WatchOptions {
    /// Give up (and cancel the job) if no worker starts it within this time.
    pub start_deadline: Option<Duration>,
    /// Cancel the job if the receiver goes away before a worker started it.
    pub cancel_on_disconnect: bool,
}

/// Starts watching `id` (subscribed with `sub` before the job was enqueued, so no event is
/// missed); updates arrive on the returned channel until `Done`, `NotStarted` or
/// `ShuttingDown`.
pub fn watch(
    g: Gateway,
    id: String,
    mut sub: Subscription,
    options: WatchOptions,
) -> mpsc::Receiver<Update> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let _counted = Waiting::count(&g.waiting);
        let started_at = Instant::now();
        let mut started = false;
        let mut streamed = String::new();
        let mut shutdown = g.shutdown.clone();
        let mut draining = g.draining.clone();
        let mut drain_seen = *draining.borrow();
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut check_record = false;
            tokio::select! {
                event = sub.next() => match event {
                    Some(JobEvent::Started { .. }) => {
                        if !started {
                            started = true;
                            if tx.send(Update::Started).await.is_err() { break; }
                        }
                    }
                    Some(JobEvent::Token { text }) => {
                        started = true;
                        streamed.push_str(&text);
                        if tx.send(Update::Token(text)).await.is_err() { break; }
                    }
                    Some(JobEvent::Finished { .. }) | None => check_record = true,
                },
                _ = poll.tick() => check_record = true,
                _ = tx.closed() => {
                    if options.cancel_on_disconnect && !started {
                        cancel_if_queued(&g, &id, "the client went away").await;
                    }
                    return;
                }
                _ = shutdown.changed() => {
                    let _ = tx.send(Update::ShuttingDown(STOPPED)).await;
                    return;
                }
                _ = async { drop(draining.wait_for(|d| *d).await) }, if !drain_seen => {
                    drain_seen = true;
                    check_record = true;
                }
            }
            if !check_record {
                continue;
            }
            let record = match g.routes.job(&id).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(job_id = %id, error = %e, "cannot read the job record yet");
                    continue;
                }
            };
            if record.status == JobStatus::Running && !started {
                started = true;
                if tx.send(Update::Started).await.is_err() {
                    break;
                }
            }
            if record.status.is_terminal() {
                // Text published before this request subscribed is sent now.
                if let Some(rest) = record
                    .result
                    .as_deref()
                    .and_then(|r| r.strip_prefix(streamed.as_str()))
                    .filter(|r| !r.is_empty())
                {
                    let _ = tx.send(Update::Token(rest.to_string())).await;
                }
                g.metrics.completed(&record);
                let _ = tx.send(Update::Done(Box::new(record))).await;
                return;
            }
            // Draining: only jobs already running are waited for.
            if drain_seen && record.status == JobStatus::Queued {
                let why = if options.cancel_on_disconnect {
                    cancel_if_queued(&g, &id, "GreenScale is shutting down").await;
                    NOT_STARTED_CANCELLED
                } else {
                    NOT_STARTED_KEPT
                };
                let _ = tx.send(Update::ShuttingDown(why)).await;
                return;
            }
            if let Some(deadline) = options.start_deadline
                && record.status == JobStatus::Queued
                && started_at.elapsed() >= deadline
            {
                cancel_if_queued(&g, &id, "no worker started it before the deadline").await;
                // It may have started in the meantime; only report what really happened.
                if let Ok(Some(r)) = g.routes.job(&id).await
                    && r.status == JobStatus::Cancelled
                {
                    let _ = tx.send(Update::NotStarted).await;
                    return;
                }
            }
        }
        if options.cancel_on_disconnect && !started {
            cancel_if_queued(&g, &id, "the client went away").await;
        }
    });
    rx
}

/// Why a watch ended at the final stop.
const STOPPED: &str = "GreenScale stopped before the job finished; the job keeps its place in the queue (see /v1/jobs)";
/// Why a watch ended in a drain, for a request whose unstarted job was cancelled.
const NOT_STARTED_CANCELLED: &str = "GreenScale is shutting down and this request's job had not started; it was cancelled. Try again shortly.";
/// Why a watch ended in a drain, for a job that stays queued.
const NOT_STARTED_KEPT: &str = "GreenScale is shutting down and the job had not started; it stays queued and runs when workers are back";

/// Counts a waiting request for as long as it lives.
struct Waiting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Waiting {
    fn count(n: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(n.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn cancel_if_queued(g: &Gateway, id: &str, why: &str) {
    match g.routes.cancel(id, false).await {
        Ok(greenscale_core::Cancelled::Cancelled) => {
            tracing::info!(job_id = %id, reason = %why, "job cancelled before it started")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(job_id = %id, error = %e, "could not cancel the job"),
    }
}
