//! The `arca` command line. Exit codes: 0 success, 1 runtime failure, 2 bad usage.

#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Started by a node as a worker for `arca tour` or `arca bench tasks`:
    // run tasks (init never returns in a worker).
    if std::env::var_os(arca::scheduler::ENV_WORKER_ID).is_some()
        && let Err(e) = arca::init()
    {
        eprintln!("error: cannot start as a worker: {e}");
        return ExitCode::from(1);
    }
    let args = cli::Cli::parse();
    cli::init_logging(&args);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the cause chain joined, ending in what to do.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(if e.is::<cli::UsageError>() { 2 } else { 1 })
        }
    }
}
