//! One pool at run time: its replicas (each a model server, or none for a remote API, plus
//! an in-process worker leasing the pool's jobs), what was measured about them, and the
//! record of scaling decisions.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use greenscale_core::policy::{Decision, Observation, PoolShape, Reason, ReplicaCounts, mean};
use greenscale_core::status::{
    ColdStarts, DecisionRecord, PoolKind, PoolStatus, ReplicaState, ReplicaView,
};
use greenscale_core::{Queue, QueueError};
use greenscale_worker::{
    LeaseTurns, OpenAiBackend, OpenAiConfig, WorkerConfig, WorkerReport, default_worker_id,
    run_worker,
};
use tokio::sync::{Notify, watch};

use crate::config::{PoolBackend, PoolConfig};
use crate::metrics::PoolMetrics;
use crate::process::{
    GuardProgram, ModelProcess, StartError, StopOutcome, free_port, wait_healthy,
};

/// Decisions kept per pool for the dashboard and `greenscale status`.
const DECISIONS_KEPT: usize = 200;
/// Cold starts kept per pool for percentiles.
const COLD_STARTS_KEPT: usize = 1000;
/// Longest wait before another start after failed starts or crashes.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct ReplicaEntry {
    view: ReplicaView,
    started: Instant,
    report: Arc<WorkerReport>,
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct PoolState {
    replicas: Vec<ReplicaEntry>,
    next_replica: u64,
    cold_starts: VecDeque<f64>,
    cold_start_count: u64,
    decisions: VecDeque<DecisionRecord>,
    last_decision: Option<DecisionRecord>,
    last_reason_kind: Option<std::mem::Discriminant<Reason>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_failure: Option<String>,
    /// Runs and run time of replicas that are gone.
    retired_runs: u64,
    retired_run_time_us: u64,
    retired_replica_seconds: f64,
    last_pending: u64,
    last_in_flight: u64,
    peak_replicas: u32,
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
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Pool {
    /// A pool with no replicas yet, taking its jobs from `queue` (whose workers hold leases
    /// of `lease`), starting local model servers under `guard`.
    pub fn new(
        config: PoolConfig,
        queue: Arc<dyn Queue>,
        lease: Duration,
        guard: GuardProgram,
        metrics: PoolMetrics,
    ) -> Arc<Pool> {
        Arc::new(Pool {
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
        })
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
        st.last_pending = stats.pending + stats.delayed;
        st.last_in_flight = stats.in_flight;
        let count =
            |s: ReplicaState| st.replicas.iter().filter(|r| r.view.state == s).count() as u32;
        let (ready, starting) = (count(ReplicaState::Ready), count(ReplicaState::Starting));
        let busy = st
            .replicas
            .iter()
            .filter(|r| {
                r.view.state == ReplicaState::Ready
                    && r.report.in_flight.load(Ordering::Relaxed) > 0
            })
            .count() as u32;
        let (mut runs, mut run_us) = (st.retired_runs, st.retired_run_time_us);
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
            },
            PoolShape {
                concurrency: self.config.concurrency,
                max_replicas: self.config.max_replicas,
            },
            mean(st.cold_starts.iter().copied()),
            (runs > 0).then(|| run_us as f64 / 1e6 / runs as f64),
        ))
    }

    /// Applies a decision: starts or drains replicas to reach `desired` within the pool's
    /// limits, and records the decision when it differs from the last one.
    pub fn apply(self: &Arc<Self>, decision: &Decision, obs: &Observation, on_arrival: bool) {
        let desired = decision
            .desired
            .clamp(self.config.min_replicas, self.config.max_replicas);
        let mut st = self.lock();
        let active: Vec<usize> = (0..st.replicas.len())
            .filter(|&i| st.replicas[i].view.state != ReplicaState::Draining)
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
        let kind = std::mem::discriminant(&decision.reason);
        let same_as_last = st
            .last_decision
            .as_ref()
            .is_some_and(|d| d.desired == record.desired)
            && st.last_reason_kind == Some(kind);
        st.last_reason_kind = Some(kind);
        if !same_as_last {
            if desired != current {
                tracing::info!(pool = %self.config.name, current, desired, reason = %record.reason, "scaling");
            } else {
                tracing::debug!(pool = %self.config.name, current, desired, reason = %record.reason, "decision");
            }
            st.decisions.push_back(record.clone());
            if st.decisions.len() > DECISIONS_KEPT {
                st.decisions.pop_front();
            }
            self.metrics.decision(desired);
        }
        st.last_decision = Some(record);

        if desired > current {
            if let Some(at) = st.retry_at
                && Instant::now() < at
            {
                return;
            }
            // After failures, try one replica at a time until one works.
            let starts = if st.failures > 0 {
                1
            } else {
                desired - current
            };
            for _ in 0..starts {
                self.start_replica(&mut st);
            }
        } else if desired < current {
            let mut order = active;
            // Stop replicas without work first (idle ready ones, newest first, then
            // starting ones), and busy ones last — the policy never asks for fewer
            // replicas than hold work, but the limits might.
            order.sort_by_key(|&i| {
                let r = &st.replicas[i];
                let in_flight = r.report.in_flight.load(Ordering::Relaxed);
                let rank = match (r.view.state, in_flight) {
                    (ReplicaState::Ready, 0) => 0,
                    (ReplicaState::Starting, _) => 1,
                    _ => 2,
                };
                (rank, in_flight, std::cmp::Reverse(r.view.started_at_ms))
            });
            for &i in order.iter().take((current - desired) as usize) {
                let r = &mut st.replicas[i];
                tracing::info!(pool = %self.config.name, replica = %r.view.name, "draining replica");
                r.view.state = ReplicaState::Draining;
                let _ = r.stop.send(true);
            }
            self.update_gauges(&st);
        }
    }

    fn start_replica(self: &Arc<Self>, st: &mut PoolState) {
        st.next_replica += 1;
        let name = format!("{}-{}", self.config.name, st.next_replica);
        let (stop, stop_rx) = watch::channel(false);
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
            },
            started: Instant::now(),
            report: report.clone(),
            stop,
        });
        st.peak_replicas = st.peak_replicas.max(st.replicas.len() as u32);
        self.metrics.replica_started();
        self.update_gauges(st);
        tracing::info!(pool = %self.config.name, replica = %name, "starting replica");
        tokio::spawn(self.clone().run_replica(name, stop_rx, report));
    }

    fn update_gauges(&self, st: &PoolState) {
        let count =
            |s: ReplicaState| st.replicas.iter().filter(|r| r.view.state == s).count() as u32;
        self.metrics.set_replicas(
            count(ReplicaState::Starting),
            count(ReplicaState::Ready),
            count(ReplicaState::Draining),
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
        st.failures += 1;
        let backoff = Duration::from_secs(1)
            .saturating_mul(1 << (st.failures - 1).min(6))
            .min(MAX_BACKOFF);
        st.retry_at = Some(Instant::now() + backoff);
        tracing::error!(
            pool = %self.config.name,
            replica,
            failures_in_a_row = st.failures,
            retry_in_s = backoff.as_secs_f64(),
            "{why}; queued jobs stay queued until a replica starts"
        );
        st.last_failure = Some(why);
        self.metrics.failure();
    }

    /// The life of one replica: start its server, wait for health, run a worker until told
    /// to stop (or the server dies), drain, stop the server.
    async fn run_replica(
        self: Arc<Self>,
        name: String,
        mut stop: watch::Receiver<bool>,
        report: Arc<WorkerReport>,
    ) {
        let started = Instant::now();
        let (url, api_key, mut process) = match &self.config.backend {
            PoolBackend::Remote { url, api_key } => (url.clone(), api_key.clone(), None),
            PoolBackend::Command {
                command,
                health_path,
            } => {
                let spawned = free_port().and_then(|port| {
                    ModelProcess::spawn(
                        &self.guard,
                        command,
                        port,
                        self.config.stop_timeout,
                        &self.config.name,
                        &name,
                    )
                });
                let mut process = match spawned {
                    Ok(p) => p,
                    Err(e) => {
                        self.failed(&name, StartError::Spawn(e.to_string()).to_string());
                        self.retire(&name, started);
                        return;
                    }
                };
                let port = process.port;
                let pgid = process.pid();
                self.with_replica(&name, |r| {
                    r.view.port = Some(port);
                    r.view.pgid = Some(pgid);
                });
                let health = format!("http://127.0.0.1:{port}{health_path}");
                let outcome = tokio::select! {
                    r = wait_healthy(&mut process, &health, started, self.config.startup_timeout) => Some(r),
                    _ = stop.wait_for(|s| *s) => None,
                };
                match outcome {
                    Some(Ok(cold_start)) => {
                        self.ready(&name, Some(cold_start));
                    }
                    Some(Err(e)) => {
                        process.stop(self.config.stop_timeout).await;
                        self.failed(&name, format!("replica {name}: {e}"));
                        self.retire(&name, started);
                        return;
                    }
                    None => {
                        tracing::info!(pool = %self.config.name, replica = %name, "stopped while starting");
                        process.stop(self.config.stop_timeout).await;
                        self.retire(&name, started);
                        return;
                    }
                }
                (format!("http://127.0.0.1:{port}/v1"), None, Some(process))
            }
        };
        if process.is_none() {
            self.ready(&name, None);
        }
        let model = self.config.upstream_model().to_string();
        let backend = match OpenAiBackend::new(OpenAiConfig {
            url,
            api_key,
            model: model.clone(),
            fixed_model: Some(model),
            ..OpenAiConfig::default()
        }) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                self.failed(&name, format!("replica {name}: {e}"));
                if let Some(p) = process {
                    p.stop(self.config.stop_timeout).await;
                }
                self.retire(&name, started);
                return;
            }
        };
        let mut config = WorkerConfig::new(format!("{}-{name}", default_worker_id()), self.lease);
        config.concurrency = self.config.concurrency as usize;
        config.grace = self.config.drain_grace;
        config.turns = Some(self.turns.clone());
        let server_gone = Arc::new(Notify::new());
        let shutdown = {
            let (pool, name, server_gone) = (self.clone(), name.clone(), server_gone.clone());
            async move {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    _ = server_gone.notified() => {}
                }
                pool.with_replica(&name, |r| r.view.state = ReplicaState::Draining);
            }
        };
        let crashed = {
            // The worker (and its connections to the server) must be gone before the server
            // is stopped, or the server's graceful shutdown waits on them.
            let worker = run_worker(self.queue.clone(), backend, config, report, shutdown);
            tokio::pin!(worker);
            match process.as_mut() {
                Some(p) => tokio::select! {
                    _ = &mut worker => None,
                    status = p.exited() => {
                        server_gone.notify_one();
                        worker.await;
                        Some(match status {
                            Ok(s) => s.to_string(),
                            Err(e) => e.to_string(),
                        })
                    }
                },
                None => {
                    worker.await;
                    None
                }
            }
        };
        if let Some(p) = process {
            let how = p.stop(self.config.stop_timeout).await;
            match (&crashed, how) {
                (Some(status), _) => self.failed(
                    &name,
                    format!("replica {name}: the model server exited unexpectedly ({status}); its jobs are retried and it is replaced"),
                ),
                (None, StopOutcome::Killed) => tracing::warn!(
                    pool = %self.config.name, replica = %name,
                    stop_timeout_s = self.config.stop_timeout.as_secs_f64(),
                    "model server ignored SIGTERM; killed"
                ),
                (None, _) => tracing::info!(pool = %self.config.name, replica = %name, "replica stopped"),
            }
        } else {
            tracing::info!(pool = %self.config.name, replica = %name, "replica stopped");
        }
        self.retire(&name, started);
    }

    fn ready(&self, name: &str, cold_start: Option<Duration>) {
        let mut st = self.lock();
        if let Some(cs) = cold_start {
            let secs = cs.as_secs_f64();
            st.cold_starts.push_back(secs);
            if st.cold_starts.len() > COLD_STARTS_KEPT {
                st.cold_starts.pop_front();
            }
            st.cold_start_count += 1;
            self.metrics.cold_start(secs);
            tracing::info!(pool = %self.config.name, replica = %name, cold_start_s = secs, "replica ready");
        } else {
            tracing::info!(pool = %self.config.name, replica = %name, "replica ready (remote API)");
        }
        st.failures = 0;
        st.retry_at = None;
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
        let mut st = self.lock();
        if let Some(i) = st.replicas.iter().position(|r| r.view.name == name) {
            let r = st.replicas.remove(i);
            st.retired_runs += r.report.runs.load(Ordering::Relaxed);
            st.retired_run_time_us += r.report.run_time_us.load(Ordering::Relaxed);
        }
        let lived = started.elapsed().as_secs_f64();
        st.retired_replica_seconds += lived;
        self.metrics.replica_seconds(lived);
        self.update_gauges(&st);
        drop(st);
        self.changed.notify_one();
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
            let _ = r.stop.send(true);
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
        let mut sorted: Vec<f64> = st.cold_starts.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
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
            pending: st.last_pending,
            in_flight: st.last_in_flight,
            last_decision: st.last_decision.clone(),
            decisions: st.decisions.iter().cloned().collect(),
            cold_starts: ColdStarts {
                count: st.cold_start_count,
                last_s: st.cold_starts.back().copied(),
                p50_s: (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) / 2]),
                mean_s: (!sorted.is_empty())
                    .then(|| sorted.iter().sum::<f64>() / sorted.len() as f64),
            },
            replica_seconds: st.retired_replica_seconds + live,
            since_ms: self.since_ms,
            peak_replicas: st.peak_replicas,
            failures_in_a_row: st.failures,
            last_failure: st.last_failure.clone(),
        }
    }

    pub(crate) async fn wait_for_event(&self, tick: Duration) -> bool {
        tokio::select! {
            _ = self.arrivals.notified() => true,
            _ = self.changed.notified() => false,
            _ = tokio::time::sleep(tick) => false,
        }
    }
}
