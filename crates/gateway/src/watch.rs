//! Following one job from the gateway: events as they are published, the record as the
//! source of truth, a deadline for a worker to start it, and cancellation when the client
//! goes away before it started. A [`Watch`] is polled by the request that waits on it, with
//! no task or channel of its own, so a request held while a pool wakes costs little.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenscale_core::{JobEvent, JobRecord, JobStatus};
use tokio::time::Instant as TokioInstant;

use crate::Gateway;
use crate::events::{Letter, Subscription};

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
    /// No worker has started it yet; it has waited this long (see
    /// [`WatchOptions::waiting_every`]).
    Waiting(Duration),
}

/// How to watch.
pub struct WatchOptions {
    /// Give up (and cancel the job) if no worker starts it within this time.
    pub start_deadline: Option<Duration>,
    /// Cancel the job if the watch is dropped (its client went away) before it started.
    pub cancel_on_disconnect: bool,
    /// Say every so often that the job still waits for a worker.
    pub waiting_every: Option<Duration>,
    /// End with the stored record even when the end event carries the worker's.
    pub stored_record: bool,
}

/// Record reads per second that the safety checks of all waiting requests together may
/// cost: with many requests waiting each is checked less often (events tell the rest).
const CHECKS_PER_SECOND: f64 = 2000.0;
/// The shortest time between two safety checks of one job's record.
const MIN_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Follows one job (subscribed before the job was enqueued, so no event is missed) until
/// `Done`, `NotStarted` or `ShuttingDown`.
pub struct Watch {
    g: Gateway,
    id: String,
    sub: Subscription,
    options: WatchOptions,
    /// When the watch began (about when the job was enqueued), Unix ms.
    began_ms: u64,
    since: Instant,
    started: bool,
    /// The text handed out so far.
    streamed: String,
    drain_seen: bool,
    /// The next safety check of the record.
    next_check: TokioInstant,
    /// When the record was last read.
    checked_at: TokioInstant,
    /// The next `Waiting`, while the job waits and they are asked for.
    next_waiting: Option<TokioInstant>,
    /// What to hand out next, before anything else.
    queued: Option<Update>,
    ended: bool,
    _counted: Counted,
}

impl Watch {
    /// Starts watching `id`.
    pub fn new(g: Gateway, id: String, sub: Subscription, options: WatchOptions) -> Self {
        let counted = Counted::new(&g.waiting);
        let now = TokioInstant::now();
        let drain_seen = *g.draining.borrow();
        Watch {
            next_check: now + check_every(&g.waiting, &id),
            checked_at: now,
            next_waiting: options.waiting_every.map(|every| now + every),
            began_ms: greenscale_core::unix_ms(),
            since: Instant::now(),
            started: false,
            streamed: String::new(),
            drain_seen,
            queued: None,
            ended: false,
            _counted: counted,
            g,
            id,
            sub,
            options,
        }
    }

    /// How long a worker may take to start the job (zero: no limit).
    pub fn deadline(&self) -> Duration {
        self.options.start_deadline.unwrap_or_default()
    }

    /// The next update; `None` after the last (`Done`, `NotStarted` or `ShuttingDown`).
    pub async fn next(&mut self) -> Option<Update> {
        if let Some(u) = self.queued.take() {
            return Some(u);
        }
        while !self.ended {
            if let Some(update) = self.step().await {
                return Some(update);
            }
        }
        None
    }

    /// Looks at what is new (the gateway's stop and drain, the job's events, the timers) or
    /// else waits until something may be; returns what to hand out, if anything. While it
    /// waits it holds only the mailbox's wake-up and one timer.
    async fn step(&mut self) -> Option<Update> {
        if *self.g.shutdown.borrow() {
            self.ended = true;
            return Some(Update::ShuttingDown(STOPPED));
        }
        if !self.drain_seen && *self.g.draining.borrow() {
            self.drain_seen = true;
            return self.check_record().await;
        }
        match self.sub.try_next() {
            Some(Letter::Event(JobEvent::Started { .. })) => return self.mark_started(),
            Some(Letter::Event(JobEvent::Token { text })) => {
                self.started = true;
                self.streamed.push_str(&text);
                return Some(Update::Token(text));
            }
            Some(Letter::Event(JobEvent::Finished {
                status,
                record: Some(record),
                ..
            })) if status.is_terminal() && !self.options.stored_record => {
                let mut record = *record;
                record.enqueued_at_ms = Some(self.began_ms);
                return Some(self.end(record));
            }
            Some(Letter::Event(JobEvent::Finished { .. }) | Letter::Lost) => {
                return self.check_record().await;
            }
            None => {}
        }
        // The start deadline wakes the watch once; after that the regular checks see it.
        let deadline = self
            .options
            .start_deadline
            .filter(|_| !self.started)
            .map(|d| TokioInstant::from_std(self.since + d))
            .filter(|d| *d > self.checked_at);
        let next_check = deadline.map_or(self.next_check, |d| d.min(self.next_check));
        let next_waiting = self.next_waiting.filter(|_| !self.started);
        let now = TokioInstant::now();
        if next_waiting.is_some_and(|at| at <= now) {
            let every = self.options.waiting_every.expect("asked for");
            self.next_waiting = Some(now + every);
            return Some(Update::Waiting(self.since.elapsed()));
        }
        if next_check <= now {
            return self.check_record().await;
        }
        let wake_at = next_waiting.map_or(next_check, |w| w.min(next_check));
        tokio::select! {
            _ = self.sub.wait() => {}
            _ = tokio::time::sleep_until(wake_at) => {}
        }
        None
    }

    fn mark_started(&mut self) -> Option<Update> {
        if self.started {
            return None;
        }
        self.started = true;
        Some(Update::Started)
    }

    /// The job ended with `record`: the text not handed out yet, then `Done`.
    fn end(&mut self, record: JobRecord) -> Update {
        self.ended = true;
        self.g.metrics.completed(&record);
        let rest = record
            .result
            .as_deref()
            .and_then(|r| r.strip_prefix(self.streamed.as_str()))
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        let done = Update::Done(Box::new(record));
        match rest {
            // Text published before this request subscribed is sent now.
            Some(rest) => {
                self.queued = Some(done);
                Update::Token(rest)
            }
            None => done,
        }
    }

    /// Reads the record: the source of truth when an event was missed, for the deadline
    /// and in a drain. Boxed, so that a waiting watch does not carry the queue call's state.
    fn check_record(&mut self) -> Pin<Box<dyn Future<Output = Option<Update>> + Send + '_>> {
        Box::pin(self.read_record())
    }

    async fn read_record(&mut self) -> Option<Update> {
        self.checked_at = TokioInstant::now();
        self.next_check = self.checked_at + check_every(&self.g.waiting, &self.id);
        let record = match self.g.routes.job(&self.id).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(job_id = %self.id, error = %e, "cannot read the job record yet");
                return None;
            }
        };
        if record.status == JobStatus::Running && !self.started {
            return self.mark_started();
        }
        if record.status.is_terminal() {
            return Some(self.end(record));
        }
        // Draining: only jobs already running are waited for.
        if self.drain_seen && record.status == JobStatus::Queued {
            self.ended = true;
            let why = if self.options.cancel_on_disconnect {
                cancel_if_queued(&self.g, &self.id, "GreenScale is shutting down").await;
                NOT_STARTED_CANCELLED
            } else {
                NOT_STARTED_KEPT
            };
            return Some(Update::ShuttingDown(why));
        }
        if let Some(deadline) = self.options.start_deadline
            && record.status == JobStatus::Queued
            && self.since.elapsed() >= deadline
        {
            cancel_if_queued(
                &self.g,
                &self.id,
                "no worker started it before the deadline",
            )
            .await;
            // It may have started in the meantime; only report what really happened.
            if let Ok(Some(r)) = self.g.routes.job(&self.id).await
                && r.status == JobStatus::Cancelled
            {
                self.ended = true;
                return Some(Update::NotStarted);
            }
        }
        None
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.ended || self.started || !self.options.cancel_on_disconnect {
            return;
        }
        // The client went away before a worker started its job.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (g, id) = (self.g.clone(), std::mem::take(&mut self.id));
            runtime.spawn(async move { cancel_if_queued(&g, &id, "the client went away").await });
        }
    }
}

/// How long until a job's next safety check: longer the more requests wait, so that all
/// of them together stay near [`CHECKS_PER_SECOND`]; spread by the job id so they do not
/// all fall on the same instant.
fn check_every(waiting: &AtomicUsize, id: &str) -> Duration {
    let waiting = waiting.load(Ordering::Relaxed) as f64;
    let every = MIN_CHECK_EVERY.max(Duration::from_secs_f64(waiting / CHECKS_PER_SECOND));
    let spread = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        % 1000;
    every.mul_f64(0.75 + f64::from(spread) / 2000.0)
}

/// Why a watch ended at the final stop.
const STOPPED: &str = "GreenScale stopped before the job finished; the job keeps its place in the queue (see /v1/jobs)";
/// Why a watch ended in a drain, for a request whose unstarted job was cancelled.
const NOT_STARTED_CANCELLED: &str = "GreenScale is shutting down and this request's job had not started; it was cancelled. Try again shortly.";
/// Why a watch ended in a drain, for a job that stays queued.
const NOT_STARTED_KEPT: &str = "GreenScale is shutting down and the job had not started; it stays queued and runs when workers are back";

/// Counts a waiting request for as long as it lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Counted(n.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
