//! The Redis queue backend, compatible with the prototype's `LPUSH jobs` / `GET result:{id}`.
//!
//! Keys, for a pending list named `L` (default `jobs`):
//! - `L`: entries pushed by producers (`LPUSH`, the oldest at the right end, leased next):
//!   the flow of the default tenant's interactive class, handed-back jobs included.
//! - `greenscale:L:flow:{class}:{tenant}`: the other jobs waiting, one list per tenant and
//!   priority class (the front is leased next).
//! - `greenscale:L:class:{class}`: the tenants with work in a class, by their head's tag;
//!   `greenscale:L:classes` the classes with work; `greenscale:L:clock:{class}` the class's
//!   virtual clock and each tenant's finish tag (the fair rule, `FairClock`).
//! - `greenscale:L:tenants`: every tenant's settings (weight, quotas), JSON;
//!   `greenscale:L:tenant:{tenant}`: its queued and running counts and outcomes;
//!   `greenscale:L:tokens:{tenant}:{minute}`: tokens used; `greenscale:L:tenant_names`.
//! - `greenscale:L:deadlines`: queued jobs with a deadline, by deadline.
//! - `greenscale:L:arrivals`: pub/sub channel told when a job waits outside `L`.
//! - `greenscale:L:inflight:{worker}`: entries a worker holds (moved there atomically).
//! - `greenscale:L:workers`: sorted set of workers by lease deadline (heartbeats).
//! - `greenscale:L:models`: the models workers serve, with when one last announced each.
//! - `greenscale:L:delayed`: retries by due time.
//! - `greenscale:L:dead`: the dead-letter list (JSON items, newest first).
//! - `greenscale:L:index`: job ids by enqueue time (for listing), trimmed after retention;
//!   `greenscale:L:index:{tenant}` the same for one tenant.
//! - `greenscale:L:events`: pub/sub channel of job events (jobs with `stream`).
//! - `greenscale:L:ended`: the jobs that ended, by when (Unix ms): every final record is
//!   noted here by the script that made it final (the finish script asks it whether a job
//!   ended already), and deleted by maintenance once the retention has passed since then.
//! - `greenscale:L:counters`: how many runs ended how (`succeeded`, `retry`, `failed`,
//!   `dead`, `cancelled`, `error:<kind>`), for metrics.
//! - `greenscale:idem:{key}`: the job an idempotency key created.
//! - `greenscale:job:{id}`: each job's record (a hash); `result:{id}`: its answer.
//!
//! Every state change is one Lua script (see `lua/`), so a crash between two steps cannot
//! lose or duplicate an entry.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use greenscale_core::{
    Admin, AfterFailure, Cancelled, Consumer, DEFAULT_TENANT, DeadLetter, ErrorKind, EventBus,
    EventStream, Finished, JobEvent, JobPage, JobRecord, JobSpec, JobStatus, LeasedJob,
    Maintenance, Outcome, Producer, QueueConfig, QueueError, QueueStats, Quota, Reader,
    TenantStats, Tenants, Usage, parse_cursor, parse_entry,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::Notify;

/// Prefix of job record keys.
pub const RECORD_PREFIX: &str = "greenscale:job:";

struct Scripts {
    lease: Script,
    heartbeat: Script,
    start: Script,
    finish: Script,
    release: Script,
    reclaim: Script,
    reclaim_unknown: Script,
    promote: Script,
    enqueue: Script,
    cancel: Script,
    retry_dead: Script,
    expire: Script,
    forget: Script,
    counts: Script,
}

/// A script with the fair queue's shared steps (`lua/flows.lua`) in front of it.
macro_rules! with_flows {
    ($name:literal) => {
        Script::new(concat!(
            include_str!("../lua/flows.lua"),
            include_str!(concat!("../lua/", $name, ".lua"))
        ))
    };
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            lease: with_flows!("lease"),
            heartbeat: Script::new(include_str!("../lua/heartbeat.lua")),
            start: with_flows!("start"),
            finish: with_flows!("finish"),
            release: with_flows!("release"),
            reclaim: with_flows!("reclaim"),
            reclaim_unknown: with_flows!("reclaim_unknown"),
            promote: with_flows!("promote"),
            enqueue: with_flows!("enqueue"),
            cancel: with_flows!("cancel"),
            retry_dead: with_flows!("retry_dead"),
            expire: with_flows!("expire"),
            forget: with_flows!("forget"),
            counts: with_flows!("counts"),
        }
    }
}

/// Key names of one queue.
#[derive(Debug, Clone)]
struct Keys {
    pending: String,
    workers: String,
    models: String,
    delayed: String,
    dead: String,
    index: String,
    events: String,
    counters: String,
    inflight_prefix: String,
    /// `greenscale:L:`, from which the scripts name the fair queue's keys.
    prefix: String,
}

impl Keys {
    fn new(list: &str) -> Self {
        Keys {
            pending: list.to_string(),
            workers: format!("greenscale:{list}:workers"),
            models: format!("greenscale:{list}:models"),
            delayed: format!("greenscale:{list}:delayed"),
            dead: format!("greenscale:{list}:dead"),
            index: format!("greenscale:{list}:index"),
            events: format!("greenscale:{list}:events"),
            counters: format!("greenscale:{list}:counters"),
            inflight_prefix: format!("greenscale:{list}:inflight:"),
            prefix: format!("greenscale:{list}:"),
        }
    }

    fn named(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn inflight(&self, worker: &str) -> String {
        format!("{}{worker}", self.inflight_prefix)
    }
}

fn record_key(id: &str) -> String {
    format!("{RECORD_PREFIX}{id}")
}

fn result_key(id: &str) -> String {
    format!("result:{id}")
}

fn unavailable(e: redis::RedisError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

use greenscale_core::unix_ms as now_ms;

/// Whether a raw entry carries its job's id as written (so a rerun from it gets the same
/// id): the id, quoted, is in it. An id assigned at parse is a fresh UUID, never in the
/// entry; an id written differently (a number, escapes) counts as absent, which only costs
/// swapping the raw entry for the normalized one.
fn names_its_id(entry: &str, id: &str) -> bool {
    entry.contains(&format!("\"{id}\""))
}

/// One outcome to record, as `finish.lua` takes it.
struct FinishStep {
    /// The entry as held in the in-flight list.
    entry: String,
    /// The job's id; `None` for an entry without one (it has no record).
    job_id: Option<String>,
    /// `succeeded`, `retry`, `failed` or `dead`.
    outcome: &'static str,
    /// When a retry is due.
    delay: Duration,
    /// The answer (succeeded).
    answer: String,
    /// The dead-letter item, JSON (dead).
    dead_item: String,
    /// Tokens the run used, for the tenant's per-minute budget.
    tokens: u64,
    /// The job's tenant; empty to read it from the entry.
    tenant: String,
    /// Whether an earlier run's error may be on the record (cleared on success).
    clear_error: bool,
    /// What to publish on the events channel when the outcome is applied as given (the
    /// end event of a job that notifies), or empty.
    event: String,
    /// Fields to set on the record.
    fields: Vec<(&'static str, String)>,
}

impl FinishStep {
    /// Moves an entry to the dead-letter list with `reason`.
    fn dead_letter(
        entry: String,
        job_id: Option<String>,
        tenant: String,
        kind: ErrorKind,
        reason: &str,
        attempts: Option<u32>,
    ) -> Self {
        let item = DeadLetter {
            job_id: job_id.clone(),
            kind: kind.as_str().to_string(),
            reason: reason.to_string(),
            entry: entry.clone(),
            at_ms: now_ms(),
        };
        let mut fields = vec![
            ("error_kind", kind.as_str().to_string()),
            ("error_message", reason.to_string()),
        ];
        if let Some(a) = attempts {
            fields.push(("attempts", a.to_string()));
        }
        FinishStep {
            entry,
            job_id,
            outcome: "dead",
            delay: Duration::ZERO,
            answer: String::new(),
            dead_item: serde_json::to_string(&item).expect("dead letters serialize"),
            tokens: 0,
            tenant,
            clear_error: false,
            event: String::new(),
            fields,
        }
    }
}

/// What starting a lease batch came to: the jobs to run, the entries to dead-letter, and
/// how many were dropped because their job was final already.
#[derive(Default)]
struct Started {
    jobs: Vec<LeasedJob>,
    given_up: Vec<FinishStep>,
    final_already: usize,
}

impl Started {
    /// A delivery of a job that is final already: dropped.
    fn skipped(&mut self, config: &QueueConfig, entry: &str, status: &str) {
        let id = parse_entry(entry, &config.limits)
            .map(|s| s.job_id)
            .unwrap_or_default();
        tracing::info!(job_id = %id, %status, "dropped a delivery of a job that is already final");
        self.final_already += 1;
    }

    /// A job started as run number `attempt`: to run, or to dead-letter when its workers
    /// kept dying (its attempts are over the budget).
    fn run(&mut self, config: &QueueConfig, token: String, spec: JobSpec, attempt: &str) {
        let attempt: u32 = attempt.parse().unwrap_or(1);
        if attempt > config.max_attempts {
            let reason = format!(
                "its worker stopped while running it {} times (retry budget {})",
                attempt - 1,
                config.max_attempts
            );
            tracing::warn!(job_id = %spec.job_id, %reason, "job moved to the dead-letter list");
            self.given_up.push(FinishStep::dead_letter(
                token,
                Some(spec.job_id.clone()),
                spec.tenant().to_string(),
                ErrorKind::LeaseExpired,
                &reason,
                Some(attempt - 1),
            ));
            return;
        }
        self.jobs.push(LeasedJob {
            spec,
            attempt,
            token,
            started_at_ms: now_ms(),
        });
    }

    /// An entry that is not a job: dead-lettered with the reason.
    fn malformed(&mut self, entry: String, bad: greenscale_core::Malformed) {
        tracing::warn!(job_id = bad.job_id.as_deref().unwrap_or("-"), reason = %bad.reason, "malformed entry moved to the dead-letter list");
        self.given_up.push(FinishStep::dead_letter(
            entry,
            bad.job_id,
            String::new(),
            ErrorKind::Malformed,
            &bad.reason,
            None,
        ));
    }
}

/// A [`Queue`] stored in Redis.
pub struct RedisQueue {
    client: redis::Client,
    conn: ConnectionManager,
    /// Told when a job arrives (see [`Reader::arrivals`]); wakes waiting leases.
    arrived: std::sync::Arc<Notify>,
    /// Whether the task feeding `arrived` runs.
    listening: std::sync::OnceLock<()>,
    keys: Keys,
    config: QueueConfig,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("list", &self.keys.pending)
            .finish_non_exhaustive()
    }
}

/// Longest wait for an arrival before looking again (a missed notification, or a server
/// that sends none, costs at most this).
const MAX_BLOCK: Duration = Duration::from_millis(500);

impl RedisQueue {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`), using `list` as the pending
    /// list. Connections are re-established by themselves when Redis restarts; this call
    /// only fails on a malformed URL, not on an unreachable server.
    pub fn connect(url: &str, list: &str, config: QueueConfig) -> Result<Self, QueueError> {
        let client = redis::Client::open(url)
            .map_err(|e| QueueError::Invalid(format!("bad Redis URL: {e}")))?;
        let manager = |response_timeout: Duration| {
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            ConnectionManager::new_lazy_with_config(client.clone(), cfg).map_err(unavailable)
        };
        Ok(RedisQueue {
            client: client.clone(),
            conn: manager(Duration::from_secs(10))?,
            arrived: std::sync::Arc::new(Notify::new()),
            listening: std::sync::OnceLock::new(),
            keys: Keys::new(list),
            config,
            scripts: Scripts::load(),
        })
    }

    /// The queue's settings.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Starts, once, the task that wakes waiting leases when a job arrives. Without it
    /// (the server sends no notifications), leases look again every [`MAX_BLOCK`].
    fn listen_for_arrivals(&self) {
        self.listening.get_or_init(|| {
            let (client, keys, arrived) =
                (self.client.clone(), self.keys.clone(), self.arrived.clone());
            tokio::spawn(async move {
                let mut pause = Duration::from_secs(1);
                loop {
                    match arrival_stream(&client, &keys).await {
                        Ok(mut stream) => {
                            pause = Duration::from_secs(1);
                            while stream.next().await.is_some() {
                                arrived.notify_waiters();
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "no arrival notifications; leases look again every 500 ms");
                            pause = (pause * 2).min(Duration::from_secs(60));
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        });
    }

    /// Leases what is there now, without waiting. The lease script frees a tenant's
    /// `max_running` place at once for an entry it can tell will not run (its job is final,
    /// its runs are used up, its deadline passed); one it cannot read held its place during
    /// the script, and the places such entries kept from others are leased again at once,
    /// so a worker asking for work gets what a fair pick would have given.
    async fn lease_now(&self, worker: &str, max: usize) -> Result<Vec<LeasedJob>, QueueError> {
        let mut jobs = Vec::new();
        let mut left = max;
        while left > 0 {
            let mut c = self.conn.clone();
            let mut raw: Vec<String> = self
                .scripts
                .lease
                .key(&self.keys.pending)
                .key(self.keys.inflight(worker))
                .key(&self.keys.workers)
                .key(&self.keys.index)
                .arg(worker)
                .arg(left)
                .arg(self.config.lease.as_millis() as u64)
                .arg(&self.keys.prefix)
                .arg(RECORD_PREFIX)
                .arg(self.config.max_attempts)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            if raw.is_empty() {
                break;
            }
            let taken: usize = raw.remove(0).parse().unwrap_or(left);
            let (started, dropped) = self.start_all(worker, raw).await?;
            jobs.extend(started);
            if dropped == 0 || taken >= left {
                break;
            }
            left -= taken;
        }
        Ok(jobs)
    }

    /// Turns what the lease script returned (per entry: the raw entry and its start verdict,
    /// or `new` for one the script left to this side) into jobs to run: parses them, starts
    /// the well-formed ones left to it in one script call (dropping those already final),
    /// and dead-letters the malformed and those whose workers kept dying, together in one
    /// more. Returns the jobs and how many entries were dropped or dead-lettered.
    async fn start_all(
        &self,
        worker: &str,
        leased: Vec<String>,
    ) -> Result<(Vec<LeasedJob>, usize), QueueError> {
        let mut started = Started::default();
        let mut unstarted = Vec::new();
        for item in leased.chunks_exact(3) {
            let (entry, verdict, value) = (&item[0], item[1].as_str(), item[2].as_str());
            if verdict == "skip" {
                started.skipped(&self.config, entry, value);
                continue;
            }
            match parse_entry(entry, &self.config.limits) {
                Ok(spec) if verdict == "new" => unstarted.push((entry.clone(), spec)),
                Ok(spec) => started.run(&self.config, entry.clone(), spec, value),
                Err(bad) => started.malformed(entry.clone(), bad),
            }
        }
        if !unstarted.is_empty() {
            let mut invocation = self.scripts.start.prepare_invoke();
            invocation
                .key(self.keys.inflight(worker))
                .key(&self.keys.index)
                .arg(worker)
                .arg(&self.keys.prefix)
                .arg(RECORD_PREFIX);
            let mut tokens = Vec::with_capacity(unstarted.len());
            for (entry, spec) in &unstarted {
                let normalized = spec.to_entry();
                // The raw entry stays the token unless it lacks the job id a rerun needs.
                let replace = !names_its_id(entry, &spec.job_id);
                invocation
                    .arg(entry)
                    .arg(&normalized)
                    .arg(if replace { "1" } else { "0" })
                    .arg(&spec.job_id)
                    .arg(spec.deadline_at_ms.map_or(String::new(), |d| d.to_string()))
                    .arg(spec.tenant());
                tokens.push(if replace { normalized } else { entry.clone() });
            }
            let mut c = self.conn.clone();
            let verdicts: Vec<String> =
                invocation.invoke_async(&mut c).await.map_err(unavailable)?;
            for (((_, spec), token), verdict) in
                unstarted.into_iter().zip(tokens).zip(verdicts.chunks(2))
            {
                if verdict[0] == "skip" {
                    started.skipped(&self.config, &token, &verdict[1]);
                } else {
                    started.run(&self.config, token, spec, &verdict[1]);
                }
            }
        }
        let dropped = started.given_up.len() + started.final_already;
        if !started.given_up.is_empty() {
            self.run_finish(worker, &started.given_up).await?;
        }
        Ok((started.jobs, dropped))
    }

    /// Records outcomes in one script call (`finish.lua`); returns what was applied to each.
    async fn run_finish(
        &self,
        worker: &str,
        steps: &[FinishStep],
    ) -> Result<Vec<String>, QueueError> {
        let mut inv = self.scripts.finish.prepare_invoke();
        inv.key(self.keys.inflight(worker))
            .key(&self.keys.delayed)
            .key(&self.keys.dead)
            .key(&self.keys.counters)
            .arg(&self.keys.prefix)
            .arg(self.config.retention.as_secs().max(1))
            .arg(RECORD_PREFIX)
            .arg(&self.keys.events);
        for step in steps {
            let id = step.job_id.as_deref().unwrap_or("");
            inv.key(record_key(id))
                .key(result_key(id))
                .arg(&step.entry)
                .arg(step.outcome)
                .arg(step.delay.as_millis() as u64)
                .arg(&step.answer)
                .arg(&step.dead_item)
                .arg(if step.job_id.is_some() { "1" } else { "0" })
                .arg(step.tokens)
                .arg(&step.tenant)
                .arg(if step.clear_error { "1" } else { "0" })
                .arg(&step.event)
                .arg(step.fields.len());
            for (k, v) in &step.fields {
                inv.arg(*k).arg(v);
            }
        }
        let mut c = self.conn.clone();
        inv.invoke_async(&mut c).await.map_err(unavailable)
    }

    /// What recording `outcome` for `job` takes: a retry while its budget lasts, a dead
    /// letter once it is spent.
    fn finish_step(&self, worker: &str, job: &LeasedJob, outcome: &Outcome) -> FinishStep {
        let mut step = FinishStep {
            entry: job.token.clone(),
            job_id: Some(job.spec.job_id.clone()),
            outcome: "succeeded",
            delay: Duration::ZERO,
            answer: String::new(),
            dead_item: String::new(),
            tokens: 0,
            tenant: job.spec.tenant().to_string(),
            // Only a run after a failed one can find an error on the record.
            clear_error: job.attempt > 1,
            event: String::new(),
            fields: Vec::new(),
        };
        match outcome {
            Outcome::Succeeded(done) => {
                step.answer = done.text.clone();
                step.tokens = done.usage.prompt_tokens + done.usage.completion_tokens;
                step.fields = vec![
                    ("prompt_tokens", done.usage.prompt_tokens.to_string()),
                    (
                        "completion_tokens",
                        done.usage.completion_tokens.to_string(),
                    ),
                    ("worker_id", worker.to_string()),
                ];
                if let Some(t) = done.ttft_ms {
                    step.fields.push(("ttft_ms", t.to_string()));
                }
            }
            Outcome::Failed(error) => {
                step.fields = vec![
                    ("error_kind", error.kind.as_str().to_string()),
                    ("error_message", error.message.clone()),
                ];
                match self.config.after_failure(job.attempt, error) {
                    AfterFailure::Failed => step.outcome = "failed",
                    AfterFailure::Retry(delay) => {
                        step.outcome = "retry";
                        step.delay = delay;
                    }
                    AfterFailure::Dead(reason) => {
                        step = FinishStep::dead_letter(
                            job.token.clone(),
                            Some(job.spec.job_id.clone()),
                            step.tenant,
                            ErrorKind::RetriesExhausted,
                            &reason,
                            None,
                        );
                    }
                }
            }
        }
        if let (true, Some(status)) = (job.spec.notifies(), finished(step.outcome).status()) {
            step.event = event_payload(&job.spec.job_id, &job.end_event(worker, outcome, status));
        }
        step
    }

    /// Validates and stores a job (see [`Queue::store`]).
    async fn store_job(
        &self,
        spec: JobSpec,
        idempotency_key: Option<&str>,
    ) -> Result<(String, bool), QueueError> {
        let entry = spec
            .checked_entry(&self.config.limits)
            .map_err(QueueError::from)?;
        let mut c = self.conn.clone();
        let reply: Vec<String> = self
            .scripts
            .enqueue
            .key(record_key(&spec.job_id))
            .key(&self.keys.pending)
            .key(format!("greenscale:idem:{}", idempotency_key.unwrap_or("")))
            .key(&self.keys.index)
            .arg(&entry)
            .arg(&spec.job_id)
            .arg(self.config.retention.as_secs().max(1))
            .arg(if idempotency_key.is_some() { "1" } else { "0" })
            .arg(&self.keys.prefix)
            .arg(spec.tenant())
            .arg(spec.priority().0)
            .arg(spec.deadline_at_ms.map_or(String::new(), |d| d.to_string()))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let text = |i: usize| reply.get(i).cloned().unwrap_or_default();
        let code: i64 = text(0).parse().unwrap_or(0);
        match code {
            1 => Ok((text(1), true)),
            -2 => Err(QueueError::OverQuota {
                tenant: spec.tenant().to_string(),
                quota: if text(1) == "max_queued" {
                    Quota::Queued
                } else {
                    Quota::Tokens
                },
                limit: text(2).parse().unwrap_or(0),
                retry_after: Duration::from_millis(text(3).parse().unwrap_or(1000)),
            }),
            _ => Ok((text(1), false)),
        }
    }

    async fn reclaim(&self, worker: &str, mode: &str) -> Result<i64, QueueError> {
        let mut c = self.conn.clone();
        self.scripts
            .reclaim
            .key(&self.keys.workers)
            .key(self.keys.inflight(worker))
            .key(&self.keys.pending)
            .arg(worker)
            .arg(mode)
            .arg(RECORD_PREFIX)
            .arg(&self.keys.prefix)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn server_now_ms(&self) -> Result<u64, QueueError> {
        let mut c = self.conn.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(secs * 1000 + micros / 1000)
    }
}

/// Yields whenever a job arrives: Redis keyspace notifications of the pending list (turned
/// on when the server's `notify-keyspace-events` lacks them; fails when the server
/// refuses) and the arrivals channel the scripts publish on.
async fn arrival_stream(
    client: &redis::Client,
    keys: &Keys,
) -> Result<futures::stream::BoxStream<'static, ()>, QueueError> {
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .map_err(unavailable)?;
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut c)
        .await
        .map_err(unavailable)?;
    let has_list_events = (flags.contains('K') && (flags.contains('l') || flags.contains('A')))
        || flags.contains("KA");
    if !has_list_events {
        let mut wanted = flags.clone();
        for f in ['K', 'l'] {
            if !wanted.contains(f) {
                wanted.push(f);
            }
        }
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&wanted)
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| {
                QueueError::Unavailable(format!(
                    "cannot turn on keyspace notifications (notify-keyspace-events {wanted:?}): {e}"
                ))
            })?;
    }
    let escaped: String = keys
        .pending
        .chars()
        .flat_map(|ch| match ch {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', ch],
            _ => vec![ch],
        })
        .collect();
    let mut pubsub = client.get_async_pubsub().await.map_err(unavailable)?;
    pubsub
        .psubscribe(format!("__keyspace@*__:{escaped}"))
        .await
        .map_err(unavailable)?;
    let channel = keys.named("arrivals");
    pubsub.subscribe(&channel).await.map_err(unavailable)?;
    let stream = pubsub.into_on_message().filter_map(move |msg| {
        let wanted = msg.get_channel_name() == channel
            || msg.get_payload::<String>().is_ok_and(|event| {
                matches!(
                    event.as_str(),
                    "lpush" | "rpush" | "linsert" | "lmove" | "rpoplpush"
                )
            });
        async move { wanted.then_some(()) }
    });
    Ok(Box::pin(stream))
}

/// What the finish script's word for an outcome means: the outcome as given, or, for
/// `final` and `lost` (a retry whose lease had expired), not recorded.
fn finished(word: &str) -> Finished {
    match word {
        "succeeded" => Finished::Succeeded,
        "retry" => Finished::RetryScheduled,
        "failed" => Finished::Failed,
        "dead" => Finished::Dead,
        _ => Finished::AlreadyFinal,
    }
}

/// The events channel's message for `event` of job `job_id`.
fn event_payload(job_id: &str, event: &JobEvent) -> String {
    serde_json::json!({"job_id": job_id, "event": event}).to_string()
}

fn parse_record(id: &str, map: std::collections::HashMap<String, String>) -> JobRecord {
    let num = |k: &str| map.get(k).and_then(|v| v.parse::<u64>().ok());
    let text = |k: &str| map.get(k).filter(|v| !v.is_empty()).cloned();
    let usage = match (num("prompt_tokens"), num("completion_tokens")) {
        (None, None) => None,
        (p, c) => Some(Usage {
            prompt_tokens: p.unwrap_or(0),
            completion_tokens: c.unwrap_or(0),
        }),
    };
    JobRecord {
        id: id.to_string(),
        tenant: text("tenant").unwrap_or_else(|| DEFAULT_TENANT.to_string()),
        status: map
            .get("status")
            .and_then(|s| JobStatus::parse(s))
            .unwrap_or(JobStatus::Queued),
        attempts: num("attempts").unwrap_or(0) as u32,
        enqueued_at_ms: num("enqueued_at_ms"),
        started_at_ms: num("started_at_ms"),
        finished_at_ms: num("finished_at_ms"),
        worker_id: text("worker_id"),
        error_kind: text("error_kind").and_then(|k| ErrorKind::parse(&k)),
        error_message: text("error_message"),
        usage,
        ttft_ms: num("ttft_ms"),
        result: map.get("result").cloned(),
        spec: map.get("spec").and_then(|s| serde_json::from_str(s).ok()),
    }
}

#[async_trait]
impl Producer for RedisQueue {
    async fn store(
        &self,
        spec: JobSpec,
        idempotency_key: Option<&str>,
    ) -> Result<(String, bool), QueueError> {
        self.store_job(spec, idempotency_key).await
    }
}

#[async_trait]
impl Reader for RedisQueue {
    // Redis keyspace notifications of the pending list, and the arrivals channel.
    async fn arrivals(&self) -> Result<futures::stream::BoxStream<'static, ()>, QueueError> {
        arrival_stream(&self.client, &self.keys).await
    }

    async fn tenants(&self) -> Result<Vec<TenantStats>, QueueError> {
        let mut c = self.conn.clone();
        let mut names: Vec<String> = c
            .smembers(self.keys.named("tenant_names"))
            .await
            .map_err(unavailable)?;
        let configured: Vec<String> = c
            .hkeys(self.keys.named("tenants"))
            .await
            .map_err(unavailable)?;
        names.extend(configured);
        names.sort();
        names.dedup();
        let minute = now_ms() / 60_000;
        let mut pipe = redis::pipe();
        for t in &names {
            pipe.hgetall(self.keys.named(&format!("tenant:{t}")))
                .get(self.keys.named(&format!("tokens:{t}:{minute}")));
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let replies: Vec<(std::collections::HashMap<String, i64>, Option<u64>)> =
            pipe.query_async(&mut c).await.map_err(unavailable)?;
        Ok(names
            .into_iter()
            .zip(replies)
            .map(|(tenant, (fields, tokens))| {
                let n = |k: &str| fields.get(k).copied().unwrap_or(0).max(0) as u64;
                TenantStats {
                    queued: n("queued"),
                    running: n("running"),
                    tokens_this_minute: tokens.unwrap_or(0),
                    outcomes: fields
                        .iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "queued" | "running"))
                        .map(|(k, v)| (k.clone(), (*v).max(0) as u64))
                        .collect(),
                    tenant,
                }
            })
            .collect())
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let mut c = self.conn.clone();
        let map: std::collections::HashMap<String, String> =
            c.hgetall(record_key(id)).await.map_err(unavailable)?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(Some(parse_record(id, map)))
    }

    async fn list_jobs(
        &self,
        tenant: Option<&str>,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, QueueError> {
        // Cursor: "<enqueue ms>:<id>" of the last entry returned, as in every backend:
        // entries are ordered by enqueue time, then id, both descending (Redis orders
        // members of equal score in reverse lexicographic order).
        let after = parse_cursor(cursor)?;
        let limit = limit.clamp(1, 1000);
        let max_arg = after
            .as_ref()
            .map_or("+inf".to_string(), |(ms, _)| ms.to_string());
        let index = match tenant {
            Some(t) => self.keys.named(&format!("index:{t}")),
            None => self.keys.index.clone(),
        };
        let mut c = self.conn.clone();
        let mut jobs = Vec::new();
        let mut offset = 0usize;
        loop {
            let batch: Vec<(String, u64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&index)
                .arg(&max_arg)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(offset)
                .arg(200)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if batch.is_empty() {
                return Ok(JobPage {
                    jobs,
                    next_cursor: None,
                });
            }
            offset += batch.len();
            let batch: Vec<(String, u64)> = batch
                .into_iter()
                .filter(|(id, ms)| {
                    after
                        .as_ref()
                        .is_none_or(|(a_ms, a_id)| ms < a_ms || id.as_str() < a_id.as_str())
                })
                .collect();
            let mut pipe = redis::pipe();
            for (id, _) in &batch {
                pipe.hgetall(record_key(id));
            }
            let records: Vec<std::collections::HashMap<String, String>> = if batch.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(&mut c).await.map_err(unavailable)?
            };
            let mut last = None;
            for ((id, ms), map) in batch.into_iter().zip(records) {
                last = Some(format!("{ms}:{id}"));
                if map.is_empty() {
                    continue; // expired
                }
                let rec = parse_record(&id, map);
                if status.is_none_or(|s| s == rec.status) {
                    jobs.push(rec);
                    if jobs.len() == limit {
                        return Ok(JobPage {
                            jobs,
                            next_cursor: last,
                        });
                    }
                }
            }
            if offset >= 5000 {
                // A filtered scan this long returns what it found and where to go on.
                return Ok(JobPage {
                    jobs,
                    next_cursor: last,
                });
            }
        }
    }

    async fn counters(&self) -> Result<Vec<(String, u64)>, QueueError> {
        let mut c = self.conn.clone();
        let map: std::collections::HashMap<String, u64> =
            c.hgetall(&self.keys.counters).await.map_err(unavailable)?;
        let mut out: Vec<(String, u64)> = map.into_iter().collect();
        out.sort();
        Ok(out)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = self.server_now_ms().await?;
        let mut c = self.conn.clone();
        let workers: Vec<(String, f64)> = c
            .zrange_withscores(&self.keys.workers, 0, -1)
            .await
            .map_err(unavailable)?;
        let (pending, deferrable, oldest_deferrable): (u64, u64, u64) = self
            .scripts
            .counts
            .key(&self.keys.pending)
            .arg(&self.keys.prefix)
            .arg(RECORD_PREFIX)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut pipe = redis::pipe();
        pipe.zcard(&self.keys.delayed).llen(&self.keys.dead);
        for (w, _) in &workers {
            pipe.llen(self.keys.inflight(w));
        }
        let counts: Vec<u64> = pipe.query_async(&mut c).await.map_err(unavailable)?;
        let next_deadline: Vec<(String, f64)> = c
            .zrange_withscores(self.keys.named("deadlines"), 0, 0)
            .await
            .map_err(unavailable)?;
        Ok(QueueStats {
            pending,
            deferrable,
            deadline_in_ms: next_deadline
                .first()
                .map(|(_, d)| (*d as u64).saturating_sub(now)),
            oldest_deferrable_ms: (oldest_deferrable > 0)
                .then(|| now.saturating_sub(oldest_deferrable)),
            delayed: counts[0],
            dead_letter: counts[1],
            in_flight: counts[2..].iter().sum(),
            live_workers: workers.iter().filter(|(_, d)| *d as u64 > now).count() as u64,
        })
    }

    async fn served_models(&self) -> Result<Vec<String>, QueueError> {
        let mut c = self.conn.clone();
        let mut seen: Vec<(String, u64)> =
            c.hgetall(&self.keys.models).await.map_err(unavailable)?;
        let since = now_ms().saturating_sub(self.config.retention.as_millis() as u64);
        seen.retain(|(_, at)| *at >= since);
        // The most recently seen first; ties by name, as the SQLite backend orders them.
        seen.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(seen.into_iter().map(|(model, _)| model).collect())
    }
}

#[async_trait]
impl EventBus for RedisQueue {
    async fn publish(&self, job_id: &str, event: &JobEvent) -> Result<(), QueueError> {
        let payload = event_payload(job_id, event);
        let mut c = self.conn.clone();
        c.publish::<_, _, i64>(&self.keys.events, payload)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn events(&self) -> Result<EventStream, QueueError> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(unavailable)?;
        pubsub
            .subscribe(&self.keys.events)
            .await
            .map_err(unavailable)?;
        let stream = pubsub.into_on_message().filter_map(|msg| async move {
            let mut v: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).ok()?;
            let id = v["job_id"].as_str()?.to_string();
            let event: JobEvent = serde_json::from_value(v["event"].take()).ok()?;
            Some((id, event))
        });
        Ok(Box::pin(stream))
    }
}

#[async_trait]
impl Consumer for RedisQueue {
    async fn lease(
        &self,
        worker: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        if !wait.is_zero() {
            self.listen_for_arrivals();
        }
        loop {
            // Register interest before looking, so an arrival in between is not missed.
            let arrival = self.arrived.notified();
            let jobs = self.lease_now(worker, max).await?;
            let now = tokio::time::Instant::now();
            if !jobs.is_empty() || now >= deadline {
                return Ok(jobs);
            }
            let _ = tokio::time::timeout_at(deadline.min(now + MAX_BLOCK), arrival).await;
        }
    }

    async fn heartbeat(&self, worker: &str, models: &[String]) -> Result<(), QueueError> {
        let mut c = self.conn.clone();
        self.scripts
            .heartbeat
            .key(&self.keys.workers)
            .key(&self.keys.models)
            .arg(worker)
            .arg(self.config.lease.as_millis() as u64)
            .arg(models)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    // One script call for all of them.
    async fn finish_all(
        &self,
        worker: &str,
        done: &[(LeasedJob, Outcome)],
    ) -> Result<Vec<Finished>, QueueError> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let steps: Vec<FinishStep> = done
            .iter()
            .map(|(job, outcome)| self.finish_step(worker, job, outcome))
            .collect();
        let applied = self.run_finish(worker, &steps).await?;
        Ok(applied.iter().map(|a| finished(a)).collect())
    }

    async fn release(&self, worker: &str, job: &LeasedJob) -> Result<(), QueueError> {
        let mut c = self.conn.clone();
        self.scripts
            .release
            .key(self.keys.inflight(worker))
            .key(record_key(&job.spec.job_id))
            .key(&self.keys.pending)
            .arg(&job.token)
            .arg(&self.keys.prefix)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn reclaim_unknown(&self, worker: &str, held: &[String]) -> Result<u64, QueueError> {
        let mut c = self.conn.clone();
        let mut inv = self.scripts.reclaim_unknown.prepare_invoke();
        inv.key(self.keys.inflight(worker))
            .key(&self.keys.pending)
            .arg(RECORD_PREFIX)
            .arg(&self.keys.prefix);
        for token in held {
            inv.arg(token);
        }
        inv.invoke_async(&mut c).await.map_err(unavailable)
    }

    async fn deregister(&self, worker: &str) -> Result<(), QueueError> {
        self.reclaim(worker, "now").await.map(|_| ())
    }

    async fn maintain(&self) -> Result<Maintenance, QueueError> {
        let now = self.server_now_ms().await?;
        let mut c = self.conn.clone();
        let expired: Vec<String> = c
            .zrangebyscore(&self.keys.workers, "-inf", now)
            .await
            .map_err(unavailable)?;
        let mut report = Maintenance::default();
        for worker in expired {
            let moved = self.reclaim(&worker, "expired").await?;
            if moved > 0 {
                tracing::warn!(worker = %worker, jobs = moved, "worker stopped heartbeating; its jobs went back to the queue");
                report.reclaimed += moved as u64;
            }
        }
        let promoted: i64 = self
            .scripts
            .promote
            .key(&self.keys.delayed)
            .key(&self.keys.pending)
            .arg(1000)
            .arg(&self.keys.prefix)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        report.promoted = promoted as u64;
        let _: i64 = self
            .scripts
            .expire
            .key(&self.keys.counters)
            .arg(RECORD_PREFIX)
            .arg(&self.keys.prefix)
            .arg(1000)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let _: i64 = self
            .scripts
            .forget
            .arg(&self.keys.prefix)
            .arg(RECORD_PREFIX)
            .arg(self.config.retention.as_millis() as u64)
            .arg(1000)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let horizon = now.saturating_sub(self.config.retention.as_millis() as u64);
        let tenants: Vec<String> = c
            .smembers(self.keys.named("tenant_names"))
            .await
            .map_err(unavailable)?;
        let mut pipe = redis::pipe();
        pipe.zrembyscore(&self.keys.index, "-inf", horizon).ignore();
        for t in tenants {
            pipe.zrembyscore(self.keys.named(&format!("index:{t}")), "-inf", horizon)
                .ignore();
        }
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
        Ok(report)
    }
}

#[async_trait]
impl Admin for RedisQueue {
    async fn set_tenants(&self, tenants: &Tenants) -> Result<(), QueueError> {
        let key = self.keys.named("tenants");
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        for (name, settings) in tenants {
            let json = serde_json::to_string(settings).expect("settings serialize");
            pipe.hset(&key, name, json).ignore();
        }
        let mut c = self.conn.clone();
        pipe.query_async::<()>(&mut c).await.map_err(unavailable)
    }

    async fn cancel(&self, id: &str, running_too: bool) -> Result<Cancelled, QueueError> {
        let mut c = self.conn.clone();
        let r: String = self
            .scripts
            .cancel
            .key(record_key(id))
            .key(&self.keys.counters)
            .arg(if running_too { "1" } else { "0" })
            .arg(&self.keys.prefix)
            .arg(id)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(match r.as_str() {
            "cancelled" => Cancelled::Cancelled,
            "running" => Cancelled::Running,
            "final" => Cancelled::AlreadyFinal,
            _ => Cancelled::NotFound,
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut c = self.conn.clone();
        let items: Vec<String> = c
            .lrange(&self.keys.dead, 0, limit.max(1) as isize - 1)
            .await
            .map_err(unavailable)?;
        Ok(items
            .iter()
            .map(|i| {
                serde_json::from_str(i).unwrap_or_else(|_| DeadLetter {
                    job_id: None,
                    kind: "unknown".into(),
                    reason: "unreadable dead-letter item".into(),
                    entry: i.clone(),
                    at_ms: 0,
                })
            })
            .collect())
    }

    async fn retry_dead(&self, ids: Option<&[String]>) -> Result<u64, QueueError> {
        let mut c = self.conn.clone();
        let items: Vec<String> = c
            .lrange(&self.keys.dead, 0, -1)
            .await
            .map_err(unavailable)?;
        let mut count = 0;
        for item in items {
            let Ok(letter) = serde_json::from_str::<DeadLetter>(&item) else {
                continue;
            };
            if let Some(ids) = ids
                && !letter.job_id.as_ref().is_some_and(|j| ids.contains(j))
            {
                continue;
            }
            let id = letter.job_id.as_deref().unwrap_or("");
            let n: i64 = self
                .scripts
                .retry_dead
                .key(&self.keys.dead)
                .key(&self.keys.pending)
                .key(record_key(id))
                .arg(&item)
                .arg(&letter.entry)
                .arg(if letter.job_id.is_some() { "1" } else { "0" })
                .arg(&self.keys.prefix)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            count += n as u64;
        }
        Ok(count)
    }

    async fn purge_dead(&self) -> Result<u64, QueueError> {
        let mut c = self.conn.clone();
        let (n, _): (u64, i64) = redis::pipe()
            .atomic()
            .llen(&self.keys.dead)
            .del(&self.keys.dead)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n)
    }
}
