//! Prometheus metrics (`greenscale_` prefix, base units).

use std::sync::Mutex;

use greenscale_core::{JobRecord, QueueStats, TenantStats};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels carrying an outcome or an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The outcome (succeeded, retry, failed, dead, cancelled), error kind or token kind.
    pub status: String,
}

/// Labels of a tenant's counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// The tenant.
    pub tenant: String,
    /// `queued` or `running` (jobs), or an outcome (runs).
    pub status: String,
}

/// The gateway's metrics. More (replicas, cold starts) are registered by the components
/// that own them through [`Metrics::registry`].
pub struct Metrics {
    registry: Mutex<Registry>,
    submitted: Counter,
    outcomes: Family<StatusLabel, Counter>,
    errors: Family<StatusLabel, Counter>,
    wait: Histogram,
    run: Histogram,
    ttft: Histogram,
    tokens: Family<StatusLabel, Counter>,
    pending: Gauge,
    in_flight: Gauge,
    delayed: Gauge,
    dead_letter: Gauge,
    live_workers: Gauge,
    tenant_jobs: Family<TenantLabel, Gauge>,
    tenant_outcomes: Family<TenantLabel, Counter>,
    tenant_tokens: Family<TenantLabel, Gauge>,
    webhook_tries: Family<StatusLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("greenscale");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            submitted: Counter::default(),
            outcomes: Family::default(),
            errors: Family::default(),
            wait: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
            run: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
            ttft: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            tokens: Family::default(),
            pending: Gauge::default(),
            in_flight: Gauge::default(),
            delayed: Gauge::default(),
            dead_letter: Gauge::default(),
            live_workers: Gauge::default(),
            tenant_jobs: Family::default(),
            tenant_outcomes: Family::default(),
            tenant_tokens: Family::default(),
            webhook_tries: Family::default(),
        };
        r.register(
            "webhook_tries",
            "Webhook tries this gateway made, by outcome (delivered, failed: retried later, dead_lettered: the last try failed)",
            m.webhook_tries.clone(),
        );
        r.register(
            "tenant_jobs",
            "A tenant's jobs waiting (queued, retries included) and running, all workers",
            m.tenant_jobs.clone(),
        );
        r.register(
            "tenant_outcomes",
            "A tenant's job runs by how they ended (succeeded, retry, failed, dead, cancelled, expired), all workers",
            m.tenant_outcomes.clone(),
        );
        r.register(
            "tenant_tokens_this_minute",
            "Tokens a tenant's jobs used in the current minute (what tokens_per_minute limits)",
            m.tenant_tokens.clone(),
        );
        r.register(
            "jobs_submitted",
            "Jobs accepted by this gateway",
            m.submitted.clone(),
        );
        r.register(
            "job_runs",
            "Job runs by how they ended (succeeded, retry, failed, dead, cancelled), all workers",
            m.outcomes.clone(),
        );
        r.register(
            "job_errors",
            "Failed job runs by error kind (upstream_transient, upstream_rejected, connection, timeout, malformed, ...), all workers",
            m.errors.clone(),
        );
        r.register(
            "job_wait_seconds",
            "Time from enqueue to start of jobs this gateway saw end",
            m.wait.clone(),
        );
        r.register(
            "job_run_seconds",
            "Time from start to end of jobs this gateway saw end",
            m.run.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Time from run start to first token of jobs this gateway saw end",
            m.ttft.clone(),
        );
        r.register(
            "tokens",
            "Tokens of jobs this gateway saw succeed, by kind",
            m.tokens.clone(),
        );
        r.register("queue_pending", "Jobs waiting to start", m.pending.clone());
        r.register(
            "queue_in_flight",
            "Jobs running on workers",
            m.in_flight.clone(),
        );
        r.register(
            "queue_delayed",
            "Jobs waiting for a retry",
            m.delayed.clone(),
        );
        r.register(
            "queue_dead_letter",
            "Entries on the dead-letter list",
            m.dead_letter.clone(),
        );
        r.register(
            "workers_live",
            "Workers with a current heartbeat",
            m.live_workers.clone(),
        );
        *m.registry.lock().expect("registry lock") = r;
        m
    }

    /// The registry, for components that add their own metrics.
    pub fn registry(&self) -> &Mutex<Registry> {
        &self.registry
    }

    /// Counts an accepted job.
    pub fn submitted(&self) {
        self.submitted.inc();
    }

    /// Counts a webhook try that ended with `outcome`.
    pub fn webhook_try(&self, outcome: &str) {
        self.webhook_tries
            .get_or_create(&StatusLabel {
                status: outcome.to_string(),
            })
            .inc();
    }

    /// Records the timings and tokens of a job this gateway saw reach a final status.
    pub fn completed(&self, rec: &JobRecord) {
        let secs = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1000.0),
            _ => None,
        };
        if let Some(w) = secs(rec.enqueued_at_ms, rec.started_at_ms) {
            self.wait.observe(w);
        }
        if let Some(r) = secs(rec.started_at_ms, rec.finished_at_ms) {
            self.run.observe(r);
        }
        if let Some(t) = rec.ttft_ms {
            self.ttft.observe(t as f64 / 1000.0);
        }
        if let Some(u) = rec.usage {
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
            ] {
                self.tokens
                    .get_or_create(&StatusLabel {
                        status: kind.into(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// The Prometheus text exposition, with queue gauges from `stats`, the queue's outcome
    /// `counters` (monotonic totals shared by all processes) and each tenant's counts.
    pub fn render(
        &self,
        stats: Option<QueueStats>,
        counters: &[(String, u64)],
        tenants: &[TenantStats],
    ) -> String {
        for t in tenants {
            let label = |status: &str| TenantLabel {
                tenant: t.tenant.clone(),
                status: status.to_string(),
            };
            self.tenant_jobs
                .get_or_create(&label("queued"))
                .set(t.queued as i64);
            self.tenant_jobs
                .get_or_create(&label("running"))
                .set(t.running as i64);
            self.tenant_tokens
                .get_or_create(&label("used"))
                .set(t.tokens_this_minute as i64);
            for (outcome, total) in &t.outcomes {
                let counter = self.tenant_outcomes.get_or_create(&label(outcome));
                let seen = counter.get();
                if *total > seen {
                    counter.inc_by(total - seen);
                }
            }
        }
        for (name, total) in counters {
            let (family, label) = match name.strip_prefix("error:") {
                Some(kind) => (&self.errors, kind),
                None => (&self.outcomes, name.as_str()),
            };
            let counter = family.get_or_create(&StatusLabel {
                status: label.to_string(),
            });
            let seen = counter.get();
            if *total > seen {
                counter.inc_by(total - seen);
            }
        }
        if let Some(s) = stats {
            self.pending.set(s.pending as i64);
            self.in_flight.set(s.in_flight as i64);
            self.delayed.set(s.delayed as i64);
            self.dead_letter.set(s.dead_letter as i64);
            self.live_workers.set(s.live_workers as i64);
        }
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
