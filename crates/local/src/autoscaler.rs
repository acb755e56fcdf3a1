//! The autoscaler loop: per pool, observe (queue and replicas), ask the policy, act. The
//! policy is asked on every job arrival (so waking from zero does not wait for a tick) and
//! on a tick; the loop also runs the queue's maintenance (expired leases, due retries,
//! retention).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::pool::Pool;

/// How often each pool is re-evaluated without arrivals.
pub const TICK: Duration = Duration::from_secs(1);

/// Runs the loop for `pool` until `shutdown` turns true. Does not stop the replicas.
pub async fn run_pool(pool: Arc<Pool>, mut shutdown: watch::Receiver<bool>) {
    let name = pool.config().name.clone();
    let mut policy = pool.config().policy.build();
    let mut queue_down = false;
    let mut last_maintain = std::time::Instant::now();
    loop {
        let on_arrival = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            arrival = pool.wait_for_event(TICK) => arrival,
        };
        if last_maintain.elapsed() >= TICK {
            last_maintain = std::time::Instant::now();
            if let Err(e) = pool.queue().maintain().await {
                tracing::debug!(pool = %name, error = %e, "queue maintenance failed");
            }
        }
        let obs = match pool.observe().await {
            Ok(obs) => {
                if queue_down {
                    tracing::info!(pool = %name, "queue reachable again");
                    queue_down = false;
                }
                obs
            }
            Err(e) => {
                if !queue_down {
                    tracing::warn!(pool = %name, error = %e, "cannot read the queue; replicas stay as they are");
                    queue_down = true;
                }
                continue;
            }
        };
        let decision = if on_arrival {
            match policy.on_arrival(&obs) {
                Some(d) => d,
                None => continue,
            }
        } else {
            policy.decide(&obs)
        };
        pool.apply(&decision, &obs, on_arrival);
    }
}
