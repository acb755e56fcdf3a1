//! `greenscale submit`: enqueue a prompt and, with `--wait`, follow it to its answer.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use greenscale_core::{JobRecord, JobSpec, JobStatus};

use crate::cli::SubmitArgs;
use crate::client::JobsClient;
use crate::commands::shared::{failing_pool, warn_if_up_runs_here};

/// Runs `greenscale submit`: exit 0 once stored (or, with `--wait`, answered), 1 if the job failed.
pub(super) async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let prompt = read_prompt(&args)?;
    let queue = JobsClient::connect(&args.queue, &args.server).await?;
    let mut spec = JobSpec::from_prompt(prompt);
    if let Some(id) = &args.job_id {
        spec.job_id = id.clone();
    }
    spec.model = args.model.clone();
    spec.max_tokens = args.max_tokens;
    spec.temperature = args.temperature;
    spec.priority = args.priority;
    spec.deadline_at_ms = args
        .deadline
        .map(|d| crate::commands::shared::now_ms() + d.as_millis() as u64);
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
