//! GreenScale's own policy.
//!
//! One knob, `cold_cost`: how many GPU-seconds avoiding one cold-start wait is worth. It
//! also prices waiting in general: a job-second of waiting is worth `cold_cost / cold_start`
//! GPU-seconds.
//!
//! - Never below the replicas that hold in-flight work.
//! - Scale-up from backlog and measured service rate: a replica started now is ready one
//!   cold start later and serves only what is still waiting then, so none is started for a
//!   backlog the replicas already there drain before that; otherwise as many are started as
//!   maximise the waiting they save (priced at `cold_cost / cs` per job-second) minus what
//!   they cost (cold start, busy time, and the keep-alive they will be held for).
//!   At zero, every job in the system gets a slot at once.
//! - Each level of capacity (the k-th replica) learns how long it tends to stay unneeded
//!   before it is needed again, and is kept through that gap when that is cheaper than
//!   restarting it (cold start plus `cold_cost`); with too little history it is kept for
//!   the break-even time `cold_start + cold_cost` (ski rental: 2-competitive).
//! - The last step to zero is its own decision on the first level's idle-time history, and
//!   may also pre-warm ahead of a predicted arrival.
//! - It reacts to arrivals at once (push), so waking from zero never waits for a tick.

use std::collections::VecDeque;

use super::{Decision, Observation, Policy, Reason, div_ceil};

/// Idle times kept in the history.
const HISTORY: usize = 256;
/// Idle times needed before the history replaces the break-even rule.
const MIN_HISTORY: usize = 8;
/// Candidate values tried for each window when planning.
const CANDIDATES: usize = 48;

/// Default `cold_cost`: two GPU-minutes per avoided cold-start wait. With a 30 s cold start
/// this prices a second of a caller's waiting at four GPU-seconds (see docs/scaling.md).
pub const DEFAULT_COLD_COST: f64 = 120.0;

/// Default `sleep_cost`: a sleeper costs a tenth of a warm replica.
pub const DEFAULT_SLEEP_COST: f64 = 0.1;

/// The wake time assumed before one has been measured, as a share of the cold start.
const WAKE_PRIOR: f64 = 0.25;

/// Parameters of the `greenscale` policy.
#[derive(Debug, Clone, PartialEq)]
pub struct GreenScaleParams {
    /// GPU-seconds that avoiding one cold-start wait is worth to the user.
    pub cold_cost: f64,
    /// Cold-start duration assumed until one has been measured, seconds.
    pub cold_start_prior: f64,
    /// Replica budget below the pool's limit, if any.
    pub max: Option<u32>,
    /// A sleeping replica's cost per second as a share of a warm one's (it holds host
    /// memory and a process, not the GPU); used where replicas can sleep.
    pub sleep_cost: f64,
    /// Longest a deferrable (batch) job waits, at zero, for warm capacity before the pool
    /// is woken for it, seconds: the latency its submitter accepts, even when its deadline
    /// is further. A deadline that needs an earlier start wakes it sooner; `24h` leaves
    /// a day's batch to its deadline alone.
    pub batch_max_wait: f64,
    /// Batch work alone wakes a pool at zero once it holds this many times the wake's own
    /// cost (the start plus the keep-warm window after the work) in replica-seconds: at 1,
    /// the work the wake serves at least pays for it (the wake is at most half of what it
    /// bills); higher waits for bigger piles.
    pub batch_pile: f64,
}

/// How much longer than its estimate a batch backlog is planned to take: the latest start
/// leaves this margin before the deadline.
const BATCH_MARGIN: f64 = 1.5;

/// Service time assumed for batch planning before one has been measured, seconds.
const SERVICE_PRIOR: f64 = 5.0;

/// How long batch work waits for warm capacity by default, seconds.
pub const DEFAULT_BATCH_MAX_WAIT: f64 = 900.0;

/// How many wakes' worth of batch work wakes a pool by default.
pub const DEFAULT_BATCH_PILE: f64 = 1.0;

impl Default for GreenScaleParams {
    fn default() -> Self {
        GreenScaleParams {
            cold_cost: DEFAULT_COLD_COST,
            cold_start_prior: 30.0,
            max: None,
            sleep_cost: DEFAULT_SLEEP_COST,
            batch_max_wait: DEFAULT_BATCH_MAX_WAIT,
            batch_pile: DEFAULT_BATCH_PILE,
        }
    }
}

/// What a replica does through an idle period: warm, then asleep, then stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdlePlan {
    /// Keep the replica warm for this long after going idle, seconds.
    pub keep: f64,
    /// Then keep it asleep until this idle time, seconds (`keep` when it does not sleep).
    pub sleep: f64,
    /// Warm it again from this idle time until the second value (pre-warm), if worth it.
    pub prewarm: Option<(f64, f64)>,
}

/// What one level of capacity (the k-th replica) has learned.
#[derive(Debug, Clone, Default)]
struct Level {
    /// Gaps between this level being released and being needed again, seconds.
    gaps: VecDeque<f64>,
    new_since_plan: usize,
    /// The plan, and the cold start and sleep tier it was made for.
    plan: Option<(IdlePlan, f64, Option<SleepTier>)>,
    /// When the level was last released (None while needed, or never used).
    off_since: Option<f64>,
    /// The level is kept warm until this time.
    keep_until: f64,
    /// Then asleep until this time.
    sleep_until: f64,
    /// Pre-warm window, absolute times (first level only).
    prewarm: Option<(f64, f64)>,
}

impl Level {
    fn record(&mut self, gap: f64) {
        if self.gaps.len() == HISTORY {
            self.gaps.pop_front();
        }
        self.gaps.push_back(gap);
        self.new_since_plan += 1;
    }

    /// The plan for cold start `cs` and sleep tier `sleep`, recomputed as history
    /// accumulates.
    fn plan(&mut self, cs: f64, cold_cost: f64, sleep: Option<SleepTier>) -> IdlePlan {
        let near = |a: f64, b: f64| (a - b).abs() <= 0.05 * b.max(1.0);
        let stale = match self.plan {
            None => true,
            Some((_, planned_cs, planned_sleep)) => {
                !near(planned_cs, cs)
                    || match (planned_sleep, sleep) {
                        (None, None) => false,
                        (Some(a), Some(b)) => !near(a.wake, b.wake) || a.rate != b.rate,
                        _ => true,
                    }
                    || self.new_since_plan >= (self.gaps.len() / 8).max(MIN_HISTORY / 2)
            }
        };
        if stale {
            let samples: Vec<f64> = self.gaps.iter().copied().collect();
            self.plan = Some((plan_idle(&samples, cs, cold_cost, sleep), cs, sleep));
            self.new_since_plan = 0;
        }
        self.plan.expect("just planned").0
    }

    /// Whether the level is warm at `now` (kept, or inside its pre-warm window).
    fn warm(&self, now: f64) -> bool {
        now < self.keep_until || self.prewarm.is_some_and(|(a, b)| now >= a && now < b)
    }
}

/// The `greenscale` policy.
#[derive(Debug, Clone)]
pub struct GreenScale {
    name: String,
    params: GreenScaleParams,
    /// `levels[k - 1]` is the k-th replica.
    levels: Vec<Level>,
    /// Replicas wanted by the backlog at the last decision.
    wanted: u32,
    /// Highest level that may still be kept.
    kept_top: u32,
    idle_since: Option<f64>,
}

impl GreenScale {
    /// A `greenscale` policy with the given parameters.
    pub fn new(name: impl Into<String>, params: GreenScaleParams) -> Self {
        GreenScale {
            name: name.into(),
            params,
            levels: Vec::new(),
            wanted: 0,
            kept_top: 0,
            idle_since: None,
        }
    }

    /// The sleep tier the policy plans with for `obs`, if the pool's replicas can sleep.
    fn sleep_tier(&self, obs: &Observation, cs: f64) -> Option<SleepTier> {
        obs.can_sleep.then(|| SleepTier {
            wake: obs.wake.unwrap_or(WAKE_PRIOR * cs).max(0.0),
            rate: self.params.sleep_cost,
        })
    }

    /// Records level transitions from the last `wanted` to `now_wanted`.
    fn track_levels(&mut self, now: f64, now_wanted: u32, cs: f64, sleep: Option<SleepTier>) {
        let cold_cost = self.params.cold_cost;
        if self.levels.len() < now_wanted as usize {
            self.levels.resize_with(now_wanted as usize, Level::default);
        }
        for k in (self.wanted + 1)..=now_wanted {
            let level = &mut self.levels[k as usize - 1];
            if let Some(off) = level.off_since.take() {
                level.record(now - off);
            }
            level.prewarm = None;
        }
        for k in (now_wanted + 1)..=self.wanted {
            let level = &mut self.levels[k as usize - 1];
            level.off_since = Some(now);
            let plan = level.plan(cs, cold_cost, sleep);
            level.keep_until = now + plan.keep;
            level.sleep_until = now + plan.sleep;
            level.prewarm = if k == 1 {
                plan.prewarm.map(|(a, b)| (now + a, now + b))
            } else {
                None
            };
        }
        self.kept_top = self.kept_top.max(self.wanted).max(now_wanted);
        self.wanted = now_wanted;
    }

    /// The replicas kept at `now`: the highest level still warm (levels above `wanted`
    /// within their keep-warm or pre-warm window), and how many levels above it sleep.
    fn kept(&mut self, now: f64) -> (u32, u32) {
        // Forget levels past every window (a pre-warm still to come keeps a level).
        while self.kept_top > self.wanted {
            let level = &self.levels[self.kept_top as usize - 1];
            if now < level.sleep_until || level.prewarm.is_some_and(|(_, b)| now < b) {
                break;
            }
            self.kept_top -= 1;
        }
        let level = |k: u32| &self.levels[k as usize - 1];
        let warm = (self.wanted + 1..=self.kept_top)
            .rev()
            .find(|&k| level(k).warm(now))
            .unwrap_or(self.wanted);
        let asleep = (warm + 1..=self.kept_top)
            .filter(|&k| now < level(k).sleep_until)
            .count() as u32;
        (warm, asleep)
    }
}

/// The sleep tier of a pool whose replicas can sleep: what waking costs and what a
/// sleeper costs while it sleeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SleepTier {
    /// Seconds from asleep to ready.
    pub wake: f64,
    /// A sleeper's cost per second, as a share of a warm replica's (it holds host memory
    /// and a process, not the GPU).
    pub rate: f64,
}

/// Chooses the keep-warm, sleep and pre-warm windows minimising the mean cost over the
/// observed idle times. For an idle time `I`, keep-warm `T` and pre-warm start `P` (warm
/// from `P` until the next arrival), the cost in GPU-seconds is: `I` when `I <= T` (kept
/// warm); `T + cs + cold_cost` when the arrival finds no ready replica (`T < I < P + cs`);
/// `T + I - P` when the pre-warmed replica is ready in time.
///
/// With a sleep tier (wake `w`, rate `r`) the replica sleeps from `T` until `S` and is
/// stopped after: `T + r (I - T) + w (1 + cold_cost / cs)` when the arrival wakes it
/// (`T < I <= S`: the wake's GPU time and its wait, priced like a cold start's), and
/// `T + r (S - T) + cs + cold_cost` after `S`. Whichever plan, with or without sleep, is
/// cheaper on the history wins. Without enough history it is the ski-rental rule with
/// two rentals: stay in each tier until what it has cost equals what moving down saves.
pub fn plan_idle(samples: &[f64], cs: f64, cold_cost: f64, sleep: Option<SleepTier>) -> IdlePlan {
    let miss = cs + cold_cost;
    // A wake's cost (GPU time and priced waiting), when a sleep tier is worth having.
    let tier = sleep
        .map(|t| (t, t.wake * (1.0 + cold_cost / cs.max(0.1))))
        .filter(|(t, wake_cost)| *wake_cost < miss && t.rate < 1.0);
    if samples.len() < MIN_HISTORY {
        return match tier {
            None => IdlePlan {
                keep: miss,
                sleep: miss,
                prewarm: None,
            },
            Some((t, wake_cost)) => {
                let keep = wake_cost / (1.0 - t.rate);
                let asleep = if t.rate > 0.0 {
                    (miss - wake_cost) / t.rate
                } else {
                    f64::INFINITY
                };
                IdlePlan {
                    keep,
                    sleep: keep + asleep.min(7.0 * 86_400.0),
                    prewarm: None,
                }
            }
        };
    }
    let mut sorted: Vec<f64> = samples.iter().map(|s| s.max(0.0)).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for s in &sorted {
        prefix.push(prefix.last().expect("non-empty") + s);
    }
    // Number of samples <= x, and their sum.
    let upto = |x: f64| sorted.partition_point(|&s| s <= x);
    let below = |x: f64| sorted.partition_point(|&s| s < x);
    let cost = |t: f64, p: Option<f64>| -> f64 {
        let a = upto(t);
        let mut total = prefix[a];
        match p {
            None => total += (n - a) as f64 * (t + miss),
            Some(p) => {
                let c = below(p + cs).max(a);
                total += (c - a) as f64 * (t + miss);
                total += (n - c) as f64 * (t - p) + (prefix[n] - prefix[c]);
            }
        }
        total / n as f64
    };
    let step = (n / CANDIDATES).max(1);
    let mut keeps: Vec<f64> = vec![0.0, miss.min(sorted[n - 1])];
    keeps.extend(sorted.iter().step_by(step).copied());
    keeps.push(sorted[n - 1]);
    let mut best = (cost(0.0, None), 0.0, None);
    for &t in &keeps {
        let c = cost(t, None);
        if c < best.0 {
            best = (c, t, None);
        }
        for &s in sorted
            .iter()
            .step_by(step)
            .chain(std::iter::once(&sorted[n - 1]))
        {
            let p = s - cs;
            if p <= t {
                continue;
            }
            let c = cost(t, Some(p));
            if c < best.0 - 1e-9 {
                best = (c, t, Some(p));
            }
        }
    }
    let mut plan = IdlePlan {
        keep: best.1,
        sleep: best.1,
        prewarm: best.2.map(|p| (p, sorted[n - 1] * 1.1 + cs)),
    };
    if let Some((t, wake_cost)) = tier {
        let slept = |keep: f64, until: f64| -> f64 {
            let (a, b) = (upto(keep), upto(until));
            let woken = (b - a) as f64 * (keep * (1.0 - t.rate) + wake_cost)
                + t.rate * (prefix[b] - prefix[a]);
            let stopped = (n - b) as f64 * (keep + t.rate * (until - keep) + miss);
            (prefix[a] + woken + stopped) / n as f64
        };
        let mut best_sleep = (f64::INFINITY, 0.0, 0.0);
        for &keep in &keeps {
            for &until in keeps.iter().filter(|&&u| u >= keep) {
                let c = slept(keep, until);
                if c < best_sleep.0 - 1e-9 {
                    best_sleep = (c, keep, until);
                }
            }
        }
        if best_sleep.0 < best.0 - 1e-9 {
            plan = IdlePlan {
                keep: best_sleep.1,
                sleep: best_sleep.2,
                prewarm: None,
            };
        }
    }
    plan
}

impl GreenScale {
    /// How long level `k` (the k-th replica) would be kept warm after its work, seconds:
    /// its planned keep-alive, or the break-even time without history.
    fn level_keep(&mut self, k: u32, cs: f64, sleep: Option<SleepTier>) -> f64 {
        let cold_cost = self.params.cold_cost;
        match self.levels.get_mut(k as usize - 1) {
            Some(level) => level.plan(cs, cold_cost, sleep).keep,
            None => plan_idle(&[], cs, cold_cost, sleep).keep,
        }
    }
}

/// Whether starting replicas for a backlog is worth it. A replica started now is ready one
/// cold start later and serves only what is still waiting then: the ready replicas drain
/// the backlog meanwhile, and the replicas already starting join when it ends. What new
/// replicas save is the waiting after that; what they cost is the cold start, their busy
/// time and the keep-alive they will be held for afterwards.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ScaleUp {
    /// Jobs with no free slot now.
    beyond: f64,
    /// Replicas serving now.
    ready: u32,
    /// Replicas already starting.
    starting: u32,
    /// Jobs one replica runs at once.
    concurrency: u32,
    /// Seconds one job runs.
    service_time: f64,
    /// Seconds until a replica started now is ready.
    cold_start: f64,
    /// GPU-seconds one job-second of waiting is worth (`cold_cost / cold start`).
    price: f64,
}

impl ScaleUp {
    /// Jobs one replica finishes per second.
    fn rate(&self) -> f64 {
        self.concurrency as f64 / self.service_time
    }

    /// Jobs still waiting when a replica started now would be ready.
    fn left_after_cold_start(&self) -> f64 {
        (self.beyond - self.ready as f64 * self.rate() * self.cold_start).max(0.0)
    }

    /// Jobs still waiting once the replicas joining then (those starting and `extra` new
    /// ones) have filled their slots.
    fn excess(&self, extra: u32) -> f64 {
        let fresh = ((self.starting + extra) * self.concurrency) as f64;
        (self.left_after_cold_start() - fresh).max(0.0)
    }

    /// Job-seconds of waiting after the cold start with `extra` new replicas: the excess
    /// drains linearly on every replica, so its waiting is a triangle.
    fn waiting_after(&self, extra: u32) -> f64 {
        let serving = (self.ready + self.starting + extra) as f64;
        if serving == 0.0 {
            return f64::INFINITY;
        }
        let excess = self.excess(extra);
        excess * excess / (2.0 * serving * self.rate())
    }

    /// GPU-seconds the `extra` new replicas cost, the j-th held for `keeps[j - 1]` after:
    /// each pays a cold start, runs its jobs and the drain of the excess, then is kept.
    fn cost(&self, extra: u32, keeps: &[f64]) -> f64 {
        let serving = (self.ready + self.starting + extra) as f64;
        let busy = self.service_time + self.excess(extra) / (serving * self.rate());
        keeps
            .iter()
            .take(extra as usize)
            .map(|keep| self.cold_start + busy + keep)
            .sum()
    }

    /// How many new replicas (at most `keeps.len()`) give the most waiting saved, priced,
    /// over their cost; 0 when none is worth it.
    fn worth_starting(&self, keeps: &[f64]) -> u32 {
        if self.left_after_cold_start() == 0.0 {
            return 0;
        }
        let base = self.waiting_after(0);
        let mut best = (0.0, 0);
        for extra in 1..=keeps.len() as u32 {
            let saved = if base.is_finite() {
                base - self.waiting_after(extra)
            } else {
                f64::MAX / 4.0
            };
            let net = self.price * saved - self.cost(extra, keeps);
            if net > best.0 {
                best = (net, extra);
            }
        }
        best.1
    }
}

impl Policy for GreenScale {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        // Deferrable work without a deadline, once a pool is up, is backlog like any other.
        if obs.deferrable == 0 || (obs.deadline_in.is_none() && obs.replicas() > 0) {
            return self.decide_on(obs);
        }
        // Deferrable work runs on capacity that other work keeps warm: decide for the
        // rest, then add what the batch backlog itself needs.
        let rest = Observation {
            pending: obs.pending - obs.deferrable,
            deferrable: 0,
            ..*obs
        };
        let mut d = self.decide_on(&rest);
        let (need, reason) = self.batch_need(obs);
        if need > d.desired {
            d.desired = need;
            d.asleep = d.asleep.min(obs.max_replicas.saturating_sub(need));
            d.reason = reason;
        } else if d.desired == 0 && obs.replicas() == 0 {
            d.reason = reason;
        }
        d
    }
}

impl GreenScale {
    /// The replicas deferrable work needs now, and why: none while it may wait for warm
    /// capacity; when nothing is up, one (or as many as its deadline needs) once waiting
    /// longer would miss the deadline, its oldest job has waited `batch_max_wait`, or
    /// enough of it has piled up that a wake is worth it; when
    /// replicas are up (and it has a deadline), those it fills, and as many as finishing
    /// it before its deadline needs.
    fn batch_need(&mut self, obs: &Observation) -> (u32, Reason) {
        let max = self
            .params
            .max
            .map_or(obs.max_replicas, |m| m.min(obs.max_replicas));
        let jobs = obs.deferrable;
        let svc = obs
            .service_time
            .filter(|s| *s > 0.0)
            .unwrap_or(SERVICE_PRIOR);
        // Replica-seconds the backlog takes, with the margin.
        let work = BATCH_MARGIN * jobs as f64 * svc / obs.concurrency.max(1) as f64;
        let replicas_for = |left: f64| {
            if left <= 0.0 {
                max
            } else {
                ((work / left).ceil() as u32).clamp(1, max.max(1))
            }
        };
        if let Some(left) = obs.deadline_in
            && obs.replicas() > 0
        {
            // Replicas that are up keep taking it; more start only for the deadline.
            let fill = obs
                .replicas()
                .min(div_ceil(jobs, obs.concurrency.max(1) as u64));
            let need = replicas_for(left).max(fill);
            return (
                need,
                Reason::BatchWindow {
                    jobs,
                    left_s: left,
                    replicas: need,
                },
            );
        }
        let cs = obs
            .cold_start
            .unwrap_or(self.params.cold_start_prior)
            .max(0.0);
        let sleep = self.sleep_tier(obs, cs);
        let start = match sleep {
            Some(t) if obs.asleep > 0 => t.wake,
            _ => cs,
        };
        let wake_cost = start + self.level_keep(1, cs, sleep);
        if work / BATCH_MARGIN >= self.params.batch_pile * wake_cost {
            let need = obs.deadline_in.map_or(1, |left| replicas_for(left - start));
            return (
                need,
                Reason::BatchPile {
                    jobs,
                    work_s: work / BATCH_MARGIN,
                    wake_cost_s: wake_cost,
                },
            );
        }
        // When the pool must be woken: at the latest start from which one replica still
        // finishes before the deadline, and once the oldest job has waited batch_max_wait.
        let by_age = self.params.batch_max_wait - obs.deferred_for.unwrap_or(0.0);
        let by_deadline = obs
            .deadline_in
            .map_or(f64::INFINITY, |left| left - start - work);
        let wake_in = by_age.min(by_deadline);
        if wake_in > 0.0 {
            return (
                0,
                Reason::Deferred {
                    jobs,
                    wake_in_s: wake_in,
                },
            );
        }
        let need = obs.deadline_in.map_or(1, |left| replicas_for(left - start));
        (
            need,
            Reason::BatchWindow {
                jobs,
                left_s: obs.deadline_in.unwrap_or(0.0),
                replicas: need,
            },
        )
    }

    /// The decision for `obs` as it is.
    fn decide_on(&mut self, obs: &Observation) -> Decision {
        let now = obs.now;
        let cs = obs
            .cold_start
            .unwrap_or(self.params.cold_start_prior)
            .max(0.0);
        let conc = obs.concurrency.max(1);
        let max = self
            .params
            .max
            .map_or(obs.max_replicas, |m| m.min(obs.max_replicas));
        let work = obs.work();
        let floor = obs.busy.max(div_ceil(obs.in_flight, conc as u64));
        let have = obs.replicas();
        let sleep = self.sleep_tier(obs, cs);
        // New capacity comes from sleepers first: it is ready one wake later.
        let ready_in = match sleep {
            Some(t) if obs.asleep > 0 => t.wake,
            _ => cs,
        };

        let (wanted, mut reason) = if work == 0 {
            (0, Reason::Idle)
        } else if obs.slots_needed() > have
            && have > 0
            && let Some(svc) = obs.service_time.filter(|s| *s > 0.0)
        {
            // Replicas still starting have no slot to give yet; they join with new ones.
            let beyond = work.saturating_sub(obs.ready as u64 * conc as u64) as f64;
            let plan = ScaleUp {
                beyond,
                ready: obs.ready,
                starting: obs.starting,
                concurrency: conc,
                service_time: svc,
                cold_start: ready_in,
                price: self.params.cold_cost / cs.max(0.1),
            };
            let room = max.saturating_sub(have);
            let keeps: Vec<f64> = (1..=room)
                .map(|j| self.level_keep(have + j, cs, sleep))
                .collect();
            match plan.worth_starting(&keeps) {
                0 => (
                    have,
                    Reason::BacklogDrainsInTime {
                        pending: obs.pending,
                        drain_s: beyond / (obs.ready.max(1) as f64 * plan.rate()),
                        cold_start_s: ready_in,
                    },
                ),
                k => (
                    have + k,
                    Reason::Backlog {
                        work,
                        per_replica: conc,
                    },
                ),
            }
        } else {
            (
                obs.slots_needed(),
                Reason::Backlog {
                    work,
                    per_replica: conc,
                },
            )
        };
        let wanted = wanted.min(max);
        self.track_levels(now, wanted, cs, sleep);
        let (kept, mut asleep) = self.kept(now);
        let mut desired = kept.max(wanted);
        if work == 0 {
            let since = *self.idle_since.get_or_insert(now);
            let idle_s = now - since;
            let first = self.levels.first();
            reason = match first {
                _ if desired == 0 && asleep == 0 && have + obs.asleep == 0 => Reason::Idle,
                Some(l) if desired == 0 && asleep > 0 => Reason::Sleep {
                    idle_s,
                    warm_s: l.keep_until - since,
                    until_s: l.sleep_until - since,
                    wake_s: sleep.map_or(0.0, |t| t.wake),
                },
                _ if desired == 0 => Reason::ScaleToZero {
                    idle_s,
                    window_s: first.map_or(0.0, |l| l.keep_until - since),
                },
                Some(l) if l.prewarm.is_some_and(|(a, b)| now >= a && now < b) => Reason::Prewarm {
                    idle_s,
                    from_s: l.prewarm.map_or(0.0, |(a, _)| a - since),
                },
                _ => Reason::KeepAlive {
                    idle_s,
                    window_s: first.map_or(0.0, |l| l.keep_until - since),
                },
            };
        } else {
            self.idle_since = None;
        }
        if desired < floor {
            desired = floor;
            reason = Reason::HoldInFlight { busy: floor };
        }
        if desired > max {
            desired = max.max(floor);
            reason = Reason::Capped { max };
        }
        if sleep.is_none() {
            asleep = 0;
        }
        Decision {
            desired,
            asleep: asleep.min(max.saturating_sub(desired)),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::obs;

    #[test]
    fn without_history_keeps_warm_for_the_break_even_time() {
        let plan = plan_idle(&[], 30.0, 120.0, None);
        assert_eq!(plan.keep, 150.0);
        assert_eq!(plan.prewarm, None);
    }

    #[test]
    fn short_idle_times_are_bridged_and_long_ones_are_not() {
        // Idle times all ~20 s: keeping warm through them is cheaper than any cold start.
        let short: Vec<f64> = (0..50).map(|i| 15.0 + (i % 10) as f64).collect();
        assert!(plan_idle(&short, 30.0, 0.0, None).keep >= 24.0);
        // Idle times all ~2 h with no cold_cost: go to zero at once.
        let long: Vec<f64> = (0..50).map(|i| 7000.0 + (i % 100) as f64 * 10.0).collect();
        assert_eq!(plan_idle(&long, 30.0, 0.0, None).keep, 0.0);
    }

    #[test]
    fn a_sleep_tier_splits_the_idle_time_into_warm_asleep_and_stopped() {
        // 30 s cold start, cold_cost 120 (a miss costs 150), wake 3 s (priced 3 · 5 = 15),
        // a sleeper at a tenth: warm while cheaper than a wake (15 / 0.9 = 16.7 s), asleep
        // while cheaper than the cold start the wake saves ((150 - 15) / 0.1 = 1350 s more).
        let tier = SleepTier {
            wake: 3.0,
            rate: 0.1,
        };
        let plan = plan_idle(&[], 30.0, 120.0, Some(tier));
        assert!((plan.keep - 15.0 / 0.9).abs() < 1e-9, "{plan:?}");
        assert!((plan.sleep - plan.keep - 1350.0).abs() < 1e-9, "{plan:?}");
        // A wake that costs more than a cold start's miss is no tier at all.
        let slow = SleepTier {
            wake: 60.0,
            rate: 0.1,
        };
        assert_eq!(plan_idle(&[], 30.0, 120.0, Some(slow)).sleep, 150.0);
        // Gaps of 3 to 15 min, unpredictable: too long to stay warm, short enough to sleep
        // through (the pre-warm that suits periodic gaps does not pay here).
        let middle: Vec<f64> = (0..50)
            .map(|i| 200.0 + (i * 37 % 50) as f64 * 14.0)
            .collect();
        let plan = plan_idle(&middle, 30.0, 120.0, Some(tier));
        assert!(plan.keep < 200.0 && plan.sleep >= 886.0, "{plan:?}");
        assert_eq!(plan.prewarm, None);
        // Gaps of hours: a sleeper costs more than the cold start it would save.
        let long: Vec<f64> = (0..50).map(|i| 20_000.0 + i as f64 * 100.0).collect();
        let plan = plan_idle(&long, 30.0, 120.0, Some(tier));
        assert!(plan.sleep < 20_000.0, "{plan:?}");
    }

    #[test]
    fn an_idle_pool_that_can_sleep_sleeps_then_stops_and_wakes_sleepers_first() {
        let mut g = GreenScale::new("greenscale", GreenScaleParams::default());
        let sleepy = |now, pending, in_flight, ready, asleep| Observation {
            can_sleep: true,
            wake: Some(3.0),
            deferrable: 0,
            deferred_for: None,
            deadline_in: None,
            asleep,
            ..obs(now, pending, in_flight, ready)
        };
        assert_eq!(g.decide(&sleepy(0.0, 0, 1, 1, 0)).desired, 1);
        // Idle from 10 s: warm for 16.7 s, then asleep until 1376.7 s, then stopped.
        let d = g.decide(&sleepy(10.0, 0, 0, 1, 0));
        assert_eq!((d.desired, d.asleep), (1, 0), "{}", d.reason);
        let d = g.decide(&sleepy(20.0, 0, 0, 1, 0));
        assert_eq!((d.desired, d.asleep), (1, 0), "{}", d.reason);
        let d = g.decide(&sleepy(30.0, 0, 0, 1, 0));
        assert_eq!((d.desired, d.asleep), (0, 1), "{}", d.reason);
        assert!(matches!(d.reason, Reason::Sleep { .. }), "{}", d.reason);
        let d = g.decide(&sleepy(1300.0, 0, 0, 0, 1));
        assert_eq!((d.desired, d.asleep), (0, 1), "{}", d.reason);
        let d = g.decide(&sleepy(1400.0, 0, 0, 0, 1));
        assert_eq!((d.desired, d.asleep), (0, 0), "{}", d.reason);
        // A pool that cannot sleep never gets sleepers.
        let mut g = GreenScale::new("greenscale", GreenScaleParams::default());
        g.decide(&obs(0.0, 0, 1, 1));
        assert_eq!(g.decide(&obs(100.0, 0, 0, 1)).asleep, 0);
    }

    #[test]
    fn batch_work_alone_waits_for_warm_capacity_until_its_wait_or_a_deadline_is_up() {
        let mut g = GreenScale::new("greenscale", GreenScaleParams::default());
        let batch = |pending, deferrable, waited, deadline_in| Observation {
            deferrable,
            deferred_for: Some(waited),
            deadline_in,
            ..obs(0.0, pending, 0, 0)
        };
        // 10 batch jobs at zero, waiting 60 s of 900: nothing starts, and the reason says so.
        let d = g.decide(&batch(10, 10, 60.0, None));
        assert_eq!(d.desired, 0);
        assert!(
            matches!(d.reason, Reason::Deferred { jobs: 10, wake_in_s } if wake_in_s == 840.0),
            "{}",
            d.reason
        );
        assert!(
            d.reason
                .to_string()
                .contains("10 batch jobs wait for warm capacity")
        );
        let fresh = |o: &Observation| {
            GreenScale::new("greenscale", GreenScaleParams::default())
                .decide(o)
                .desired
        };
        // One interactive job among them wakes the pool at once.
        assert!(fresh(&batch(11, 10, 60.0, None)) > 0);
        // A deadline that one replica, started now, would barely meet wakes it: 10 jobs
        // of 2 s one at a time take 20 s, 30 s with the margin, after a 30 s start.
        assert!(fresh(&batch(10, 10, 60.0, Some(55.0))) > 0);
        assert_eq!(fresh(&batch(10, 10, 60.0, Some(500.0))), 0);
        let d = GreenScale::new("greenscale", GreenScaleParams::default()).decide(&batch(
            10,
            10,
            60.0,
            Some(500.0),
        ));
        assert!(
            matches!(d.reason, Reason::Deferred { wake_in_s, .. } if (wake_in_s - (500.0 - 30.0 - 30.0)).abs() < 1e-9),
            "{}",
            d.reason
        );
        // So does the oldest having waited batch_max_wait.
        assert!(fresh(&batch(10, 10, 900.0, None)) > 0);
        // A warm pool keeps its replicas for batch work with a distant deadline, but
        // starts none for it.
        let warm = Observation {
            ready: 2,
            ..batch(1000, 1000, 1.0, Some(86_400.0))
        };
        assert_eq!(fresh(&warm), 2);
        // Without a deadline, it is backlog like any other.
        let warm = Observation {
            ready: 2,
            ..batch(1000, 1000, 1.0, None)
        };
        assert!(fresh(&warm) > 2);
        // Unless the deadline needs them: 100 jobs, 300 replica-seconds with the margin,
        // in 100 s need 3 replicas.
        let due = Observation {
            ready: 2,
            ..batch(100, 100, 1.0, Some(100.0))
        };
        assert_eq!(fresh(&due), 3);
    }

    #[test]
    fn a_pile_of_batch_work_wakes_one_replica_its_deadline_needs_no_more() {
        let fresh =
            |o: &Observation| GreenScale::new("greenscale", GreenScaleParams::default()).decide(o);
        let batch = |n| Observation {
            deferrable: n,
            deferred_for: Some(1.0),
            deadline_in: Some(86_400.0),
            ..obs(0.0, n, 0, 0)
        };
        // 50 jobs of 2 s (100 replica-seconds) are not worth a wake: less than a 30 s start
        // and the keep-warm after it.
        assert_eq!(fresh(&batch(50)).desired, 0);
        // 10,000 jobs are: one replica, which finishes them well within the day.
        let d = fresh(&batch(10_000));
        assert_eq!(d.desired, 1, "{}", d.reason);
        assert!(
            matches!(d.reason, Reason::BatchPile { jobs: 10_000, .. }),
            "{}",
            d.reason
        );
    }

    #[test]
    fn periodic_arrivals_are_prewarmed() {
        // A cron-like job every 600 s (idle ~590 s): pre-warm shortly before.
        let periodic: Vec<f64> = (0..50).map(|i| 590.0 + (i % 3) as f64).collect();
        let plan = plan_idle(&periodic, 30.0, 300.0, None);
        let (from, until) = plan.prewarm.expect("pre-warm");
        assert_eq!(plan.keep, 0.0);
        assert!(from <= 590.0 - 30.0 && from > 400.0, "{plan:?}");
        assert!(until > 592.0);
    }

    #[test]
    fn cold_cost_moves_the_plan_toward_warmth() {
        let mixed: Vec<f64> = (0..100).map(|i| (i * i) as f64).collect(); // 0 .. 9801 s
        let cheap = plan_idle(&mixed, 30.0, 0.0, None).keep;
        let dear = plan_idle(&mixed, 30.0, 5000.0, None).keep;
        assert!(dear > cheap, "cheap {cheap} dear {dear}");
    }

    #[test]
    fn never_below_in_flight_and_wakes_on_arrival() {
        let mut g = GreenScale::new("greenscale", GreenScaleParams::default());
        let d = g.on_arrival(&obs(0.0, 3, 0, 0)).unwrap();
        assert_eq!(d.desired, 3, "at zero every job gets a slot at once");
        let mut o = obs(100.0, 0, 5, 5);
        o.busy = 5;
        assert!(g.decide(&o).desired >= 5);
    }

    #[test]
    fn no_replica_is_started_for_a_backlog_that_drains_before_it_would_be_ready() {
        // One warm replica (concurrency 4, 0.5 s jobs), 3.1 s cold start, a burst of 10:
        // 4 run, 6 wait; the warm replica finishes them in 0.75 s, long before a new one.
        let mut o = obs(0.0, 6, 4, 1);
        o.busy = 1;
        o.concurrency = 4;
        o.service_time = Some(0.5);
        o.cold_start = Some(3.1);
        let mut g = GreenScale::new("greenscale", GreenScaleParams::default());
        let d = g.decide(&o);
        assert_eq!(d.desired, 1, "{}", d.reason);
        assert!(matches!(d.reason, Reason::BacklogDrainsInTime { .. }));
    }

    #[test]
    fn new_replicas_are_weighed_against_what_they_cost_including_their_keep_alive() {
        // One ready replica (concurrency 1, 2 s jobs: 0.5 jobs/s), 30 s cold start.
        // 10 waiting drain in 20 s, before any new replica is ready: none is started.
        let mut o10 = obs(0.0, 10, 1, 1);
        o10.busy = 1;
        for cold_cost in [10.0, 120.0] {
            let params = GreenScaleParams {
                cold_cost,
                ..GreenScaleParams::default()
            };
            let d = GreenScale::new("greenscale", params).decide(&o10);
            assert_eq!(d.desired, 1, "cold_cost {cold_cost}: {}", d.reason);
        }
        // 40 waiting: 25 are still waiting after 30 s, 625 job-seconds of waiting for one
        // replica draining them alone (25² / (2 · 0.5)). A new replica takes one at once and
        // drains the other 24 with it (24² / (2 · 2 · 0.5) = 288: it saves 337); it costs
        // 30 s + 26 s busy + its keep-alive (break-even: 30 s + cold_cost).
        let mut o40 = obs(1.0, 40, 1, 1);
        o40.busy = 1;
        // cold_cost 10 (a job-second of waiting worth 1/3 GPU-second): one new replica
        // saves 337 · 1/3 = 112 for 30 + 26 + 40 = 96; a second would lose money.
        let cheap = GreenScaleParams {
            cold_cost: 10.0,
            ..GreenScaleParams::default()
        };
        assert_eq!(GreenScale::new("greenscale", cheap).decide(&o40).desired, 2);
        // cold_cost 120 (4 GPU-seconds per job-second): three new replicas are best
        // (saved 504 · 4 = 2016 for 3 · (30 + 13 + 150) = 579).
        let mut dear = GreenScale::new("greenscale", GreenScaleParams::default());
        assert_eq!(dear.decide(&o40).desired, 4);
        // Two replicas already starting join at the same time as new ones: one more only
        // (it saves 55 · 4 = 221 for 30 + 13 + 150 = 193).
        let mut starting = o40;
        starting.starting = 2;
        let mut g = GreenScale::new("greenscale", GreenScaleParams::default());
        assert_eq!(g.decide(&starting).desired, 4);
    }

    #[test]
    fn goes_to_zero_after_the_planned_keepalive() {
        let mut g = GreenScale::new(
            "greenscale",
            GreenScaleParams {
                cold_cost: 60.0,
                ..GreenScaleParams::default()
            },
        );
        g.decide(&obs(0.0, 0, 1, 1));
        assert_eq!(g.decide(&obs(10.0, 0, 0, 1)).desired, 1);
        assert_eq!(g.decide(&obs(99.0, 0, 0, 1)).desired, 1);
        let d = g.decide(&obs(100.5, 0, 0, 1));
        assert_eq!(
            d.desired, 0,
            "30 s cold start + 60 s cold_cost = 90 s keep-alive"
        );
        assert!(matches!(d.reason, Reason::ScaleToZero { .. }));
    }
}
