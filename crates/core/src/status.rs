//! What `greenscale up` shows of its pools: the typed status served at `/v1/pools`, read by
//! the dashboard and `greenscale status`. One definition, so producer and readers agree.

use serde::{Deserialize, Serialize};

/// What a pool's replicas are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// Local model servers started from a command.
    Command,
    /// A remote API (no process; the replica is the worker only).
    Remote,
}

impl PoolKind {
    /// The name shown in `status` and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Command => "command",
            PoolKind::Remote => "remote",
        }
    }
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Started; the model is loading (health check not passed yet).
    Starting,
    /// Serving: its worker leases the pool's jobs.
    Ready,
    /// Told to stop or sleep: takes no new jobs; in-flight jobs finish, then the process
    /// stops or sleeps.
    Draining,
    /// Asleep: its process lives but holds no GPU memory; it takes no jobs.
    Asleep,
    /// Waking from sleep (faster than a cold start).
    Waking,
}

/// One replica, as shown in the pool status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Replica name (`pool-N`).
    pub name: String,
    /// Life stage.
    pub state: ReplicaState,
    /// When it was started, Unix milliseconds.
    pub started_at_ms: u64,
    /// Measured cold start (start → health check passed), seconds, once ready.
    pub cold_start_s: Option<f64>,
    /// Port of its model server (local pools).
    pub port: Option<u16>,
    /// Process group id of its model server (local pools).
    pub pgid: Option<u32>,
    /// Jobs running on it now.
    pub in_flight: u64,
    /// The GPUs it is placed on (empty without GPU limits).
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// Host memory its processes held when it last fell asleep, bytes (measured).
    #[serde(default)]
    pub asleep_host_bytes: Option<u64>,
}

/// One recorded scaling decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// Replicas (starting + ready) before the decision.
    pub current: u32,
    /// Replicas asked for, after the pool's limits.
    pub desired: u32,
    /// Why, in words.
    pub reason: String,
    /// Jobs waiting (including retries waiting for their delay).
    pub pending: u64,
    /// Jobs running.
    pub in_flight: u64,
    /// Whether a job arrival (rather than the tick) triggered it.
    pub on_arrival: bool,
}

/// Measured cold starts of a pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdStarts {
    /// How many.
    pub count: u64,
    /// The latest, seconds.
    pub last_s: Option<f64>,
    /// Median of the kept ones, seconds.
    pub p50_s: Option<f64>,
    /// Mean of the kept ones, seconds.
    pub mean_s: Option<f64>,
}

/// A pool's state, as served at `/v1/pools` and printed by `greenscale status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Pool (model) name.
    pub name: String,
    /// Whether this is the built-in demo pool (a fake model).
    pub demo: bool,
    /// What its replicas are.
    pub kind: PoolKind,
    /// Scaling policy spec.
    pub policy: String,
    /// Jobs per replica.
    pub concurrency: u32,
    /// Replica limits.
    pub min_replicas: u32,
    /// Replica limits.
    pub max_replicas: u32,
    /// Configured cost of one replica-hour, if any.
    pub cost_per_hour: Option<f64>,
    /// Its currency, if given.
    pub currency: Option<String>,
    /// Replicas now.
    pub replicas: Vec<ReplicaView>,
    /// Jobs waiting at the last observation (including delayed retries).
    pub pending: u64,
    /// Jobs running at the last observation.
    pub in_flight: u64,
    /// The latest decision.
    pub last_decision: Option<DecisionRecord>,
    /// Recent decisions that changed the desired count or its reason, oldest first.
    pub decisions: Vec<DecisionRecord>,
    /// Measured cold starts.
    pub cold_starts: ColdStarts,
    /// Measured wakes from sleep (asleep → serving), for pools whose replicas sleep.
    #[serde(default)]
    pub wakes: ColdStarts,
    /// Replicas put to sleep so far.
    #[serde(default)]
    pub sleeps: u64,
    /// The sleep calls' engine (`vllm`, `llama.cpp`, `custom`), if its replicas sleep.
    #[serde(default)]
    pub sleep_engine: Option<String>,
    /// Replica-seconds used so far (every replica from its start to its stop).
    pub replica_seconds: f64,
    /// When the pool started (the period `replica_seconds` covers), Unix milliseconds.
    pub since_ms: u64,
    /// Most replicas the pool had at once so far.
    pub peak_replicas: u32,
    /// Failed starts or crashes in a row.
    pub failures_in_a_row: u32,
    /// The latest failure.
    pub last_failure: Option<String>,
    /// What one replica needs of the GPUs, if anything.
    #[serde(default)]
    pub gpu_need: Option<GpuNeed>,
    /// Replicas of this pool stopped to make room for another pool's (swaps).
    #[serde(default)]
    pub evicted: u64,
    /// Since when a replica is wanted but no GPU has room for it, Unix ms.
    #[serde(default)]
    pub waiting_for_gpu_since_ms: Option<u64>,
    /// The GPU energy its replicas used, when the GPUs' board power is known.
    #[serde(default)]
    pub energy: Option<Energy>,
}

/// A pool's GPU energy since it started, next to an always-on pool's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Energy {
    /// Used by its replicas, kWh (each replica's share of its GPUs' board power over its
    /// lifetime).
    pub kwh: f64,
    /// What the observed peak of replicas, always on, would have used over the same time.
    pub always_on_kwh: f64,
    /// Whether the figures are estimated from a board power (declared, or the driver's
    /// power limit) rather than read from an energy counter.
    pub estimated: bool,
    /// The grid's carbon intensity, gCO2e per kWh, if configured: emissions are
    /// `kwh × grid_g_per_kwh`.
    pub grid_g_per_kwh: Option<f64>,
}

/// What one replica of a pool needs of the GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuNeed {
    /// Devices.
    pub devices: u32,
    /// Memory on each, bytes; `None`: each device whole.
    pub memory_bytes: Option<u64>,
}

/// Where a machine's accelerator count comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuSource {
    /// Read from the driver (NVML).
    Detected,
    /// Declared in the pools file or with `--gpu`.
    Declared,
}

/// Memory one replica holds on one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuHold {
    /// The pool.
    pub pool: String,
    /// The replica.
    pub replica: String,
    /// Its state.
    pub state: ReplicaState,
    /// Bytes it holds.
    pub memory_bytes: u64,
}

/// One GPU of the machine and what is placed on it, as served at `/v1/gpus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuStatus {
    /// Device index (what `CUDA_VISIBLE_DEVICES` names).
    pub index: u32,
    /// Device name (`declared` when declared).
    pub name: String,
    /// Detected or declared.
    pub source: GpuSource,
    /// Its memory, bytes.
    pub memory_bytes: u64,
    /// Bytes not held by any replica.
    pub free_bytes: u64,
    /// Its power draw now, watts, read from the driver (its idle power when nothing is
    /// held); `None` where the driver does not tell.
    #[serde(default)]
    pub power_w: Option<f64>,
    /// What the replicas placed on it hold.
    pub held: Vec<GpuHold>,
}
