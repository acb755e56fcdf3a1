//! The offline oracle: the least GPU-seconds with which every job could start on arrival,
//! knowing the future (DESIGN §5).
//!
//! With every job starting at its arrival, `r(t) = ceil(jobs in service at t / concurrency)`.
//! Slot `k` is busy while `r(t) >= k`. Each slot pays one cold start, its busy time, and for
//! every idle gap `g` between its busy periods `min(g, cold_start)`: it stays warm through
//! short gaps and is stopped and pre-warmed again before the next busy period after long
//! ones. The pool's replica limit is not applied: the oracle is a lower bound.
//!
//! With a sleep tier (wake `w`, rate `r`) a gap may also be slept through and woken just in
//! time: `r (g - w) + w`; each gap takes the cheapest of the three.

use super::SleepConfig;
use super::trace::Job;

/// GPU-seconds the oracle needs for `jobs` (any order), with the pool's sleep tier if any.
pub fn oracle_gpu_seconds(
    jobs: &[Job],
    concurrency: u32,
    cold_start: f64,
    sleep: Option<SleepConfig>,
) -> f64 {
    let gap_cost = |g: f64| {
        let stay_or_restart = g.min(cold_start);
        match sleep {
            Some(t) if g >= t.wake => stay_or_restart.min(t.wake + t.rate * (g - t.wake)),
            _ => stay_or_restart,
        }
    };
    if jobs.is_empty() {
        return 0.0;
    }
    let conc = concurrency.max(1) as u64;
    // (time, +1 start / -1 end); ends before starts at the same instant.
    let mut events: Vec<(f64, i8)> = Vec::with_capacity(jobs.len() * 2);
    for j in jobs {
        events.push((j.arrival, 1));
        events.push((j.arrival + j.service, -1));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // Per slot: when its current busy period started, and when its last one ended.
    let mut busy_since: Vec<f64> = Vec::new();
    let mut last_end: Vec<Option<f64>> = Vec::new();
    let mut total = 0.0;
    let mut in_service: u64 = 0;
    let mut slots: usize = 0;
    for (t, delta) in events {
        if delta > 0 {
            in_service += 1;
        } else {
            in_service -= 1;
        }
        let want = in_service.div_ceil(conc) as usize;
        while slots < want {
            // Slot `slots` (0-based) becomes busy.
            if busy_since.len() == slots {
                busy_since.push(t);
                last_end.push(None);
            }
            busy_since[slots] = t;
            total += match last_end[slots] {
                None => cold_start,
                Some(end) => gap_cost(t - end),
            };
            slots += 1;
        }
        while slots > want {
            slots -= 1;
            total += t - busy_since[slots];
            last_end[slots] = Some(t);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(arrival: f64, service: f64) -> Job {
        Job {
            arrival,
            service,
            deadline: None,
        }
    }

    #[test]
    fn one_job_pays_one_cold_start_and_its_service() {
        assert_eq!(oracle_gpu_seconds(&[job(5.0, 2.0)], 1, 30.0, None), 32.0);
    }

    #[test]
    fn a_short_gap_is_kept_warm() {
        // Gap of 10 s < 30 s cold start: 30 + 2 + 10 + 2.
        assert_eq!(
            oracle_gpu_seconds(&[job(0.0, 2.0), job(12.0, 2.0)], 1, 30.0, None),
            44.0
        );
    }

    #[test]
    fn a_long_gap_pays_a_second_cold_start() {
        // Gap of 98 s > 30 s: 30 + 2 + 30 + 2.
        assert_eq!(
            oracle_gpu_seconds(&[job(0.0, 2.0), job(100.0, 2.0)], 1, 30.0, None),
            64.0
        );
    }

    #[test]
    fn a_middle_gap_is_slept_through() {
        // Gap of 98 s, wake 3 s at a tenth: 3 + 0.1 · 95 = 12.5 instead of a 30 s restart.
        let tier = SleepConfig {
            wake: 3.0,
            rate: 0.1,
        };
        let jobs = [job(0.0, 2.0), job(100.0, 2.0)];
        assert!((oracle_gpu_seconds(&jobs, 1, 30.0, Some(tier)) - 46.5).abs() < 1e-9);
        // A gap of 2 000 s: the restart (30) is cheaper than sleeping (3 + 199.7).
        let jobs = [job(0.0, 2.0), job(2002.0, 2.0)];
        assert_eq!(oracle_gpu_seconds(&jobs, 1, 30.0, Some(tier)), 64.0);
    }

    #[test]
    fn overlapping_jobs_need_a_second_slot() {
        // Concurrency 1: [0,10) and [5,8): slot 1 busy 0-10 (30+10), slot 2 busy 5-8 (30+3).
        assert_eq!(
            oracle_gpu_seconds(&[job(0.0, 10.0), job(5.0, 3.0)], 1, 30.0, None),
            73.0
        );
    }

    #[test]
    fn concurrency_two_shares_a_slot() {
        // Concurrency 2: three jobs overlapping in [4,6): two slots only while three run.
        // r(t): [0,4)=1, [4,6)=2, [6,10)=1 -> slot 1: 30+10, slot 2: 30+2.
        let jobs = [job(0.0, 10.0), job(2.0, 4.0), job(4.0, 2.0)];
        assert_eq!(oracle_gpu_seconds(&jobs, 2, 30.0, None), 72.0);
    }

    #[test]
    fn second_slot_reused_across_a_short_gap() {
        // Concurrency 1, a long job [0,20), short ones [2,4) and [6,8) on slot 2 with a 2 s gap:
        // slot 1: 30+20; slot 2: 30 + 2 + min(2,30) + 2.
        let jobs = [job(0.0, 20.0), job(2.0, 2.0), job(6.0, 2.0)];
        assert_eq!(oracle_gpu_seconds(&jobs, 1, 30.0, None), 86.0);
    }
}
