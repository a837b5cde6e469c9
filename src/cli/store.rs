//! `arca store`: a standalone store daemon in the foreground.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use arca_store::ByteSize;
use arca_store::server::{StoreConfig, start};
use arca_store::spill::SpillConfig;
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
    /// Where to spill primary copies when memory runs short [default: a
    /// `spill` folder beside the socket]. Files left there by a store that
    /// died are removed at start.
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Never spill: once primary copies fill memory, creates fail with ObjectStoreFull.
    #[arg(long, conflicts_with_all = ["spill_dir", "spill_threshold", "spill_max_fill", "spill_max_bytes", "fallback_to_disk"])]
    no_spill: bool,
    /// Spill when pinned and primary bytes in memory pass this fraction of --memory.
    #[arg(long, default_value_t = 0.8, value_parser = fraction)]
    spill_threshold: f64,
    /// Stop spilling when the spill directory's filesystem is fuller than this fraction.
    #[arg(long, default_value_t = 0.95, value_parser = fraction)]
    spill_max_fill: f64,
    /// Most bytes of spill files at once (a quota below the filesystem's limit).
    #[arg(long)]
    spill_max_bytes: Option<ByteSize>,
    /// Serve a primary create that memory cannot take (even after spilling)
    /// from a memory-mapped file in the spill directory instead of failing.
    #[arg(long)]
    fallback_to_disk: bool,
    /// Size of the fallback file (sparse: disk is used only as objects land
    /// in it) [default: 4 times --memory].
    #[arg(long, requires = "fallback_to_disk")]
    fallback_size: Option<ByteSize>,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

pub fn run(a: StoreArgs) -> anyhow::Result<()> {
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
    if !a.no_spill {
        let dir = a.spill_dir.unwrap_or_else(|| {
            let parent = a.socket.parent().filter(|p| !p.as_os_str().is_empty());
            parent.unwrap_or(std::path::Path::new(".")).join("spill")
        });
        let mut spill = SpillConfig::new(dir);
        spill.threshold = a.spill_threshold;
        spill.max_fill = a.spill_max_fill;
        spill.max_bytes = a.spill_max_bytes.map_or(u64::MAX, |b| b.0);
        config.spill = Some(spill);
        if a.fallback_to_disk {
            config.fallback = Some(
                a.fallback_size
                    .map_or(a.memory.0.saturating_mul(4), |s| s.0),
            );
        }
    }
    let store = start(config)?;
    let sig = stop.wait().context("waiting for a signal")?;
    tracing::info!("received {sig:?}, shutting down");
    store.shutdown();
    Ok(())
}
