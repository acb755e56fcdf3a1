//! GreenScale's single-machine autoscaler: pools of local model-server processes (or remote
//! APIs), each replica with an in-process worker, scaled by the policy engine.
//!
//! - [`config`]: the pools file and its checks;
//! - [`process`]: model-server processes (guard, health check, stop);
//! - [`pool`]: a pool at run time — its replicas' lives and what it shows;
//! - `pool_state`: a pool's records (decisions, cold starts, start backoff, usage) and
//!   the choice of replicas to stop;
//! - [`sleep`]: sleep tiers — the engines' sleep and wake calls;
//! - [`autoscaler`]: the observe → decide → act loop;
//! - [`metrics`]: Prometheus metrics of the pools.

pub mod autoscaler;
pub mod config;
pub mod gpu;
pub mod metrics;
pub mod placement;
pub mod pool;
mod pool_state;
pub mod process;
pub mod sleep;

pub use config::{ConfigError, PoolBackend, PoolConfig};
pub use metrics::AutoscalerMetrics;
pub use pool::Pool;
pub use process::{GuardProgram, model_output_as_is, run_guard};
