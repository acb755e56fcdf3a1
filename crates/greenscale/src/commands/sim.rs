//! `greenscale sim`: replay a trace against scaling policies.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use greenscale_core::policy::Spec;
use greenscale_core::sim::{
    self, Pool, Report, ServiceModel, SharedBudget, SimConfig, SleepConfig, Trace, plot, synthetic,
};

use crate::cli::SimArgs;

/// Loads the trace the flags name.
fn load(args: &SimArgs) -> anyhow::Result<(String, Trace)> {
    if let Some(shape) = &args.synthetic {
        let jobs = synthetic::by_name(shape, args.seed).with_context(|| {
            format!(
                "unknown synthetic shape {shape:?} (one of: {})",
                synthetic::SHAPES.join(", ")
            )
        })?;
        let trace = Trace {
            pools: vec![Pool {
                name: shape.clone(),
                jobs,
            }],
        };
        return Ok((format!("synthetic:{shape} (seed {})", args.seed), trace));
    }
    let path = args
        .trace
        .as_ref()
        .expect("clap requires --trace or --synthetic");
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read trace {}", path.display()))?;
    let model = ServiceModel {
        prefill_tps: args.prefill_tps,
        decode_tps: args.decode_tps,
        default_service: args.service_time.as_secs_f64(),
        seed: args.seed,
    };
    let trace = sim::trace::parse(&text, args.format, &model)
        .with_context(|| format!("trace {}", path.display()))?;
    // The file's name, not the folder it happens to be in, names the trace.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string());
    Ok((name, trace))
}

/// Runs the simulation and prints the table (or JSON).
pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    if args.prefill_tps <= 0.0 || args.decode_tps <= 0.0 {
        bail!("--prefill-tps and --decode-tps must be positive");
    }
    if args.tick.is_zero() {
        bail!("--tick must be positive");
    }
    if !(0.0..=1.0).contains(&args.batch_share) {
        bail!("--batch-share must be a share of the jobs, from 0 to 1");
    }
    if !(0.0..=1.0).contains(&args.sleep_cost) {
        bail!("--sleep-cost must be a share of a warm replica's cost, from 0 to 1");
    }
    let specs = Spec::parse_list(&args.policy)?;
    let (name, trace) = load(&args)?;
    let cfg = SimConfig {
        cold_start: args.cold_start.as_secs_f64(),
        concurrency: args.concurrency,
        tick: args.tick.as_secs_f64(),
        max_replicas: args.max_replicas,
        sleep: args.wake.map(|w| SleepConfig {
            wake: w.as_secs_f64(),
            rate: args.sleep_cost,
        }),
        shared: args.gpu_slots.map(|slots| SharedBudget {
            slots,
            turn: args.gpu_turn.as_secs_f64(),
        }),
        batch_share: args.batch_share,
        ..SimConfig::default()
    };
    if args.batch_window.is_zero() {
        bail!("--batch-window must be positive");
    }
    let with_batch = |defer: bool| Trace {
        pools: trace
            .pools
            .iter()
            .map(|p| Pool {
                name: p.name.clone(),
                jobs: args.daily_batch.map_or_else(
                    || p.jobs.clone(),
                    |n| {
                        synthetic::with_daily_batch(
                            &p.jobs,
                            n,
                            args.batch_at.as_secs_f64(),
                            args.batch_window.as_secs_f64(),
                            defer,
                        )
                    },
                ),
            })
            .collect(),
    };
    let (trace, at_once) = (with_batch(true), with_batch(false));
    let started = Instant::now();
    let oracle = sim::oracle(&trace, &cfg);
    let mut rows: Vec<Report> = Vec::new();
    let mut baselines: Vec<Report> = Vec::new();
    let mut series = Vec::new();
    for spec in &specs {
        let (report, timeline) = sim::simulate(&trace, spec, &cfg, oracle);
        series.push((spec.text().to_string(), timeline));
        rows.push(report);
        if args.daily_batch.is_some() {
            let (mut report, _) = sim::simulate(&at_once, spec, &cfg, oracle);
            report.policy = format!("{} [batch at once]", spec.text());
            baselines.push(report);
        }
    }
    let comparisons: Vec<(Report, Report)> = rows.iter().cloned().zip(baselines).collect();
    if !comparisons.is_empty() {
        rows.extend(comparisons.iter().map(|(_, b)| b.clone()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let span = trace
        .pools
        .iter()
        .flat_map(|p| p.jobs.last().map(|j| j.arrival))
        .fold(0.0, f64::max);
    if let Some(path) = &args.plot {
        if trace.pools.len() > 1 {
            bail!(
                "--plot draws one pool; this trace has {}",
                trace.pools.len()
            );
        }
        let title = format!("{name}: replicas and queue depth");
        std::fs::write(path, plot::timeline_svg(&title, &series, span))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.frontier {
        let mut points: Vec<(String, f64, f64, bool)> = rows
            .iter()
            .map(|r| {
                let ours = r.policy == "greenscale" || r.policy.starts_with("greenscale:");
                (
                    r.policy.clone(),
                    r.gpu_seconds,
                    r.cold_start_waits as f64,
                    ours,
                )
            })
            .collect();
        points.push(("oracle".into(), oracle, 0.0, false));
        let title = format!("{name}: GPU-seconds against cold-start waits");
        let svg = plot::scatter_svg(
            &title,
            "GPU-seconds",
            "jobs that waited on a cold start",
            &points,
        );
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "trace {name}: {} jobs in {} pool(s) over {:.0} s; cold start {:.0} s, concurrency {}, max {} replicas, tick {} s",
        trace.jobs(),
        trace.pools.len(),
        span,
        cfg.cold_start,
        cfg.concurrency,
        cfg.max_replicas,
        cfg.tick
    );
    if let Some(b) = cfg.shared {
        say!(
            "shared GPUs: {} replicas at once over all pools; GreenScale drains a busy one after {:.0} s of waiting",
            b.slots,
            b.turn
        );
    }
    if let Some(t) = cfg.sleep {
        say!(
            "sleep tier: wakes in {:.1} s, a sleeper costs {:.0}% of a warm replica (GPU-s counts it so)",
            t.wake,
            t.rate * 100.0
        );
    }
    say!(
        "{:<28} {:>11} {:>8} {:>19} {:>9} {:>9} {:>9} {:>11} {:>5} {:>9}",
        "policy",
        "GPU-s",
        "x oracle",
        "cold-start waits",
        "wait p50",
        "wait p95",
        "wait p99",
        "interrupted",
        "peak",
        "scale-ups"
    );
    for r in &rows {
        say!(
            "{:<28} {:>11.0} {:>8.2} {:>9} ({:>6.2}%) {:>8.2}s {:>8.2}s {:>8.2}s {:>11} {:>5} {:>9}",
            r.policy,
            r.gpu_seconds,
            r.oracle_ratio,
            r.cold_start_waits,
            r.cold_start_wait_pct,
            r.wait_p50,
            r.wait_p95,
            r.wait_p99,
            r.interrupted,
            r.peak_replicas,
            r.scale_ups
        );
        if cfg.sleep.is_some() || cfg.shared.is_some() || r.evictions > 0 {
            say!(
                "{:<28} {} cold starts, {} sleeps, {} wakes ({} jobs waited on one), {} evictions",
                "",
                r.cold_starts,
                r.sleeps,
                r.wakes,
                r.wake_waits,
                r.evictions
            );
        }
        if r.batch_jobs > 0 {
            say!(
                "{:<28} interactive wait p95 {:.2}s; {} batch jobs: wait p50 {:.1}s, p95 {:.1}s, longest {:.1}s",
                "",
                r.interactive_wait_p95,
                r.batch_jobs,
                r.batch_wait_p50,
                r.batch_wait_p95,
                r.batch_wait_max
            );
        }
        if r.unserved > 0 {
            say!(
                "{:<28} ({} jobs never served before the run ended)",
                "",
                r.unserved
            );
        }
    }
    say!(
        "{:<28} {:>11.0} {:>8.2} {:>9} ({:>6.2}%) {:>8.2}s {:>8.2}s {:>8.2}s {:>11} {:>5} {:>9}",
        "oracle",
        oracle,
        1.0,
        0,
        0.0,
        0.0,
        0.0,
        0.0,
        0,
        "-",
        "-"
    );
    if let Some(n) = args.daily_batch {
        say!(
            "daily batch of {n} requests, window {:.0} s: deferred (runs on warm capacity, wakes a pool only when its window or its size calls for it) against run at once",
            args.batch_window.as_secs_f64()
        );
        for (d, b) in &comparisons {
            say!(
                "  {:<26} GPU-s {:.0} vs {:.0} ({:.2}x), cold starts {} vs {}, batch jobs started late {} of {}",
                d.policy,
                d.gpu_seconds,
                b.gpu_seconds,
                d.gpu_seconds / b.gpu_seconds.max(1e-9),
                d.cold_starts,
                b.cold_starts,
                d.batch_late,
                d.batch_jobs
            );
        }
        say!(
            "  (the oracle starts every job at its arrival, the batch's too: it is no lower bound for work that may wait)"
        );
    }
    say!("simulated in {elapsed:.2} s");
    Ok(ExitCode::SUCCESS)
}
