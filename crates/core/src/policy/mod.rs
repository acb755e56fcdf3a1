//! Scaling policies: pure functions of observations and time (no I/O, no clock).
//!
//! The same policy objects run in the trace simulator (virtual time), the single-machine
//! supervisor, the KEDA external scaler and the Kubernetes actuator. Each takes its
//! parameters from a small spec string such as `keda:poll=5s,cooldown=30s,list_length=1`.

mod greenscale;
mod histogram;
mod keda;
mod keepalive;
mod knative;
mod window;

use std::fmt;

pub use greenscale::{GreenScale, GreenScaleParams};
pub use histogram::{Histogram, HistogramParams};
pub use keda::{Keda, KedaParams};
pub use keepalive::KeepAlive;
pub use knative::{Knative, KnativeParams};

use crate::QueueStats;
use crate::duration::parse_duration;

/// What a policy sees of one pool at one moment. Times are seconds on the caller's clock
/// (virtual in the simulator, monotonic in production).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Current time, seconds.
    pub now: f64,
    /// Jobs waiting to start (the queue's pending list).
    pub pending: u64,
    /// Jobs running on replicas.
    pub in_flight: u64,
    /// Replicas ready to serve.
    pub ready: u32,
    /// Replicas started but not ready yet (loading).
    pub starting: u32,
    /// Replicas holding at least one in-flight job.
    pub busy: u32,
    /// Jobs one replica serves at once.
    pub concurrency: u32,
    /// Measured cold-start duration (mean), seconds; `None` before the first one.
    pub cold_start: Option<f64>,
    /// Measured job service time (mean), seconds; `None` before the first job ends.
    pub service_time: Option<f64>,
    /// The pool's replica limit.
    pub max_replicas: u32,
    /// Replicas asleep: their process lives but holds no GPU memory; they wake faster than
    /// a cold start. Not counted in `ready` or `starting`.
    pub asleep: u32,
    /// Whether the pool's replicas can sleep (its engine has sleep and wake calls).
    pub can_sleep: bool,
    /// Measured wake-from-sleep duration (mean), seconds; `None` before the first one.
    pub wake: Option<f64>,
    /// Of `pending`, jobs of deferrable classes (below `interactive`): they may wait for
    /// warm capacity.
    pub deferrable: u64,
    /// How long the oldest deferrable job has waited, seconds.
    pub deferred_for: Option<f64>,
    /// Seconds until the earliest deadline of a waiting job, if one has a deadline.
    pub deadline_in: Option<f64>,
}

/// A pool's replicas as the caller counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    /// Ready to serve.
    pub ready: u32,
    /// Started, not ready yet.
    pub starting: u32,
    /// Ready and holding at least one in-flight job.
    pub busy: u32,
    /// Asleep (process alive, GPU memory given back).
    pub asleep: u32,
}

/// What a pool is made of, fixed by its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    /// Jobs one replica serves at once.
    pub concurrency: u32,
    /// The replica limit.
    pub max_replicas: u32,
    /// Whether replicas can sleep between warm and stopped.
    pub can_sleep: bool,
}

/// What was measured of a pool's replicas so far (means, seconds; `None` before the first).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// From start to ready.
    pub cold_start: Option<f64>,
    /// One job's run.
    pub service_time: Option<f64>,
    /// From asleep to ready.
    pub wake: Option<f64>,
}

/// The mean of `values`; `None` when there are none.
pub fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (n, sum) = values
        .into_iter()
        .fold((0usize, 0.0), |(n, sum), v| (n + 1, sum + v));
    (n > 0).then(|| sum / n as f64)
}

impl Observation {
    /// What a policy sees of a pool at `now` whose queue counts are `stats`: retries waiting
    /// for their delay count as pending (they are work that will need a replica).
    pub fn from_queue(
        now: f64,
        stats: &QueueStats,
        replicas: ReplicaCounts,
        shape: PoolShape,
        measured: Measured,
    ) -> Self {
        Observation {
            now,
            pending: stats.pending + stats.delayed,
            in_flight: stats.in_flight,
            ready: replicas.ready,
            starting: replicas.starting,
            busy: replicas.busy,
            concurrency: shape.concurrency,
            cold_start: measured.cold_start,
            service_time: measured.service_time,
            max_replicas: shape.max_replicas,
            asleep: replicas.asleep,
            can_sleep: shape.can_sleep,
            wake: measured.wake,
            deferrable: stats.deferrable.min(stats.pending),
            deferred_for: stats.oldest_deferrable_ms.map(|ms| ms as f64 / 1000.0),
            deadline_in: stats.deadline_in_ms.map(|ms| ms as f64 / 1000.0),
        }
    }

    /// Replicas that exist (ready or starting).
    pub fn replicas(&self) -> u32 {
        self.ready + self.starting
    }

    /// Jobs in the system (waiting or running).
    pub fn work(&self) -> u64 {
        self.pending + self.in_flight
    }

    /// Replicas needed to run every job in the system at once.
    pub fn slots_needed(&self) -> u32 {
        div_ceil(self.work(), self.concurrency.max(1) as u64)
    }
}

/// `ceil(a / b)` as a replica count, saturating.
pub(crate) fn div_ceil(a: u64, b: u64) -> u32 {
    a.div_ceil(b.max(1)).min(u32::MAX as u64) as u32
}

/// A policy's answer: how many replicas the pool should have warm, how many asleep, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Desired replicas (ready + starting).
    pub desired: u32,
    /// Replicas to keep asleep beyond `desired` (woken first when more are needed); the
    /// others are stopped. Always 0 for a pool that cannot sleep.
    pub asleep: u32,
    /// Why, in a form the dashboard and logs can print.
    pub reason: Reason,
}

impl Decision {
    /// `desired` replicas warm and none asleep, because of `reason`.
    pub fn warm(desired: u32, reason: Reason) -> Self {
        Decision {
            desired,
            asleep: 0,
            reason,
        }
    }
}

/// Why a policy decided what it did. Printed with `Display`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// Jobs in the system need this many replicas.
    Backlog {
        /// Jobs waiting or running.
        work: u64,
        /// Jobs per replica.
        per_replica: u32,
    },
    /// The backlog drains on the replicas already there before a new one could be ready.
    BacklogDrainsInTime {
        /// Jobs waiting.
        pending: u64,
        /// Expected seconds to drain them.
        drain_s: f64,
        /// Seconds a new replica takes to become ready.
        cold_start_s: f64,
    },
    /// Replicas holding in-flight jobs are never removed.
    HoldInFlight {
        /// Replicas with running jobs.
        busy: u32,
    },
    /// Capacity is kept for a while after it was last needed.
    KeepAlive {
        /// Seconds since the capacity was last needed.
        idle_s: f64,
        /// Seconds it is kept.
        window_s: f64,
    },
    /// Idle past the keep-warm window: replicas sleep (GPU memory given back) until the
    /// sleep window ends too.
    Sleep {
        /// Seconds idle.
        idle_s: f64,
        /// Seconds kept warm before sleeping.
        warm_s: f64,
        /// Idle time at which sleepers are stopped.
        until_s: f64,
        /// The wake time planned with (measured, or assumed before the first wake).
        wake_s: f64,
    },
    /// Idle past the keep-alive window: the last replica goes.
    ScaleToZero {
        /// Seconds idle.
        idle_s: f64,
        /// The keep-alive window that passed.
        window_s: f64,
    },
    /// The pool's history predicts an arrival: a replica is warmed ahead of it.
    Prewarm {
        /// Seconds idle.
        idle_s: f64,
        /// Idle time at which pre-warming starts.
        from_s: f64,
    },
    /// Only deferrable (batch) work waits and no replica is up: it waits for warm capacity
    /// until its deadline needs a start or it has waited `batch_max_wait`.
    Deferred {
        /// Deferrable jobs waiting.
        jobs: u64,
        /// Seconds until the pool is woken for them (unless other work wakes it first).
        wake_in_s: f64,
    },
    /// Deferrable work needs replicas to finish before its deadline.
    BatchWindow {
        /// Deferrable jobs waiting.
        jobs: u64,
        /// Seconds to the earliest deadline.
        left_s: f64,
        /// Replicas it needs.
        replicas: u32,
    },
    /// Enough deferrable work has piled up that waking the pool for it is worth the wake.
    BatchPile {
        /// Deferrable jobs waiting.
        jobs: u64,
        /// Replica-seconds they take.
        work_s: f64,
        /// Replica-seconds a wake costs (the start and the keep-warm after).
        wake_cost_s: f64,
    },
    /// Nothing to do and nothing running.
    Idle,
    /// KEDA: the list is longer than the activation threshold; scale from zero to one.
    KedaActivate {
        /// List length seen at the poll.
        list_length: u64,
    },
    /// KEDA: inactive for the cooldown period; scale to zero.
    KedaCooldown {
        /// Seconds since the trigger was last active.
        inactive_s: f64,
    },
    /// KEDA/HPA: waiting for the next poll or sync; keeping the current count.
    KedaWait,
    /// HPA: `ceil(metric / target)`.
    Hpa {
        /// Metric total (list length).
        metric: u64,
        /// Target per replica (listLength).
        target: u32,
        /// The HPA's recommendation before limits.
        recommended: u32,
    },
    /// HPA: usage within the 10 % tolerance; no change.
    HpaTolerance {
        /// Usage ratio.
        ratio: f64,
    },
    /// HPA: scale-down held at the highest recommendation of the stabilization window.
    HpaStabilized {
        /// Current recommendation.
        recommended: u32,
        /// Value kept.
        kept: u32,
    },
    /// Knative KPA: stable-window average concurrency over the target.
    KnativeStable {
        /// Average concurrency over the stable window.
        average: f64,
        /// Target concurrency per replica.
        target: f64,
    },
    /// Knative KPA: panic mode on the short window.
    KnativePanic {
        /// Average concurrency over the panic window.
        average: f64,
        /// Target concurrency per replica.
        target: f64,
    },
    /// Knative KPA: no traffic; the last replica waits out the scale-to-zero grace period.
    KnativeGrace {
        /// Seconds without traffic.
        idle_s: f64,
    },
    /// Capped by a replica limit.
    Capped {
        /// The limit.
        max: u32,
    },
}

/// Pools sharing GPUs take turns of at least this many cold starts (of the pool that
/// waits) before a busy replica is drained for another pool, so that loading takes at most
/// a fifth of the GPUs' time while they take turns.
pub const TURN_COLD_STARTS: f64 = 4.0;

/// `n` and the noun for it, singular or plural (`1 job`, `3 jobs`).
fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::Backlog { work, per_replica } => write!(
                f,
                "{} waiting or running {} {} at {per_replica} per replica",
                count(work, "job", "jobs"),
                if work == 1 { "needs" } else { "need" },
                count(div_ceil(work, per_replica as u64), "replica", "replicas")
            ),
            Reason::BacklogDrainsInTime {
                pending,
                drain_s,
                cold_start_s,
            } => write!(
                f,
                "{} waiting {} in ~{drain_s:.1} s on the ready replicas, before a new one would be ready ({cold_start_s:.1} s cold start)",
                count(pending, "job", "jobs"),
                if pending == 1 { "drains" } else { "drain" }
            ),
            Reason::HoldInFlight { busy } => {
                write!(
                    f,
                    "{} {} running jobs and {} kept",
                    count(busy, "replica", "replicas"),
                    if busy == 1 { "holds" } else { "hold" },
                    if busy == 1 { "is" } else { "are" }
                )
            }
            Reason::KeepAlive { idle_s, window_s } => write!(
                f,
                "idle {idle_s:.0} s; keeping capacity warm for {window_s:.0} s"
            ),
            Reason::ScaleToZero { idle_s, window_s } => write!(
                f,
                "idle {idle_s:.0} s, past the {window_s:.0} s keep-alive: scale to zero"
            ),
            Reason::Sleep {
                idle_s,
                warm_s,
                until_s,
                wake_s,
            } => write!(
                f,
                "idle {idle_s:.0} s, past the {warm_s:.0} s keep-warm: asleep until {until_s:.0} s idle (wakes in {wake_s:.2} s)"
            ),
            Reason::Deferred { jobs, wake_in_s } => write!(
                f,
                "{} for warm capacity: nothing else needs the pool (woken in {wake_in_s:.0} s at the latest)",
                count(jobs, "batch job waits", "batch jobs wait")
            ),
            Reason::BatchWindow {
                jobs,
                left_s,
                replicas,
            } => write!(
                f,
                "{} with {left_s:.0} s to the deadline: {} finish them in time",
                count(jobs, "batch job", "batch jobs"),
                count(replicas as u64, "replica", "replicas")
            ),
            Reason::BatchPile {
                jobs,
                work_s,
                wake_cost_s,
            } => write!(
                f,
                "{} take {work_s:.0} replica-seconds, worth a wake that costs {wake_cost_s:.0}",
                count(jobs, "batch job", "batch jobs")
            ),
            Reason::Prewarm { idle_s, from_s } => write!(
                f,
                "idle {idle_s:.0} s; history predicts an arrival: pre-warmed from {from_s:.0} s"
            ),
            Reason::Idle => f.write_str("no work"),
            Reason::KedaActivate { list_length } => {
                write!(
                    f,
                    "list length {list_length} > activation: KEDA scales 0 -> 1"
                )
            }
            Reason::KedaCooldown { inactive_s } => {
                write!(
                    f,
                    "trigger inactive {inactive_s:.0} s >= cooldown: KEDA scales to 0"
                )
            }
            Reason::KedaWait => f.write_str("waiting for the next poll"),
            Reason::Hpa {
                metric,
                target,
                recommended,
            } => write!(f, "HPA: ceil({metric} / {target}) = {recommended}"),
            Reason::HpaTolerance { ratio } => {
                write!(f, "HPA: usage ratio {ratio:.2} within tolerance 0.1")
            }
            Reason::HpaStabilized { recommended, kept } => write!(
                f,
                "HPA: recommends {recommended}, stabilization window keeps {kept}"
            ),
            Reason::KnativeStable { average, target } => write!(
                f,
                "KPA stable: average concurrency {average:.2} / target {target:.2}"
            ),
            Reason::KnativePanic { average, target } => write!(
                f,
                "KPA panic: 6 s average concurrency {average:.2} / target {target:.2}"
            ),
            Reason::KnativeGrace { idle_s } => {
                write!(f, "KPA: no traffic for {idle_s:.0} s; scale-to-zero grace")
            }
            Reason::Capped { max } => write!(f, "capped at {}", count(max, "replica", "replicas")),
        }
    }
}

/// A scaling policy. Implementations keep whatever history they need; they never do I/O
/// and never read a clock: time comes in with each observation.
pub trait Policy: Send {
    /// The name it was built from (e.g. `keda-seed`, `greenscale:cold_cost=120`).
    fn name(&self) -> &str;

    /// Called on every tick: the desired replica count and why.
    fn decide(&mut self, obs: &Observation) -> Decision;

    /// Called when a job arrives (after it is counted in `obs`). Push-capable policies
    /// answer at once (waking from zero without waiting for a tick): by default, with the
    /// decision a tick would make now. Poll-driven ones (KEDA) return `None`.
    fn on_arrival(&mut self, obs: &Observation) -> Option<Decision> {
        Some(self.decide(obs))
    }
}

/// Errors in a policy spec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("policy {spec:?}: {message}")]
pub struct SpecError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong.
    pub message: String,
}

/// The names `build` accepts.
pub const POLICY_NAMES: &[&str] = &[
    "greenscale",
    "keda",
    "keda-seed",
    "keda-default",
    "knative",
    "keepalive",
    "histogram",
    "llama-swap",
    "ollama",
];

/// A checked policy spec, `name:key=value,...` (for example `keda:poll=5s,cooldown=30s`):
/// every parameter was read and checked when it was parsed, so [`Spec::build`] cannot fail.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    text: String,
    params: Params,
}

/// A policy's parameters, checked.
#[derive(Debug, Clone, PartialEq)]
enum Params {
    Keda(KedaParams),
    Knative(KnativeParams),
    KeepAlive {
        window: f64,
    },
    /// One replica per model kept `keep` seconds after its last request, at most `loaded`
    /// models at once (llama-swap's and Ollama's way).
    PerModel {
        keep: f64,
        loaded: u32,
    },
    Histogram(HistogramParams),
    GreenScale(GreenScaleParams),
}

/// The words of a spec: its name, a lone value after the colon (as in `keepalive:10m`) and
/// its `key=value` parameters, in order. Not checked yet.
struct Syntax<'a> {
    text: &'a str,
    name: &'a str,
    value: Option<&'a str>,
    params: Vec<(&'a str, &'a str)>,
}

impl<'a> Syntax<'a> {
    fn parse(text: &'a str) -> Result<Self, SpecError> {
        let (name, rest) = match text.split_once(':') {
            Some((n, r)) => (n.trim(), r),
            None => (text.trim(), ""),
        };
        let mut syntax = Syntax {
            text,
            name,
            value: None,
            params: Vec::new(),
        };
        if !POLICY_NAMES.contains(&name) {
            return Err(syntax.error(format!(
                "unknown policy {name:?} (known: {})",
                POLICY_NAMES.join(", ")
            )));
        }
        for part in rest.split(',').filter(|p| !p.trim().is_empty()) {
            match part.split_once('=') {
                Some((k, v)) => syntax.params.push((k.trim(), v.trim())),
                None if syntax.value.is_none() && syntax.params.is_empty() => {
                    syntax.value = Some(part.trim())
                }
                None => return Err(syntax.error(format!("{part:?} is not key=value"))),
            }
        }
        Ok(syntax)
    }

    fn error(&self, message: String) -> SpecError {
        SpecError {
            spec: self.text.to_string(),
            message,
        }
    }

    /// Reads the parameters through `read`, refusing unknown keys.
    fn read_params(
        &self,
        known: &[&str],
        mut read: impl FnMut(&str, &str) -> Result<(), String>,
    ) -> Result<(), SpecError> {
        for (k, v) in &self.params {
            if !known.contains(k) {
                return Err(self.error(format!(
                    "unknown parameter {k:?} (known: {})",
                    known.join(", ")
                )));
            }
            read(k, v).map_err(|m| self.error(format!("{k}: {m}")))?;
        }
        Ok(())
    }

    /// Reads a per-model keep-alive policy's two parameters, each `(key, default)`: how
    /// long a model stays after its last request (with `zero_keeps`, 0 means until its room
    /// is needed) and how many models may be loaded at once.
    fn per_model(
        &self,
        keep: (&str, f64),
        loaded: (&str, u32),
        zero_keeps: bool,
    ) -> Result<Params, SpecError> {
        let (mut keep_s, mut limit) = (keep.1, loaded.1);
        self.read_params(&[keep.0, loaded.0], |k, v| {
            if k == keep.0 {
                keep_s = secs(v)?;
            } else {
                limit = num(v)?;
            }
            Ok(())
        })?;
        if limit == 0 {
            return Err(self.error(format!("{} must be at least 1", loaded.0)));
        }
        Ok(Params::PerModel {
            keep: if zero_keeps && keep_s == 0.0 {
                f64::INFINITY
            } else {
                keep_s
            },
            loaded: limit,
        })
    }

    /// Reads and checks the parameters of the named policy.
    fn check(&self) -> Result<Params, SpecError> {
        Ok(match self.name {
            "keda" | "keda-seed" | "keda-default" => {
                let mut p = match self.name {
                    "keda-seed" => KedaParams::seed(),
                    _ => KedaParams::default(),
                };
                self.read_params(
                    &["poll", "cooldown", "list_length", "activation", "max"],
                    |k, v| {
                        match k {
                            "poll" => p.poll = secs(v)?,
                            "cooldown" => p.cooldown = secs(v)?,
                            "list_length" => p.list_length = num(v)?,
                            "activation" => p.activation = num(v)?,
                            _ => p.max = Some(num(v)?),
                        }
                        Ok(())
                    },
                )?;
                if p.list_length == 0 || p.poll <= 0.0 {
                    return Err(self.error("list_length and poll must be positive".into()));
                }
                Params::Keda(p)
            }
            "knative" => {
                let mut p = KnativeParams::default();
                self.read_params(
                    &["target", "stable", "panic", "panic_threshold", "grace"],
                    |k, v| {
                        match k {
                            "target" => p.target_utilization = num(v)?,
                            "stable" => p.stable_window = secs(v)?,
                            "panic" => p.panic_window = secs(v)?,
                            "panic_threshold" => p.panic_threshold = num(v)?,
                            _ => p.grace = secs(v)?,
                        }
                        Ok(())
                    },
                )?;
                if !(p.target_utilization > 0.0 && p.target_utilization <= 1.0) {
                    return Err(self.error("target must be in (0, 1]".into()));
                }
                Params::Knative(p)
            }
            "keepalive" => {
                let mut window = self
                    .value
                    .map(secs)
                    .transpose()
                    .map_err(|m| self.error(m))?
                    .unwrap_or(600.0);
                self.read_params(&["window"], |_, v| {
                    window = secs(v)?;
                    Ok(())
                })?;
                Params::KeepAlive { window }
            }
            // llama-swap's defaults: no ttl (0: models stay until swapped out), one model
            // at a time outside groups.
            "llama-swap" => self.per_model(("ttl", 0.0), ("loaded", 1), true)?,
            // Ollama's defaults: OLLAMA_KEEP_ALIVE 5m, OLLAMA_MAX_LOADED_MODELS 3.
            "ollama" => self.per_model(("keep_alive", 300.0), ("max_loaded", 3), false)?,
            "histogram" => {
                let mut p = HistogramParams::default();
                self.read_params(
                    &[
                        "head",
                        "tail",
                        "margin",
                        "range",
                        "bin",
                        "fallback",
                        "min_samples",
                        "cv",
                    ],
                    |k, v| {
                        match k {
                            "head" => p.head_percentile = num(v)?,
                            "tail" => p.tail_percentile = num(v)?,
                            "margin" => p.margin = num(v)?,
                            "range" => p.range = secs(v)?,
                            "bin" => p.bin = secs(v)?,
                            "fallback" => p.fallback_keepalive = secs(v)?,
                            "min_samples" => p.min_samples = num(v)?,
                            _ => p.min_cv = num(v)?,
                        }
                        Ok(())
                    },
                )?;
                if p.bin <= 0.0 || p.range < p.bin {
                    return Err(
                        self.error("bin must be positive and range at least one bin".into())
                    );
                }
                Params::Histogram(p)
            }
            _ => {
                let mut p = GreenScaleParams::default();
                let keys = [
                    "cold_cost",
                    "max",
                    "cold_start",
                    "sleep_cost",
                    "batch_max_wait",
                    "batch_pile",
                ];
                self.read_params(&keys, |k, v| {
                    match k {
                        "cold_cost" => p.cold_cost = num(v)?,
                        "sleep_cost" => p.sleep_cost = num(v)?,
                        "batch_max_wait" => p.batch_max_wait = secs(v)?,
                        "batch_pile" => p.batch_pile = num(v)?,
                        "cold_start" => p.cold_start_prior = secs(v)?,
                        _ => p.max = Some(num(v)?),
                    }
                    Ok(())
                })?;
                if p.cold_cost < 0.0 || !p.cold_cost.is_finite() {
                    return Err(self.error("cold_cost must be a non-negative number".into()));
                }
                if !(0.0..=1.0).contains(&p.sleep_cost) {
                    return Err(self.error(
                        "sleep_cost must be a share of a warm replica's cost, from 0 to 1".into(),
                    ));
                }
                Params::GreenScale(p)
            }
        })
    }
}

impl Spec {
    /// Parses and checks one spec; the error says what is wrong with which parameter.
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        let params = Syntax::parse(text)?.check()?;
        Ok(Spec {
            text: text.to_string(),
            params,
        })
    }

    /// Splits a comma-separated list of specs, keeping each spec's own `key=value` parts
    /// (`keda:poll=5s,cooldown=30s,greenscale` is two specs), and parses each.
    pub fn parse_list(text: &str) -> Result<Vec<Spec>, SpecError> {
        let mut specs: Vec<String> = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let starts_policy = POLICY_NAMES
                .iter()
                .any(|n| part == *n || part.starts_with(&format!("{n}:")));
            match specs.last_mut() {
                // `key=value` continues the previous spec's parameters.
                Some(last) if !starts_policy && part.contains('=') && !part.contains(':') => {
                    last.push(',');
                    last.push_str(part);
                }
                _ => specs.push(part.to_string()),
            }
        }
        specs.iter().map(|s| Spec::parse(s)).collect()
    }

    /// The spec as it was written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The policy's name (one of [`POLICY_NAMES`]).
    pub fn name(&self) -> &str {
        self.text.split(':').next().unwrap_or_default().trim()
    }

    /// A new policy of this spec, with no history.
    pub fn build(&self) -> Box<dyn Policy> {
        let name = self.text.clone();
        match &self.params {
            Params::Keda(p) => Box::new(Keda::new(name, p.clone())),
            Params::Knative(p) => Box::new(Knative::new(name, p.clone())),
            Params::KeepAlive { window } => Box::new(KeepAlive::new(name, *window)),
            Params::PerModel { keep, .. } => Box::new(KeepAlive::new(name, *keep).at_most(1)),
            Params::Histogram(p) => Box::new(Histogram::new(name, p.clone())),
            Params::GreenScale(p) => Box::new(GreenScale::new(name, p.clone())),
        }
    }
}

impl Spec {
    /// Whether pools sharing GPUs under this policy evict by expected loss, with a turn
    /// bound and sleep (GreenScale's), rather than the least recently used idle model.
    pub fn evicts_by_value(&self) -> bool {
        matches!(self.params, Params::GreenScale(_))
    }

    /// How many models may be loaded at once under this policy's own limit, if it has one
    /// (llama-swap's `loaded`, Ollama's `max_loaded`).
    pub fn max_loaded(&self) -> Option<u32> {
        match self.params {
            Params::PerModel { loaded, .. } => Some(loaded),
            _ => None,
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Spec {
    type Err = SpecError;
    fn from_str(text: &str) -> Result<Spec, SpecError> {
        Spec::parse(text)
    }
}

/// Parses a duration parameter into seconds.
fn secs(v: &str) -> Result<f64, String> {
    parse_duration(v).map(|d| d.as_secs_f64()).map_err(|e| e.0)
}

/// Parses a number parameter.
fn num<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{v:?} is not a valid number"))
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Observation;

    /// An observation with everything at zero but the given fields.
    pub fn obs(now: f64, pending: u64, in_flight: u64, ready: u32) -> Observation {
        Observation {
            now,
            pending,
            in_flight,
            ready,
            starting: 0,
            busy: ready.min(in_flight as u32),
            concurrency: 1,
            cold_start: Some(30.0),
            service_time: Some(2.0),
            max_replicas: 100,
            asleep: 0,
            can_sleep: false,
            wake: None,
            deferrable: 0,
            deferred_for: None,
            deadline_in: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_sentences_in_the_singular_too() {
        let one = Reason::Backlog {
            work: 1,
            per_replica: 4,
        };
        assert_eq!(
            one.to_string(),
            "1 job waiting or running needs 1 replica at 4 per replica"
        );
        let many = Reason::Backlog {
            work: 9,
            per_replica: 4,
        };
        assert_eq!(
            many.to_string(),
            "9 jobs waiting or running need 3 replicas at 4 per replica"
        );
        assert_eq!(
            Reason::HoldInFlight { busy: 1 }.to_string(),
            "1 replica holds running jobs and is kept"
        );
    }

    #[test]
    fn specs_parse_and_split() {
        let list = Spec::parse_list(
            "keda:poll=5s,cooldown=30s,list_length=1,max=5,greenscale:cold_cost=120,keepalive:10m",
        )
        .unwrap();
        assert_eq!(list.len(), 3);
        let Params::Keda(keda) = &list[0].params else {
            panic!("{:?}", list[0])
        };
        assert_eq!(
            (keda.poll, keda.cooldown, keda.list_length, keda.max),
            (5.0, 30.0, 1, Some(5))
        );
        assert_eq!(list[2].params, Params::KeepAlive { window: 600.0 });
        assert_eq!(list[0].build().name(), list[0].text());
        assert_eq!(list[2].build().name(), "keepalive:10m");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let e = Spec::parse("nope").unwrap_err();
        assert!(e.message.contains("unknown policy"));
        let e = Spec::parse("keda:pol=5s").unwrap_err();
        assert!(e.message.contains("unknown parameter"), "{e}");
        let e = Spec::parse("keda:poll=soon").unwrap_err();
        assert!(e.message.contains("poll"), "{e}");
        let e = Spec::parse("ollama:max_loaded=0").unwrap_err();
        assert!(e.message.contains("max_loaded"), "{e}");
        assert_eq!(Spec::parse("llama-swap").unwrap().max_loaded(), Some(1));
        assert_eq!(Spec::parse("ollama").unwrap().max_loaded(), Some(3));
        let e = Spec::parse("greenscale:cold_cost=-1").unwrap_err();
        assert!(e.message.contains("cold_cost"), "{e}");
    }
}
