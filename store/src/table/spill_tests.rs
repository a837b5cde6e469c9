//! Spill, restore and eviction under random interleavings, with the disk I/O
//! faked: spill and restore jobs finish (or fail) in any order relative to
//! puts, gets, releases, deletes, disconnects and evictions. After every step
//! the table's invariants hold (allocator, pins, eviction and spill orders,
//! live spill records), and no primary copy whose owner is connected is lost.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::*;
use crate::spill::record::Header;
use crate::spill::{DiskLoc, SpillConfig, SpillFiles};

const CLIENTS: u8 = 3;
const IDS: u8 = 24;

#[derive(Debug, Clone)]
enum Op {
    Put {
        client: u8,
        id: u8,
        size: u16,
        primary: bool,
    },
    Get {
        client: u8,
        id: u8,
    },
    Release {
        client: u8,
        id: u8,
    },
    Delete {
        id: u8,
    },
    Reconnect {
        client: u8,
    },
    StartSpill {
        target: u16,
    },
    FinishSpill {
        ok: bool,
    },
    Restore {
        id: u8,
    },
    FinishRestore {
        ok: bool,
    },
    Evict {
        target: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let c = || 0..CLIENTS;
    let i = || 0..IDS;
    prop_oneof![
        6 => (c(), i(), 0u16..3000, prop::bool::weighted(0.7)).prop_map(|(client, id, size, primary)| Op::Put { client, id, size, primary }),
        4 => (c(), i()).prop_map(|(client, id)| Op::Get { client, id }),
        4 => (c(), i()).prop_map(|(client, id)| Op::Release { client, id }),
        2 => i().prop_map(|id| Op::Delete { id }),
        1 => c().prop_map(|client| Op::Reconnect { client }),
        3 => (0u16..8000).prop_map(|target| Op::StartSpill { target }),
        3 => prop::bool::weighted(0.95).prop_map(|ok| Op::FinishSpill { ok }),
        3 => i().prop_map(|id| Op::Restore { id }),
        3 => prop::bool::weighted(0.95).prop_map(|ok| Op::FinishRestore { ok }),
        1 => (0u16..8000).prop_map(|target| Op::Evict { target }),
    ]
}

fn id(n: u8) -> ObjectId {
    ObjectId::from_bytes([n; 20])
}

struct Harness {
    t: Table,
    clients: Vec<ClientId>,
    /// Pins each client slot holds, by object.
    pins: Vec<BTreeMap<ObjectId, u32>>,
    /// Primary copies whose owner is connected: these must never be lost.
    owned: BTreeMap<ObjectId, usize>,
    spills: VecDeque<SpillJob>,
    restores: VecDeque<RestoreJob>,
}

impl Harness {
    fn new(dir: &std::path::Path) -> Self {
        let files = SpillFiles::open(SpillConfig::new(dir)).unwrap();
        let mut t = Table::with_spill(&[16 << 10], 1 << 10, files).with_fallback(8 << 10);
        let clients = (0..CLIENTS)
            .map(|i| t.connect(u32::from(i), format!("c{i}")))
            .collect();
        Self {
            t,
            clients,
            pins: vec![BTreeMap::new(); usize::from(CLIENTS)],
            owned: BTreeMap::new(),
            spills: VecDeque::new(),
            restores: VecDeque::new(),
        }
    }

    fn apply(&mut self, op: &Op) {
        let t = &mut self.t;
        match *op {
            Op::Put {
                client,
                id: n,
                size,
                primary,
            } => {
                let c = self.clients[usize::from(client)];
                let created = match t.create(c, id(n), u64::from(size), 7, primary) {
                    Err(CreateError::Full(_)) if primary => t
                        .create_fallback(c, id(n), u64::from(size), 7)
                        .is_some_and(|r| r.is_ok()),
                    r => r.is_ok(),
                };
                if created {
                    t.seal(c, &id(n)).unwrap();
                    if primary {
                        self.owned.insert(id(n), usize::from(client));
                    }
                }
            }
            Op::Get { client, id: n } => {
                let slot = usize::from(client);
                if t.get(self.clients[slot], &id(n)).is_some() {
                    *self.pins[slot].entry(id(n)).or_default() += 1;
                }
            }
            Op::Release { client, id: n } => {
                let slot = usize::from(client);
                if let Some(count) = self.pins[slot].get_mut(&id(n)) {
                    assert!(t.release(self.clients[slot], &id(n)));
                    *count -= 1;
                    if *count == 0 {
                        self.pins[slot].remove(&id(n));
                    }
                }
            }
            Op::Delete { id: n } => {
                t.delete(&id(n));
                self.owned.remove(&id(n));
            }
            Op::Reconnect { client } => {
                let slot = usize::from(client);
                t.disconnect(self.clients[slot]);
                self.pins[slot].clear();
                self.owned.retain(|_, &mut s| s != slot);
                self.clients[slot] = t.connect(u32::from(client), format!("c{client} again"));
            }
            Op::StartSpill { target } => {
                if let Some(job) = t.start_spill(u64::from(target)) {
                    self.spills.push_back(job);
                }
            }
            Op::FinishSpill { ok } => {
                if let Some(job) = self.spills.pop_front() {
                    let written = if ok {
                        let mut at = 0;
                        let locs: Vec<DiskLoc> = job
                            .objects
                            .iter()
                            .map(|(oid, loc)| {
                                let header =
                                    Header::for_body(*oid, loc.data_size, loc.metadata_size, &[]);
                                let d = DiskLoc {
                                    file: job.file,
                                    offset: at,
                                    header,
                                };
                                at += header.record_len();
                                d
                            })
                            .collect();
                        Ok((locs, at))
                    } else {
                        Err("fake write failure".to_string())
                    };
                    t.finish_spill(job, written, Duration::ZERO);
                }
            }
            Op::Restore { id: n } => {
                if let RestoreStep::Start(job) = t.begin_restore(&id(n)) {
                    self.restores.push_back(job);
                }
            }
            Op::FinishRestore { ok } => {
                if let Some(job) = self.restores.pop_front() {
                    let result = if ok {
                        Ok(())
                    } else {
                        Err("fake checksum mismatch".to_string())
                    };
                    t.finish_restore(&job.id, result, Duration::ZERO);
                }
            }
            Op::Evict { target } => {
                t.evict(u64::from(target));
            }
        }
        // Files whose records all died would be unlinked by the server.
        t.take_dead_files();
    }

    fn check(&self) {
        self.t.check_invariants();
        for (oid, slot) in &self.owned {
            assert!(
                self.t.contains(oid),
                "primary copy {oid} of connected client slot {slot} was lost"
            );
        }
    }

    /// Lets every job finish, then reads every owned object back: each is
    /// readable (restored if needed) or was marked unreadable by a failed restore.
    fn drain_and_read_back(&mut self) {
        while !self.spills.is_empty() {
            self.apply(&Op::FinishSpill { ok: true });
        }
        while !self.restores.is_empty() {
            self.apply(&Op::FinishRestore { ok: true });
        }
        let owned: Vec<(ObjectId, usize)> = self.owned.iter().map(|(&o, &s)| (o, s)).collect();
        for (oid, slot) in owned {
            // Room for the restore: drop every pin first.
            for (s, pins) in self.pins.iter_mut().enumerate() {
                for (p, n) in std::mem::take(pins) {
                    for _ in 0..n {
                        self.t.release(self.clients[s], &p);
                    }
                }
            }
            let step = self.t.begin_restore(&oid);
            match step {
                RestoreStep::Start(job) => self.t.finish_restore(&job.id, Ok(()), Duration::ZERO),
                RestoreStep::Ready | RestoreStep::Failed(_) | RestoreStep::NoSpace => {}
                other => panic!("owned object {oid} of slot {slot}: {other:?}"),
            }
            self.check();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(96),
        rng_seed: RngSeed::Fixed(0x5B11),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn spill_and_restore_interleavings_keep_invariants(ops in proptest::collection::vec(op(), 1..400)) {
        let dir = std::env::temp_dir().join(format!("arca-spill-model-{}", std::process::id()));
        let mut h = Harness::new(&dir);
        for op in &ops {
            h.apply(op);
            h.check();
        }
        h.drain_and_read_back();
        if std::env::var("ARCA_SPILL_MODEL_STATS").is_ok() {
            let t = h.t.totals();
            eprintln!("spilled {} restored {} on-disk-only {} in fallback {}", t.spilled_total_objects, t.restored_total_objects, t.spilled_objects, t.fallback_bytes);
        }
        drop(h);
        // Each case's files went with its harness; the directory stays.
        let _ = std::fs::remove_dir(&dir);
    }
}
