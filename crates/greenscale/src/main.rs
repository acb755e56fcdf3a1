//! `greenscale`: one binary for every GreenScale role.

#[macro_use]
mod output;

mod cli;
mod client;
mod commands;
mod init;

use clap::Parser;

/// jemalloc rather than the system allocator: memory a process allocated but never wrote
/// (most of the 16 KB of buffers each open HTTP/1.1 connection reserves) stays out of its
/// resident set, what is freed goes back to the system after a while instead of staying
/// as fragments, and the many small allocations of a busy worker cost less
/// (`bench/run gateway_held`, `bench/run worker_throughput`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
