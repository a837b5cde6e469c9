//! The object table: every object's place (memory, disk or both), state and
//! pins, every client's holdings, the allocators, and the eviction and spill
//! orders. Pure state, no I/O: the server wraps it in a mutex, and does the
//! waiting, the socket work and the spill I/O outside the lock.
//!
//! Files: this one has the lifecycle (create, seal, get, release, delete,
//! evict); `spill.rs` the spill and restore transitions; `report.rs` what
//! `arca memory` and the store-full error say.

mod report;
mod spill;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use arca_proto::store as pb;

use crate::alloc::{Allocator, block_len};
use crate::error::{CreateError, StateError};
use crate::eviction::Lru;
use crate::id::ObjectId;
use crate::size::ByteSize;
use crate::spill::{DiskLoc, SpillFiles};

pub use spill::{CompactJob, RestoreJob, RestoreStep, SpillJob};

/// Blocks this large start on a page boundary.
const LARGE_BLOCK: u64 = 64 << 10;
const PAGE: u64 = 4096;

/// A connected client, numbered by the daemon from 1.
pub type ClientId = u64;

/// Where an object's bytes are: data at `offset`, metadata right after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Segment index.
    pub segment: u32,
    /// Byte offset of the block in the segment.
    pub offset: u64,
    /// Data length.
    pub data_size: u64,
    /// Metadata length.
    pub metadata_size: u64,
}

impl From<Location> for pb::Location {
    fn from(l: Location) -> Self {
        Self {
            segment: l.segment,
            offset: l.offset,
            data_size: l.data_size,
            metadata_size: l.metadata_size,
        }
    }
}

/// Spill I/O under way on an object, done outside the table lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    Idle,
    /// Being written to disk; still readable in memory.
    Spilling,
    /// Being read back into its (newly allocated) block; not readable yet.
    Restoring,
}

#[derive(Debug)]
struct Entry {
    data_size: u64,
    metadata_size: u64,
    /// Bytes of the block in memory (data + metadata, aligned).
    block: u64,
    /// (segment, offset) while the object is in memory.
    mem: Option<(u32, u64)>,
    /// The spilled copy, if any.
    disk: Option<DiskLoc>,
    io: Io,
    sealed: bool,
    deleted: bool,
    creator: ClientId,
    primary: Option<ClientId>,
    pins: u32,
    created: Instant,
    /// Why the object cannot be read (its spill record failed its checks).
    error: Option<String>,
    /// Its block is in the disk-backed fallback segment, not in memory.
    fallback: bool,
}

impl Entry {
    fn loc(&self) -> Option<Location> {
        self.mem.map(|(segment, offset)| Location {
            segment,
            offset,
            data_size: self.data_size,
            metadata_size: self.metadata_size,
        })
    }

    /// Sealed and not deleted: `contains` says yes, wherever the bytes are.
    fn visible(&self) -> bool {
        self.sealed && !self.deleted
    }

    fn readable(&self) -> bool {
        self.visible() && self.mem.is_some() && self.io != Io::Restoring && self.error.is_none()
    }

    fn idle_in_memory(&self) -> bool {
        self.visible()
            && self.pins == 0
            && self.mem.is_some()
            && self.io == Io::Idle
            && !self.fallback
    }

    /// Memory that eviction may take: a cache copy (no primary), or a primary
    /// copy that is safe on disk already.
    fn evictable(&self) -> bool {
        self.idle_in_memory() && (self.primary.is_none() || self.disk.is_some())
    }

    /// A primary copy only in memory, nobody reading it: spilling frees it.
    fn spillable(&self) -> bool {
        self.idle_in_memory() && self.primary.is_some() && self.disk.is_none()
    }
}

#[derive(Debug)]
struct Client {
    pid: u32,
    name: String,
    connected: Instant,
    pins: HashMap<ObjectId, u32>,
    creating: HashSet<ObjectId>,
    primaries: HashSet<ObjectId>,
}

/// Counters since start.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Objects created (including inline puts).
    pub created_objects: u64,
    /// Objects evicted.
    pub evicted_objects: u64,
    /// Bytes evicted.
    pub evicted_bytes: u64,
}

/// The store's state.
#[derive(Debug)]
pub struct Table {
    allocators: Vec<Allocator>,
    objects: HashMap<ObjectId, Entry>,
    /// Objects eviction may take, least recently released first.
    lru: Lru,
    /// Primary copies spilling may take, least recently released first.
    spill_lru: Lru,
    clients: HashMap<ClientId, Client>,
    next_client: ClientId,
    eviction_batch: u64,
    stats: Stats,
    spill: Option<SpillFiles>,
    /// The disk-backed fallback segment's space (`--fallback-to-disk`); its
    /// segment index is `allocators.len()`.
    fallback: Option<Allocator>,
    /// Bytes that waiting creates and restores asked spilling to free.
    spill_demand: u64,
    spills_in_flight: usize,
    /// Cache copies evicted since the server last took them, to tell the
    /// node (its copies of objects that live on other nodes).
    evicted: Vec<ObjectId>,
}

impl Table {
    /// A table over segments of the given sizes, without spilling. Eviction
    /// frees at least `eviction_batch` bytes at a time, so a full store does
    /// not evict on every create.
    pub fn new(segment_sizes: &[u64], eviction_batch: u64) -> Self {
        Self {
            allocators: segment_sizes.iter().map(|&s| Allocator::new(s)).collect(),
            objects: HashMap::new(),
            lru: Lru::default(),
            spill_lru: Lru::default(),
            clients: HashMap::new(),
            next_client: 1,
            eviction_batch,
            stats: Stats::default(),
            spill: None,
            fallback: None,
            spill_demand: 0,
            spills_in_flight: 0,
            evicted: Vec::new(),
        }
    }

    /// The same, spilling primary copies to `spill` when memory runs short.
    pub fn with_spill(segment_sizes: &[u64], eviction_batch: u64, spill: SpillFiles) -> Self {
        Self {
            spill: Some(spill),
            ..Self::new(segment_sizes, eviction_batch)
        }
    }

    /// Adds a disk-backed fallback segment of `size` bytes, used for primary
    /// copies that memory cannot take (see [`Table::create_fallback`]). It is
    /// the segment after the memory segments.
    pub fn with_fallback(mut self, size: u64) -> Self {
        self.fallback = Some(Allocator::new(size));
        self
    }

    /// Total bytes of the memory segments.
    pub fn capacity(&self) -> u64 {
        self.allocators.iter().map(Allocator::size).sum()
    }

    /// Bytes of memory a create could have now without spilling: free
    /// space plus what eviction may take.
    pub fn room(&self) -> u64 {
        self.allocators
            .iter()
            .map(Allocator::free_bytes)
            .sum::<u64>()
            + self.lru.bytes()
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Registers a newly connected client.
    pub fn connect(&mut self, pid: u32, name: String) -> ClientId {
        let id = self.next_client;
        self.next_client += 1;
        self.clients.insert(
            id,
            Client {
                pid,
                name,
                connected: Instant::now(),
                pins: HashMap::new(),
                creating: HashSet::new(),
                primaries: HashSet::new(),
            },
        );
        id
    }

    /// Forgets a client that disconnected or died: its pins go, its unsealed
    /// creates are aborted, its primary copies become evictable.
    pub fn disconnect(&mut self, client: ClientId) {
        let Some(c) = self.clients.remove(&client) else {
            return;
        };
        for id in c.creating {
            self.free_entry(&id);
        }
        for id in c.primaries {
            if let Some(e) = self.objects.get_mut(&id) {
                e.primary = None;
            }
            self.settle(&id);
        }
        for (id, n) in c.pins {
            if let Some(e) = self.objects.get_mut(&id) {
                e.pins -= n;
            }
            self.settle(&id);
        }
    }

    /// Reserves space for an object that `client` will write and then seal.
    /// Evicts unpinned objects, least recently used first, as needed.
    pub fn create(
        &mut self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
        primary: bool,
    ) -> Result<Location, CreateError> {
        let block = self.check_new(client, id, data_size, metadata_size)?;
        let Some(mem) = self.allocate(block) else {
            return Err(CreateError::Full(self.full_message(block)));
        };
        Ok(self.insert(
            client,
            id,
            (data_size, metadata_size),
            block,
            mem,
            primary,
            false,
        ))
    }

    /// Creates a primary copy in the disk-backed fallback segment, for a
    /// create that memory cannot serve. `None` if there is no fallback
    /// segment or no room in it.
    pub fn create_fallback(
        &mut self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    ) -> Option<Result<Location, CreateError>> {
        let block = match self.check_new(client, id, data_size, metadata_size) {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        let offset = self.fallback.as_mut()?.allocate(block)?;
        let mem = (self.allocators.len() as u32, offset);
        Some(Ok(self.insert(
            client,
            id,
            (data_size, metadata_size),
            block,
            mem,
            true,
            true,
        )))
    }

    /// Checks that `client` may create `id` of this size; returns its block length.
    fn check_new(
        &self,
        client: ClientId,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    ) -> Result<u64, CreateError> {
        // An object of nobody could never be sealed, aborted or evicted.
        if !self.clients.contains_key(&client) {
            return Err(CreateError::UnknownClient(client));
        }
        if let Some(e) = self.objects.get(&id) {
            return Err(if e.deleted {
                CreateError::Deleting(id)
            } else {
                CreateError::Exists(id)
            });
        }
        let largest = self
            .allocators
            .iter()
            .map(Allocator::size)
            .max()
            .unwrap_or(0);
        let total = data_size.checked_add(metadata_size);
        match total.and_then(block_len) {
            Some(b) if b <= largest => Ok(b),
            _ => Err(CreateError::TooLarge {
                size: ByteSize(total.unwrap_or(u64::MAX)),
                capacity: ByteSize(largest),
            }),
        }
    }

    #[allow(clippy::too_many_arguments)] // one call site each in create and create_fallback
    fn insert(
        &mut self,
        client: ClientId,
        id: ObjectId,
        (data_size, metadata_size): (u64, u64),
        block: u64,
        mem: (u32, u64),
        primary: bool,
        fallback: bool,
    ) -> Location {
        self.objects.insert(
            id,
            Entry {
                data_size,
                metadata_size,
                block,
                mem: Some(mem),
                disk: None,
                io: Io::Idle,
                sealed: false,
                deleted: false,
                creator: client,
                primary: primary.then_some(client),
                pins: 0,
                created: Instant::now(),
                error: None,
                fallback,
            },
        );
        if let Some(c) = self.clients.get_mut(&client) {
            c.creating.insert(id);
            if primary {
                c.primaries.insert(id);
            }
        }
        self.stats.created_objects += 1;
        Location {
            segment: mem.0,
            offset: mem.1,
            data_size,
            metadata_size,
        }
    }

    /// Finds `block` bytes, evicting as long as anything is evictable. Large
    /// blocks start on a page, so spilling can write them with direct I/O
    /// straight from shared memory.
    fn allocate(&mut self, block: u64) -> Option<(u32, u64)> {
        loop {
            for (i, a) in self.allocators.iter_mut().enumerate() {
                let off = if block >= LARGE_BLOCK {
                    a.allocate_aligned(block, PAGE)
                } else {
                    a.allocate(block)
                };
                if let Some(off) = off {
                    return Some((i as u32, off));
                }
            }
            if self.lru.is_empty() {
                return None;
            }
            self.evict(block.max(self.eviction_batch));
        }
    }

    /// Frees memory from least recently used evictable objects until `target`
    /// bytes are freed or nothing evictable is left: cache copies are evicted,
    /// primary copies already on disk just leave memory. Returns the bytes freed.
    pub fn evict(&mut self, target: u64) -> u64 {
        let mut freed = 0;
        while freed < target {
            let Some((id, bytes)) = self.lru.pop() else {
                break;
            };
            if self.objects.get(&id).is_some_and(|e| e.primary.is_some()) {
                self.drop_memory(&id);
            } else {
                self.free_entry(&id);
                self.evicted.push(id);
                self.stats.evicted_objects += 1;
                self.stats.evicted_bytes += bytes;
            }
            freed += bytes;
        }
        freed
    }

    /// Seals an object `client` created: it becomes immutable and readable.
    pub fn seal(&mut self, client: ClientId, id: &ObjectId) -> Result<(), StateError> {
        self.take_creating(client, id)?;
        if let Some(e) = self.objects.get_mut(id) {
            e.sealed = true;
        }
        self.settle(id);
        Ok(())
    }

    /// Gives up an object `client` is creating, freeing its space.
    pub fn abort(&mut self, client: ClientId, id: &ObjectId) -> Result<(), StateError> {
        self.take_creating(client, id)?;
        self.free_entry(id);
        Ok(())
    }

    fn take_creating(&mut self, client: ClientId, id: &ObjectId) -> Result<(), StateError> {
        if !self.objects.contains_key(id) {
            return Err(StateError::NotFound(*id));
        }
        let c = self.clients.get_mut(&client);
        if !c.is_some_and(|c| c.creating.remove(id)) {
            return Err(StateError::NotCreating(*id));
        }
        Ok(())
    }

    /// Who holds the primary pin of a sealed, undeleted object.
    pub fn primary_of(&self, id: &ObjectId) -> Option<ClientId> {
        self.objects.get(id).filter(|e| e.visible())?.primary
    }

    /// The cache copies evicted since the last call.
    pub fn take_evicted(&mut self) -> Vec<ObjectId> {
        std::mem::take(&mut self.evicted)
    }

    /// Whether the table has no entry for `id` at all: not sealed, not
    /// being created, not being deleted.
    pub fn absent(&self, id: &ObjectId) -> bool {
        !self.objects.contains_key(id)
    }

    /// Whether `id` is sealed and not deleted (in memory or spilled).
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.objects.get(id).is_some_and(Entry::visible)
    }

    /// The spill file and record of a sealed object that is only on disk
    /// (not in memory, not being restored), to read it without restoring it.
    pub fn on_disk_only(&self, id: &ObjectId) -> Option<(std::path::PathBuf, DiskLoc)> {
        let e = self.objects.get(id)?;
        if !e.visible() || e.mem.is_some() || e.io != Io::Idle || e.error.is_some() {
            return None;
        }
        let disk = e.disk?;
        Some((self.spill.as_ref()?.path(disk.file), disk))
    }

    /// Pins `id` for `client` and returns where it is, if it is readable in
    /// memory now (a spilled object must be restored first).
    pub fn get(&mut self, client: ClientId, id: &ObjectId) -> Option<Location> {
        let e = self.objects.get_mut(id).filter(|e| e.readable())?;
        let c = self.clients.get_mut(&client)?;
        e.pins += 1;
        *c.pins.entry(*id).or_default() += 1;
        self.lru.remove(id);
        self.spill_lru.remove(id);
        e.loc()
    }

    /// Drops one pin `client` holds on `id`. Returns whether a pin was held.
    pub fn release(&mut self, client: ClientId, id: &ObjectId) -> bool {
        let Some(c) = self.clients.get_mut(&client) else {
            return false;
        };
        let Some(n) = c.pins.get_mut(id) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            c.pins.remove(id);
        }
        if let Some(e) = self.objects.get_mut(id) {
            e.pins -= 1;
        }
        self.settle(id);
        true
    }

    /// Deletes a sealed object: its primary pin goes, and its memory and disk
    /// copy are freed now, or when its last reader releases it. Returns
    /// whether it existed. An unsealed object can only be aborted by its creator.
    pub fn delete(&mut self, id: &ObjectId) -> bool {
        let Some(e) = self.objects.get_mut(id).filter(|e| e.visible()) else {
            return false;
        };
        e.deleted = true;
        if let Some(p) = e.primary.take()
            && let Some(c) = self.clients.get_mut(&p)
        {
            c.primaries.remove(id);
        }
        self.settle(id);
        true
    }

    /// Makes `client` the holder of a sealed object's primary pin, taking it
    /// from whoever held it (or restoring it to a copy that had lost it).
    /// The node daemon adopts the objects its workers and drivers write, so
    /// that they outlive the process that wrote them. False if the object is
    /// unknown, unsealed or deleted.
    pub fn adopt(&mut self, client: ClientId, id: &ObjectId) -> bool {
        let Some(e) = self.objects.get_mut(id).filter(|e| e.visible()) else {
            return false;
        };
        let old = e.primary.replace(client);
        if let Some(c) = old.and_then(|p| self.clients.get_mut(&p)) {
            c.primaries.remove(id);
        }
        if let Some(c) = self.clients.get_mut(&client) {
            c.primaries.insert(*id);
        }
        self.settle(id);
        true
    }

    /// Turns the primary copy `client` holds of `id` into a cache copy,
    /// which eviction may take once nobody reads it. Only a copy in memory
    /// and not on disk is demoted (a spilled one would be freed outright);
    /// returns whether it was.
    pub fn demote(&mut self, client: ClientId, id: &ObjectId) -> bool {
        let Some(e) = self
            .objects
            .get_mut(id)
            .filter(|e| e.visible() && e.primary == Some(client))
        else {
            return false;
        };
        if e.mem.is_none() || e.disk.is_some() || e.io != Io::Idle || e.fallback {
            return false;
        }
        e.primary = None;
        if let Some(c) = self.clients.get_mut(&client) {
            c.primaries.remove(id);
        }
        self.settle(id);
        true
    }

    /// Puts an object where its state says it belongs after a change: freed
    /// if deleted (or an ownerless copy left only on disk) and idle, in the
    /// eviction or spill order if it qualifies, out of them otherwise.
    fn settle(&mut self, id: &ObjectId) {
        let Some(e) = self.objects.get(id) else {
            return;
        };
        let idle = e.pins == 0 && e.io == Io::Idle;
        let orphan_on_disk = e.sealed && e.primary.is_none() && (e.mem.is_none() || e.fallback);
        if idle && (e.deleted || orphan_on_disk) {
            self.free_entry(id);
            return;
        }
        let (evictable, spillable, block) = (e.evictable(), e.spillable(), e.block);
        if evictable {
            self.lru.push(*id, block);
        } else {
            self.lru.remove(id);
        }
        if spillable && self.spill.is_some() {
            self.spill_lru.push(*id, block);
        } else {
            self.spill_lru.remove(id);
        }
    }

    /// Frees an object's block, keeping its disk copy.
    fn drop_memory(&mut self, id: &ObjectId) {
        let Some(e) = self.objects.get_mut(id) else {
            return;
        };
        if let Some(mem) = e.mem.take() {
            let block = e.block;
            self.free_block(mem, block);
        }
        self.lru.remove(id);
        self.spill_lru.remove(id);
    }

    /// Gives a block back to its memory segment or to the fallback segment.
    fn free_block(&mut self, (seg, off): (u32, u64), block: u64) {
        match self.allocators.get_mut(seg as usize) {
            Some(a) => a.free(off, block),
            None => {
                if let Some(f) = self.fallback.as_mut() {
                    f.free(off, block);
                }
            }
        }
    }

    /// Removes an object and frees its memory and disk copy. An object with
    /// I/O under way is only marked deleted; the I/O's completion frees it.
    fn free_entry(&mut self, id: &ObjectId) {
        let Some(e) = self.objects.get_mut(id) else {
            return;
        };
        if e.io != Io::Idle {
            e.deleted = true;
            return;
        }
        let Some(e) = self.objects.remove(id) else {
            return;
        };
        self.lru.remove(id);
        self.spill_lru.remove(id);
        if let Some(mem) = e.mem {
            self.free_block(mem, e.block);
        }
        if let (Some(disk), Some(spill)) = (&e.disk, &mut self.spill) {
            spill.kill(disk);
        }
        if let Some(c) = e.primary.and_then(|p| self.clients.get_mut(&p)) {
            c.primaries.remove(id);
        }
    }

    /// Checks that every count agrees with every other (tests and stress runs).
    pub fn check_invariants(&self) {
        let mut pins: HashMap<ObjectId, u32> = HashMap::new();
        for c in self.clients.values() {
            for (id, &n) in &c.pins {
                assert!(n > 0);
                *pins.entry(*id).or_default() += n;
            }
            for id in &c.creating {
                assert!(!self.objects[id].sealed);
            }
        }
        let mut used = vec![0u64; self.allocators.len()];
        let (mut evictable, mut spillable, mut fallback_used) = (0, 0, 0);
        for (id, e) in &self.objects {
            assert_eq!(
                e.pins,
                pins.get(id).copied().unwrap_or(0),
                "pin count of {id}"
            );
            assert!(
                !(e.deleted && e.pins == 0 && e.io == Io::Idle),
                "deleted unpinned object {id} not freed"
            );
            assert!(e.mem.is_some() || e.disk.is_some(), "{id} is nowhere");
            assert!(e.sealed || e.mem.is_some(), "unsealed {id} not in memory");
            match e.mem {
                Some(_) if e.fallback => fallback_used += e.block,
                Some((seg, _)) => used[seg as usize] += e.block,
                None => {}
            }
            if e.evictable() {
                evictable += e.block;
            }
            if e.spillable() && self.spill.is_some() {
                spillable += e.block;
            }
        }
        assert_eq!(evictable, self.lru.bytes());
        assert_eq!(spillable, self.spill_lru.bytes());
        if let Some(s) = &self.spill {
            let on_disk: u64 = self
                .objects
                .values()
                .filter_map(|e| e.disk)
                .map(|d| d.header.record_len())
                .sum();
            assert_eq!(
                s.live_bytes(),
                on_disk,
                "live spill records and objects on disk disagree"
            );
        }
        for (a, used) in self
            .allocators
            .iter()
            .zip(used)
            .chain(self.fallback.iter().map(|f| (f, fallback_used)))
        {
            a.check_invariants();
            assert_eq!(a.free_bytes() + used, a.size());
        }
    }
}

#[cfg(any(test, feature = "model"))]
pub mod model;
#[cfg(test)]
mod spill_tests;
#[cfg(test)]
mod tests;
