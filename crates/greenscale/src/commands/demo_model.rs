//! `greenscale demo-model`: the offline demo model server.

use std::process::ExitCode;

use anyhow::Context;
use greenscale_demo_model::DemoConfig;

use crate::cli::DemoModelArgs;
use crate::commands::shared::shutdown_signal;

/// Runs the demo model server until SIGTERM or SIGINT.
pub(super) async fn demo_model(args: DemoModelArgs) -> anyhow::Result<ExitCode> {
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
