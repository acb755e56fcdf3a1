//! Helpers shared by the process-level tests: an in-process demo model and `greenscale`
//! child processes with their logs.

#![allow(dead_code)] // each test file uses a different part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use greenscale_demo_model::DemoConfig;
use greenscale_testkit::free_port;
use serde_json::Value;

/// A demo model on its own thread and runtime, so it keeps serving while the test blocks.
pub struct DemoModel {
    /// Base URL ending in /v1.
    pub url: String,
}

pub fn demo_model(tokens_per_sec: f64) -> DemoModel {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let config = DemoConfig {
                load_time: Duration::ZERO,
                tokens_per_sec,
            };
            greenscale_demo_model::serve(listener, config, std::future::pending())
                .await
                .unwrap();
        });
    });
    DemoModel { url }
}

/// A `greenscale` child process whose stderr goes to a log file; killed when dropped.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Runs `greenscale ARGS...`, logging to `log_dir/name.log`.
    pub fn spawn(log_dir: &Path, name: &str, args: &[&str]) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_greenscale"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn greenscale");
        Process { child, log }
    }

    /// Runs `greenscale worker` against `redis_url` and `model_url`, with id `name`.
    pub fn worker(
        log_dir: &Path,
        name: &str,
        redis_url: &str,
        model_url: &str,
        extra: &[&str],
    ) -> Self {
        let mut args = vec![
            "worker",
            "--redis-url",
            redis_url,
            "--model-url",
            model_url,
            "--worker-id",
            name,
        ];
        args.extend_from_slice(extra);
        Self::spawn(log_dir, name, &args)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {within:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended, without waiting.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it is true; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `greenscale up` and an HTTP client for it.
pub struct Up {
    pub process: Process,
    pub base: String,
    pub client: reqwest::Client,
}

impl Up {
    /// Starts `greenscale up` with its data in `dir`, and waits until it answers.
    pub async fn start(dir: &Path, name: &str, extra: &[&str]) -> Up {
        let listen = format!("127.0.0.1:{}", free_port());
        let data = dir.join("data");
        let mut args = vec![
            "up",
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let process = Process::spawn(dir, name, &args);
        let up = Up {
            process,
            base: format!("http://{listen}"),
            client: reqwest::Client::new(),
        };
        let started = Instant::now();
        while up.client.get(up.url("/healthz")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "up did not start: {}",
                up.process.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        up
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn submit(&self, body: Value) -> String {
        let r = self
            .client
            .post(self.url("/v1/jobs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Submits `body`, waits until the job succeeds (up to `within`; the log on timeout)
    /// and returns its record.
    pub async fn run_job(&self, body: Value, within: Duration) -> Value {
        let id = self.submit(body.clone()).await;
        self.wait_for(&format!("the job {body} succeeds"), within, || async {
            self.job(&id).await["status"] == "succeeded"
        })
        .await;
        self.job(&id).await
    }

    /// The pools holding memory on the first GPU, in placement order.
    pub async fn first_gpu_holders(&self) -> Vec<String> {
        self.get("/v1/gpus").await[0]["held"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["pool"].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    pub async fn get(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_text(&self.base).await
    }

    pub async fn pool(&self) -> Value {
        self.get("/v1/pools").await[0].clone()
    }

    /// Polls until `check` holds; panics with the log after `within`.
    pub async fn wait_for<F, Fut>(&self, what: &str, within: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}\n--- log ---\n{}",
                self.process.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `/metrics` text of the gateway or `up` at `base` (no key needed).
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Every process with its state letter, parent and process group, from `/proc/PID/stat`.
pub fn processes() -> Vec<(u64, String, u64, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, pgrp, ...
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let (Ok(ppid), Ok(pgrp)) = (f[1].parse(), f[2].parse()) {
            out.push((pid, f[0].to_string(), ppid, pgrp));
        }
    }
    out
}

/// Process ids in process group `pgid` (zombies left out).
pub fn group_members(pgid: u64) -> Vec<u64> {
    processes()
        .into_iter()
        .filter(|(_, state, _, pgrp)| state != "Z" && *pgrp == pgid)
        .map(|(pid, ..)| pid)
        .collect()
}

/// Children of `ppid`, with their state letter.
pub fn children_of(ppid: u64) -> Vec<(u64, String)> {
    processes()
        .into_iter()
        .filter(|(_, _, parent, _)| *parent == ppid)
        .map(|(pid, state, ..)| (pid, state))
        .collect()
}

/// The command line of process `pid`, arguments joined by spaces.
pub fn cmdline(pid: u64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', " ")
}

/// The process groups of a pool's replicas (from `/v1/pools`).
pub fn pgids(pool: &Value) -> Vec<u64> {
    pool["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["pgid"].as_u64())
        .collect()
}
