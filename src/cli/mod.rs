//! Subcommands of the `arca` binary.

mod bench_cluster;
mod bench_tasks;
mod memory;
mod node;
mod store;
mod tour;
mod tour_tasks;

use std::path::PathBuf;

use arca_store::ByteSize;
use clap::{Parser, Subcommand};

/// Arca: a shared-memory object store (Ray Core in Rust).
#[derive(Debug, Parser)]
#[command(name = "arca", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a standalone store daemon in the foreground (Ctrl-C stops it).
    Store(store::StoreArgs),
    /// Start a node in the background: object store, scheduler, worker pool.
    Start(node::StartArgs),
    /// Show a running node: resources, workers, tasks, objects.
    Status(node::StatusArgs),
    /// Stop the node (and its workers) started with `arca start`.
    Stop(node::StopArgs),
    /// List a node's objects: owner, references, pins and where they live
    /// (or, with --socket, a standalone store's).
    Memory(memory::MemoryArgs),
    /// Run benchmark workloads and print them next to this machine's limits.
    Bench(BenchArgs),
    /// A short tour on an embedded node: tasks, ObjectRefs, actors, then the
    /// store: zero-copy arrays, eviction, spilling.
    Tour(tour::TourArgs),
    /// Internal: a benchmark client process started by `arca bench`.
    #[command(hide = true)]
    BenchClient(arca_bench::ClientArgs),
    /// Internal: a node in the foreground, as `arca start` runs it (Ctrl-C
    /// or `arca stop` stops it).
    #[command(hide = true)]
    Node(node::NodeRunArgs),
    /// Internal: a driver process of `arca bench tasks`' multi-client workload.
    #[command(hide = true)]
    BenchTasksClient {
        #[arg(long)]
        temp_dir: PathBuf,
        #[arg(long)]
        seconds: f64,
    },
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Which workloads: `store`, `spill`, `tasks` or `cluster`.
    area: arca_bench::Area,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Use a running store instead of starting an embedded one.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// `bench tasks`: use the running node in this temp dir instead of an
    /// embedded one.
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    /// Memory of the embedded store.
    #[arg(long, default_value = "3GiB")]
    memory: ByteSize,
    /// Seconds per workload.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Client processes for the multi-client workloads.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Where `bench spill` spills [default: the temp directory].
    #[arg(long)]
    spill_dir: Option<PathBuf>,
}

/// Logs to stderr. The daemon logs at info by default; the other commands
/// print their own output and log only warnings unless asked.
pub fn init_logging(cli: &Cli) {
    let quiet = if matches!(cli.command, Command::Store(_) | Command::Node(_)) {
        "info"
    } else {
        "warn"
    };
    let level = match cli.verbose {
        0 => quiet,
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// A mistake in what the user asked for that only shows after parsing:
/// `main` exits with 2 for it, as for the mistakes clap finds.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Store(a) => store::run(a),
        Command::Start(a) => node::start(a),
        Command::Node(a) => node::run_node(a),
        Command::Status(a) => node::status(a),
        Command::Stop(a) => node::stop(a),
        Command::Memory(a) => memory::run(a),
        Command::Tour(a) => tour::run(a),
        Command::Bench(a) if a.area == arca_bench::Area::Tasks => {
            let report = bench_tasks::run(&bench_tasks::TasksOptions {
                seconds: a.seconds,
                clients: a.clients,
                temp_dir: a.temp_dir,
            })?;
            if a.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            Ok(())
        }
        Command::Bench(a) if a.area == arca_bench::Area::Cluster => {
            let report = bench_cluster::run(&bench_cluster::ClusterOptions { seconds: a.seconds })?;
            if a.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            let failed = report.metrics.iter().filter(|m| m.error.is_some()).count();
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} cluster workloads failed (their errors are in the report)",
                report.metrics.len()
            );
            Ok(())
        }
        Command::BenchTasksClient { temp_dir, seconds } => bench_tasks::client(temp_dir, seconds),
        Command::Bench(a) => {
            let opts = arca_bench::BenchOptions {
                socket: a.socket,
                memory: a.memory.0,
                seconds: a.seconds,
                clients: a.clients,
                exe: std::env::current_exe()?,
                spill_dir: a.spill_dir,
            };
            let report = arca_bench::run(a.area, &opts)?;
            if a.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            Ok(())
        }
        Command::BenchClient(a) => arca_bench::client_main(&a),
    }
}
