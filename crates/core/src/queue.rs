//! The queue contract every backend (Redis, SQLite) keeps, and the rules they share.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::job::{ErrorKind, JobEvent, JobRecord, JobSpec, JobStatus, Limits, Usage};
use crate::tenant::{Quota, TenantStats, Tenants};

/// Settings shared by every queue backend.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    /// How long a worker's lease lasts without a heartbeat before its jobs go back.
    pub lease: Duration,
    /// Runs a job may start before it is dead-lettered.
    pub max_attempts: u32,
    /// How long finished job records and `result:{id}` answers are kept.
    pub retention: Duration,
    /// First retry delay; doubles with every attempt.
    pub retry_base: Duration,
    /// Longest retry delay (before honouring an upstream's `Retry-After`).
    pub retry_cap: Duration,
    /// Size limits on entries.
    pub limits: Limits,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease: Duration::from_secs(30),
            max_attempts: 5,
            retention: Duration::from_secs(24 * 3600),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(60),
            limits: Limits::default(),
        }
    }
}

impl QueueConfig {
    /// The delay before retry number `attempt` (1 = the first retry): exponential backoff
    /// with full jitter in the upper half, capped, and never shorter than `retry_after`.
    pub fn retry_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.retry_cap);
        let jittered = if ceiling.is_zero() {
            ceiling
        } else {
            let half = ceiling / 2;
            half + rand::rng().random_range(Duration::ZERO..=half)
        };
        jittered.max(retry_after.unwrap_or_default())
    }

    /// What run number `attempt` failing with `error` leads to, the same in every backend:
    /// a permanent error fails the job; a transient one is retried after
    /// [`QueueConfig::retry_delay`] until `max_attempts` runs, then dead-lettered.
    pub fn after_failure(&self, attempt: u32, error: &JobError) -> AfterFailure {
        if !error.transient {
            AfterFailure::Failed
        } else if attempt >= self.max_attempts {
            AfterFailure::Dead(format!(
                "gave up after {attempt} attempts; last error ({}): {}",
                error.kind.as_str(),
                error.message
            ))
        } else {
            AfterFailure::Retry(self.retry_delay(attempt, error.retry_after))
        }
    }
}

/// What a failed run leads to (see [`QueueConfig::after_failure`]).
#[derive(Debug, Clone, PartialEq)]
pub enum AfterFailure {
    /// The job fails for good.
    Failed,
    /// The job runs again after this delay.
    Retry(Duration),
    /// The retry budget is spent: the job goes to the dead-letter list, for this reason.
    Dead(String),
}

/// A job a worker holds under lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedJob {
    /// The job.
    pub spec: JobSpec,
    /// Which run this is (1 for the first).
    pub attempt: u32,
    /// Backend-specific handle of the lease; pass it back unchanged.
    pub token: String,
    /// When the lease started the run, Unix milliseconds (the leasing process's clock).
    pub started_at_ms: u64,
}

impl LeasedJob {
    /// The end event of this run ending with `outcome`, leaving the job `status`: the
    /// record as the worker left it (its times by the worker's clock, no spec, no enqueue
    /// time), so a client waiting for the answer needs no read of the stored record.
    /// [`Consumer::finish_all`] publishes it for jobs that notify.
    pub fn end_event(&self, worker: &str, outcome: &Outcome, status: JobStatus) -> JobEvent {
        let finished_at_ms = crate::unix_ms();
        let (result, usage, ttft_ms, error) = match outcome {
            Outcome::Succeeded(done) => (
                Some(done.text.clone()),
                Some(done.usage),
                done.ttft_ms,
                None,
            ),
            Outcome::Failed(e) => (None, None, None, Some(e)),
        };
        let record = JobRecord {
            id: self.spec.job_id.clone(),
            tenant: self.spec.tenant().to_string(),
            status,
            attempts: self.attempt,
            enqueued_at_ms: None,
            started_at_ms: Some(self.started_at_ms.min(finished_at_ms)),
            finished_at_ms: status.is_terminal().then_some(finished_at_ms),
            worker_id: Some(worker.to_string()),
            error_kind: error.map(|e| e.kind),
            error_message: error.map(|e| e.message.clone()),
            usage,
            ttft_ms,
            result,
            spec: None,
        };
        JobEvent::Finished {
            status,
            error: error.map(|e| e.message.clone()),
            record: Some(Box::new(record)),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The model answered.
    Succeeded(Completion),
    /// The run failed.
    Failed(JobError),
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    /// The answer text.
    pub text: String,
    /// Token usage.
    pub usage: Usage,
    /// Milliseconds from the request to the first token, when streamed.
    pub ttft_ms: Option<u64>,
}

/// A failed run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A human-readable message (never contains secrets).
    pub message: String,
    /// True when trying again later may succeed.
    pub transient: bool,
    /// The upstream's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

/// What the queue did with a finished run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The job succeeded and its answer was stored.
    Succeeded,
    /// A transient failure: the job waits for another attempt.
    RetryScheduled,
    /// A permanent failure was recorded.
    Failed,
    /// The retry budget is spent: the job is on the dead-letter list.
    Dead,
    /// The job already had a final status (or was cancelled); nothing was overwritten.
    AlreadyFinal,
}

impl Finished {
    /// The job's status after an outcome recorded as given; `None` when it was not
    /// (already final).
    pub fn status(self) -> Option<JobStatus> {
        match self {
            Finished::Succeeded => Some(JobStatus::Succeeded),
            Finished::RetryScheduled => Some(JobStatus::Queued),
            Finished::Failed => Some(JobStatus::Failed),
            Finished::Dead => Some(JobStatus::Dead),
            Finished::AlreadyFinal => None,
        }
    }
}

/// What [`Queue::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The job was queued or running and is now cancelled.
    Cancelled,
    /// The job is running and only queued jobs were to be cancelled.
    Running,
    /// The job had already finished; nothing changed.
    AlreadyFinal,
    /// No such job.
    NotFound,
}

/// Counts describing a queue right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Entries waiting to be leased.
    pub pending: u64,
    /// Of those, entries of deferrable classes (below `interactive`): their backlog alone
    /// does not wake a pool from zero.
    #[serde(default)]
    pub deferrable: u64,
    /// Milliseconds until the earliest deadline of a queued job (0 when one has passed),
    /// if any has one.
    #[serde(default)]
    pub deadline_in_ms: Option<u64>,
    /// How long the oldest waiting job of a deferrable class has waited, milliseconds.
    #[serde(default)]
    pub oldest_deferrable_ms: Option<u64>,
    /// Entries held by workers.
    pub in_flight: u64,
    /// Jobs waiting for a retry.
    pub delayed: u64,
    /// Entries on the dead-letter list.
    pub dead_letter: u64,
    /// Workers whose heartbeat is current.
    pub live_workers: u64,
}

/// One entry of the dead-letter list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job id, when the entry had one.
    pub job_id: Option<String>,
    /// The kind of failure.
    pub kind: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The raw entry as it was on the queue (what `retry` puts back).
    pub entry: String,
    /// When it was dead-lettered (Unix milliseconds).
    pub at_ms: u64,
}

/// What a maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Entries returned from workers whose lease expired.
    pub reclaimed: u64,
    /// Delayed retries that became due and went back to the queue.
    pub promoted: u64,
}

/// One page of job records, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPage {
    /// The records.
    pub jobs: Vec<JobRecord>,
    /// Pass back as `cursor` for the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// Reads a job-list cursor, `"<enqueue ms>:<job id>"`: the position of the last record
/// returned. Every backend orders records by enqueue time, then id, both descending, so a
/// cursor means the same in all of them.
pub fn parse_cursor(cursor: Option<&str>) -> Result<Option<(u64, String)>, QueueError> {
    let Some(c) = cursor else { return Ok(None) };
    let bad = || QueueError::Invalid(format!("bad cursor {c:?}"));
    let (ms, id) = c.split_once(':').ok_or_else(bad)?;
    Ok(Some((
        ms.parse::<u64>().map_err(|_| bad())?,
        id.to_string(),
    )))
}

/// The cursor pointing after `record` (see [`parse_cursor`]).
pub fn cursor_after(record: &JobRecord) -> String {
    format!("{}:{}", record.enqueued_at_ms.unwrap_or(0), record.id)
}

/// A stream of `(job id, event)` for every job that publishes events.
pub type EventStream = futures::stream::BoxStream<'static, (String, JobEvent)>;

/// Errors of a queue backend.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend could not be reached or answered with an error; retrying may help.
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    /// The job was refused (bad input); retrying will not help.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// A job with this id already exists.
    #[error("a job with id {0:?} already exists")]
    Duplicate(String),
    /// The tenant is over one of its quotas; the job was not stored.
    #[error("tenant {tenant:?} is over its {} quota ({limit}); try again in {} s", quota.as_str(), retry_after.as_secs().max(1))]
    OverQuota {
        /// The tenant.
        tenant: String,
        /// Which quota.
        quota: Quota,
        /// The quota's value.
        limit: u64,
        /// When trying again may succeed.
        retry_after: Duration,
    },
}

impl From<crate::InvalidInput> for QueueError {
    fn from(e: crate::InvalidInput) -> Self {
        QueueError::Invalid(e.0)
    }
}

/// The durable job queue (DESIGN §4): priority classes, fair shares between tenants and FIFO
/// within a tenant's class (see [`crate::FairClock`]), quotas and deadlines, at-least-once, leases with heartbeats,
/// retries with backoff, dead-letter list, idempotent results. Every backend implements each
/// role below; a caller takes only the role it needs ([`Reader`] for a scaler,
/// [`WorkerQueue`] for a worker) or the whole queue.
pub trait Queue: Producer + Admin + WorkerQueue {}

impl<T: Producer + Admin + WorkerQueue + ?Sized> Queue for T {}

/// What a worker needs: its leases, the events that tell it of cancellations, and the
/// records it reads back when a job finished elsewhere.
pub trait WorkerQueue: Consumer + EventBus + Reader {}

impl<T: Consumer + EventBus + Reader + ?Sized> WorkerQueue for T {}

/// Submitting jobs: what the gateway and `submit` do.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Validates and stores a job; with `idempotency_key`, a repeated key (within the
    /// retention period) returns the job first stored with it. Returns the id and whether
    /// the job is new. Once this returns `Ok` the job is never lost.
    async fn store(
        &self,
        spec: JobSpec,
        idempotency_key: Option<&str>,
    ) -> Result<(String, bool), QueueError>;

    /// Stores a new job; an existing job id is refused as a duplicate.
    async fn enqueue(&self, spec: JobSpec) -> Result<String, QueueError> {
        match self.store(spec, None).await? {
            (id, true) => Ok(id),
            (id, false) => Err(QueueError::Duplicate(id)),
        }
    }

    /// Stores a job once per `key`: a repeated key returns the first job (and `false`).
    async fn enqueue_idempotent(
        &self,
        spec: JobSpec,
        key: &str,
    ) -> Result<(String, bool), QueueError> {
        self.store(spec, Some(key)).await
    }
}

/// Reading what happened: job records, listings, counts and the models served.
#[async_trait]
pub trait Reader: Send + Sync {
    /// The record of one job.
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, QueueError>;

    /// Job records, newest first, optionally only those with `status` or of one `tenant`.
    async fn list_jobs(
        &self,
        tenant: Option<&str>,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, QueueError>;

    /// Every tenant that has had jobs within the retention period or is configured, by name.
    async fn tenants(&self) -> Result<Vec<TenantStats>, QueueError>;

    /// How many runs ended how since the queue was created: `succeeded`, `retry`, `failed`,
    /// `dead`, `cancelled`, and `error:<kind>` per error kind. Monotonic, shared by every
    /// process using the queue.
    async fn counters(&self) -> Result<Vec<(String, u64)>, QueueError>;

    /// Counts for dashboards and autoscalers.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// The models workers announced in their heartbeats within the retention period, the
    /// most recently seen first. A model stays listed while its workers are scaled to zero.
    async fn served_models(&self) -> Result<Vec<String>, QueueError>;

    /// A stream that yields whenever something is pushed onto the pending list, by any
    /// producer the backend can see. Fails when the backend cannot watch the list (callers
    /// then poll).
    async fn arrivals(&self) -> Result<futures::stream::BoxStream<'static, ()>, QueueError>;
}

/// The live events of running jobs (tokens, cancellations): workers publish; the gateway
/// and workers listen.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes an event of a running job.
    async fn publish(&self, job_id: &str, event: &JobEvent) -> Result<(), QueueError>;

    /// Every event published from now on, for all jobs.
    async fn events(&self) -> Result<EventStream, QueueError>;
}

/// Running jobs: what a worker does with its leases, and the housekeeping any process may
/// run.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Leases up to `max` jobs for `worker`, waiting up to `wait` for the first: from the
    /// highest non-empty class, tenants by the fair rule, each tenant's oldest first, none of
    /// a tenant at its `max_running`. Malformed entries are dead-lettered, jobs that already
    /// finished are dropped and jobs past their deadline become `expired` here, so
    /// everything returned is to be run.
    async fn lease(
        &self,
        worker: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, QueueError>;

    /// Keeps `worker`'s leases alive and records that it serves `models` now (what
    /// [`Reader::served_models`] lists).
    async fn heartbeat(&self, worker: &str, models: &[String]) -> Result<(), QueueError>;

    /// Records the outcome of a leased job and releases its lease (see
    /// [`Consumer::finish_all`]).
    async fn finish(
        &self,
        worker: &str,
        job: &LeasedJob,
        outcome: Outcome,
    ) -> Result<Finished, QueueError> {
        let done = self.finish_all(worker, &[(job.clone(), outcome)]).await?;
        Ok(done[0])
    }

    /// Records several outcomes of `worker`'s runs at once, as [`Consumer::finish`] would
    /// one after the other, in fewer round trips where the backend can. On an error some
    /// may be recorded already: recording one again is safe (see [`Finished`]).
    /// For a job that notifies ([`JobSpec::notifies`]), an outcome recorded as given (not
    /// [`Finished::AlreadyFinal`]) is published as its [`LeasedJob::end_event`] as part of
    /// recording it, so a waiting client hears of it without another round trip.
    async fn finish_all(
        &self,
        worker: &str,
        done: &[(LeasedJob, Outcome)],
    ) -> Result<Vec<Finished>, QueueError>;

    /// Hands a leased job back, unfinished, to the front of the queue (the run is not
    /// counted as an attempt).
    async fn release(&self, worker: &str, job: &LeasedJob) -> Result<(), QueueError>;

    /// Hands back entries `worker` holds on the queue but does not know about (their lease
    /// reply was lost when the connection broke); `held` are the tokens of the jobs it runs.
    /// Call it from the loop that leases, after a failed lease. Returns how many.
    async fn reclaim_unknown(&self, worker: &str, held: &[String]) -> Result<u64, QueueError>;

    /// Removes `worker`, handing back anything it still holds.
    async fn deregister(&self, worker: &str) -> Result<(), QueueError>;

    /// Returns the jobs of workers whose lease expired and promotes due retries.
    /// Safe to call from many processes at once.
    async fn maintain(&self) -> Result<Maintenance, QueueError>;
}

/// An operator's actions: tenants' settings, cancelling jobs and handling dead letters.
#[async_trait]
pub trait Admin: Send + Sync {
    /// Stores every tenant's weight and quotas (replacing what was stored), for every
    /// process sharing the queue; tenants not named get the defaults.
    async fn set_tenants(&self, tenants: &Tenants) -> Result<(), QueueError>;

    /// Cancels a queued job, or also a running one when `running_too`.
    async fn cancel(&self, id: &str, running_too: bool) -> Result<Cancelled, QueueError>;

    /// The newest `limit` dead letters.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Puts dead letters back on the queue (all, or those with the given job ids) with a
    /// fresh retry budget; returns how many.
    async fn retry_dead(&self, ids: Option<&[String]>) -> Result<u64, QueueError>;

    /// Deletes every dead letter; returns how many.
    async fn purge_dead(&self) -> Result<u64, QueueError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let cfg = QueueConfig::default();
        for _ in 0..50 {
            let d1 = cfg.retry_delay(1, None);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1));
            let d3 = cfg.retry_delay(3, None);
            assert!(d3 >= Duration::from_secs(2) && d3 <= Duration::from_secs(4));
            let d30 = cfg.retry_delay(30, None);
            assert!(d30 <= cfg.retry_cap && d30 >= cfg.retry_cap / 2);
        }
    }

    #[test]
    fn retry_after_is_honoured() {
        let cfg = QueueConfig::default();
        assert!(cfg.retry_delay(1, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
    }
}
