//! Spill, restore and compaction as table transitions. Each is split in two
//! around its I/O: `start_*` picks the work and marks the objects busy under
//! the lock, the caller does the I/O without the lock, `finish_*` records the
//! result under the lock again. An object busy with I/O keeps its block (a
//! delete meanwhile only marks it), so I/O never touches freed memory.

use std::path::PathBuf;
use std::time::Duration;

use super::{Io, Location, Table};
use crate::id::ObjectId;
use crate::spill::DiskLoc;
use crate::spill::record::record_len;

/// A batch of primary copies to write into one new spill file.
#[derive(Debug)]
pub struct SpillJob {
    /// The new file's number.
    pub file: u64,
    /// Its path.
    pub path: PathBuf,
    /// Most bytes it may take (disk fill limit and quota).
    pub room: u64,
    /// The objects, in memory, in the order to write them.
    pub objects: Vec<(ObjectId, Location)>,
    /// Bytes of their records, reserved against the quota until done.
    pub reserved: u64,
}

/// A spilled object to read back into the block allocated for it.
#[derive(Debug)]
pub struct RestoreJob {
    /// The object.
    pub id: ObjectId,
    /// Its spill file.
    pub path: PathBuf,
    /// Its record.
    pub disk: DiskLoc,
    /// Its new place in memory.
    pub loc: Location,
}

/// The live records of a mostly-dead spill file, to copy into a new file.
#[derive(Debug)]
pub struct CompactJob {
    /// The file being compacted.
    pub old_path: PathBuf,
    /// The new file's number.
    pub file: u64,
    /// Its path.
    pub path: PathBuf,
    /// Most bytes it may take.
    pub room: u64,
    /// The records to move.
    pub records: Vec<(ObjectId, DiskLoc)>,
    /// Bytes of those records, reserved against the quota until done.
    pub reserved: u64,
}

/// What a get must do about one object.
#[derive(Debug)]
pub enum RestoreStep {
    /// In memory: `get` pins it.
    Ready,
    /// Another thread is restoring it: wait.
    Wait,
    /// Not there (or not sealed): wait for it, as for any missing object.
    Missing,
    /// It cannot be read: its spill record failed its checks.
    Failed(String),
    /// No memory for it yet; spilling has been asked to make room: wait.
    NoSpace,
    /// Read it back (the block is allocated and reserved).
    Start(RestoreJob),
}

impl Table {
    /// Bytes to spill now: what pinned and primary memory holds above the
    /// threshold, or what waiting creates and restores asked for, at most what
    /// can be spilled.
    pub fn spill_wanted(&self) -> u64 {
        let Some(s) = &self.spill else { return 0 };
        if s.blocked().is_some() || self.spill_lru.is_empty() {
            return 0;
        }
        let used: u64 = self
            .allocators
            .iter()
            .map(|a| a.size() - a.free_bytes())
            .sum();
        let held = used.saturating_sub(self.lru.bytes());
        let limit = (self.capacity() as f64 * s.config().threshold) as u64;
        held.saturating_sub(limit)
            .max(self.spill_demand)
            .min(self.spill_lru.bytes())
    }

    /// Whether waiting for spilling can make room: spilling is on and not
    /// stopped, and something can be (or is being) spilled.
    pub fn can_spill(&self) -> bool {
        self.spill.as_ref().is_some_and(|s| s.blocked().is_none())
            && (!self.spill_lru.is_empty() || self.spills_in_flight > 0)
    }

    /// A create or restore needs `bytes` that eviction could not find.
    pub fn request_space(&mut self, bytes: u64) {
        self.spill_demand = self.spill_demand.max(bytes);
    }

    /// Picks least recently used primary copies, about `target` bytes but at
    /// least a tenth of capacity (so that steady puts spill in batches of tens
    /// of MiB, not an object at a time), at most one file's worth unless a
    /// single object is larger, and marks them as spilling. `None` if there is
    /// nothing to do or spilling is stopped.
    pub fn start_spill(&mut self, target: u64) -> Option<SpillJob> {
        let capacity = self.capacity();
        let spill = self.spill.as_mut()?;
        if self.spill_lru.is_empty() {
            return None;
        }
        let max_file = spill.config().file_size;
        let target = target.max(capacity / 10);
        let (file, path, room) = spill.start_file().ok()?;
        let mut objects = Vec::new();
        let (mut bytes, mut reserved) = (0, 0);
        while let Some((id, block)) = self.spill_lru.peek() {
            if !objects.is_empty() && (bytes >= target.min(max_file) || bytes + block > max_file) {
                break;
            }
            let Some(e) = self.objects.get_mut(&id) else {
                self.spill_lru.pop();
                continue;
            };
            let record = record_len(e.data_size + e.metadata_size);
            if reserved + record > room {
                if objects.is_empty() {
                    spill.no_room(record, room);
                    return None;
                }
                break;
            }
            self.spill_lru.pop();
            e.io = Io::Spilling;
            if let Some(loc) = e.loc() {
                objects.push((id, loc));
                bytes += block;
                reserved += record;
            }
        }
        spill.reserve(reserved);
        self.spills_in_flight += 1;
        Some(SpillJob {
            file,
            path,
            room,
            objects,
            reserved,
        })
    }

    /// Records a spill's outcome. Written objects leave memory unless someone
    /// pinned them meanwhile (they stay, with a disk copy, until released).
    pub fn finish_spill(
        &mut self,
        job: SpillJob,
        written: Result<(Vec<DiskLoc>, u64), String>,
        spent: Duration,
    ) {
        self.spills_in_flight -= 1;
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        spill.unreserve(job.reserved);
        let locs = match written {
            Ok((locs, len)) => {
                spill.add_file(job.file, len, locs.len() as u64, spent);
                locs.into_iter().map(Some).collect()
            }
            Err(why) => {
                spill.failed(why);
                vec![None; job.objects.len()]
            }
        };
        let mut freed = 0;
        for ((id, _), disk) in job.objects.iter().zip(locs) {
            let Some(e) = self.objects.get_mut(id) else {
                continue;
            };
            e.io = Io::Idle;
            e.disk = disk;
            if disk.is_some() && e.pins == 0 && !e.deleted {
                freed += e.block;
                self.drop_memory(id);
            }
            self.settle(id);
        }
        self.spill_demand = self.spill_demand.saturating_sub(freed);
    }

    /// What a get of `id` must do; allocates memory for a restore (evicting as
    /// needed) and marks the object restoring when it must be read back.
    pub fn begin_restore(&mut self, id: &ObjectId) -> RestoreStep {
        let Some(e) = self.objects.get(id).filter(|e| e.visible()) else {
            return RestoreStep::Missing;
        };
        if let Some(err) = &e.error {
            return RestoreStep::Failed(err.clone());
        }
        if e.readable() {
            return RestoreStep::Ready;
        }
        if e.io == Io::Restoring {
            return RestoreStep::Wait;
        }
        let (Some(disk), block) = (e.disk, e.block) else {
            return RestoreStep::Missing;
        };
        let Some(mem) = self.allocate(block) else {
            self.request_space(block);
            return RestoreStep::NoSpace;
        };
        let Some(spill) = &self.spill else {
            return RestoreStep::Missing;
        };
        let path = spill.path(disk.file);
        let Some(e) = self.objects.get_mut(id) else {
            return RestoreStep::Missing;
        };
        e.mem = Some(mem);
        e.io = Io::Restoring;
        let loc = Location {
            segment: mem.0,
            offset: mem.1,
            data_size: e.data_size,
            metadata_size: e.metadata_size,
        };
        RestoreStep::Start(RestoreJob {
            id: *id,
            path,
            disk,
            loc,
        })
    }

    /// Records a restore's outcome. A failed one leaves the object unreadable
    /// (every later get says why) until it is deleted.
    pub fn finish_restore(&mut self, id: &ObjectId, result: Result<(), String>, spent: Duration) {
        let Some(e) = self.objects.get_mut(id) else {
            return;
        };
        e.io = Io::Idle;
        let bytes = e.data_size + e.metadata_size;
        match result {
            Ok(()) => {
                if let Some(s) = self.spill.as_mut() {
                    s.restored(bytes, spent);
                }
            }
            Err(msg) => {
                tracing::error!("cannot restore object {id}: {msg}");
                e.error = Some(msg);
                self.drop_memory(id);
            }
        }
        self.settle(id);
    }

    /// Picks a spill file that is at least half dead and lists its live
    /// records, unless one of them is being restored (it is tried again later).
    pub fn start_compaction(&mut self) -> Option<CompactJob> {
        let spill = self.spill.as_ref()?;
        let old = spill.compaction_candidate()?;
        let mut records = Vec::new();
        for (id, e) in &self.objects {
            if let Some(d) = e.disk.filter(|d| d.file == old) {
                if e.io == Io::Restoring {
                    return None;
                }
                records.push((*id, d));
            }
        }
        records.sort_by_key(|(_, d)| d.offset);
        let spill = self.spill.as_mut()?;
        let old_path = spill.path(old);
        let (file, path, room) = spill.start_file().ok()?;
        let reserved: u64 = records.iter().map(|(_, d)| d.header.record_len()).sum();
        if reserved > room {
            return None;
        }
        spill.reserve(reserved);
        Some(CompactJob {
            old_path,
            file,
            path,
            room,
            records,
            reserved,
        })
    }

    /// Points moved records at the new file; the old file dies with its last
    /// record. Records whose object changed meanwhile die in the new file.
    pub fn finish_compaction(
        &mut self,
        job: CompactJob,
        written: Result<(Vec<DiskLoc>, u64), String>,
    ) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        spill.unreserve(job.reserved);
        let (locs, len) = match written {
            Ok(w) => w,
            Err(why) => {
                spill.failed(why);
                return;
            }
        };
        spill.add_compacted(job.file, len, locs.len() as u64);
        for ((id, old), new) in job.records.iter().zip(&locs) {
            match self.objects.get_mut(id) {
                Some(e) if e.disk == Some(*old) && e.io != Io::Restoring => {
                    e.disk = Some(*new);
                    spill.kill(old);
                }
                _ => spill.kill(new),
            }
        }
    }

    /// Spill files that lost their last record, to unlink without the lock.
    pub fn take_dead_files(&mut self) -> Vec<PathBuf> {
        self.spill
            .as_mut()
            .map(|s| s.take_dead_files())
            .unwrap_or_default()
    }
}
