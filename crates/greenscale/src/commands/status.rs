//! `greenscale status`: queue counts and pools, or one job's record.

use std::process::ExitCode;

use greenscale_core::format_bytes;
use greenscale_core::status::{GpuSource, GpuStatus, PoolStatus, ReplicaState};

use crate::cli::StatusArgs;
use crate::client::JobsClient;
use crate::commands::shared::{ago, failing_pool, now_ms, warn_if_up_runs_here};

/// Runs `greenscale status`.
pub(super) async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let queue = JobsClient::connect(&args.queue, &args.server).await?;
    if args.server.url.is_none() {
        warn_if_up_runs_here(&args.queue, "this is read from").await;
    }
    let Some(id) = &args.job_id else {
        let s = queue.stats().await?;
        let pools = queue.pools().await?;
        let gpus = queue.gpus().await?;
        if args.json {
            let out = serde_json::json!({"queue": s, "pools": pools, "gpus": gpus});
            say!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            match &args.server.url {
                Some(url) => say!("server       {url}"),
                None => say!("queue        {}", args.queue.list),
            }
            say!("pending      {}", s.pending);
            say!("in-flight    {}", s.in_flight);
            say!("delayed      {}", s.delayed);
            say!("dead-letter  {}", s.dead_letter);
            say!("live workers {}", s.live_workers);
            for p in &pools {
                print_pool(p);
            }
            for g in &gpus {
                print_gpu(g);
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let Some(rec) = queue.job(id).await? else {
        eprintln!(
            "no job with id {id:?} (an entry pushed straight onto the list gets its record when a worker takes it)"
        );
        return Ok(ExitCode::FAILURE);
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    say!("job        {}", rec.id);
    say!("status     {}", rec.status);
    say!("attempts   {}", rec.attempts);
    say!("enqueued   {}", ago(rec.enqueued_at_ms, now));
    say!(
        "waited     {}",
        between(rec.enqueued_at_ms, rec.started_at_ms)
    );
    say!(
        "ran        {}",
        between(rec.started_at_ms, rec.finished_at_ms)
    );
    say!("worker     {}", rec.worker_id.as_deref().unwrap_or("-"));
    if let Some(u) = rec.usage {
        say!(
            "tokens     {} prompt, {} completion",
            u.prompt_tokens,
            u.completion_tokens
        );
    }
    if let Some(t) = rec.ttft_ms {
        say!("first tok  {t} ms");
    }
    if let Some(kind) = &rec.error_kind {
        say!(
            "error      {kind}: {}",
            rec.error_message.as_deref().unwrap_or("")
        );
    }
    if let Some(result) = &rec.result {
        say!("answer     {result}");
    }
    Ok(ExitCode::SUCCESS)
}

fn between(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.3} s", b.saturating_sub(a) as f64 / 1000.0),
        _ => "-".into(),
    }
}

/// Prints one GPU of `greenscale up` and what is placed on it (as served at /v1/gpus).
fn print_gpu(g: &GpuStatus) {
    say!();
    say!(
        "gpu {} ({}, {}{}): {} free",
        g.index,
        g.name,
        format_bytes(g.memory_bytes),
        if g.source == GpuSource::Declared {
            ", declared"
        } else {
            ""
        },
        format_bytes(g.free_bytes)
    );
    for h in &g.held {
        say!(
            "  {:<20} {:<10} {}",
            h.replica,
            format!("{:?}", h.state).to_lowercase(),
            format_bytes(h.memory_bytes)
        );
    }
}

/// Prints one pool of `greenscale up` (as served at /v1/pools).
fn print_pool(p: &PoolStatus) {
    let count = |state: ReplicaState| p.replicas.iter().filter(|r| r.state == state).count();
    say!();
    say!(
        "pool {}{}  ({}, policy {}, {}..{} replicas × {})",
        p.name,
        if p.demo { " [demo model]" } else { "" },
        p.kind.as_str(),
        p.policy,
        p.min_replicas,
        p.max_replicas,
        p.concurrency,
    );
    say!(
        "  replicas     {} starting, {} ready, {} draining{}",
        count(ReplicaState::Starting) + count(ReplicaState::Waking),
        count(ReplicaState::Ready),
        count(ReplicaState::Draining),
        match &p.sleep_engine {
            Some(_) => format!(", {} asleep", count(ReplicaState::Asleep)),
            None => String::new(),
        }
    );
    if let Some(engine) = &p.sleep_engine {
        let host: Option<u64> = p.replicas.iter().filter_map(|r| r.asleep_host_bytes).max();
        say!(
            "  sleep        {engine}: {} sleeps, {} wakes{}{}",
            p.sleeps,
            p.wakes.count,
            match p.wakes.p50_s {
                Some(w) => format!(" (p50 {w:.2} s)"),
                None => String::new(),
            },
            match host {
                Some(b) => format!(
                    "; a sleeper holds {} of host memory",
                    greenscale_core::format_bytes(b)
                ),
                None => String::new(),
            }
        );
    }
    let cold = &p.cold_starts;
    match cold.p50_s {
        Some(p50) => say!(
            "  cold starts  {} (p50 {:.2} s, last {:.2} s)",
            cold.count,
            p50,
            cold.last_s.unwrap_or(0.0)
        ),
        None => say!("  cold starts  none yet"),
    }
    say!(
        "  used         {:.1} replica-hours",
        p.replica_seconds / 3600.0
    );
    if let Some(d) = &p.last_decision {
        say!(
            "  decision     {} → {} replicas, {}: {}",
            d.current,
            d.desired,
            ago(Some(d.at_ms), now_ms()),
            d.reason
        );
    }
    if let Some(e) = &p.energy {
        let co2 = |kwh: f64| match e.grid_g_per_kwh {
            Some(g) => format!(", {:.1} gCO2e", kwh * g),
            None => String::new(),
        };
        say!(
            "  energy       {:.4} kWh{} (always on: {:.4} kWh{}){}",
            e.kwh,
            co2(e.kwh),
            e.always_on_kwh,
            co2(e.always_on_kwh),
            if e.estimated {
                ", estimated from the GPUs' board power"
            } else {
                ", read from the GPUs' energy counters"
            }
        );
    }
    if p.evicted > 0 {
        say!(
            "  evicted      {} replica(s), to make room on the GPUs for other pools",
            p.evicted
        );
    }
    if let Some(since) = p.waiting_for_gpu_since_ms {
        say!(
            "  waiting      for GPU room, {}",
            ago(Some(since), now_ms())
        );
    }
    if let Some((_, line)) = failing_pool(std::slice::from_ref(p), None) {
        say!("  failing      {line}");
    } else if let Some(f) = &p.last_failure {
        say!("  last failure {f} (since recovered)");
    }
}
