//! Fixed keep-alive: each level of capacity is kept for a fixed window after it was last
//! needed. With one replica at most, it is Ollama's `keep_alive` and llama-swap's `ttl`.

use super::window::SlidingMax;
use super::{Decision, Observation, Policy, Reason};

/// The fixed keep-alive policy.
#[derive(Debug, Clone)]
pub struct KeepAlive {
    name: String,
    window: f64,
    max: Option<u32>,
    levels: SlidingMax,
    idle_since: Option<f64>,
}

impl KeepAlive {
    /// Keeps capacity `window` seconds after it was last needed.
    pub fn new(name: impl Into<String>, window: f64) -> Self {
        KeepAlive {
            name: name.into(),
            window,
            max: None,
            levels: SlidingMax::default(),
            idle_since: None,
        }
    }

    /// At most `max` replicas (one per model, as Ollama and llama-swap run).
    pub fn at_most(mut self, max: u32) -> Self {
        self.max = Some(max);
        self
    }
}

impl Policy for KeepAlive {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        let need = obs
            .slots_needed()
            .max(obs.busy)
            .min(obs.max_replicas)
            .min(self.max.unwrap_or(u32::MAX).max(obs.busy));
        self.levels.push(obs.now, need);
        let kept = self.levels.max_since(obs.now - self.window);
        if need > 0 {
            self.idle_since = None;
            let reason = Reason::Backlog {
                work: obs.work(),
                per_replica: obs.concurrency,
            };
            return Decision {
                desired: kept.max(need),
                asleep: 0,
                reason,
            };
        }
        let since = *self.idle_since.get_or_insert(obs.now);
        let idle_s = obs.now - since;
        let reason = if kept > 0 {
            Reason::KeepAlive {
                idle_s,
                window_s: self.window,
            }
        } else if obs.replicas() > 0 {
            Reason::ScaleToZero {
                idle_s,
                window_s: self.window,
            }
        } else {
            Reason::Idle
        };
        Decision {
            desired: kept,
            asleep: 0,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::obs;

    #[test]
    fn keeps_each_level_for_the_window() {
        let mut k = KeepAlive::new("keepalive:10m", 600.0);
        assert_eq!(k.on_arrival(&obs(0.0, 3, 0, 0)).unwrap().desired, 3);
        assert_eq!(k.decide(&obs(10.0, 0, 1, 3)).desired, 3);
        assert_eq!(k.decide(&obs(20.0, 0, 0, 3)).desired, 3);
        assert_eq!(k.decide(&obs(599.0, 0, 0, 3)).desired, 3);
        assert_eq!(
            k.decide(&obs(605.0, 0, 0, 3)).desired,
            1,
            "level 1 was needed until 10 s"
        );
        let d = k.decide(&obs(611.0, 0, 0, 1));
        assert_eq!(d.desired, 0);
        assert!(matches!(d.reason, Reason::ScaleToZero { .. }));
    }
}
