//! A pool's run-time records, each its own piece: the decision log, cold-start statistics,
//! the backoff between failed starts, and what the replicas used. Plus the pure choice of
//! which replicas to stop when the pool scales down.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use greenscale_core::policy::{Reason, mean};
use greenscale_core::status::{ColdStarts, DecisionRecord, ReplicaState};

/// Decisions kept per pool for the dashboard and `greenscale status`.
const DECISIONS_KEPT: usize = 200;
/// Cold starts kept per pool for percentiles.
const COLD_STARTS_KEPT: usize = 1000;
/// Longest wait before another start after failed starts or crashes.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The recorded scaling decisions: the latest, and those that changed the desired count or
/// the kind of reason.
#[derive(Default)]
pub(crate) struct DecisionLog {
    /// Recent decisions worth showing, oldest first.
    pub kept: VecDeque<DecisionRecord>,
    /// The latest decision.
    pub last: Option<DecisionRecord>,
    last_reason_kind: Option<std::mem::Discriminant<Reason>>,
}

impl DecisionLog {
    /// Records `record` (made for `reason`); true when it is kept as news (its desired
    /// count or kind of reason differs from the last one's).
    pub fn record(&mut self, record: DecisionRecord, reason: &Reason) -> bool {
        let kind = std::mem::discriminant(reason);
        let same_as_last = self
            .last
            .as_ref()
            .is_some_and(|d| d.desired == record.desired)
            && self.last_reason_kind == Some(kind);
        self.last_reason_kind = Some(kind);
        if !same_as_last {
            self.kept.push_back(record.clone());
            if self.kept.len() > DECISIONS_KEPT {
                self.kept.pop_front();
            }
        }
        self.last = Some(record);
        !same_as_last
    }
}

/// Measured cold starts (start to ready), seconds.
#[derive(Default)]
pub(crate) struct ColdStartStats {
    kept: VecDeque<f64>,
    count: u64,
}

impl ColdStartStats {
    /// Adds one measured cold start.
    pub fn add(&mut self, seconds: f64) {
        self.kept.push_back(seconds);
        if self.kept.len() > COLD_STARTS_KEPT {
            self.kept.pop_front();
        }
        self.count += 1;
    }

    /// The mean of the kept ones; `None` before the first.
    pub fn mean(&self) -> Option<f64> {
        mean(self.kept.iter().copied())
    }

    /// As shown in the pool status.
    pub fn view(&self) -> ColdStarts {
        let mut sorted: Vec<f64> = self.kept.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        ColdStarts {
            count: self.count,
            last_s: self.kept.back().copied(),
            p50_s: (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) / 2]),
            mean_s: self.mean(),
        }
    }
}

/// Failed starts or crashes in a row, and the wait they impose before the next start.
#[derive(Default)]
pub(crate) struct StartBackoff {
    /// Failures in a row.
    pub failures: u32,
    retry_at: Option<Instant>,
    /// The latest failure, in words.
    pub last_failure: Option<String>,
}

impl StartBackoff {
    /// Counts a failure at `now`; returns the wait before the next start (1 s doubling,
    /// at most a minute).
    pub fn failed(&mut self, why: String, now: Instant) -> Duration {
        self.failures += 1;
        let wait = Duration::from_secs(1)
            .saturating_mul(1 << (self.failures - 1).min(6))
            .min(MAX_BACKOFF);
        self.retry_at = Some(now + wait);
        self.last_failure = Some(why);
        wait
    }

    /// A replica became ready: failures are over (the last one stays on record).
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// How many of `wanted` new replicas may start at `now`: none while backing off, one at
    /// a time after failures until one works, all otherwise.
    pub fn starts_allowed(&self, wanted: u32, now: Instant) -> u32 {
        match self.retry_at {
            Some(at) if now < at => 0,
            _ if self.failures > 0 => wanted.min(1),
            _ => wanted,
        }
    }
}

/// What the pool's replicas used and did, including those that are gone.
#[derive(Default)]
pub(crate) struct Usage {
    /// Finished runs of replicas that are gone.
    pub retired_runs: u64,
    /// Their total run time, microseconds.
    pub retired_run_time_us: u64,
    /// Lifetimes of replicas that are gone, seconds.
    pub retired_replica_seconds: f64,
    /// Most replicas at once.
    pub peak_replicas: u32,
    /// Jobs waiting at the last observation (including delayed retries).
    pub last_pending: u64,
    /// Jobs running at the last observation.
    pub last_in_flight: u64,
    /// Estimated GPU energy of replicas' ended awake periods, joules (board power × time).
    pub retired_joules: f64,
    /// Their GPU energy read from the GPUs' counters, joules (where the driver has them).
    pub measured_joules: f64,
    /// The largest board-power share one replica accounted for, watts.
    pub replica_power_w: Option<f64>,
}

/// What the scale-down choice needs to know of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Its state (draining replicas are not candidates).
    pub state: ReplicaState,
    /// Jobs running on it.
    pub in_flight: u64,
    /// When it started, Unix ms.
    pub started_at_ms: u64,
}

/// Which `count` of `candidates` to stop, as indices: idle ready replicas first (newest
/// first, so the longest-warm ones stay), then starting ones, then busy ones with the
/// fewest jobs — the policy never asks for fewer replicas than hold work, but the limits
/// might.
pub(crate) fn scale_down_victims(candidates: &[Candidate], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        let rank = match (c.state, c.in_flight) {
            (ReplicaState::Ready, 0) => 0,
            (ReplicaState::Starting, _) => 1,
            _ => 2,
        };
        (rank, c.in_flight, std::cmp::Reverse(c.started_at_ms))
    });
    order.truncate(count);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(state: ReplicaState, in_flight: u64, started_at_ms: u64) -> Candidate {
        Candidate {
            state,
            in_flight,
            started_at_ms,
        }
    }

    #[test]
    fn idle_ready_replicas_go_first_newest_first_then_starting_then_the_least_busy() {
        use ReplicaState::{Ready, Starting};
        let replicas = [
            c(Ready, 3, 100),   // 0: busy
            c(Ready, 0, 200),   // 1: idle, older
            c(Starting, 0, 50), // 2: loading
            c(Ready, 0, 300),   // 3: idle, newest
            c(Ready, 1, 400),   // 4: less busy
        ];
        assert_eq!(scale_down_victims(&replicas, 1), [3]);
        assert_eq!(scale_down_victims(&replicas, 2), [3, 1]);
        assert_eq!(scale_down_victims(&replicas, 3), [3, 1, 2]);
        assert_eq!(scale_down_victims(&replicas, 5), [3, 1, 2, 4, 0]);
        assert!(scale_down_victims(&replicas, 0).is_empty());
        assert_eq!(scale_down_victims(&replicas, 9).len(), 5);
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_then_allows_one_start_at_a_time() {
        let mut b = StartBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.starts_allowed(3, t0), 3);
        let waits: Vec<u64> = (0..8)
            .map(|_| b.failed("exit 1".into(), t0).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.starts_allowed(3, t0), 0);
        assert_eq!(b.starts_allowed(3, t0 + Duration::from_secs(61)), 1);
        b.succeeded();
        assert_eq!(b.starts_allowed(3, t0), 3);
        assert_eq!(b.last_failure.as_deref(), Some("exit 1"));
    }

    #[test]
    fn the_decision_log_keeps_changes_and_always_the_latest() {
        let mut log = DecisionLog::default();
        let rec = |desired| DecisionRecord {
            at_ms: 0,
            current: 1,
            desired,
            reason: String::new(),
            pending: 0,
            in_flight: 0,
            on_arrival: false,
        };
        let idle = Reason::Idle;
        assert!(log.record(rec(1), &idle));
        assert!(
            !log.record(rec(1), &idle),
            "same count, same kind: not news"
        );
        assert!(log.record(rec(2), &idle));
        assert_eq!(log.kept.len(), 2);
        assert_eq!(log.last.as_ref().map(|d| d.desired), Some(2));
    }

    #[test]
    fn cold_start_statistics_report_count_last_median_and_mean() {
        let mut s = ColdStartStats::default();
        assert_eq!(s.view().count, 0);
        assert_eq!(s.mean(), None);
        for secs in [3.0, 1.0, 2.0] {
            s.add(secs);
        }
        let v = s.view();
        assert_eq!(
            (v.count, v.last_s, v.p50_s, v.mean_s),
            (3, Some(2.0), Some(2.0), Some(2.0))
        );
    }
}
