//! The embedded queue backend: one SQLite file (WAL, synchronous commits), for GreenScale on
//! one machine. It keeps the same promises as the Redis backend; every state change is one
//! transaction. Job events are delivered in-process (one process owns the file).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use greenscale_core::{
    Admin, AfterFailure, Cancelled, Consumer, DEFAULT_TENANT, DeadLetter, ErrorKind, EventBus,
    EventStream, Finished, JobEvent, JobPage, JobRecord, JobSpec, JobStatus, LeasedJob,
    Maintenance, Outcome, Priority, Producer, QueueConfig, QueueError, QueueStats, Quota, Reader,
    TenantSettings, TenantStats, Tenants, Usage, cursor_after, parse_cursor, parse_entry,
    validate_tenant,
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
-- One row per (class, tenant) that has had pending entries: the fair rule's tags
-- (greenscale_core::FairClock); `active` while it has pending entries.
CREATE TABLE IF NOT EXISTS flows (
    list TEXT NOT NULL,
    priority INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    head REAL NOT NULL,
    finish REAL NOT NULL,
    active INTEGER NOT NULL,
    PRIMARY KEY (list, priority, tenant)
);
-- Each class's virtual clock: the tag of the job leased last.
CREATE TABLE IF NOT EXISTS clocks (
    list TEXT NOT NULL,
    priority INTEGER NOT NULL,
    v REAL NOT NULL,
    PRIMARY KEY (list, priority)
);
CREATE TABLE IF NOT EXISTS tenants (
    list TEXT NOT NULL,
    name TEXT NOT NULL,
    settings TEXT NOT NULL,
    PRIMARY KEY (list, name)
);
CREATE TABLE IF NOT EXISTS tenant_counters (
    list TEXT NOT NULL,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (list, tenant, name)
);
CREATE TABLE IF NOT EXISTS tenant_tokens (
    list TEXT NOT NULL,
    tenant TEXT NOT NULL,
    minute INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (list, tenant, minute)
);
";

/// Columns added after the first release, created on databases that lack them.
const ADDED_COLUMNS: [(&str, &str, &str); 6] = [
    ("jobs", "tenant", "TEXT NOT NULL DEFAULT 'default'"),
    ("jobs", "priority", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "deadline_at_ms", "INTEGER"),
    ("entries", "tenant", "TEXT NOT NULL DEFAULT 'default'"),
    ("entries", "priority", "INTEGER NOT NULL DEFAULT 0"),
    ("entries", "job_id", "TEXT"),
];

/// Indexes over the added columns.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS entries_flow ON entries (list, state, priority, tenant, prio, seq);
CREATE INDEX IF NOT EXISTS entries_job ON entries (job_id);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (list, tenant, status);
CREATE INDEX IF NOT EXISTS jobs_by_deadline ON jobs (list, status, deadline_at_ms);
CREATE INDEX IF NOT EXISTS jobs_by_tenant_time ON jobs (list, tenant, enqueued_at_ms DESC, id DESC);
";

/// Creates the schema, adds columns an older database lacks, and makes every (class, tenant)
/// with pending entries ready (an older database has entries but no flows).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    for (table, column, decl) in ADDED_COLUMNS {
        let exists: bool = conn.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !exists {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    conn.execute_batch(INDEXES)?;
    conn.execute_batch(
        "INSERT OR IGNORE INTO flows (list, priority, tenant, head, finish, active)
         SELECT DISTINCT list, priority, tenant, 0, 0, 1 FROM entries WHERE state = 'pending'",
    )
}

fn now_ms() -> i64 {
    greenscale_core::unix_ms() as i64
}

/// Runs statements through the connection's statement cache, so the hot paths (enqueue,
/// lease, finish) parse each SQL text once per connection instead of once per call.
trait CachedStatements {
    /// [`Connection::execute`] with a cached statement.
    fn execute_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
    /// [`Connection::query_row`] with a cached statement.
    fn query_row_cached<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl CachedStatements for Connection {
    fn execute_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
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
        // Room for every statement this module runs (about 70 texts), so none is parsed twice.
        conn.set_prepared_statement_cache_capacity(128);
        migrate(&conn).map_err(db_error)?;
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
        self.tx(move |tx, ctx| push_pending(tx, ctx, &raw)).await?;
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
            tx.execute_cached(sql, params![ctx.list])
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
            tx.execute_cached(
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
     worker_id, error_kind, error_message, prompt_tokens, completion_tokens, ttft_ms, result, spec, \
     tenant";

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
        tenant: row.get(14)?,
    })
}

fn status_of(tx: &Transaction, id: &str) -> Result<Option<JobStatus>, QueueError> {
    tx.query_row_cached("SELECT status FROM jobs WHERE id = ?1", [id], |r| {
        r.get::<_, String>(0)
    })
    .optional()
    .map_err(db_error)
    .map(|s| s.and_then(|s| JobStatus::parse(&s)))
}

/// Adds one to the counter `name` (error kinds, for metrics).
fn count(tx: &Transaction, ctx: &Ctx, name: &str) -> Result<(), QueueError> {
    tx.execute_cached(
        "INSERT INTO counters (list, name, value) VALUES (?1, ?2, 1)
         ON CONFLICT(list, name) DO UPDATE SET value = value + 1",
        params![ctx.list, name],
    )
    .map_err(db_error)?;
    Ok(())
}

/// Adds one to the outcome counter `name`, for the whole queue and for `tenant`.
fn count_outcome(tx: &Transaction, ctx: &Ctx, tenant: &str, name: &str) -> Result<(), QueueError> {
    count(tx, ctx, name)?;
    tx.execute_cached(
        "INSERT INTO tenant_counters (list, tenant, name, value) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT(list, tenant, name) DO UPDATE SET value = value + 1",
        params![ctx.list, tenant, name],
    )
    .map_err(db_error)?;
    Ok(())
}

/// Who an entry on the queue belongs to and its class, read leniently from its JSON (an
/// entry that cannot be read is the default tenant's, interactive; it is dead-lettered when
/// leased).
struct EntryClass {
    tenant: String,
    priority: i32,
    job_id: Option<String>,
}

impl EntryClass {
    fn of(raw: &str) -> EntryClass {
        let v: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
        let tenant = v["tenant"]
            .as_str()
            .filter(|t| validate_tenant(t).is_ok())
            .unwrap_or(DEFAULT_TENANT);
        let priority =
            serde_json::from_value::<Priority>(v["priority"].clone()).unwrap_or_default();
        EntryClass {
            tenant: tenant.to_string(),
            priority: priority.0,
            job_id: v["job_id"].as_str().map(str::to_string),
        }
    }

    fn of_spec(spec: &JobSpec) -> EntryClass {
        EntryClass {
            tenant: spec.tenant().to_string(),
            priority: spec.priority().0,
            job_id: Some(spec.job_id.clone()),
        }
    }
}

/// Makes the flow of (`priority`, `tenant`) ready if it is not, its head tagged
/// `max(V, finish)` (the fair rule, [`greenscale_core::FairClock`]).
fn activate(tx: &Transaction, ctx: &Ctx, priority: i32, tenant: &str) -> Result<(), QueueError> {
    tx.execute_cached(
        "INSERT INTO flows (list, priority, tenant, head, finish, active)
         VALUES (?1, ?2, ?3, COALESCE((SELECT v FROM clocks WHERE list = ?1 AND priority = ?2), 0), 0, 1)
         ON CONFLICT(list, priority, tenant) DO UPDATE SET
           head = MAX(finish, COALESCE((SELECT v FROM clocks WHERE list = ?1 AND priority = ?2), 0)),
           active = 1
         WHERE active = 0",
        params![ctx.list, priority, tenant],
    )
    .map_err(db_error)?;
    Ok(())
}

/// Puts a raw entry at the back of its tenant's queue in its class.
fn push_pending(tx: &Transaction, ctx: &Ctx, raw: &str) -> Result<(), QueueError> {
    let class = EntryClass::of(raw);
    insert_entry(tx, ctx, raw, &class, "pending", None)
}

/// Inserts an entry in `state` (`pending` or `delayed`, due at `due_ms`).
fn insert_entry(
    tx: &Transaction,
    ctx: &Ctx,
    entry: &str,
    class: &EntryClass,
    state: &str,
    due_ms: Option<i64>,
) -> Result<(), QueueError> {
    tx.execute_cached(
        "INSERT INTO entries (list, entry, state, due_ms, tenant, priority, job_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            ctx.list,
            entry,
            state,
            due_ms,
            class.tenant,
            class.priority,
            class.job_id
        ],
    )
    .map_err(db_error)?;
    if state == "pending" {
        activate(tx, ctx, class.priority, &class.tenant)?;
    }
    Ok(())
}

/// Every tenant's stored settings.
fn tenant_settings(
    tx: &Transaction,
    ctx: &Ctx,
) -> Result<std::collections::HashMap<String, TenantSettings>, QueueError> {
    let mut stmt = tx
        .prepare_cached("SELECT name, settings FROM tenants WHERE list = ?1")
        .map_err(db_error)?;
    let rows: Vec<(String, String)> = stmt
        .query_map(params![ctx.list], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db_error)?
        .collect::<Result<_, _>>()
        .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .filter_map(|(n, s)| Some((n, serde_json::from_str(&s).ok()?)))
        .collect())
}

/// Refuses a new job of `tenant` over its `max_queued` or `tokens_per_minute`.
fn check_quotas(tx: &Transaction, ctx: &Ctx, tenant: &str, now: i64) -> Result<(), QueueError> {
    let Some(settings) = tenant_settings(tx, ctx)?.remove(tenant) else {
        return Ok(());
    };
    let over = |quota, limit: u64, retry_after| QueueError::OverQuota {
        tenant: tenant.to_string(),
        quota,
        limit,
        retry_after,
    };
    if let Some(max) = settings.max_queued {
        let queued: i64 = tx
            .query_row_cached(
                "SELECT COUNT(*) FROM jobs WHERE list = ?1 AND tenant = ?2 AND status = 'queued'",
                params![ctx.list, tenant],
                |r| r.get(0),
            )
            .map_err(db_error)?;
        if queued as u64 >= max {
            return Err(over(Quota::Queued, max, Duration::from_secs(1)));
        }
    }
    if let Some(budget) = settings.tokens_per_minute {
        let used = tokens_in_minute(tx, ctx, tenant, now)?;
        if used >= budget {
            let left = 60_000 - now.rem_euclid(60_000);
            return Err(over(
                Quota::Tokens,
                budget,
                Duration::from_millis(left as u64),
            ));
        }
    }
    Ok(())
}

/// Tokens `tenant`'s jobs used in the minute of `now`.
fn tokens_in_minute(
    tx: &Transaction,
    ctx: &Ctx,
    tenant: &str,
    now: i64,
) -> Result<u64, QueueError> {
    tx.query_row_cached(
        "SELECT COALESCE(SUM(tokens), 0) FROM tenant_tokens WHERE list = ?1 AND tenant = ?2 AND minute = ?3",
        params![ctx.list, tenant, now.div_euclid(60_000)],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
    .map_err(db_error)
}

/// The tenant of a job's record (the default tenant's when there is none).
fn tenant_of(tx: &Transaction, id: &str) -> Result<String, QueueError> {
    Ok(tx
        .query_row_cached("SELECT tenant FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .map_err(db_error)?
        .unwrap_or_else(|| DEFAULT_TENANT.to_string()))
}

fn dead_letter(
    tx: &Transaction,
    ctx: &Ctx,
    entry: &str,
    job_id: Option<&str>,
    kind: ErrorKind,
    reason: &str,
) -> Result<(), QueueError> {
    let tenant = match job_id {
        Some(id) => tenant_of(tx, id)?,
        None => DEFAULT_TENANT.to_string(),
    };
    count_outcome(tx, ctx, &tenant, "dead")?;
    count(tx, ctx, &format!("error:{}", kind.as_str()))?;
    let now = now_ms();
    let item = DeadLetter {
        job_id: job_id.map(str::to_string),
        kind: kind.as_str().to_string(),
        reason: reason.to_string(),
        entry: entry.to_string(),
        at_ms: now as u64,
    };
    tx.execute_cached(
        "INSERT INTO dead (list, item) VALUES (?1, ?2)",
        params![
            ctx.list,
            serde_json::to_string(&item).expect("serializable")
        ],
    )
    .map_err(db_error)?;
    if let Some(id) = job_id {
        tx.execute_cached(
            "INSERT INTO jobs (id, list, status, enqueued_at_ms, spec, tenant)
             VALUES (?1, ?2, 'queued', ?3, NULL, ?4) ON CONFLICT(id) DO NOTHING",
            params![id, ctx.list, now, tenant],
        )
        .map_err(db_error)?;
        tx.execute_cached(
            "UPDATE jobs SET status = 'dead', finished_at_ms = ?2, error_kind = ?3, error_message = ?4,
             expires_at_ms = ?5 WHERE id = ?1",
            params![id, now, kind.as_str(), reason, now + ctx.retention_ms()],
        )
        .map_err(db_error)?;
    }
    Ok(())
}

/// Puts entries back at the front of their tenant's queue in their class, to be leased next
/// in the given order (ahead of everything pending there, including entries handed back
/// earlier).
fn to_front(tx: &Transaction, ctx: &Ctx, seqs: &[i64]) -> Result<(), QueueError> {
    let front: i64 = tx
        .query_row_cached(
            "SELECT COALESCE(MIN(prio), 0) FROM entries WHERE list = ?1 AND state = 'pending'",
            params![ctx.list],
            |r| r.get(0),
        )
        .map_err(db_error)?;
    let base = front.min(0) - seqs.len() as i64;
    for (i, seq) in seqs.iter().enumerate() {
        let (priority, tenant): (i32, String) = tx
            .query_row_cached(
                "UPDATE entries SET state = 'pending', prio = ?2, worker = NULL, due_ms = NULL
                 WHERE seq = ?1 RETURNING priority, tenant",
                params![seq, base + i as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db_error)?;
        activate(tx, ctx, priority, &tenant)?;
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
        .prepare_cached(
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
            tx.execute_cached(sql, [id]).map_err(db_error)?;
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
    tx.execute_cached(
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
    tx.query_row_cached(
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
            tx.query_row_cached(
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
        tenant: Option<&str>,
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
        let tenant = tenant.map(str::to_string);
        self.tx(move |tx, ctx| {
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM jobs WHERE list = ?1
                 AND (?2 IS NULL OR status = ?2)
                 AND (?6 IS NULL OR tenant = ?6)
                 AND (enqueued_at_ms < ?3 OR (enqueued_at_ms = ?3 AND (?4 = '' OR id < ?4)))
                 ORDER BY enqueued_at_ms DESC, id DESC LIMIT ?5"
            );
            let mut stmt = tx.prepare_cached(&sql).map_err(db_error)?;
            let jobs: Vec<JobRecord> = stmt
                .query_map(
                    params![ctx.list, status, before_ms, before_id, limit as i64, tenant],
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
                .prepare_cached("SELECT name, value FROM counters WHERE list = ?1 ORDER BY name")
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
            let now = now_ms();
            let count = |sql: &str| -> Result<u64, QueueError> {
                tx.query_row_cached(sql, params![ctx.list], |r| r.get::<_, i64>(0))
                    .map(|n| n.max(0) as u64)
                    .map_err(db_error)
            };
            Ok(QueueStats {
                pending: count(
                    "SELECT COUNT(*) FROM entries WHERE list = ?1 AND state = 'pending'",
                )?,
                deferrable: count(
                    "SELECT COUNT(*) FROM entries WHERE list = ?1 AND state = 'pending' AND priority < 0",
                )?,
                deadline_in_ms: tx
                    .query_row_cached(
                        "SELECT MIN(deadline_at_ms) FROM jobs WHERE list = ?1 AND status = 'queued'",
                        params![ctx.list],
                        |r| r.get::<_, Option<i64>>(0),
                    )
                    .map_err(db_error)?
                    .map(|d| (d - now).max(0) as u64),
                oldest_deferrable_ms: tx
                    .query_row_cached(
                        "SELECT MIN(j.enqueued_at_ms) FROM entries e JOIN jobs j ON j.id = e.job_id
                         WHERE e.list = ?1 AND e.state = 'pending' AND e.priority < 0",
                        params![ctx.list],
                        |r| r.get::<_, Option<i64>>(0),
                    )
                    .map_err(db_error)?
                    .map(|t| (now - t).max(0) as u64),
                in_flight: count(
                    "SELECT COUNT(*) FROM entries WHERE list = ?1 AND state = 'inflight'",
                )?,
                delayed: count(
                    "SELECT COUNT(*) FROM entries WHERE list = ?1 AND state = 'delayed'",
                )?,
                dead_letter: count("SELECT COUNT(*) FROM dead WHERE list = ?1")?,
                live_workers: tx
                    .query_row_cached(
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

    async fn tenants(&self) -> Result<Vec<TenantStats>, QueueError> {
        self.tx(|tx, ctx| {
            let now = now_ms();
            let mut out: std::collections::BTreeMap<String, TenantStats> = Default::default();
            let rows = |sql: &str| -> Result<Vec<(String, String, i64)>, QueueError> {
                let mut stmt = tx.prepare_cached(sql).map_err(db_error)?;
                stmt.query_map(params![ctx.list, now.div_euclid(60_000)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(db_error)?
                .collect::<Result<_, _>>()
                .map_err(db_error)
            };
            let sources = [
                "SELECT name, 'configured', 0 FROM tenants WHERE list = ?1 AND ?2 = ?2",
                "SELECT tenant, 'queued', COUNT(*) FROM jobs WHERE list = ?1 AND ?2 = ?2
                 AND status = 'queued' GROUP BY tenant",
                "SELECT tenant, 'inflight', COUNT(*) FROM entries WHERE list = ?1 AND ?2 = ?2
                 AND state = 'inflight' GROUP BY tenant",
                "SELECT tenant, 'tokens', tokens FROM tenant_tokens WHERE list = ?1 AND minute = ?2",
                "SELECT tenant, 'outcome:' || name, value FROM tenant_counters WHERE list = ?1 AND ?2 = ?2",
            ];
            for sql in sources {
                for (tenant, what, n) in rows(sql)? {
                    let t = out.entry(tenant.clone()).or_insert_with(|| TenantStats {
                        tenant,
                        ..TenantStats::default()
                    });
                    let n = n.max(0) as u64;
                    match what.as_str() {
                        "queued" => t.queued = n,
                        "inflight" => t.running = n,
                        "tokens" => t.tokens_this_minute = n,
                        w => {
                            if let Some(name) = w.strip_prefix("outcome:") {
                                t.outcomes.insert(name.to_string(), n);
                            }
                        }
                    }
                }
            }
            Ok(out.into_values().collect())
        })
        .await
    }

    async fn served_models(&self) -> Result<Vec<String>, QueueError> {
        self.tx(move |tx, ctx| {
            let since = now_ms() - ctx.config.retention.as_millis() as i64;
            let mut stmt = tx
                .prepare_cached(
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
        // A subscriber that fell behind has lost events: its stream ends, so the reader
        // knows to subscribe again and re-read what it follows.
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.ok().map(|item| (item, rx))
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
            tx.execute_cached(
                "INSERT INTO workers (list, id, deadline_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(list, id) DO UPDATE SET deadline_ms = excluded.deadline_ms",
                params![ctx.list, worker, now + ctx.config.lease.as_millis() as i64],
            )
            .map_err(db_error)?;
            for model in &models {
                tx.execute_cached(
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

    // One transaction, so one commit (and one sync to disk) for all of them.
    async fn finish_all(
        &self,
        worker: &str,
        done: &[(LeasedJob, Outcome)],
    ) -> Result<Vec<Finished>, QueueError> {
        let owner = worker.to_string();
        let steps = done.to_vec();
        let finished: Vec<Finished> = self
            .tx(move |tx, ctx| {
                steps
                    .into_iter()
                    .map(|(job, outcome)| finish_in(tx, ctx, &owner, &job, outcome))
                    .collect()
            })
            .await?;
        // Committed: the ends of the jobs that notify are told.
        for ((job, outcome), f) in done.iter().zip(&finished) {
            if let (true, Some(status)) = (job.spec.notifies(), f.status()) {
                let _ = self.events.send((
                    job.spec.job_id.clone(),
                    job.end_event(worker, outcome, status),
                ));
            }
        }
        Ok(finished)
    }

    async fn release(&self, worker: &str, job: &LeasedJob) -> Result<(), QueueError> {
        let worker = worker.to_string();
        let (seq, id) = (seq_of(job), job.spec.job_id.clone());
        self.tx(move |tx, ctx| {
            if !holds(tx, &worker, seq)? {
                return Ok(());
            }
            to_front(tx, ctx, &[seq])?;
            tx.execute_cached(
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
                        .prepare_cached("SELECT id FROM workers WHERE list = ?1 AND deadline_ms <= ?2")
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
                        .prepare_cached(
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
                let past_deadline: Vec<String> = {
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT spec FROM jobs WHERE list = ?1 AND status = 'queued'
                             AND deadline_at_ms <= ?2",
                        )
                        .map_err(db_error)?;
                    stmt.query_map(params![ctx.list, now], |r| r.get(0))
                        .map_err(db_error)?
                        .collect::<Result<_, _>>()
                        .map_err(db_error)?
                };
                for spec in past_deadline {
                    let Ok(spec) = serde_json::from_str::<JobSpec>(&spec) else {
                        continue;
                    };
                    tx.execute_cached(
                        "DELETE FROM entries WHERE list = ?1 AND job_id = ?2 AND state != 'inflight'",
                        params![ctx.list, spec.job_id],
                    )
                    .map_err(db_error)?;
                    expire(tx, ctx, &spec, now)?;
                }
                tx.execute_cached(
                    "DELETE FROM jobs WHERE list = ?1 AND expires_at_ms IS NOT NULL AND expires_at_ms <= ?2",
                    params![ctx.list, now],
                )
                .map_err(db_error)?;
                tx.execute_cached("DELETE FROM idempotency WHERE expires_at_ms <= ?1", [now])
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
    async fn set_tenants(&self, tenants: &Tenants) -> Result<(), QueueError> {
        let rows: Vec<(String, String)> = tenants
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    serde_json::to_string(s).expect("settings serialize"),
                )
            })
            .collect();
        self.tx(move |tx, ctx| {
            tx.execute_cached("DELETE FROM tenants WHERE list = ?1", params![ctx.list])
                .map_err(db_error)?;
            for (name, settings) in &rows {
                tx.execute_cached(
                    "INSERT INTO tenants (list, name, settings) VALUES (?1, ?2, ?3)",
                    params![ctx.list, name, settings],
                )
                .map_err(db_error)?;
            }
            Ok(())
        })
        .await
    }

    async fn cancel(&self, id: &str, running_too: bool) -> Result<Cancelled, QueueError> {
        let id = id.to_string();
        self.tx(move |tx, ctx| {
            let now = now_ms();
            Ok(match status_of(tx, &id)? {
                None => Cancelled::NotFound,
                Some(JobStatus::Running) if !running_too => Cancelled::Running,
                Some(JobStatus::Queued | JobStatus::Running) => {
                    tx.execute_cached(
                        "UPDATE jobs SET status = 'cancelled', finished_at_ms = ?2, expires_at_ms = ?3
                         WHERE id = ?1",
                        params![id, now, now + ctx.retention_ms()],
                    )
                    .map_err(db_error)?;
                    count_outcome(tx, ctx, &tenant_of(tx, &id)?, "cancelled")?;
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
                .prepare_cached("SELECT item FROM dead WHERE list = ?1 ORDER BY seq DESC LIMIT ?2")
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
                        .prepare_cached("SELECT seq, item FROM dead WHERE list = ?1 ORDER BY seq")
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
                    tx.execute_cached("DELETE FROM dead WHERE seq = ?1", [seq])
                        .map_err(db_error)?;
                    push_pending(tx, ctx, &letter.entry)?;
                    if let Some(id) = &letter.job_id {
                        tx.execute_cached(
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
            tx.execute_cached("DELETE FROM dead WHERE list = ?1", params![ctx.list])
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
                        .query_row_cached(
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
                check_quotas(tx, ctx, spec.tenant(), now)?;
                insert_record(tx, ctx, &spec, &entry, now)?;
                insert_entry(tx, ctx, &entry, &EntryClass::of_spec(&spec), "pending", None)?;
                if let Some(k) = &key {
                    tx.execute_cached(
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
    tx.execute_cached(
        "INSERT INTO workers (list, id, deadline_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(list, id) DO UPDATE SET deadline_ms = excluded.deadline_ms",
        params![ctx.list, worker, now + ctx.config.lease.as_millis() as i64],
    )
    .map_err(db_error)?;
    let settings = tenant_settings(tx, ctx)?;
    let mut running: std::collections::HashMap<String, u64> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT tenant, COUNT(*) FROM entries WHERE list = ?1 AND state = 'inflight'
                 GROUP BY tenant",
            )
            .map_err(db_error)?;
        stmt.query_map(params![ctx.list], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })
        .map_err(db_error)?
        .collect::<Result<_, _>>()
        .map_err(db_error)?
    };
    let mut jobs = Vec::new();
    // `max` entries are taken (as in the Redis backend); those dropped here leave the
    // batch short.
    for _ in 0..max {
        let Some((seq, raw, tenant)) = pick_next(tx, ctx, &settings, &running)? else {
            break;
        };
        let spec = match parse_entry(&raw, &ctx.config.limits) {
            Ok(spec) => spec,
            Err(bad) => {
                tracing::warn!(job_id = bad.job_id.as_deref().unwrap_or("-"), reason = %bad.reason, "malformed entry moved to the dead-letter list");
                tx.execute_cached("DELETE FROM entries WHERE seq = ?1", [seq])
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
            tx.execute_cached("DELETE FROM entries WHERE seq = ?1", [seq])
                .map_err(db_error)?;
            continue;
        }
        if spec.deadline_at_ms.is_some_and(|d| d as i64 <= now) {
            tx.execute_cached("DELETE FROM entries WHERE seq = ?1", [seq])
                .map_err(db_error)?;
            expire(tx, ctx, &spec, now)?;
            continue;
        }
        let normalized = spec.to_entry();
        tx.execute_cached(
            "UPDATE entries SET state = 'inflight', worker = ?2, entry = ?3, job_id = ?4,
             leased = (SELECT COALESCE(MAX(leased), 0) + 1 FROM entries) WHERE seq = ?1",
            params![seq, worker, normalized, spec.job_id],
        )
        .map_err(db_error)?;
        insert_record(tx, ctx, &spec, &normalized, now)?;
        let attempt: i64 = tx
            .query_row_cached(
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
            tx.execute_cached("DELETE FROM entries WHERE seq = ?1", [seq])
                .map_err(db_error)?;
            tx.execute_cached(
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
        *running.entry(tenant).or_default() += 1;
        jobs.push(LeasedJob {
            spec,
            attempt,
            token: seq.to_string(),
            started_at_ms: now as u64,
        });
    }
    Ok(jobs)
}

/// Stores a queued record for `spec` unless the job has one (an entry pushed straight onto
/// the queue gets its record when first leased).
fn insert_record(
    tx: &Transaction,
    ctx: &Ctx,
    spec: &JobSpec,
    entry: &str,
    now: i64,
) -> Result<bool, QueueError> {
    tx.execute_cached(
        "INSERT INTO jobs (id, list, status, attempts, enqueued_at_ms, spec, tenant, priority, deadline_at_ms)
         VALUES (?1, ?2, 'queued', 0, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(id) DO NOTHING",
        params![
            spec.job_id,
            ctx.list,
            now,
            entry,
            spec.tenant(),
            spec.priority().0,
            spec.deadline_at_ms.map(|d| d.min(i64::MAX as u64) as i64)
        ],
    )
    .map(|n| n > 0)
    .map_err(db_error)
}

/// Marks an unstarted job `expired`: its deadline passed before it could start.
fn expire(tx: &Transaction, ctx: &Ctx, spec: &JobSpec, now: i64) -> Result<(), QueueError> {
    insert_record(tx, ctx, spec, &spec.to_entry(), now)?;
    let late = now - spec.deadline_at_ms.unwrap_or(0) as i64;
    let changed = tx
        .execute_cached(
            "UPDATE jobs SET status = 'expired', finished_at_ms = ?2, error_message = ?3,
             expires_at_ms = ?4 WHERE id = ?1 AND status = 'queued'",
            params![
                spec.job_id,
                now,
                expired_reason(late.max(0) as u64),
                now + ctx.retention_ms()
            ],
        )
        .map_err(db_error)?;
    if changed > 0 {
        tracing::info!(job_id = %spec.job_id, late_ms = late, "job expired: not started before its deadline");
        count_outcome(tx, ctx, spec.tenant(), "expired")?;
    }
    Ok(())
}

/// The message on an expired job's record.
fn expired_reason(late_ms: u64) -> String {
    format!("not started before its deadline (checked {late_ms} ms after it); it was never run")
}

/// Takes the next entry by the fair rule ([`greenscale_core::FairClock`]): the highest class
/// with a ready flow and, in it, the lowest head tag (then tenant name) among tenants below
/// their `max_running`. Moves the class clock and the flow's tags. Returns the entry and
/// its tenant.
fn pick_next(
    tx: &Transaction,
    ctx: &Ctx,
    settings: &std::collections::HashMap<String, TenantSettings>,
    running: &std::collections::HashMap<String, u64>,
) -> Result<Option<(i64, String, String)>, QueueError> {
    let flows: Vec<(i32, String, f64)> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT priority, tenant, head FROM flows WHERE list = ?1 AND active = 1
                 ORDER BY priority DESC, head, tenant",
            )
            .map_err(db_error)?;
        stmt.query_map(params![ctx.list], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?
    };
    for (priority, tenant, head) in flows {
        let s = settings.get(&tenant).copied().unwrap_or_default();
        if s.max_running
            .is_some_and(|m| running.get(&tenant).copied().unwrap_or(0) >= u64::from(m))
        {
            continue;
        }
        let mut stmt = tx
            .prepare_cached(
                "SELECT seq, entry FROM entries
                 WHERE list = ?1 AND state = 'pending' AND priority = ?2 AND tenant = ?3
                 ORDER BY prio, seq LIMIT 2",
            )
            .map_err(db_error)?;
        let heads: Vec<(i64, String)> = stmt
            .query_map(params![ctx.list, priority, tenant], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        let Some((seq, raw)) = heads.first().cloned() else {
            tx.execute_cached(
                "UPDATE flows SET active = 0 WHERE list = ?1 AND priority = ?2 AND tenant = ?3",
                params![ctx.list, priority, tenant],
            )
            .map_err(db_error)?;
            continue;
        };
        let next = head + 1.0 / s.weight;
        tx.execute_cached(
            "INSERT INTO clocks (list, priority, v) VALUES (?1, ?2, ?3)
             ON CONFLICT(list, priority) DO UPDATE SET v = excluded.v",
            params![ctx.list, priority, head],
        )
        .map_err(db_error)?;
        tx.execute_cached(
            "UPDATE flows SET head = ?4, finish = ?4, active = ?5
             WHERE list = ?1 AND priority = ?2 AND tenant = ?3",
            params![ctx.list, priority, tenant, next, heads.len() > 1],
        )
        .map_err(db_error)?;
        return Ok(Some((seq, raw, tenant)));
    }
    Ok(None)
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
        tx.execute_cached("DELETE FROM entries WHERE seq = ?1", [seq])
            .map_err(db_error)?;
    }
    if status_of(tx, id)?.is_some_and(JobStatus::is_terminal) {
        return Ok(Finished::AlreadyFinal);
    }
    let now = now_ms();
    let expires = now + ctx.retention_ms();
    match outcome {
        Outcome::Succeeded(done) => {
            tx.execute_cached(
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
            count_outcome(tx, ctx, job.spec.tenant(), "succeeded")?;
            let tokens = done.usage.prompt_tokens + done.usage.completion_tokens;
            tx.execute_cached(
                "INSERT INTO tenant_tokens (list, tenant, minute, tokens) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(list, tenant, minute) DO UPDATE SET tokens = tokens + excluded.tokens",
                params![
                    ctx.list,
                    job.spec.tenant(),
                    now.div_euclid(60_000),
                    tokens as i64
                ],
            )
            .map_err(db_error)?;
            Ok(Finished::Succeeded)
        }
        Outcome::Failed(error) => {
            let (kind, message) = (error.kind.as_str(), error.message.as_str());
            let delay = match ctx.config.after_failure(job.attempt, &error) {
                AfterFailure::Failed => {
                    count_outcome(tx, ctx, job.spec.tenant(), "failed")?;
                    count(tx, ctx, &format!("error:{kind}"))?;
                    tx.execute_cached(
                        "UPDATE jobs SET status = 'failed', finished_at_ms = ?2, error_kind = ?3,
                         error_message = ?4, expires_at_ms = ?5 WHERE id = ?1",
                        params![id, now, kind, message, expires],
                    )
                    .map_err(db_error)?;
                    return Ok(Finished::Failed);
                }
                AfterFailure::Dead(reason) => {
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
                AfterFailure::Retry(delay) => delay,
            };
            if !held {
                return Ok(Finished::AlreadyFinal);
            }
            count_outcome(tx, ctx, job.spec.tenant(), "retry")?;
            count(tx, ctx, &format!("error:{kind}"))?;
            insert_entry(
                tx,
                ctx,
                &job.spec.to_entry(),
                &EntryClass::of_spec(&job.spec),
                "delayed",
                Some(now + delay.as_millis() as i64),
            )?;
            tx.execute_cached(
                "UPDATE jobs SET status = 'queued', error_kind = ?2, error_message = ?3 WHERE id = ?1",
                params![id, kind, message],
            )
            .map_err(db_error)?;
            Ok(Finished::RetryScheduled)
        }
    }
}
