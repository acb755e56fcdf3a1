//! Pools: what `greenscale up` scales. Read from an optional TOML file (`[[pool]]` tables)
//! or built from command-line shortcuts. Every error names the file, the line and the field.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use greenscale_core::policy::Spec;
use greenscale_core::status::{GpuNeed, GpuSource};
use greenscale_core::{parse_bytes, parse_duration};

use crate::placement::GpuDevice;
use crate::sleep::{HttpCall, SLEEP_PRESETS, SleepCalls, SleepEngine};
use serde::Deserialize;
use toml::Spanned;

/// How a pool's replicas reach a model.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolBackend {
    /// Each replica is a local model-server process started from `command`.
    Command {
        /// Shell command line; `{port}` is replaced by the replica's port.
        command: String,
        /// Path answered with 200 once the model is loaded (e.g. `/health`).
        health_path: String,
    },
    /// Replicas call a remote OpenAI-compatible API; no local process.
    Remote {
        /// Base URL (`https://host/v1`) or full chat-completions URL.
        url: String,
        /// Bearer key for the API. Never logged.
        api_key: Option<String>,
    },
}

/// One pool: the replicas serving one model name.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The model name clients ask for; jobs are routed by it.
    pub name: String,
    /// Local processes or a remote API.
    pub backend: PoolBackend,
    /// Model name sent to the server (default: the pool name).
    pub upstream_model: Option<String>,
    /// Jobs one replica runs at once.
    pub concurrency: u32,
    /// Replicas kept even when idle.
    pub min_replicas: u32,
    /// Replica limit.
    pub max_replicas: u32,
    /// Scaling policy spec (see `greenscale sim --help`), e.g. `greenscale:cold_cost=120`.
    pub policy: Spec,
    /// Cost of one replica for one hour (for the dashboard); without it, cost is shown in
    /// replica-hours.
    pub cost_per_hour: Option<f64>,
    /// The currency of `cost_per_hour`, as shown (e.g. `USD`, `€`), if given.
    pub currency: Option<String>,
    /// How long a starting replica may take to pass its health check.
    pub startup_timeout: Duration,
    /// After SIGTERM, how long a model server may take to exit before SIGKILL.
    pub stop_timeout: Duration,
    /// How long in-flight jobs may run on a draining replica before they are handed back.
    pub drain_grace: Duration,
    /// Whether this is the built-in demo pool (a fake model; said so in logs and dashboard).
    pub demo: bool,
    /// What one replica needs of the GPUs (`gpus`, `gpu_memory`); `None`: no GPU limits.
    pub gpu: Option<GpuNeed>,
    /// How its model servers sleep and wake (`sleep`); `None`: they are only started and
    /// stopped.
    pub sleep: Option<SleepCalls>,
}

/// A pools file: the pools, and the GPUs declared for them (`[[gpu]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolsFile {
    /// The pools, in file order.
    pub pools: Vec<PoolConfig>,
    /// Declared GPUs (they replace what the driver reports).
    pub gpus: Vec<GpuDevice>,
    /// How long a pool with work waits for GPU room while other pools are busy
    /// (`gpu_turn`), if given.
    pub gpu_turn: Option<Duration>,
    /// The grid's carbon intensity, gCO2e per kWh (`grid_intensity`), if given.
    pub grid_intensity: Option<f64>,
}

impl PoolConfig {
    /// A pool with default settings around `backend`.
    pub fn new(name: impl Into<String>, backend: PoolBackend) -> Self {
        PoolConfig {
            name: name.into(),
            backend,
            upstream_model: None,
            concurrency: 4,
            min_replicas: 0,
            max_replicas: 4,
            policy: Spec::parse("greenscale").expect("the default policy parses"),
            cost_per_hour: None,
            currency: None,
            startup_timeout: Duration::from_secs(600),
            stop_timeout: Duration::from_secs(30),
            drain_grace: Duration::from_secs(25),
            demo: false,
            gpu: None,
            sleep: None,
        }
    }

    /// The model name sent upstream.
    pub fn upstream_model(&self) -> &str {
        self.upstream_model.as_deref().unwrap_or(&self.name)
    }
}

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line; 0 when the error is about the whole file.
    pub line: usize,
    /// What is wrong, naming the field.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            line => write!(f, "{}:{line}: {}", self.file, self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pool: Vec<Spanned<RawPool>>,
    #[serde(default)]
    gpu: Vec<Spanned<RawGpu>>,
    gpu_turn: Option<Spanned<String>>,
    grid_intensity: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    memory: Spanned<String>,
    name: Option<String>,
    power: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Spanned<String>,
    command: Option<Spanned<String>>,
    health_path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    api_key: Option<String>,
    api_key_env: Option<Spanned<String>>,
    upstream_model: Option<String>,
    concurrency: Option<Spanned<u32>>,
    min_replicas: Option<u32>,
    max_replicas: Option<Spanned<u32>>,
    policy: Option<Spanned<String>>,
    cost_per_hour: Option<Spanned<f64>>,
    currency: Option<String>,
    startup_timeout: Option<Spanned<String>>,
    stop_timeout: Option<Spanned<String>>,
    drain_grace: Option<Spanned<String>>,
    gpus: Option<Spanned<u32>>,
    gpu_memory: Option<Spanned<String>>,
    sleep: Option<Spanned<toml::Value>>,
}

/// Reads and checks a pools file.
pub fn load(path: &Path) -> Result<PoolsFile, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read the config file: {e}"),
    })?;
    parse(&file, &text)
}

/// Parses and checks the text of a pools file named `file` (for messages).
pub fn parse(file: &str, text: &str) -> Result<PoolsFile, ConfigError> {
    let at = |span: Range<usize>, message: String| ConfigError {
        file: file.to_string(),
        line: line_of(text, span.start),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim_end().replace('\n', " ");
        // Type errors point at a value: name the key of that line.
        let key = text[..span.start.min(text.len())]
            .rsplit('\n')
            .next()
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty() && !message.contains(k.as_str()));
        match key {
            Some(k) => at(span, format!("field `{k}`: {message}")),
            None => at(span, message),
        }
    })?;
    if raw.pool.is_empty() {
        return Err(at(
            0..0,
            "no pools: add at least one [[pool]] table with a name and a command or url".into(),
        ));
    }
    let mut gpus = Vec::new();
    for (index, g) in raw.gpu.into_iter().enumerate() {
        let g = g.into_inner();
        let memory = parse_bytes(g.memory.get_ref())
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| {
                at(
                    g.memory.span(),
                    format!(
                        "gpu {index}: field `memory`: {:?} is not a size (try \"80GiB\")",
                        g.memory.get_ref()
                    ),
                )
            })?;
        let power_w = match g.power {
            None => None,
            Some(p) => Some(
                p.get_ref()
                    .trim()
                    .trim_end_matches('W')
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|w| *w > 0)
                    .ok_or_else(|| {
                        at(
                            p.span(),
                            format!(
                                "gpu {index}: field `power`: {:?} is not a board power (try \"300W\")",
                                p.get_ref()
                            ),
                        )
                    })?,
            ),
        };
        gpus.push(GpuDevice {
            index: index as u32,
            name: g.name.unwrap_or_else(|| "declared".into()),
            memory,
            source: GpuSource::Declared,
            power_w,
        });
    }
    let gpu_turn = match raw.gpu_turn {
        None => None,
        Some(t) => Some(
            parse_duration(t.get_ref())
                .map_err(|e| at(t.span(), format!("field `gpu_turn`: {}", e.0)))?,
        ),
    };
    let grid_intensity = match raw.grid_intensity {
        Some(g) if !g.get_ref().is_finite() || *g.get_ref() < 0.0 => {
            return Err(at(
                g.span(),
                "field `grid_intensity`: must be gCO2e per kWh, a number ≥ 0".into(),
            ));
        }
        g => g.map(Spanned::into_inner),
    };
    let mut pools: Vec<PoolConfig> = Vec::new();
    for spanned in raw.pool {
        let pool_span = spanned.span();
        let p = spanned.into_inner();
        let name = p.name.get_ref().trim().to_string();
        if name.is_empty() || name.chars().any(|c| c.is_control()) {
            return Err(at(
                p.name.span(),
                "field `name`: must be a non-empty model name".into(),
            ));
        }
        if pools.iter().any(|q| q.name == name) {
            return Err(at(
                p.name.span(),
                format!("field `name`: pool {name:?} is defined twice"),
            ));
        }
        let field = |span: Range<usize>, field: &str, m: String| {
            at(span, format!("pool {name:?}: field `{field}`: {m}"))
        };
        let backend = match (p.command, p.url) {
            (Some(_), Some(url)) => {
                return Err(field(
                    url.span(),
                    "url",
                    "give either `command` or `url`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(at(
                    pool_span,
                    format!(
                        "pool {name:?}: needs a `command` (a local model server) or a `url` (a remote API)"
                    ),
                ));
            }
            (Some(command), None) => {
                if let Some(k) = &p.api_key_env {
                    return Err(field(
                        k.span(),
                        "api_key_env",
                        "only for pools with a `url`".into(),
                    ));
                }
                let span = command.span();
                let command = command.into_inner();
                if !command.contains("{port}") {
                    return Err(field(
                        span,
                        "command",
                        "must contain {port}, where the replica's port goes (e.g. `llama-server -m model.gguf --port {port}`)".into(),
                    ));
                }
                let health_path = match p.health_path {
                    Some(h) if !h.get_ref().starts_with('/') => {
                        return Err(field(h.span(), "health_path", "must start with /".into()));
                    }
                    Some(h) => h.into_inner(),
                    None => "/health".into(),
                };
                PoolBackend::Command {
                    command,
                    health_path,
                }
            }
            (None, Some(url)) => {
                if let Some(h) = &p.health_path {
                    return Err(field(
                        h.span(),
                        "health_path",
                        "only for pools with a `command`".into(),
                    ));
                }
                let span = url.span();
                let url = url.into_inner();
                greenscale_worker::chat_completions_url(&url)
                    .map_err(|e| field(span, "url", e.to_string()))?;
                let api_key = match (p.api_key, p.api_key_env) {
                    (Some(key), None) => Some(key),
                    (None, Some(var)) => {
                        let span = var.span();
                        let var = var.into_inner();
                        Some(
                            std::env::var(&var)
                                .ok()
                                .filter(|v| !v.is_empty())
                                .ok_or_else(|| {
                                    field(
                                        span,
                                        "api_key_env",
                                        format!("environment variable {var} is not set"),
                                    )
                                })?,
                        )
                    }
                    (None, None) => None,
                    (Some(_), Some(var)) => {
                        return Err(field(
                            var.span(),
                            "api_key_env",
                            "give either `api_key` or `api_key_env`, not both".into(),
                        ));
                    }
                };
                PoolBackend::Remote { url, api_key }
            }
        };
        let mut pool = PoolConfig::new(name.clone(), backend);
        pool.upstream_model = p.upstream_model;
        if let Some(c) = p.concurrency {
            if *c.get_ref() == 0 {
                return Err(field(c.span(), "concurrency", "must be at least 1".into()));
            }
            pool.concurrency = c.into_inner();
        }
        pool.min_replicas = p.min_replicas.unwrap_or(0);
        if let Some(m) = p.max_replicas {
            if *m.get_ref() == 0 || *m.get_ref() < pool.min_replicas {
                return Err(field(
                    m.span(),
                    "max_replicas",
                    format!(
                        "must be at least 1 and at least min_replicas ({})",
                        pool.min_replicas
                    ),
                ));
            }
            pool.max_replicas = m.into_inner();
        } else {
            pool.max_replicas = pool.max_replicas.max(pool.min_replicas);
        }
        if let Some(policy) = p.policy {
            pool.policy = Spec::parse(policy.get_ref())
                .map_err(|e| field(policy.span(), "policy", e.message))?;
        }
        if let Some(c) = p.cost_per_hour {
            if !c.get_ref().is_finite() || *c.get_ref() < 0.0 {
                return Err(field(
                    c.span(),
                    "cost_per_hour",
                    "must be a number ≥ 0".into(),
                ));
            }
            pool.cost_per_hour = Some(c.into_inner());
        }
        pool.currency = p.currency.filter(|c| !c.trim().is_empty());
        for (value, name, slot) in [
            (
                p.startup_timeout,
                "startup_timeout",
                &mut pool.startup_timeout,
            ),
            (p.stop_timeout, "stop_timeout", &mut pool.stop_timeout),
            (p.drain_grace, "drain_grace", &mut pool.drain_grace),
        ] {
            if let Some(v) = value {
                *slot = parse_duration(v.get_ref()).map_err(|m| field(v.span(), name, m.0))?;
            }
        }
        pool.gpu = gpu_need(p.gpus, p.gpu_memory, &pool.backend)
            .map_err(|(span, f, m)| field(span, f, m))?;
        if let Some(sleep) = p.sleep {
            let span = sleep.span();
            let PoolBackend::Command { command, .. } = &pool.backend else {
                return Err(field(
                    span,
                    "sleep",
                    "only for pools with a `command`".into(),
                ));
            };
            let calls =
                sleep_calls(sleep.get_ref()).map_err(|m| field(span.clone(), "sleep", m))?;
            calls
                .check_command(command)
                .map_err(|m| field(span, "sleep", m))?;
            pool.sleep = Some(calls);
        }
        pools.push(pool);
    }
    Ok(PoolsFile {
        pools,
        gpus,
        gpu_turn,
        grid_intensity,
    })
}

/// What a replica needs from `gpus` (devices, default 1) and `gpu_memory` (per device;
/// without it, whole devices).
fn gpu_need(
    gpus: Option<Spanned<u32>>,
    memory: Option<Spanned<String>>,
    backend: &PoolBackend,
) -> Result<Option<GpuNeed>, (Range<usize>, &'static str, String)> {
    if gpus.is_none() && memory.is_none() {
        return Ok(None);
    }
    if let PoolBackend::Remote { .. } = backend {
        let span = gpus
            .as_ref()
            .map(|g| g.span())
            .or(memory.as_ref().map(|m| m.span()))
            .unwrap_or(0..0);
        return Err((span, "gpus", "only for pools with a `command`".into()));
    }
    let devices = match gpus {
        Some(g) if *g.get_ref() == 0 => {
            return Err((g.span(), "gpus", "must be at least 1".into()));
        }
        Some(g) => g.into_inner(),
        None => 1,
    };
    let memory_bytes = match memory {
        None => None,
        Some(m) => Some(
            parse_bytes(m.get_ref())
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| {
                    (
                        m.span(),
                        "gpu_memory",
                        format!("{:?} is not a size (try \"20GiB\")", m.get_ref()),
                    )
                })?,
        ),
    };
    Ok(Some(GpuNeed {
        devices,
        memory_bytes,
    }))
}

/// Reads a pool's `sleep`: a preset's name, or a table of `sleep` and `wake` calls
/// (`"METHOD /path"`), an optional JSON `body` for both (`{model}` is the upstream model)
/// and an optional `engine` preset whose way of telling "awake" they follow.
fn sleep_calls(value: &toml::Value) -> Result<SleepCalls, String> {
    let presets = SLEEP_PRESETS.join(", ");
    let preset = |name: &str| {
        SleepCalls::preset(name)
            .ok_or_else(|| format!("unknown sleep preset {name:?} (known: {presets})"))
    };
    let table = match value {
        toml::Value::String(name) => return preset(name),
        toml::Value::Table(t) => t,
        _ => {
            return Err(format!(
                "must be a preset ({presets}) or a table with `sleep` and `wake` calls"
            ));
        }
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{key}` must be a string")),
        }
    };
    if let Some(key) = table
        .keys()
        .find(|k| !["engine", "sleep", "wake", "body"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown key `{key}` (known: engine, sleep, wake, body)"
        ));
    }
    let base = text("engine")?.map(|e| preset(&e)).transpose()?;
    let body = text("body")?;
    if let Some(b) = &body {
        serde_json::from_str::<serde_json::Value>(&b.replace("{model}", "m"))
            .map_err(|e| format!("`body` is not JSON: {e}"))?;
    }
    let call = |key: &str, fallback: Option<&HttpCall>| -> Result<HttpCall, String> {
        match (text(key)?, fallback) {
            (Some(t), fallback) => {
                HttpCall::parse(&t, body.clone().or(fallback.and_then(|f| f.body.clone())))
                    .map_err(|m| format!("`{key}`: {m}"))
            }
            (None, Some(f)) => Ok(f.clone()),
            (None, None) => Err(format!(
                "needs `{key}` (\"POST /path\") or an `engine` preset"
            )),
        }
    };
    Ok(SleepCalls {
        engine: base.as_ref().map_or(SleepEngine::Custom, |b| b.engine),
        sleep: call("sleep", base.as_ref().map(|b| &b.sleep))?,
        wake: call("wake", base.as_ref().map(|b| &b.wake))?,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("pools.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn gpus_and_what_a_replica_needs_are_read() {
        let file = parse(
            "pools.toml",
            r#"
[[gpu]]
memory = "80GiB"

[[gpu]]
memory = "24GiB"
name = "L4"
power = "72W"

[[pool]]
name = "big"
command = "vllm serve m --port {port}"
gpu_memory = "20GiB"

[[pool]]
name = "two"
command = "vllm serve m --port {port} --tensor-parallel-size 2"
gpus = 2

[[pool]]
name = "cpu"
command = "llama-server --port {port}"
"#,
        )
        .unwrap();
        assert_eq!(file.gpus.len(), 2);
        assert_eq!((file.gpus[1].index, file.gpus[1].memory), (1, 24 << 30));
        assert_eq!(file.gpus[1].name, "L4");
        assert_eq!(
            (file.gpus[0].power_w, file.gpus[1].power_w),
            (None, Some(72))
        );
        let need = |i: usize| file.pools[i].gpu;
        assert_eq!(
            need(0),
            Some(GpuNeed {
                devices: 1,
                memory_bytes: Some(20 << 30)
            })
        );
        assert_eq!(
            need(1),
            Some(GpuNeed {
                devices: 2,
                memory_bytes: None
            })
        );
        assert_eq!(need(2), None);
        let e = err("[[gpu]]\nmemory = \"lots\"\n[[pool]]\nname = \"a\"\ncommand = \"s {port}\"\n");
        assert!(
            e.starts_with("pools.toml:2: ") && e.contains("`memory`"),
            "{e}"
        );
        let e = err("[[pool]]\nname = \"a\"\nurl = \"http://x\"\ngpus = 1\n");
        assert!(e.contains("`gpus`") && e.contains("command"), "{e}");
        let e = err("[[pool]]\nname = \"a\"\ncommand = \"s {port}\"\ngpu_memory = \"x\"\n");
        assert!(
            e.starts_with("pools.toml:4: ") && e.contains("`gpu_memory`"),
            "{e}"
        );
    }

    #[test]
    fn sleep_calls_are_read_from_presets_or_declared() {
        let file = parse(
            "pools.toml",
            r#"
[[pool]]
name = "v"
command = "vllm serve m --port {port} --enable-sleep-mode"
sleep = "vllm"

[[pool]]
name = "v2"
command = "vllm serve m --port {port} --enable-sleep-mode"
sleep = { engine = "vllm", sleep = "POST /sleep?level=2" }

[[pool]]
name = "own"
command = "srv --port {port}"
sleep = { sleep = "POST /offload", wake = "PUT /reload", body = '{"name": "{model}"}' }
"#,
        )
        .unwrap();
        let sleep = |i: usize| file.pools[i].sleep.clone().unwrap();
        assert_eq!(sleep(0), SleepCalls::preset("vllm").unwrap());
        assert_eq!(sleep(1).engine, SleepEngine::Vllm);
        assert_eq!(sleep(1).sleep.path, "/sleep?level=2");
        assert_eq!(sleep(1).wake.path, "/wake_up");
        assert_eq!(sleep(2).engine, SleepEngine::Custom);
        assert_eq!(sleep(2).wake.method, reqwest::Method::PUT);
        assert_eq!(
            sleep(2).sleep.body.as_deref(),
            Some(r#"{"name": "{model}"}"#)
        );
        let pool = "[[pool]]\nname = \"a\"\ncommand = \"s --port {port}\"\n";
        let e = err(&format!("{pool}sleep = \"ollama\"\n"));
        assert!(
            e.starts_with("pools.toml:4: ") && e.contains("vllm, llama.cpp"),
            "{e}"
        );
        let e = err(&format!("{pool}sleep = \"vllm\"\n"));
        assert!(e.contains("--enable-sleep-mode"), "{e}");
        let e = err(&format!("{pool}sleep = {{ sleep = \"POST /s\" }}\n"));
        assert!(e.contains("needs `wake`"), "{e}");
        let e = err(&format!(
            "{pool}sleep = {{ sleep = \"/s\", wake = \"/w\", body = \"{{\" }}\n"
        ));
        assert!(e.contains("not JSON"), "{e}");
        let e = err("[[pool]]\nname = \"a\"\nurl = \"http://x\"\nsleep = \"vllm\"\n");
        assert!(e.contains("`sleep`") && e.contains("command"), "{e}");
    }

    #[test]
    fn a_full_file_is_read() {
        let pools = parse(
            "pools.toml",
            r#"
[[pool]]
name = "llama-8b"
command = "llama-server -m model.gguf --port {port}"
concurrency = 2
max_replicas = 3
policy = "keepalive:5m"
cost_per_hour = 2.5
currency = "USD"
startup_timeout = "2m"

[[pool]]
name = "big"
url = "https://api.example.com/v1"
api_key = "k"
upstream_model = "meta-llama/Llama-3.3-70B-Instruct"
"#,
        )
        .unwrap()
        .pools;
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].concurrency, 2);
        assert_eq!(pools[0].max_replicas, 3);
        assert_eq!(pools[0].startup_timeout, Duration::from_secs(120));
        assert_eq!(
            (pools[0].cost_per_hour, pools[0].currency.as_deref()),
            (Some(2.5), Some("USD"))
        );
        assert_eq!(
            (pools[1].cost_per_hour, pools[1].currency.as_deref()),
            (None, None)
        );
        assert_eq!(
            pools[0].backend,
            PoolBackend::Command {
                command: "llama-server -m model.gguf --port {port}".into(),
                health_path: "/health".into()
            }
        );
        assert_eq!(
            pools[1].upstream_model(),
            "meta-llama/Llama-3.3-70B-Instruct"
        );
        assert_eq!(pools[0].upstream_model(), "llama-8b");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = "[[pool]]\nname = \"a\"\ncommand = \"srv --port {port}\"\nconcurency = 2\n";
        let e = err(text);
        assert!(e.starts_with("pools.toml:4: "), "{e}");
        assert!(e.contains("concurency"), "{e}");

        let e = err("[[pool]]\nname = \"a\"\ncommand = \"srv\"\n");
        assert!(e.starts_with("pools.toml:3: "), "{e}");
        assert!(e.contains("`command`") && e.contains("{port}"), "{e}");

        let e = err("[[pool]]\nname = \"a\"\ncommand = \"s {port}\"\npolicy = \"keda:bogus=1\"\n");
        assert!(
            e.starts_with("pools.toml:4: ") && e.contains("`policy`"),
            "{e}"
        );

        let e = err("[[pool]]\nname = \"a\"\ncommand = \"s {port}\"\nmax_replicas = 0\n");
        assert!(
            e.starts_with("pools.toml:4: ") && e.contains("max_replicas"),
            "{e}"
        );

        let e = err("[[pool]]\nname = \"a\"\ncommand = \"s {port}\"\nconcurrency = \"two\"\n");
        assert!(e.starts_with("pools.toml:4: field `concurrency`"), "{e}");

        let e = err("[[pool]]\nname = \"a\"\n");
        assert!(e.contains("needs a `command`"), "{e}");

        let e = err("[[pool]]\nname = \"a\"\nurl = \"ftp://x\"\n");
        assert!(
            e.starts_with("pools.toml:3: ") && e.contains("`url`"),
            "{e}"
        );

        let e = err(
            "[[pool]]\nname = \"a\"\nurl = \"http://x\"\n[[pool]]\nname = \"a\"\nurl = \"http://y\"\n",
        );
        assert!(
            e.starts_with("pools.toml:5: ") && e.contains("twice"),
            "{e}"
        );

        let e = err("[[pool]\nname = 1");
        assert!(e.starts_with("pools.toml:1: "), "{e}");

        assert!(err("").contains("no pools"));
    }
}
