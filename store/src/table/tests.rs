//! Unit tests of the object table, and a seeded model-checked run of random
//! operations (the deterministic twin of `fuzz/fuzz_targets/table_ops.rs`).

use super::*;

const KIB: u64 = 1024;

fn id(n: u8) -> ObjectId {
    ObjectId::from_bytes([n; 20])
}

fn put(
    t: &mut Table,
    c: ClientId,
    n: u8,
    size: u64,
    primary: bool,
) -> Result<Location, CreateError> {
    let loc = t.create(c, id(n), size, 0, primary)?;
    t.seal(c, &id(n)).unwrap();
    Ok(loc)
}

#[test]
fn lifecycle() {
    let mut t = Table::new(&[64 * KIB], 0);
    let c = t.connect(1, "a".into());
    t.create(c, id(1), 100, 10, false).unwrap();
    assert!(!t.contains(&id(1)));
    assert_eq!(t.get(c, &id(1)), None, "unsealed objects are not readable");
    assert!(matches!(
        t.create(c, id(1), 1, 0, false),
        Err(CreateError::Exists(_))
    ));
    t.seal(c, &id(1)).unwrap();
    assert!(matches!(t.seal(c, &id(1)), Err(StateError::NotCreating(_))));
    assert!(t.contains(&id(1)));
    let loc = t.get(c, &id(1)).unwrap();
    assert_eq!((loc.data_size, loc.metadata_size), (100, 10));
    assert!(t.delete(&id(1)));
    assert!(
        !t.contains(&id(1)),
        "deleted objects are gone for readers at once"
    );
    assert!(matches!(
        t.create(c, id(1), 1, 0, false),
        Err(CreateError::Deleting(_))
    ));
    assert!(t.release(c, &id(1)));
    t.check_invariants();
    assert_eq!(t.totals().allocated, 0, "freed on the last release");
}

#[test]
fn abort_and_disconnect_reclaim() {
    let mut t = Table::new(&[64 * KIB], 0);
    let a = t.connect(1, "a".into());
    let b = t.connect(2, "b".into());
    t.create(a, id(1), 1000, 0, true).unwrap();
    assert!(matches!(
        t.abort(b, &id(1)),
        Err(StateError::NotCreating(_))
    ));
    t.abort(a, &id(1)).unwrap();
    assert_eq!(t.totals().allocated, 0);
    put(&mut t, a, 2, 1000, true).unwrap();
    t.create(a, id(3), 1000, 0, false).unwrap();
    t.get(b, &id(2)).unwrap();
    t.disconnect(a);
    t.check_invariants();
    let tot = t.totals();
    assert_eq!((tot.creating, tot.primary), (0, 0));
    assert_eq!(tot.pinned, 1024, "b still pins object 2");
    t.disconnect(b);
    t.check_invariants();
    assert_eq!(
        t.totals().evictable,
        1024,
        "unpinned after both left, still cached"
    );
}

#[test]
fn evicts_least_recently_released_in_batches() {
    let mut t = Table::new(&[10 * KIB], 3 * KIB);
    let c = t.connect(1, "a".into());
    for n in 0..10 {
        put(&mut t, c, n, KIB, false).unwrap();
    }
    // Touch 0 and 1: they become the most recently used.
    for n in [0, 1] {
        t.get(c, &id(n)).unwrap();
        t.release(c, &id(n));
    }
    put(&mut t, c, 10, KIB, false).unwrap();
    // One create evicted a batch of three: 2, 3, 4.
    for n in 2..5 {
        assert!(!t.contains(&id(n)), "{n} should be evicted");
    }
    for n in [0, 1, 5, 6, 10] {
        assert!(t.contains(&id(n)), "{n} should stay");
    }
    assert_eq!(t.stats().evicted_objects, 3);
    t.check_invariants();
}

#[test]
fn pinned_and_primary_are_never_evicted() {
    let mut t = Table::new(&[4 * KIB], 0);
    let c = t.connect(7, "holder".into());
    put(&mut t, c, 1, KIB, true).unwrap();
    put(&mut t, c, 2, KIB, false).unwrap();
    t.get(c, &id(2)).unwrap();
    put(&mut t, c, 3, KIB, false).unwrap();
    put(&mut t, c, 4, KIB, false).unwrap();
    put(&mut t, c, 5, 2 * KIB, false).unwrap();
    assert!(t.contains(&id(1)) && t.contains(&id(2)));
    let err = t.create(c, id(6), 3 * KIB, 0, false).unwrap_err();
    let CreateError::Full(msg) = err else {
        panic!("{err:?}")
    };
    assert!(msg.contains("pid 7"), "{msg}");
    assert!(msg.contains("raise --memory"), "{msg}");
    t.check_invariants();
}

#[test]
fn fragmentation_is_resolved_by_evicting() {
    let mut t = Table::new(&[8 * KIB], 0);
    let c = t.connect(1, "a".into());
    for n in 0..8 {
        put(&mut t, c, n, KIB, n % 2 == 0).unwrap();
    }
    // Half the store is evictable but no two free blocks are adjacent: a 2 KiB create
    // cannot fit until evictions leave a contiguous hole, which never happens here
    // because every other block is primary. A 1 KiB create does fit.
    assert!(matches!(
        t.create(c, id(20), 2 * KIB, 0, false),
        Err(CreateError::Full(_))
    ));
    put(&mut t, c, 21, KIB, false).unwrap();
    // Deleting the primaries lets eviction build contiguous space again.
    for n in (0..8).step_by(2) {
        t.delete(&id(n));
    }
    put(&mut t, c, 22, 6 * KIB, false).unwrap();
    t.check_invariants();
}

#[test]
fn too_large_and_overflow() {
    let mut t = Table::new(&[4 * KIB], 0);
    let c = t.connect(1, "a".into());
    assert!(matches!(
        t.create(c, id(1), 4 * KIB + 1, 0, false),
        Err(CreateError::TooLarge { .. })
    ));
    assert!(matches!(
        t.create(c, id(1), u64::MAX, 10, false),
        Err(CreateError::TooLarge { .. })
    ));
    put(&mut t, c, 1, 4 * KIB, false).unwrap();
}

// The deterministic half of `fuzz/fuzz_targets/table_ops.rs`: seeded random
// operations checked against the same model, so CI covers the table
// without libFuzzer. Keep the two in step.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use crate::alloc::ALIGN;

/// Objects are picked among 16 ids, so that operations collide.
const IDS: u8 = 16;

#[derive(Debug, Clone)]
enum Op {
    Connect,
    Disconnect {
        client: u8,
    },
    Create {
        client: u8,
        id: u8,
        size: u64,
        metadata: u64,
        primary: bool,
    },
    /// Create and seal by one client, as an inline put does.
    Put {
        client: u8,
        id: u8,
        size: u64,
        metadata: u64,
        primary: bool,
    },
    Seal {
        client: u8,
        id: u8,
    },
    Abort {
        client: u8,
        id: u8,
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
    Evict {
        target: u64,
    },
    Report,
}

fn op() -> impl Strategy<Value = Op> {
    let size = || prop_oneof![8 => 0u64..1500, 1 => 0u64..20_000, 1 => any::<u64>()];
    let pair = || (any::<u8>(), 0..IDS);
    prop_oneof![
        2 => Just(Op::Connect),
        1 => any::<u8>().prop_map(|client| Op::Disconnect { client }),
        2 => (pair(), size(), 0u64..256, prop::bool::weighted(0.2)).prop_map(
            |((client, id), size, metadata, primary)| Op::Create { client, id, size, metadata, primary }
        ),
        6 => (pair(), size(), 0u64..256, prop::bool::weighted(0.2)).prop_map(
            |((client, id), size, metadata, primary)| Op::Put { client, id, size, metadata, primary }
        ),
        3 => pair().prop_map(|(client, id)| Op::Seal { client, id }),
        2 => pair().prop_map(|(client, id)| Op::Abort { client, id }),
        5 => pair().prop_map(|(client, id)| Op::Get { client, id }),
        5 => pair().prop_map(|(client, id)| Op::Release { client, id }),
        3 => (0..IDS).prop_map(|id| Op::Delete { id }),
        1 => (0u64..4 * KIB).prop_map(|target| Op::Evict { target }),
        1 => Just(Op::Report),
    ]
}

/// What the table promised, tracked independently of it. Ordered
/// collections, so that a seed always picks the same clients and pins.
#[derive(Default)]
struct Model {
    issued: Vec<ClientId>,
    connected: BTreeSet<ClientId>,
    pins: BTreeMap<(ClientId, ObjectId), u32>,
    creating: BTreeSet<(ClientId, ObjectId)>,
    primaries: BTreeMap<ObjectId, ClientId>,
    /// Where every successful create put its object (the latest one per id).
    locs: HashMap<ObjectId, Location>,
    segment_sizes: Vec<u64>,
}

impl Model {
    /// Mostly a connected client; sometimes any id the table issued, or
    /// 0, which it never issues.
    fn client(&self, pick: u8) -> ClientId {
        if !pick.is_multiple_of(8) && !self.connected.is_empty() {
            let i = usize::from(pick / 8) % self.connected.len();
            return *self.connected.iter().nth(i).unwrap();
        }
        let i = usize::from(pick) % (self.issued.len() + 1);
        self.issued.get(i).copied().unwrap_or(0)
    }

    /// For creates: a connected client if there is one. (The table takes
    /// a create from a client it does not know, but nothing can seal,
    /// abort or evict that object afterwards, and a few such objects fill
    /// a small store for the rest of the run. The server only creates
    /// for connected clients.)
    fn connected_client(&self, pick: u8) -> ClientId {
        match self
            .connected
            .iter()
            .nth(usize::from(pick) % self.connected.len().max(1))
        {
            Some(&c) => c,
            None => self.client(pick),
        }
    }

    /// For seal and abort: usually the client creating `id`, if any.
    fn creator(&self, pick: u8, id: ObjectId) -> ClientId {
        let creator = self.creating.iter().find(|&&(_, i)| i == id);
        match creator {
            Some(&(c, _)) if pick % 2 == 1 => c,
            _ => self.client(pick),
        }
    }

    /// For release: usually a pin some client holds.
    fn pin(&self, pick: u8, n: u8) -> (ClientId, ObjectId) {
        if pick % 2 == 1 && !self.pins.is_empty() {
            return *self
                .pins
                .keys()
                .nth(usize::from(n) % self.pins.len())
                .unwrap();
        }
        (self.client(pick), id(n % IDS))
    }
}

/// Objects in the table by id: state, data size, metadata size, block size.
fn listed(t: &Table) -> HashMap<ObjectId, (pb::ObjectState, u64, u64, u64)> {
    t.list()
        .into_iter()
        .map(|o| {
            let id = ObjectId::from_slice(&o.id).unwrap();
            let state = pb::ObjectState::try_from(o.state).unwrap();
            (id, (state, o.data_size, o.metadata_size, o.allocated))
        })
        .collect()
}

fn model_create(
    t: &mut Table,
    m: &mut Model,
    c: ClientId,
    id: ObjectId,
    (size, metadata, primary): (u64, u64, bool),
) {
    let before = listed(t).get(&id).map(|o| o.0);
    let largest = m.segment_sizes.iter().copied().max().unwrap_or(0);
    let too_large = size
        .checked_add(metadata)
        .and_then(block_len)
        .is_none_or(|b| b > largest);
    let r = t.create(c, id, size, metadata, primary);
    match (&r, before) {
        (Err(CreateError::UnknownClient(_)), _) => assert!(!m.connected.contains(&c)),
        (Err(CreateError::Deleting(_)), Some(pb::ObjectState::Deleting)) => {}
        (Err(CreateError::Exists(_)), Some(s)) => assert!(s != pb::ObjectState::Deleting),
        (Err(CreateError::TooLarge { .. }), None) => assert!(too_large),
        (Err(CreateError::Full(msg)), None) => {
            assert!(!too_large);
            assert!(msg.contains("raise --memory"), "{msg}");
            assert_eq!(
                t.totals().evictable,
                0,
                "full while objects could be evicted"
            );
        }
        (Ok(loc), None) => {
            assert!(!too_large);
            assert_eq!((loc.data_size, loc.metadata_size), (size, metadata));
            m.locs.insert(id, *loc);
            assert!(m.connected.contains(&c), "create by unknown client {c}");
            m.creating.insert((c, id));
            if primary {
                m.primaries.insert(id, c);
            }
        }
        (r, before) => panic!("create of {id} (was {before:?}) returned {r:?}"),
    }
}

fn model_seal(t: &mut Table, m: &mut Model, c: ClientId, id: ObjectId) {
    let r = t.seal(c, &id);
    assert_eq!(
        r.is_ok(),
        m.creating.remove(&(c, id)),
        "seal of {id} by {c}: {r:?}"
    );
    if r.is_ok() {
        assert!(t.contains(&id));
    }
}

fn apply(t: &mut Table, m: &mut Model, op: &Op) {
    match *op {
        Op::Connect => {
            let n = m.issued.len();
            let c = t.connect(4000 + n as u32, format!("client {n}"));
            assert!(c != 0 && !m.issued.contains(&c), "client id {c} reused");
            m.issued.push(c);
            m.connected.insert(c);
        }
        Op::Disconnect { client } => {
            let c = m.client(client);
            t.disconnect(c);
            m.connected.remove(&c);
            m.pins.retain(|&(pc, _), _| pc != c);
            m.creating.retain(|&(cc, _)| cc != c);
            m.primaries.retain(|_, &mut pc| pc != c);
        }
        Op::Create {
            client,
            id: n,
            size,
            metadata,
            primary,
        } => {
            let c = m.connected_client(client);
            model_create(t, m, c, id(n), (size, metadata, primary));
        }
        Op::Put {
            client,
            id: n,
            size,
            metadata,
            primary,
        } => {
            let c = m.connected_client(client);
            model_create(t, m, c, id(n), (size, metadata, primary));
            model_seal(t, m, c, id(n));
        }
        Op::Seal { client, id: n } => {
            let c = m.creator(client, id(n));
            model_seal(t, m, c, id(n));
        }
        Op::Abort { client, id: n } => {
            let (c, id) = (m.creator(client, id(n)), id(n));
            let r = t.abort(c, &id);
            assert_eq!(
                r.is_ok(),
                m.creating.remove(&(c, id)),
                "abort of {id} by {c}: {r:?}"
            );
            if r.is_ok() {
                m.primaries.remove(&id);
                assert!(
                    !listed(t).contains_key(&id),
                    "aborted object {id} still listed"
                );
            }
        }
        Op::Get { client, id: n } => {
            let (c, id) = (m.client(client), id(n));
            let readable = t.contains(&id);
            let r = t.get(c, &id);
            assert_eq!(
                r.is_some(),
                readable && m.connected.contains(&c),
                "get of {id} by {c}"
            );
            if let Some(loc) = r {
                assert_eq!(
                    Some(&loc),
                    m.locs.get(&id),
                    "get returned another place than create"
                );
                *m.pins.entry((c, id)).or_default() += 1;
            }
        }
        Op::Release { client, id: n } => {
            let (c, id) = m.pin(client, n);
            let held = m.pins.get(&(c, id)).copied().unwrap_or(0);
            assert_eq!(t.release(c, &id), held > 0, "release of {id} by {c}");
            if held == 1 {
                m.pins.remove(&(c, id));
            } else if held > 1 {
                m.pins.insert((c, id), held - 1);
            }
        }
        Op::Delete { id: n } => {
            let id = id(n);
            let readable = t.contains(&id);
            assert_eq!(t.delete(&id), readable, "delete of {id}");
            if readable {
                m.primaries.remove(&id);
                assert!(!t.contains(&id));
            }
        }
        Op::Evict { target } => {
            let before = t.totals().evictable;
            let freed = t.evict(target);
            assert_eq!(t.totals().evictable, before - freed);
        }
        Op::Report => {
            let report = t.memory_report();
            let totals = report.totals.unwrap();
            assert_eq!(totals.objects as usize, report.objects.len());
            assert_eq!(report.clients.len(), m.connected.len());
        }
    }
}

/// The table's invariants, the model's promises (pinned, primary and
/// unsealed objects are never evicted), and no two live blocks overlap.
fn check(t: &Table, m: &Model) {
    t.check_invariants();
    let objects = listed(t);
    for &(c, id) in m.pins.keys() {
        let state = objects.get(&id).map(|o| o.0);
        assert!(
            matches!(
                state,
                Some(pb::ObjectState::Sealed | pb::ObjectState::Deleting)
            ),
            "{id} pinned by {c} but {state:?}"
        );
    }
    for &(c, id) in &m.creating {
        let state = objects.get(&id).map(|o| o.0);
        assert_eq!(
            state,
            Some(pb::ObjectState::Creating),
            "{id} being created by {c}"
        );
    }
    for (&id, &c) in &m.primaries {
        let state = objects.get(&id).map(|o| o.0);
        assert!(
            matches!(
                state,
                Some(pb::ObjectState::Creating | pb::ObjectState::Sealed)
            ),
            "{id} held as primary by {c} but {state:?}"
        );
    }
    let mut blocks = Vec::with_capacity(objects.len());
    for (id, &(_, data, meta, allocated)) in &objects {
        let loc = m.locs[id];
        assert_eq!((loc.data_size, loc.metadata_size), (data, meta), "{id}");
        assert_eq!(Some(allocated), block_len(data + meta), "{id}");
        let size = m.segment_sizes[loc.segment as usize];
        assert!(
            loc.offset.is_multiple_of(ALIGN) && loc.offset + allocated <= size,
            "{id} at {loc:?}"
        );
        blocks.push((loc.segment, loc.offset, allocated));
    }
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        if w[0].0 == w[1].0 {
            assert!(w[0].1 + w[0].2 <= w[1].1, "blocks overlap: {w:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(128),
        rng_seed: RngSeed::Fixed(0xA7CA),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Seeded random operations over a small store of one to three
    /// segments (unaligned sizes included): every invariant and every
    /// promise to clients holds after every operation.
    #[test]
    fn random_operations_keep_invariants(
        segments in proptest::collection::vec((8u64..64, 0u64..64), 1..=3),
        batch in 0u64..32,
        ops in proptest::collection::vec(op(), 1..500),
    ) {
        let sizes: Vec<u64> = segments.iter().map(|&(units, extra)| units * ALIGN + extra).collect();
        let mut t = Table::new(&sizes, batch * ALIGN);
        let mut m = Model {
            segment_sizes: sizes.iter().map(|s| s - s % ALIGN).collect(),
            ..Model::default()
        };
        for op in [Op::Connect, Op::Connect].iter().chain(&ops) {
            apply(&mut t, &mut m, op);
            check(&t, &m);
        }
    }
}
