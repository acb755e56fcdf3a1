//! Simulator speed: every policy on the 19,366-job conversation trace (target: under 2 s
//! for all of them together), and a day of 1,000 pools with about 10 million arrivals in
//! the Azure Functions per-minute format (target: under 60 s per policy).
//! Pools: GREENSCALE_BENCH_POOLS (default 1000); arrivals: GREENSCALE_BENCH_ARRIVALS
//! (default 10000000).

use std::fmt::Write;
use std::time::Instant;

use greenscale_core::policy::{POLICY_NAMES, Spec};
use greenscale_core::sim::{self, Format, ServiceModel, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A day of per-minute counts: heavy-tailed rates (a few busy pools, many quiet ones),
/// each with a daily cycle, as in the Azure Functions 2019 data set.
fn functions_day(pools: usize, arrivals: usize) -> String {
    let mut rng = StdRng::seed_from_u64(42);
    let weights: Vec<f64> = (0..pools)
        .map(|i| 1.0 / ((i + 1) as f64).powf(0.9))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut text = String::from("HashFunction,HashApp,HashOwner");
    for m in 1..=1440 {
        let _ = write!(text, ",minute_{m}");
    }
    text.push('\n');
    for (i, w) in weights.iter().enumerate() {
        let per_minute = arrivals as f64 * w / total / 1440.0;
        let phase = rng.random_range(0.0..1440.0);
        let _ = write!(text, "f{i},app{},owner", i / 3);
        for m in 0..1440 {
            let cycle = 1.0 + 0.8 * ((m as f64 - phase) / 1440.0 * std::f64::consts::TAU).cos();
            let mean = per_minute * cycle;
            let count = (mean + rng.random_range(0.0..1.0)).floor() as u64;
            let _ = write!(text, ",{count}");
        }
        text.push('\n');
    }
    text
}

fn main() {
    let cfg = SimConfig::default();
    let conv_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/traces/AzureLLMInferenceTrace_conv.csv"
    );
    let text = std::fs::read_to_string(conv_path).expect("the shared conversation trace");
    let trace = sim::trace::parse(&text, Format::Auto, &ServiceModel::default()).unwrap();
    let started = Instant::now();
    let oracle = sim::oracle(&trace, &cfg);
    for name in POLICY_NAMES {
        sim::simulate(&trace, &Spec::parse(name).unwrap(), &cfg, oracle);
    }
    let conv_s = started.elapsed().as_secs_f64();
    println!("simulator speed");
    println!(
        "  all {} policies on the {}-job conversation trace: {conv_s:.3} s (target < 2 s: {})",
        POLICY_NAMES.len(),
        trace.jobs(),
        if conv_s < 2.0 { "PASS" } else { "MISS" }
    );

    let pools = env_or("GREENSCALE_BENCH_POOLS", 1000);
    let arrivals = env_or("GREENSCALE_BENCH_ARRIVALS", 10_000_000);
    let csv = functions_day(pools, arrivals);
    let started = Instant::now();
    let day = sim::trace::parse(&csv, Format::Auto, &ServiceModel::default()).unwrap();
    let parse_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let oracle = sim::oracle(&day, &cfg);
    let oracle_s = started.elapsed().as_secs_f64();
    println!(
        "  day trace: {} pools, {} arrivals (parsed in {parse_s:.1} s, oracle in {oracle_s:.1} s)",
        day.pools.len(),
        day.jobs()
    );
    for name in POLICY_NAMES {
        let started = Instant::now();
        let (r, _) = sim::simulate(&day, &Spec::parse(name).unwrap(), &cfg, oracle);
        let s = started.elapsed().as_secs_f64();
        println!(
            "  {name:<13} {s:>6.1} s  (target < 60 s: {})  GPU-s {:.0} = {:.2}x oracle, cold-start waits {:.2} %, p95 wait {:.2} s",
            if s < 60.0 { "PASS" } else { "MISS" },
            r.gpu_seconds,
            r.oracle_ratio,
            r.cold_start_wait_pct,
            r.wait_p95
        );
    }
}
