//! One pool's simulation: its replicas, queue and jobs in virtual time, driven by a policy
//! (the cost model is in the parent module). It advances one event at a time, so that
//! several pools can share one GPU budget ([`Room`]) in `shared`.

use std::collections::{BinaryHeap, VecDeque};

use super::{Job, PoolOutcome, Sample, SimConfig};
use crate::policy::{Decision, Observation, Policy};

/// Room on the GPUs as one pool sees it: an awake replica (starting, ready or draining)
/// takes one place; a sleeper or a stopped one none.
pub(crate) trait Room {
    /// Takes a place for a replica of `pool` at `now`; false when there is none.
    fn take(&mut self, pool: usize, now: f64) -> bool;
    /// Gives one back.
    fn give(&mut self, pool: usize);
}

/// No GPU limits.
pub(crate) struct Unlimited;

impl Room for Unlimited {
    fn take(&mut self, _: usize, _: f64) -> bool {
        true
    }
    fn give(&mut self, _: usize) {}
}

#[derive(Debug, Clone)]
struct Replica {
    uid: u64,
    started_at: f64,
    ready_at: f64,
    ready: bool,
    /// Woken from sleep rather than cold-started.
    woken: bool,
    /// Takes no new jobs; stops when its last one ends (made room for another pool).
    draining: bool,
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

/// Whether job `i` is of the batch class when a `share` of jobs is: a fixed hash of its
/// index, so every policy sees the same jobs as batch.
fn is_batch(i: usize, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    // splitmix64
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z as f64 / u64::MAX as f64) < share
}

/// Jobs waiting to start: interactive ones first, then batch ones, each oldest first.
#[derive(Debug, Default)]
struct Waiting {
    interactive: VecDeque<u32>,
    batch: VecDeque<u32>,
}

impl Waiting {
    fn queue(&mut self, batch: bool) -> &mut VecDeque<u32> {
        if batch {
            &mut self.batch
        } else {
            &mut self.interactive
        }
    }

    fn push_back(&mut self, j: u32, batch: bool) {
        self.queue(batch).push_back(j);
    }

    fn push_front(&mut self, j: u32, batch: bool) {
        self.queue(batch).push_front(j);
    }

    fn pop_front(&mut self) -> Option<u32> {
        self.interactive
            .pop_front()
            .or_else(|| self.batch.pop_front())
    }

    fn len(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One pool in a simulation.
pub(crate) struct Engine<'a> {
    /// Its index among the pools sharing a room.
    pool: usize,
    cfg: SimConfig,
    jobs: &'a [Job],
    state: Vec<JobState>,
    replicas: Vec<Replica>,
    /// When each sleeping replica fell asleep, oldest first.
    sleepers: VecDeque<f64>,
    next_uid: u64,
    starting_queue: VecDeque<(f64, u64)>,
    /// Waiting jobs: interactive ones start before batch ones, each in order.
    pending: Waiting,
    /// Which jobs are of the batch class (those with a deadline, and
    /// `SimConfig::batch_share` of the rest).
    batch: Vec<bool>,
    completions: BinaryHeap<Completion>,
    in_flight: u64,
    free_slots: u64,
    n_ready: u32,
    n_busy: u32,
    n_draining: u32,
    measured_cold: Option<f64>,
    measured_wake: Option<f64>,
    service_mean: Option<f64>,
    out: PoolOutcome,
    next_job: usize,
    tick: f64,
    last_arrival: f64,
    record: bool,
    /// The latest decision, applied again when room frees.
    last: Option<Decision>,
    /// When the pool last had work (waiting or running).
    pub(crate) last_busy: f64,
    /// Evicted since it last had work: it takes no room again until work comes.
    evicted_idle: bool,
}

impl<'a> Engine<'a> {
    /// Pool `pool` of `jobs` (sorted by arrival), recording a timeline when `record`.
    pub(crate) fn new(pool: usize, jobs: &'a [Job], cfg: SimConfig, record: bool) -> Self {
        let tick = jobs.first().map_or(0.0, |j| j.arrival);
        Engine {
            pool,
            cfg,
            jobs,
            state: vec![JobState::default(); jobs.len()],
            replicas: Vec::new(),
            sleepers: VecDeque::new(),
            next_uid: 0,
            starting_queue: VecDeque::new(),
            pending: Waiting::default(),
            batch: (0..jobs.len())
                .map(|i| jobs[i].deadline.is_some() || is_batch(i, cfg.batch_share))
                .collect(),
            completions: BinaryHeap::new(),
            in_flight: 0,
            free_slots: 0,
            n_ready: 0,
            n_busy: 0,
            n_draining: 0,
            measured_cold: None,
            measured_wake: None,
            service_mean: None,
            out: PoolOutcome {
                waits: Vec::with_capacity(jobs.len()),
                ..PoolOutcome::default()
            },
            next_job: 0,
            tick,
            last_arrival: jobs.last().map_or(0.0, |j| j.arrival),
            record,
            last: None,
            last_busy: tick,
            evicted_idle: false,
        }
    }

    /// Runs until `horizon` after `last_arrival` rather than after its own last arrival
    /// (pools sharing GPUs may wait for each other past their own).
    pub(crate) fn until_after(mut self, last_arrival: f64) -> Self {
        self.last_arrival = self.last_arrival.max(last_arrival);
        self
    }

    /// Jobs waiting or running.
    fn work(&self) -> u64 {
        self.pending.len() as u64 + self.in_flight
    }

    fn observe(&self, now: f64) -> Observation {
        Observation {
            now,
            pending: self.pending.len() as u64,
            deferrable: self.pending.batch.len() as u64,
            // Jobs start in arrival order and interrupted ones go back to the front, so
            // the front of the batch queue is its oldest.
            deferred_for: self
                .pending
                .batch
                .front()
                .map(|&j| now - self.jobs[j as usize].arrival),
            // Batches arrive in order with the same window, so the front's deadline is
            // the earliest.
            deadline_in: self
                .pending
                .batch
                .front()
                .and_then(|&j| self.jobs[j as usize].deadline)
                .map(|d| d - now),
            in_flight: self.in_flight,
            ready: self.n_ready,
            starting: self.replicas.len() as u32 - self.n_ready - self.n_draining,
            busy: self.n_busy - self.n_draining,
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

    /// Applies `decision`: wakes sleepers or starts replicas where `room` has a place,
    /// or stops (or puts to sleep) the surplus.
    fn actuate(&mut self, now: f64, decision: Decision, room: &mut dyn Room) {
        self.last = Some(decision);
        if self.work() > 0 {
            self.evicted_idle = false;
        }
        let desired = decision.desired.min(self.cfg.max_replicas) as usize;
        let keep_asleep = match self.cfg.sleep {
            Some(_) => decision.asleep as usize,
            None => 0,
        };
        let current = self.replicas.len() - self.n_draining as usize;
        if desired > current && !self.evicted_idle {
            let mut added = false;
            for _ in current..desired {
                if !room.take(self.pool, now) {
                    break;
                }
                added = true;
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
                    draining: false,
                    woken,
                    busy: 0,
                    running: Vec::new(),
                });
                // Wakes are shorter than cold starts: keep the queue in time order.
                let at = self.starting_queue.partition_point(|s| s.0 <= ready_at);
                self.starting_queue.insert(at, (ready_at, uid));
                self.out.changes.push((now, 1));
            }
            if added {
                self.out.scale_ups += 1;
                self.out.peak_replicas = self.out.peak_replicas.max(self.replicas.len() as u32);
            }
        } else if desired < current {
            for _ in desired..current {
                // Kubernetes' order: not-ready first (newest), then idle, then least busy.
                let victim = (0..self.replicas.len())
                    .filter(|&i| !self.replicas[i].draining)
                    .min_by(|&a, &b| {
                        let (ra, rb) = (&self.replicas[a], &self.replicas[b]);
                        ra.ready
                            .cmp(&rb.ready)
                            .then(ra.busy.cmp(&rb.busy))
                            .then(rb.started_at.total_cmp(&ra.started_at))
                    })
                    .expect("a replica to remove");
                let idle = self.replicas[victim].ready && self.replicas[victim].busy == 0;
                self.remove(now, victim, room);
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

    fn remove(&mut self, now: f64, index: usize, room: &mut dyn Room) {
        let r = self.replicas.swap_remove(index);
        room.give(self.pool);
        self.out.gpu_seconds += now - r.started_at;
        self.out.changes.push((now, -1));
        if r.draining {
            self.n_draining -= 1;
        } else if r.ready {
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
                self.pending.push_front(j, self.batch[j as usize]);
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
                .filter(|(_, r)| r.ready && !r.draining && r.busy < conc)
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

    fn complete(&mut self, c: Completion, room: &mut dyn Room) {
        let st = self.state[c.job as usize];
        if st.run != c.run {
            return; // interrupted run
        }
        let Some(i) = self.replicas.iter().position(|r| r.uid == c.replica) else {
            return;
        };
        let r = &mut self.replicas[i];
        r.busy -= 1;
        if r.busy == 0 {
            self.n_busy -= 1;
        }
        if let Some(p) = r.running.iter().position(|&j| j == c.job) {
            r.running.swap_remove(p);
        }
        self.in_flight -= 1;
        if !r.draining {
            self.free_slots += 1;
        } else if r.busy == 0 {
            // Its last job is done: it gives its room to the pool it was drained for.
            self.remove(c.at, i, room);
        }
        let job = self.jobs[c.job as usize];
        self.out.jobs += 1;
        self.out.waits.push((st.start - job.arrival) as f32);
        self.out.batch.push(self.batch[c.job as usize]);
        if job.deadline.is_some_and(|d| st.start > d) {
            self.out.late += 1;
        }
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

    /// When the next completion, readiness and arrival happen, and the earliest of them and
    /// the next tick.
    fn upcoming(&self) -> (f64, f64, f64, f64) {
        let t_completion = self.completions.peek().map_or(f64::INFINITY, |c| c.at);
        let t_ready = self.starting_queue.front().map_or(f64::INFINITY, |s| s.0);
        let t_arrival = self
            .jobs
            .get(self.next_job)
            .map_or(f64::INFINITY, |j| j.arrival);
        let next = t_completion.min(t_ready).min(t_arrival).min(self.tick);
        (t_completion, t_ready, t_arrival, next)
    }

    /// When the next event happens; `None` once the pool's run is over (every job done and
    /// nothing left running or asleep, or past the horizon after the last arrival).
    pub(crate) fn next_time(&self) -> Option<f64> {
        let n = self.jobs.len();
        let done = self.next_job == n && self.out.jobs as usize == n;
        if done && self.replicas.is_empty() && self.sleepers.is_empty() {
            return None;
        }
        let (.., next) = self.upcoming();
        // A policy that keeps replicas (or never serves) stops being charged.
        (next <= self.last_arrival + self.cfg.horizon).then_some(next)
    }

    /// Handles the next event (at [`Engine::next_time`]).
    pub(crate) fn step(&mut self, policy: &mut dyn Policy, room: &mut dyn Room) {
        let (t_completion, t_ready, t_arrival, next) = self.upcoming();
        if t_completion <= next {
            let c = self.completions.pop().expect("peeked");
            self.complete(c, room);
        } else if t_ready <= next {
            let (at, uid) = self.starting_queue.pop_front().expect("peeked");
            self.become_ready(at, uid);
        } else if t_arrival <= next {
            let j = self.next_job;
            self.next_job += 1;
            self.state[j].free_at_arrival = self.free_slots > 0;
            self.pending.push_back(j as u32, self.batch[j]);
            self.last_busy = t_arrival;
            if let Some(d) = policy.on_arrival(&self.observe(t_arrival)) {
                self.actuate(t_arrival, d, room);
            }
            self.dispatch(t_arrival);
        } else {
            let tick = self.tick;
            if self.work() > 0 {
                self.last_busy = tick;
            }
            let d = policy.decide(&self.observe(tick));
            self.actuate(tick, d, room);
            if self.record {
                self.out.timeline.push(Sample {
                    t: tick,
                    replicas: self.replicas.len() as u32,
                    pending: self.pending.len() as u64,
                });
            }
            self.tick += self.cfg.tick;
        }
    }

    /// Whether its latest decision wants more replicas awake than it has.
    pub(crate) fn wants_more(&self) -> bool {
        !self.evicted_idle
            && self.last.is_some_and(|d| {
                d.desired.min(self.cfg.max_replicas) as usize
                    > self.replicas.len() - self.n_draining as usize
            })
    }

    /// Its cold start: the measured mean, or the configured one before the first.
    pub(crate) fn cold_start(&self) -> f64 {
        self.measured_cold.unwrap_or(self.cfg.cold_start)
    }

    /// Whether one of its replicas drains to make room for another pool.
    pub(crate) fn draining(&self) -> bool {
        self.n_draining > 0
    }

    /// Applies the latest decision again (room has freed).
    pub(crate) fn retry(&mut self, now: f64, room: &mut dyn Room) {
        if let Some(d) = self.last {
            self.actuate(now, d, room);
        }
    }

    /// What evicting one of its replicas now would cost: `None` when none is evictable (an
    /// idle ready one; with `busy_too`, a busy one as well, drained). The loss is the
    /// pool's next cold start (measured mean), weighed down by how long it has had no
    /// work, as `greenscale up` weighs it: `cold start / (1 + idle minutes)`.
    pub(crate) fn eviction_loss(&self, now: f64, busy_too: bool) -> Option<f64> {
        self.replicas
            .iter()
            .any(|r| r.ready && !r.draining && (busy_too || r.busy == 0))
            .then(|| {
                let idle_min = (now - self.last_busy).max(0.0) / 60.0;
                self.cold_start() / (1.0 + idle_min)
            })
    }

    /// Evicts one replica for another pool: an idle one is stopped — or put to sleep when
    /// `may_sleep` and the pool has a sleep tier — at once; a busy one (only with
    /// `busy_too`) is drained, its jobs finish first. Whether one was found.
    pub(crate) fn evict(
        &mut self,
        now: f64,
        busy_too: bool,
        may_sleep: bool,
        room: &mut dyn Room,
    ) -> bool {
        let idle = self
            .replicas
            .iter()
            .position(|r| r.ready && !r.draining && r.busy == 0);
        match idle {
            Some(i) => {
                self.remove(now, i, room);
                if may_sleep && self.cfg.sleep.is_some() {
                    self.sleepers.push_back(now);
                    self.out.sleeps += 1;
                }
            }
            None if busy_too => {
                let Some(i) = (0..self.replicas.len())
                    .filter(|&i| self.replicas[i].ready && !self.replicas[i].draining)
                    .min_by_key(|&i| self.replicas[i].busy)
                else {
                    return false;
                };
                let conc = self.cfg.concurrency;
                let r = &mut self.replicas[i];
                r.draining = true;
                self.n_draining += 1;
                self.n_ready -= 1;
                self.free_slots -= (conc - r.busy) as u64;
            }
            None => return false,
        }
        self.out.evictions += 1;
        self.evicted_idle = true;
        true
    }

    /// Ends the run at `end`: what is still running or asleep is charged until then.
    pub(crate) fn finish(mut self) -> PoolOutcome {
        let end = self.tick.min(self.last_arrival + self.cfg.horizon);
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
    let mut engine = Engine::new(0, jobs, *cfg, record);
    while engine.next_time().is_some() {
        engine.step(policy, &mut Unlimited);
    }
    engine.finish()
}
