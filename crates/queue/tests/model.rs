//! Model-based property test: random sequences of enqueue (by three tenants, in two priority
//! classes) / lease / finish / release / worker death / late (zombie) finishes are applied to
//! a simple in-memory model and to each real queue backend (Redis, SQLite); after every step
//! both must agree — which jobs each lease returns, in which order — and at the end every
//! job must have reached succeeded, failed or dead: none lost, none leased twice at once.
//!
//! The model states the lease order: the highest class with work first; in it, tenants by
//! the fair rule of `greenscale_core::FairClock` (tenant `a` has weight 2), skipping a
//! tenant at its `max_running` (tenant `b` runs one job at a time); each tenant's jobs in
//! order, handed-back ones first.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use greenscale_core::{
    Completion, ErrorKind, FairClock, Finished, JobError, JobSpec, JobStatus, LeasedJob, Outcome,
    Priority, Queue, QueueConfig, TenantSettings, Tenants,
};
use greenscale_queue::{RedisQueue, SqliteQueue};
use greenscale_testkit::RedisServer;
use proptest::prelude::*;
use redis::Commands;

const WORKERS: usize = 3;
const MAX_ATTEMPTS: u32 = 3;

/// The tenants jobs are enqueued for.
const TENANTS: [&str; 3] = ["a", "b", "default"];

/// Their settings: `a` has twice the share, `b` runs one job at a time.
fn tenants() -> Tenants {
    let mut t = Tenants::new();
    t.insert(
        "a".into(),
        TenantSettings {
            weight: 2.0,
            ..TenantSettings::default()
        },
    );
    t.insert(
        "b".into(),
        TenantSettings {
            max_running: Some(1),
            ..TenantSettings::default()
        },
    );
    t
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        tenant: usize,
        batch: bool,
    },
    Lease {
        worker: usize,
        max: usize,
    },
    Succeed {
        worker: usize,
        pick: usize,
    },
    FailTransient {
        worker: usize,
        pick: usize,
    },
    FailPermanent {
        worker: usize,
        pick: usize,
    },
    Release {
        worker: usize,
        pick: usize,
    },
    /// The worker stops heartbeating; its lease expires and maintenance reclaims its jobs.
    Kill {
        worker: usize,
    },
    /// A killed worker was only stalled: it finishes a job it held, late.
    ZombieSucceed {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0..WORKERS;
    prop_oneof![
        3 => (0..TENANTS.len(), any::<bool>()).prop_map(|(tenant, batch)| Op::Enqueue { tenant, batch }),
        3 => (w.clone(), 1..4usize).prop_map(|(worker, max)| Op::Lease { worker, max }),
        2 => (w.clone(), any::<usize>()).prop_map(|(worker, pick)| Op::Succeed { worker, pick }),
        1 => (w.clone(), any::<usize>()).prop_map(|(worker, pick)| Op::FailTransient { worker, pick }),
        1 => (w.clone(), any::<usize>()).prop_map(|(worker, pick)| Op::FailPermanent { worker, pick }),
        1 => (w.clone(), any::<usize>()).prop_map(|(worker, pick)| Op::Release { worker, pick }),
        1 => w.prop_map(|worker| Op::Kill { worker }),
        1 => any::<usize>().prop_map(|pick| Op::ZombieSucceed { pick }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ModelJob {
    status: JobStatus,
    attempts: u32,
}

/// A tenant's queue in one class.
type Flow = (Priority, String);

/// The reference model: plain collections, obviously right.
#[derive(Default)]
struct Model {
    jobs: HashMap<String, ModelJob>,
    /// Each job's flow.
    flow_of: HashMap<String, Flow>,
    /// Each flow's waiting jobs; the front is leased next.
    flows: HashMap<Flow, VecDeque<String>>,
    /// The flows with work, by their head's tag.
    ready: HashMap<Flow, f64>,
    clock: FairClock,
    delayed: Vec<String>,
    /// Per worker, in lease order.
    held: [Vec<String>; WORKERS],
}

impl Model {
    fn pending(&self) -> usize {
        self.flows.values().map(VecDeque::len).sum()
    }

    /// Makes a job wait: at the back of its flow, or at the front (handed back).
    fn wait(&mut self, id: String, front: bool) {
        let flow = self.flow_of[&id].clone();
        if !self.ready.contains_key(&flow) {
            let tag = self.clock.head_tag(flow.0, &flow.1);
            self.ready.insert(flow.clone(), tag);
        }
        let q = self.flows.entry(flow).or_default();
        if front {
            q.push_front(id);
        } else {
            q.push_back(id);
        }
    }

    /// The next job by the rule in the module comment, taken off its flow.
    fn pick(&mut self) -> Option<String> {
        let settings = tenants();
        let running = |t: &str| {
            self.held
                .iter()
                .flatten()
                .filter(|id| self.flow_of[*id].1 == t)
                .count() as u32
        };
        let mut candidates: Vec<(&Flow, f64)> = self.ready.iter().map(|(f, t)| (f, *t)).collect();
        candidates.sort_by(|x, y| {
            y.0.0
                .cmp(&x.0.0)
                .then(x.1.total_cmp(&y.1))
                .then(x.0.1.cmp(&y.0.1))
        });
        let (flow, tag) = candidates.into_iter().find(|(f, _)| {
            settings
                .get(&f.1)
                .and_then(|s| s.max_running)
                .is_none_or(|m| running(&f.1) < m)
        })?;
        let flow = flow.clone();
        let weight = settings.get(&flow.1).map_or(1.0, |s| s.weight);
        let next = self.clock.leased(flow.0, &flow.1, tag, weight);
        let q = self.flows.get_mut(&flow).expect("a ready flow has jobs");
        let id = q.pop_front().expect("a ready flow has jobs");
        if q.is_empty() {
            self.ready.remove(&flow);
        } else {
            self.ready.insert(flow, next);
        }
        Some(id)
    }

    fn assert_single_lease(&self) {
        let mut seen = HashMap::new();
        for (w, held) in self.held.iter().enumerate() {
            for id in held {
                assert!(seen.insert(id.clone(), w).is_none(), "{id} leased twice");
                assert!(!self.delayed.contains(id));
            }
        }
    }
}

/// The backend under test, with its way of simulating the passage of time.
enum Backend {
    Redis {
        conn: redis::Connection,
        list: String,
    },
    Sqlite(std::sync::Arc<SqliteQueue>),
}

impl Backend {
    /// The worker's lease expires now.
    async fn expire(&mut self, worker: &str) {
        match self {
            Backend::Redis { conn, list } => {
                let _: i64 = conn
                    .zadd(format!("greenscale:{list}:workers"), worker, 0)
                    .unwrap();
            }
            Backend::Sqlite(q) => q.expire_worker(worker).await.unwrap(),
        }
    }

    /// Every delayed retry is due now.
    async fn make_due(&mut self) {
        match self {
            Backend::Redis { conn, list } => {
                let key = format!("greenscale:{list}:delayed");
                let delayed: Vec<String> = conn.zrange(&key, 0, -1).unwrap();
                for entry in delayed {
                    let _: i64 = conn.zadd(&key, entry, 0).unwrap();
                }
            }
            Backend::Sqlite(q) => {
                q.make_retries_due().await.unwrap();
            }
        }
    }
}

struct Real {
    queue: std::sync::Arc<dyn Queue>,
    incarnation: [u32; WORKERS],
    held: [Vec<LeasedJob>; WORKERS],
    zombies: Vec<(String, LeasedJob)>,
}

impl Real {
    fn worker_id(&self, w: usize) -> String {
        format!("w{w}-{}", self.incarnation[w])
    }
}

fn success() -> Outcome {
    Outcome::Succeeded(Completion {
        text: "answer".into(),
        ..Completion::default()
    })
}

fn failure(transient: bool) -> Outcome {
    Outcome::Failed(JobError {
        kind: if transient {
            ErrorKind::UpstreamTransient
        } else {
            ErrorKind::UpstreamRejected
        },
        message: "scripted".into(),
        transient,
        retry_after: None,
    })
}

async fn apply(op: &Op, model: &mut Model, real: &mut Real, backend: &mut Backend) {
    match *op {
        Op::Enqueue { tenant, batch } => {
            let priority = if batch {
                Priority::BATCH
            } else {
                Priority::INTERACTIVE
            };
            let spec = JobSpec {
                tenant: Some(TENANTS[tenant].to_string()),
                priority: Some(priority),
                ..JobSpec::from_prompt("p")
            };
            let id = real.queue.enqueue(spec).await.unwrap();
            model.jobs.insert(
                id.clone(),
                ModelJob {
                    status: JobStatus::Queued,
                    attempts: 0,
                },
            );
            model
                .flow_of
                .insert(id.clone(), (priority, TENANTS[tenant].to_string()));
            model.wait(id, false);
        }
        Op::Lease { worker, max } => {
            let wid = real.worker_id(worker);
            let got = real.queue.lease(&wid, max, Duration::ZERO).await.unwrap();
            let mut expected = Vec::new();
            for _ in 0..max {
                let Some(id) = model.pick() else {
                    break;
                };
                let job = model.jobs.get_mut(&id).unwrap();
                if job.status.is_terminal() {
                    continue; // already final: dropped on delivery
                }
                job.attempts += 1;
                if job.attempts > MAX_ATTEMPTS {
                    job.attempts -= 1;
                    job.status = JobStatus::Dead;
                    continue;
                }
                job.status = JobStatus::Running;
                expected.push(id.clone());
                model.held[worker].push(id);
            }
            let ids: Vec<String> = got.iter().map(|j| j.spec.job_id.clone()).collect();
            assert_eq!(ids, expected, "lease order (fair rule) and content");
            for j in &got {
                assert_eq!(j.attempt, model.jobs[&j.spec.job_id].attempts);
            }
            real.held[worker].extend(got);
        }
        Op::Succeed { worker, pick }
        | Op::FailTransient { worker, pick }
        | Op::FailPermanent { worker, pick }
        | Op::Release { worker, pick } => {
            if model.held[worker].is_empty() {
                return;
            }
            let i = pick % model.held[worker].len();
            let id = model.held[worker].remove(i);
            let job = real.held[worker].remove(i);
            assert_eq!(job.spec.job_id, id);
            let wid = real.worker_id(worker);
            let m = model.jobs.get_mut(&id).unwrap();
            match op {
                Op::Release { .. } => {
                    real.queue.release(&wid, &job).await.unwrap();
                    if m.status == JobStatus::Running {
                        m.status = JobStatus::Queued;
                        m.attempts -= 1;
                    }
                    model.wait(id, true);
                }
                Op::Succeed { .. } => {
                    let r = real.queue.finish(&wid, &job, success()).await.unwrap();
                    let want = if m.status.is_terminal() {
                        Finished::AlreadyFinal
                    } else {
                        m.status = JobStatus::Succeeded;
                        Finished::Succeeded
                    };
                    assert_eq!(r, want);
                }
                Op::FailPermanent { .. } => {
                    let r = real.queue.finish(&wid, &job, failure(false)).await.unwrap();
                    let want = if m.status.is_terminal() {
                        Finished::AlreadyFinal
                    } else {
                        m.status = JobStatus::Failed;
                        Finished::Failed
                    };
                    assert_eq!(r, want);
                }
                _ => {
                    let r = real.queue.finish(&wid, &job, failure(true)).await.unwrap();
                    let want = if m.status.is_terminal() {
                        Finished::AlreadyFinal
                    } else if m.attempts >= MAX_ATTEMPTS {
                        m.status = JobStatus::Dead;
                        Finished::Dead
                    } else {
                        m.status = JobStatus::Queued;
                        model.delayed.push(id);
                        Finished::RetryScheduled
                    };
                    assert_eq!(r, want);
                }
            }
        }
        Op::Kill { worker } => {
            let wid = real.worker_id(worker);
            backend.expire(&wid).await;
            real.queue.maintain().await.unwrap();
            let held: Vec<String> = model.held[worker].drain(..).rev().collect();
            for id in held {
                let m = model.jobs.get_mut(&id).unwrap();
                if m.status == JobStatus::Running {
                    m.status = JobStatus::Queued;
                }
                model.wait(id, true);
            }
            for job in real.held[worker].drain(..) {
                real.zombies.push((wid.clone(), job));
            }
            real.incarnation[worker] += 1;
        }
        Op::ZombieSucceed { pick } => {
            if real.zombies.is_empty() {
                return;
            }
            let (wid, job) = real.zombies.remove(pick % real.zombies.len());
            let m = model.jobs.get_mut(&job.spec.job_id).unwrap();
            let r = real.queue.finish(&wid, &job, success()).await.unwrap();
            if m.status.is_terminal() {
                assert_eq!(r, Finished::AlreadyFinal);
            } else {
                // A late but real answer is kept; other deliveries will find it final.
                assert_eq!(r, Finished::Succeeded);
                m.status = JobStatus::Succeeded;
            }
        }
    }
}

async fn check_agreement(model: &Model, real: &Real) {
    model.assert_single_lease();
    for (id, m) in &model.jobs {
        let rec = real
            .queue
            .job(id)
            .await
            .unwrap()
            .expect("every job has a record");
        assert_eq!(
            (rec.status, rec.attempts),
            (m.status, m.attempts),
            "job {id}"
        );
    }
    for t in real.queue.tenants().await.unwrap() {
        let of_tenant = |id: &String| model.flow_of[id].1 == t.tenant;
        let queued = model
            .jobs
            .iter()
            .filter(|(id, m)| of_tenant(id) && m.status == JobStatus::Queued)
            .count();
        let running = model
            .held
            .iter()
            .flatten()
            .filter(|id| of_tenant(id))
            .count();
        assert_eq!(
            (t.queued as usize, t.running as usize),
            (queued, running),
            "tenant {}'s queued and running counts",
            t.tenant
        );
    }
    let stats = real.queue.stats().await.unwrap();
    assert_eq!(stats.pending as usize, model.pending());
    assert_eq!(stats.delayed as usize, model.delayed.len());
    let held: usize = model.held.iter().map(Vec::len).sum();
    assert_eq!(stats.in_flight as usize, held);
}

/// Kills every worker, makes every retry due, and runs everything left to the end.
async fn drain(real: &mut Real, backend: &mut Backend) {
    for w in 0..WORKERS {
        real.queue.deregister(&real.worker_id(w)).await.unwrap();
    }
    for _ in 0..100 {
        backend.make_due().await;
        real.queue.maintain().await.unwrap();
        let jobs = real
            .queue
            .lease("drainer", 50, Duration::ZERO)
            .await
            .unwrap();
        let stats = real.queue.stats().await.unwrap();
        if jobs.is_empty() && stats.pending == 0 && stats.delayed == 0 {
            return;
        }
        for job in jobs {
            real.queue.finish("drainer", &job, success()).await.unwrap();
        }
    }
    panic!("queue did not drain");
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// Runs the model check with a fresh backend per case from `open`.
fn check_backend(open: impl Fn() -> (std::sync::Arc<dyn Queue>, Backend)) {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        let (queue, mut backend) = rt.block_on(async { open() });
        rt.block_on(run_case(queue, &mut backend, &ops));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn config() -> QueueConfig {
    QueueConfig {
        max_attempts: MAX_ATTEMPTS,
        retry_base: Duration::from_secs(3600),
        ..QueueConfig::default()
    }
}

#[test]
fn redis_queue_agrees_with_model_and_loses_nothing() {
    let server = RedisServer::start();
    check_backend(|| {
        let list = format!("prop-{}", greenscale_core::new_job_id());
        let queue =
            std::sync::Arc::new(RedisQueue::connect(&server.url(), &list, config()).unwrap());
        (
            queue,
            Backend::Redis {
                conn: server.connection(),
                list,
            },
        )
    });
}

#[test]
fn sqlite_queue_agrees_with_model_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    check_backend(|| {
        let list = format!("prop-{}", greenscale_core::new_job_id());
        let queue = std::sync::Arc::new(
            SqliteQueue::open(&dir.path().join("model.db"), &list, config()).unwrap(),
        );
        (queue.clone(), Backend::Sqlite(queue))
    });
}

async fn run_case(queue: std::sync::Arc<dyn Queue>, backend: &mut Backend, ops: &[Op]) {
    let mut real = Real {
        queue,
        incarnation: [0; WORKERS],
        held: Default::default(),
        zombies: Vec::new(),
    };
    real.queue.set_tenants(&tenants()).await.unwrap();
    let mut model = Model::default();
    for op in ops {
        apply(op, &mut model, &mut real, backend).await;
        check_agreement(&model, &real).await;
    }
    drain(&mut real, backend).await;
    for id in model.jobs.keys() {
        let rec = real.queue.job(id).await.unwrap().expect("record kept");
        assert!(
            matches!(
                rec.status,
                JobStatus::Succeeded | JobStatus::Failed | JobStatus::Dead
            ),
            "job {id} ended {:?}",
            rec.status
        );
    }
    let stats = real.queue.stats().await.unwrap();
    assert_eq!((stats.pending, stats.in_flight, stats.delayed), (0, 0, 0));
}

/// A case proptest found: `b` (max_running 1) has A and B waiting, A's workers keep dying,
/// and the lease that gives A up (retry budget spent) must still hand out B, as a fair pick
/// would: the place A held under `b`'s cap while it was taken is not kept from B.
#[test]
fn a_job_given_up_at_lease_leaves_its_tenants_capped_place_to_the_next() {
    let ops = [
        Op::Enqueue {
            tenant: 1,
            batch: false,
        },
        Op::Enqueue {
            tenant: 1,
            batch: false,
        },
        Op::Lease { worker: 1, max: 1 },
        Op::Kill { worker: 1 },
        Op::Lease { worker: 0, max: 1 },
        Op::Kill { worker: 0 },
        Op::Enqueue {
            tenant: 2,
            batch: false,
        },
        Op::Lease { worker: 0, max: 2 },
        Op::Kill { worker: 0 },
        Op::Lease { worker: 0, max: 1 },
        Op::Lease { worker: 0, max: 2 },
    ];
    agree_on_both_backends(&ops);
}

/// A case proptest found: `b` (max_running 1) has A waiting, whose workers keep dying, and
/// B behind it, and `a` has batch work. The lease that gives A up hands out B, as a fair
/// pick would, not `a`'s batch job: A frees its place under `b`'s cap as it is taken, in
/// the same lease (before, only a worker asking for more than that lease took got B).
#[test]
fn a_capped_tenants_next_job_comes_before_a_lower_class_when_one_is_given_up() {
    let mut ops = vec![
        Op::Enqueue {
            tenant: 0,
            batch: true,
        },
        Op::Enqueue {
            tenant: 1,
            batch: false,
        },
    ];
    for _ in 0..MAX_ATTEMPTS {
        ops.extend([Op::Lease { worker: 0, max: 1 }, Op::Kill { worker: 0 }]);
    }
    ops.extend([
        Op::Enqueue {
            tenant: 1,
            batch: false,
        },
        Op::Lease { worker: 0, max: 2 },
    ]);
    agree_on_both_backends(&ops);
}

/// Runs one case against a fresh Redis queue and a fresh SQLite queue.
fn agree_on_both_backends(ops: &[Op]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let list = "regression".to_string();
    let (redis, mut redis_backend) = rt.block_on(async {
        let queue =
            std::sync::Arc::new(RedisQueue::connect(&server.url(), &list, config()).unwrap());
        (
            queue,
            Backend::Redis {
                conn: server.connection(),
                list: list.clone(),
            },
        )
    });
    rt.block_on(run_case(redis, &mut redis_backend, ops));
    let sqlite = std::sync::Arc::new(
        SqliteQueue::open(&dir.path().join("model.db"), &list, config()).unwrap(),
    );
    rt.block_on(run_case(sqlite.clone(), &mut Backend::Sqlite(sqlite), ops));
}
