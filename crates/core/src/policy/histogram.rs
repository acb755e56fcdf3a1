//! The hybrid histogram policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020).
//!
//! Each pool keeps a histogram of its idle times (time from going idle to the next arrival)
//! in 1-minute bins over 4 hours. When the histogram is representative, the pool unloads
//! when it goes idle, pre-warms at the head (5th percentile, minus a 10 % margin) and stays
//! warm until the tail (99th percentile, plus a 10 % margin); with a zero head it simply
//! stays warm until the tail. When it is not (too few idle times, a flat histogram, or most
//! idle times beyond the range), it falls back to a fixed keep-alive. (The paper forecasts
//! out-of-range patterns with ARIMA; this emulation uses the fallback instead.)

use super::window::SlidingMax;
use super::{Decision, Observation, Policy, Reason};

/// Parameters of the hybrid histogram policy.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramParams {
    /// Bin width, seconds (paper: 1 minute).
    pub bin: f64,
    /// Histogram range, seconds (paper: 4 hours).
    pub range: f64,
    /// Pre-warm percentile (paper: 5).
    pub head_percentile: f64,
    /// Keep-alive percentile (paper: 99).
    pub tail_percentile: f64,
    /// Safety margin on both windows (paper: 10 %).
    pub margin: f64,
    /// Keep-alive used while the histogram is not representative, seconds.
    pub fallback_keepalive: f64,
    /// Idle times needed before the histogram is trusted.
    pub min_samples: u32,
    /// Coefficient of variation of the bin counts needed to trust the histogram.
    pub min_cv: f64,
}

impl Default for HistogramParams {
    fn default() -> Self {
        HistogramParams {
            bin: 60.0,
            range: 4.0 * 3600.0,
            head_percentile: 5.0,
            tail_percentile: 99.0,
            margin: 0.1,
            fallback_keepalive: 600.0,
            min_samples: 5,
            min_cv: 2.0,
        }
    }
}

/// Windows derived from a histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Windows {
    /// Idle time at which to pre-warm (0: stay warm from the start).
    pub prewarm: f64,
    /// Idle time after which to unload.
    pub keepalive: f64,
}

/// The hybrid histogram policy.
#[derive(Debug, Clone)]
pub struct Histogram {
    name: String,
    params: HistogramParams,
    bins: Vec<u32>,
    in_range: u32,
    out_of_range: u32,
    idle_since: Option<f64>,
    levels: SlidingMax,
    /// `windows()` cached until the next idle time is recorded.
    cached: Option<Option<Windows>>,
}

impl Histogram {
    /// A histogram policy with the given parameters.
    pub fn new(name: impl Into<String>, params: HistogramParams) -> Self {
        let n = (params.range / params.bin).ceil() as usize;
        Histogram {
            name: name.into(),
            bins: vec![0; n.max(1)],
            params,
            in_range: 0,
            out_of_range: 0,
            idle_since: None,
            levels: SlidingMax::default(),
            cached: None,
        }
    }

    /// Adds one observed idle time, seconds.
    pub fn record_idle(&mut self, idle: f64) {
        self.cached = None;
        let i = (idle / self.params.bin).floor() as usize;
        match self.bins.get_mut(i) {
            Some(b) => {
                *b += 1;
                self.in_range += 1;
            }
            None => self.out_of_range += 1,
        }
    }

    /// The pre-warm and keep-alive windows, or `None` when the histogram is not
    /// representative (the fixed fallback applies).
    pub fn windows(&self) -> Option<Windows> {
        let p = &self.params;
        let total = self.in_range + self.out_of_range;
        if total < p.min_samples || self.out_of_range * 2 > total {
            return None;
        }
        let n = self.bins.len() as f64;
        let mean = self.in_range as f64 / n;
        let var = self
            .bins
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        if mean <= 0.0 || var.sqrt() / mean < p.min_cv {
            return None;
        }
        let percentile_bin = |pct: f64| {
            let want = (pct / 100.0 * self.in_range as f64).ceil().max(1.0) as u32;
            let mut seen = 0;
            for (i, &c) in self.bins.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return i;
                }
            }
            self.bins.len() - 1
        };
        let head = percentile_bin(p.head_percentile) as f64 * p.bin;
        let tail = (percentile_bin(p.tail_percentile) + 1) as f64 * p.bin;
        Some(Windows {
            prewarm: head * (1.0 - p.margin),
            keepalive: tail * (1.0 + p.margin),
        })
    }
}

impl Policy for Histogram {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(&mut self, obs: &Observation) -> Decision {
        let now = obs.now;
        let need = obs.slots_needed().max(obs.busy).min(obs.max_replicas);
        if need > 0 {
            if let Some(since) = self.idle_since.take() {
                self.record_idle(now - since);
            }
            self.levels.push(now, need);
        }
        let windows = match self.cached {
            Some(w) => w,
            None => {
                let w = self.windows();
                self.cached = Some(w);
                w
            }
        };
        let keep = windows.map_or(self.params.fallback_keepalive, |w| w.keepalive);
        let kept = self.levels.max_since(now - keep);
        if need > 0 {
            return Decision {
                desired: need.max(kept),
                asleep: 0,
                reason: Reason::Backlog {
                    work: obs.work(),
                    per_replica: obs.concurrency,
                },
            };
        }
        let since = *self.idle_since.get_or_insert(now);
        let idle_s = now - since;
        let (warm, reason) = match windows {
            Some(w) if w.prewarm > 0.0 => {
                let warm = idle_s >= w.prewarm && idle_s < w.keepalive;
                let reason = if warm {
                    Reason::Prewarm {
                        idle_s,
                        from_s: w.prewarm,
                    }
                } else {
                    Reason::ScaleToZero {
                        idle_s,
                        window_s: w.keepalive,
                    }
                };
                (warm, reason)
            }
            _ => {
                let warm = idle_s < keep;
                let reason = if warm {
                    Reason::KeepAlive {
                        idle_s,
                        window_s: keep,
                    }
                } else {
                    Reason::ScaleToZero {
                        idle_s,
                        window_s: keep,
                    }
                };
                (warm, reason)
            }
        };
        let prewarming = windows.is_some_and(|w| w.prewarm > 0.0);
        let desired = match (warm, prewarming) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => kept.max(1),
        }
        .min(obs.max_replicas);
        Decision::warm(desired, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::obs;

    #[test]
    fn windows_come_from_the_histogram_percentiles() {
        let mut h = Histogram::new("histogram", HistogramParams::default());
        assert_eq!(h.windows(), None, "no samples: fallback");
        // Idle times of 10 to 11 minutes, like a job every ~10 minutes.
        for i in 0..100 {
            h.record_idle(600.0 + (i % 60) as f64);
        }
        let w = h.windows().expect("a single peak is representative");
        // 5th and 99th percentiles both fall in the 10-11 min bin.
        assert!((w.prewarm - 600.0 * 0.9).abs() < 1e-9, "{w:?}");
        assert!((w.keepalive - 660.0 * 1.1).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn flat_or_out_of_range_histograms_fall_back() {
        let mut h = Histogram::new("histogram", HistogramParams::default());
        for i in 0..240 {
            h.record_idle(i as f64 * 60.0 + 1.0);
        }
        assert_eq!(h.windows(), None, "flat: CV 0");
        let mut h = Histogram::new("histogram", HistogramParams::default());
        for _ in 0..10 {
            h.record_idle(5.0 * 3600.0);
        }
        assert_eq!(h.windows(), None, "out of range");
    }

    #[test]
    fn unloads_then_prewarms_then_unloads() {
        let mut h = Histogram::new("histogram", HistogramParams::default());
        for i in 0..100 {
            h.record_idle(600.0 + (i % 60) as f64);
        }
        assert_eq!(h.decide(&obs(0.0, 0, 1, 1)).desired, 1);
        // Idle from 10 s.
        assert_eq!(h.decide(&obs(10.0, 0, 0, 1)).desired, 0, "unload at once");
        assert_eq!(h.decide(&obs(10.0 + 539.0, 0, 0, 0)).desired, 0);
        let d = h.decide(&obs(10.0 + 541.0, 0, 0, 0));
        assert_eq!(d.desired, 1, "pre-warmed at 540 s");
        assert!(matches!(d.reason, Reason::Prewarm { .. }));
        assert_eq!(
            h.decide(&obs(10.0 + 727.0, 0, 0, 1)).desired,
            0,
            "past 726 s"
        );
    }
}
