//! Byte views into a [`Mapping`]: read-only views of sealed objects and a
//! write view of an object being created.
//!
//! Soundness rests on the store protocol, which this crate implements on both
//! ends: the daemon hands out a location for reading only once the object is
//! sealed (immutable) and pinned for the reader (so its block is not freed or
//! reused until the reader releases it), and hands out a location for writing
//! only to the one client creating the object, before anyone can read it. A
//! process that writes into shared memory behind the protocol's back (it has a
//! writable mapping) can change bytes under readers, as in plasma; it cannot
//! make these views dangle, because each view keeps its mapping alive.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::segment::{Mapping, OutOfBounds};

/// Why a view cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The range is not inside the mapping.
    #[error(transparent)]
    OutOfBounds(#[from] OutOfBounds),
    /// A write view of (part of) the range is open in this process: the
    /// daemon handed out one location twice, or the caller asked twice.
    #[error("range {offset}+{len} overlaps an object this process is still writing")]
    Overlaps {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
}

impl Mapping {
    fn overlaps_writer(&self, start: usize, len: usize) -> bool {
        let end = start + len;
        len > 0
            && self
                .writers
                .lock()
                .iter()
                .any(|&(s, e)| s < end && start < e)
    }
}

/// Read-only bytes of a sealed object in shared memory.
#[derive(Debug)]
pub struct SharedBytes {
    mapping: Arc<Mapping>,
    offset: usize,
    len: usize,
}

/// Writable bytes of an object being created, exclusive to its creator.
#[derive(Debug)]
pub struct WriteRegion {
    mapping: Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl Mapping {
    /// A read view of `[offset, offset + len)`, which the daemon reported as a
    /// sealed object pinned for this process (see the module docs).
    /// Refused while a write view of an overlapping range is open.
    pub fn readable(self: &Arc<Self>, offset: u64, len: u64) -> Result<SharedBytes, ViewError> {
        let (start, n) = self.check(offset, len)?;
        if self.overlaps_writer(start, n) {
            return Err(ViewError::Overlaps { offset, len });
        }
        let (offset, len) = (start, n);
        Ok(SharedBytes {
            mapping: Arc::clone(self),
            offset,
            len,
        })
    }

    /// A write view of `[offset, offset + len)`, which the daemon allocated
    /// for an object this process is creating (see the module docs).
    /// Refused while a write view of an overlapping range is open; read
    /// views of it cannot be made until this one is dropped.
    pub fn writable(self: &Arc<Self>, offset: u64, len: u64) -> Result<WriteRegion, ViewError> {
        let (start, n) = self.check(offset, len)?;
        {
            let mut writers = self.writers.lock();
            if n > 0 && writers.iter().any(|&(s, e)| s < start + n && start < e) {
                return Err(ViewError::Overlaps { offset, len });
            }
            if n > 0 {
                writers.push((start, start + n));
            }
        }
        let (offset, len) = (start, n);
        Ok(WriteRegion {
            mapping: Arc::clone(self),
            offset,
            len,
        })
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `readable` checked the range lies inside the mapping, which
        // `self.mapping` keeps alive. The protocol (module docs) guarantees the
        // bytes are sealed, so nobody writes them, and pinned, so the daemon
        // does not reuse them while this view exists.
        unsafe { std::slice::from_raw_parts(self.mapping.ptr().add(self.offset), self.len) }
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Deref for WriteRegion {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: as in `DerefMut` below; a shared borrow of the region is
        // covered by the same exclusivity.
        unsafe { std::slice::from_raw_parts(self.mapping.ptr().add(self.offset), self.len) }
    }
}

impl Drop for WriteRegion {
    fn drop(&mut self) {
        let range = (self.offset, self.offset + self.len);
        let mut writers = self.mapping.writers.lock();
        if let Some(i) = writers.iter().position(|r| *r == range) {
            writers.swap_remove(i);
        }
    }
}

impl DerefMut for WriteRegion {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: `writable` checked the range lies inside the mapping, which
        // `self.mapping` keeps alive, and registered it: while this region
        // lives no other write or read view of an overlapping range can be
        // made in this process (both check the registry). `WriteRegion` is
        // not `Clone`, and `&mut self` makes this the only live borrow of it.
        // Other processes follow the store protocol: the daemon gave this
        // range to exactly one creator and nobody reads it before the seal.
        unsafe { std::slice::from_raw_parts_mut(self.mapping.ptr().add(self.offset), self.len) }
    }
}
