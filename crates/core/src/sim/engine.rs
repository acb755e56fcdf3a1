//! One pool's simulation: its replicas, queue and jobs in virtual time, driven by a policy
//! (the cost model is in the parent module).

use std::collections::{BinaryHeap, VecDeque};

use super::{Job, PoolOutcome, Sample, SimConfig};
use crate::policy::{Decision, Observation, Policy};

#[derive(Debug, Clone)]
struct Replica {
    uid: u64,
    started_at: f64,
    ready_at: f64,
    ready: bool,
    /// Woken from sleep rather than cold-started.
    woken: bool,
    busy: u32,
    running: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
struct JobState {
    start: f64,
    run: u32,
    free_at_arrival: bool,
    cold: bool,
    woken: bool,
}

/// A completion event, ordered earliest first.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Completion {
    at: f64,
    job: u32,
    run: u32,
    replica: u64,
}

impl Eq for Completion {}
impl PartialOrd for Completion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Completion {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.total_cmp(&self.at).then(other.job.cmp(&self.job))
    }
}

struct Engine<'a> {
    cfg: SimConfig,
    jobs: &'a [Job],
    state: Vec<JobState>,
    replicas: Vec<Replica>,
    /// When each sleeping replica fell asleep, oldest first.
    sleepers: VecDeque<f64>,
    next_uid: u64,
    starting_queue: VecDeque<(f64, u64)>,
    pending: VecDeque<u32>,
    completions: BinaryHeap<Completion>,
    in_flight: u64,
    free_slots: u64,
    n_ready: u32,
    n_busy: u32,
    measured_cold: Option<f64>,
    measured_wake: Option<f64>,
    service_mean: Option<f64>,
    out: PoolOutcome,
}

impl<'a> Engine<'a> {
    fn new(jobs: &'a [Job], cfg: SimConfig) -> Self {
        Engine {
            cfg,
            jobs,
            state: vec![JobState::default(); jobs.len()],
            replicas: Vec::new(),
            sleepers: VecDeque::new(),
            next_uid: 0,
            starting_queue: VecDeque::new(),
            pending: VecDeque::new(),
            completions: BinaryHeap::new(),
            in_flight: 0,
            free_slots: 0,
            n_ready: 0,
            n_busy: 0,
            measured_cold: None,
            measured_wake: None,
            service_mean: None,
            out: PoolOutcome {
                waits: Vec::with_capacity(jobs.len()),
                ..PoolOutcome::default()
            },
        }
    }

    fn observe(&self, now: f64) -> Observation {
        Observation {
            now,
            pending: self.pending.len() as u64,
            in_flight: self.in_flight,
            ready: self.n_ready,
            starting: self.replicas.len() as u32 - self.n_ready,
            busy: self.n_busy,
            concurrency: self.cfg.concurrency,
            cold_start: self.measured_cold,
            service_time: self.service_mean,
            max_replicas: self.cfg.max_replicas,
            asleep: self.sleepers.len() as u32,
            can_sleep: self.cfg.sleep.is_some(),
            wake: self.measured_wake,
        }
    }

    /// Charges a sleeper from `since` to `now`.
    fn charge_sleep(&mut self, since: f64, now: f64) {
        let rate = self.cfg.sleep.map_or(0.0, |s| s.rate);
        self.out.gpu_seconds += rate * (now - since).max(0.0);
    }

    fn actuate(&mut self, now: f64, decision: Decision) {
        let desired = decision.desired.min(self.cfg.max_replicas) as usize;
        let keep_asleep = match self.cfg.sleep {
            Some(_) => decision.asleep as usize,
            None => 0,
        };
        let current = self.replicas.len();
        if desired > current {
            self.out.scale_ups += 1;
            for _ in current..desired {
                let uid = self.next_uid;
                self.next_uid += 1;
                let (ready_at, woken) = match (self.cfg.sleep, self.sleepers.pop_back()) {
                    (Some(tier), Some(since)) => {
                        self.charge_sleep(since, now);
                        self.out.wakes += 1;
                        (now + tier.wake, true)
                    }
                    _ => {
                        self.out.cold_starts += 1;
                        (now + self.cfg.cold_start, false)
                    }
                };
                self.replicas.push(Replica {
                    uid,
                    started_at: now,
                    ready_at,
                    ready: false,
                    woken,
                    busy: 0,
                    running: Vec::new(),
                });
                // Wakes are shorter than cold starts: keep the queue in time order.
                let at = self.starting_queue.partition_point(|s| s.0 <= ready_at);
                self.starting_queue.insert(at, (ready_at, uid));
                self.out.changes.push((now, 1));
            }
            self.out.peak_replicas = self.out.peak_replicas.max(desired as u32);
        } else if desired < current {
            for _ in desired..current {
                // Kubernetes' order: not-ready first (newest), then idle, then least busy.
                let victim = (0..self.replicas.len())
                    .min_by(|&a, &b| {
                        let (ra, rb) = (&self.replicas[a], &self.replicas[b]);
                        ra.ready
                            .cmp(&rb.ready)
                            .then(ra.busy.cmp(&rb.busy))
                            .then(rb.started_at.total_cmp(&ra.started_at))
                    })
                    .expect("a replica to remove");
                let idle = self.replicas[victim].ready && self.replicas[victim].busy == 0;
                self.remove(now, victim);
                if idle && self.sleepers.len() < keep_asleep {
                    self.sleepers.push_back(now);
                    self.out.sleeps += 1;
                }
            }
            self.dispatch(now);
        }
        while self.sleepers.len() > keep_asleep {
            let since = self.sleepers.pop_front().expect("more sleepers than kept");
            self.charge_sleep(since, now);
        }
    }

    fn remove(&mut self, now: f64, index: usize) {
        let r = self.replicas.swap_remove(index);
        self.out.gpu_seconds += now - r.started_at;
        self.out.changes.push((now, -1));
        if r.ready {
            self.n_ready -= 1;
            self.free_slots -= (self.cfg.concurrency - r.busy) as u64;
        }
        if r.busy > 0 {
            self.n_busy -= 1;
            self.in_flight -= r.busy as u64;
            self.out.interrupted += r.busy as u64;
            // Back to the front of the queue, oldest first.
            let mut cut = r.running;
            cut.sort_unstable();
            for j in cut.into_iter().rev() {
                self.state[j as usize].run += 1;
                self.pending.push_front(j);
            }
        }
    }

    fn dispatch(&mut self, now: f64) {
        let conc = self.cfg.concurrency;
        while self.free_slots > 0 && !self.pending.is_empty() {
            let (i, _) = self
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.ready && r.busy < conc)
                .min_by_key(|(_, r)| r.busy)
                .expect("free slots imply a ready replica with room");
            let j = self.pending.pop_front().expect("checked") as usize;
            let r = &mut self.replicas[i];
            if r.busy == 0 {
                self.n_busy += 1;
            }
            r.busy += 1;
            r.running.push(j as u32);
            self.free_slots -= 1;
            self.in_flight += 1;
            let job = self.jobs[j];
            let st = &mut self.state[j];
            st.start = now;
            st.cold = !st.free_at_arrival && r.ready_at > job.arrival;
            st.woken = r.woken;
            self.completions.push(Completion {
                at: now + job.service,
                job: j as u32,
                run: st.run,
                replica: r.uid,
            });
        }
    }

    fn complete(&mut self, c: Completion) {
        let st = self.state[c.job as usize];
        if st.run != c.run {
            return; // interrupted run
        }
        let Some(r) = self.replicas.iter_mut().find(|r| r.uid == c.replica) else {
            return;
        };
        r.busy -= 1;
        if r.busy == 0 {
            self.n_busy -= 1;
        }
        if let Some(p) = r.running.iter().position(|&j| j == c.job) {
            r.running.swap_remove(p);
        }
        self.free_slots += 1;
        self.in_flight -= 1;
        let job = self.jobs[c.job as usize];
        self.out.jobs += 1;
        self.out.waits.push((st.start - job.arrival) as f32);
        match (st.cold, st.woken) {
            (true, false) => self.out.cold_start_waits += 1,
            (true, true) => self.out.wake_waits += 1,
            _ => {}
        }
        let s = job.service;
        self.service_mean = Some(match self.service_mean {
            None => s,
            Some(m) => m + 0.05 * (s - m),
        });
        self.dispatch(c.at);
    }

    fn become_ready(&mut self, now: f64, uid: u64) {
        let Some(r) = self.replicas.iter_mut().find(|r| r.uid == uid) else {
            return; // removed while starting
        };
        r.ready = true;
        let took = r.ready_at - r.started_at;
        self.n_ready += 1;
        self.free_slots += self.cfg.concurrency as u64;
        let measured = if r.woken {
            &mut self.measured_wake
        } else {
            &mut self.measured_cold
        };
        *measured = Some(match *measured {
            None => took,
            Some(m) => m + 0.2 * (took - m),
        });
        self.dispatch(now);
    }

    fn run(mut self, policy: &mut dyn Policy, record: bool) -> PoolOutcome {
        let n = self.jobs.len();
        let mut next_job = 0usize;
        let mut tick = self.jobs.first().map_or(0.0, |j| j.arrival);
        let last_arrival = self.jobs.last().map_or(0.0, |j| j.arrival);
        loop {
            let done = next_job == n && self.out.jobs as usize == n;
            if done && self.replicas.is_empty() && self.sleepers.is_empty() {
                break;
            }
            let t_completion = self.completions.peek().map_or(f64::INFINITY, |c| c.at);
            let t_ready = self.starting_queue.front().map_or(f64::INFINITY, |s| s.0);
            let t_arrival = self.jobs.get(next_job).map_or(f64::INFINITY, |j| j.arrival);
            let next = t_completion.min(t_ready).min(t_arrival).min(tick);
            if next > last_arrival + self.cfg.horizon {
                break; // a policy that keeps replicas (or never serves) stops being charged
            }
            if t_completion <= next {
                let c = self.completions.pop().expect("peeked");
                self.complete(c);
            } else if t_ready <= next {
                let (at, uid) = self.starting_queue.pop_front().expect("peeked");
                self.become_ready(at, uid);
            } else if t_arrival <= next {
                let j = next_job;
                next_job += 1;
                self.state[j].free_at_arrival = self.free_slots > 0;
                self.pending.push_back(j as u32);
                if let Some(d) = policy.on_arrival(&self.observe(t_arrival)) {
                    self.actuate(t_arrival, d);
                }
                self.dispatch(t_arrival);
            } else {
                let d = policy.decide(&self.observe(tick));
                self.actuate(tick, d);
                if record {
                    self.out.timeline.push(Sample {
                        t: tick,
                        replicas: self.replicas.len() as u32,
                        pending: self.pending.len() as u64,
                    });
                }
                tick += self.cfg.tick;
            }
        }
        let end = tick.min(last_arrival + self.cfg.horizon);
        for r in std::mem::take(&mut self.replicas) {
            self.out.gpu_seconds += (end - r.started_at).max(0.0);
            self.out.changes.push((end, -1));
        }
        for since in std::mem::take(&mut self.sleepers) {
            self.charge_sleep(since, end);
        }
        self.out
    }
}

/// Simulates one pool under one policy.
pub fn simulate_pool(
    jobs: &[Job],
    policy: &mut dyn Policy,
    cfg: &SimConfig,
    record: bool,
) -> PoolOutcome {
    Engine::new(jobs, *cfg).run(policy, record)
}
