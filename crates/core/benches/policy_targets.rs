//! The scaling targets, checked on the two shared real traces and the synthetic shapes:
//! default `greenscale` against `keda-seed` and `keda-default` (Pareto dominance on
//! GPU-seconds, cold-start waits and p95 wait; zero interrupted jobs; GPU-seconds within 2x
//! of the oracle), and a sweep of `cold_cost` looking for a value that dominates
//! `keepalive:10m` and `histogram`. Prints markdown tables.

use greenscale_core::policy::Spec;
use greenscale_core::sim::{self, Format, Pool, Report, ServiceModel, SimConfig, Trace, synthetic};

const SWEEP: &[u32] = &[0, 15, 30, 60, 120, 240, 480, 960, 1920, 3840, 7680];

/// `a` dominates `b`: no worse on all three figures and better on one.
fn dominates(a: &Report, b: &Report) -> bool {
    let no_worse = a.gpu_seconds <= b.gpu_seconds
        && a.cold_start_waits <= b.cold_start_waits
        && a.wait_p95 <= b.wait_p95;
    let better = a.gpu_seconds < b.gpu_seconds
        || a.cold_start_waits < b.cold_start_waits
        || a.wait_p95 < b.wait_p95;
    no_worse && better
}

fn row(r: &Report) -> String {
    format!(
        "| {} | {:.0} | {:.2} | {} ({:.2} %) | {:.2} | {:.2} | {:.2} | {} | {} |",
        r.policy,
        r.gpu_seconds,
        r.oracle_ratio,
        r.cold_start_waits,
        r.cold_start_wait_pct,
        r.wait_p50,
        r.wait_p95,
        r.wait_p99,
        r.interrupted,
        r.peak_replicas
    )
}

fn main() {
    let cfg = SimConfig::default();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/traces");
    let mut traces: Vec<(String, Trace)> = Vec::new();
    for name in ["code", "conv"] {
        let path = format!("{dir}/AzureLLMInferenceTrace_{name}.csv");
        let text = std::fs::read_to_string(&path).expect("shared trace");
        let trace = sim::trace::parse(&text, Format::Auto, &ServiceModel::default()).unwrap();
        traces.push((format!("Azure LLM {name}"), trace));
    }
    for shape in synthetic::SHAPES {
        let jobs = synthetic::by_name(shape, 1).unwrap();
        traces.push((
            format!("synthetic {shape}"),
            Trace {
                pools: vec![Pool {
                    name: shape.to_string(),
                    jobs,
                }],
            },
        ));
    }
    let mut summary = Vec::new();
    for (name, trace) in &traces {
        let oracle = sim::oracle(trace, &cfg);
        let run = |spec: &str| sim::simulate(trace, &Spec::parse(spec).unwrap(), &cfg, oracle).0;
        let gs = run("greenscale");
        let baselines: Vec<Report> = [
            "keda-seed",
            "keda-default",
            "knative",
            "keepalive:10m",
            "histogram",
        ]
        .iter()
        .map(|s| run(s))
        .collect();
        println!(
            "\n### {name} ({} jobs; oracle {oracle:.0} GPU-s)\n",
            trace.jobs()
        );
        println!(
            "| policy | GPU-s | x oracle | cold-start waits | p50 s | p95 s | p99 s | interrupted | peak |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        println!("{}", row(&gs));
        for b in &baselines {
            println!("{}", row(b));
        }
        let keda_ok = dominates(&gs, &baselines[0]) && dominates(&gs, &baselines[1]);
        let oracle_ok = gs.oracle_ratio <= 2.0;
        let sweep: Vec<Report> = SWEEP
            .iter()
            .map(|c| run(&format!("greenscale:cold_cost={c}")))
            .collect();
        let beats = |target: &Report| {
            sweep
                .iter()
                .filter(|r| dominates(r, target))
                .map(|r| r.policy.trim_start_matches("greenscale:").to_string())
                .collect::<Vec<_>>()
        };
        let (ka, hi) = (beats(&baselines[3]), beats(&baselines[4]));
        println!("\ncold_cost sweep (frontier):\n");
        println!(
            "| policy | GPU-s | x oracle | cold-start waits | p50 s | p95 s | p99 s | interrupted | peak |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for r in &sweep {
            println!("{}", row(r));
        }
        println!();
        println!(
            "- default greenscale dominates keda-seed and keda-default: {}",
            if keda_ok { "yes" } else { "NO" }
        );
        println!("- interrupted jobs: {}", gs.interrupted);
        println!(
            "- GPU-seconds / oracle: {:.2} (target <= 2: {})",
            gs.oracle_ratio,
            if oracle_ok { "met" } else { "MISSED" }
        );
        println!(
            "- cold_cost values dominating keepalive:10m: {}",
            if ka.is_empty() {
                "none".into()
            } else {
                ka.join(", ")
            }
        );
        println!(
            "- cold_cost values dominating histogram: {}",
            if hi.is_empty() {
                "none".into()
            } else {
                hi.join(", ")
            }
        );
        summary.push((
            name.clone(),
            keda_ok,
            gs.interrupted == 0,
            gs.oracle_ratio,
            !ka.is_empty(),
            !hi.is_empty(),
        ));
    }
    println!("\n### Summary\n");
    println!(
        "| trace | dominates keda-seed and keda-default | no interruptions | GPU / oracle | some cold_cost dominates keepalive:10m | ... histogram |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, keda, intr, ratio, ka, hi) in summary {
        let yn = |b: bool| if b { "yes" } else { "no" };
        println!(
            "| {name} | {} | {} | {ratio:.2} | {} | {} |",
            yn(keda),
            yn(intr),
            yn(ka),
            yn(hi)
        );
    }
}
