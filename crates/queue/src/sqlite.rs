//! The embedded queue backend: one SQLite file (WAL, synchronous commits), for GreenScale on
//! one machine. It keeps the same promises as the Redis backend; every state change is one
//! transaction. Job events are delivered in-process (one process owns the file).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use greenscale_core::{
    Admin, Cancelled, Consumer, DeadLetter, ErrorKind, EventBus, EventStream, Finished, JobError,
    JobEvent, JobPage, JobRecord, JobSpec, JobStatus, LeasedJob, Maintenance, Outcome, Producer,
    QueueConfig, QueueError, QueueStats, Reader, Usage, cursor_after, parse_cursor, parse_entry,
};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{Notify, broadcast};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    list TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    enqueued_at_ms INTEGER,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    worker_id TEXT,
    error_kind TEXT,
    error_message TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    ttft_ms INTEGER,
    result TEXT,
    spec TEXT,
    expires_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (list, enqueued_at_ms DESC, id DESC);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    list TEXT NOT NULL,
    entry TEXT NOT NULL,
    state TEXT NOT NULL,          -- pending | inflight | delayed
    prio INTEGER NOT NULL DEFAULT 0,  -- below 0: handed back, leased first (lowest first)
    worker TEXT,
    leased INTEGER,               -- lease order, for handing back in the order leased
    due_ms INTEGER
);
CREATE INDEX IF NOT EXISTS entries_pending ON entries (list, state, prio, seq);
CREATE INDEX IF NOT EXISTS entries_leased ON entries (leased);
CREATE TABLE IF NOT EXISTS workers (
    list TEXT NOT NULL,
    id TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    PRIMARY KEY (list, id)
);
CREATE TABLE IF NOT EXISTS models (
    list TEXT NOT NULL,
    name TEXT NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (list, name)
);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    list TEXT NOT NULL,
    item TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    list TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (list, name)
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn db_error(e: rusqlite::Error) -> QueueError {
    QueueError::Unavailable(format!("queue database: {e}"))
}

/// A [`Queue`] in a SQLite file.
pub struct SqliteQueue {
    db: Arc<Mutex<Connection>>,
    list: String,
    config: QueueConfig,
    arrivals: Arc<Notify>,
    events: broadcast::Sender<(String, JobEvent)>,
}

impl std::fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteQueue")
            .field("list", &self.list)
            .finish_non_exhaustive()
    }
}

impl SqliteQueue {
    /// Opens (or creates) the queue database at `path`, using `list` as the queue name.
    pub fn open(path: &Path, list: &str, config: QueueConfig) -> Result<Self, QueueError> {
        let conn = Connection::open(path)
            .map_err(|e| QueueError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_error)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(db_error)?;
        conn.execute_batch(SCHEMA).map_err(db_error)?;
        Ok(SqliteQueue {
            db: Arc::new(Mutex::new(conn)),
            list: list.to_string(),
            config,
            arrivals: Arc::new(Notify::new()),
            events: broadcast::channel(1024).0,
        })
    }

    /// Runs `f` in one transaction on a blocking thread.
    async fn tx<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction, &Ctx) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let db = self.db.clone();
        let ctx = Ctx {
            list: self.list.clone(),
            config: self.config.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().expect("queue database lock");
            // Immediate: take the write lock at the start, waiting (busy timeout) for
            // another connection's transaction — several pools of one `up` share the file.
            // A deferred transaction that reads and then writes fails at once with
            // SQLITE_BUSY when another connection wrote in between.
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_error)?;
            let out = f(&tx, &ctx)?;
            tx.commit().map_err(db_error)?;
            Ok(out)
        })
        .await
        .map_err(|e| QueueError::Unavailable(format!("queue task failed: {e}")))?
    }

    /// Appends a raw entry as a producer would (for tests and imports).
    pub async fn push_raw(&self, raw: &str) -> Result<(), QueueError> {
        let raw = raw.to_string();
        self.tx(move |tx, ctx| {
            tx.execute(
                "INSERT INTO entries (list, entry, state) VALUES (?1, ?2, 'pending')",
                params![ctx.list, raw],
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await?;
        self.arrivals.notify_waiters();
        Ok(())
    }

    /// Makes every delayed retry due now (an operator's "retry now").
    pub async fn make_retries_due(&self) -> Result<u64, QueueError> {
        self.update_list("UPDATE entries SET due_ms = 0 WHERE list = ?1 AND state = 'delayed'")
            .await
    }

    /// Treats every worker of this queue as dead now (for the single owner of the database,
    /// at startup: leases of a previous run are handed back by the next maintenance pass
    /// instead of waiting for them to expire). Returns how many there were.
    pub async fn expire_all_workers(&self) -> Result<u64, QueueError> {
        self.update_list("UPDATE workers SET deadline_ms = 0 WHERE list = ?1")
            .await
    }

    /// Runs `sql`, whose one parameter is this queue's list; returns the rows changed.
    async fn update_list(&self, sql: &'static str) -> Result<u64, QueueError> {
        self.tx(move |tx, ctx| {
            tx.execute(sql, params![ctx.list])
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }

    /// Treats `worker` as dead now: its lease expires and the next maintenance pass hands
    /// its jobs back.
    pub async fn expire_worker(&self, worker: &str) -> Result<(), QueueError> {
        let worker = worker.to_string();
        self.tx(move |tx, ctx| {
            tx.execute(
                "UPDATE workers SET deadline_ms = 0 WHERE list = ?1 AND id = ?2",
                params![ctx.list, worker],
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await
    }
}

/// What a transaction needs to know of the queue.
struct Ctx {
    list: String,
    config: QueueConfig,
}

impl Ctx {
    fn retention_ms(&self) -> i64 {
        self.config.retention.as_millis() as i64
    }
}

const RECORD_COLUMNS: &str = "id, status, attempts, enqueued_at_ms, started_at_ms, finished_at_ms, \
     worker_id, error_kind, error_message, prompt_tokens, completion_tokens, ttft_ms, result, spec";

fn record_from_row(row: &rusqlite::Row) -> rusqlite::Result<JobRecord> {
    let u = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    let prompt = u(9)?;
    let completion = u(10)?;
    Ok(JobRecord {
        id: row.get(0)?,
        status: JobStatus::parse(&row.get::<_, String>(1)?).unwrap_or(JobStatus::Queued),
        attempts: row.get::<_, i64>(2)?.max(0) as u32,
        enqueued_at_ms: u(3)?,
        started_at_ms: u(4)?,
        finished_at_ms: u(5)?,
        worker_id: row.get(6)?,
        error_kind: row
            .get::<_, Option<String>>(7)?
            .and_then(|k| ErrorKind::parse(&k)),
        error_message: row.get(8)?,
        usage: match (prompt, completion) {
            (None, None) => None,
            (p, c) => Some(Usage {
                prompt_tokens: p.unwrap_or(0),
                completion_tokens: c.unwrap_or(0),
            }),
        },
        ttft_ms: u(11)?,
        result: row.get(12)?,
        spec: row
            .get::<_, Option<String>>(13)?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

fn status_of(tx: &Transaction, id: &str) -> Result<Option<JobStatus>, QueueError> {
    tx.query_row("SELECT status FROM jobs WHERE id = ?1", [id], |r| {
        r.get::<_, String>(0)
    })
    .optional()
    .map_err(db_error)
    .map(|s| s.and_then(|s| JobStatus::parse(&s)))
}

/// Adds one to the counter `name` (outcomes and error kinds, for metrics).
fn count(tx: &Transaction, ctx: &Ctx, name: &str) -> Result<(), QueueError> {
    tx.execute(
        "INSERT INTO counters (list, name, value) VALUES (?1, ?2, 1)
         ON CONFLICT(list, name) DO UPDATE SET value = value + 1",
        params![ctx.list, name],
    )
    .map_err(db_error)?;
    Ok(())
}

fn dead_letter(
    tx: &Transaction,
    ctx: &Ctx,
    entry: &str,
    job_id: Option<&str>,
    kind: ErrorKind,
    reason: &str,
) -> Result<(), QueueError> {
    count(tx, ctx, "dead")?;
    count(tx, ctx, &format!("error:{}", kind.as_str()))?;
    let now = now_ms();
    let item = DeadLetter {
        job_id: job_id.map(str::to_string),
        kind: kind.as_str().to_string(),
        reason: reason.to_string(),
        entry: entry.to_string(),
        at_ms: now as u64,
    };
    tx.execute(
        "INSERT INTO dead (list, item) VALUES (?1, ?2)",
        params![
            ctx.list,
            serde_json::to_string(&item).expect("serializable")
        ],
    )
    .map_err(db_error)?;
    if let Some(id) = job_id {
        tx.execute(
            "INSERT INTO jobs (id, list, status, enqueued_at_ms, spec) VALUES (?1, ?2, 'queued', ?3, NULL)
             ON CONFLICT(id) DO NOTHING",
            params![id, ctx.list, now],
        )
        .map_err(db_error)?;
        tx.execute(
            "UPDATE jobs SET status = 'dead', finished_at_ms = ?2, error_kind = ?3, error_message = ?4,
             expires_at_ms = ?5 WHERE id = ?1",
            params![id, now, kind.as_str(), reason, now + ctx.retention_ms()],
        )
        .map_err(db_error)?;
    }
    Ok(())
}

/// Puts entries back at the front of the queue, to be leased next in the given order
/// (ahead of everything pending, including entries handed back earlier).
fn to_front(tx: &Transaction, ctx: &Ctx, seqs: &[i64]) -> Result<(), QueueError> {
    let front: i64 = tx
        .query_row(
            "SELECT COALESCE(MIN(prio), 0) FROM entries WHERE list = ?1 AND state = 'pending'",
            params![ctx.list],
            |r| r.get(0),
        )
        .map_err(db_error)?;
    let base = front.min(0) - seqs.len() as i64;
    for (i, seq) in seqs.iter().enumerate() {
        tx.execute(
            "UPDATE entries SET state = 'pending', prio = ?2, worker = NULL, due_ms = NULL WHERE seq = ?1",
            params![seq, base + i as i64],
        )
        .map_err(db_error)?;
    }
    Ok(())
}

/// The in-flight entries of `worker`, in the order it leased them.
fn inflight_of(
    tx: &Transaction,
    ctx: &Ctx,
    worker: &str,
) -> Result<Vec<(i64, String)>, QueueError> {
    let mut stmt = tx
        .prepare(
            "SELECT seq, entry FROM entries WHERE list = ?1 AND state = 'inflight' AND worker = ?2
             ORDER BY leased, seq",
        )
        .map_err(db_error)?;
    stmt.query_map(params![ctx.list, worker], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db_error)?
        .collect::<Result<_, _>>()
        .map_err(db_error)
}

/// Marks the running job of each entry queued again; `uncount` also takes back the attempt.
fn requeue_records(
    tx: &Transaction,
    entries: &[(i64, String)],
    uncount: bool,
) -> Result<(), QueueError> {
    for (_, entry) in entries {
        if let Some(id) = serde_json::from_str::<serde_json::Value>(entry)
            .ok()
            .and_then(|v| v["job_id"].as_str().map(str::to_string))
        {
            let sql = if uncount {
                "UPDATE jobs SET status = 'queued', attempts = attempts - 1 WHERE id = ?1 AND status = 'running'"
            } else {
                "UPDATE jobs SET status = 'queued' WHERE id = ?1 AND status = 'running'"
            };
            tx.execute(sql, [id]).map_err(db_error)?;
        }
    }
    Ok(())
}

/// Hands back everything `worker` holds (oldest first, ahead of other pending entries).
fn reclaim(tx: &Transaction, ctx: &Ctx, worker: &str) -> Result<u64, QueueError> {
    let entries = inflight_of(tx, ctx, worker)?;
    requeue_records(tx, &entries, false)?;
    let seqs: Vec<i64> = entries.iter().map(|(s, _)| *s).collect();
    to_front(tx, ctx, &seqs)?;
    tx.execute(
        "DELETE FROM workers WHERE list = ?1 AND id = ?2",
        params![ctx.list, worker],
    )
    .map_err(db_error)?;
    Ok(seqs.len() as u64)
}

fn seq_of(job: &LeasedJob) -> i64 {
    job.token.parse().unwrap_or(-1)
}

/// True when `worker` still holds entry `seq`.
fn holds(tx: &Transaction, worker: &str, seq: i64) -> Result<bool, QueueError> {
    tx.query_row(
        "SELECT 1 FROM entries WHERE seq = ?1 AND state = 'inflight' AND worker = ?2",
        params![seq, worker],
        |_| Ok(()),
    )
    .optional()
    .map_err(db_error)
    .map(|r| r.is_some())
}

#[async_trait]
impl Producer for SqliteQueue {
    async fn store(
        &self,
        spec: JobSpec,
        idempotency_key: Option<&str>,
    ) -> Result<(String, bool), QueueError> {
        self.store_job(spec, idempotency_key.map(str::to_string))
            .await
    }
}

#[async_trait]
impl Reader for SqliteQueue {
    // Stores through this queue (and its clones) notify it: an SQLite queue belongs to
    // one process.
    async fn arrivals(&self) -> Result<futures::stream::BoxStream<'static, ()>, QueueError> {
        let arrivals = self.arrivals.clone();
        Ok(Box::pin(futures::stream::unfold(
            arrivals,
            |a| async move {
                a.notified().await;
                Some(((), a))
            },
        )))
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>, QueueError> {
        let id = id.to_string();
        self.tx(move |tx, _| {
            tx.query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?1"),
                [&id],
                record_from_row,
            )
            .optional()
            .map_err(db_error)
        })
        .await
    }

    async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<JobPage, QueueError> {
        let (before_ms, before_id) = match parse_cursor(cursor)? {
            None => (i64::MAX, String::new()),
            Some((ms, id)) => (ms.min(i64::MAX as u64) as i64, id),
        };
        let limit = limit.clamp(1, 1000);
        let status = status.map(|s| s.as_str().to_string());
        self.tx(move |tx, ctx| {
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM jobs WHERE list = ?1
                 AND (?2 IS NULL OR status = ?2)
                 AND (enqueued_at_ms < ?3 OR (enqueued_at_ms = ?3 AND (?4 = '' OR id < ?4)))
                 ORDER BY enqueued_at_ms DESC, id DESC LIMIT ?5"
            );
            let mut stmt = tx.prepare(&sql).map_err(db_error)?;
            let jobs: Vec<JobRecord> = stmt
                .query_map(
                    params![ctx.list, status, before_ms, before_id, limit as i64],
                    record_from_row,
                )
                .map_err(db_error)?
                .collect::<Result<_, _>>()
                .map_err(db_error)?;
            let next_cursor = (jobs.len() == limit)
                .then(|| jobs.last())
                .flatten()
                .map(cursor_after);
            Ok(JobPage { jobs, next_cursor })
        })
        .await
    }

    async fn counters(&self) -> Result<Vec<(String, u64)>, QueueError> {
        self.tx(|tx, ctx| {
            let mut stmt = tx
                .prepare("SELECT name, value FROM counters WHERE list = ?1 ORDER BY name")
                .map_err(db_error)?;
            stmt.query_map(params![ctx.list], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)
        })
        .await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.tx(|tx, ctx| {
            let count = |sql: &str| -> Result<u64, QueueError> {
                tx.query_row(sql, params![ctx.list], |r| r.get::<_, i64>(0))
                    .map(|n| n.max(0) as u64)
                    .map_err(db_error)
            };
            Ok(QueueStats {
                pending: count(
                    "SELECT COUNT(*) FROM entries WHERE list = ?1 AND state = 'pending'",
                )?,
                in_flight: count(
                    "SELECT COUNT(*) FROM entries WHERE list = ?1 AND state = 'inflight'",
                )?,
                delayed: count(
                    "SELECT COUNT(*) FROM entries WHERE list = ?1 AND state = 'delayed'",
                )?,
                dead_letter: count("SELECT COUNT(*) FROM dead WHERE list = ?1")?,
                live_workers: tx
                    .query_row(
                        "SELECT COUNT(*) FROM workers WHERE list = ?1 AND deadline_ms > ?2",
                        params![ctx.list, now_ms()],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(db_error)?
                    .max(0) as u64,
            })
        })
        .await
    }

    async fn served_models(&self) -> Result<Vec<String>, QueueError> {
        self.tx(move |tx, ctx| {
            let since = now_ms() - ctx.config.retention.as_millis() as i64;
            let mut stmt = tx
                .prepare(
                    "SELECT name FROM models WHERE list = ?1 AND seen_ms >= ?2
                     ORDER BY seen_ms DESC, name",
                )
                .map_err(db_error)?;
            stmt.query_map(params![ctx.list, since], |row| row.get(0))
                .map_err(db_error)?
                .collect::<Result<Vec<String>, _>>()
                .map_err(db_error)
        })
        .await
    }
}

#[async_trait]
impl EventBus for SqliteQueue {
    async fn publish(&self, job_id: &str, event: &JobEvent) -> Result<(), QueueError> {
        let _ = self.events.send((job_id.to_string(), event.clone()));
        Ok(())
    }

    async fn events(&self) -> Result<EventStream, QueueError> {
        let rx = self.events.subscribe();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(item) => return Some((item, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

#[async_trait]
impl Consumer for SqliteQueue {
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
        loop {
            // Register interest before looking, so an arrival in between is not missed.
            let arrival = self.arrivals.notified();
            let worker_id = worker.to_string();
            let jobs = self
                .tx(move |tx, ctx| lease_in(tx, ctx, &worker_id, max))
                .await?;
            if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(jobs);
            }
            if tokio::time::timeout_at(deadline, arrival).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn heartbeat(&self, worker: &str, models: &[String]) -> Result<(), QueueError> {
        let worker = worker.to_string();
        let models = models.to_vec();
        self.tx(move |tx, ctx| {
            let now = now_ms();
            tx.execute(
                "INSERT INTO workers (list, id, deadline_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(list, id) DO UPDATE SET deadline_ms = excluded.deadline_ms",
                params![ctx.list, worker, now + ctx.config.lease.as_millis() as i64],
            )
            .map_err(db_error)?;
            for model in &models {
                tx.execute(
                    "INSERT INTO models (list, name, seen_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT(list, name) DO UPDATE SET seen_ms = excluded.seen_ms",
                    params![ctx.list, model, now],
                )
                .map_err(db_error)?;
            }
            Ok(())
        })
        .await
    }

    async fn finish(
        &self,
        worker: &str,
        job: &LeasedJob,
        outcome: Outcome,
    ) -> Result<Finished, QueueError> {
        let worker = worker.to_string();
        let job = job.clone();
        self.tx(move |tx, ctx| finish_in(tx, ctx, &worker, &job, outcome))
            .await
    }

    async fn release(&self, worker: &str, job: &LeasedJob) -> Result<(), QueueError> {
        let worker = worker.to_string();
        let (seq, id) = (seq_of(job), job.spec.job_id.clone());
        self.tx(move |tx, ctx| {
            if !holds(tx, &worker, seq)? {
                return Ok(());
            }
            to_front(tx, ctx, &[seq])?;
            tx.execute(
                "UPDATE jobs SET status = 'queued', attempts = attempts - 1
                 WHERE id = ?1 AND status = 'running'",
                [&id],
            )
            .map_err(db_error)?;
            Ok(())
        })
        .await?;
        self.arrivals.notify_waiters();
        Ok(())
    }

    async fn reclaim_unknown(&self, worker: &str, held: &[String]) -> Result<u64, QueueError> {
        // Transactions either commit with their reply or not at all, so nothing is held
        // unknowingly here; this hands back whatever is not in `held` all the same.
        let worker = worker.to_string();
        let held: Vec<i64> = held.iter().filter_map(|t| t.parse().ok()).collect();
        let moved = self
            .tx(move |tx, ctx| {
                let unknown: Vec<(i64, String)> = inflight_of(tx, ctx, &worker)?
                    .into_iter()
                    .filter(|(s, _)| !held.contains(s))
                    .collect();
                requeue_records(tx, &unknown, true)?;
                let seqs: Vec<i64> = unknown.iter().map(|(s, _)| *s).collect();
                to_front(tx, ctx, &seqs)?;
                Ok(seqs.len() as u64)
            })
            .await?;
        if moved > 0 {
            self.arrivals.notify_waiters();
        }
        Ok(moved)
    }

    async fn deregister(&self, worker: &str) -> Result<(), QueueError> {
        let worker = worker.to_string();
        let moved = self.tx(move |tx, ctx| reclaim(tx, ctx, &worker)).await?;
        if moved > 0 {
            self.arrivals.notify_waiters();
        }
        Ok(())
    }

    async fn maintain(&self) -> Result<Maintenance, QueueError> {
        let report = self
            .tx(|tx, ctx| {
                let now = now_ms();
                let expired: Vec<String> = {
                    let mut stmt = tx
                        .prepare("SELECT id FROM workers WHERE list = ?1 AND deadline_ms <= ?2")
                        .map_err(db_error)?;
                    stmt.query_map(params![ctx.list, now], |r| r.get(0))
                        .map_err(db_error)?
                        .collect::<Result<_, _>>()
                        .map_err(db_error)?
                };
                let mut report = Maintenance::default();
                for w in expired {
                    let moved = reclaim(tx, ctx, &w)?;
                    if moved > 0 {
                        tracing::warn!(worker = %w, jobs = moved, "worker stopped heartbeating; its jobs went back to the queue");
                    }
                    report.reclaimed += moved;
                }
                let due: Vec<i64> = {
                    let mut stmt = tx
                        .prepare(
                            "SELECT seq FROM entries WHERE list = ?1 AND state = 'delayed' AND due_ms <= ?2
                             ORDER BY due_ms, seq",
                        )
                        .map_err(db_error)?;
                    stmt.query_map(params![ctx.list, now], |r| r.get(0))
                        .map_err(db_error)?
                        .collect::<Result<_, _>>()
                        .map_err(db_error)?
                };
                to_front(tx, ctx, &due)?;
                report.promoted = due.len() as u64;
                tx.execute(
                    "DELETE FROM jobs WHERE list = ?1 AND expires_at_ms IS NOT NULL AND expires_at_ms <= ?2",
                    params![ctx.list, now],
                )
                .map_err(db_error)?;
                tx.execute("DELETE FROM idempotency WHERE expires_at_ms <= ?1", [now])
                    .map_err(db_error)?;
                Ok(report)
            })
            .await?;
        if report.reclaimed + report.promoted > 0 {
            self.arrivals.notify_waiters();
        }
        Ok(report)
    }
}

#[async_trait]
impl Admin for SqliteQueue {
    async fn cancel(&self, id: &str, running_too: bool) -> Result<Cancelled, QueueError> {
        let id = id.to_string();
        self.tx(move |tx, ctx| {
            let now = now_ms();
            Ok(match status_of(tx, &id)? {
                None => Cancelled::NotFound,
                Some(JobStatus::Running) if !running_too => Cancelled::Running,
                Some(JobStatus::Queued | JobStatus::Running) => {
                    tx.execute(
                        "UPDATE jobs SET status = 'cancelled', finished_at_ms = ?2, expires_at_ms = ?3
                         WHERE id = ?1",
                        params![id, now, now + ctx.retention_ms()],
                    )
                    .map_err(db_error)?;
                    count(tx, ctx, "cancelled")?;
                    Cancelled::Cancelled
                }
                Some(_) => Cancelled::AlreadyFinal,
            })
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.tx(move |tx, ctx| {
            let mut stmt = tx
                .prepare("SELECT item FROM dead WHERE list = ?1 ORDER BY seq DESC LIMIT ?2")
                .map_err(db_error)?;
            let items: Vec<String> = stmt
                .query_map(params![ctx.list, limit.max(1) as i64], |r| r.get(0))
                .map_err(db_error)?
                .collect::<Result<_, _>>()
                .map_err(db_error)?;
            Ok(items
                .iter()
                .filter_map(|i| serde_json::from_str(i).ok())
                .collect())
        })
        .await
    }

    async fn retry_dead(&self, ids: Option<&[String]>) -> Result<u64, QueueError> {
        let ids: Option<Vec<String>> = ids.map(<[String]>::to_vec);
        let n = self
            .tx(move |tx, ctx| {
                let rows: Vec<(i64, String)> = {
                    let mut stmt = tx
                        .prepare("SELECT seq, item FROM dead WHERE list = ?1 ORDER BY seq")
                        .map_err(db_error)?;
                    stmt.query_map(params![ctx.list], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(db_error)?
                        .collect::<Result<_, _>>()
                        .map_err(db_error)?
                };
                let mut count = 0;
                for (seq, item) in rows {
                    let Ok(letter) = serde_json::from_str::<DeadLetter>(&item) else {
                        continue;
                    };
                    if let Some(ids) = &ids
                        && !letter.job_id.as_ref().is_some_and(|j| ids.contains(j))
                    {
                        continue;
                    }
                    tx.execute("DELETE FROM dead WHERE seq = ?1", [seq])
                        .map_err(db_error)?;
                    tx.execute(
                        "INSERT INTO entries (list, entry, state) VALUES (?1, ?2, 'pending')",
                        params![ctx.list, letter.entry],
                    )
                    .map_err(db_error)?;
                    if let Some(id) = &letter.job_id {
                        tx.execute(
                            "UPDATE jobs SET status = 'queued', attempts = 0, finished_at_ms = NULL,
                             error_kind = NULL, error_message = NULL, expires_at_ms = NULL WHERE id = ?1",
                            [id],
                        )
                        .map_err(db_error)?;
                    }
                    count += 1;
                }
                Ok(count)
            })
            .await?;
        self.arrivals.notify_waiters();
        Ok(n)
    }

    async fn purge_dead(&self) -> Result<u64, QueueError> {
        self.tx(|tx, ctx| {
            tx.execute("DELETE FROM dead WHERE list = ?1", params![ctx.list])
                .map(|n| n as u64)
                .map_err(db_error)
        })
        .await
    }
}

impl SqliteQueue {
    /// Validates and stores a job (see [`Queue::store`]).
    async fn store_job(
        &self,
        spec: JobSpec,
        key: Option<String>,
    ) -> Result<(String, bool), QueueError> {
        let entry = spec
            .checked_entry(&self.config.limits)
            .map_err(QueueError::from)?;
        let out = self
            .tx(move |tx, ctx| {
                let now = now_ms();
                if let Some(k) = &key {
                    let existing: Option<String> = tx
                        .query_row(
                            "SELECT job_id FROM idempotency WHERE key = ?1 AND expires_at_ms > ?2",
                            params![k, now],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(db_error)?;
                    if let Some(id) = existing {
                        return Ok((id, false));
                    }
                }
                if status_of(tx, &spec.job_id)?.is_some() {
                    return Ok((spec.job_id.clone(), false));
                }
                tx.execute(
                    "INSERT INTO jobs (id, list, status, attempts, enqueued_at_ms, spec)
                     VALUES (?1, ?2, 'queued', 0, ?3, ?4)",
                    params![spec.job_id, ctx.list, now, entry],
                )
                .map_err(db_error)?;
                tx.execute(
                    "INSERT INTO entries (list, entry, state) VALUES (?1, ?2, 'pending')",
                    params![ctx.list, entry],
                )
                .map_err(db_error)?;
                if let Some(k) = &key {
                    tx.execute(
                        "INSERT OR REPLACE INTO idempotency (key, job_id, expires_at_ms) VALUES (?1, ?2, ?3)",
                        params![k, spec.job_id, now + ctx.retention_ms()],
                    )
                    .map_err(db_error)?;
                }
                Ok((spec.job_id.clone(), true))
            })
            .await?;
        if out.1 {
            self.arrivals.notify_waiters();
        }
        Ok(out)
    }
}

/// Leases up to `max` entries for `worker` and starts them, in one transaction.
fn lease_in(
    tx: &Transaction,
    ctx: &Ctx,
    worker: &str,
    max: usize,
) -> Result<Vec<LeasedJob>, QueueError> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO workers (list, id, deadline_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(list, id) DO UPDATE SET deadline_ms = excluded.deadline_ms",
        params![ctx.list, worker, now + ctx.config.lease.as_millis() as i64],
    )
    .map_err(db_error)?;
    let rows: Vec<(i64, String)> = {
        let mut stmt = tx
            .prepare(
                "SELECT seq, entry FROM entries WHERE list = ?1 AND state = 'pending'
                 ORDER BY prio, seq LIMIT ?2",
            )
            .map_err(db_error)?;
        stmt.query_map(params![ctx.list, max as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(db_error)?
        .collect::<Result<_, _>>()
        .map_err(db_error)?
    };
    let mut jobs = Vec::new();
    for (seq, raw) in rows {
        let spec = match parse_entry(&raw, &ctx.config.limits) {
            Ok(spec) => spec,
            Err(bad) => {
                tracing::warn!(job_id = bad.job_id.as_deref().unwrap_or("-"), reason = %bad.reason, "malformed entry moved to the dead-letter list");
                tx.execute("DELETE FROM entries WHERE seq = ?1", [seq])
                    .map_err(db_error)?;
                dead_letter(
                    tx,
                    ctx,
                    &raw,
                    bad.job_id.as_deref(),
                    ErrorKind::Malformed,
                    &bad.reason,
                )?;
                continue;
            }
        };
        if status_of(tx, &spec.job_id)?.is_some_and(JobStatus::is_terminal) {
            tx.execute("DELETE FROM entries WHERE seq = ?1", [seq])
                .map_err(db_error)?;
            continue;
        }
        let normalized = spec.to_entry();
        tx.execute(
            "UPDATE entries SET state = 'inflight', worker = ?2, entry = ?3,
             leased = (SELECT COALESCE(MAX(leased), 0) + 1 FROM entries) WHERE seq = ?1",
            params![seq, worker, normalized],
        )
        .map_err(db_error)?;
        tx.execute(
            "INSERT INTO jobs (id, list, status, attempts, enqueued_at_ms, spec)
             VALUES (?1, ?2, 'queued', 0, ?3, ?4) ON CONFLICT(id) DO NOTHING",
            params![spec.job_id, ctx.list, now, normalized],
        )
        .map_err(db_error)?;
        let attempt: i64 = tx
            .query_row(
                "UPDATE jobs SET attempts = attempts + 1, status = 'running', started_at_ms = ?2,
                 worker_id = ?3 WHERE id = ?1 RETURNING attempts",
                params![spec.job_id, now, worker],
                |r| r.get(0),
            )
            .map_err(db_error)?;
        let attempt = attempt.max(1) as u32;
        if attempt > ctx.config.max_attempts {
            let reason = format!(
                "its worker stopped while running it {} times (retry budget {})",
                attempt - 1,
                ctx.config.max_attempts
            );
            tx.execute("DELETE FROM entries WHERE seq = ?1", [seq])
                .map_err(db_error)?;
            tx.execute(
                "UPDATE jobs SET attempts = ?2 WHERE id = ?1",
                params![spec.job_id, attempt - 1],
            )
            .map_err(db_error)?;
            dead_letter(
                tx,
                ctx,
                &normalized,
                Some(&spec.job_id),
                ErrorKind::LeaseExpired,
                &reason,
            )?;
            continue;
        }
        jobs.push(LeasedJob {
            spec,
            attempt,
            token: seq.to_string(),
        });
    }
    Ok(jobs)
}

/// Records a run's outcome and releases its lease, never overwriting a final record.
fn finish_in(
    tx: &Transaction,
    ctx: &Ctx,
    worker: &str,
    job: &LeasedJob,
    outcome: Outcome,
) -> Result<Finished, QueueError> {
    let seq = seq_of(job);
    let id = job.spec.job_id.as_str();
    let held = holds(tx, worker, seq)?;
    if held {
        tx.execute("DELETE FROM entries WHERE seq = ?1", [seq])
            .map_err(db_error)?;
    }
    if status_of(tx, id)?.is_some_and(JobStatus::is_terminal) {
        return Ok(Finished::AlreadyFinal);
    }
    let now = now_ms();
    let expires = now + ctx.retention_ms();
    match outcome {
        Outcome::Succeeded(done) => {
            tx.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at_ms = ?2, result = ?3,
                 prompt_tokens = ?4, completion_tokens = ?5, ttft_ms = ?6, worker_id = ?7,
                 error_kind = NULL, error_message = NULL, expires_at_ms = ?8 WHERE id = ?1",
                params![
                    id,
                    now,
                    done.text,
                    done.usage.prompt_tokens as i64,
                    done.usage.completion_tokens as i64,
                    done.ttft_ms.map(|t| t as i64),
                    worker,
                    expires
                ],
            )
            .map_err(db_error)?;
            count(tx, ctx, "succeeded")?;
            Ok(Finished::Succeeded)
        }
        Outcome::Failed(JobError {
            kind,
            message,
            transient,
            retry_after,
        }) => {
            if !transient {
                count(tx, ctx, "failed")?;
                count(tx, ctx, &format!("error:{}", kind.as_str()))?;
                tx.execute(
                    "UPDATE jobs SET status = 'failed', finished_at_ms = ?2, error_kind = ?3,
                     error_message = ?4, expires_at_ms = ?5 WHERE id = ?1",
                    params![id, now, kind.as_str(), message, expires],
                )
                .map_err(db_error)?;
                return Ok(Finished::Failed);
            }
            if job.attempt >= ctx.config.max_attempts {
                let reason = format!(
                    "gave up after {} attempts; last error ({}): {message}",
                    job.attempt,
                    kind.as_str()
                );
                dead_letter(
                    tx,
                    ctx,
                    &job.spec.to_entry(),
                    Some(id),
                    ErrorKind::RetriesExhausted,
                    &reason,
                )?;
                return Ok(Finished::Dead);
            }
            if !held {
                return Ok(Finished::AlreadyFinal);
            }
            count(tx, ctx, "retry")?;
            count(tx, ctx, &format!("error:{}", kind.as_str()))?;
            let delay = ctx.config.retry_delay(job.attempt, retry_after);
            tx.execute(
                "INSERT INTO entries (list, entry, state, due_ms) VALUES (?1, ?2, 'delayed', ?3)",
                params![
                    ctx.list,
                    job.spec.to_entry(),
                    now + delay.as_millis() as i64
                ],
            )
            .map_err(db_error)?;
            tx.execute(
                "UPDATE jobs SET status = 'queued', error_kind = ?2, error_message = ?3 WHERE id = ?1",
                params![id, kind.as_str(), message],
            )
            .map_err(db_error)?;
            Ok(Finished::RetryScheduled)
        }
    }
}
