//! `greenscale dead-letter`: list, retry or purge dead letters.

use std::process::ExitCode;

use greenscale_core::Admin;

use crate::cli::{DeadLetterAction, DeadLetterArgs};
use crate::commands::shared::{ago, connected_queue, now_ms};

/// Runs `greenscale dead-letter`; `retry` of named ids that are not there exits 1.
pub(super) async fn dead_letter(args: DeadLetterArgs) -> anyhow::Result<ExitCode> {
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
