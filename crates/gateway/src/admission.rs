//! Admission of a job with a deadline: a request that cannot start in time is answered at
//! once rather than left to expire.

use axum::http::StatusCode;
use greenscale_core::JobSpec;
use greenscale_core::status::ReplicaState;

use crate::Gateway;
use crate::dashboard::unix_ms;
use crate::error::ApiError;

/// Refuses, with 503 and `Retry-After`, a job whose deadline comes before its pool could
/// start it: the pool (under `up`, where the gateway sees it) has no replica serving or
/// starting, and its measured median cold start (or wake, for a sleeping replica) is
/// longer than the time left. Without a measurement nothing is refused.
pub(crate) fn check_deadline(g: &Gateway, spec: &JobSpec) -> Result<(), ApiError> {
    let (Some(deadline), Some(pools)) = (spec.deadline_at_ms, g.pools.as_ref()) else {
        return Ok(());
    };
    let statuses = pools.pools();
    let pool = match spec.model.as_deref() {
        Some(model) => statuses.iter().find(|p| p.name == model),
        None if statuses.len() == 1 => statuses.first(),
        None => None,
    };
    let Some(pool) = pool else { return Ok(()) };
    let up = pool.replicas.iter().any(|r| {
        matches!(
            r.state,
            ReplicaState::Ready | ReplicaState::Starting | ReplicaState::Waking
        )
    });
    if up {
        return Ok(());
    }
    let asleep = pool
        .replicas
        .iter()
        .any(|r| r.state == ReplicaState::Asleep);
    let expected_s = if asleep {
        pool.wakes.p50_s.or(pool.cold_starts.p50_s)
    } else {
        pool.cold_starts.p50_s
    };
    let Some(expected_s) = expected_s else {
        return Ok(());
    };
    let left_ms = deadline.saturating_sub(unix_ms());
    if (left_ms as f64) >= expected_s * 1000.0 {
        return Ok(());
    }
    let what = if asleep { "wake" } else { "start" };
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "deadline_unreachable",
        format!(
            "pool {} has no replica up and takes about {expected_s:.1} s to {what} (measured median); \
             the deadline, {left_ms} ms from now, would pass first. Send it with a later deadline, \
             or again once the pool is up",
            pool.name
        ),
    );
    e.retry_after = Some(expected_s.ceil().max(1.0) as u64);
    Err(e)
}
