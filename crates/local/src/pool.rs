//! One pool at run time: its replicas (each a model server, or none for a remote API, plus
//! an in-process worker leasing the pool's jobs), what was measured about them, and the
//! record of scaling decisions.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenscale_core::policy::{
    Decision, Measured, Observation, PoolShape, ReplicaCounts, TURN_COLD_STARTS,
};
use greenscale_core::status::{
    DecisionRecord, Energy, GpuNeed, PoolKind, PoolStatus, ReplicaState, ReplicaView,
};
use greenscale_core::{Queue, QueueError};
use greenscale_worker::{
    LeaseTurns, OpenAiBackend, OpenAiConfig, WorkerConfig, WorkerReport, default_worker_id,
    run_worker,
};
use tokio::sync::{Notify, watch};

use crate::config::{PoolBackend, PoolConfig};
use crate::gpu::{Gpus, Placement};
use crate::metrics::PoolMetrics;
use crate::placement::Candidate as EvictionCandidate;
use crate::pool_state::{
    Candidate, ColdStartStats, DecisionLog, StartBackoff, Usage, scale_down_victims,
};
use crate::process::{
    GuardProgram, Launch, ModelProcess, StartError, StopOutcome, free_port, wait_healthy,
};
use crate::sleep::{Sleeper, group_rss_bytes};

/// A replica's model server once it is ready: where its worker sends jobs, its process
/// (none for a remote API), and its sleep and wake calls (if the pool sleeps).
struct Server {
    url: String,
    api_key: Option<String>,
    process: Option<ModelProcess>,
    sleeper: Option<Sleeper>,
}

/// What a replica is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Serve the pool's jobs (wake first if asleep).
    Serve,
    /// Drain, then sleep (its GPU memory given back, its process kept).
    Sleep,
    /// Drain, then stop.
    Stop,
}

/// How a sleep ended.
enum Slept {
    /// Woken: serve again.
    Woken,
    /// Told to stop, or the sleep or wake failed (logged): stop the server.
    Stop,
}

/// How a replica's serving ended.
enum Served {
    /// Told to stop; its worker drained.
    Stopped,
    /// Its model server exited by itself (with this status) while serving.
    ServerExited(String),
    /// No worker could be set up (the reason).
    NoWorker(String),
}

/// Retires a replica when dropped, so that every way out of its life retires it once.
struct Retire<'a> {
    pool: &'a Pool,
    name: &'a str,
    started: Instant,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        self.pool.retire(self.name, self.started);
    }
}

struct ReplicaEntry {
    view: ReplicaView,
    /// Its share of its GPUs' board power, watts, when known.
    power_w: Option<f64>,
    /// Since when it holds its GPUs (not while asleep): its estimated energy runs from here.
    awake_since: Option<Instant>,
    started: Instant,
    report: Arc<WorkerReport>,
    want: watch::Sender<Want>,
}

impl ReplicaEntry {
    /// The estimated energy of its current awake period, joules.
    fn awake_joules(&self) -> f64 {
        match (self.power_w, self.awake_since) {
            (Some(w), Some(since)) => w * since.elapsed().as_secs_f64(),
            _ => 0.0,
        }
    }

    /// Tells the replica what to do.
    fn tell(&self, want: Want) {
        let _ = self.want.send(want);
    }

    /// Whether it is asleep or on its way there.
    fn sleeping(&self) -> bool {
        *self.want.borrow() == Want::Sleep
    }
}

/// Everything a pool keeps at run time, under one lock.
#[derive(Default)]
struct PoolState {
    replicas: Vec<ReplicaEntry>,
    next_replica: u64,
    decisions: DecisionLog,
    cold_starts: ColdStartStats,
    wakes: ColdStartStats,
    sleeps: u64,
    backoff: StartBackoff,
    usage: Usage,
    gpu: GpuWait,
}

/// This pool's side of the shared GPU budget.
#[derive(Default)]
struct GpuWait {
    /// Since when a replica is wanted but fits nowhere (and, Unix ms, for the status).
    since: Option<(Instant, u64)>,
    /// Replicas of this pool evicted for other pools.
    evicted: u64,
    /// Evicted since this pool last had work: it does not start again until work comes,
    /// so two idle pools do not evict each other in turn.
    idle_after_eviction: bool,
    /// When this pool last had work (waiting or running).
    last_busy: Option<Instant>,
}

/// A pool at run time. Shared by the autoscaler loop, the replica tasks and the status API.
pub struct Pool {
    config: PoolConfig,
    queue: Arc<dyn Queue>,
    lease: Duration,
    guard: GuardProgram,
    state: Mutex<PoolState>,
    changed: Notify,
    arrivals: Notify,
    epoch: Instant,
    since_ms: u64,
    metrics: PoolMetrics,
    /// Makes the replicas' workers lease least-loaded first.
    turns: Arc<LeaseTurns>,
    /// The GPUs shared with other pools, when this pool's replicas need them.
    gpus: Option<Arc<Gpus>>,
}

use greenscale_core::unix_ms;

impl Pool {
    /// A pool with no replicas yet, taking its jobs from `queue` (whose workers hold leases
    /// of `lease`), starting local model servers under `guard`, placing them on `gpus`
    /// when its replicas need GPUs.
    pub fn new(
        config: PoolConfig,
        queue: Arc<dyn Queue>,
        lease: Duration,
        guard: GuardProgram,
        metrics: PoolMetrics,
        gpus: Option<Arc<Gpus>>,
    ) -> Arc<Pool> {
        let gpus = gpus.filter(|_| config.gpu.is_some());
        let pool = Arc::new(Pool {
            config,
            queue,
            lease,
            guard,
            state: Mutex::default(),
            changed: Notify::new(),
            arrivals: Notify::new(),
            epoch: Instant::now(),
            since_ms: unix_ms(),
            metrics,
            turns: Arc::default(),
            gpus,
        });
        if let Some(g) = &pool.gpus {
            g.register(&pool);
        }
        pool
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The pool's queue.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// Tells the autoscaler a job arrived, so that it decides at once instead of at the tick.
    pub fn job_arrived(&self) {
        self.arrivals.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().expect("pool state lock")
    }

    /// What the policy sees now.
    pub async fn observe(&self) -> Result<Observation, QueueError> {
        let stats = self.queue.stats().await?;
        let mut st = self.lock();
        st.usage.last_pending = stats.pending + stats.delayed;
        st.usage.last_in_flight = stats.in_flight;
        if st.usage.last_pending + st.usage.last_in_flight > 0 {
            st.gpu.last_busy = Some(Instant::now());
            st.gpu.idle_after_eviction = false;
        }
        let count =
            |s: ReplicaState| st.replicas.iter().filter(|r| r.view.state == s).count() as u32;
        let ready = count(ReplicaState::Ready);
        let starting = count(ReplicaState::Starting) + count(ReplicaState::Waking);
        let asleep = count(ReplicaState::Asleep);
        let busy = st
            .replicas
            .iter()
            .filter(|r| {
                r.view.state == ReplicaState::Ready
                    && r.report.in_flight.load(Ordering::Relaxed) > 0
            })
            .count() as u32;
        let (mut runs, mut run_us) = (st.usage.retired_runs, st.usage.retired_run_time_us);
        for r in &st.replicas {
            runs += r.report.runs.load(Ordering::Relaxed);
            run_us += r.report.run_time_us.load(Ordering::Relaxed);
        }
        Ok(Observation::from_queue(
            self.epoch.elapsed().as_secs_f64(),
            &stats,
            ReplicaCounts {
                ready,
                starting,
                busy,
                asleep,
            },
            PoolShape {
                concurrency: self.config.concurrency,
                max_replicas: self.config.max_replicas,
                can_sleep: self.config.sleep.is_some(),
            },
            Measured {
                cold_start: st.cold_starts.mean(),
                service_time: (runs > 0).then(|| run_us as f64 / 1e6 / runs as f64),
                wake: st.wakes.mean(),
            },
        ))
    }

    /// Applies a decision: wakes, starts, puts to sleep or drains replicas to reach
    /// `desired` warm (and up to `asleep` asleep) within the pool's limits, and records the
    /// decision when it differs from the last one.
    pub fn apply(self: &Arc<Self>, decision: &Decision, obs: &Observation, on_arrival: bool) {
        let desired = decision
            .desired
            .clamp(self.config.min_replicas, self.config.max_replicas);
        let mut st = self.lock();
        let mut active: Vec<usize> = (0..st.replicas.len())
            .filter(|&i| {
                st.replicas[i].view.state != ReplicaState::Draining && !st.replicas[i].sleeping()
            })
            .collect();
        let current = active.len() as u32;
        let record = DecisionRecord {
            at_ms: unix_ms(),
            current,
            desired,
            reason: decision.reason.to_string(),
            pending: obs.pending,
            in_flight: obs.in_flight,
            on_arrival,
        };
        let reason = record.reason.clone();
        if st.decisions.record(record, &decision.reason) {
            if desired != current {
                tracing::info!(pool = %self.config.name, current, desired, %reason, "scaling");
            } else {
                tracing::debug!(pool = %self.config.name, current, desired, %reason, "decision");
            }
            self.metrics.decision(desired);
        }

        if desired <= current
            && st.gpu.since.take().is_some()
            && let Some(g) = &self.gpus
        {
            g.stop_waiting(&self.config.name);
        }
        let mut current = current;
        if desired > current && !(st.gpu.idle_after_eviction && obs.work() == 0) {
            current += self.wake_sleepers(&mut st, desired - current, &mut active);
        }
        // Sleepers beyond what the policy keeps asleep (and the warm replicas it wants but
        // cannot have awake now) are stopped, the oldest first.
        let keep = decision.asleep + desired.saturating_sub(current);
        let mut sleepers: Vec<usize> = (0..st.replicas.len())
            .filter(|&i| st.replicas[i].view.state == ReplicaState::Asleep)
            .collect();
        sleepers.sort_by_key(|&i| std::cmp::Reverse(st.replicas[i].started));
        let draining_to_sleep = st
            .replicas
            .iter()
            .filter(|r| r.sleeping() && r.view.state != ReplicaState::Asleep)
            .count();
        for &i in sleepers
            .iter()
            .skip((keep as usize).saturating_sub(draining_to_sleep))
        {
            let r = &mut st.replicas[i];
            tracing::info!(pool = %self.config.name, replica = %r.view.name, "stopping a sleeping replica");
            r.view.state = ReplicaState::Draining;
            r.tell(Want::Stop);
        }
        if desired > current {
            let starts = st.backoff.starts_allowed(desired - current, Instant::now());
            match (self.config.gpu, self.gpus.clone()) {
                (Some(need), Some(gpus)) => {
                    drop(st);
                    self.start_on_gpus(starts, need, &gpus, obs);
                }
                _ => {
                    for _ in 0..starts {
                        self.start_replica(&mut st, Vec::new(), None);
                    }
                }
            }
        } else if desired < current {
            let candidates: Vec<Candidate> = active
                .iter()
                .map(|&i| {
                    let r = &st.replicas[i];
                    Candidate {
                        state: r.view.state,
                        in_flight: r.report.in_flight.load(Ordering::Relaxed),
                        started_at_ms: r.view.started_at_ms,
                    }
                })
                .collect();
            let can_sleep = self.config.sleep.is_some();
            let mut sleepers = st.replicas.iter().filter(|r| r.sleeping()).count() as u32;
            for v in scale_down_victims(&candidates, (current - desired) as usize) {
                let r = &mut st.replicas[active[v]];
                let idle = r.view.state == ReplicaState::Ready
                    && r.report.in_flight.load(Ordering::Relaxed) == 0;
                let want = if can_sleep && idle && sleepers < decision.asleep {
                    sleepers += 1;
                    Want::Sleep
                } else {
                    Want::Stop
                };
                tracing::info!(pool = %self.config.name, replica = %r.view.name, then = ?want, "draining replica");
                r.view.state = ReplicaState::Draining;
                r.tell(want);
            }
            self.update_gauges(&st);
        }
    }

    /// Wakes up to `count` sleeping replicas (newest first; on GPUs, only those whose
    /// devices have room again); returns how many. Each joins `active`.
    fn wake_sleepers(&self, st: &mut PoolState, count: u32, active: &mut Vec<usize>) -> u32 {
        let mut asleep: Vec<usize> = (0..st.replicas.len())
            .filter(|&i| st.replicas[i].view.state == ReplicaState::Asleep)
            .collect();
        asleep.sort_by_key(|&i| std::cmp::Reverse(st.replicas[i].started));
        let mut woken = 0;
        for i in asleep {
            if woken == count {
                break;
            }
            let r = &mut st.replicas[i];
            if let (Some(need), Some(gpus)) = (self.config.gpu, &self.gpus)
                && !gpus.reserve_on(&self.config.name, &r.view.name, need, &r.view.gpus)
            {
                continue;
            }
            tracing::info!(pool = %self.config.name, replica = %r.view.name, "waking replica");
            r.view.state = ReplicaState::Waking;
            r.tell(Want::Serve);
            active.push(i);
            woken += 1;
        }
        if woken > 0 {
            self.update_gauges(st);
        }
        woken
    }

    /// Starts up to `starts` replicas where the GPUs have room, making room for a pool with
    /// work waiting (see [`Gpus::place`]); the rest wait for room, and the pool is told when
    /// memory frees. Called without the pool's lock (placement reads other pools).
    fn start_on_gpus(self: &Arc<Self>, starts: u32, need: GpuNeed, gpus: &Gpus, obs: &Observation) {
        for _ in 0..starts {
            let (name, since, first, idle_after_eviction) = {
                let mut st = self.lock();
                let first = st.gpu.since.is_none();
                let since = *st.gpu.since.get_or_insert((Instant::now(), unix_ms()));
                (
                    self.replica_name(st.next_replica + 1),
                    since.0,
                    first,
                    st.gpu.idle_after_eviction,
                )
            };
            let waited = since.elapsed();
            if idle_after_eviction && obs.work() == 0 {
                return;
            }
            let has_work = obs.pending > 0;
            // A turn lasts at least a few of this pool's cold starts: swaps must not eat
            // the GPU's time.
            let cold = obs.cold_start.unwrap_or(0.0) * TURN_COLD_STARTS;
            let turn = gpus.turn().max(Duration::from_secs_f64(cold));
            match gpus.place(
                self,
                &name,
                need,
                since,
                has_work,
                has_work && waited >= turn,
            ) {
                Placement::On(devices) => {
                    let power = gpus.power_of(&name);
                    let mut st = self.lock();
                    st.gpu.since = None;
                    self.start_replica(&mut st, devices, power);
                }
                Placement::Wait => {
                    if first {
                        tracing::info!(pool = %self.config.name, "no GPU has room for a replica now; its jobs wait{}", if has_work { " while room is made" } else { "" });
                    }
                    return;
                }
            }
        }
    }

    fn replica_name(&self, n: u64) -> String {
        format!("{}-{n}", self.config.name)
    }

    fn start_replica(self: &Arc<Self>, st: &mut PoolState, gpus: Vec<u32>, power_w: Option<f64>) {
        if let Some(w) = power_w {
            st.usage.replica_power_w = Some(st.usage.replica_power_w.unwrap_or(0.0).max(w));
        }
        st.next_replica += 1;
        let name = self.replica_name(st.next_replica);
        let (want, want_rx) = watch::channel(Want::Serve);
        let report = Arc::new(WorkerReport::default());
        st.replicas.push(ReplicaEntry {
            view: ReplicaView {
                name: name.clone(),
                state: ReplicaState::Starting,
                started_at_ms: unix_ms(),
                cold_start_s: None,
                port: None,
                pgid: None,
                in_flight: 0,
                gpus: gpus.clone(),
                asleep_host_bytes: None,
            },
            power_w,
            awake_since: Some(Instant::now()),
            started: Instant::now(),
            report: report.clone(),
            want,
        });
        st.usage.peak_replicas = st.usage.peak_replicas.max(st.replicas.len() as u32);
        self.metrics.replica_started();
        self.update_gauges(st);
        tracing::info!(pool = %self.config.name, replica = %name, ?gpus, "starting replica");
        tokio::spawn(self.clone().run_replica(name, want_rx, report, gpus));
    }

    fn update_gauges(&self, st: &PoolState) {
        let count =
            |s: ReplicaState| st.replicas.iter().filter(|r| r.view.state == s).count() as u32;
        self.metrics.set_replicas(
            count(ReplicaState::Starting) + count(ReplicaState::Waking),
            count(ReplicaState::Ready),
            count(ReplicaState::Draining),
            count(ReplicaState::Asleep),
        );
    }

    fn with_replica(&self, name: &str, f: impl FnOnce(&mut ReplicaEntry)) {
        let mut st = self.lock();
        if let Some(r) = st.replicas.iter_mut().find(|r| r.view.name == name) {
            f(r);
        }
        self.update_gauges(&st);
        drop(st);
        self.changed.notify_one();
    }

    fn failed(&self, replica: &str, why: String) {
        let mut st = self.lock();
        let wait = st.backoff.failed(why.clone(), Instant::now());
        tracing::error!(
            pool = %self.config.name,
            replica,
            failures_in_a_row = st.backoff.failures,
            retry_in_s = wait.as_secs_f64(),
            "{why}; queued jobs stay queued until a replica starts"
        );
        self.metrics.failure();
    }

    /// The life of one replica: start (its server, until healthy), serve (a worker until
    /// told to stop or sleep, or the server dies), sleep and wake as told, stop (the
    /// server). However it ends, it is retired once, when `_retire` goes.
    async fn run_replica(
        self: Arc<Self>,
        name: String,
        mut want: watch::Receiver<Want>,
        report: Arc<WorkerReport>,
        gpus: Vec<u32>,
    ) {
        let _retire = Retire {
            pool: &self,
            name: &name,
            started: Instant::now(),
        };
        let Some(mut server) = self.start(&name, &mut want, &gpus).await else {
            return;
        };
        let served = loop {
            let served = self
                .serve(&name, &mut server, want.clone(), report.clone())
                .await;
            if !matches!(served, Served::Stopped) || *want.borrow() != Want::Sleep {
                break served;
            }
            match self.sleep_until_woken(&name, &mut server, &mut want).await {
                Slept::Woken => continue,
                Slept::Stop => break Served::Stopped,
            }
        };
        self.stop_server(&name, server.process, served).await;
    }

    /// Puts the drained replica's server to sleep, gives its GPU memory back, and waits
    /// until it is told to serve again (then wakes it, measuring the wake) or to stop.
    async fn sleep_until_woken(
        &self,
        name: &str,
        server: &mut Server,
        want: &mut watch::Receiver<Want>,
    ) -> Slept {
        let (Some(sleeper), Some(process)) = (&server.sleeper, server.process.as_mut()) else {
            return Slept::Stop;
        };
        let timeout = self.config.startup_timeout;
        if let Err(e) = sleeper.sleep(timeout).await {
            tracing::warn!(pool = %self.config.name, replica = name, error = %e, "could not put the model server to sleep; stopping it instead");
            return Slept::Stop;
        }
        let host = group_rss_bytes(process.pid());
        self.with_replica(name, |r| {
            r.view.state = ReplicaState::Asleep;
            r.view.asleep_host_bytes = host;
        });
        {
            let mut st = self.lock();
            st.sleeps += 1;
        }
        self.metrics.slept();
        self.gpus_released(name);
        tracing::info!(pool = %self.config.name, replica = name, host_memory = host.map(greenscale_core::format_bytes).unwrap_or_else(|| "unknown".into()), "replica asleep (its GPU memory given back)");
        let told = tokio::select! {
            w = want.wait_for(|w| *w != Want::Sleep) => w.map(|w| *w).unwrap_or(Want::Stop),
            status = process.exited() => {
                tracing::warn!(pool = %self.config.name, replica = name, status = ?status, "a sleeping model server exited");
                Want::Stop
            }
        };
        if told != Want::Serve {
            return Slept::Stop;
        }
        match sleeper.wake(timeout).await {
            Ok(took) => {
                let secs = took.as_secs_f64();
                let mut st = self.lock();
                st.wakes.add(secs);
                drop(st);
                self.metrics.woke(secs);
                tracing::info!(pool = %self.config.name, replica = name, wake_s = secs, "replica awake");
                self.with_replica(name, |r| {
                    r.view.state = ReplicaState::Ready;
                    r.awake_since = Some(Instant::now());
                });
                Slept::Woken
            }
            Err(e) => {
                self.failed(name, format!("replica {name}: waking failed: {e}"));
                Slept::Stop
            }
        }
    }

    /// Starts the replica's model server and waits until it is healthy (a remote API is
    /// ready at once). `None` when it failed (recorded) or was told to stop meanwhile; no
    /// process is left running then.
    async fn start(
        &self,
        name: &str,
        want: &mut watch::Receiver<Want>,
        gpus: &[u32],
    ) -> Option<Server> {
        let started = Instant::now();
        let (command, health_path) = match &self.config.backend {
            PoolBackend::Remote { url, api_key } => {
                self.ready(name, None);
                return Some(Server {
                    url: url.clone(),
                    api_key: api_key.clone(),
                    process: None,
                    sleeper: None,
                });
            }
            PoolBackend::Command {
                command,
                health_path,
            } => (command, health_path),
        };
        let env = self
            .config
            .sleep
            .as_ref()
            .map(|s| s.env())
            .unwrap_or_default();
        let spawned = free_port().and_then(|port| {
            ModelProcess::spawn(
                &self.guard,
                Launch {
                    command,
                    port,
                    gpus,
                    env: &env,
                    stop_timeout: self.config.stop_timeout,
                },
                &self.config.name,
                name,
            )
        });
        let mut process = match spawned {
            Ok(p) => p,
            Err(e) => {
                self.failed(name, StartError::Spawn(e.to_string()).to_string());
                return None;
            }
        };
        let port = process.port;
        let pgid = process.pid();
        self.with_replica(name, |r| {
            r.view.port = Some(port);
            r.view.pgid = Some(pgid);
        });
        let base = format!("http://127.0.0.1:{port}");
        let health = format!("{base}{health_path}");
        let sleeper = self.config.sleep.clone().map(|calls| {
            Sleeper::new(
                base.clone(),
                calls,
                self.config.upstream_model().to_string(),
                health_path.clone(),
            )
        });
        let timeout = self.config.startup_timeout;
        let loaded = async {
            let healthy = wait_healthy(&mut process, &health, started, timeout).await?;
            match &sleeper {
                // A router starts with no model loaded: loading it is part of the start.
                Some(s) if s.wake_at_start() => s
                    .wake(timeout)
                    .await
                    .map(|_| started.elapsed())
                    .map_err(|e| StartError::Spawn(format!("loading the model: {e}"))),
                _ => Ok(healthy),
            }
        };
        let outcome = tokio::select! {
            r = loaded => Some(r),
            _ = want.wait_for(|w| *w == Want::Stop) => None,
        };
        match outcome {
            Some(Ok(cold_start)) => {
                self.ready(name, Some(cold_start));
                Some(Server {
                    url: format!("{base}/v1"),
                    api_key: None,
                    process: Some(process),
                    sleeper,
                })
            }
            Some(Err(e)) => {
                process.stop(self.config.stop_timeout).await;
                self.failed(name, format!("replica {name}: {e}"));
                None
            }
            None => {
                tracing::info!(pool = %self.config.name, replica = %name, "stopped while starting");
                process.stop(self.config.stop_timeout).await;
                None
            }
        }
    }

    /// Runs the replica's worker against `server` until told to stop or the server exits;
    /// the worker is gone when this returns (its connections too: a server's graceful
    /// shutdown would wait on them).
    async fn serve(
        self: &Arc<Self>,
        name: &str,
        server: &mut Server,
        mut want: watch::Receiver<Want>,
        report: Arc<WorkerReport>,
    ) -> Served {
        let model = self.config.upstream_model().to_string();
        let backend = match OpenAiBackend::new(OpenAiConfig {
            url: server.url.clone(),
            api_key: server.api_key.clone(),
            model: model.clone(),
            fixed_model: Some(model),
            ..OpenAiConfig::default()
        }) {
            Ok(b) => Arc::new(b),
            Err(e) => return Served::NoWorker(format!("replica {name}: {e}")),
        };
        let mut config = WorkerConfig::new(format!("{}-{name}", default_worker_id()), self.lease);
        config.concurrency = self.config.concurrency as usize;
        config.grace = self.config.drain_grace;
        config.turns = Some(self.turns.clone());
        let server_gone = Arc::new(Notify::new());
        let shutdown = {
            let (pool, name, server_gone) = (self.clone(), name.to_string(), server_gone.clone());
            async move {
                tokio::select! {
                    _ = want.wait_for(|w| *w != Want::Serve) => {}
                    _ = server_gone.notified() => {}
                }
                pool.with_replica(&name, |r| r.view.state = ReplicaState::Draining);
            }
        };
        let worker = run_worker(self.queue.clone(), backend, config, report, shutdown);
        tokio::pin!(worker);
        match server.process.as_mut() {
            Some(p) => tokio::select! {
                _ = &mut worker => Served::Stopped,
                status = p.exited() => {
                    server_gone.notify_one();
                    worker.await;
                    Served::ServerExited(match status {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    })
                }
            },
            None => {
                worker.await;
                Served::Stopped
            }
        }
    }

    /// Stops the replica's model server (if any) and records how the replica ended.
    async fn stop_server(&self, name: &str, process: Option<ModelProcess>, served: Served) {
        let how = match process {
            Some(p) => Some(p.stop(self.config.stop_timeout).await),
            None => None,
        };
        match (served, how) {
            (Served::NoWorker(why), _) => self.failed(name, why),
            (Served::ServerExited(status), _) => self.failed(
                name,
                format!("replica {name}: the model server exited unexpectedly ({status}); its jobs are retried and it is replaced"),
            ),
            (Served::Stopped, Some(StopOutcome::Killed)) => tracing::warn!(
                pool = %self.config.name, replica = %name,
                stop_timeout_s = self.config.stop_timeout.as_secs_f64(),
                "model server ignored SIGTERM; killed"
            ),
            (Served::Stopped, _) => {
                tracing::info!(pool = %self.config.name, replica = %name, "replica stopped")
            }
        }
    }

    fn ready(&self, name: &str, cold_start: Option<Duration>) {
        let mut st = self.lock();
        if let Some(cs) = cold_start {
            let secs = cs.as_secs_f64();
            st.cold_starts.add(secs);
            self.metrics.cold_start(secs);
            tracing::info!(pool = %self.config.name, replica = %name, cold_start_s = secs, "replica ready");
        } else {
            tracing::info!(pool = %self.config.name, replica = %name, "replica ready (remote API)");
        }
        st.backoff.succeeded();
        if let Some(r) = st.replicas.iter_mut().find(|r| r.view.name == name) {
            r.view.cold_start_s = cold_start.map(|d| d.as_secs_f64());
            if r.view.state == ReplicaState::Starting {
                r.view.state = ReplicaState::Ready;
            }
        }
        self.update_gauges(&st);
        drop(st);
        self.changed.notify_one();
    }

    fn retire(&self, name: &str, started: Instant) {
        self.gpus_released(name);
        let mut st = self.lock();
        if let Some(i) = st.replicas.iter().position(|r| r.view.name == name) {
            let r = st.replicas.remove(i);
            st.usage.retired_runs += r.report.runs.load(Ordering::Relaxed);
            st.usage.retired_run_time_us += r.report.run_time_us.load(Ordering::Relaxed);
        }
        let lived = started.elapsed().as_secs_f64();
        st.usage.retired_replica_seconds += lived;
        self.metrics.replica_seconds(lived);
        self.update_gauges(&st);
        drop(st);
        self.changed.notify_one();
    }

    /// `replica` gave its GPUs back (asleep or gone): the energy of its awake period is
    /// counted — read from the GPUs' counters where the driver has them, else estimated
    /// from its share of their board power. Called without the pool's lock (the budget is
    /// locked before pools' states elsewhere).
    fn gpus_released(&self, replica: &str) {
        let Some(g) = &self.gpus else {
            return;
        };
        let measured = g.release(replica);
        let mut st = self.lock();
        let estimated = st
            .replicas
            .iter_mut()
            .find(|r| r.view.name == replica)
            .map(|r| {
                let j = r.awake_joules();
                r.awake_since = None;
                j
            })
            .unwrap_or(0.0);
        st.usage.retired_joules += estimated;
        match measured {
            Some(j) => {
                st.usage.measured_joules += j;
                self.metrics.energy(j);
            }
            None => self.metrics.energy(estimated),
        }
    }

    /// This pool's replicas that could be evicted for another pool, with the expected loss
    /// of each: its pool's next cold start (measured mean, else 1 s), discounted by how long
    /// the pool has had no work (an hour idle weighs a sixtieth of a minute idle). Ready
    /// and idle replicas only — with `busy_too` (the other pool waited past its turn),
    /// busy ones as well; they are drained, so their jobs finish.
    pub(crate) fn eviction_candidates(&self, busy_too: bool) -> Vec<EvictionCandidate> {
        let st = self.lock();
        let idle_s = st
            .gpu
            .last_busy
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(f64::INFINITY);
        let cold_start = st.cold_starts.mean().unwrap_or(1.0);
        let loss = cold_start / (1.0 + idle_s.min(1e9) / 60.0);
        st.replicas
            .iter()
            .filter(|r| !r.view.gpus.is_empty() && r.view.state == ReplicaState::Ready)
            .filter(|r| busy_too || r.report.in_flight.load(Ordering::Relaxed) == 0)
            .map(|r| EvictionCandidate {
                replica: r.view.name.clone(),
                loss,
            })
            .collect()
    }

    /// Drains `replica` to give its GPU memory to pool `for_pool`: it takes no new jobs,
    /// and those it runs finish before it stops.
    pub(crate) fn evict(&self, replica: &str, for_pool: &str) {
        let mut st = self.lock();
        let Some(r) = st
            .replicas
            .iter_mut()
            .find(|r| r.view.name == replica && r.view.state != ReplicaState::Draining)
        else {
            return;
        };
        let in_flight = r.report.in_flight.load(Ordering::Relaxed);
        let then = if self.config.sleep.is_some() {
            Want::Sleep
        } else {
            Want::Stop
        };
        tracing::info!(pool = %self.config.name, replica, for_pool, in_flight, ?then, "evicting replica to make room on the GPU");
        r.view.state = ReplicaState::Draining;
        r.tell(then);
        st.gpu.evicted += 1;
        st.gpu.idle_after_eviction = true;
        self.metrics.evicted();
        self.update_gauges(&st);
    }

    /// GPU memory was freed somewhere: decide again now.
    pub(crate) fn capacity_changed(&self) {
        self.changed.notify_one();
    }

    /// Each replica's name and state.
    pub(crate) fn replica_states(&self) -> Vec<(String, ReplicaState)> {
        self.lock()
            .replicas
            .iter()
            .map(|r| (r.view.name.clone(), r.view.state))
            .collect()
    }

    /// Replicas not yet stopped.
    pub fn replica_count(&self) -> usize {
        self.lock().replicas.len()
    }

    /// Tells every replica to drain and stop.
    pub fn stop_all(&self) {
        let mut st = self.lock();
        for r in &mut st.replicas {
            if r.view.state != ReplicaState::Draining {
                tracing::info!(pool = %self.config.name, replica = %r.view.name, "draining replica");
            }
            r.view.state = ReplicaState::Draining;
            r.tell(Want::Stop);
        }
        self.update_gauges(&st);
    }

    /// Waits until every replica has stopped.
    pub async fn stopped(&self) {
        loop {
            let wait = self.changed.notified();
            if self.replica_count() == 0 {
                return;
            }
            wait.await;
        }
    }

    /// The pool's state now.
    pub fn status(&self) -> PoolStatus {
        let st = self.lock();
        let live: f64 = st
            .replicas
            .iter()
            .map(|r| r.started.elapsed().as_secs_f64())
            .sum();
        PoolStatus {
            name: self.config.name.clone(),
            demo: self.config.demo,
            kind: match self.config.backend {
                PoolBackend::Command { .. } => PoolKind::Command,
                PoolBackend::Remote { .. } => PoolKind::Remote,
            },
            policy: self.config.policy.to_string(),
            concurrency: self.config.concurrency,
            min_replicas: self.config.min_replicas,
            max_replicas: self.config.max_replicas,
            cost_per_hour: self.config.cost_per_hour,
            currency: self.config.currency.clone(),
            replicas: st
                .replicas
                .iter()
                .map(|r| ReplicaView {
                    in_flight: r.report.in_flight.load(Ordering::Relaxed),
                    ..r.view.clone()
                })
                .collect(),
            pending: st.usage.last_pending,
            in_flight: st.usage.last_in_flight,
            last_decision: st.decisions.last.clone(),
            decisions: st.decisions.kept.iter().cloned().collect(),
            cold_starts: st.cold_starts.view(),
            wakes: st.wakes.view(),
            sleeps: st.sleeps,
            sleep_engine: self
                .config
                .sleep
                .as_ref()
                .map(|s| s.engine.name().to_string()),
            replica_seconds: st.usage.retired_replica_seconds + live,
            since_ms: self.since_ms,
            peak_replicas: st.usage.peak_replicas,
            failures_in_a_row: st.backoff.failures,
            last_failure: st.backoff.last_failure.clone(),
            gpu_need: self.config.gpu,
            evicted: st.gpu.evicted,
            waiting_for_gpu_since_ms: st.gpu.since.map(|(_, ms)| ms),
            energy: self.energy(&st, live),
        }
    }

    /// The pool's GPU energy so far, next to its peak of replicas always on: read from the
    /// GPUs' counters where the driver has them (always-on at the mean power its replicas
    /// drew), else estimated from board power; `None` when neither is known.
    /// `live_s` is the replica-seconds of the replicas still there.
    fn energy(&self, st: &PoolState, live_s: f64) -> Option<Energy> {
        let gpus = self.gpus.as_ref()?;
        let period_s = self.epoch.elapsed().as_secs_f64();
        let peak = f64::from(st.usage.peak_replicas);
        let grid_g_per_kwh = gpus.grid_intensity();
        if gpus.measures_energy() {
            let live: f64 = st
                .replicas
                .iter()
                .filter_map(|r| gpus.measured_joules(&r.view.name))
                .sum();
            let joules = st.usage.measured_joules + live;
            let replica_s = st.usage.retired_replica_seconds + live_s;
            let mean_w = if replica_s > 0.0 {
                joules / replica_s
            } else {
                0.0
            };
            return Some(Energy {
                kwh: joules / 3.6e6,
                always_on_kwh: peak * mean_w * period_s / 3.6e6,
                estimated: false,
                grid_g_per_kwh,
            });
        }
        let peak_w = st.usage.replica_power_w?;
        let live: f64 = st.replicas.iter().map(ReplicaEntry::awake_joules).sum();
        Some(Energy {
            kwh: (st.usage.retired_joules + live) / 3.6e6,
            always_on_kwh: peak * peak_w * period_s / 3.6e6,
            estimated: true,
            grid_g_per_kwh,
        })
    }

    pub(crate) async fn wait_for_event(&self, tick: Duration) -> bool {
        tokio::select! {
            _ = self.arrivals.notified() => true,
            _ = self.changed.notified() => false,
            _ = tokio::time::sleep(tick) => false,
        }
    }
}
