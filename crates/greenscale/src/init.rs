//! When `greenscale` is a container's first process (PID 1, as the image's entrypoint),
//! processes orphaned anywhere below it — a model server's helper whose parent died, the
//! shell of a replica whose guard was killed — are re-parented to it, and their exit must be
//! collected or they stay as zombies. This reaps them.
//!
//! Its own children (replica guards, which lead their own process groups) are left to the
//! code that started them, which waits for them itself.

use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Starts reaping orphans if this process is PID 1; otherwise does nothing.
pub fn reap_orphans_if_init() {
    if std::process::id() != 1 {
        return;
    }
    tracing::debug!("running as PID 1: reaping orphaned processes");
    tokio::spawn(async {
        let mut child_exits =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        loop {
            match child_exits.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), s.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            for pid in orphaned_zombies() {
                let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    });
}

/// Exited children of this process that it did not start: zombies whose process group is
/// not their own (the replica guards lead their own groups).
fn orphaned_zombies() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name: state, ppid, pgrp, …
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[0] == "Z" && f[1] == me.to_string() && f[2] != pid.to_string()
        })
        .collect()
}
