//! KEDA + HPA on a list-length trigger (the prototype's autoscaler), emulated faithfully.
//!
//! KEDA polls the list every `poll` seconds: above `activation` it scales 0 -> 1, and after
//! `cooldown` seconds inactive it scales straight to 0. Between 1 and N the HPA syncs every
//! 15 s with `desired = ceil(listLength / target)` (AverageValue), tolerance 0.1, minimum 1,
//! scale-up at most doubling or +4 per sync (whichever is more), and scale-down held at the
//! highest recommendation of the last 300 s. It sees pending jobs only: running jobs are
//! invisible to it, so it can scale to zero under them.

use std::collections::VecDeque;

use super::{Decision, Observation, Policy, Reason, div_ceil};

/// HPA sync period, seconds.
pub const HPA_SYNC: f64 = 15.0;
/// HPA tolerance on the usage ratio.
pub const HPA_TOLERANCE: f64 = 0.1;
/// HPA scale-down stabilization window, seconds.
pub const HPA_STABILIZATION: f64 = 300.0;

/// Parameters of a KEDA ScaledObject with a Redis list trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct KedaParams {
    /// `pollingInterval`, seconds.
    pub poll: f64,
    /// `cooldownPeriod`, seconds.
    pub cooldown: f64,
    /// The trigger's `listLength` (target per replica).
    pub list_length: u32,
    /// The trigger's `activationListLength`.
    pub activation: u64,
    /// `maxReplicaCount`, when it is lower than the pool's limit.
    pub max: Option<u32>,
}

impl Default for KedaParams {
    /// KEDA's defaults: poll 30 s, cooldown 300 s, listLength 5, activation 0.
    fn default() -> Self {
        KedaParams {
            poll: 30.0,
            cooldown: 300.0,
            list_length: 5,
            activation: 0,
            max: None,
        }
    }
}

impl KedaParams {
    /// The prototype's ScaledObject: poll 5 s, cooldown 30 s, listLength 1.
    pub fn seed() -> Self {
        KedaParams {
            poll: 5.0,
            cooldown: 30.0,
            list_length: 1,
            ..KedaParams::default()
        }
    }
}

/// The KEDA + HPA emulation.
#[derive(Debug, Clone)]
pub struct Keda {
    name: String,
    params: KedaParams,
    started: bool,
    next_poll: f64,
    next_sync: f64,
    last_active: Option<f64>,
    current: u32,
    recommendations: VecDeque<(f64, u32)>,
    last_reason: Reason,
}

impl Keda {
    /// A KEDA emulation with the given parameters.
    pub fn new(name: impl Into<String>, params: KedaParams) -> Self {
        Keda {
            name: name.into(),
            params,
            started: false,
            next_poll: 0.0,
            next_sync: 0.0,
            last_active: None,
            current: 0,
            recommendations: VecDeque::new(),
            last_reason: Reason::KedaWait,
        }
    }

    fn hpa_sync(&mut self, obs: &Observation, max: u32) -> Reason {
        let target = self.params.list_length.max(1);
        let metric = obs.pending;
        let current = self.current.max(1);
        let ratio = metric as f64 / (current as f64 * target as f64);
        let (raw, mut reason) = if (ratio - 1.0).abs() <= HPA_TOLERANCE {
            (current, Reason::HpaTolerance { ratio })
        } else {
            let recommended = div_ceil(metric, target as u64);
            (
                recommended,
                Reason::Hpa {
                    metric,
                    target,
                    recommended,
                },
            )
        };
        let raw = raw.clamp(1, max.max(1));
        let now = obs.now;
        self.recommendations.push_back((now, raw));
        while self
            .recommendations
            .front()
            .is_some_and(|&(t, _)| t < now - HPA_STABILIZATION)
        {
            self.recommendations.pop_front();
        }
        let next = if raw > current {
            raw.min((current * 2).max(current + 4))
        } else {
            let held = self
                .recommendations
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(raw)
                .min(current);
            if held > raw {
                reason = Reason::HpaStabilized {
                    recommended: raw,
                    kept: held,
                };
            }
            held
        };
        self.current = next;
        reason
    }
}

impl Policy for Keda {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        let now = obs.now;
        let max = self
            .params
            .max
            .map_or(obs.max_replicas, |m| m.min(obs.max_replicas));
        if !self.started {
            self.started = true;
            self.next_poll = now;
        }
        if now >= self.next_poll {
            while self.next_poll <= now {
                self.next_poll += self.params.poll;
            }
            let active = obs.pending > self.params.activation;
            if active {
                self.last_active = Some(now);
            }
            if self.current == 0 && active {
                self.current = 1;
                self.recommendations.clear();
                self.next_sync = now + HPA_SYNC;
                self.last_reason = Reason::KedaActivate {
                    list_length: obs.pending,
                };
            } else if self.current > 0 && !active {
                let inactive = self.last_active.map_or(f64::INFINITY, |t| now - t);
                if inactive >= self.params.cooldown {
                    self.current = 0;
                    self.recommendations.clear();
                    self.last_reason = Reason::KedaCooldown {
                        inactive_s: inactive,
                    };
                }
            }
        }
        if self.current > 0 && now >= self.next_sync {
            while self.next_sync <= now {
                self.next_sync += HPA_SYNC;
            }
            self.last_reason = self.hpa_sync(obs, max);
        }
        Decision {
            desired: self.current.min(max),
            asleep: 0,
            reason: self.last_reason,
        }
    }

    fn on_arrival(&mut self, _obs: &Observation) -> Option<Decision> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::obs;

    fn run(k: &mut Keda, t: f64, pending: u64, in_flight: u64) -> u32 {
        k.decide(&obs(t, pending, in_flight, 0)).desired
    }

    #[test]
    fn activates_only_at_a_poll_and_above_the_threshold() {
        let mut k = Keda::new("keda", KedaParams::seed());
        assert_eq!(run(&mut k, 0.0, 0, 0), 0);
        // A job arrives at 1 s: nothing until the poll at 5 s.
        assert_eq!(run(&mut k, 1.0, 1, 0), 0);
        assert_eq!(run(&mut k, 4.0, 1, 0), 0);
        assert_eq!(run(&mut k, 5.0, 1, 0), 1);
        let mut k = Keda::new(
            "keda",
            KedaParams {
                activation: 3,
                ..KedaParams::seed()
            },
        );
        assert_eq!(run(&mut k, 0.0, 3, 0), 0, "length 3 is not > activation 3");
        assert_eq!(run(&mut k, 5.0, 4, 0), 1);
    }

    #[test]
    fn hpa_uses_ceil_total_over_target_with_tolerance_and_growth_limit() {
        let mut k = Keda::new("keda", KedaParams::default()); // listLength 5
        assert_eq!(run(&mut k, 0.0, 40, 0), 1);
        // First HPA sync at 15 s: ceil(40/5) = 8, but one sync may only go to max(2*1, 1+4) = 5.
        assert_eq!(run(&mut k, 14.0, 40, 0), 1);
        assert_eq!(run(&mut k, 15.0, 40, 0), 5);
        assert_eq!(run(&mut k, 30.0, 40, 0), 8);
        // 42 / (8*5) = 1.05: within tolerance, no change.
        assert_eq!(run(&mut k, 45.0, 42, 0), 8);
        assert!(matches!(k.last_reason, Reason::HpaTolerance { .. }));
        // 48 / 40 = 1.2: ceil(48/5) = 10.
        assert_eq!(run(&mut k, 60.0, 48, 0), 10);
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let mut k = Keda::new(
            "keda",
            KedaParams {
                cooldown: 10_000.0,
                ..KedaParams::default()
            },
        );
        run(&mut k, 0.0, 20, 0);
        assert_eq!(run(&mut k, 15.0, 20, 0), 4);
        // Load drops to 5 (1 replica) at 30 s: held at 4 until 300 s after the last 4.
        assert_eq!(run(&mut k, 30.0, 5, 0), 4);
        assert_eq!(run(&mut k, 300.0, 5, 0), 4);
        assert!(matches!(k.last_reason, Reason::HpaStabilized { .. }));
        assert_eq!(run(&mut k, 330.0, 5, 0), 1);
    }

    #[test]
    fn scales_to_zero_after_cooldown_even_with_jobs_running() {
        let mut k = Keda::new("keda", KedaParams::seed()); // poll 5, cooldown 30
        assert_eq!(run(&mut k, 0.0, 1, 0), 1);
        // The job starts: the list is empty, one job in flight — invisible to KEDA.
        assert_eq!(run(&mut k, 5.0, 0, 1), 1);
        assert_eq!(run(&mut k, 25.0, 0, 1), 1);
        assert_eq!(run(&mut k, 30.0, 0, 1), 0, "N -> 0 under a running job");
        assert!(matches!(k.last_reason, Reason::KedaCooldown { .. }));
    }

    #[test]
    fn n_to_zero_directly() {
        let mut k = Keda::new("keda", KedaParams::seed());
        run(&mut k, 0.0, 10, 0);
        run(&mut k, 15.0, 10, 0);
        run(&mut k, 30.0, 10, 0);
        assert!(k.current >= 5);
        let mut t = 35.0;
        let mut last = k.current;
        while t <= 70.0 {
            last = run(&mut k, t, 0, 0);
            t += 5.0;
        }
        assert_eq!(last, 0);
    }
}
