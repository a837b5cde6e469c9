//! `arca bench spill`: how fast primary copies go to disk and come back,
//! beside the disk's own direct-I/O bandwidth measured in the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use arca_client::{ObjectId, ObjectInfo, StoreClient, StoreTotals};
use arca_store::server::{StoreConfig, start};
use arca_store::spill::SpillConfig;

use crate::limits::disk_gbps;
use crate::{BenchOptions, Report};

const OBJECT: usize = 64 << 20;
/// Memory of the store; the workload puts four times as much.
const MEMORY: u64 = 512 << 20;
const GET: Option<Duration> = Some(Duration::from_secs(120));

/// Ids of the objects the store lists that satisfy `keep`.
fn ids_where(listed: &[ObjectInfo], keep: impl Fn(&ObjectInfo) -> bool) -> Vec<ObjectId> {
    listed
        .iter()
        .filter(|o| keep(o))
        .filter_map(|o| ObjectId::from_slice(&o.id).ok())
        .collect()
}

fn totals(c: &StoreClient) -> anyhow::Result<StoreTotals> {
    c.memory()?.totals.context("the store sent no totals")
}

pub(crate) fn run(opts: &BenchOptions) -> anyhow::Result<Report> {
    let base = opts.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("arca-bench-spill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = workload(opts, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn workload(opts: &BenchOptions, dir: &std::path::Path) -> anyhow::Result<Report> {
    let mut r = Report::default();
    let (write, read, direct) = disk_gbps(dir, 1 << 30)?;
    let how = if direct {
        "direct I/O"
    } else {
        "buffered: no direct I/O here"
    };
    r.push(
        &format!("disk sequential write gigabytes per second ({how})"),
        write,
        "GB/s",
    );
    r.push(
        &format!("disk sequential read gigabytes per second ({how})"),
        read,
        "GB/s",
    );

    let mut config = StoreConfig::new(dir.join("store.sock"), MEMORY);
    config.prefault = true;
    config.spill = Some(SpillConfig::new(dir.join("spill")));
    eprintln!(
        "starting an embedded store of 512 MiB that spills to {}",
        dir.display()
    );
    let store = start(config)?;
    let c = StoreClient::connect(store.socket())?;
    let data: Vec<u8> = (0..OBJECT).map(|i| (i % 251) as u8).collect();
    let count = (4 * MEMORY as usize / OBJECT).max(8);
    let rounds = ((opts.seconds / 2.0).ceil() as usize).max(1);

    // Spill: once memory is full, every put waits for spilling to free room,
    // so the put rate over the window is the spill rate.
    let mut ids: Vec<ObjectId> = Vec::new();
    let fill = MEMORY as usize / OBJECT;
    for _ in 0..fill {
        ids.push(c.put(&data)?);
    }
    let before = totals(&c)?;
    let t = Instant::now();
    for _ in fill..count * rounds {
        ids.push(c.put(&data)?);
    }
    let spill_window = t.elapsed().as_secs_f64();
    let after = totals(&c)?;
    let spilled = after.spilled_total_bytes - before.spilled_total_bytes;
    r.push(
        "spill gigabytes per second",
        spilled as f64 / spill_window / 1e9,
        "GB/s",
    );

    // Restore: free memory by deleting what is in memory, then get spilled
    // objects from two clients at once until memory is full again.
    let listed = c.list()?;
    let in_memory = ids_where(&listed, |o| o.in_memory);
    c.delete_many(&in_memory)?;
    let mut spilled_ids = ids_where(&listed, |o| !o.in_memory && o.on_disk);
    spilled_ids.truncate(fill - 1);
    let before = totals(&c)?;
    let t = Instant::now();
    let halves: Vec<Vec<ObjectId>> = spilled_ids
        .chunks(spilled_ids.len().div_ceil(2).max(1))
        .map(<[_]>::to_vec)
        .collect();
    let socket: PathBuf = store.socket().to_path_buf();
    std::thread::scope(|s| {
        let handles: Vec<_> = halves
            .iter()
            .map(|ids| {
                let socket = &socket;
                s.spawn(move || -> anyhow::Result<()> {
                    let c = StoreClient::connect(socket)?;
                    for id in ids {
                        let b = c.get_one(*id, GET)?;
                        anyhow::ensure!(b[12345] == (12345 % 251) as u8, "restored bytes differ");
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("restore thread panicked"))?
        })
    })?;
    let restore_window = t.elapsed().as_secs_f64();
    let after = totals(&c)?;
    let restored = after.restored_total_bytes - before.restored_total_bytes;
    r.push(
        "restore gigabytes per second (2 clients)",
        restored as f64 / restore_window / 1e9,
        "GB/s",
    );

    // Latency of one get of a spilled 64 MiB object, with room in memory.
    c.delete_many(&spilled_ids)?;
    let mut still_spilled = ids_where(&c.list()?, |o| !o.in_memory && o.on_disk);
    still_spilled.truncate(4);
    let mut spent = Duration::ZERO;
    for id in &still_spilled {
        let t = Instant::now();
        drop(c.get_one(*id, GET)?);
        spent += t.elapsed();
        c.delete(*id)?;
    }
    if !still_spilled.is_empty() {
        r.push(
            "get spilled 64 MiB object milliseconds",
            spent.as_secs_f64() * 1e3 / still_spilled.len() as f64,
            "ms",
        );
    }
    let all = ids_where(&c.list()?, |_| true);
    c.delete_many(&all)?;
    drop(c);
    store.shutdown();
    Ok(r)
}
