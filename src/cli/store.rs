//! `arca store`: a standalone store daemon in the foreground.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use arca_store::ByteSize;
use arca_store::server::{StoreConfig, start};
use nix::sys::signal::{SigSet, Signal};

#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Unix socket to listen on (its directory is created private, mode 0700).
    #[arg(long)]
    socket: PathBuf,
    /// Shared memory to hold objects, e.g. 512MiB or 2GB.
    #[arg(long)]
    memory: ByteSize,
    /// Touch every page at start so puts never pay page faults (takes about
    /// 3 s per GiB here, and the memory is committed at once).
    #[arg(long)]
    prefault: bool,
    /// Milliseconds a create waits for other clients to release memory
    /// before failing with ObjectStoreFull.
    #[arg(long, default_value_t = 1000)]
    create_timeout_ms: u64,
    /// Microseconds a connection polls for the next request before sleeping
    /// (0 never polls: lowest CPU use, slower small calls).
    #[arg(long, default_value_t = 50)]
    spin_us: u64,
    /// Spill directory (issue #3: spilling is not implemented yet).
    #[arg(long)]
    spill_dir: Option<PathBuf>,
}

pub fn run(a: StoreArgs) -> anyhow::Result<()> {
    if a.spill_dir.is_some() {
        anyhow::bail!("--spill-dir: spilling is not implemented yet in this build; run without it");
    }
    // Block the stop signals before any thread starts, so every thread
    // inherits the mask and only `wait` below receives them.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block().context("cannot block signals")?;
    let mut config = StoreConfig::new(&a.socket, a.memory.0);
    config.prefault = a.prefault;
    config.create_timeout = Duration::from_millis(a.create_timeout_ms);
    config.spin = Duration::from_micros(a.spin_us);
    let store = start(config)?;
    let sig = stop.wait().context("waiting for a signal")?;
    tracing::info!("received {sig:?}, shutting down");
    store.shutdown();
    Ok(())
}
