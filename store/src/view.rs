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
    pub fn readable(self: &Arc<Self>, offset: u64, len: u64) -> Result<SharedBytes, OutOfBounds> {
        let (offset, len) = self.check(offset, len)?;
        Ok(SharedBytes {
            mapping: Arc::clone(self),
            offset,
            len,
        })
    }

    /// A write view of `[offset, offset + len)`, which the daemon allocated
    /// for an object this process is creating (see the module docs).
    pub fn writable(self: &Arc<Self>, offset: u64, len: u64) -> Result<WriteRegion, OutOfBounds> {
        let (offset, len) = self.check(offset, len)?;
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

impl DerefMut for WriteRegion {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: `writable` checked the range lies inside the mapping, which
        // `self.mapping` keeps alive. The daemon gave this range to exactly one
        // creator and nobody reads it before the seal; `WriteRegion` is not
        // `Clone`, and `&mut self` makes this the only live borrow of it here.
        unsafe { std::slice::from_raw_parts_mut(self.mapping.ptr().add(self.offset), self.len) }
    }
}
