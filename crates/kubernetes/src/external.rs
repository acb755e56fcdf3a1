//! The KEDA external scaler: KEDA asks, per ScaledObject, whether the worker Deployment
//! should run and how many replicas it needs; GreenScale answers with its scaling policy
//! over the Redis queue named in the ScaledObject's metadata.
//!
//! The HPA computes `ceil(metric / target)`; the metric is the desired replica count and
//! the target 1, so the HPA asks for exactly that many (its 10 % tolerance still applies
//! from 10 replicas up). Replicas holding running jobs are always counted, so KEDA never
//! scales to zero under a running job. When a job arrives while the pool is at zero,
//! `StreamIsActive` pushes `true` at once (Redis keyspace notifications), so KEDA does not
//! wait for its next poll.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use greenscale_core::policy::{Measured, Observation, Policy, PoolShape, ReplicaCounts, Spec};
use greenscale_core::{QueueError, QueueStats, Reader, parse_duration};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::error::ScalerError;
use crate::metrics::ScalerMetrics;
use crate::proto::external_scaler_server::ExternalScaler;
use crate::proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};

/// How often an open `StreamIsActive` re-evaluates without arrivals.
const STREAM_TICK: Duration = Duration::from_secs(1);

/// The trigger metadata keys GreenScale reads.
pub const METADATA_KEYS: [&str; 5] = ["list", "policy", "concurrency", "maxReplicas", "coldStart"];

/// KEDA's own keys of an `external`/`external-push` trigger (KEDA reads them to reach the
/// scaler, then passes them on with the rest of the metadata): the scaler's address and the
/// TLS settings of the connection.
pub const KEDA_KEYS: [&str; 7] = [
    "scalerAddress",
    "enableTLS",
    "unsafeSsl",
    "caCert",
    "tlsClientCert",
    "tlsClientKey",
    "tlsCertFile",
];

/// The refusal of an unknown metadata key, naming the nearest known one.
fn unknown_key(key: &str) -> ScalerError {
    let candidates = METADATA_KEYS
        .iter()
        .flat_map(|k| [k.to_string(), format!("{k}FromEnv")])
        .chain(KEDA_KEYS.iter().map(|k| k.to_string()));
    let nearest = candidates
        .map(|k| {
            (
                strsim::damerau_levenshtein(&k.to_lowercase(), &key.to_lowercase()),
                k,
            )
        })
        .min();
    let hint = match nearest {
        Some((d, k)) if d <= 3 => format!("did you mean {k:?}? "),
        _ => String::new(),
    };
    ScalerError::Metadata(format!(
        "unknown scalerMetadata key {key:?} ({hint}GreenScale reads {}, each also as <key>FromEnv; KEDA's own keys {} are passed over)",
        METADATA_KEYS.join(", "),
        KEDA_KEYS.join(", ")
    ))
}

/// What a ScaledObject's `scalerMetadata` selects.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSettings {
    /// The pending list (`list`, default `jobs`).
    pub list: String,
    /// The policy spec (`policy`, default `greenscale`).
    pub policy: Spec,
    /// Jobs one worker replica runs at once (`concurrency`, default 4).
    pub concurrency: u32,
    /// Replica limit the policy plans within (`maxReplicas`, default 100).
    pub max_replicas: u32,
    /// Known cold start of a worker replica (`coldStart`, e.g. `90s`), if given.
    pub cold_start: Option<Duration>,
}

impl TargetSettings {
    /// Reads the metadata of a KEDA trigger, as KEDA sends it: the trigger's whole
    /// `metadata` map, with KEDA's own keys ([`KEDA_KEYS`], ignored here) and every
    /// `<key>FromEnv` key carrying the value KEDA resolved from the target's environment
    /// (it stands for `<key>`; the plain key wins when both are given, as in KEDA).
    /// An unknown key or a bad value is refused, naming the key and the nearest known one.
    pub fn from_metadata(raw: &HashMap<String, String>) -> Result<Self, ScalerError> {
        let mut meta: HashMap<&str, &String> = HashMap::new();
        for (key, value) in raw {
            if KEDA_KEYS.contains(&key.as_str()) {
                continue;
            }
            let (name, from_env) = match key.strip_suffix("FromEnv") {
                Some(name) if !name.is_empty() => (name, true),
                _ => (key.as_str(), false),
            };
            if !METADATA_KEYS.contains(&name) {
                return Err(unknown_key(key));
            }
            if !from_env || !raw.contains_key(name) {
                meta.insert(name, value);
            }
        }
        let bad = |key: &str, message: String| {
            ScalerError::Metadata(format!("scalerMetadata {key}: {message}"))
        };
        let number = |key: &str, default: u32| -> Result<u32, ScalerError> {
            match meta.get(key) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad(key, format!("{v:?} is not a whole number ≥ 1"))),
            }
        };
        let policy = meta
            .get("policy")
            .map(|p| p.to_string())
            .unwrap_or_else(|| "greenscale".into());
        let policy = Spec::parse(&policy).map_err(|e| bad("policy", e.message))?;
        let cold_start = match meta.get("coldStart") {
            None => None,
            Some(v) => Some(parse_duration(v).map_err(|e| bad("coldStart", e.0))?),
        };
        let list = meta
            .get("list")
            .map(|l| l.to_string())
            .unwrap_or_else(|| "jobs".into());
        if list.is_empty() {
            return Err(bad("list", "must not be empty".into()));
        }
        Ok(TargetSettings {
            list,
            policy,
            concurrency: number("concurrency", 4)?,
            max_replicas: number("maxReplicas", 100)?,
            cold_start,
        })
    }

    /// Replicas the running jobs need: `ceil(in-flight / concurrency)`. Scaling never goes
    /// below it, so no replica holding a job is removed.
    pub fn floor(&self, stats: &QueueStats) -> u32 {
        stats
            .in_flight
            .div_ceil(self.concurrency as u64)
            .min(u32::MAX as u64) as u32
    }

    /// What the policy sees of this target at `now`: the queue's counts, the replicas known
    /// to be ready and starting, and the measured cold start if there is one (else the
    /// configured one).
    pub fn observation(
        &self,
        now: f64,
        stats: &QueueStats,
        ready: u32,
        starting: u32,
        measured_cold_start: Option<f64>,
    ) -> Observation {
        Observation::from_queue(
            now,
            stats,
            ReplicaCounts {
                ready,
                starting,
                busy: self.floor(stats).min(ready),
                asleep: 0,
            },
            PoolShape {
                concurrency: self.concurrency,
                max_replicas: self.max_replicas,
                can_sleep: false,
            },
            Measured {
                cold_start: measured_cold_start.or(self.cold_start.map(|d| d.as_secs_f64())),
                ..Measured::default()
            },
        )
    }

    /// The replicas to ask for when the policy wants `desired`: at least the floor, at most
    /// the limit.
    pub fn settle(&self, desired: u32, stats: &QueueStats) -> u32 {
        desired.max(self.floor(stats)).min(self.max_replicas)
    }

    /// The metric's name (one per list).
    pub fn metric_name(&self) -> String {
        let clean: String = self
            .list
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        format!("greenscale-{clean}")
    }
}

/// One ScaledObject's state: its queue and its policy.
struct Target {
    settings: TargetSettings,
    queue: Arc<dyn Reader>,
    state: Mutex<TargetState>,
}

struct TargetState {
    policy: Box<dyn Policy>,
    desired: u32,
}

/// ScaledObjects served, by namespace and name.
type Targets = HashMap<(String, String), Arc<Target>>;

/// Opens the queue of a pending list (a ScaledObject's `list`): on Kubernetes, the Redis
/// list of that name.
pub type OpenQueue = Arc<dyn Fn(&str) -> Result<Arc<dyn Reader>, QueueError> + Send + Sync>;

/// The gRPC service.
#[derive(Clone)]
pub struct Scaler {
    open: OpenQueue,
    targets: Arc<std::sync::Mutex<Targets>>,
    epoch: Instant,
    metrics: Arc<ScalerMetrics>,
}

impl Scaler {
    /// A scaler reading the queues that `open` opens.
    pub fn new(open: OpenQueue, metrics: Arc<ScalerMetrics>) -> Self {
        Scaler {
            open,
            targets: Arc::default(),
            epoch: Instant::now(),
            metrics,
        }
    }

    /// The target a ScaledObject means, created (or re-created when its metadata changed).
    fn target(&self, r: &ScaledObjectRef) -> Result<Arc<Target>, Status> {
        let settings = TargetSettings::from_metadata(&r.scaler_metadata).map_err(|m| {
            Status::invalid_argument(format!("ScaledObject {}/{}: {m}", r.namespace, r.name))
        })?;
        let key = (r.namespace.clone(), r.name.clone());
        let mut targets = self.targets.lock().expect("targets lock");
        if let Some(t) = targets.get(&key)
            && t.settings == settings
        {
            return Ok(t.clone());
        }
        let queue = (self.open)(&settings.list).map_err(|e| Status::unavailable(e.to_string()))?;
        let policy = settings.policy.build();
        tracing::info!(
            scaled_object = %format!("{}/{}", r.namespace, r.name),
            list = %settings.list,
            policy = %settings.policy,
            "serving a ScaledObject"
        );
        let target = Arc::new(Target {
            settings,
            queue,
            state: Mutex::new(TargetState { policy, desired: 0 }),
        });
        targets.insert(key, target.clone());
        Ok(target)
    }

    /// Observes the queue, asks the policy (on an arrival, or as a tick), and returns the
    /// desired replicas — never fewer than the running jobs need.
    async fn evaluate(&self, target: &Target, on_arrival: bool) -> Result<u32, Status> {
        let s = &target.settings;
        let stats = target
            .queue
            .stats()
            .await
            .map_err(|e| Status::unavailable(format!("cannot read list {:?}: {e}", s.list)))?;
        let mut state = target.state.lock().await;
        let ready = stats.live_workers.min(u32::MAX as u64) as u32;
        let obs = s.observation(
            self.epoch.elapsed().as_secs_f64(),
            &stats,
            ready,
            state.desired.saturating_sub(ready),
            None,
        );
        let decision = if on_arrival {
            state.policy.on_arrival(&obs)
        } else {
            Some(state.policy.decide(&obs))
        };
        if let Some(d) = decision {
            let desired = s.settle(d.desired, &stats);
            if desired != state.desired {
                tracing::info!(list = %s.list, from = state.desired, to = desired, reason = %d.reason, "desired replicas");
            }
            state.desired = desired;
        }
        self.metrics.desired(&s.list, state.desired);
        Ok(state.desired)
    }
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;
type SpecStream = Pin<Box<dyn Stream<Item = Result<GetMetricSpecResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        self.metrics.call("IsActive");
        let target = self.target(request.get_ref())?;
        let desired = self.evaluate(&target, false).await?;
        Ok(Response::new(IsActiveResponse {
            result: desired > 0,
        }))
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        self.metrics.call("StreamIsActive");
        let target = self.target(request.get_ref())?;
        let mut arrivals = match target.queue.arrivals().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "no keyspace notifications: StreamIsActive re-checks every second instead");
                futures::stream::pending().boxed()
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let scaler = self.clone();
        tokio::spawn(async move {
            let mut last: Option<bool> = None;
            let mut first = true;
            loop {
                // The current answer at once, then on every arrival and tick.
                let on_arrival = if std::mem::take(&mut first) {
                    false
                } else {
                    tokio::select! {
                        a = arrivals.next() => a.is_some(),
                        _ = tokio::time::sleep(STREAM_TICK) => false,
                        _ = tx.closed() => return,
                    }
                };
                let active = match scaler.evaluate(&target, on_arrival).await {
                    Ok(d) => d > 0,
                    Err(e) => {
                        tracing::warn!(error = %e.message(), "StreamIsActive cannot read the queue");
                        continue;
                    }
                };
                if last != Some(active) {
                    last = Some(active);
                    if active {
                        scaler.metrics.pushed();
                    }
                    if tx
                        .send(Ok(IsActiveResponse { result: active }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        self.metrics.call("GetMetricSpec");
        let target = self.target(request.get_ref())?;
        #[allow(deprecated)]
        let spec = MetricSpec {
            metric_name: target.settings.metric_name(),
            target_size: 1,
            target_size_float: 1.0,
        };
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![spec],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        self.metrics.call("GetMetrics");
        let object = request
            .get_ref()
            .scaled_object_ref
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("GetMetrics without scaledObjectRef"))?;
        let target = self.target(object)?;
        let desired = self.evaluate(&target, false).await?;
        #[allow(deprecated)]
        let value = MetricValue {
            metric_name: target.settings.metric_name(),
            metric_value: desired as i64,
            metric_value_float: desired as f64,
        };
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![value],
        }))
    }

    type StreamMetricSpecStream = SpecStream;

    async fn stream_metric_spec(
        &self,
        _request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamMetricSpecStream>, Status> {
        self.metrics.call("StreamMetricSpec");
        Err(Status::unimplemented(
            "StreamMetricSpec is not implemented: the metric spec does not change",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn metadata_is_read_and_checked() {
        let s = TargetSettings::from_metadata(&meta(&[])).unwrap();
        assert_eq!(
            (s.list.as_str(), s.policy.text(), s.concurrency),
            ("jobs", "greenscale", 4)
        );
        let s = TargetSettings::from_metadata(&meta(&[
            ("list", "llama_8b"),
            ("policy", "greenscale:cold_cost=300"),
            ("concurrency", "8"),
            ("coldStart", "90s"),
        ]))
        .unwrap();
        assert_eq!(s.cold_start, Some(Duration::from_secs(90)));
        assert_eq!(s.metric_name(), "greenscale-llama-8b");
        // What KEDA sends for a trigger: its own keys, and `*FromEnv` keys already resolved.
        let s = TargetSettings::from_metadata(&meta(&[
            (
                "scalerAddress",
                "greenscale-scaler.greenscale.svc.cluster.local:9090",
            ),
            ("enableTLS", "true"),
            ("unsafeSsl", "false"),
            ("tlsCertFile", "/certs/tls.crt"),
            ("listFromEnv", "from-env"),
            ("concurrencyFromEnv", "2"),
            ("concurrency", "3"),
        ]))
        .unwrap();
        assert_eq!((s.list.as_str(), s.concurrency), ("from-env", 3));
        let e = TargetSettings::from_metadata(&meta(&[("lsit", "x")])).unwrap_err();
        assert!(e.to_string().contains("did you mean \"list\"?"), "{e}");
        let e = TargetSettings::from_metadata(&meta(&[("maxReplica", "3")])).unwrap_err();
        assert!(
            e.to_string().contains("did you mean \"maxReplicas\"?"),
            "{e}"
        );
        let e = TargetSettings::from_metadata(&meta(&[("scalerAdress", "x:1")])).unwrap_err();
        assert!(
            e.to_string().contains("did you mean \"scalerAddress\"?"),
            "{e}"
        );
        let e = TargetSettings::from_metadata(&meta(&[("polcyFromEnv", "x")])).unwrap_err();
        assert!(
            e.to_string().contains("did you mean \"policyFromEnv\"?"),
            "{e}"
        );
        for bad in [
            meta(&[("lsit", "x")]),
            meta(&[("scalerAdress", "x:1")]),
            meta(&[("FromEnv", "x")]),
            meta(&[("policy", "nope")]),
            meta(&[("concurrency", "0")]),
            meta(&[("coldStart", "soon")]),
        ] {
            assert!(TargetSettings::from_metadata(&bad).is_err(), "{bad:?}");
        }
    }
}
