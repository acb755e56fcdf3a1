//! A KEDA emulator for tests: it reads ScaledObjects from rendered manifests and calls an
//! external scaler the way KEDA does, then scales a replica count the way KEDA and the HPA
//! would. No Kubernetes is needed; the replica count is handed to the test, which plays the
//! Deployment (starting and stopping worker processes).
//!
//! Facts it encodes, from KEDA's public source (`pkg/scalers/external_scaler.go`,
//! `pkg/scaling/scale_handler.go`, `pkg/scaling/executor/scale_scaledobjects.go`,
//! `pkg/scalers/externalscaler/externalscaler.proto`) and the HPA's documented algorithm:
//! - The wire types are KEDA's own proto (package `externalscaler`, service
//!   `ExternalScaler`; the field numbers are written below from KEDA's file), not
//!   GreenScale's copy, so a drift in GreenScale's proto shows up here.
//! - `ScaledObjectRef.scalerMetadata` is the trigger's whole `metadata` map: KEDA's own keys
//!   (`scalerAddress`, `enableTLS`, `unsafeSsl`, …) included; a key ending in `FromEnv` is
//!   sent under the same key with the value of that variable in the scale target's container
//!   (the first container unless `envSourceContainerName` names one), and left out when the
//!   variable is missing or empty.
//! - `GetMetricSpec` is called once; KEDA names the HPA metric `s{triggerIndex}-{name}` and
//!   strips that prefix again before `GetMetrics`. `targetSizeFloat` wins over `targetSize`
//!   when above zero, as `metricValueFloat` over `metricValue`.
//! - Every `pollingInterval`: `GetMetrics`, then `IsActive`.
//! - `external-push` triggers also keep one `StreamIsActive` open per ScaledObject; after it
//!   ends, KEDA reopens it after a backoff that starts at 2 s and doubles up to 1 min (back to
//!   2 s after a clean end of stream). A pushed `true` scales from zero at once; a pushed
//!   `false` is ignored (deactivation only comes from polling).
//! - Active at zero replicas: scale to `max(minReplicaCount, 1)`. Inactive with replicas
//!   above zero: to zero once `cooldownPeriod` has passed since the last active poll (N→0
//!   directly, not through the HPA).
//! - The HPA (sync every 15 s, only while replicas > 0): AverageValue target,
//!   `desired = ceil(total / target)` unless `|total / (target · replicas) − 1| ≤ 0.1`;
//!   scale-up at most `max(2 · replicas, replicas + 4)` per sync; scale-down to the highest
//!   recommendation of the last 300 s; within `[max(minReplicaCount, 1), maxReplicaCount]`.
//!   The HPA reads the value of the latest poll (KEDA's cached metrics).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// KEDA's external scaler messages, written from the field numbers of KEDA's own
/// `externalscaler.proto`.
pub mod wire {
    use std::collections::HashMap;

    /// `ScaledObjectRef { string name = 1; string namespace = 2; map<string,string> scalerMetadata = 3; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScaledObjectRef {
        /// The ScaledObject's name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Its namespace.
        #[prost(string, tag = "2")]
        pub namespace: String,
        /// The trigger's metadata.
        #[prost(map = "string, string", tag = "3")]
        pub scaler_metadata: HashMap<String, String>,
    }

    /// `IsActiveResponse { bool result = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IsActiveResponse {
        /// Whether the workload should run.
        #[prost(bool, tag = "1")]
        pub result: bool,
    }

    /// `MetricSpec { string metricName = 1; int64 targetSize = 2; double targetSizeFloat = 3; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricSpec {
        /// The metric's name.
        #[prost(string, tag = "1")]
        pub metric_name: String,
        /// Deprecated integer target.
        #[prost(int64, tag = "2")]
        pub target_size: i64,
        /// The target per replica.
        #[prost(double, tag = "3")]
        pub target_size_float: f64,
    }

    /// `GetMetricSpecResponse { repeated MetricSpec metricSpecs = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetMetricSpecResponse {
        /// The metrics.
        #[prost(message, repeated, tag = "1")]
        pub metric_specs: Vec<MetricSpec>,
    }

    /// `GetMetricsRequest { ScaledObjectRef scaledObjectRef = 1; string metricName = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetMetricsRequest {
        /// The ScaledObject.
        #[prost(message, optional, tag = "1")]
        pub scaled_object_ref: Option<ScaledObjectRef>,
        /// The metric's name without KEDA's `sN-` prefix.
        #[prost(string, tag = "2")]
        pub metric_name: String,
    }

    /// `MetricValue { string metricName = 1; int64 metricValue = 2; double metricValueFloat = 3; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricValue {
        /// The metric's name.
        #[prost(string, tag = "1")]
        pub metric_name: String,
        /// Deprecated integer value.
        #[prost(int64, tag = "2")]
        pub metric_value: i64,
        /// The value.
        #[prost(double, tag = "3")]
        pub metric_value_float: f64,
    }

    /// `GetMetricsResponse { repeated MetricValue metricValues = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetMetricsResponse {
        /// The values.
        #[prost(message, repeated, tag = "1")]
        pub metric_values: Vec<MetricValue>,
    }
}

use wire::*;

/// A ScaledObject as KEDA reads it from the cluster.
#[derive(Debug, Clone)]
pub struct ScaledObject {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.minReplicaCount` (KEDA's default 0).
    pub min_replicas: u32,
    /// `spec.maxReplicaCount` (KEDA's default 100).
    pub max_replicas: u32,
    /// `spec.pollingInterval` (KEDA's default 30 s).
    pub polling_interval: Duration,
    /// `spec.cooldownPeriod` (KEDA's default 300 s).
    pub cooldown: Duration,
    /// The triggers, in order.
    pub triggers: Vec<Trigger>,
}

/// One trigger of a ScaledObject, with the metadata KEDA would send an external scaler.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// `type`: `external`, `external-push`, `redis`, …
    pub kind: String,
    /// `metadata` with `*FromEnv` values resolved from the scale target's container.
    pub metadata: HashMap<String, String>,
}

impl ScaledObject {
    /// The `ScaledObjectRef` KEDA sends for trigger `index`.
    pub fn object_ref(&self, index: usize) -> ScaledObjectRef {
        ScaledObjectRef {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            scaler_metadata: self.triggers[index].metadata.clone(),
        }
    }
}

/// The documents `kubectl kustomize DIR` renders, as JSON values (YAML read by the test
/// venv's Python). Panics, saying why, when kubectl or the rendering fails.
pub fn render_kustomization(dir: &std::path::Path) -> Vec<Value> {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl kustomize (kubectl is needed): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut py = std::process::Command::new(crate::python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    use std::io::Write;
    py.stdin
        .take()
        .expect("stdin")
        .write_all(&out.stdout)
        .expect("write yaml");
    let json = py.wait_with_output().expect("python yaml to json");
    assert!(json.status.success(), "cannot read the rendered YAML");
    serde_json::from_slice(&json.stdout).expect("rendered manifests as JSON")
}

/// The ScaledObjects among rendered documents, with every trigger's metadata as KEDA would
/// send it (see the module's facts on `FromEnv`).
pub fn scaled_objects(docs: &[Value]) -> Vec<ScaledObject> {
    let int = |v: &Value, default: u64| v.as_u64().unwrap_or(default);
    docs.iter()
        .filter(|d| d["kind"] == "ScaledObject")
        .map(|so| {
            let spec = &so["spec"];
            let namespace = so["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let target = spec["scaleTargetRef"]["name"].as_str().unwrap_or_default();
            let env = container_env(docs, target, &namespace, &spec["scaleTargetRef"]);
            let triggers = spec["triggers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let mut metadata = HashMap::new();
                    for (k, v) in t["metadata"].as_object().into_iter().flatten() {
                        let v = v.as_str().unwrap_or_default().to_string();
                        if k.ends_with("FromEnv") {
                            if let Some(resolved) = env.get(&v).filter(|r| !r.is_empty()) {
                                metadata.insert(k.clone(), resolved.clone());
                            }
                        } else {
                            metadata.insert(k.clone(), v);
                        }
                    }
                    Trigger {
                        kind: t["type"].as_str().unwrap_or_default().to_string(),
                        metadata,
                    }
                })
                .collect();
            ScaledObject {
                name: so["metadata"]["name"].as_str().unwrap_or_default().into(),
                namespace,
                min_replicas: int(&spec["minReplicaCount"], 0) as u32,
                max_replicas: int(&spec["maxReplicaCount"], 100) as u32,
                polling_interval: Duration::from_secs(int(&spec["pollingInterval"], 30)),
                cooldown: Duration::from_secs(int(&spec["cooldownPeriod"], 300)),
                triggers,
            }
        })
        .collect()
}

/// The plain `value` environment of the scale target's container KEDA resolves from.
fn container_env(
    docs: &[Value],
    target: &str,
    namespace: &str,
    target_ref: &Value,
) -> HashMap<String, String> {
    let Some(deployment) = docs.iter().find(|d| {
        d["kind"] == "Deployment"
            && d["metadata"]["name"] == target
            && d["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
    }) else {
        return HashMap::new();
    };
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let container = match target_ref["envSourceContainerName"].as_str() {
        Some(name) => containers.iter().find(|c| c["name"] == name),
        None => containers.first(),
    };
    container
        .and_then(|c| c["env"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect()
}

/// How the emulator reaches the scaler: where `scalerAddress` really is (cluster DNS names
/// do not resolve in a test), and the TLS material a TriggerAuthentication would give.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `host:port` to dial instead of `scalerAddress`.
    pub address: String,
    /// `caCert` (PEM): with it, or with `enableTLS: "true"`, KEDA connects over TLS.
    pub ca_cert: Option<String>,
    /// `tlsClientCert` and `tlsClientKey` (PEM) for mutual TLS.
    pub client_identity: Option<(String, String)>,
    /// The name the server's certificate must carry.
    pub server_name: Option<String>,
}

impl Connection {
    /// A gRPC channel as KEDA would open it for these settings and trigger metadata.
    pub async fn channel(&self, metadata: &HashMap<String, String>) -> Result<Channel, String> {
        let tls = metadata.get("enableTLS").is_some_and(|v| v == "true")
            || self.ca_cert.is_some()
            || self.client_identity.is_some();
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.address))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5));
        if tls {
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_cert {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &self.client_identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &self.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(config).map_err(|e| e.to_string())?;
        }
        endpoint.connect().await.map_err(|e| format!("{e:?}"))
    }
}

/// A gRPC client of KEDA's `externalscaler.ExternalScaler` service over the wire types above.
#[derive(Clone)]
pub struct ScalerClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl ScalerClient {
    /// A client on an open channel.
    pub fn new(channel: Channel) -> Self {
        ScalerClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn unary<Req, Resp>(&mut self, method: &str, req: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_maybe_shared(format!(
            "/externalscaler.ExternalScaler/{method}"
        ))
        .expect("method path");
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        self.grpc
            .unary(tonic::Request::new(req), path, codec)
            .await
            .map(|r| r.into_inner())
    }

    /// `IsActive`.
    pub async fn is_active(&mut self, r: &ScaledObjectRef) -> Result<bool, tonic::Status> {
        let resp: IsActiveResponse = self.unary("IsActive", r.clone()).await?;
        Ok(resp.result)
    }

    /// `GetMetricSpec`.
    pub async fn get_metric_spec(
        &mut self,
        r: &ScaledObjectRef,
    ) -> Result<GetMetricSpecResponse, tonic::Status> {
        self.unary("GetMetricSpec", r.clone()).await
    }

    /// `GetMetrics`.
    pub async fn get_metrics(
        &mut self,
        r: &ScaledObjectRef,
        metric_name: &str,
    ) -> Result<GetMetricsResponse, tonic::Status> {
        let req = GetMetricsRequest {
            scaled_object_ref: Some(r.clone()),
            metric_name: metric_name.to_string(),
        };
        self.unary("GetMetrics", req).await
    }

    /// `StreamIsActive`: the stream of pushed answers.
    pub async fn stream_is_active(
        &mut self,
        r: &ScaledObjectRef,
    ) -> Result<tonic::Streaming<IsActiveResponse>, tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path =
            http::uri::PathAndQuery::from_static("/externalscaler.ExternalScaler/StreamIsActive");
        let codec = tonic_prost::ProstCodec::<ScaledObjectRef, IsActiveResponse>::default();
        self.grpc
            .server_streaming(tonic::Request::new(r.clone()), path, codec)
            .await
            .map(|r| r.into_inner())
    }
}

/// What the emulator did and saw, with the time since it started.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A call to the scaler and what it answered (or its error).
    Call {
        /// Seconds since start.
        at: f64,
        /// The ScaledObject.
        object: String,
        /// `GetMetricSpec`, `GetMetrics`, `IsActive`, `StreamIsActive`.
        method: &'static str,
        /// The answer, printed.
        answer: String,
    },
    /// A pushed `true` or `false` on `StreamIsActive`.
    Pushed {
        /// Seconds since start.
        at: f64,
        /// The ScaledObject.
        object: String,
        /// What was pushed.
        active: bool,
    },
    /// The replica count changed.
    Scaled {
        /// Seconds since start.
        at: f64,
        /// The ScaledObject.
        object: String,
        /// Replicas before.
        from: u32,
        /// Replicas after.
        to: u32,
        /// Which part of KEDA did it and why.
        why: String,
    },
}

/// Timing of the HPA (real defaults unless a test shortens them).
#[derive(Debug, Clone)]
pub struct HpaTiming {
    /// `--horizontal-pod-autoscaler-sync-period` (15 s).
    pub sync_period: Duration,
    /// Scale-down stabilization window (300 s).
    pub downscale_stabilization: Duration,
}

impl Default for HpaTiming {
    fn default() -> Self {
        HpaTiming {
            sync_period: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
        }
    }
}

/// One emulated ScaledObject at work: its replica count, and the log of what happened.
pub struct Emulated {
    /// The replica count the Deployment should have (the test reconciles to it).
    pub replicas: tokio::sync::watch::Receiver<u32>,
    /// Everything that happened, in order.
    pub events: Arc<Mutex<Vec<Event>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Emulated {
    /// The replica changes so far, as `(seconds, replicas)`.
    pub fn timeline(&self) -> Vec<(f64, u32)> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter_map(|e| match e {
                Event::Scaled { at, to, .. } => Some((*at, *to)),
                _ => None,
            })
            .collect()
    }

    /// How many times `method` was called.
    pub fn calls(&self, method: &str) -> usize {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter(|e| matches!(e, Event::Call { method: m, .. } if *m == method))
            .count()
    }

    /// Errors the scaler answered, printed.
    pub fn errors(&self) -> Vec<String> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter_map(|e| match e {
                Event::Call { method, answer, .. } if answer.starts_with("error") => {
                    Some(format!("{method}: {answer}"))
                }
                _ => None,
            })
            .collect()
    }
}

impl Drop for Emulated {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct ScaleState {
    replicas: u32,
    last_active: Option<Instant>,
    metric: Option<f64>,
    recommendations: Vec<(Instant, u32)>,
}

/// Runs KEDA's loops for trigger 0 of `so` against the scaler at `conn`, starting now.
/// Panics if the first `GetMetricSpec` fails, as KEDA would refuse the ScaledObject.
pub async fn emulate(so: ScaledObject, conn: Connection, hpa: HpaTiming) -> Emulated {
    let start = Instant::now();
    let at = move || start.elapsed().as_secs_f64();
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let log = {
        let events = events.clone();
        move |e: Event| events.lock().expect("events").push(e)
    };
    // A call to the scaler and its answer.
    let call = {
        let (log, name) = (log.clone(), so.name.clone());
        move |method: &'static str, answer: String| {
            log(Event::Call {
                at: at(),
                object: name.clone(),
                method,
                answer,
            })
        }
    };
    let trigger = so.triggers[0].clone();
    let object = so.object_ref(0);
    let channel = conn
        .channel(&trigger.metadata)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the scaler at {}: {e}", conn.address));
    let mut client = ScalerClient::new(channel);
    let spec = client
        .get_metric_spec(&object)
        .await
        .unwrap_or_else(|e| panic!("GetMetricSpec failed: {e}"));
    call("GetMetricSpec", format!("{spec:?}"));
    let first = spec.metric_specs.first().expect("one metric spec").clone();
    let target = if first.target_size_float > 0.0 {
        first.target_size_float
    } else {
        first.target_size as f64
    };
    // The HPA's name for it; KEDA strips the index again before calling GetMetrics.
    let hpa_metric = format!("s0-{}", first.metric_name);
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    let state = Arc::new(Mutex::new(ScaleState {
        replicas: 0,
        last_active: None,
        metric: None,
        recommendations: Vec::new(),
    }));
    let set = {
        let tx = tx.clone();
        let log = log.clone();
        let name = so.name.clone();
        move |s: &mut ScaleState, to: u32, why: String| {
            if s.replicas != to {
                log(Event::Scaled {
                    at: at(),
                    object: name.clone(),
                    from: s.replicas,
                    to,
                    why,
                });
                s.replicas = to;
                let _ = tx.send(to);
            }
        }
    };
    let from_zero = so.min_replicas.max(1);
    let mut tasks = Vec::new();

    // KEDA's polling loop: GetMetrics, then IsActive, every pollingInterval.
    {
        let mut client = client.clone();
        let (state, set, call, object) = (state.clone(), set.clone(), call.clone(), object.clone());
        let so = so.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(so.polling_interval).await;
                let metric_name = hpa_metric.strip_prefix("s0-").expect("index prefix");
                let value = match client.get_metrics(&object, metric_name).await {
                    Ok(r) => {
                        call("GetMetrics", format!("{r:?}"));
                        r.metric_values.first().map(|v| {
                            if v.metric_value_float > 0.0 {
                                v.metric_value_float
                            } else {
                                v.metric_value as f64
                            }
                        })
                    }
                    Err(e) => {
                        call("GetMetrics", format!("error: {e}"));
                        continue;
                    }
                };
                let active = match client.is_active(&object).await {
                    Ok(a) => a,
                    Err(e) => {
                        call("IsActive", format!("error: {e}"));
                        continue;
                    }
                };
                call("IsActive", active.to_string());
                let mut s = state.lock().expect("state");
                s.metric = value;
                if active {
                    s.last_active = Some(Instant::now());
                    if s.replicas == 0 {
                        set(&mut s, from_zero, "KEDA: active at zero (poll)".into());
                    }
                } else if s.replicas > 0
                    && so.min_replicas == 0
                    && s.last_active.is_none_or(|t| t.elapsed() >= so.cooldown)
                {
                    set(&mut s, 0, "KEDA: inactive for cooldownPeriod".into());
                }
            }
        }));
    }

    // The push stream, reopened with KEDA's backoff.
    if trigger.kind == "external-push" {
        let mut client = client.clone();
        let (state, set, log, call, object, name) = (
            state.clone(),
            set.clone(),
            log.clone(),
            call.clone(),
            object.clone(),
            so.name.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut retry = Duration::from_secs(2);
            loop {
                match client.stream_is_active(&object).await {
                    Ok(mut stream) => loop {
                        match stream.message().await {
                            Ok(Some(m)) => {
                                log(Event::Pushed {
                                    at: at(),
                                    object: name.clone(),
                                    active: m.result,
                                });
                                if m.result {
                                    let mut s = state.lock().expect("state");
                                    s.last_active = Some(Instant::now());
                                    if s.replicas == 0 {
                                        set(&mut s, from_zero, "KEDA: pushed active".into());
                                    }
                                }
                            }
                            Ok(None) => {
                                retry = Duration::from_secs(2);
                                break;
                            }
                            Err(e) => {
                                call("StreamIsActive", format!("error: {e}"));
                                break;
                            }
                        }
                    },
                    Err(e) => call("StreamIsActive", format!("error: {e}")),
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }));
    }

    // The HPA.
    {
        let (state, set, so) = (state.clone(), set.clone(), so.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(hpa.sync_period).await;
                let mut s = state.lock().expect("state");
                let (current, Some(total)) = (s.replicas, s.metric) else {
                    continue;
                };
                if current == 0 {
                    continue; // scaling is disabled at zero; KEDA handles 0 ↔ 1
                }
                let ratio = total / (target * current as f64);
                let mut desired = if (ratio - 1.0).abs() <= 0.1 {
                    current
                } else {
                    (total / target).ceil() as u32
                };
                desired = desired.min(current.saturating_mul(2).max(current + 4));
                let now = Instant::now();
                s.recommendations.push((now, desired));
                s.recommendations
                    .retain(|(t, _)| now.duration_since(*t) <= hpa.downscale_stabilization);
                if desired < current {
                    desired = s
                        .recommendations
                        .iter()
                        .map(|(_, r)| *r)
                        .max()
                        .unwrap_or(desired)
                        .min(current);
                }
                let desired = desired.clamp(so.min_replicas.max(1), so.max_replicas);
                set(
                    &mut s,
                    desired,
                    format!("HPA: ceil({total} / {target}) within limits"),
                );
            }
        }));
    }

    Emulated {
        replicas: rx,
        events,
        tasks,
    }
}

/// Certificates for a TLS test: a CA, a server certificate for `server_names`, and a client
/// certificate, all signed by the CA, as PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (KEDA's `caCert`; the scaler's `--tls-client-ca`).
    pub ca_cert: String,
    /// The server's certificate (`--tls-cert`).
    pub server_cert: String,
    /// The server's key (`--tls-key`).
    pub server_key: String,
    /// The client's certificate (KEDA's `tlsClientCert`).
    pub client_cert: String,
    /// The client's key (KEDA's `tlsClientKey`).
    pub client_key: String,
}

impl TestPki {
    /// Fresh keys and certificates.
    pub fn generate(server_names: &[&str]) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let names = server_names.iter().map(|n| n.to_string()).collect();
        let (server_cert, server_key) = leaf(names, ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf(
            vec!["keda-operator".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestPki {
            ca_cert: ca_cert.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}
