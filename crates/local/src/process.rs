//! Local model-server processes: started in their own process group under a small guard
//! that kills the group when the supervisor goes away, health-checked, stopped with
//! SIGTERM then SIGKILL, their output logged line by line with pool and replica.
//!
//! The guard is `greenscale replica-guard`: it runs the model command with `sh -c`, and
//! when its standard input closes — because the supervisor exited or was killed, even with
//! SIGKILL — it stops the whole group. So no model server outlives `greenscale up`.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// How to start the guard program: the `greenscale` executable and the `replica-guard`
/// subcommand.
#[derive(Debug, Clone)]
pub struct GuardProgram {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the guard's own (the subcommand name).
    pub args: Vec<String>,
}

/// A running model-server process group.
#[derive(Debug)]
pub struct ModelProcess {
    child: Child,
    pgid: Pid,
    /// Held open: the guard stops the group when it closes.
    _lifeline: ChildStdin,
    /// The port the server was told to listen on.
    pub port: u16,
}

/// What to start a model server with.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// Shell command line with `{port}` and optionally `{gpu}`.
    pub command: &'a str,
    /// The port it is told to listen on.
    pub port: u16,
    /// Its GPUs (empty without GPU limits).
    pub gpus: &'a [u32],
    /// Extra environment variables.
    pub env: &'a [(String, String)],
    /// After SIGTERM, how long the guard waits before SIGKILL.
    pub stop_timeout: Duration,
}

impl ModelProcess {
    /// Starts `launch.command` under the guard, in a new process group, with `{port}`
    /// replaced and `{gpu}` by the devices in `launch.gpus` (also its `CUDA_VISIBLE_DEVICES`
    /// when there are any), with `launch.env` set. Output lines are logged with `pool` and
    /// `replica`.
    pub fn spawn(
        guard: &GuardProgram,
        launch: Launch<'_>,
        pool: &str,
        replica: &str,
    ) -> std::io::Result<ModelProcess> {
        let Launch {
            command,
            port,
            gpus,
            env,
            stop_timeout,
        } = launch;
        let devices = gpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let command = command
            .replace("{port}", &port.to_string())
            .replace("{gpu}", &devices);
        let mut guarded = Command::new(&guard.program);
        if !gpus.is_empty() {
            guarded.env("CUDA_VISIBLE_DEVICES", &devices);
        }
        guarded.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = guarded
            .args(&guard.args)
            .arg("--stop-timeout")
            .arg(format!("{}ms", stop_timeout.as_millis()))
            .arg("--")
            .arg(&command)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false)
            .spawn()?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let lifeline = child.stdin.take().expect("stdin is piped");
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(log_lines(out, pool.to_string(), replica.to_string()));
        }
        Ok(ModelProcess {
            child,
            pgid: Pid::from_raw(pid as i32),
            _lifeline: lifeline,
            port,
        })
    }

    /// The process id of the group leader (the guard).
    pub fn pid(&self) -> u32 {
        self.pgid.as_raw() as u32
    }

    /// Waits until the process exits.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Stops the group: SIGTERM, then SIGKILL after `timeout`. Returns how it ended.
    pub async fn stop(mut self, timeout: Duration) -> StopOutcome {
        if let Ok(Some(status)) = self.child.try_wait() {
            // The guard is gone; anything it left in the group goes too.
            let _ = killpg(self.pgid, Signal::SIGKILL);
            return StopOutcome::AlreadyExited(status);
        }
        let _ = killpg(self.pgid, Signal::SIGTERM);
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(_) => {
                // The guard is gone; make sure nothing it left behind in the group lives on.
                let _ = killpg(self.pgid, Signal::SIGKILL);
                StopOutcome::Terminated
            }
            Err(_) => {
                let _ = killpg(self.pgid, Signal::SIGKILL);
                let _ = self.child.wait().await;
                StopOutcome::Killed
            }
        }
    }
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// It had exited on its own before.
    AlreadyExited(ExitStatus),
    /// It exited after SIGTERM.
    Terminated,
    /// It ignored SIGTERM and was killed.
    Killed,
}

/// Whether model servers' lines go to standard error as they are (text logs), instead of
/// as log events (JSON logs).
static MODEL_OUTPUT_AS_IS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// With `true`, a model server's own output lines are written to standard error as they
/// are, after `pool/replica |`, without a second timestamp and level of ours (for text
/// logs); with `false` (the default), each is a log event with `pool` and `replica`
/// fields (for JSON logs).
pub fn model_output_as_is(as_is: bool) {
    MODEL_OUTPUT_AS_IS.store(as_is, std::sync::atomic::Ordering::Relaxed);
}

async fn log_lines(out: Box<dyn AsyncRead + Send + Unpin>, pool: String, replica: String) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if MODEL_OUTPUT_AS_IS.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("{pool}/{replica} | {line}");
        } else {
            tracing::info!(target: "greenscale::model", pool = %pool, replica = %replica, "{line}");
        }
    }
}

/// A free TCP port on 127.0.0.1 (the OS picks; the listener is closed again).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Why a start failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartError {
    /// The command could not be started at all.
    #[error("cannot start the model command: {0}")]
    Spawn(String),
    /// The process exited before its health check passed.
    #[error("the model server exited during startup ({0}); see its output above")]
    Exited(String),
    /// The health check did not pass in time.
    #[error("the model server did not pass its health check at {url} within {timeout_s:.0} s")]
    Timeout {
        /// The health URL.
        url: String,
        /// The startup timeout, seconds.
        timeout_s: f64,
    },
}

/// Polls `url` until it answers 2xx, the process exits, or `timeout` passes. Returns the
/// time from `since` to the first healthy answer.
pub async fn wait_healthy(
    process: &mut ModelProcess,
    url: &str,
    since: Instant,
    timeout: Duration,
) -> Result<Duration, StartError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| StartError::Spawn(e.to_string()))?;
    let deadline = since + timeout;
    let mut every = Duration::from_millis(20);
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(since.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(StartError::Timeout {
                url: url.to_string(),
                timeout_s: timeout.as_secs_f64(),
            });
        }
        tokio::select! {
            status = process.exited() => {
                let how = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(StartError::Exited(how));
            }
            _ = tokio::time::sleep(every) => {}
        }
        every = (every * 2).min(Duration::from_millis(200));
    }
}

/// The guard's main loop (`greenscale replica-guard`): runs `command` with `sh -c` in this
/// process's group; exits with its status. When standard input closes, stops the group
/// (SIGTERM, then SIGKILL after `stop_timeout`). SIGTERM and SIGINT to the guard itself
/// are only passed on by the group signal the supervisor sends; the guard waits for the
/// command to end.
pub async fn run_guard(command: &str, stop_timeout: Duration) -> std::io::Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .kill_on_drop(false)
        .spawn()?;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let group = nix::unistd::getpgrp();
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                return Ok(status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)));
            }
            _ = term.recv() => {}
            _ = int.recv() => {}
            read = stdin.read(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    // The supervisor is gone: stop everything in this group.
                    let _ = killpg(group, Signal::SIGTERM);
                    if tokio::time::timeout(stop_timeout, child.wait()).await.is_err() {
                        let _ = killpg(group, Signal::SIGKILL);
                    }
                    let _ = killpg(group, Signal::SIGKILL);
                    return Ok(1);
                }
            }
        }
    }
}
