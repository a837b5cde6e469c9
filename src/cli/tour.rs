//! `arca tour`: tasks, objects and actors on an embedded node, then the
//! object store underneath, step by step.

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arca_client::{ByteSize, Error, PutOptions, StoreClient};
use arca_store::server::{StoreConfig, start};
use arca_store::spill::SpillConfig;
use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};

#[derive(Debug, clap::Args)]
pub struct TourArgs {
    /// Memory of the embedded store.
    #[arg(long, default_value = "256MiB")]
    memory: ByteSize,
}

const SECOND: Option<Duration> = Some(Duration::from_secs(1));

fn inside(c: &StoreClient, ptr: *const u8) -> bool {
    c.segments()
        .iter()
        .any(|m| m.address_range().contains(&(ptr as usize)))
}

pub fn run(a: TourArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("arca-tour-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    println!("== Tasks, ObjectRefs and actors\n");
    let mut result = super::tour_tasks::tour(&dir);
    if result.is_ok() {
        println!("\n== The object store underneath: zero-copy objects, eviction, spilling\n");
        result = tour(&dir, a.memory.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tour(dir: &std::path::Path, memory: u64) -> anyhow::Result<()> {
    let socket = dir.join("store.sock");
    let store = start(StoreConfig::new(&socket, memory))?;
    println!(
        "1. Started an embedded store: {} of shared memory, socket {}",
        ByteSize(memory),
        socket.display()
    );
    let c = StoreClient::connect(&socket)?;

    let id = c.put(b"hello, arca")?;
    let buf = c.get_one(id, SECOND)?;
    println!(
        "2. put + get of a small object: {:?} (id {id}); the buffer points into shared memory: {}",
        String::from_utf8_lossy(&buf),
        inside(&c, buf.as_ptr())
    );
    drop(buf);

    let big = vec![42u8; 64 << 20];
    let t = Instant::now();
    let big_id = c.put(&big)?;
    let put_time = t.elapsed();
    let t = Instant::now();
    let got = c.get_one(big_id, SECOND)?;
    let get_time = t.elapsed();
    println!(
        "3. put of 64 MiB took {:.1} ms (a memcpy into shared memory); get took {:.1} us (a lookup, no copy); bytes equal: {}",
        put_time.as_secs_f64() * 1e3,
        get_time.as_secs_f64() * 1e6,
        got[..] == big[..]
    );
    drop(got);
    c.delete(big_id)?;

    let n = 1_000_000i64;
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..n)) as Arc<dyn Array>,
        ),
        (
            "x",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| i as f64 * 0.5),
            )) as _,
        ),
        (
            "name",
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("row{i}")),
            )) as _,
        ),
    ])?;
    let arrow_id = c.put_record_batch(&batch)?;
    let batches = c.get_record_batches(arrow_id, SECOND)?;
    let xs = batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .context("column x")?;
    let sum: f64 = xs.values().iter().sum();
    let zero_copy = batches[0].columns().iter().all(|col| {
        col.to_data()
            .buffers()
            .iter()
            .all(|b| inside(&c, b.as_ptr()))
    });
    println!(
        "4. Arrow: a batch of {} rows x {} columns round-tripped; sum(x) = {sum}; every buffer points into shared memory: {zero_copy}",
        batches[0].num_rows(),
        batches[0].num_columns()
    );
    drop(batches);

    let m: Vec<f64> = (0..1000 * 1000)
        .map(|i| if i % 1001 == 0 { 1.0 } else { 0.0 })
        .collect();
    let tid = c.put_tensor(&m, &[1000, 1000])?;
    let tensor = c.get_tensor::<f64>(tid, SECOND)?;
    let trace: f64 = (0..1000).filter_map(|i| tensor.get(&[i, i])).sum();
    println!(
        "5. Tensor: f64 {:?}, strides {:?}, trace = {trace}, read in place: {}",
        tensor.shape(),
        tensor.strides(),
        inside(&c, tensor.as_slice().as_ptr().cast())
    );
    drop(tensor);
    c.delete_many(&[arrow_id, tid, id])?;

    let chunk = vec![1u8; 8 << 20];
    let cache = PutOptions {
        primary: false,
        ..PutOptions::default()
    };
    let count = (2 * memory / chunk.len() as u64) as usize;
    let ids: Vec<_> = (0..count)
        .map(|_| c.put_with(&chunk, &cache))
        .collect::<Result<_, _>>()?;
    let kept = ids
        .iter()
        .filter(|&&i| c.contains(i).unwrap_or(false))
        .count();
    let report = c.memory()?;
    let totals = report.totals.unwrap_or_default();
    println!(
        "6. Eviction: put {count} evictable objects of 8 MiB (twice the store); {kept} remain, {} evicted least-recently-used first (oldest still there: {}, newest: {})",
        totals.evicted_objects,
        c.contains(ids[0])?,
        c.contains(ids[count - 1])?
    );
    c.delete_many(&ids)?;

    let mut held = Vec::new();
    let err = loop {
        match c.put(&chunk) {
            Ok(i) => held.push(i),
            Err(e @ Error::ObjectStoreFull(_)) => break e,
            Err(e) => return Err(e.into()),
        }
    };
    println!(
        "7. Primary copies are never evicted. With spilling off, after {} puts of 8 MiB the next fails with:\n   {err}",
        held.len()
    );
    c.delete_many(&held)?;

    drop(c);
    store.shutdown();

    spill(dir)?;
    println!(
        "`arca store` runs such a store as a daemon; `arca memory --socket PATH` shows what it holds and who pins it."
    );
    Ok(())
}

/// Step 8: the same kind of puts into a store that spills.
fn spill(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut config = StoreConfig::new(dir.join("spill.sock"), 64 << 20);
    config.spill = Some(SpillConfig::new(dir.join("spill")));
    let store = start(config)?;
    let c = StoreClient::connect(store.socket())?;
    let chunk = |i: u8| vec![i; 8 << 20];
    let ids: Vec<_> = (0..32u8)
        .map(|i| c.put(&chunk(i)))
        .collect::<Result<_, _>>()?;
    let t = c.memory()?.totals.unwrap_or_default();
    println!(
        "8. Spilling (on by default in `arca store`): 32 primary objects of 8 MiB went into a 64 MiB store; {} are on disk only, in {} spill files ({})",
        t.spilled_objects,
        t.spill_files,
        ByteSize(t.spill_disk_bytes)
    );
    let mut same = true;
    for (i, id) in ids.iter().enumerate() {
        same &= c.get_one(*id, Some(Duration::from_secs(30)))?[..] == chunk(i as u8)[..];
    }
    let t = c.memory()?.totals.unwrap_or_default();
    println!(
        "   read all 32 back (checksums verified, restored {} from disk); bytes equal: {same}",
        t.restored_total_objects
    );
    c.delete_many(&ids)?;
    let t = c.memory()?.totals.unwrap_or_default();
    println!(
        "   deleted them: {} objects, {} of spill files left",
        t.objects,
        ByteSize(t.spill_disk_bytes)
    );
    drop(c);
    store.shutdown();
    Ok(())
}
