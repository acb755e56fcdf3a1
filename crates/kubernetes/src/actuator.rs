//! The direct actuator, for clusters without KEDA: once a second it holds a Lease (so only
//! one scaler acts), observes the queue and the worker pods, asks the policy, and patches the
//! worker Deployment's scale subresource when the desired count differs. It measures cold
//! starts from pod status (pod created → Ready).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenscale_core::Reader;
use greenscale_core::policy::{Policy, mean};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};

use crate::error::ScalerError;
use crate::external::TargetSettings;
use crate::metrics::ScalerMetrics;

/// What the actuator scales and how.
#[derive(Debug, Clone)]
pub struct ActuatorConfig {
    /// Namespace of the Deployment and the Lease.
    pub namespace: String,
    /// The worker Deployment.
    pub deployment: String,
    /// The Lease that elects one acting scaler.
    pub lease_name: String,
    /// This scaler's identity in the Lease (the pod name in a cluster).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// Queue list, policy, concurrency and limits.
    pub settings: TargetSettings,
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Another scaler holds the Lease: nothing was done.
    NotLeader,
    /// Leader; the Deployment already had the desired replicas.
    Unchanged(u32),
    /// Leader; the scale was patched from the first count to the second.
    Scaled(u32, u32),
}

/// The actuator's state across rounds.
pub struct Actuator {
    client: kube::Client,
    queue: Arc<dyn Reader>,
    config: ActuatorConfig,
    policy: Box<dyn Policy>,
    metrics: Arc<ScalerMetrics>,
    epoch: Instant,
    measured: HashSet<String>,
    cold_starts: Vec<f64>,
    leader: bool,
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Actuator {
    /// An actuator acting through `client` on the jobs of `queue`.
    pub fn new(
        client: kube::Client,
        queue: Arc<dyn Reader>,
        config: ActuatorConfig,
        metrics: Arc<ScalerMetrics>,
    ) -> Self {
        let policy = config.settings.policy.build();
        Actuator {
            client,
            queue,
            config,
            policy,
            metrics,
            epoch: Instant::now(),
            measured: HashSet::new(),
            cold_starts: Vec::new(),
            leader: false,
        }
    }

    /// Holds, takes or renews the Lease; true when this scaler may act.
    async fn hold_lease(&mut self) -> Result<bool, kube::Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let me = self.config.identity.clone();
        let duration = self.config.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = leases.get_opt(&self.config.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.lease_name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now_micro()),
                    renew_time: Some(now_micro()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_for = spec.lease_duration_seconds.unwrap_or(duration).max(1) as i64;
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| Timestamp::now().as_second() - t.0.as_second() > held_for);
        if holder != me && !holder.is_empty() && !expired {
            return Ok(false);
        }
        if holder != me {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(now_micro());
            spec.holder_identity = Some(me);
            tracing::info!(lease = %self.config.lease_name, previous = %holder, "taking the Lease");
        }
        spec.renew_time = Some(now_micro());
        spec.lease_duration_seconds = Some(duration);
        let name = self.config.lease_name.clone();
        match leases.replace(&name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Someone else wrote it first (resourceVersion changed): not ours this round.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ready worker pods, recording the cold start of pods that became ready since.
    async fn ready_pods(&mut self, selector: &str) -> Result<u32, kube::Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        let mut ready = 0;
        for pod in list.items {
            let Some(condition) = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
            else {
                continue;
            };
            ready += 1;
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if let (Some(created), Some(at)) = (
                pod.metadata.creation_timestamp.as_ref(),
                condition.last_transition_time.as_ref(),
            ) && self.measured.insert(uid)
            {
                let secs = (at.0.as_millisecond() - created.0.as_millisecond()) as f64 / 1000.0;
                if secs >= 0.0 {
                    self.cold_starts.push(secs);
                    self.metrics.cold_start(&self.config.settings.list, secs);
                    tracing::info!(pod = ?pod.metadata.name, cold_start_s = secs, "worker pod ready");
                }
            }
        }
        Ok(ready)
    }

    /// One round: Lease, observation, decision, and the scale patch when needed.
    pub async fn step(&mut self) -> Result<Step, ScalerError> {
        let leader = self
            .hold_lease()
            .await
            .map_err(ScalerError::kubernetes("Lease"))?;
        if leader != self.leader {
            self.leader = leader;
            self.metrics.leader.set(leader as i64);
            tracing::info!(
                leader,
                "Lease {}",
                if leader {
                    "held: acting"
                } else {
                    "lost: not acting"
                }
            );
        }
        if !leader {
            return Ok(Step::NotLeader);
        }
        let deployments: Api<Deployment> =
            Api::namespaced(self.client.clone(), &self.config.namespace);
        let scale = deployments
            .get_scale(&self.config.deployment)
            .await
            .map_err(ScalerError::kubernetes(format!(
                "scale of deployment {}",
                self.config.deployment
            )))?;
        let current = scale
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0)
            .max(0) as u32;
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        let ready = if selector.is_empty() {
            0
        } else {
            self.ready_pods(&selector)
                .await
                .map_err(ScalerError::kubernetes("pods"))?
        };
        self.metrics.set_replicas(
            &self.config.settings.list,
            current.saturating_sub(ready),
            ready,
        );
        let stats = self.queue.stats().await?;
        let s = &self.config.settings;
        let measured = mean(self.cold_starts.iter().copied());
        let obs = s.observation(
            self.epoch.elapsed().as_secs_f64(),
            &stats,
            ready,
            current.saturating_sub(ready),
            measured,
        );
        let decision = self.policy.decide(&obs);
        let desired = s.settle(decision.desired, &stats);
        self.metrics.desired(&s.list, desired);
        if desired == current {
            return Ok(Step::Unchanged(current));
        }
        let patch = serde_json::json!({"spec": {"replicas": desired}});
        deployments
            .patch_scale(
                &self.config.deployment,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(ScalerError::kubernetes(format!(
                "patching the scale of {}",
                self.config.deployment
            )))?;
        self.metrics.scale_patches.inc();
        tracing::info!(deployment = %self.config.deployment, from = current, to = desired, reason = %decision.reason, "scaled");
        Ok(Step::Scaled(current, desired))
    }

    /// Runs a round every `every` until `shutdown` completes; errors are logged and retried.
    pub async fn run(mut self, every: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.step().await {
                tracing::warn!(error = %e, "actuator round failed; retrying");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
