//! GreenScale's worker: the runtime that leases and runs jobs, and the model backends.

pub mod backend;
mod finisher;
pub mod runtime;
pub mod sse;
pub mod turns;

pub use backend::{
    BackendError, ModelBackend, OpenAiBackend, OpenAiConfig, TokenSink, chat_completions_url,
};
pub use runtime::{WorkerConfig, WorkerReport, run_worker};
pub use turns::LeaseTurns;

/// A worker id that is unique and says where the worker runs: host name, process id and a
/// short random suffix.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let suffix = greenscale_core::new_job_id();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}
