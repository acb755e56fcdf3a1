//! The pool metrics that `greenscale up` and the Kubernetes scaler both export, defined
//! once: the same names, labels, help and buckets, so one dashboard reads either.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The label of a per-pool metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// The pool (under `up`) or the worker list (on Kubernetes).
    pub pool: String,
}

/// The labels of a per-pool metric by replica state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabel {
    /// The pool.
    pub pool: String,
    /// `starting`, `ready` or `draining`.
    pub state: &'static str,
}

fn cold_start_histogram() -> Histogram {
    // 50 ms … ~14 min: a demo model's load to a large model's pod start.
    Histogram::new(exponential_buckets(0.05, 2.0, 15))
}

/// `greenscale_replicas{pool,state}` and `greenscale_cold_start_seconds{pool}`.
#[derive(Clone)]
pub struct PoolFamilies {
    replicas: Family<PoolStateLabel, Gauge>,
    cold_start: Family<PoolLabel, Histogram, fn() -> Histogram>,
}

impl PoolFamilies {
    /// Registers both families in `registry` (which adds the `greenscale_` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let families = PoolFamilies {
            replicas: Family::default(),
            cold_start: Family::new_with_constructor(cold_start_histogram),
        };
        registry.register(
            "replicas",
            "Replicas by state (starting, ready, draining)",
            families.replicas.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "Time from starting a replica (process or pod) until it is ready to serve",
            families.cold_start.clone(),
        );
        families
    }

    /// Sets how many replicas of `pool` are in each state.
    pub fn set_replicas(&self, pool: &str, by_state: &[(&'static str, u32)]) {
        for &(state, n) in by_state {
            self.replicas
                .get_or_create(&PoolStateLabel {
                    pool: pool.to_string(),
                    state,
                })
                .set(n as i64);
        }
    }

    /// Records a measured cold start of a `pool` replica.
    pub fn cold_start(&self, pool: &str, seconds: f64) {
        self.cold_start
            .get_or_create(&PoolLabel {
                pool: pool.to_string(),
            })
            .observe(seconds);
    }
}
