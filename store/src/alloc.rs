//! Space inside one segment: best-fit over free ranges, 64-byte aligned.
//!
//! Free ranges are kept twice, by offset (to coalesce with neighbours on free)
//! and by (size, offset) (to find the smallest range that fits), so allocate
//! and free are O(log n) in the number of free ranges, with no scans. Best fit
//! keeps large ranges whole for large objects. We do not use the
//! `offset-allocator` crate: its bins round a request up to the next bin size,
//! so a request exactly the size of the largest free range (an object as large
//! as an empty store) would fail.

use std::collections::{BTreeMap, BTreeSet};

/// Every block starts and ends on this boundary (a cache line, and enough for
/// any SIMD load or Arrow buffer).
pub const ALIGN: u64 = 64;

/// Rounds `len` up to a whole number of [`ALIGN`] units; empty objects still
/// take one unit so that every object has a distinct offset.
pub fn block_len(len: u64) -> Option<u64> {
    len.max(1).checked_next_multiple_of(ALIGN)
}

/// The free space of one segment.
#[derive(Debug)]
pub struct Allocator {
    size: u64,
    by_offset: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    free: u64,
}

impl Allocator {
    /// An allocator over `size` bytes (rounded down to [`ALIGN`]), all free.
    pub fn new(size: u64) -> Self {
        let size = size - size % ALIGN;
        let mut a = Self {
            size,
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
            free: 0,
        };
        if size > 0 {
            a.insert(0, size);
        }
        a
    }

    /// Bytes under management.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.free
    }

    /// The largest contiguous free range.
    pub fn largest_free(&self) -> u64 {
        self.by_size.last().map_or(0, |&(size, _)| size)
    }

    /// Allocates `len` bytes (a multiple of [`ALIGN`]) and returns the offset.
    pub fn allocate(&mut self, len: u64) -> Option<u64> {
        debug_assert!(len > 0 && len.is_multiple_of(ALIGN));
        let &(size, offset) = self.by_size.range((len, 0)..).next()?;
        self.remove(offset, size);
        if size > len {
            self.insert(offset + len, size - len);
        }
        Some(offset)
    }

    /// Allocates `len` bytes starting on a multiple of `align` (a power of two,
    /// at least [`ALIGN`]), giving the gap before it back. Falls back to
    /// [`Allocator::allocate`] when no range has room for the gap too, so
    /// alignment never makes a create fail.
    pub fn allocate_aligned(&mut self, len: u64, align: u64) -> Option<u64> {
        debug_assert!(align.is_power_of_two() && align >= ALIGN);
        let want = len + align - ALIGN;
        // The smallest range that fits `len` may already start aligned.
        for &(size, offset) in self.by_size.range((len, 0)..) {
            let start = offset.next_multiple_of(align);
            if start + len <= offset + size {
                self.remove(offset, size);
                if start > offset {
                    self.insert(offset, start - offset);
                }
                if start + len < offset + size {
                    self.insert(start + len, offset + size - start - len);
                }
                return Some(start);
            }
            if size >= want {
                break; // every later range is at least this big: it would have fit
            }
        }
        self.allocate(len)
    }

    /// Returns `[offset, offset + len)` to the free space, merging it with free
    /// neighbours. The range must have come from [`Allocator::allocate`].
    pub fn free(&mut self, offset: u64, len: u64) {
        debug_assert!(offset + len <= self.size);
        let (mut start, mut end) = (offset, offset + len);
        if let Some((&prev, &prev_len)) = self.by_offset.range(..offset).next_back() {
            debug_assert!(prev + prev_len <= offset, "double free at {offset}");
            if prev + prev_len == offset {
                self.remove(prev, prev_len);
                start = prev;
            }
        }
        if let Some(&next_len) = self.by_offset.get(&end) {
            self.remove(end, next_len);
            end += next_len;
        }
        self.insert(start, end - start);
    }

    fn insert(&mut self, offset: u64, len: u64) {
        self.by_offset.insert(offset, len);
        self.by_size.insert((len, offset));
        self.free += len;
    }

    fn remove(&mut self, offset: u64, len: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(len, offset));
        self.free -= len;
    }

    /// Checks the internal invariants (tests and fuzzing).
    pub fn check_invariants(&self) {
        assert_eq!(self.by_offset.len(), self.by_size.len());
        let mut last_end = None;
        let mut total = 0;
        for (&off, &len) in &self.by_offset {
            assert!(len > 0 && off % ALIGN == 0 && len % ALIGN == 0);
            assert!(off + len <= self.size);
            assert!(self.by_size.contains(&(len, off)));
            if let Some(e) = last_end {
                assert!(off > e, "free ranges overlap or were not merged at {off}");
            }
            last_end = Some(off + len);
            total += len;
        }
        assert_eq!(total, self.free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_fit_of_whole_segment() {
        let mut a = Allocator::new(100 * ALIGN);
        assert_eq!(a.allocate(100 * ALIGN), Some(0));
        assert_eq!(a.free_bytes(), 0);
        assert_eq!(a.allocate(ALIGN), None);
        a.free(0, 100 * ALIGN);
        assert_eq!(a.largest_free(), 100 * ALIGN);
    }

    #[test]
    fn coalesces_both_sides() {
        let mut a = Allocator::new(3 * ALIGN);
        let x = a.allocate(ALIGN).unwrap();
        let y = a.allocate(ALIGN).unwrap();
        let z = a.allocate(ALIGN).unwrap();
        a.free(x, ALIGN);
        a.free(z, ALIGN);
        assert_eq!(a.largest_free(), ALIGN);
        a.free(y, ALIGN);
        assert_eq!(a.largest_free(), 3 * ALIGN);
        a.check_invariants();
    }

    #[test]
    fn best_fit_keeps_large_ranges() {
        let mut a = Allocator::new(10 * ALIGN);
        let blocks: Vec<u64> = (0..10).map(|_| a.allocate(ALIGN).unwrap()).collect();
        a.free(blocks[1], ALIGN); // a hole of 1
        a.free(blocks[4], ALIGN); // a hole of 3
        a.free(blocks[5], ALIGN);
        a.free(blocks[6], ALIGN);
        assert_eq!(a.allocate(ALIGN), Some(blocks[1]));
        assert_eq!(a.largest_free(), 3 * ALIGN);
    }

    #[test]
    fn aligned_allocations_start_aligned_and_leave_no_gap_behind() {
        let mut a = Allocator::new(64 * 1024);
        let small = a.allocate(ALIGN).unwrap();
        let big = a.allocate_aligned(8 * 1024, 4096).unwrap();
        assert_eq!((small, big % 4096), (0, 0));
        a.check_invariants();
        assert_eq!(a.free_bytes(), 64 * 1024 - ALIGN - 8 * 1024);
        a.free(big, 8 * 1024);
        a.free(small, ALIGN);
        assert_eq!(a.largest_free(), 64 * 1024);
        // No range can hold the gap: the unaligned fallback still serves it.
        let mut a = Allocator::new(4096 + ALIGN);
        a.allocate(ALIGN).unwrap();
        assert_eq!(a.allocate_aligned(4096, 4096), Some(ALIGN));
    }

    #[test]
    fn block_len_rounds_up() {
        assert_eq!(block_len(0), Some(64));
        assert_eq!(block_len(64), Some(64));
        assert_eq!(block_len(65), Some(128));
        assert_eq!(block_len(u64::MAX), None);
    }

    proptest! {
        /// Random allocate/free sequences keep every invariant: blocks never
        /// overlap, free + allocated = size, and freeing everything leaves one range.
        #[test]
        fn random_sequences(ops in proptest::collection::vec((any::<bool>(), 1u64..40, any::<prop::sample::Index>()), 1..400)) {
            let size = 1000 * ALIGN;
            let mut a = Allocator::new(size);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (alloc, units, pick) in ops {
                if alloc || live.is_empty() {
                    let len = units * ALIGN;
                    if let Some(off) = a.allocate(len) {
                        for &(o, l) in &live {
                            prop_assert!(off + len <= o || o + l <= off, "overlap");
                        }
                        live.push((off, len));
                    } else {
                        prop_assert!(a.largest_free() < len);
                    }
                } else {
                    let (off, len) = live.swap_remove(pick.index(live.len()));
                    a.free(off, len);
                }
                a.check_invariants();
                let used: u64 = live.iter().map(|&(_, l)| l).sum();
                prop_assert_eq!(used + a.free_bytes(), size);
            }
            for (off, len) in live.drain(..) {
                a.free(off, len);
            }
            prop_assert_eq!(a.largest_free(), size);
        }
    }
}
