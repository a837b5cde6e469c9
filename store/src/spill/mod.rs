//! Spilling: primary copies written to local disk when memory runs short, and
//! restored on demand.
//!
//! This module keeps the books (which files exist, how much of each is still
//! alive, the quota and fill limit, the counters); the object table decides
//! what to spill and when, and the daemon's spill workers and connection
//! threads do the I/O ([`io`]) outside the table's lock.

pub mod io;
pub mod record;
pub mod session;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use record::Header;
use session::Session;

/// How spilling behaves.
#[derive(Debug, Clone)]
pub struct SpillConfig {
    /// Where spill files go (a session directory is made inside).
    pub dir: PathBuf,
    /// Spill when pinned and primary bytes in memory pass this fraction of capacity.
    pub threshold: f64,
    /// Stop spilling when the spill directory's filesystem is fuller than this fraction.
    pub max_fill: f64,
    /// Most bytes of spill files at once (`u64::MAX`: only the filesystem limits).
    pub max_bytes: u64,
    /// Target size of a spill file of small objects.
    pub file_size: u64,
}

impl SpillConfig {
    /// Defaults: threshold 0.8, fill limit 0.95, no quota, 64 MiB files.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            threshold: 0.8,
            max_fill: 0.95,
            max_bytes: u64::MAX,
            file_size: 64 << 20,
        }
    }
}

/// Where a spilled object's record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLoc {
    /// Spill file number.
    pub file: u64,
    /// Byte offset of the record in the file.
    pub offset: u64,
    /// The record's header, as written.
    pub header: Header,
}

#[derive(Debug)]
struct FileInfo {
    len: u64,
    live_bytes: u64,
    live_records: u64,
}

/// Spill counters since start.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpillStats {
    /// Objects written to disk.
    pub spilled_objects: u64,
    /// Bytes of those records.
    pub spilled_bytes: u64,
    /// Time spent writing them (summed over workers).
    pub spill_time: Duration,
    /// Objects read back.
    pub restored_objects: u64,
    /// Bytes read back.
    pub restored_bytes: u64,
    /// Time spent reading them (summed over threads).
    pub restore_time: Duration,
    /// Spill writes that failed (full disk, I/O errors).
    pub failed_spills: u64,
}

/// The spill files of this daemon and their accounting.
#[derive(Debug)]
pub struct SpillFiles {
    config: SpillConfig,
    session: Session,
    files: HashMap<u64, FileInfo>,
    next_file: u64,
    disk_bytes: u64,
    /// Room promised to files being written, not yet in `disk_bytes`.
    reserved: u64,
    /// Why spilling is stopped, and until when, after a failed write.
    blocked: Option<(Instant, String)>,
    /// Files whose last record died, to unlink once the table lock is dropped.
    dead_files: Vec<PathBuf>,
    stats: SpillStats,
}

impl SpillFiles {
    /// Opens the spill directory: removes what dead daemons left and starts
    /// a session. Logs what it removed.
    pub fn open(config: SpillConfig) -> std::io::Result<Self> {
        let (session, cleaned) = Session::open(&config.dir)?;
        if cleaned.sessions > 0 {
            tracing::info!(
                dir = %config.dir.display(),
                sessions = cleaned.sessions,
                files = cleaned.files,
                bytes = cleaned.bytes,
                "removed spill files left by stores that died"
            );
        }
        Ok(Self {
            config,
            session,
            files: HashMap::new(),
            next_file: 1,
            disk_bytes: 0,
            reserved: 0,
            blocked: None,
            dead_files: Vec::new(),
            stats: SpillStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SpillConfig {
        &self.config
    }

    /// This session's directory.
    pub fn dir(&self) -> &Path {
        self.session.dir()
    }

    /// Path of the disk-backed fallback segment (`--fallback-to-disk`).
    pub fn fallback_path(&self) -> PathBuf {
        self.session.dir().join("fallback")
    }

    /// Path of spill file `file`.
    pub fn path(&self, file: u64) -> PathBuf {
        self.session.dir().join(format!("spill-{file:06}"))
    }

    /// Numbers a new file and says how many bytes it may hold, or why
    /// spilling is stopped now (and stops it for a second). Checks the
    /// filesystem with statvfs, a quick call that does not wait on the disk.
    pub fn start_file(&mut self) -> Result<(u64, PathBuf, u64), String> {
        if let Some((until, why)) = &self.blocked {
            if Instant::now() < *until {
                return Err(why.clone());
            }
            self.blocked = None;
        }
        // Files being written count against both limits: the filesystem does
        // not show them yet, and two workers must not be promised the same room.
        let quota_room = self
            .config
            .max_bytes
            .saturating_sub(self.disk_bytes + self.reserved);
        let room = match fs_room(self.session.dir(), self.config.max_fill) {
            Ok(fs_room) => quota_room.min(fs_room.saturating_sub(self.reserved)),
            Err(why) => {
                self.stop(why.clone());
                return Err(why);
            }
        };
        if room == 0 {
            let why = if quota_room == 0 {
                format!(
                    "the spill quota of {} is used up",
                    crate::ByteSize(self.config.max_bytes)
                )
            } else {
                format!(
                    "the spill disk is over {:.0}% full ({})",
                    self.config.max_fill * 100.0,
                    self.config.dir.display()
                )
            };
            self.stop(why.clone());
            return Err(why);
        }
        let file = self.next_file;
        self.next_file += 1;
        Ok((file, self.path(file), room))
    }

    /// Promises `bytes` of the room `start_file` offered to a file being written.
    pub fn reserve(&mut self, bytes: u64) {
        self.reserved += bytes;
    }

    /// Gives back a promise once its file is written (or failed).
    pub fn unreserve(&mut self, bytes: u64) {
        self.reserved -= bytes;
    }

    /// Stops spilling because the next record does not fit the room left.
    pub fn no_room(&mut self, record: u64, room: u64) {
        self.stop(format!(
            "no room for a {} spill record: {} left under the spill quota and disk fill limit",
            crate::ByteSize(record),
            crate::ByteSize(room)
        ));
    }
    pub fn add_file(&mut self, file: u64, len: u64, records: u64, spent: Duration) {
        self.insert_file(file, len, records);
        self.stats.spilled_objects += records;
        self.stats.spilled_bytes += len;
        self.stats.spill_time += spent;
    }

    /// Records a file written by compaction (not counted as spilling).
    pub fn add_compacted(&mut self, file: u64, len: u64, records: u64) {
        self.insert_file(file, len, records);
    }

    fn insert_file(&mut self, file: u64, len: u64, records: u64) {
        self.files.insert(
            file,
            FileInfo {
                len,
                live_bytes: len,
                live_records: records,
            },
        );
        self.disk_bytes += len;
        if records == 0 {
            self.kill_file(file);
        }
    }

    /// Records a failed spill write: spilling stops for a second, then tries again.
    pub fn failed(&mut self, why: String) {
        self.stats.failed_spills += 1;
        self.stop(why);
    }

    /// Stops spilling for a second (a full disk, a used-up quota, a failed write).
    fn stop(&mut self, why: String) {
        if self.blocked().is_none() {
            tracing::warn!("spilling stopped for 1 s: {why}");
        }
        self.blocked = Some((Instant::now() + Duration::from_secs(1), why));
    }

    /// Why spilling is stopped, if it is.
    pub fn blocked(&self) -> Option<&str> {
        self.blocked
            .as_ref()
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, w)| w.as_str())
    }

    /// A record is no longer needed (its object was deleted, or a newer copy
    /// exists). A file with no live record left is queued for unlinking.
    pub fn kill(&mut self, loc: &DiskLoc) {
        let Some(f) = self.files.get_mut(&loc.file) else {
            return;
        };
        f.live_bytes -= loc.header.record_len();
        f.live_records -= 1;
        if f.live_records == 0 {
            self.kill_file(loc.file);
        }
    }

    fn kill_file(&mut self, file: u64) {
        if let Some(f) = self.files.remove(&file) {
            self.disk_bytes -= f.len;
            self.dead_files.push(self.path(file));
        }
    }

    /// Files to unlink (call after dropping the table lock).
    pub fn take_dead_files(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.dead_files)
    }

    /// Records a restore.
    pub fn restored(&mut self, bytes: u64, spent: Duration) {
        self.stats.restored_objects += 1;
        self.stats.restored_bytes += bytes;
        self.stats.restore_time += spent;
    }

    /// The file most worth compacting: at most half alive, the most dead bytes first.
    pub fn compaction_candidate(&self) -> Option<u64> {
        self.files
            .iter()
            .filter(|(_, f)| f.live_bytes * 2 <= f.len)
            .max_by_key(|(_, f)| f.len - f.live_bytes)
            .map(|(&n, _)| n)
    }

    /// Bytes of spill files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Bytes of live records.
    pub fn live_bytes(&self) -> u64 {
        self.files.values().map(|f| f.live_bytes).sum()
    }

    /// Number of spill files.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Counters since start.
    pub fn stats(&self) -> SpillStats {
        self.stats
    }
}

/// Bytes that may still be written to the filesystem holding `dir` before it
/// is fuller than `max_fill`.
fn fs_room(dir: &Path, max_fill: f64) -> Result<u64, String> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| format!("cannot stat the spill directory {}: {e}", dir.display()))?;
    let frag = st.fragment_size().max(1);
    let total = st.blocks() * frag;
    let avail = st.blocks_available() * frag;
    let used = total.saturating_sub(avail);
    let limit = (total as f64 * max_fill.clamp(0.0, 1.0)) as u64;
    Ok(limit.saturating_sub(used))
}
