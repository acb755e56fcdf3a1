//! Knative's KPA: concurrency averaged over a 60 s stable window and a 6 s panic window;
//! panic mode at 200 % of the target (no scale-down while panicking, for a stable window);
//! scale-down at most halving per decision; scale to zero after a stable window without
//! traffic plus a 30 s grace period. At zero, an arrival wakes the pool at once (the
//! activator's poke).

use super::window::WindowAverage;
use super::{Decision, Observation, Policy, Reason};

/// KPA parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct KnativeParams {
    /// Fraction of a replica's concurrency targeted (Knative default 70 %).
    pub target_utilization: f64,
    /// Stable window, seconds.
    pub stable_window: f64,
    /// Panic window, seconds.
    pub panic_window: f64,
    /// Panic when panic-window demand reaches this multiple of ready capacity.
    pub panic_threshold: f64,
    /// Scale-to-zero grace period, seconds.
    pub grace: f64,
}

impl Default for KnativeParams {
    fn default() -> Self {
        KnativeParams {
            target_utilization: 0.7,
            stable_window: 60.0,
            panic_window: 6.0,
            panic_threshold: 2.0,
            grace: 30.0,
        }
    }
}

/// The KPA emulation.
#[derive(Debug, Clone)]
pub struct Knative {
    name: String,
    params: KnativeParams,
    stable: WindowAverage,
    panic: WindowAverage,
    panic_until: Option<f64>,
    zero_since: Option<f64>,
    current: u32,
}

impl Knative {
    /// A KPA with the given parameters.
    pub fn new(name: impl Into<String>, params: KnativeParams) -> Self {
        Knative {
            name: name.into(),
            params,
            stable: WindowAverage::default(),
            panic: WindowAverage::default(),
            panic_until: None,
            zero_since: None,
            current: 0,
        }
    }
}

impl Policy for Knative {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        let p = &self.params;
        let now = obs.now;
        let concurrency = obs.work() as f64;
        self.stable.push(now, concurrency, p.stable_window);
        self.panic.push(now, concurrency, p.panic_window);
        let target = (obs.concurrency.max(1) as f64 * p.target_utilization).max(0.01);
        let stable_avg = self.stable.mean();
        let panic_avg = self.panic.mean();
        let stable_want = (stable_avg / target - 1e-9).ceil().max(0.0) as u32;
        let panic_want = (panic_avg / target - 1e-9).ceil().max(0.0) as u32;
        let ready = obs.ready;
        if ready > 0 && panic_want as f64 / ready as f64 >= p.panic_threshold {
            self.panic_until = Some(now + p.stable_window);
        }
        let panicking = self.panic_until.is_some_and(|t| now < t);
        let (mut desired, mut reason) = if panicking {
            (
                panic_want.max(self.current),
                Reason::KnativePanic {
                    average: panic_avg,
                    target,
                },
            )
        } else {
            self.panic_until = None;
            (
                stable_want,
                Reason::KnativeStable {
                    average: stable_avg,
                    target,
                },
            )
        };
        // Scale-down rate: at most halve per decision (scale to zero is its own step).
        if desired > 0 {
            desired = desired.max(self.current.div_ceil(2));
        }
        if desired == 0 && self.current > 0 {
            let since = *self.zero_since.get_or_insert(now);
            if now - since < p.grace {
                desired = 1;
                reason = Reason::KnativeGrace {
                    idle_s: now - since,
                };
            }
        } else if desired > 0 {
            self.zero_since = None;
        }
        if obs.work() > 0 {
            desired = desired.max(1);
        }
        self.current = desired.min(obs.max_replicas);
        Decision {
            desired: self.current,
            asleep: 0,
            reason,
        }
    }

    fn on_arrival(&mut self, obs: &Observation) -> Option<Decision> {
        if obs.replicas() > 0 {
            return None;
        }
        self.current = self.current.max(1);
        self.zero_since = None;
        Some(Decision {
            desired: self.current,
            asleep: 0,
            reason: Reason::Backlog {
                work: obs.work(),
                per_replica: obs.concurrency,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::obs;

    fn with_conc(mut o: Observation, c: u32) -> Observation {
        o.concurrency = c;
        o
    }

    #[test]
    fn stable_window_averages_and_panic_reacts_to_bursts() {
        let mut k = Knative::new("knative", KnativeParams::default());
        // Target per replica 10 * 0.7 = 7. Steady 7 concurrent -> 1 replica.
        let mut t = 0.0;
        while t < 60.0 {
            assert!(k.decide(&with_conc(obs(t, 0, 7, 1), 10)).desired <= 1);
            t += 1.0;
        }
        // A burst of 70: the 6 s panic window sees it within seconds (70/7 = 10 >= 2 * 1).
        let mut d = k.decide(&with_conc(obs(60.0, 63, 7, 1), 10));
        for s in 61..64 {
            d = k.decide(&with_conc(obs(s as f64, 63, 7, 1), 10));
        }
        assert!(matches!(d.reason, Reason::KnativePanic { .. }), "{d:?}");
        assert!(d.desired >= 5, "{d:?}");
        // In panic mode it never scales down, even when the burst is gone.
        let before = d.desired;
        let d = k.decide(&with_conc(obs(70.0, 0, 0, before), 10));
        assert!(d.desired >= before);
    }

    #[test]
    fn scales_to_zero_after_stable_window_and_grace() {
        let mut k = Knative::new("knative", KnativeParams::default());
        assert_eq!(k.on_arrival(&obs(0.0, 1, 0, 0)).unwrap().desired, 1);
        k.decide(&obs(1.0, 0, 1, 1));
        let mut last = 1;
        let mut zero_at = None;
        for s in 2..200 {
            last = k.decide(&obs(s as f64, 0, 0, last)).desired;
            if last == 0 && zero_at.is_none() {
                zero_at = Some(s);
            }
        }
        // No traffic after 1 s: the 60 s stable window empties at 61 s, then 30 s grace.
        let z = zero_at.expect("reaches zero");
        assert!((89..=93).contains(&z), "reached zero at {z}");
    }
}
