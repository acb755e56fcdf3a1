//! Sliding windows over time used by several policies.

use std::collections::VecDeque;

/// The maximum of values recorded over the last `window` seconds.
#[derive(Debug, Clone, Default)]
pub struct SlidingMax {
    /// (time, value), values strictly decreasing from front to back.
    samples: VecDeque<(f64, u32)>,
}

impl SlidingMax {
    /// Records `value` at time `now`.
    pub fn push(&mut self, now: f64, value: u32) {
        while self.samples.back().is_some_and(|&(_, v)| v <= value) {
            self.samples.pop_back();
        }
        self.samples.push_back((now, value));
    }

    /// The largest value recorded at or after `since` (0 when none).
    pub fn max_since(&mut self, since: f64) -> u32 {
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| t < since && self.samples.len() > 1)
        {
            self.samples.pop_front();
        }
        match self.samples.front() {
            Some(&(t, v)) if t >= since => v,
            Some(_) => {
                self.samples.clear();
                0
            }
            None => 0,
        }
    }
}

/// The mean of samples taken over the last `window` seconds.
#[derive(Debug, Clone, Default)]
pub struct WindowAverage {
    samples: VecDeque<(f64, f64)>,
    sum: f64,
}

impl WindowAverage {
    /// Records a sample and drops those older than `window`.
    pub fn push(&mut self, now: f64, value: f64, window: f64) {
        self.samples.push_back((now, value));
        self.sum += value;
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| t <= now - window)
        {
            let (_, v) = self.samples.pop_front().expect("checked");
            self.sum -= v;
        }
        if self.samples.len() == 1 {
            self.sum = value; // reset accumulated rounding
        }
    }

    /// The mean of the samples in the window (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.samples.is_empty() {
            0.0
        } else {
            (self.sum / self.samples.len() as f64).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_max_forgets_old_peaks() {
        let mut m = SlidingMax::default();
        m.push(0.0, 5);
        m.push(1.0, 2);
        m.push(2.0, 3);
        assert_eq!(m.max_since(0.0), 5);
        assert_eq!(m.max_since(0.5), 3);
        assert_eq!(m.max_since(2.0), 3);
        assert_eq!(m.max_since(2.5), 0);
    }

    #[test]
    fn window_average() {
        let mut a = WindowAverage::default();
        for t in 0..10 {
            a.push(t as f64, t as f64, 4.0);
        }
        // samples 6, 7, 8, 9 remain
        assert!((a.mean() - 7.5).abs() < 1e-9);
    }
}
