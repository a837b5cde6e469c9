//! Shared-memory segments: memfd files the daemon creates and hands to clients,
//! and the RAII mappings both sides read and write through.
//!
//! Everything else in Arca addresses memory as (segment, offset, length); only
//! this module and [`crate::view`] turn that into pointers.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{FallocateFlags, fallocate};
use nix::sys::memfd::{MFdFlags, memfd_create};

/// A shared, read-write mapping of a whole segment. Unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    raw: MmapRaw,
    /// The ranges of the write views open on it now (start, end): a new
    /// view that overlaps one is refused, so safe code can never hold a
    /// `&mut` to bytes that another view also borrows.
    pub(crate) writers: parking_lot::Mutex<Vec<(usize, usize)>>,
}

impl Mapping {
    /// Maps `len` bytes of `file` shared. With `populate`, the kernel fills the
    /// page tables at once (MAP_POPULATE) so reads and writes never take a
    /// minor fault; worth it only when the daemon prefaulted the segment, since
    /// otherwise populating would allocate every page now.
    pub fn map(file: &File, len: usize, populate: bool) -> io::Result<Self> {
        let mut opts = MmapOptions::new();
        opts.len(len);
        if populate {
            opts.populate();
        }
        Ok(Self {
            raw: opts.map_raw(file)?,
            writers: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the mapping is empty (never, for a real segment).
    pub fn is_empty(&self) -> bool {
        self.raw.len() == 0
    }

    /// Addresses this mapping covers in this process: lets tests prove that a
    /// buffer returned by `get` points into shared memory rather than a copy.
    pub fn address_range(&self) -> Range<usize> {
        let start = self.raw.as_ptr() as usize;
        start..start + self.raw.len()
    }

    /// Checks that `[offset, offset + len)` lies inside the mapping.
    pub(crate) fn check(&self, offset: u64, len: u64) -> Result<(usize, usize), OutOfBounds> {
        let end = offset.checked_add(len).ok_or(OutOfBounds { offset, len })?;
        if end > self.raw.len() as u64 {
            return Err(OutOfBounds { offset, len });
        }
        Ok((offset as usize, len as usize))
    }

    pub(crate) fn ptr(&self) -> *mut u8 {
        self.raw.as_mut_ptr()
    }
}

/// A range outside a segment: a location from the daemon that does not fit the
/// mapping (a protocol bug or a mismatched segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range {offset}+{len} lies outside the shared-memory segment")]
pub struct OutOfBounds {
    /// Start of the range.
    pub offset: u64,
    /// Length of the range.
    pub len: u64,
}

/// One memfd segment owned by the daemon: the file (handed to clients) and the
/// daemon's own mapping of it.
#[derive(Debug)]
pub struct Segment {
    file: File,
    mapping: Arc<Mapping>,
    prefaulted: bool,
}

impl Segment {
    /// Creates a memfd of `size` bytes and maps it. With `prefault`, every page
    /// is allocated now with `fallocate` (the kernel zeroes each page; a few
    /// times faster than touching them one fault at a time) and the daemon's
    /// mapping is populated, so that puts later run at memcpy speed. Prefault
    /// also fails here, not later, when the machine lacks the memory.
    pub fn create(index: u32, size: usize, prefault: bool) -> io::Result<Self> {
        let name = format!("arca-segment-{index}");
        let fd: OwnedFd = memfd_create(name.as_str(), MFdFlags::MFD_CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(size as u64)?;
        if prefault {
            let len = i64::try_from(size).map_err(io::Error::other)?;
            fallocate(&file, FallocateFlags::empty(), 0, len)?;
        }
        let mapping = Mapping::map(&file, size, prefault)?;
        Ok(Self {
            file,
            mapping: Arc::new(mapping),
            prefaulted: prefault,
        })
    }

    /// A segment backed by a sparse file at `path` instead of memory: the
    /// `--fallback-to-disk` segment. Disk blocks are used only as objects are
    /// written into it; clients map it like any other segment.
    pub fn create_file(path: &std::path::Path, size: usize) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(size as u64)?;
        let mapping = Mapping::map(&file, size, false)?;
        Ok(Self {
            file,
            mapping: Arc::new(mapping),
            prefaulted: false,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.mapping.len()
    }

    /// Whether every page was touched at start.
    pub fn prefaulted(&self) -> bool {
        self.prefaulted
    }

    /// The memfd, to send to clients.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The daemon's mapping.
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_share_memory() {
        let seg = Segment::create(0, 1 << 20, true).unwrap();
        let other = Mapping::map(&seg.file, seg.size(), true).unwrap();
        let mut w = seg.mapping().writable(4096, 5).unwrap();
        w.copy_from_slice(b"hello");
        drop(w);
        let other = Arc::new(other);
        let r = other.readable(4096, 5).unwrap();
        assert_eq!(&r[..], b"hello");
        assert!(other.address_range().contains(&(r.as_ptr() as usize)));
    }

    #[test]
    fn out_of_bounds_is_rejected() {
        let seg = Segment::create(0, 1 << 16, false).unwrap();
        assert!(seg.mapping().readable(1 << 16, 1).is_err());
        assert!(seg.mapping().readable(u64::MAX, 2).is_err());
        assert!(seg.mapping().readable((1 << 16) - 1, 1).is_ok());
    }

    #[test]
    fn overlapping_views_of_an_open_write_are_refused() {
        let seg = Segment::create(0, 1 << 16, false).unwrap();
        let m = seg.mapping();
        let w = m.writable(4096, 100).unwrap();
        assert!(
            m.writable(4100, 10).is_err(),
            "a second &mut of the same bytes"
        );
        assert!(m.readable(4000, 200).is_err(), "a & of bytes a &mut covers");
        assert!(m.writable(4196, 10).is_ok(), "the next bytes are free");
        drop(w);
        assert!(m.writable(4100, 10).is_ok());
        assert!(m.readable(4000, 200).is_ok());
    }
}
