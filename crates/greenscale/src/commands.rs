//! What each subcommand does.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use greenscale_core::status::{PoolStatus, ReplicaState};
use greenscale_core::{Admin, JobRecord, JobSpec, JobStatus};
use greenscale_demo_model::DemoConfig;
use greenscale_queue::RedisQueue;
use greenscale_worker::{OpenAiBackend, OpenAiConfig, WorkerConfig, default_worker_id, run_worker};

use crate::cli::{
    Command, DeadLetterAction, DeadLetterArgs, DemoModelArgs, GatewayArgs, HttpArgs, QueueArgs,
    StatusArgs, SubmitArgs, WorkerArgs,
};
use crate::client::JobsClient;

/// Runs one subcommand; the exit code says whether it succeeded.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    crate::init::reap_orphans_if_init();
    match command {
        Command::Worker(args) => worker(args).await,
        Command::Up(args) => crate::up::run(args).await,
        Command::Gateway(args) => gateway(args).await,
        Command::Scaler(args) => crate::scaler::run(args).await,
        Command::DemoModel(args) => demo_model(args).await,
        Command::Submit(args) => submit(args).await,
        Command::Status(args) => status(args).await,
        Command::DeadLetter(args) => dead_letter(args).await,
        Command::Sim(args) => crate::sim::run(args),
        Command::ReplicaGuard(args) => {
            let code = greenscale_autoscaler::run_guard(&args.command.join(" "), args.stop_timeout)
                .await?;
            // Exit at once: the runtime would otherwise wait for the thread blocked reading
            // standard input.
            std::process::exit(code)
        }
    }
}

/// A Redis URL with any password replaced, for logs.
pub(crate) fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

async fn open_queue(args: &QueueArgs) -> anyhow::Result<RedisQueue> {
    let url = args.redis_url();
    let queue = RedisQueue::connect(&url, &args.list, args.tuning.queue_config())?;
    Ok(queue)
}

async fn connected_queue(args: &QueueArgs) -> anyhow::Result<RedisQueue> {
    let queue = open_queue(args).await?;
    queue.ping().await.with_context(|| {
        format!(
            "cannot reach Redis at {} (set --redis-url or REDIS_URL)",
            redacted(&args.redis_url())
        )
    })?;
    Ok(queue)
}

/// Resolves when SIGTERM or SIGINT arrives.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let model_url = args
        .model_url
        .clone()
        .or_else(|| std::env::var("NEYSA_API_URL").ok().filter(|s| !s.is_empty()))
        .context("no model URL: pass --model-url or set GREENSCALE_MODEL_URL (or the prototype's NEYSA_API_URL)")?;
    let api_key = args.api_key.clone().or_else(|| {
        std::env::var("NEYSA_API_KEY")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let backend = OpenAiBackend::new(OpenAiConfig {
        url: model_url,
        api_key,
        model: args.model.clone(),
        fixed_model: None,
        temperature: args.temperature,
        max_tokens: args.max_tokens,
        timeout: args.job_timeout,
    })
    .map_err(anyhow::Error::msg)?;
    let queue = open_queue(&args.queue).await?;
    let id = args.worker_id.clone().unwrap_or_else(default_worker_id);
    tracing::info!(
        worker = %id,
        redis = %redacted(&args.queue.redis_url()),
        list = %args.queue.list,
        model_url = %backend.url(),
        model = %args.model,
        "connecting"
    );
    if let Err(e) = queue.ping().await {
        tracing::warn!(error = %e, "Redis is not reachable yet; will keep trying");
    }
    let mut config = WorkerConfig::new(id, args.queue.tuning.lease);
    config.concurrency = args.concurrency as usize;
    config.grace = args.grace;
    config.models = vec![args.model.clone()];
    run_worker(
        Arc::new(queue),
        Arc::new(backend),
        config,
        Arc::default(),
        shutdown_signal(),
    )
    .await;
    Ok(ExitCode::SUCCESS)
}

/// The gateway for `routes`, configured from the HTTP flags. Fails when the listen address
/// would expose an unauthenticated API.
pub(crate) fn build_gateway(
    http: &HttpArgs,
    routes: greenscale_gateway::Routes,
    models: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<greenscale_gateway::Gateway> {
    let keys = greenscale_gateway::ApiKeys::new(http.api_keys.clone());
    greenscale_gateway::check_exposure(&http.listen, &keys)?;
    let config = greenscale_gateway::GatewayConfig {
        api_keys: keys,
        wait_deadline: http.wait_deadline,
        max_pending: http.max_pending,
        max_body_bytes: http.max_body_bytes,
        limits: greenscale_core::Limits {
            max_prompt_chars: http.max_prompt_chars,
            ..greenscale_core::Limits::default()
        },
        models,
    };
    Ok(greenscale_gateway::Gateway::new(routes, config, stop))
}

/// Binds the HTTP listener, saying which address failed.
pub(crate) async fn bind(listen: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

/// The HTTP listener with `TCP_NODELAY` on every accepted connection, so that small writes
/// (streamed chunks, one per token) go out at once instead of waiting, by Nagle's algorithm,
/// for the client's delayed ACK of the previous one (up to 40 ms).
pub(crate) fn without_nagle(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    fn nodelay(stream: &mut tokio::net::TcpStream) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    }
    listener.tap_io(nodelay as fn(&mut tokio::net::TcpStream))
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let queue = open_queue(&args.queue).await?;
    if let Err(e) = queue.ping().await {
        tracing::warn!(error = %e, "Redis is not reachable yet; /readyz will say so until it is");
    }
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let routes = greenscale_gateway::Routes::single(Arc::new(queue));
    let gateway =
        build_gateway(&args.http, routes, args.models.clone(), stop_rx)?.with_draining(drain_rx);
    let listener = bind(args.http.listen).await?;
    tracing::info!(
        listen = %args.http.listen,
        redis = %redacted(&args.queue.redis_url()),
        api_keys = if args.http.api_keys.is_empty() { "none (loopback only)" } else { "required" },
        "gateway listening; OpenAI-compatible base URL http://{}/v1",
        args.http.listen
    );
    let drain = {
        let gateway = gateway.clone();
        async move {
            shutdown_signal().await;
            // New work gets 503; requests waiting on running jobs get their answers within
            // the grace; then everything stops.
            let _ = drain_tx.send(true);
            let since = std::time::Instant::now();
            tracing::info!(
                waiting = gateway.waiting_requests(),
                grace_s = args.drain_grace.as_secs(),
                "draining: no new work; waiting requests get their answers (Ctrl-C again to stop at once)"
            );
            let mut progress = tokio::time::interval(std::time::Duration::from_millis(200));
            let mut last_log = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown_signal() => {
                        tracing::warn!(waiting = gateway.waiting_requests(), "second signal: stopping now; the jobs keep running on the workers");
                        break;
                    }
                    _ = progress.tick() => {}
                }
                let waiting = gateway.waiting_requests();
                let left = args.drain_grace.saturating_sub(since.elapsed());
                if waiting == 0 || left.is_zero() {
                    break;
                }
                if last_log.elapsed() >= std::time::Duration::from_secs(2) {
                    last_log = std::time::Instant::now();
                    tracing::info!(
                        "draining: {waiting} requests waiting for answers, {} s left",
                        left.as_secs()
                    );
                }
            }
            let _ = stop_tx.send(true);
        }
    };
    axum::serve(without_nagle(listener), greenscale_gateway::app(gateway))
        .with_graceful_shutdown(drain)
        .await?;
    tracing::info!("gateway stopped");
    Ok(ExitCode::SUCCESS)
}

async fn demo_model(args: DemoModelArgs) -> anyhow::Result<ExitCode> {
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        url = %format!("http://{local}/v1"),
        load_time_s = args.load_time.as_secs_f64(),
        tokens_per_sec = args.tokens_per_sec,
        "GreenScale demo model (not a real LLM: it writes deterministic text) listening"
    );
    greenscale_demo_model::serve(
        listener,
        DemoConfig {
            load_time: args.load_time,
            tokens_per_sec: args.tokens_per_sec,
        },
        shutdown_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let prompt = read_prompt(&args)?;
    let queue = JobsClient::connect(&args.queue, &args.server).await?;
    let mut spec = JobSpec::from_prompt(prompt);
    if let Some(id) = &args.job_id {
        spec.job_id = id.clone();
    }
    spec.model = args.model.clone();
    spec.max_tokens = args.max_tokens;
    spec.temperature = args.temperature;
    let id = queue.enqueue(spec).await?;
    if args.server.url.is_none() {
        warn_if_up_runs_here(&args.queue, "this job went to").await;
    }
    if !args.wait {
        say!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    let tty = std::io::stderr().is_terminal();
    if tty {
        eprintln!("job {id} submitted");
    } else {
        say!("{id}");
    }
    let deadline = Instant::now() + args.timeout;
    let mut last: Option<(JobStatus, u32)> = None;
    let mut failures_told = 0;
    let mut pools_read = Instant::now();
    loop {
        let record = queue.job(&id).await?;
        if let Some(rec) = &record {
            if tty && last != Some((rec.status, rec.attempts)) {
                eprintln!("{}", progress_line(rec));
                last = Some((rec.status, rec.attempts));
            }
            if rec.status.is_terminal() {
                return Ok(finish_submit(rec));
            }
            // A job waiting on a pool whose replicas keep failing to start says so.
            if rec.status == JobStatus::Queued && pools_read.elapsed() >= Duration::from_secs(1) {
                pools_read = Instant::now();
                let model = args
                    .model
                    .clone()
                    .or_else(|| rec.spec.as_ref().and_then(|s| s.model.clone()));
                if let Some(line) =
                    failing_pool(&queue.pools().await.unwrap_or_default(), model.as_deref())
                    && line.0 > failures_told
                {
                    failures_told = line.0;
                    eprintln!("{}", line.1);
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "gave up waiting after {} s; the job {id} is still {} (check with: greenscale status {id})",
                args.timeout.as_secs(),
                record.map(|r| r.status.as_str()).unwrap_or("queued")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where `greenscale up` listens by default.
const UP_DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Without `--url`, `submit` and `status` use Redis; when a `greenscale up` answers on its
/// default address, that is almost certainly not what was meant: say where `what` went.
async fn warn_if_up_runs_here(queue: &QueueArgs, what: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build();
    let Ok(client) = client else { return };
    let answered = match client
        .get(format!("{UP_DEFAULT_URL}/v1/pools"))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .is_ok_and(|v| v.as_array().is_some_and(|a| !a.is_empty())),
        _ => false,
    };
    if answered {
        eprintln!(
            "note: {what} Redis at {} (list {}), but a `greenscale up` is running at {UP_DEFAULT_URL}; \
             to use it, add --url {UP_DEFAULT_URL}",
            redacted(&queue.redis_url()),
            queue.list
        );
    }
}

/// The prompt from the argument, standard input (`-`) or `--file`.
fn read_prompt(args: &SubmitArgs) -> anyhow::Result<String> {
    let prompt = match (&args.prompt, &args.file) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the prompt from --file {}", path.display()))?,
        (Some(p), None) if p == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read the prompt from standard input")?;
            text
        }
        (Some(p), None) => p.clone(),
        (None, None) => bail!("give the prompt as an argument, - for standard input, or --file"),
    };
    if prompt.trim().is_empty() {
        bail!("the prompt is empty");
    }
    Ok(prompt)
}

/// For the pool serving `model` (or the only pool), its failed starts in a row and a line
/// saying so, when there are any.
fn failing_pool(pools: &[PoolStatus], model: Option<&str>) -> Option<(u32, String)> {
    let pool = match model {
        Some(m) => pools.iter().find(|p| p.name == m),
        None if pools.len() == 1 => pools.first(),
        None => None,
    }?;
    let failures = Some(pool.failures_in_a_row).filter(|n| *n > 0)?;
    Some((
        failures,
        format!(
            "pool {}: {failures} failed starts in a row, last: {}",
            pool.name,
            pool.last_failure.as_deref().unwrap_or("unknown")
        ),
    ))
}

fn progress_line(rec: &JobRecord) -> String {
    match rec.status {
        JobStatus::Queued if rec.attempts > 0 => format!(
            "waiting to retry (attempt {} failed: {})",
            rec.attempts,
            rec.error_message.as_deref().unwrap_or("unknown error")
        ),
        JobStatus::Queued => "queued, waiting for a worker".into(),
        JobStatus::Running => format!(
            "running on {} (attempt {})",
            rec.worker_id.as_deref().unwrap_or("a worker"),
            rec.attempts
        ),
        s => s.to_string(),
    }
}

fn finish_submit(rec: &JobRecord) -> ExitCode {
    if rec.status == JobStatus::Succeeded {
        say!("{}", rec.result.as_deref().unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "job {} {}: {}",
        rec.id,
        rec.status,
        rec.error_message
            .as_deref()
            .unwrap_or("cancelled before it finished")
    );
    ExitCode::FAILURE
}

fn ago(ms: Option<u64>, now: u64) -> String {
    match ms {
        Some(t) => format!("{:.1} s ago", now.saturating_sub(t) as f64 / 1000.0),
        None => "-".into(),
    }
}

fn between(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.3} s", b.saturating_sub(a) as f64 / 1000.0),
        _ => "-".into(),
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let queue = JobsClient::connect(&args.queue, &args.server).await?;
    if args.server.url.is_none() {
        warn_if_up_runs_here(&args.queue, "this is read from").await;
    }
    let Some(id) = &args.job_id else {
        let s = queue.stats().await?;
        let pools = queue.pools().await?;
        if args.json {
            let out = serde_json::json!({"queue": s, "pools": pools});
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
        "  replicas     {} starting, {} ready, {} draining",
        count(ReplicaState::Starting),
        count(ReplicaState::Ready),
        count(ReplicaState::Draining)
    );
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
    if let Some((_, line)) = failing_pool(std::slice::from_ref(p), None) {
        say!("  failing      {line}");
    } else if let Some(f) = &p.last_failure {
        say!("  last failure {f} (since recovered)");
    }
}

async fn dead_letter(args: DeadLetterArgs) -> anyhow::Result<ExitCode> {
    let queue = connected_queue(&args.queue).await?;
    match args.action {
        DeadLetterAction::List { limit, json } => {
            let items = queue.dead_letters(limit).await?;
            if json {
                say!("{}", serde_json::to_string_pretty(&items)?);
            } else if items.is_empty() {
                say!("the dead-letter list is empty");
            } else {
                let now = now_ms();
                for d in items {
                    say!(
                        "{}  {}  {}  {}",
                        d.job_id.as_deref().unwrap_or("(no id)"),
                        d.kind,
                        ago(Some(d.at_ms), now),
                        d.reason
                    );
                }
            }
        }
        DeadLetterAction::Retry { job_ids, all } => {
            let n = queue
                .retry_dead(if all { None } else { Some(&job_ids) })
                .await?;
            say!("{n} dead letter(s) put back on the queue");
            if n == 0 && !all {
                return Ok(ExitCode::FAILURE);
            }
        }
        DeadLetterAction::Purge => {
            let n = queue.purge_dead().await?;
            say!("{n} dead letter(s) deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
    }
}
