//! Sleep tiers: how a pool's model server gives its GPU memory back without exiting, and
//! takes it again faster than a cold start. A pool names its engine's calls (`sleep =
//! "vllm"`, `"llama.cpp"`, or its own `{ sleep = "POST /path", wake = "POST /path" }`);
//! [`Sleeper`] makes them and waits until the server is really asleep or awake.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

/// Whose sleep API a pool's calls follow: it says how to tell that the server is awake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepEngine {
    /// vLLM's development-mode API (`VLLM_SERVER_DEV_MODE=1`, `--enable-sleep-mode`):
    /// `GET /is_sleeping` answers `{"is_sleeping": bool}`.
    Vllm,
    /// llama.cpp's router mode (`--models-dir`): `GET /models` gives each model's status
    /// (`loaded`, `loading`, `unloaded`); a model is loaded by the wake call, also at start.
    LlamaCpp,
    /// Declared calls: awake once the wake call succeeded and the health check passes.
    Custom,
}

impl SleepEngine {
    /// As shown in the status: `vllm`, `llama.cpp` or `custom`.
    pub fn name(self) -> &'static str {
        match self {
            SleepEngine::Vllm => "vllm",
            SleepEngine::LlamaCpp => "llama.cpp",
            SleepEngine::Custom => "custom",
        }
    }
}

/// One HTTP call to the model server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The method.
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path: String,
    /// JSON body, with `{model}` replaced by the upstream model name; none if absent.
    pub body: Option<String>,
}

impl HttpCall {
    /// Reads `METHOD /path` (the method defaults to POST when only a path is given).
    pub fn parse(text: &str, body: Option<String>) -> Result<HttpCall, String> {
        let mut words = text.split_whitespace();
        let (method, path) = match (words.next(), words.next(), words.next()) {
            (Some(p), None, None) if p.starts_with('/') => ("POST", p),
            (Some(m), Some(p), None) => (m, p),
            _ => return Err(format!("{text:?} is not `METHOD /path`")),
        };
        let method = match method.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "DELETE" => Method::DELETE,
            other => return Err(format!("{other:?} is not GET, POST, PUT or DELETE")),
        };
        if !path.starts_with('/') {
            return Err(format!("{path:?} must start with /"));
        }
        Ok(HttpCall {
            method,
            path: path.to_string(),
            body,
        })
    }
}

/// A pool's sleep and wake calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepCalls {
    /// The engine they follow.
    pub engine: SleepEngine,
    /// Puts the server to sleep (its GPU memory given back).
    pub sleep: HttpCall,
    /// Wakes it.
    pub wake: HttpCall,
}

/// The presets' names.
pub const SLEEP_PRESETS: &[&str] = &["vllm", "llama.cpp"];

impl SleepCalls {
    /// A preset: `vllm` (level-1 sleep: weights to host memory, KV cache dropped) or
    /// `llama.cpp` (router mode: the model's instance unloaded and loaded again).
    pub fn preset(name: &str) -> Option<SleepCalls> {
        let call = |path: &str, body: Option<&str>| HttpCall {
            method: Method::POST,
            path: path.into(),
            body: body.map(String::from),
        };
        let model = Some(r#"{"model": "{model}"}"#);
        match name {
            "vllm" => Some(SleepCalls {
                engine: SleepEngine::Vllm,
                sleep: call("/sleep?level=1", None),
                wake: call("/wake_up", None),
            }),
            "llama.cpp" => Some(SleepCalls {
                engine: SleepEngine::LlamaCpp,
                sleep: call("/models/unload", model),
                wake: call("/models/load", model),
            }),
            _ => None,
        }
    }

    /// Environment the model server needs for these calls (vLLM serves its sleep API only
    /// in development mode).
    pub fn env(&self) -> Vec<(String, String)> {
        match self.engine {
            SleepEngine::Vllm => vec![("VLLM_SERVER_DEV_MODE".into(), "1".into())],
            _ => Vec::new(),
        }
    }

    /// Why `command` cannot sleep with these calls, if it cannot.
    pub fn check_command(&self, command: &str) -> Result<(), String> {
        match self.engine {
            SleepEngine::Vllm if !command.contains("--enable-sleep-mode") => Err(
                "the vllm preset needs `--enable-sleep-mode` in `command` (vLLM refuses to sleep without it)".into(),
            ),
            SleepEngine::LlamaCpp if command.split_whitespace().any(|w| w == "-m" || w == "--model") => Err(
                "the llama.cpp preset needs llama-server in router mode: `--models-dir DIR` instead of `-m`".into(),
            ),
            _ => Ok(()),
        }
    }
}

/// Why a sleep or wake failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SleepError {
    /// The call was refused or could not be made.
    #[error("{call} failed: {why}")]
    Call {
        /// `METHOD /path`.
        call: String,
        /// What happened.
        why: String,
    },
    /// The server did not reach the state in time.
    #[error("the model server was not {state} within {timeout_s:.0} s")]
    Timeout {
        /// `asleep` or `awake`.
        state: &'static str,
        /// The limit.
        timeout_s: f64,
    },
}

/// Makes one replica's sleep and wake calls.
pub struct Sleeper {
    http: reqwest::Client,
    base: String,
    calls: SleepCalls,
    model: String,
    health_path: String,
}

impl Sleeper {
    /// Calls for the server at `base` (`http://127.0.0.1:PORT`) serving `model`.
    pub fn new(base: String, calls: SleepCalls, model: String, health_path: String) -> Self {
        Sleeper {
            http: reqwest::Client::new(),
            base,
            calls,
            model,
            health_path,
        }
    }

    async fn call(&self, call: &HttpCall) -> Result<(), SleepError> {
        let name = format!("{} {}", call.method, call.path);
        let mut request = self
            .http
            .request(call.method.clone(), format!("{}{}", self.base, call.path))
            .timeout(Duration::from_secs(600));
        if let Some(body) = &call.body {
            request = request
                .header("content-type", "application/json")
                .body(body.replace("{model}", &self.model));
        }
        let response = request.send().await.map_err(|e| SleepError::Call {
            call: name.clone(),
            why: e.to_string(),
        })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(SleepError::Call {
                call: name,
                why: format!("{status}: {}", text.chars().take(200).collect::<String>()),
            });
        }
        Ok(())
    }

    async fn get_json(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// The model's status in llama.cpp's `GET /models`.
    async fn llama_status(&self) -> Option<String> {
        let models = self.get_json("/models").await?;
        models["data"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == self.model.as_str())
            .and_then(|m| m["status"]["value"].as_str().map(String::from))
    }

    /// Whether the server is awake (`want` true) or asleep (`want` false) now.
    async fn is(&self, awake: bool) -> bool {
        match self.calls.engine {
            SleepEngine::Vllm => self
                .get_json("/is_sleeping")
                .await
                .and_then(|v| v["is_sleeping"].as_bool())
                .is_some_and(|sleeping| sleeping != awake),
            SleepEngine::LlamaCpp => {
                let status = self.llama_status().await;
                match awake {
                    true => status.as_deref() == Some("loaded"),
                    false => status.as_deref() == Some("unloaded"),
                }
            }
            SleepEngine::Custom if awake => self
                .http
                .get(format!("{}{}", self.base, self.health_path))
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            SleepEngine::Custom => true,
        }
    }

    async fn until(&self, awake: bool, timeout: Duration) -> Result<(), SleepError> {
        let started = Instant::now();
        while !self.is(awake).await {
            if started.elapsed() >= timeout {
                return Err(SleepError::Timeout {
                    state: if awake { "awake" } else { "asleep" },
                    timeout_s: timeout.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    /// Puts the server to sleep and waits until it is (its jobs must have drained: vLLM's
    /// sleep aborts requests in flight).
    pub async fn sleep(&self, timeout: Duration) -> Result<(), SleepError> {
        self.call(&self.calls.sleep).await?;
        self.until(false, timeout).await
    }

    /// Wakes the server and waits until it serves; returns how long that took.
    pub async fn wake(&self, timeout: Duration) -> Result<Duration, SleepError> {
        let started = Instant::now();
        self.call(&self.calls.wake).await?;
        self.until(true, timeout).await?;
        Ok(started.elapsed())
    }

    /// Whether a started server must be woken before it serves (llama.cpp's router starts
    /// with no model loaded).
    pub fn wake_at_start(&self) -> bool {
        self.calls.engine == SleepEngine::LlamaCpp
    }
}

/// Host memory held by the processes of group `pgid` (resident set), bytes; `None` where
/// `/proc` cannot tell.
pub fn group_rss_bytes(pgid: u32) -> Option<u64> {
    let mut total = 0;
    let mut any = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) start after the last ')':
        // state, ppid, pgrp, ...
        let Some(pgrp) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse::<u32>().ok())
        else {
            continue;
        };
        if pgrp != pgid {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            total += kb * 1024;
            any = true;
        }
    }
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_parse_and_presets_check_the_command() {
        let c = HttpCall::parse("POST /sleep?level=2", None).unwrap();
        assert_eq!(
            (c.method, c.path.as_str()),
            (Method::POST, "/sleep?level=2")
        );
        assert_eq!(
            HttpCall::parse("/wake_up", None).unwrap().method,
            Method::POST
        );
        assert!(
            HttpCall::parse("FETCH /x", None)
                .unwrap_err()
                .contains("FETCH")
        );
        assert!(HttpCall::parse("POST sleep", None).is_err());
        let vllm = SleepCalls::preset("vllm").unwrap();
        assert!(vllm.check_command("vllm serve m --port {port}").is_err());
        assert!(
            vllm.check_command("vllm serve m --port {port} --enable-sleep-mode")
                .is_ok()
        );
        assert_eq!(vllm.env()[0].0, "VLLM_SERVER_DEV_MODE");
        let llama = SleepCalls::preset("llama.cpp").unwrap();
        assert!(
            llama
                .check_command("llama-server -m x.gguf --port {port}")
                .is_err()
        );
        assert!(
            llama
                .check_command("llama-server --models-dir d --port {port}")
                .is_ok()
        );
        assert!(SleepCalls::preset("ollama").is_none());
    }

    #[test]
    fn a_process_group_s_resident_memory_is_read() {
        let me = nix::unistd::getpgrp().as_raw() as u32;
        assert!(group_rss_bytes(me).is_some_and(|b| b > 0));
    }
}
