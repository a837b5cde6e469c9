//! What the table tells people: totals, the object list, the `arca memory`
//! report, and the text of the store-full error.

use std::time::Instant;

use arca_proto::store as pb;

use super::{ClientId, Entry, Io, Table};
use crate::alloc::Allocator;
use crate::id::ObjectId;
use crate::size::ByteSize;

impl Table {
    /// Totals over the whole store.
    pub fn totals(&self) -> pb::StoreTotals {
        let mut t = pb::StoreTotals {
            capacity: self.capacity(),
            evictable: self.lru.bytes(),
            objects: self.objects.len() as u64,
            evicted_objects: self.stats.evicted_objects,
            evicted_bytes: self.stats.evicted_bytes,
            created_objects: self.stats.created_objects,
            ..Default::default()
        };
        t.fallback_capacity = self.fallback.as_ref().map_or(0, Allocator::size);
        for e in self.objects.values() {
            if e.fallback {
                t.fallback_bytes += e.block;
            } else if e.mem.is_some() {
                t.allocated += e.block;
                if e.pins > 0 {
                    t.pinned += e.block;
                }
                if e.primary.is_some() {
                    t.primary += e.block;
                }
                if !e.sealed {
                    t.creating += e.block;
                }
            } else {
                t.spilled_objects += 1;
                t.spilled_bytes += e.data_size + e.metadata_size;
            }
        }
        if let Some(s) = &self.spill {
            let st = s.stats();
            t.spill_files = s.file_count() as u64;
            t.spill_disk_bytes = s.disk_bytes();
            t.spilled_total_objects = st.spilled_objects;
            t.spilled_total_bytes = st.spilled_bytes;
            t.spill_seconds = st.spill_time.as_secs_f64();
            t.restored_total_objects = st.restored_objects;
            t.restored_total_bytes = st.restored_bytes;
            t.restore_seconds = st.restore_time.as_secs_f64();
            t.failed_spills = st.failed_spills;
            t.spill_stopped = s.blocked().unwrap_or_default().to_string();
            t.spill_dir = s.dir().display().to_string();
        }
        t
    }

    fn object_info(&self, id: &ObjectId, e: &Entry, now: Instant) -> pb::ObjectInfo {
        let pid = |c: ClientId| self.clients.get(&c).map_or(0, |c| c.pid);
        let mut pins: Vec<pb::PinInfo> = self
            .clients
            .iter()
            .filter_map(|(&cid, c)| {
                c.pins.get(id).map(|&count| pb::PinInfo {
                    client: cid,
                    pid: c.pid,
                    count,
                })
            })
            .collect();
        pins.sort_by_key(|p| p.client);
        let spill_file = match (&e.disk, &self.spill) {
            (Some(d), Some(s)) => s.path(d.file).display().to_string(),
            (None, Some(s)) if e.fallback => s.fallback_path().display().to_string(),
            _ => String::new(),
        };
        pb::ObjectInfo {
            id: id.as_bytes().to_vec().into(),
            data_size: e.data_size,
            metadata_size: e.metadata_size,
            allocated: e.block,
            state: if !e.sealed {
                pb::ObjectState::Creating
            } else if e.deleted {
                pb::ObjectState::Deleting
            } else {
                pb::ObjectState::Sealed
            } as i32,
            pins,
            primary_client: e.primary.unwrap_or(0),
            primary_pid: e.primary.map_or(0, pid),
            age_ms: now.duration_since(e.created).as_millis() as u64,
            creator_client: e.creator,
            creator_pid: pid(e.creator),
            in_memory: e.mem.is_some() && e.io != Io::Restoring && !e.fallback,
            on_disk: e.disk.is_some() || e.fallback,
            spill_file,
            error: e.error.clone().unwrap_or_default(),
        }
    }

    /// Every object, largest first.
    pub fn list(&self) -> Vec<pb::ObjectInfo> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .objects
            .iter()
            .map(|(id, e)| self.object_info(id, e, now))
            .collect();
        v.sort_by(|a, b| b.allocated.cmp(&a.allocated).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Objects, clients and totals: what `arca memory` prints.
    pub fn memory_report(&self) -> pb::MemoryReport {
        let now = Instant::now();
        let in_memory = |id: &ObjectId| {
            self.objects
                .get(id)
                .filter(|e| e.mem.is_some() && !e.fallback)
                .map(|e| e.block)
        };
        let mut clients: Vec<pb::ClientInfo> = self
            .clients
            .iter()
            .map(|(&cid, c)| pb::ClientInfo {
                client: cid,
                pid: c.pid,
                name: c.name.clone(),
                pinned_bytes: c.pins.keys().filter_map(in_memory).sum(),
                primary_bytes: c.primaries.iter().filter_map(in_memory).sum(),
                creating_bytes: c.creating.iter().filter_map(in_memory).sum(),
                connected_ms: now.duration_since(c.connected).as_millis() as u64,
            })
            .collect();
        clients.sort_by_key(|c| c.client);
        pb::MemoryReport {
            objects: self.list(),
            clients,
            totals: Some(self.totals()),
        }
    }

    /// The store-full text for bringing `id` back into memory.
    pub fn no_room_message(&self, id: &ObjectId) -> String {
        self.full_message(self.objects.get(id).map_or(0, |e| e.block))
    }

    /// The `ObjectStoreFull` text: what holds the memory and what to do.
    pub(super) fn full_message(&self, wanted: u64) -> String {
        let t = self.totals();
        let free: u64 = self.allocators.iter().map(Allocator::free_bytes).sum();
        let largest_free = self
            .allocators
            .iter()
            .map(Allocator::largest_free)
            .max()
            .unwrap_or(0);
        let report = self.memory_report();
        let holders = |bytes: fn(&pb::ClientInfo) -> u64, what: &str| -> String {
            let held: Vec<&pb::ClientInfo> =
                report.clients.iter().filter(|c| bytes(c) > 0).collect();
            let total: u64 = held.iter().map(|c| bytes(c)).sum();
            let mut s = format!(
                "{} {what} by {} client{}",
                ByteSize(total),
                held.len(),
                if held.len() == 1 { "" } else { "s" }
            );
            if let Some(top) = held.iter().max_by_key(|c| bytes(c)) {
                s += &format!(
                    " (largest: pid {} {:?}, {})",
                    top.pid,
                    top.name,
                    ByteSize(bytes(top))
                );
            }
            s
        };
        let spill = match &self.spill {
            None => String::new(),
            Some(s) => match s.blocked() {
                Some(why) => format!(", spilling stopped: {why}"),
                None if self.spill_lru.is_empty() => ", nothing left to spill".to_string(),
                None => format!(", {} waiting to spill", ByteSize(self.spill_lru.bytes())),
            },
        };
        format!(
            "object store full: cannot allocate {} of {} ({} free, largest free block {}): {}, {}, {} being created, {} evictable{spill}; \
             release references (drop buffers), delete objects, or raise --memory",
            ByteSize(wanted),
            ByteSize(t.capacity),
            ByteSize(free),
            ByteSize(largest_free),
            holders(|c| c.pinned_bytes, "pinned"),
            holders(|c| c.primary_bytes, "held as primary copies"),
            ByteSize(t.creating),
            ByteSize(t.evictable),
        )
    }
}
