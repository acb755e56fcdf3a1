//! `greenscale up`: the whole system on one machine — gateway, embedded queue (or Redis),
//! autoscaler and supervised model servers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use greenscale_core::status::GpuSource;
use greenscale_core::{Consumer, Queue, format_bytes};
use greenscale_gateway::{Route, Routes};
use greenscale_local::config::PoolsFile;
use greenscale_local::gpu::Gpus;
use greenscale_local::placement::GpuDevice;
use greenscale_local::{
    AutoscalerMetrics, GuardProgram, Pool, PoolBackend, PoolConfig, autoscaler, config,
};
use greenscale_queue::{RedisQueue, SqliteQueue};

use crate::cli::UpArgs;
use crate::commands::shared::{
    batch_config, bind, build_gateway, redacted, shutdown_signal, store_tenants,
};

/// The pools `up` runs (from the file, the single-pool flags, or the demo pool) and the
/// GPUs the file declares.
fn pools(args: &UpArgs) -> anyhow::Result<PoolsFile> {
    if let Some(path) = &args.config {
        return Ok(config::load(path)?);
    }
    Ok(PoolsFile {
        pools: single_pool(args)?,
        gpus: Vec::new(),
        gpu_turn: None,
        grid_intensity: None,
    })
}

/// The GPUs replicas are placed on: `--gpu` flags, else those the pools file declares,
/// else those the driver reports; `None` without any (no GPU limits). Refuses a pool whose
/// replica could not fit even on empty GPUs.
fn gpus(args: &UpArgs, file: &PoolsFile) -> anyhow::Result<Option<Arc<Gpus>>> {
    let (declared, pools) = (file.gpus.clone(), &file.pools);
    let mut meter = None;
    let devices = if !args.gpus.is_empty() {
        args.gpus
            .iter()
            .enumerate()
            .map(|(i, &memory)| GpuDevice {
                index: i as u32,
                name: "declared".into(),
                memory,
                source: GpuSource::Declared,
                power_w: None,
            })
            .collect()
    } else if !declared.is_empty() {
        declared
    } else if pools.iter().any(|p| p.gpu.is_some()) {
        let detected = greenscale_local::gpu::detect();
        meter = detected.meter;
        detected.devices
    } else {
        Vec::new()
    };
    if devices.is_empty() {
        if let Some(p) = pools.iter().find(|p| p.gpu.is_some()) {
            tracing::warn!(pool = %p.name, "the pool says what its replicas need of the GPUs, but no GPU was detected or declared (--gpu, [[gpu]]): no GPU limits");
        }
        return Ok(None);
    }
    for d in &devices {
        tracing::info!(gpu = d.index, name = %d.name, memory = %format_bytes(d.memory), source = ?d.source, "GPU");
    }
    let turn = args.gpu_turn.or(file.gpu_turn).unwrap_or(DEFAULT_GPU_TURN);
    if meter.is_some() {
        tracing::info!("GPU energy is read from the driver's energy counters");
    }
    let gpus = Gpus::new(devices, turn, file.grid_intensity, meter);
    for p in pools {
        if let Some(need) = p.gpu
            && !gpus.could_fit(need)
        {
            bail!(
                "pool {}: one replica needs {} GPU(s) with {} each, more than these GPUs have",
                p.name,
                need.devices,
                need.memory_bytes
                    .map(format_bytes)
                    .unwrap_or_else(|| "the whole device".into())
            );
        }
    }
    Ok(Some(gpus))
}

/// How long a pool with work waits for GPU room while others are busy, unless the pools
/// file (`gpu_turn`) or `--gpu-turn` says otherwise.
const DEFAULT_GPU_TURN: Duration = Duration::from_secs(30);

/// The one pool of the single-pool flags, or the demo pool.
fn single_pool(args: &UpArgs) -> anyhow::Result<Vec<PoolConfig>> {
    let single = |backend: PoolBackend, name: String| -> anyhow::Result<PoolConfig> {
        let mut pool = PoolConfig::new(name, backend);
        pool.policy = args.policy.clone();
        pool.concurrency = args.concurrency;
        pool.max_replicas = args.max_replicas;
        pool.startup_timeout = args.startup_timeout;
        Ok(pool)
    };
    let name = || args.model.clone().unwrap_or_else(|| "default".into());
    if let Some(command) = &args.model_cmd {
        if !command.contains("{port}") {
            bail!(
                "--model-cmd must contain {{port}}, where each replica's port goes \
                 (e.g. \"llama-server -m model.gguf --port {{port}}\")"
            );
        }
        if !args.health_path.starts_with('/') {
            bail!("--health-path must start with /");
        }
        let backend = PoolBackend::Command {
            command: command.clone(),
            health_path: args.health_path.clone(),
        };
        return Ok(vec![single(backend, name())?]);
    }
    if let Some(url) = &args.model_url {
        greenscale_worker::chat_completions_url(url)
            .map_err(|m| anyhow::anyhow!("--model-url: {m}"))?;
        let backend = PoolBackend::Remote {
            url: url.clone(),
            api_key: args.model_api_key.clone(),
        };
        return Ok(vec![single(backend, name())?]);
    }
    let exe = std::env::current_exe().context("cannot find the greenscale executable")?;
    let command = format!(
        "{} demo-model --port {{port}} --load-time {}ms --tokens-per-sec {}",
        shell_quote(&exe.to_string_lossy()),
        args.demo_load_time.as_millis(),
        args.demo_tokens_per_sec
    );
    let mut pool = single(
        PoolBackend::Command {
            command,
            health_path: "/health".into(),
        },
        args.model.clone().unwrap_or_else(|| "demo".into()),
    )?;
    pool.demo = true;
    pool.startup_timeout = args.demo_load_time + Duration::from_secs(30);
    pool.stop_timeout = Duration::from_secs(5);
    Ok(vec![pool])
}

/// Quotes `s` for `sh -c`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The data folder, created if needed, and locked so that a second `up` cannot use it.
fn open_data_dir(dir: &Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open the data folder {}", dir.display()))?;
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot write in the data folder {}", dir.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another `greenscale up` is using {}; stop it, or pass a different --data-dir",
            dir.display()
        );
    }
    Ok((dir, lock))
}

/// Opens one queue per pool.
async fn open_queues(
    args: &UpArgs,
    pools: &[PoolConfig],
    data_dir: &Path,
) -> anyhow::Result<(Vec<Arc<dyn Queue>>, String)> {
    let config = args.tuning.queue_config();
    let mut queues: Vec<Arc<dyn Queue>> = Vec::new();
    if let Some(url) = &args.queue {
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            bail!("--queue must be a redis:// URL (without it, the embedded SQLite queue is used)");
        }
        for pool in pools {
            let queue = RedisQueue::connect(url, &pool.name, config.clone())?;
            queue
                .ping()
                .await
                .with_context(|| format!("cannot reach Redis at {}", redacted(url)))?;
            queues.push(Arc::new(queue));
        }
        return Ok((
            queues,
            format!("Redis at {} (a list per pool)", redacted(url)),
        ));
    }
    let db = data_dir.join("queue.db");
    for pool in pools {
        let queue = SqliteQueue::open(&db, &pool.name, config.clone())?;
        // This process holds the data folder's lock: workers registered by an earlier run
        // are gone, so what they held goes back to the queue now.
        let stale = queue.expire_all_workers().await?;
        if stale > 0 {
            queue.maintain().await?;
            tracing::info!(pool = %pool.name, workers = stale, "handed back the jobs of the previous run's workers");
        }
        queues.push(Arc::new(queue));
    }
    Ok((queues, format!("SQLite at {}", db.display())))
}

fn describe(pool: &PoolConfig) -> String {
    let what = match &pool.backend {
        _ if pool.demo => {
            "the built-in demo model (a fake model writing deterministic text, not an LLM)"
                .to_string()
        }
        PoolBackend::Command { command, .. } => format!("local servers: {command}"),
        PoolBackend::Remote { url, .. } => format!("remote API {url}"),
    };
    format!(
        "{} — {what}; {}..{} replicas × {} jobs, policy {}",
        pool.name, pool.min_replicas, pool.max_replicas, pool.concurrency, pool.policy
    )
}

/// The pools' state for the gateway's `/v1/pools`, `/v1/gpus` and dashboard.
struct PoolsView(Vec<Arc<Pool>>, Option<Arc<Gpus>>);

impl greenscale_gateway::PoolsStatus for PoolsView {
    fn pools(&self) -> Vec<greenscale_core::status::PoolStatus> {
        self.0.iter().map(|p| p.status()).collect()
    }

    fn gpus(&self) -> Vec<greenscale_core::status::GpuStatus> {
        self.1.as_ref().map(|g| g.status()).unwrap_or_default()
    }
}

/// Runs `greenscale up` until SIGINT or SIGTERM, then drains and stops every replica.
pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let file = pools(&args)?;
    let gpus = gpus(&args, &file)?;
    let pool_configs = file.pools;
    let (data_dir, _lock) = open_data_dir(&args.data_dir)?;
    let (queues, queue_text) = open_queues(&args, &pool_configs, &data_dir).await?;
    let names: Vec<String> = pool_configs.iter().map(|p| p.name.clone()).collect();

    // Two steps of a stop: the drain (no new work; running jobs finish and are answered),
    // then the HTTP server's own stop.
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let guard = GuardProgram {
        program: std::env::current_exe().context("cannot find the greenscale executable")?,
        args: vec!["replica-guard".into()],
    };
    // The gateway needs the routes, the routes need the pools, and the pools register
    // their metrics in the gateway's registry: build the registry first.
    let metrics = Arc::new(greenscale_gateway::Metrics::new());
    let pool_metrics = {
        let mut registry = metrics.registry().lock().expect("registry lock");
        AutoscalerMetrics::register(&mut registry)
    };
    let pools: Vec<Arc<Pool>> = pool_configs
        .iter()
        .zip(&queues)
        .map(|(cfg, queue)| {
            Pool::new(
                cfg.clone(),
                queue.clone(),
                args.tuning.lease,
                guard.clone(),
                pool_metrics.pool(&cfg.name),
                gpus.clone(),
            )
        })
        .collect();
    let routes = Routes::pools(
        pools
            .iter()
            .map(|p| {
                let pool = p.clone();
                Route {
                    name: p.config().name.clone(),
                    queue: p.queue().clone(),
                    on_arrival: Some(Arc::new(move || pool.job_arrived())),
                }
            })
            .collect(),
    );
    store_tenants(&args.http, &routes).await?;
    let batches = batch_config(&args.http, Some(&data_dir.join("objects"))).await?;
    let mut gateway = build_gateway(&args.http, routes, names.clone(), stop_rx.clone())?;
    if let Some(batches) = batches {
        gateway = gateway.with_batches(batches);
    }
    let gateway = gateway
        .with_metrics(metrics)
        .with_pools(Arc::new(PoolsView(pools.clone(), gpus.clone())))
        .with_draining(drain_rx.clone());
    let listener = bind(args.http.listen).await?;
    let app = greenscale_gateway::app(gateway.clone());

    let base = format!("http://{}", args.http.listen);
    let key_flag = if args.http.api_keys.is_empty() {
        ""
    } else {
        " --api-key KEY"
    };
    say!("GreenScale is up.");
    say!("  Dashboard:               {base}/");
    say!(
        "  API (OpenAI-compatible): {base}/v1   models: {}",
        names.join(", ")
    );
    say!("  Pool status:             {base}/v1/pools");
    say!("  Metrics:                 {base}/metrics");
    say!(
        "  Data:                    {} (queue: {queue_text})",
        data_dir.display()
    );
    for p in &pool_configs {
        say!("  Pool {}", describe(p));
    }
    say!("Submit a job:");
    say!("  greenscale submit --url {base}{key_flag} --wait \"Write a haiku about idle GPUs\"");
    say!("Stop with Ctrl-C: running jobs finish, then every model server is stopped.");
    tracing::info!(
        listen = %args.http.listen,
        data_dir = %data_dir.display(),
        queue = %queue_text,
        pools = %names.join(","),
        "greenscale up"
    );
    for p in &pool_configs {
        if p.demo {
            tracing::info!(pool = %p.name, "this is a demo pool: its model writes deterministic text, it is not an LLM");
        }
    }

    let loops: Vec<_> = pools
        .iter()
        .map(|p| tokio::spawn(autoscaler::run_pool(p.clone(), drain_rx.clone())))
        .collect();
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(greenscale_gateway::serve(listener, app, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    shutdown_signal().await;

    // The drain: new work gets 503; replicas finish their jobs within their grace (and hand
    // back what cannot finish); the answers of those jobs are still served.
    let _ = drain_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let grace = pool_configs
        .iter()
        .map(|p| p.drain_grace)
        .max()
        .unwrap_or_default();
    let running = |pools: &[Arc<Pool>]| -> u64 {
        pools
            .iter()
            .flat_map(|p| p.status().replicas)
            .map(|r| r.in_flight)
            .sum()
    };
    tracing::info!(
        replicas = pools.iter().map(|p| p.replica_count()).sum::<usize>(),
        jobs_running = running(&pools),
        grace_s = grace.as_secs(),
        "draining: no new work; running jobs finish within the grace, then every model server stops (Ctrl-C again to stop at once)"
    );
    for p in &pools {
        p.stop_all();
    }
    let drained = async {
        for p in &pools {
            p.stopped().await;
        }
    };
    tokio::pin!(drained);
    let since = std::time::Instant::now();
    let mut progress = tokio::time::interval(std::time::Duration::from_secs(2));
    progress.tick().await;
    let forced = loop {
        tokio::select! {
            _ = &mut drained => break false,
            _ = shutdown_signal() => break true,
            _ = progress.tick() => {
                let left = grace.saturating_sub(since.elapsed()).as_secs();
                tracing::info!(
                    "draining: {} jobs running, {left} s left, {} requests waiting for answers",
                    running(&pools),
                    gateway.waiting_requests()
                );
            }
        }
    };
    if !forced {
        // The last answers: requests following a job are answered as it ends; clients that
        // poll (`submit --wait` asks every 100 ms) get a moment to read the final state.
        let linger = std::time::Instant::now();
        while linger.elapsed() < std::time::Duration::from_millis(500)
            || (gateway.waiting_requests() > 0
                && linger.elapsed() < std::time::Duration::from_secs(5))
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let _ = stop_tx.send(true);
    if forced {
        tracing::warn!(
            jobs_running = running(&pools),
            "second signal: stopping now without waiting; running jobs go back to the queue (handed back at the next start, or when their lease expires on Redis) and every model server is stopped"
        );
        return Ok(ExitCode::from(130));
    }
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "the HTTP server failed");
    }
    tracing::info!("all replicas stopped; bye");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
