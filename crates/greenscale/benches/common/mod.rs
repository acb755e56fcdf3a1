//! Helpers shared by the benchmarks: processes of the built `greenscale` binary and the
//! prototype-design baseline, and figures from /proc.

#![allow(dead_code)] // each benchmark uses a different part

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Resident memory of process `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// A memory figure (`VmRSS:`, `VmHWM:`, ...) of process `pid` in KiB, from /proc.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc status"))
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.0.id())
    }

    /// The most resident memory it has had, in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.0.id(), "VmHWM:")
    }

    /// CPU time used so far (user + system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id()))
            .expect("read /proc stat");
        let after = &stat[stat.rfind(')').expect("comm field") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / 100.0)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `greenscale` binary built for this benchmark.
pub fn greenscale() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_greenscale"));
    c.env("RUST_LOG", "warn").stdout(Stdio::null());
    c
}

/// Waits until something listens on `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `greenscale demo-model` with zero delay; returns it and its base URL.
pub fn demo_model() -> (Proc, String) {
    let port = greenscale_testkit::free_port();
    let child = greenscale()
        .args(["demo-model", "--port", &port.to_string()])
        .spawn()
        .expect("spawn demo model");
    wait_for_port(port);
    (Proc(child), format!("http://127.0.0.1:{port}/v1"))
}

/// Starts `greenscale worker` with the given id and extra flags.
pub fn worker(redis_url: &str, model_url: &str, id: &str, extra: &[&str]) -> Proc {
    let child = greenscale()
        .arg("worker")
        .args([
            "--redis-url",
            redis_url,
            "--model-url",
            model_url,
            "--worker-id",
            id,
        ])
        .args(extra)
        .spawn()
        .expect("spawn greenscale worker");
    Proc(child)
}

/// Starts `greenscale gateway` on a free port with the given extra flags, once it listens;
/// returns it and its port.
pub fn gateway(redis_url: &str, extra: &[&str]) -> (Proc, u16) {
    let port = greenscale_testkit::free_port();
    let child = greenscale()
        .args(["gateway", "--redis-url", redis_url])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .spawn()
        .expect("spawn gateway");
    wait_for_port(port);
    (Proc(child), port)
}

/// How a Python baseline worker is written (`bench/baseline_worker.py --style`).
#[derive(Clone, Copy)]
pub enum Style {
    /// As the prototype did it: a new connection per job, the answer read whole.
    Prototype,
    /// As well as one loop of that design can be written: a kept-alive connection, the
    /// answer streamed as GreenScale's worker streams it.
    Tuned,
}

impl Style {
    /// Both, prototype first.
    pub const BOTH: [Style; 2] = [Style::Prototype, Style::Tuned];

    /// How it is named in the benchmarks' output.
    pub fn label(self) -> &'static str {
        match self {
            Style::Prototype => "prototype design (Python, a connection per job)",
            Style::Tuned => "tuned Python (kept-alive connection, streamed)",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Style::Prototype => "prototype",
            Style::Tuned => "tuned",
        }
    }
}

/// Starts a Python baseline worker of the prototype's design (`bench/baseline_worker.py`).
pub fn baseline_worker(
    redis_port: u16,
    model_url: &str,
    list: &str,
    idle_exit: f64,
    style: Style,
) -> Proc {
    let python = std::env::var("GREENSCALE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/baseline_worker.py"
    );
    let child = Command::new(&python)
        .arg(script)
        .args(["--redis-port", &redis_port.to_string()])
        .args(["--model-url", model_url, "--list", list])
        .args(["--idle-exit", &idle_exit.to_string()])
        .args(["--style", style.flag()])
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} (use bench/run, which sets up redis-py): {e}")
        });
    Proc(child)
}

/// The q-th quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// "PASS"/"MISS" for a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// When the recording model received each request, keyed by its prompt.
pub type Arrivals = tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>;

/// A model that notes when each request arrives (keyed by its prompt) and answers at once.
pub async fn recording_model() -> (String, Arrivals) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let tx = std::sync::Arc::new(tx);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: String| {
            let at = Instant::now();
            let tx = tx.clone();
            async move {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let prompt = v["messages"][0]["content"].as_str().unwrap_or("").to_string();
                let _ = tx.send((prompt, at));
                axum::Json(serde_json::json!({
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// Waits until the recording model received the request with `prompt`; when it did.
pub async fn wait_arrival(rx: &mut Arrivals, prompt: &str) -> Instant {
    loop {
        let (p, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the model got the request within 10 s")
            .expect("model alive");
        if p == prompt {
            return at;
        }
    }
}

/// Warm dispatch latency in ms, one sample per job: `send` stores a job with the prompt it
/// is given, and the sample is the time until the recording model receives it. 20 jobs
/// warm up first (connections are set up); samples are 3 ms apart, an idle worker waiting.
pub async fn dispatch_samples<F, Fut>(
    arrivals: &mut Arrivals,
    label: &str,
    samples: usize,
    mut send: F,
) -> Vec<f64>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..20 {
        let p = format!("{label}-warm-{i}");
        send(p.clone()).await;
        wait_arrival(arrivals, &p).await;
    }
    let mut ms = Vec::with_capacity(samples);
    for i in 0..samples {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let p = format!("{label}-{i}");
        let t0 = Instant::now();
        send(p.clone()).await;
        ms.push((wait_arrival(arrivals, &p).await - t0).as_secs_f64() * 1000.0);
    }
    ms
}
