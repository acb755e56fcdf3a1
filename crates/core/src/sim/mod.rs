//! The trace simulator: replays a trace against policies in virtual time (DESIGN §5).
//!
//! Cost model: a replica costs GPU time from the moment it is started (including its cold
//! start) until it is stopped; it serves up to `concurrency` jobs at once; jobs start in
//! FIFO order on the least-loaded ready replica. The policy is consulted every tick and, if
//! it is push-capable, on every arrival. A replica removed while serving interrupts its
//! jobs; they go back to the front of the queue and run again (as GreenScale's queue would
//! re-deliver them), so every job completes exactly once.
//!
//! With a sleep tier (`SimConfig::sleep`), a replica the policy keeps asleep gives its GPU
//! back and costs `rate` of a warm one per second; waking it takes `wake` seconds (charged
//! as warm time) instead of a cold start.

mod engine;
pub mod oracle;
pub mod plot;
pub mod shared;
pub mod synthetic;
pub mod trace;

use serde::Serialize;

use crate::policy::Spec;
pub use engine::simulate_pool;
pub use shared::{SharedBudget, simulate_shared};
pub use trace::{Format, Job, Pool, ServiceModel, Trace, TraceError};

/// Settings of one simulation (shared by every policy in a run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Seconds from starting a replica to it being ready.
    pub cold_start: f64,
    /// Jobs one replica serves at once.
    pub concurrency: u32,
    /// Seconds between policy ticks.
    pub tick: f64,
    /// The pool's replica limit.
    pub max_replicas: u32,
    /// After the last job, how long a policy may keep replicas before the run ends
    /// (and they stop being charged).
    pub horizon: f64,
    /// The pool's sleep tier, if its replicas can sleep.
    pub sleep: Option<SleepConfig>,
    /// A GPU budget shared by all the trace's pools, if any (see [`shared`]).
    pub shared: Option<SharedBudget>,
    /// The share of jobs (0 to 1) of the batch class: they start after every waiting
    /// interactive job, and policies that know classes may let them wait for warm
    /// capacity. The same jobs are batch for every policy.
    pub batch_share: f64,
}

/// A sleep tier in the simulator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SleepConfig {
    /// Seconds from asleep to ready.
    pub wake: f64,
    /// A sleeper's cost per second as a share of a warm replica's.
    pub rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            cold_start: 30.0,
            concurrency: 8,
            tick: 1.0,
            max_replicas: 20,
            horizon: 4.0 * 3600.0,
            sleep: None,
            shared: None,
            batch_share: 0.0,
        }
    }
}

/// One moment of a simulation, for plots.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Virtual time, seconds.
    pub t: f64,
    /// Replicas (ready + starting).
    pub replicas: u32,
    /// Jobs waiting to start.
    pub pending: u64,
}

/// What one pool's simulation measured.
#[derive(Debug, Clone, Default)]
pub struct PoolOutcome {
    /// Jobs completed.
    pub jobs: u64,
    /// GPU-seconds used (replica lifetimes, cold starts and wakes included, and sleepers
    /// at their rate).
    pub gpu_seconds: f64,
    /// Replicas put to sleep.
    pub sleeps: u64,
    /// Sleepers woken.
    pub wakes: u64,
    /// Replicas of this pool evicted for other pools (a shared GPU budget).
    pub evictions: u64,
    /// Jobs that waited on a cold start.
    pub cold_start_waits: u64,
    /// Jobs that waited on a sleeper's wake.
    pub wake_waits: u64,
    /// Each job's wait (start - arrival), seconds.
    pub waits: Vec<f32>,
    /// Whether each of `waits` is a batch job's.
    pub batch: Vec<bool>,
    /// Jobs with a deadline that started after it.
    pub late: u64,
    /// Job runs cut short by a replica being removed.
    pub interrupted: u64,
    /// Most replicas at once.
    pub peak_replicas: u32,
    /// Decisions that added replicas.
    pub scale_ups: u64,
    /// Replicas started.
    pub cold_starts: u64,
    /// Replica count changes (time, +1/-1), to find the peak over many pools.
    pub changes: Vec<(f64, i8)>,
    /// Per-tick samples, when asked for.
    pub timeline: Vec<Sample>,
}

/// One row of a simulation report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The policy spec.
    pub policy: String,
    /// Jobs served.
    pub jobs: u64,
    /// Jobs never completed before the run ended (a policy that never served them).
    pub unserved: u64,
    /// GPU-seconds used.
    pub gpu_seconds: f64,
    /// The oracle's GPU-seconds for the same trace.
    pub oracle_gpu_seconds: f64,
    /// `gpu_seconds / oracle_gpu_seconds`.
    pub oracle_ratio: f64,
    /// Jobs that waited on a cold start.
    pub cold_start_waits: u64,
    /// Jobs that waited on a sleeper's wake (shorter than a cold start).
    pub wake_waits: u64,
    /// Share of jobs that waited on a cold start, percent.
    pub cold_start_wait_pct: f64,
    /// Median wait, seconds.
    pub wait_p50: f64,
    /// 95th percentile wait, seconds.
    pub wait_p95: f64,
    /// 99th percentile wait, seconds.
    pub wait_p99: f64,
    /// Jobs of the batch class served.
    pub batch_jobs: u64,
    /// 95th percentile wait of interactive jobs, seconds.
    pub interactive_wait_p95: f64,
    /// Median wait of batch jobs, seconds.
    pub batch_wait_p50: f64,
    /// 95th percentile wait of batch jobs, seconds.
    pub batch_wait_p95: f64,
    /// Longest wait of a batch job, seconds.
    pub batch_wait_max: f64,
    /// Batch jobs that started after their deadline.
    pub batch_late: u64,
    /// Job runs interrupted by a replica being removed.
    pub interrupted: u64,
    /// Most replicas at once (over all pools together).
    pub peak_replicas: u32,
    /// Decisions that added replicas.
    pub scale_ups: u64,
    /// Replicas started.
    pub cold_starts: u64,
    /// Replicas put to sleep.
    pub sleeps: u64,
    /// Sleepers woken.
    pub wakes: u64,
    /// Replicas evicted for other pools (with a shared GPU budget).
    pub evictions: u64,
}

/// The q-quantile (nearest rank) of `values`, reordering them.
fn quantile(values: &mut [f32], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
    let (_, v, _) = values.select_nth_unstable_by(rank, f32::total_cmp);
    *v as f64
}

/// The oracle's GPU-seconds for a whole trace.
pub fn oracle(trace: &Trace, cfg: &SimConfig) -> f64 {
    trace
        .pools
        .iter()
        .map(|p| oracle::oracle_gpu_seconds(&p.jobs, cfg.concurrency, cfg.cold_start, cfg.sleep))
        .sum()
}

/// Simulates every pool of `trace` under a fresh instance of the policy in `spec` and sums
/// the results: on all cores when the pools are independent; together in one thread when
/// they share a GPU budget (`cfg.shared`, or the policy's own limit on loaded models).
/// Deterministic: the same inputs give the same report.
pub fn simulate(
    trace: &Trace,
    spec: &Spec,
    cfg: &SimConfig,
    oracle_gpu_seconds: f64,
) -> (Report, Vec<Sample>) {
    let budget = cfg.shared.or_else(|| {
        spec.max_loaded().map(|slots| SharedBudget {
            slots,
            turn: DEFAULT_GPU_TURN,
        })
    });
    let outcomes = match budget {
        Some(budget) => simulate_shared(trace, spec, cfg, budget),
        None => simulate_apart(trace, spec, cfg),
    };
    summarize(trace, spec, oracle_gpu_seconds, outcomes)
}

/// The starvation bound `greenscale up` uses by default (`gpu_turn`), seconds.
pub const DEFAULT_GPU_TURN: f64 = 30.0;

/// Each pool on its own, on all cores.
fn simulate_apart(trace: &Trace, spec: &Spec, cfg: &SimConfig) -> Vec<PoolOutcome> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(trace.pools.len().max(1));
    let record = trace.pools.len() == 1;
    let chunk = trace.pools.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = trace
            .pools
            .chunks(chunk.max(1))
            .map(|pools| {
                s.spawn(move || {
                    pools
                        .iter()
                        .map(|p| {
                            let mut policy = spec.build();
                            simulate_pool(&p.jobs, policy.as_mut(), cfg, record)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread"))
            .collect()
    })
}

/// The report over every pool's outcome.
fn summarize(
    trace: &Trace,
    spec: &Spec,
    oracle_gpu_seconds: f64,
    outcomes: Vec<PoolOutcome>,
) -> (Report, Vec<Sample>) {
    let mut waits: Vec<f32> = Vec::with_capacity(trace.jobs());
    let (mut interactive, mut batch): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    let mut changes: Vec<(f64, i8)> = Vec::new();
    let mut report = Report {
        policy: spec.text().to_string(),
        jobs: 0,
        unserved: 0,
        gpu_seconds: 0.0,
        oracle_gpu_seconds,
        oracle_ratio: 0.0,
        cold_start_waits: 0,
        wake_waits: 0,
        cold_start_wait_pct: 0.0,
        wait_p50: 0.0,
        wait_p95: 0.0,
        wait_p99: 0.0,
        batch_jobs: 0,
        interactive_wait_p95: 0.0,
        batch_wait_p50: 0.0,
        batch_wait_p95: 0.0,
        batch_wait_max: 0.0,
        batch_late: 0,
        interrupted: 0,
        peak_replicas: 0,
        scale_ups: 0,
        cold_starts: 0,
        sleeps: 0,
        wakes: 0,
        evictions: 0,
    };
    let mut timeline = Vec::new();
    for o in outcomes {
        report.jobs += o.jobs;
        report.gpu_seconds += o.gpu_seconds;
        report.cold_start_waits += o.cold_start_waits;
        report.wake_waits += o.wake_waits;
        report.interrupted += o.interrupted;
        report.batch_late += o.late;
        report.scale_ups += o.scale_ups;
        report.cold_starts += o.cold_starts;
        report.sleeps += o.sleeps;
        report.wakes += o.wakes;
        report.evictions += o.evictions;
        report.peak_replicas = report.peak_replicas.max(o.peak_replicas);
        waits.extend_from_slice(&o.waits);
        for (&w, &b) in o.waits.iter().zip(&o.batch) {
            if b { &mut batch } else { &mut interactive }.push(w);
        }
        if trace.pools.len() > 1 {
            changes.extend_from_slice(&o.changes);
        } else {
            timeline = o.timeline;
        }
    }
    if trace.pools.len() > 1 {
        changes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut now = 0i64;
        for (_, d) in changes {
            now += d as i64;
            report.peak_replicas = report.peak_replicas.max(now.max(0) as u32);
        }
    }
    report.unserved = trace.jobs() as u64 - report.jobs;
    report.oracle_ratio = if oracle_gpu_seconds > 0.0 {
        report.gpu_seconds / oracle_gpu_seconds
    } else {
        0.0
    };
    report.cold_start_wait_pct = if report.jobs > 0 {
        100.0 * report.cold_start_waits as f64 / report.jobs as f64
    } else {
        0.0
    };
    report.batch_jobs = batch.len() as u64;
    report.interactive_wait_p95 = quantile(&mut interactive, 0.95);
    report.batch_wait_p50 = quantile(&mut batch, 0.50);
    report.batch_wait_p95 = quantile(&mut batch, 0.95);
    report.batch_wait_max = quantile(&mut batch, 1.0);
    report.wait_p50 = quantile(&mut waits, 0.50);
    report.wait_p95 = quantile(&mut waits, 0.95);
    report.wait_p99 = quantile(&mut waits, 0.99);
    (report, timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(jobs: &[Job], spec: &str, cfg: SimConfig) -> PoolOutcome {
        let mut p = Spec::parse(spec).unwrap().build();
        simulate_pool(jobs, p.as_mut(), &cfg, false)
    }

    fn job(arrival: f64, service: f64) -> Job {
        Job {
            arrival,
            service,
            deadline: None,
        }
    }

    #[test]
    fn one_job_waits_one_cold_start_and_costs_lifetime() {
        let cfg = SimConfig {
            cold_start: 10.0,
            concurrency: 1,
            ..SimConfig::default()
        };
        let o = run(&[job(0.0, 5.0)], "keepalive:20s", cfg);
        assert_eq!(o.jobs, 1);
        assert_eq!(o.cold_start_waits, 1);
        assert_eq!(o.waits, vec![10.0]);
        // Started at 0, ready at 10, busy until 15, kept 20 s after the last need (15 s).
        assert!((o.gpu_seconds - 35.0).abs() <= 1.0, "{}", o.gpu_seconds);
        assert_eq!(o.interrupted, 0);
    }

    #[test]
    fn keda_waits_for_a_poll_and_scales_to_zero_under_long_jobs() {
        let cfg = SimConfig {
            cold_start: 10.0,
            concurrency: 1,
            ..SimConfig::default()
        };
        // A 20 s job arriving at 1 s: the poll at 1 s activates, ready at 11 s, done at 31 s,
        // before the 30 s cooldown (counted from the last poll that saw it, at 6 s) ends.
        let o = run(&[job(1.0, 20.0), job(1.0 + 200.0, 20.0)], "keda-seed", cfg);
        assert_eq!((o.jobs, o.interrupted), (2, 0));
        // The second job arrives at 201 s, between polls (every 5 s from 1 s): it waits for
        // the poll at 201 s... exactly on a poll, so only the cold start.
        assert_eq!(o.waits[1], 10.0);
        let o = run(&[job(1.0, 20.0), job(203.0, 20.0)], "keda-seed", cfg);
        assert_eq!(o.waits[1], 13.0, "3 s to the next poll + 10 s cold start");
        // A 100 s job: the list is empty once it runs, so KEDA scales to zero under it after
        // the cooldown, again and again; it never finishes.
        let o = run(&[job(1.0, 100.0)], "keda-seed", cfg);
        assert_eq!(o.jobs, 0);
        assert!(o.interrupted >= 3, "{}", o.interrupted);
    }

    #[test]
    fn every_job_completes_exactly_once_even_with_interruptions() {
        let jobs: Vec<Job> = (0..200)
            .map(|i| job(i as f64 * 0.7, 3.0 + (i % 7) as f64))
            .collect();
        for spec in [
            "keda-seed",
            "keda-default",
            "knative",
            "keepalive:1m",
            "histogram",
            "greenscale",
        ] {
            let o = run(&jobs, spec, SimConfig::default());
            assert_eq!(o.jobs, 200, "{spec}");
            assert_eq!(o.waits.len(), 200, "{spec}");
        }
    }

    #[test]
    fn greenscale_never_interrupts() {
        let jobs: Vec<Job> = (0..300).map(|i| job((i * i % 997) as f64, 20.0)).collect();
        let mut sorted = jobs.clone();
        sorted.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
        let o = run(&sorted, "greenscale", SimConfig::default());
        assert_eq!(o.interrupted, 0);
    }

    #[test]
    fn a_sleep_tier_turns_middle_gaps_into_wakes_and_costs_less() {
        // A job every 3 to 15 min, unpredictably: too far apart to stay warm (30 s cold
        // start, cold_cost 120), close enough to sleep through with a 3 s wake.
        let mut at = 0.0;
        let jobs: Vec<Job> = (0..30)
            .map(|i| {
                at += 200.0 + (i * 37 % 50) as f64 * 14.0;
                job(at, 2.0)
            })
            .collect();
        let plain = SimConfig {
            concurrency: 1,
            ..SimConfig::default()
        };
        let tiered = SimConfig {
            sleep: Some(SleepConfig {
                wake: 3.0,
                rate: 0.1,
            }),
            ..plain
        };
        let without = run(&jobs, "greenscale", plain);
        let with = run(&jobs, "greenscale", tiered);
        assert_eq!((with.jobs, with.interrupted), (30, 0));
        assert_eq!(without.wakes, 0);
        assert!(with.wakes >= 20, "{} wakes", with.wakes);
        assert!(with.sleeps >= with.wakes);
        assert!(
            with.cold_starts < without.cold_starts / 4,
            "{} cold starts",
            with.cold_starts
        );
        assert!(
            with.gpu_seconds < without.gpu_seconds,
            "{} >= {}",
            with.gpu_seconds,
            without.gpu_seconds
        );
        // Waits are a wake, not a cold start.
        let mut waits = with.waits.clone();
        assert!(quantile(&mut waits, 0.5) <= 3.0);
        // Policies that know no tiers never sleep.
        assert_eq!(run(&jobs, "keepalive:1m", tiered).sleeps, 0);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.95), 95.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
    }
}
