//! Synthetic traces with known shapes, generated from a seed (same seed, same trace).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::trace::Job;

/// The synthetic shapes.
pub const SHAPES: &[&str] = &["poisson", "diurnal", "onoff", "cron", "burst"];

fn service(rng: &mut StdRng) -> f64 {
    rng.random_range(1.0..3.0)
}

fn exp(rng: &mut StdRng, rate: f64) -> f64 {
    -(1.0 - rng.random::<f64>()).ln() / rate
}

/// A day of many small pools in the Azure Functions format (per-minute counts, one row per
/// function): `pools` functions of four kinds in turn — busy in business hours (6 a
/// minute from 08:00 to 18:00, 0.3 otherwise), an hourly batch (40 a minute in the first
/// two minutes of each hour), rare (one every 20 minutes on average) and a gentle diurnal
/// wave (0 to 3 a minute) — each minute's count drawn from a Poisson law. It is what a
/// machine serving many models sees: most of them idle most of the time, and not all of
/// them fit at once.
pub fn functions_day(pools: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let minutes = 1440;
    let mut csv = String::from("HashOwner,HashApp,HashFunction,Trigger");
    for m in 1..=minutes {
        csv.push_str(&format!(",{m}"));
    }
    csv.push('\n');
    for p in 0..pools {
        csv.push_str(&format!("owner,app{p},function{p},http"));
        for m in 0..minutes {
            let hour = m as f64 / 60.0;
            let rate = match p % 4 {
                0 if (8.0..18.0).contains(&hour) => 6.0,
                0 => 0.3,
                1 if m % 60 < 2 => 40.0,
                1 => 0.0,
                2 => 0.05,
                _ => 1.5 * (1.0 + ((hour - 6.0) / 24.0 * std::f64::consts::TAU).sin()),
            };
            csv.push_str(&format!(",{}", poisson_count(&mut rng, rate)));
        }
        csv.push('\n');
    }
    csv
}

/// A Poisson-distributed count with mean `rate` (Knuth's method; `rate` is small here).
fn poisson_count(rng: &mut StdRng, rate: f64) -> u32 {
    let limit = (-rate).exp();
    let mut product = 1.0;
    let mut count = 0;
    loop {
        product *= rng.random::<f64>();
        if product < limit {
            return count;
        }
        count += 1;
    }
}

/// Poisson arrivals at `rate` per second for `duration` seconds.
pub fn poisson(rate: f64, duration: f64, seed: u64) -> Vec<Job> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    let mut jobs = Vec::new();
    loop {
        t += exp(&mut rng, rate);
        if t >= duration {
            return jobs;
        }
        let s = service(&mut rng);
        jobs.push(Job {
            arrival: t,
            service: s,
            deadline: None,
        });
    }
}

/// A day-long sinusoid: `peak` per second at midday, nothing at midnight (thinning a
/// Poisson process at the peak rate).
pub fn diurnal(peak: f64, seed: u64) -> Vec<Job> {
    let day = 86_400.0;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    let mut jobs = Vec::new();
    loop {
        t += exp(&mut rng, peak);
        if t >= day {
            return jobs;
        }
        let keep = 0.5 * (1.0 - (2.0 * std::f64::consts::PI * t / day).cos());
        if rng.random::<f64>() < keep {
            let s = service(&mut rng);
            jobs.push(Job {
                arrival: t,
                service: s,
                deadline: None,
            });
        }
    }
}

/// On/off: Poisson at `rate` for `on` seconds, then silence for `off`, `cycles` times.
pub fn on_off(rate: f64, on: f64, off: f64, cycles: u32, seed: u64) -> Vec<Job> {
    let mut jobs = Vec::new();
    for c in 0..cycles {
        let start = c as f64 * (on + off);
        for j in poisson(rate, on, seed.wrapping_add(c as u64)) {
            jobs.push(Job {
                arrival: start + j.arrival,
                service: j.service,
                deadline: None,
            });
        }
    }
    jobs
}

/// Cron-like: every `period` seconds a batch of `batch` jobs within a few seconds.
pub fn periodic(period: f64, batch: u32, runs: u32, seed: u64) -> Vec<Job> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut jobs = Vec::new();
    for r in 0..runs {
        for _ in 0..batch {
            let arrival = r as f64 * period + rng.random_range(0.0..3.0);
            let s = service(&mut rng);
            jobs.push(Job {
                arrival,
                service: s,
                deadline: None,
            });
        }
    }
    jobs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    jobs
}

/// One job, then `silence` seconds of nothing, then `size` jobs within ten seconds.
pub fn burst_after_silence(silence: f64, size: u32, seed: u64) -> Vec<Job> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut jobs = vec![Job {
        arrival: 0.0,
        service: 2.0,
        deadline: None,
    }];
    let mut burst: Vec<Job> = (0..size)
        .map(|_| Job {
            arrival: silence + rng.random_range(0.0..10.0),
            service: service(&mut rng),
            deadline: None,
        })
        .collect();
    burst.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    jobs.extend(burst);
    jobs
}

/// A named shape with the parameters used in the docs and benchmarks.
pub fn by_name(name: &str, seed: u64) -> Option<Vec<Job>> {
    Some(match name {
        "poisson" => poisson(2.0, 3600.0, seed),
        "diurnal" => diurnal(1.0, seed),
        "onoff" => on_off(5.0, 120.0, 480.0, 6, seed),
        "cron" => periodic(600.0, 20, 12, seed),
        "burst" => burst_after_silence(3600.0, 200, seed),
        _ => return None,
    })
}

/// `jobs` with a batch of `size` requests added `at` seconds after the trace's first
/// arrival and every day after, while the trace lasts; each request has the deadline
/// `window` after its arrival when `defer` (otherwise the batch's requests are ordinary
/// jobs, run at once). Their service times are the trace's own, in turn, so the batch
/// looks like the traffic it joins. The result is sorted by arrival.
pub fn with_daily_batch(jobs: &[Job], size: u32, at: f64, window: f64, defer: bool) -> Vec<Job> {
    const DAY: f64 = 86_400.0;
    let mut out = jobs.to_vec();
    let (Some(first), Some(last)) = (jobs.first(), jobs.last()) else {
        return out;
    };
    let mut arrival = first.arrival + at;
    let mut k = 0;
    while arrival <= last.arrival {
        for _ in 0..size {
            out.push(Job {
                arrival,
                service: jobs[k % jobs.len()].service,
                deadline: defer.then_some(arrival + window),
            });
            k += 1;
        }
        arrival += DAY;
    }
    out.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_repeatable_and_sorted() {
        for name in SHAPES {
            let a = by_name(name, 7).unwrap();
            assert_eq!(a, by_name(name, 7).unwrap(), "{name}");
            assert_ne!(a, by_name(name, 8).unwrap(), "{name}");
            assert!(a.windows(2).all(|w| w[0].arrival <= w[1].arrival), "{name}");
            assert!(!a.is_empty());
        }
    }

    #[test]
    fn rates_are_roughly_right() {
        let p = poisson(2.0, 3600.0, 1);
        assert!((6500..7900).contains(&p.len()), "{}", p.len());
        let d = diurnal(1.0, 1);
        assert!((38_000..48_000).contains(&d.len()), "{}", d.len());
        let night = d.iter().filter(|j| j.arrival < 3600.0).count();
        let noon = d
            .iter()
            .filter(|j| (41_400.0..45_000.0).contains(&j.arrival))
            .count();
        assert!(noon > 20 * night.max(1), "noon {noon} night {night}");
    }
}
