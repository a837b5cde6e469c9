//! A model of what the table promises clients, checked against the table
//! after every operation: the table's own invariants, pinned, primary and
//! unsealed objects never evicted, seal/abort/release succeeding exactly when
//! the client holds what it names, `get` returning the place `create` gave,
//! live blocks never overlapping, and "full" only once nothing is evictable.
//!
//! Shared by the seeded random-operations unit test and the `table_ops` fuzz
//! target (feature `model`), which differ only in how they pick operations.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arca_proto::store as pb;

use super::{ClientId, Location, Table};
use crate::alloc::{ALIGN, block_len};
use crate::error::CreateError;
use crate::id::ObjectId;

/// Object `n` of the [`IDS`] the operations pick among.
pub fn id(n: u8) -> ObjectId {
    ObjectId::from_bytes([n % IDS; ObjectId::LEN])
}

/// Objects are picked among 16 ids, so that operations collide.
pub const IDS: u8 = 16;

/// One client operation.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub enum Op {
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

/// What the table promised, tracked independently of it. Ordered
/// collections, so that a seed always picks the same clients and pins.
#[derive(Debug, Default)]
pub struct Model {
    issued: Vec<ClientId>,
    connected: BTreeSet<ClientId>,
    pins: BTreeMap<(ClientId, ObjectId), u32>,
    creating: BTreeSet<(ClientId, ObjectId)>,
    primaries: BTreeMap<ObjectId, ClientId>,
    /// Where every successful create put its object (the latest one per id).
    locs: HashMap<ObjectId, Location>,
    /// The segments' usable sizes (multiples of 64).
    pub segment_sizes: Vec<u64>,
}

impl Model {
    /// A model of a table over segments of these usable sizes.
    pub fn new(segment_sizes: Vec<u64>) -> Self {
        Self {
            segment_sizes,
            ..Self::default()
        }
    }

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
        (self.client(pick), id(n))
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

/// Applies `op` to the table and the model, checking the table's answer.
pub fn apply(t: &mut Table, m: &mut Model, op: &Op) {
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
pub fn check(t: &Table, m: &Model) {
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
