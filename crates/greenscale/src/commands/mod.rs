//! What each subcommand does: one file per subcommand, helpers they share in `shared`.

mod dead_letter;
mod demo_model;
mod gateway;
pub(crate) mod scaler;
pub(crate) mod shared;
pub(crate) mod sim;
mod status;
mod submit;
pub(crate) mod up;
mod worker;

use std::process::ExitCode;

use crate::cli::Command;

/// Runs one subcommand; the exit code says whether it succeeded.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    crate::init::reap_orphans_if_init();
    match command {
        Command::Worker(args) => worker::worker(args).await,
        Command::Up(args) => up::run(args).await,
        Command::Gateway(args) => gateway::gateway(args).await,
        Command::Scaler(args) => scaler::run(args).await,
        Command::DemoModel(args) => demo_model::demo_model(args).await,
        Command::Submit(args) => submit::submit(args).await,
        Command::Status(args) => status::status(args).await,
        Command::DeadLetter(args) => dead_letter::dead_letter(args).await,
        Command::Sim(args) => sim::run(args),
        Command::ReplicaGuard(args) => {
            let code =
                greenscale_local::run_guard(&args.command.join(" "), args.stop_timeout).await?;
            // Exit at once: the runtime would otherwise wait for the thread blocked reading
            // standard input.
            std::process::exit(code)
        }
    }
}
