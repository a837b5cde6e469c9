//! The daemon's spill workers, and the I/O of spills, restores and
//! compaction, all done without the table lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Shared;
use crate::spill::DiskLoc;
use crate::spill::io::{Outgoing, read_record, write_file};
use crate::spill::record::Header;
use crate::table::{CompactJob, RestoreJob, SpillJob};

/// Spill workers per daemon: two writes in flight keep a disk busy while
/// the other worker computes checksums.
pub(super) const WORKERS: usize = 2;

enum Work {
    Spill(SpillJob),
    Compact(CompactJob),
}

/// Waits for spilling to be wanted (pinned and primary memory above the
/// threshold, or a create or restore waiting for room), spills a batch, and
/// compacts mostly-dead files when there is nothing to spill.
pub(super) fn worker(shared: Arc<Shared>) {
    loop {
        let work = {
            let mut t = shared.table.lock();
            loop {
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                let want = t.spill_wanted();
                if want > 0 {
                    if let Some(job) = t.start_spill(want) {
                        break Work::Spill(job);
                    }
                } else if let Some(job) = t.start_compaction() {
                    break Work::Compact(job);
                }
                shared
                    .spill_cond
                    .wait_for(&mut t, Duration::from_millis(100));
            }
        };
        match work {
            Work::Spill(job) => {
                let began = Instant::now();
                let written = write_spill(&shared, &job);
                let mut t = shared.table.lock();
                t.finish_spill(job, written, began.elapsed());
                shared.done(t);
            }
            Work::Compact(job) => {
                let written = compact(&job);
                if let Ok((locs, len)) = &written {
                    tracing::info!(
                        from = %job.old_path.display(),
                        to = %job.path.display(),
                        records = locs.len(),
                        bytes = len,
                        "compacted a mostly-dead spill file"
                    );
                }
                let mut t = shared.table.lock();
                t.finish_compaction(job, written);
                shared.done(t);
            }
        }
    }
}

fn write_spill(shared: &Shared, job: &SpillJob) -> Result<(Vec<DiskLoc>, u64), String> {
    let mut out = Vec::with_capacity(job.objects.len());
    for (id, loc) in &job.objects {
        let seg = &shared.segments[loc.segment as usize];
        let body = seg
            .mapping()
            .readable(loc.offset, loc.data_size + loc.metadata_size)
            .map_err(|e| e.to_string())?;
        let header = Header::for_body(*id, loc.data_size, loc.metadata_size, &[&body]);
        out.push(Outgoing { header, body });
    }
    let offsets = write_file(&job.path, &out, job.room)
        .map_err(|e| format!("cannot write spill file {}: {e}", job.path.display()))?;
    let len = out.iter().map(|o| o.header.record_len()).sum();
    let locs = out
        .iter()
        .zip(offsets)
        .map(|(o, offset)| DiskLoc {
            file: job.file,
            offset,
            header: o.header,
        })
        .collect();
    Ok((locs, len))
}

/// Reads a spilled object back into its new block and checks it. The error
/// names the object and the file.
pub(super) fn restore(shared: &Shared, job: &RestoreJob) -> Result<(), String> {
    let seg = &shared.segments[job.loc.segment as usize];
    let mut region = seg
        .mapping()
        .writable(job.loc.offset, job.loc.data_size + job.loc.metadata_size)
        .map_err(|e| e.to_string())?;
    read_record(&job.path, job.disk.offset, &job.disk.header, &mut region).map_err(|e| {
        format!(
            "object {} cannot be restored from spill file {} (record at byte {}): {e}; delete it and put it again",
            job.id,
            job.path.display(),
            job.disk.offset
        )
    })
}

/// Copies the live records of a mostly-dead file into a new one (in the
/// kernel: `io::copy` between files uses copy_file_range).
fn compact(job: &CompactJob) -> Result<(Vec<DiskLoc>, u64), String> {
    let result = (|| -> std::io::Result<(Vec<DiskLoc>, u64)> {
        let mut old = File::open(&job.old_path)?;
        let mut new = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&job.path)?;
        let mut at = 0u64;
        let mut locs = Vec::with_capacity(job.records.len());
        for (_, d) in &job.records {
            let len = d.header.record_len();
            if at + len > job.room {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            old.seek(SeekFrom::Start(d.offset))?;
            let copied = std::io::copy(&mut Read::by_ref(&mut old).take(len), &mut new)?;
            if copied != len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "spill file is shorter than its records",
                ));
            }
            locs.push(DiskLoc {
                file: job.file,
                offset: at,
                header: d.header,
            });
            at += len;
        }
        Ok((locs, at))
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&job.path);
        format!(
            "cannot compact spill file {} into {}: {e}",
            job.old_path.display(),
            job.path.display()
        )
    })
}
