//! Helpers shared by the process-level tests: an in-process demo model and `greenscale`
//! child processes with their logs.

#![allow(dead_code)] // each test file uses a different part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use greenscale_demo_model::DemoConfig;

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
                "process did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
