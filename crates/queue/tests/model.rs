//! Model-based property test: random sequences of enqueue / lease / finish / release /
//! worker death / late (zombie) finishes are applied to a simple in-memory model and to each
//! real queue backend (Redis, SQLite); after every step both must agree, and at the end every job must have
//! reached succeeded, failed or dead — none lost, none leased twice at once.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use greenscale_core::{
    Completion, ErrorKind, Finished, JobError, JobSpec, JobStatus, LeasedJob, Outcome, Queue,
    QueueConfig,
};
use greenscale_queue::{RedisQueue, SqliteQueue};
use greenscale_testkit::RedisServer;
use proptest::prelude::*;
use redis::Commands;

const WORKERS: usize = 3;
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Enqueue,
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
        3 => Just(Op::Enqueue),
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

/// The reference model: plain collections, obviously right.
#[derive(Default)]
struct Model {
    jobs: HashMap<String, ModelJob>,
    /// Front is leased next.
    pending: VecDeque<String>,
    delayed: Vec<String>,
    /// Per worker, in lease order.
    held: [Vec<String>; WORKERS],
}

impl Model {
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
        Op::Enqueue => {
            let id = real.queue.enqueue(JobSpec::from_prompt("p")).await.unwrap();
            model.jobs.insert(
                id.clone(),
                ModelJob {
                    status: JobStatus::Queued,
                    attempts: 0,
                },
            );
            model.pending.push_back(id);
        }
        Op::Lease { worker, max } => {
            let wid = real.worker_id(worker);
            let got = real.queue.lease(&wid, max, Duration::ZERO).await.unwrap();
            let mut expected = Vec::new();
            for _ in 0..max {
                let Some(id) = model.pending.pop_front() else {
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
            assert_eq!(ids, expected, "lease order (FIFO) and content");
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
                    model.pending.push_front(id);
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
            for id in model.held[worker].drain(..).rev() {
                let m = model.jobs.get_mut(&id).unwrap();
                if m.status == JobStatus::Running {
                    m.status = JobStatus::Queued;
                }
                model.pending.push_front(id);
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
    let stats = real.queue.stats().await.unwrap();
    assert_eq!(stats.pending as usize, model.pending.len());
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
