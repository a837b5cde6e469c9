//! Arbitrary sequences of client operations on the object table of a small
//! store. After every operation the table's own invariants must hold, and a
//! small model of what clients were promised must agree with the table:
//! pinned, primary and unsealed objects are never evicted, live blocks never
//! overlap, seal/abort/release succeed exactly when the client holds what it
//! names, and a create fails as "full" only once nothing is left to evict.
//! Errors are fine; panics are bugs.
//!
//! The model is the one in `store/src/table.rs`'s unit tests, which run it
//! over seeded random operations so that CI covers it without libFuzzer.
//! Keep the two in step.

#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arbitrary::Arbitrary;
use arca_proto::store::ObjectState;
use arca_store::alloc::{ALIGN, block_len};
use arca_store::table::{ClientId, Location, Table};
use arca_store::{CreateError, ObjectId};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Up to three segments of `units * 64 + extra % 64` bytes (at most 16 KiB).
    segments: Vec<(u8, u8)>,
    /// Eviction batch in 64-byte units.
    batch: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect,
    Disconnect {
        client: u8,
    },
    Create {
        client: u8,
        id: u8,
        size: Size,
        metadata: u8,
        primary: bool,
    },
    /// Create and seal by one client, as an inline put does.
    Put {
        client: u8,
        id: u8,
        size: Size,
        metadata: u8,
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
        target: u16,
    },
    Report,
}

#[derive(Arbitrary, Debug)]
enum Size {
    Small(u8),
    Medium(u16),
    Any(u64),
}

impl Size {
    fn bytes(&self) -> u64 {
        match *self {
            Size::Small(n) => u64::from(n) * 7,
            Size::Medium(n) => u64::from(n),
            Size::Any(n) => n,
        }
    }
}

/// Objects are picked among 16 ids, so that operations collide.
fn object(n: u8) -> ObjectId {
    ObjectId::from_bytes([n % 16; ObjectId::LEN])
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
        (self.client(pick), object(n))
    }
}

/// Objects in the table by id: state, data size, metadata size, block size.
fn listed(t: &Table) -> HashMap<ObjectId, (ObjectState, u64, u64, u64)> {
    t.list()
        .into_iter()
        .map(|o| {
            let id = ObjectId::from_slice(&o.id).expect("listed id is 20 bytes");
            let state = ObjectState::try_from(o.state).expect("listed state is known");
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
        (Err(CreateError::Deleting(_)), Some(ObjectState::Deleting)) => {}
        (Err(CreateError::Exists(_)), Some(s)) => assert!(s != ObjectState::Deleting),
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
            if m.connected.contains(&c) {
                m.creating.insert((c, id));
                if primary {
                    m.primaries.insert(id, c);
                }
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
            ref size,
            metadata,
            primary,
        } => {
            let c = m.connected_client(client);
            model_create(
                t,
                m,
                c,
                object(n),
                (size.bytes(), u64::from(metadata), primary),
            );
        }
        Op::Put {
            client,
            id: n,
            ref size,
            metadata,
            primary,
        } => {
            let c = m.connected_client(client);
            model_create(
                t,
                m,
                c,
                object(n),
                (size.bytes(), u64::from(metadata), primary),
            );
            model_seal(t, m, c, object(n));
        }
        Op::Seal { client, id: n } => {
            let c = m.creator(client, object(n));
            model_seal(t, m, c, object(n));
        }
        Op::Abort { client, id: n } => {
            let (c, id) = (m.creator(client, object(n)), object(n));
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
            let (c, id) = (m.client(client), object(n));
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
            let id = object(n);
            let readable = t.contains(&id);
            assert_eq!(t.delete(&id), readable, "delete of {id}");
            if readable {
                m.primaries.remove(&id);
                assert!(!t.contains(&id));
            }
        }
        Op::Evict { target } => {
            let before = t.totals().evictable;
            let freed = t.evict(u64::from(target));
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
            matches!(state, Some(ObjectState::Sealed | ObjectState::Deleting)),
            "{id} pinned by {c} but {state:?}"
        );
    }
    for &(c, id) in &m.creating {
        let state = objects.get(&id).map(|o| o.0);
        assert_eq!(
            state,
            Some(ObjectState::Creating),
            "{id} being created by {c}"
        );
    }
    for (&id, &c) in &m.primaries {
        let state = objects.get(&id).map(|o| o.0);
        assert!(
            matches!(state, Some(ObjectState::Creating | ObjectState::Sealed)),
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

fuzz_target!(|input: Input| {
    let sizes: Vec<u64> = input
        .segments
        .iter()
        .take(3)
        .map(|&(units, extra)| u64::from(units) * ALIGN + u64::from(extra) % ALIGN)
        .collect();
    let mut t = Table::new(&sizes, u64::from(input.batch) * ALIGN);
    let mut m = Model {
        segment_sizes: sizes.iter().map(|s| s - s % ALIGN).collect(),
        ..Model::default()
    };
    for op in [Op::Connect, Op::Connect].iter().chain(&input.ops) {
        apply(&mut t, &mut m, op);
        check(&t, &m);
    }
});
