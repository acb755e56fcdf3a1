//! Prometheus metrics of the pools: replicas by state, cold-start durations, starts,
//! failures, evictions, sleeps and wakes, replica-seconds and desired replicas, each
//! labelled with the pool.

use greenscale_core::metrics::{PoolFamilies, PoolLabel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The metric families, registered once; [`AutoscalerMetrics::pool`] hands out one pool's
/// share.
#[derive(Clone)]
pub struct AutoscalerMetrics {
    pools: PoolFamilies,
    desired: Family<PoolLabel, Gauge>,
    starts: Family<PoolLabel, Counter>,
    failures: Family<PoolLabel, Counter>,
    evictions: Family<PoolLabel, Counter>,
    energy: Family<PoolLabel, Counter<f64>>,
    decisions: Family<PoolLabel, Counter>,
    replica_seconds: Family<PoolLabel, Counter<f64>>,
    sleeps: Family<PoolLabel, Counter>,
    wakes: Family<PoolLabel, Histogram, fn() -> Histogram>,
}

fn wake_histogram() -> Histogram {
    // 10 ms … ~80 s: a llama.cpp router's load to a large vLLM model's level-2 wake.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

impl AutoscalerMetrics {
    /// Registers the families in `registry` (which adds the `greenscale_` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = AutoscalerMetrics {
            pools: PoolFamilies::register(registry),
            desired: Family::default(),
            starts: Family::default(),
            failures: Family::default(),
            evictions: Family::default(),
            energy: Family::default(),
            decisions: Family::default(),
            replica_seconds: Family::default(),
            sleeps: Family::default(),
            wakes: Family::new_with_constructor(wake_histogram as fn() -> Histogram),
        };
        registry.register(
            "replica_sleeps",
            "Replicas put to sleep (process kept, GPU memory given back)",
            m.sleeps.clone(),
        );
        registry.register(
            "wake_seconds",
            "Wakes of sleeping replicas, seconds (the wake call until the server serves)",
            m.wakes.clone(),
        );
        registry.register(
            "desired_replicas",
            "Replicas the scaling policy last asked for",
            m.desired.clone(),
        );
        registry.register("replica_starts", "Replicas started", m.starts.clone());
        registry.register(
            "replica_evictions",
            "Replicas stopped to make room on the GPUs for another pool's (swaps)",
            m.evictions.clone(),
        );
        registry.register(
            "replica_energy_joules",
            "GPU energy of replicas' ended awake periods (stopped or asleep), joules: each replica's share of its GPUs' energy counters where the driver has them, else estimated from their board power",
            m.energy.clone(),
        );
        registry.register(
            "replica_failures",
            "Replicas that failed to start or crashed",
            m.failures.clone(),
        );
        registry.register(
            "scaling_decisions",
            "Recorded scaling decisions (changes of desired count or reason)",
            m.decisions.clone(),
        );
        registry.register(
            "replica_seconds",
            "Lifetime of stopped replicas, seconds (start to stop, loading included)",
            m.replica_seconds.clone(),
        );
        m
    }

    /// The metrics of one pool.
    pub fn pool(&self, name: &str) -> PoolMetrics {
        PoolMetrics {
            families: self.clone(),
            pool: name.to_string(),
        }
    }
}

/// One pool's metrics.
#[derive(Clone)]
pub struct PoolMetrics {
    families: AutoscalerMetrics,
    pool: String,
}

impl PoolMetrics {
    fn label(&self) -> PoolLabel {
        PoolLabel {
            pool: self.pool.clone(),
        }
    }

    /// Sets the replica counts by state (waking ones count as starting).
    pub fn set_replicas(&self, starting: u32, ready: u32, draining: u32, asleep: u32) {
        self.families.pools.set_replicas(
            &self.pool,
            &[
                ("starting", starting),
                ("ready", ready),
                ("draining", draining),
                ("asleep", asleep),
            ],
        );
    }

    /// Counts a replica put to sleep.
    pub fn slept(&self) {
        self.families.sleeps.get_or_create(&self.label()).inc();
    }

    /// Records a measured wake.
    pub fn woke(&self, seconds: f64) {
        self.families
            .wakes
            .get_or_create(&self.label())
            .observe(seconds);
    }

    /// Records a decision asking for `desired` replicas.
    pub fn decision(&self, desired: u32) {
        self.families
            .desired
            .get_or_create(&self.label())
            .set(desired as i64);
        self.families.decisions.get_or_create(&self.label()).inc();
    }

    /// Records a measured cold start.
    pub fn cold_start(&self, seconds: f64) {
        self.families.pools.cold_start(&self.pool, seconds);
    }

    /// Counts a started replica.
    pub fn replica_started(&self) {
        self.families.starts.get_or_create(&self.label()).inc();
    }

    /// Counts a failed start or crash.
    pub fn failure(&self) {
        self.families.failures.get_or_create(&self.label()).inc();
    }

    /// Adds the GPU energy of a replica's ended awake period, joules.
    pub fn energy(&self, joules: f64) {
        self.families
            .energy
            .get_or_create(&self.label())
            .inc_by(joules);
    }

    /// Counts a replica evicted for another pool.
    pub fn evicted(&self) {
        self.families.evictions.get_or_create(&self.label()).inc();
    }

    /// Adds a stopped replica's lifetime.
    pub fn replica_seconds(&self, seconds: f64) {
        self.families
            .replica_seconds
            .get_or_create(&self.label())
            .inc_by(seconds);
    }
}
