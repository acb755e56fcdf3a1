//! Several pools sharing one GPU budget: the GPUs hold `slots` awake replicas at once (all
//! pools together, one place each), and a pool that needs one when none is free waits while
//! room is made by evicting other pools' replicas, in the order the policy family uses:
//!
//! - GreenScale's (as `greenscale up` does): the idle replica whose eviction is expected to
//!   cost least (`cold start / (1 + idle minutes)` of its pool) goes first, and it sleeps
//!   where the pool has a sleep tier; room goes to the pool that has waited longest; after
//!   `turn` of waiting (at least four of its cold starts), a busy replica of another pool is
//!   drained (its jobs finish, then it stops), so one busy pool cannot lock another out.
//! - The peers' (llama-swap's swap, Ollama's max loaded models): the least recently used
//!   idle model is unloaded; a busy one is never, so a pool waits until another is idle.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::engine::{Engine, Room};
use super::{PoolOutcome, SimConfig, Trace};
use crate::policy::{Policy, Spec, TURN_COLD_STARTS};

/// A GPU budget shared by every pool of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SharedBudget {
    /// Awake replicas the GPUs hold at once, over all pools.
    pub slots: u32,
    /// How long a pool with work waits before busy replicas of others are drained for it
    /// (GreenScale's order only), seconds.
    pub turn: f64,
}

/// The places on the GPUs, and which pools wait for one since when.
struct Slots {
    free: u32,
    held: Vec<u32>,
    waiting: Vec<Option<f64>>,
}

impl Slots {
    /// The pool that has waited longest, if any.
    fn first_waiting(&self) -> Option<(usize, f64)> {
        self.waiting
            .iter()
            .enumerate()
            .filter_map(|(p, w)| w.map(|t| (p, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
    }
}

impl Room for Slots {
    fn take(&mut self, pool: usize, now: f64) -> bool {
        // A pool that holds a place yields to any that holds none; among the others, the
        // one that has waited longest goes first.
        let since = self.waiting[pool].unwrap_or(now);
        let ahead = self.waiting.iter().enumerate().any(|(p, w)| {
            p != pool && w.is_some_and(|t| t < since || (self.held[pool] > 0 && self.held[p] == 0))
        });
        if self.free > 0 && !ahead {
            self.free -= 1;
            self.held[pool] += 1;
            self.waiting[pool] = None;
            true
        } else {
            if self.held[pool] == 0 {
                self.waiting[pool].get_or_insert(now);
            }
            false
        }
    }

    fn give(&mut self, pool: usize) {
        self.free += 1;
        self.held[pool] -= 1;
    }
}

/// An engine's next event in the heap: earliest first; `version` drops stale entries.
struct Next {
    at: f64,
    pool: usize,
    version: u64,
}

impl PartialEq for Next {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Next {}
impl PartialOrd for Next {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Next {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then(other.pool.cmp(&self.pool))
    }
}

/// Simulates every pool of `trace` under a fresh instance of `spec`'s policy each, sharing
/// `budget` (in one thread: the pools depend on each other). Deterministic.
pub fn simulate_shared(
    trace: &Trace,
    spec: &Spec,
    cfg: &SimConfig,
    budget: SharedBudget,
) -> Vec<PoolOutcome> {
    let by_value = spec.evicts_by_value();
    let slots = spec
        .max_loaded()
        .map_or(budget.slots, |m| m.min(budget.slots));
    let n = trace.pools.len();
    let last_arrival = trace
        .pools
        .iter()
        .filter_map(|p| p.jobs.last().map(|j| j.arrival))
        .fold(0.0, f64::max);
    let mut engines: Vec<Engine> = trace
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| Engine::new(i, &p.jobs, *cfg, n == 1).until_after(last_arrival))
        .collect();
    let mut policies: Vec<Box<dyn Policy>> = (0..n).map(|_| spec.build()).collect();
    let mut room = Slots {
        free: slots,
        held: vec![0; n],
        waiting: vec![None; n],
    };
    let mut versions = vec![0u64; n];
    let mut heap = BinaryHeap::new();
    for (pool, e) in engines.iter().enumerate() {
        if let Some(at) = e.next_time() {
            heap.push(Next {
                at,
                pool,
                version: 0,
            });
        }
    }
    let mut touched = Vec::new();
    while let Some(next) = heap.pop() {
        if next.version != versions[next.pool] {
            continue;
        }
        let (i, now) = (next.pool, next.at);
        engines[i].step(policies[i].as_mut(), &mut room);
        if !engines[i].wants_more() {
            room.waiting[i] = None;
        }
        touched.clear();
        touched.push(i);
        make_room(
            now,
            &mut engines,
            &mut room,
            by_value,
            budget.turn,
            &mut touched,
        );
        touched.sort_unstable();
        touched.dedup();
        for &t in &touched {
            versions[t] += 1;
            if let Some(at) = engines[t].next_time() {
                heap.push(Next {
                    at: at.max(now),
                    pool: t,
                    version: versions[t],
                });
            }
        }
    }
    engines.into_iter().map(Engine::finish).collect()
}

/// Gives free places to the pools waiting longest, and evicts for them when there are none.
fn make_room(
    now: f64,
    engines: &mut [Engine],
    room: &mut Slots,
    by_value: bool,
    turn: f64,
    touched: &mut Vec<usize>,
) {
    // Each round either places a replica, evicts one, or stops: it ends.
    for _ in 0..engines.len() * 4 + 4 {
        let Some((w, since)) = room.first_waiting() else {
            return;
        };
        if !engines[w].wants_more() {
            room.waiting[w] = None;
            continue;
        }
        if room.free > 0 {
            engines[w].retry(now, room);
            touched.push(w);
            if room.waiting[w].is_some() {
                return;
            }
            continue;
        }
        if engines.iter().any(Engine::draining) {
            return; // room is being made
        }
        let busy_too =
            by_value && now - since >= turn.max(TURN_COLD_STARTS * engines[w].cold_start());
        let victim = (0..engines.len())
            .filter(|&p| p != w)
            .filter_map(|p| {
                let key = if by_value {
                    engines[p].eviction_loss(now, busy_too)?
                } else {
                    engines[p].eviction_loss(now, false)?;
                    engines[p].last_busy
                };
                Some((p, key))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let Some((v, _)) = victim else {
            return;
        };
        if !engines[v].evict(now, busy_too, by_value, room) {
            return;
        }
        touched.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Job, Pool, SleepConfig, simulate};
    use proptest::prelude::*;

    fn trace(pools: Vec<Vec<Job>>) -> Trace {
        Trace {
            pools: pools
                .into_iter()
                .enumerate()
                .map(|(i, jobs)| Pool {
                    name: format!("p{i}"),
                    jobs,
                })
                .collect(),
        }
    }

    fn cfg(slots: u32) -> SimConfig {
        SimConfig {
            cold_start: 10.0,
            concurrency: 1,
            horizon: 600.0,
            shared: Some(SharedBudget { slots, turn: 30.0 }),
            ..SimConfig::default()
        }
    }

    /// Two pools taking turns: `n` jobs each, one every 100 s, pool 1 50 s after pool 0.
    fn alternating(n: usize) -> Trace {
        let pool = |offset: f64| {
            (0..n)
                .map(|i| Job {
                    arrival: offset + i as f64 * 100.0,
                    service: 2.0,
                    deadline: None,
                })
                .collect()
        };
        trace(vec![pool(0.0), pool(50.0)])
    }

    fn run(t: &Trace, spec: &str, cfg: SimConfig) -> crate::sim::Report {
        simulate(t, &Spec::parse(spec).unwrap(), &cfg, 0.0).0
    }

    #[test]
    fn alternating_pools_on_one_place_swap_and_all_jobs_are_served() {
        let t = alternating(5);
        for spec in [
            "greenscale",
            "llama-swap",
            "ollama:max_loaded=1",
            "keepalive:5m",
        ] {
            let r = run(&t, spec, cfg(1));
            assert_eq!((r.jobs, r.interrupted), (10, 0), "{spec}");
            assert!(r.peak_replicas <= 1, "{spec}: {} at once", r.peak_replicas);
            assert!(r.evictions >= 8, "{spec}: {} evictions", r.evictions);
        }
        // With room for both, nothing is evicted.
        let r = run(&t, "greenscale", cfg(2));
        assert_eq!(r.evictions, 0);
    }

    #[test]
    fn greenscale_drains_a_busy_pool_after_its_turn_and_the_peers_wait_until_it_is_idle() {
        // Pool 0 is busy without a pause for 1000 s (a job every 5 s, each 6 s: its one
        // replica never idles); pool 1 sends one job at 100 s.
        let busy: Vec<Job> = (0..200)
            .map(|i| Job {
                arrival: i as f64 * 5.0,
                service: 6.0,
                deadline: None,
            })
            .collect();
        let t = trace(vec![
            busy,
            vec![Job {
                arrival: 100.0,
                service: 1.0,
                deadline: None,
            }],
        ]);
        let mut c = cfg(1);
        c.max_replicas = 1;
        let pools = |spec: &str| {
            let spec = Spec::parse(spec).unwrap();
            simulate_shared(&t, &spec, &c, c.shared.unwrap())
        };
        let (ours, lru) = (pools("greenscale"), pools("llama-swap"));
        for o in [&ours, &lru] {
            assert_eq!((o[0].jobs + o[1].jobs, o[0].interrupted), (201, 0));
        }
        // GreenScale: pool 1 waits its turn (30 s, but at least four 10 s cold starts), the
        // drain of a running job (at most 6 s) and a cold start (10 s). llama-swap never
        // unloads a busy model: pool 1 waits until pool 0's backlog is gone.
        let (ours, lru) = (ours[1].waits[0], lru[1].waits[0]);
        assert!((50.0..=56.0).contains(&ours), "{ours}");
        assert!(lru > 900.0, "{lru}");
    }

    #[test]
    fn an_evicted_greenscale_replica_sleeps_when_the_pool_can() {
        let t = alternating(6);
        let mut c = cfg(1);
        c.sleep = Some(SleepConfig {
            wake: 1.0,
            rate: 0.1,
        });
        let r = run(&t, "greenscale", c);
        assert_eq!((r.jobs, r.interrupted), (12, 0));
        assert!(r.wakes >= 8, "{} wakes", r.wakes);
        assert!(r.cold_starts <= 3, "{} cold starts", r.cold_starts);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Random arrivals to several pools sharing a budget: every job runs once, none is
        /// cut by an eviction, and the GPUs never hold more than their places.
        #[test]
        fn shared_budgets_serve_every_job_once_without_cutting_one(
            pools in proptest::collection::vec(
                proptest::collection::vec((0.0f64..400.0, 0.5f64..15.0), 1..25), 2..5),
            slots in 1u32..4,
            spec in prop_oneof![Just("greenscale"), Just("llama-swap:ttl=30s"), Just("ollama"), Just("keepalive:1m")],
            sleep in any::<bool>(),
        ) {
            let pools: Vec<Vec<Job>> = pools.into_iter().map(|v| {
                let mut jobs: Vec<Job> = v.into_iter().map(|(arrival, service)| Job { arrival, service, deadline: None }).collect();
                jobs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
                jobs
            }).collect();
            let jobs: usize = pools.iter().map(Vec::len).sum();
            let t = trace(pools);
            let mut c = cfg(slots);
            c.horizon = 4000.0;
            if sleep {
                c.sleep = Some(SleepConfig { wake: 2.0, rate: 0.1 });
            }
            let r = run(&t, spec, c);
            prop_assert_eq!(r.jobs as usize, jobs);
            prop_assert_eq!(r.interrupted, 0);
            let limit = Spec::parse(spec).unwrap().max_loaded().map_or(slots, |m| m.min(slots));
            prop_assert!(r.peak_replicas <= limit, "{} > {}", r.peak_replicas, limit);
        }
    }
}
