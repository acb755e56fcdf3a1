//! Command-line interface: every flag can also be set by an environment variable.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use greenscale_core::policy::Spec;
use greenscale_core::{QueueConfig, parse_duration};

/// GreenScale: GPU inference that costs nothing while idle. Jobs go into a durable queue,
/// workers run them against a model, and capacity scales to zero when there is no work.
#[derive(Debug, Parser)]
#[command(name = "greenscale", version, propagate_version = true)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "GREENSCALE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run everything on this machine: gateway, embedded queue, autoscaler, and local model
    /// servers started and stopped on demand (or remote APIs).
    Up(UpArgs),
    /// Run a worker: lease jobs from the queue and run them against a model.
    Worker(WorkerArgs),
    /// Run the HTTP gateway: jobs API, OpenAI-compatible API, metrics, OpenAPI document.
    Gateway(GatewayArgs),
    /// Run the Kubernetes scaler: KEDA's external scaler over gRPC, and optionally the
    /// direct actuator that scales the worker Deployment itself.
    Scaler(ScalerArgs),
    /// Run the built-in demo model server (OpenAI-compatible; deterministic text).
    DemoModel(DemoModelArgs),
    /// Submit a prompt as a job; prints the job id, or the answer with --wait.
    Submit(SubmitArgs),
    /// Show queue counts, or one job's record.
    Status(StatusArgs),
    /// Inspect, retry or purge the dead-letter list.
    DeadLetter(DeadLetterArgs),
    /// Replay a request trace against scaling policies: GPU-seconds, cold-start waits,
    /// wait percentiles, interruptions, against an offline oracle.
    Sim(SimArgs),
    /// Internal: runs a model-server command for `up` and stops it when `up` goes away.
    #[command(hide = true)]
    ReplicaGuard(ReplicaGuardArgs),
}

/// Where the queue is and how it behaves.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/0. Without it, the prototype's REDIS_HOST and
    /// REDIS_PORT are used, and failing those redis://127.0.0.1:6379.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Name of the pending list (the prototype's list name).
    #[arg(long, env = "REDIS_LIST_NAME", default_value = "jobs")]
    pub list: String,
    #[command(flatten)]
    pub tuning: QueueTuning,
}

/// How the queue behaves (any backend).
#[derive(Debug, Clone, Args)]
pub struct QueueTuning {
    /// How long a worker's lease lasts without a heartbeat before its jobs go back.
    #[arg(long, env = "GREENSCALE_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Runs a job may start before it goes to the dead-letter list.
    #[arg(long, env = "GREENSCALE_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// How long finished job records and result:{id} answers are kept.
    #[arg(long, env = "GREENSCALE_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub retention: Duration,
    /// First retry delay after a transient failure (doubles each attempt, with jitter).
    #[arg(long, env = "GREENSCALE_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    pub retry_base: Duration,
}

impl QueueTuning {
    /// The queue settings these flags describe.
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            lease: self.lease,
            max_attempts: self.max_attempts,
            retention: self.retention,
            retry_base: self.retry_base,
            ..QueueConfig::default()
        }
    }
}

impl QueueArgs {
    /// The Redis URL to use, following the documented fallbacks.
    pub fn redis_url(&self) -> String {
        redis_url_or_fallback(self.redis_url.as_deref())
    }
}

/// `url` when given; otherwise the prototype's REDIS_HOST and REDIS_PORT; otherwise
/// redis://127.0.0.1:6379.
pub fn redis_url_or_fallback(url: Option<&str>) -> String {
    if let Some(url) = url {
        return url.to_string();
    }
    match std::env::var("REDIS_HOST") {
        Ok(host) if !host.is_empty() => {
            let port = std::env::var("REDIS_PORT").unwrap_or_else(|_| "6379".into());
            format!("redis://{host}:{port}")
        }
        _ => "redis://127.0.0.1:6379".into(),
    }
}

/// `greenscale worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    /// The model's OpenAI-compatible base URL (…/v1) or full …/chat/completions URL.
    /// Falls back to the prototype's NEYSA_API_URL.
    #[arg(long, env = "GREENSCALE_MODEL_URL")]
    pub model_url: Option<String>,
    /// Bearer key for the model API. Falls back to the prototype's NEYSA_API_KEY. Never logged.
    #[arg(long, env = "GREENSCALE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Model to ask for when a job names none.
    #[arg(
        long,
        env = "GREENSCALE_MODEL",
        default_value = "meta-llama/Llama-3.3-70B-Instruct"
    )]
    pub model: String,
    /// Sampling temperature when a job sets none.
    #[arg(long, env = "GREENSCALE_TEMPERATURE", default_value_t = 0.7)]
    pub temperature: f32,
    /// Generated-token limit when a job sets none.
    #[arg(long, env = "GREENSCALE_MAX_TOKENS", default_value_t = 200)]
    pub max_tokens: u32,
    /// Jobs run at once.
    #[arg(long, env = "GREENSCALE_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// On SIGTERM/SIGINT, how long in-flight jobs may take before they are handed back.
    #[arg(long, env = "GREENSCALE_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Longest one job may run before it counts as a (transient) timeout.
    #[arg(long, env = "GREENSCALE_JOB_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub job_timeout: Duration,
    /// This worker's id (default: host name, process id and a random suffix).
    #[arg(long, env = "GREENSCALE_WORKER_ID")]
    pub worker_id: Option<String>,
}

/// `greenscale gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Model names listed by /v1/models besides those the workers announce (the models
    /// they serve, within the retention); the first is used when a request names none
    /// (without it, the worker's own --model).
    #[arg(long = "model", env = "GREENSCALE_MODEL", value_delimiter = ',')]
    pub models: Vec<String>,
    /// On SIGTERM/SIGINT: how long requests waiting on running jobs may still get their
    /// answers (new work gets 503 meanwhile) before the gateway stops.
    #[arg(long, env = "GREENSCALE_DRAIN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub drain_grace: Duration,
}

/// The HTTP API's settings (`gateway` and `up`).
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on. A non-loopback address needs API keys.
    #[arg(long, env = "GREENSCALE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Accepted API key, `TENANT:KEY` (a bare KEY is tenant `default`); a tenant sees only
    /// its own jobs (repeat, or comma-separate in GREENSCALE_API_KEYS).
    #[arg(
        long = "api-key",
        env = "GREENSCALE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Admin API key: sees every tenant's jobs (`KEY`, or `TENANT:KEY` to name the tenant
    /// its own jobs belong to; repeat, or comma-separate in GREENSCALE_ADMIN_KEYS).
    #[arg(
        long = "admin-key",
        env = "GREENSCALE_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Vec<String>,
    /// A tenant's share and quotas, `NAME:weight=2,max_running=4,max_queued=1000,tokens_per_minute=50000`
    /// (any of them; unnamed tenants get weight 1 and no quotas). Stored in the queue for
    /// every process that shares it (repeat, or `;`-separate in GREENSCALE_TENANTS).
    #[arg(long = "tenant", env = "GREENSCALE_TENANTS", value_delimiter = ';', value_parser = parse_tenant)]
    pub tenants: Vec<(String, greenscale_core::TenantSettings)>,
    /// How long an OpenAI-compatible request waits for a worker to start it.
    #[arg(long, env = "GREENSCALE_WAIT_DEADLINE", default_value = "300s", value_parser = parse_duration)]
    pub wait_deadline: Duration,
    /// Pending jobs at which new requests get 429 with Retry-After (the count is re-read
    /// at most every 100 ms).
    #[arg(long, env = "GREENSCALE_MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: u64,
    /// Largest request body, bytes.
    #[arg(long, env = "GREENSCALE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest prompt (all messages), characters.
    #[arg(long, env = "GREENSCALE_MAX_PROMPT_CHARS", default_value_t = 200_000)]
    pub max_prompt_chars: usize,
    /// Where files, batches and webhook deliveries are kept, shared by every gateway: a
    /// folder (`file:///path` or a path) or `s3://BUCKET/PREFIX` (credentials and endpoint
    /// from the AWS_* variables). `up` uses `objects` in its data folder; a gateway without
    /// it serves no Batch API.
    #[arg(long, env = "GREENSCALE_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// Largest uploaded file, bytes.
    #[arg(long, env = "GREENSCALE_MAX_FILE_BYTES", default_value_t = 200_000_000)]
    pub max_file_bytes: usize,
    /// The key tenants' webhook secrets are derived from (default: one made at random and
    /// kept in the object store, so every gateway sharing it signs alike).
    #[arg(long, env = "GREENSCALE_WEBHOOK_KEY", hide_env_values = true)]
    pub webhook_key: Option<String>,
    /// Non-public addresses webhooks may call, as CIDRs (e.g. 10.0.0.0/8); loopback,
    /// link-local and private addresses are refused otherwise (repeat, or comma-separate).
    #[arg(
        long = "webhook-allow",
        env = "GREENSCALE_WEBHOOK_ALLOW",
        value_delimiter = ','
    )]
    pub webhook_allow: Vec<ipnet::IpNet>,
    /// Wait before a failed webhook is tried again; each further try waits twice as long.
    #[arg(long, env = "GREENSCALE_WEBHOOK_RETRY", default_value = "5s", value_parser = parse_duration)]
    pub webhook_retry: Duration,
    /// Tries of a webhook before it is dead-lettered (see GET /v1/webhooks/dead).
    #[arg(long, env = "GREENSCALE_WEBHOOK_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_attempts: u32,
}

/// `greenscale up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub tuning: QueueTuning,
    /// Pools file (TOML, `[[pool]]` tables; see docs/up.md). Without it (and without
    /// --model-cmd / --model-url) one `demo` pool runs the built-in demo model.
    #[arg(long, env = "GREENSCALE_CONFIG", conflicts_with_all = ["model_cmd", "model_url"])]
    pub config: Option<std::path::PathBuf>,
    /// One pool of local model servers started with this command; `{port}` is replaced
    /// by each replica's port (e.g. "llama-server -m model.gguf --port {port}").
    #[arg(long, env = "GREENSCALE_MODEL_CMD", conflicts_with = "model_url")]
    pub model_cmd: Option<String>,
    /// One pool calling this remote OpenAI-compatible API (no local processes).
    #[arg(long, env = "GREENSCALE_MODEL_URL")]
    pub model_url: Option<String>,
    /// Bearer key for --model-url. Never logged.
    #[arg(
        long,
        env = "GREENSCALE_MODEL_API_KEY",
        hide_env_values = true,
        requires = "model_url"
    )]
    pub model_api_key: Option<String>,
    /// Model name of the --model-cmd / --model-url pool: what clients ask for and what is
    /// sent to the server (default: `default`; the demo pool is `demo`).
    #[arg(long, env = "GREENSCALE_MODEL")]
    pub model: Option<String>,
    /// Health-check path of --model-cmd servers.
    #[arg(long, env = "GREENSCALE_HEALTH_PATH", default_value = "/health")]
    pub health_path: String,
    /// A GPU replicas are placed on, by its memory (e.g. 80GiB); repeat for each. Replaces
    /// the pools file's [[gpu]] tables and what the driver reports.
    #[arg(long = "gpu", value_name = "MEMORY", value_parser = parse_gpu_memory)]
    pub gpus: Vec<u64>,
    /// How long a pool with jobs waits for GPU room while other pools are busy before
    /// their replicas are drained for it (default 30s, or the pools file's gpu_turn).
    #[arg(long, value_parser = parse_duration)]
    pub gpu_turn: Option<Duration>,
    /// Scaling policy of the single pool (see `greenscale sim --help` for the names).
    #[arg(long, env = "GREENSCALE_POLICY", default_value = "greenscale", value_parser = Spec::parse)]
    pub policy: Spec,
    /// Jobs one replica of the single pool runs at once.
    #[arg(long, env = "GREENSCALE_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Replica limit of the single pool.
    #[arg(long, env = "GREENSCALE_MAX_REPLICAS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_replicas: u32,
    /// How long a replica of the single pool may take to pass its health check.
    #[arg(long, env = "GREENSCALE_STARTUP_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub startup_timeout: Duration,
    /// Load time of the demo model (its cold start).
    #[arg(long, env = "GREENSCALE_DEMO_LOAD_TIME", default_value = "3s", value_parser = parse_duration)]
    pub demo_load_time: Duration,
    /// Tokens per second the demo model writes.
    #[arg(long, env = "GREENSCALE_DEMO_TOKENS_PER_SEC", default_value_t = 50.0)]
    pub demo_tokens_per_sec: f64,
    /// Folder for the queue database and the lock that keeps a second `up` off it.
    #[arg(long, env = "GREENSCALE_DATA_DIR", default_value = "greenscale-data")]
    pub data_dir: std::path::PathBuf,
    /// Use this Redis (redis://...) as the queue instead of the embedded SQLite database;
    /// each pool's jobs go to a list named after the pool.
    #[arg(long, env = "GREENSCALE_QUEUE")]
    pub queue: Option<String>,
}

/// `greenscale scaler`.
#[derive(Debug, Args)]
pub struct ScalerArgs {
    /// Redis URL of the queue. Without it, REDIS_HOST and REDIS_PORT, then
    /// redis://127.0.0.1:6379.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Address of the gRPC external scaler (what a ScaledObject's `scalerAddress` points at).
    #[arg(long, env = "GREENSCALE_GRPC_LISTEN", default_value = "0.0.0.0:9090")]
    pub grpc_listen: std::net::SocketAddr,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "GREENSCALE_HTTP_LISTEN", default_value = "0.0.0.0:8081")]
    pub http_listen: std::net::SocketAddr,
    /// `kubernetes` also scales the Deployment directly through its scale subresource
    /// (for clusters without KEDA); `none` only answers KEDA.
    #[arg(long, env = "GREENSCALE_ACTUATOR", default_value = "none", value_parser = ["none", "kubernetes"])]
    pub actuator: String,
    /// Namespace of the worker Deployment (actuator). Default: this pod's namespace.
    #[arg(long, env = "GREENSCALE_NAMESPACE")]
    pub namespace: Option<String>,
    /// The worker Deployment to scale (actuator).
    #[arg(
        long,
        env = "GREENSCALE_DEPLOYMENT",
        required_if_eq("actuator", "kubernetes")
    )]
    pub deployment: Option<String>,
    /// Pending list the workers take jobs from (actuator).
    #[arg(long, env = "REDIS_LIST_NAME", default_value = "jobs")]
    pub list: String,
    /// Scaling policy (actuator; a ScaledObject names its own in scalerMetadata).
    #[arg(long, env = "GREENSCALE_POLICY", default_value = "greenscale")]
    pub policy: String,
    /// Jobs one worker replica runs at once (actuator).
    #[arg(long, env = "GREENSCALE_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Most replicas (actuator).
    #[arg(long, env = "GREENSCALE_MAX_REPLICAS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_replicas: u32,
    /// Name of the Lease that lets only one scaler act (actuator).
    #[arg(
        long,
        env = "GREENSCALE_LEASE_NAME",
        default_value = "greenscale-scaler"
    )]
    pub lease_name: String,
    /// This scaler's identity in the Lease (default: the host name, i.e. the pod name).
    #[arg(long, env = "GREENSCALE_IDENTITY")]
    pub identity: Option<String>,
    /// Serve gRPC over TLS with this certificate chain (PEM); KEDA connects with TLS when the
    /// trigger sets `enableTLS` or its TriggerAuthentication gives `caCert`.
    #[arg(long, env = "GREENSCALE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "GREENSCALE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Mutual TLS: accept only clients whose certificate this CA (PEM) signed (KEDA sends
    /// the TriggerAuthentication's `tlsClientCert`/`tlsClientKey`).
    #[arg(long, env = "GREENSCALE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
}

/// `greenscale replica-guard` (internal).
#[derive(Debug, Args)]
pub struct ReplicaGuardArgs {
    /// After the supervisor goes away: how long the command may take to exit on SIGTERM.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// The command line (run with `sh -c`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `greenscale demo-model`.
#[derive(Debug, Args)]
pub struct DemoModelArgs {
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, env = "GREENSCALE_DEMO_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "GREENSCALE_DEMO_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Simulated model load time: /health answers 503 until it has passed.
    #[arg(long, env = "GREENSCALE_DEMO_LOAD_TIME", default_value = "0s", value_parser = parse_duration)]
    pub load_time: Duration,
    /// Tokens written per second (0 = as fast as possible).
    #[arg(long, env = "GREENSCALE_DEMO_TOKENS_PER_SEC", default_value_t = 0.0)]
    pub tokens_per_sec: f64,
}

/// Talking to a running gateway or `greenscale up` instead of the queue.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of a running `greenscale up` or gateway (e.g. http://127.0.0.1:8080);
    /// without it, the Redis queue is used directly.
    #[arg(long, env = "GREENSCALE_URL")]
    pub url: Option<String>,
    /// API key for --url. Never logged.
    #[arg(
        long,
        env = "GREENSCALE_GATEWAY_KEY",
        hide_env_values = true,
        requires = "url"
    )]
    pub api_key: Option<String>,
}

/// `greenscale submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// The prompt; `-` reads it from standard input.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file (for prompts too long for the command line).
    #[arg(long, value_name = "PATH")]
    pub file: Option<std::path::PathBuf>,
    /// Wait for the answer and print it (exit status 1 if the job fails). The job id is
    /// printed first (on standard error at a terminal, else as the first line of output).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits before giving up (the job keeps running).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Choose the job id (default: a fresh UUID). Only with the queue directly.
    #[arg(long, conflicts_with = "url")]
    pub job_id: Option<String>,
    /// Model to ask for (default: the worker's).
    #[arg(long)]
    pub model: Option<String>,
    /// Generated-token limit (default: the worker's).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature (default: the worker's).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Priority class: `interactive` (default), `batch` (may wait for warm capacity), or a
    /// whole number from -100 to 100 (higher first).
    #[arg(long, value_parser = parse_priority)]
    pub priority: Option<greenscale_core::Priority>,
    /// The job must start within this long (e.g. `30s`), or it expires unrun.
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<Duration>,
}

/// `greenscale status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Show this job's record instead of the queue counts.
    pub job_id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `greenscale dead-letter`.
#[derive(Debug, Args)]
pub struct DeadLetterArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    /// What to do with the dead-letter list.
    #[command(subcommand)]
    pub action: DeadLetterAction,
}

/// Actions on the dead-letter list.
#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// List dead letters, newest first.
    List {
        /// How many to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back on the queue with a fresh retry budget.
    Retry {
        /// Job ids to retry.
        #[arg(required_unless_present = "all")]
        job_ids: Vec<String>,
        /// Retry every dead letter.
        #[arg(long, conflicts_with = "job_ids")]
        all: bool,
    },
    /// Delete every dead letter.
    Purge,
}

/// `greenscale sim`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["trace", "synthetic"])))]
pub struct SimArgs {
    /// The trace file.
    #[arg(long, env = "GREENSCALE_SIM_TRACE", conflicts_with = "synthetic")]
    pub trace: Option<std::path::PathBuf>,
    /// Use a generated trace instead: poisson, diurnal, onoff, cron or burst.
    #[arg(long, env = "GREENSCALE_SIM_SYNTHETIC")]
    pub synthetic: Option<String>,
    /// Trace format: auto, azure-llm, azure-functions, jsonl or plain.
    #[arg(long, env = "GREENSCALE_SIM_FORMAT", default_value = "auto")]
    pub format: greenscale_core::sim::Format,
    /// Policies to compare, comma-separated, each with optional parameters
    /// (e.g. keda-seed,greenscale:cold_cost=120,keepalive:10m).
    #[arg(
        long,
        env = "GREENSCALE_SIM_POLICY",
        default_value = "greenscale,keda-seed,keda-default,knative,keepalive:10m,histogram"
    )]
    pub policy: String,
    /// Seconds from starting a replica to it being ready.
    #[arg(long, env = "GREENSCALE_SIM_COLD_START", default_value = "30s", value_parser = parse_duration)]
    pub cold_start: Duration,
    /// Jobs one replica serves at once.
    #[arg(long, env = "GREENSCALE_SIM_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Prompt tokens processed per second (service time from token counts).
    #[arg(long, env = "GREENSCALE_SIM_PREFILL_TPS", default_value_t = 5000.0)]
    pub prefill_tps: f64,
    /// Tokens generated per second.
    #[arg(long, env = "GREENSCALE_SIM_DECODE_TPS", default_value_t = 50.0)]
    pub decode_tps: f64,
    /// Service time for traces without token counts or times.
    #[arg(long, env = "GREENSCALE_SIM_SERVICE_TIME", default_value = "2s", value_parser = parse_duration)]
    pub service_time: Duration,
    /// How often policies are consulted.
    #[arg(long, env = "GREENSCALE_SIM_TICK", default_value = "1s", value_parser = parse_duration)]
    pub tick: Duration,
    /// Give replicas a sleep tier that wakes in this long (e.g. 3s): policies that know
    /// tiers keep idle replicas asleep between warm and stopped.
    #[arg(long, env = "GREENSCALE_SIM_WAKE", value_parser = parse_duration)]
    pub wake: Option<Duration>,
    /// A sleeping replica's cost per second as a share of a warm one's (with --wake).
    #[arg(
        long,
        env = "GREENSCALE_SIM_SLEEP_COST",
        default_value_t = 0.1,
        requires = "wake"
    )]
    pub sleep_cost: f64,
    /// The trace's pools share GPUs that hold this many replicas at once: pools wait for
    /// room and evict each other (each policy family in its own order; see docs/scaling.md).
    #[arg(long, env = "GREENSCALE_SIM_GPU_SLOTS", value_parser = clap::value_parser!(u32).range(1..))]
    pub gpu_slots: Option<u32>,
    /// With --gpu-slots: how long a pool with work waits before GreenScale drains a busy
    /// replica of another pool for it.
    #[arg(long, env = "GREENSCALE_SIM_GPU_TURN", default_value = "30s", value_parser = parse_duration, requires = "gpu_slots")]
    pub gpu_turn: Duration,
    /// The pool's replica limit, shared by every policy.
    #[arg(long, env = "GREENSCALE_SIM_MAX_REPLICAS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_replicas: u32,
    /// Share of the trace's jobs (0 to 1) of the batch class: they start after waiting
    /// interactive jobs, and `greenscale` lets them wait for warm capacity (its
    /// `batch_max_wait`); waits are reported per class. The same jobs are batch for every
    /// policy.
    #[arg(long, env = "GREENSCALE_SIM_BATCH_SHARE", default_value_t = 0.0)]
    pub batch_share: f64,
    /// Add a batch of this many requests (service times taken from the trace) at
    /// --batch-at after the trace's start and every day after, each to start within
    /// --batch-window. Every policy then runs twice: with the batch deferrable, and with
    /// it run at once as ordinary jobs; GPU-seconds, cold starts and late batch jobs are
    /// compared.
    #[arg(long, env = "GREENSCALE_SIM_DAILY_BATCH", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub daily_batch: Option<u32>,
    /// When the daily batch arrives, after the trace's start.
    #[arg(long, default_value = "0s", value_parser = parse_duration, requires = "daily_batch")]
    pub batch_at: Duration,
    /// The daily batch's completion window: its requests must start within it.
    #[arg(long, default_value = "24h", value_parser = parse_duration, requires = "daily_batch")]
    pub batch_window: Duration,
    /// Seed for spreading per-minute counts and for synthetic traces.
    #[arg(long, env = "GREENSCALE_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Print a JSON array, one object per policy.
    #[arg(long, env = "GREENSCALE_SIM_JSON")]
    pub json: bool,
    /// Draw replicas and queue depth over time to this SVG file.
    #[arg(long, env = "GREENSCALE_SIM_PLOT")]
    pub plot: Option<std::path::PathBuf>,
    /// Draw GPU-seconds against cold-start waits for every policy to this SVG file,
    /// joining the `greenscale` points (e.g. a sweep of cold_cost) into a frontier.
    #[arg(long, env = "GREENSCALE_SIM_FRONTIER")]
    pub frontier: Option<std::path::PathBuf>,
}

/// Sets up logging to stderr; `RUST_LOG` chooses the level (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A model server's own lines carry their own time and level: in text logs they are
    // shown as they are, not wrapped in ours.
    greenscale_local::model_output_as_is(matches!(format, LogFormat::Text));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Reads a `--gpu` memory size.
fn parse_gpu_memory(text: &str) -> Result<u64, greenscale_core::InvalidInput> {
    match greenscale_core::parse_bytes(text)? {
        0 => Err(greenscale_core::InvalidInput(
            "a GPU's memory must be more than 0".into(),
        )),
        bytes => Ok(bytes),
    }
}

/// Reads `interactive`, `batch` or a number.
fn parse_priority(text: &str) -> Result<greenscale_core::Priority, String> {
    greenscale_core::Priority::parse(text).map_err(|e| e.0)
}

/// Reads `NAME:weight=2,max_running=4,max_queued=1000,tokens_per_minute=50000`.
fn parse_tenant(text: &str) -> Result<(String, greenscale_core::TenantSettings), String> {
    let (name, rest) = text.split_once(':').unwrap_or((text, ""));
    let name = name.trim();
    greenscale_core::validate_tenant(name).map_err(|e| e.0)?;
    let mut settings = greenscale_core::TenantSettings::default();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{key}={value}: {e}");
        match key.trim() {
            "weight" => settings.weight = value.trim().parse().map_err(|e| bad(&e))?,
            "max_running" => {
                settings.max_running = Some(value.trim().parse().map_err(|e| bad(&e))?)
            }
            "max_queued" => settings.max_queued = Some(value.trim().parse().map_err(|e| bad(&e))?),
            "tokens_per_minute" => {
                settings.tokens_per_minute = Some(value.trim().parse().map_err(|e| bad(&e))?)
            }
            other => {
                return Err(format!(
                    "unknown tenant setting {other:?} (weight, max_running, max_queued, tokens_per_minute)"
                ));
            }
        }
    }
    settings.validate().map_err(|e| e.0)?;
    Ok((name.to_string(), settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tenant_settings_are_read_and_checked() {
        let (name, s) = parse_tenant("team-a:weight=2,max_running=4,max_queued=100").unwrap();
        assert_eq!(name, "team-a");
        assert_eq!(
            (s.weight, s.max_running, s.max_queued),
            (2.0, Some(4), Some(100))
        );
        assert_eq!(
            parse_tenant("b").unwrap().1,
            greenscale_core::TenantSettings::default()
        );
        assert!(parse_tenant("a:weight=0").unwrap_err().contains("weight"));
        assert!(
            parse_tenant("a:speed=3")
                .unwrap_err()
                .contains("unknown tenant setting")
        );
        assert!(parse_tenant("a b:weight=1").is_err());
    }
}
