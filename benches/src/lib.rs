//! Arca's benchmark workloads, run by `arca bench <area>`, and the physical
//! limits they are read against (measured in the same run).
//!
//! Metric names follow `ray microbenchmark` where the workload is the same.

mod limits;
mod report;
mod spill;
mod store;

use std::path::PathBuf;

pub use limits::{disk_gbps, memcpy_gbps};
pub use report::{Metric, Report};
pub use store::{ClientArgs, client_main};

/// A benchmark area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Area {
    /// The object store: put/get calls and bandwidth, single and multi client.
    Store,
    /// Spilling: spill and restore bandwidth beside the disk's, and the
    /// latency of getting a spilled object.
    Spill,
    /// Tasks and actors: calls per second, sync and async, one and several
    /// clients (run by the `arca` binary, whose workers it starts).
    Tasks,
    /// A cluster of nodes on this machine (started for the run): object
    /// transfer and broadcast between nodes beside raw TCP loopback, tasks
    /// run on another node, how fast a killed node is seen dead.
    Cluster,
}

/// Settings shared by the workloads.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A running store to use; an embedded one is started if `None`.
    pub socket: Option<PathBuf>,
    /// Capacity of the embedded store.
    pub memory: u64,
    /// Seconds per workload.
    pub seconds: f64,
    /// Processes for the multi-client workloads.
    pub clients: usize,
    /// This binary, re-run as `arca bench-client` for multi-client workloads.
    pub exe: PathBuf,
    /// Where the spill benchmark spills (a temporary folder if `None`).
    pub spill_dir: Option<PathBuf>,
}

/// Runs one area's workloads.
pub fn run(area: Area, opts: &BenchOptions) -> anyhow::Result<Report> {
    match area {
        Area::Store => store::run(opts),
        Area::Spill => spill::run(opts),
        Area::Tasks | Area::Cluster => {
            anyhow::bail!(
                "this area runs in the arca binary: use `arca bench tasks` or `arca bench cluster`"
            )
        }
    }
}
