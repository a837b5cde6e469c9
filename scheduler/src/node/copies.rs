//! Pulled copies: this node's copies of objects whose primary copy lives on
//! another node. They are cache copies in the store, which may evict them
//! while nobody reads them (they are never spilled); the object is then
//! remote again here, and pulled back when a reader wants it.
//!
//! The store says what it evicted and which ids a reader waits for that it
//! has never heard of ([`StoreEvent`]); both may be late, so each handler
//! checks the store before it changes anything.

use arca_store::ObjectId;
use arca_store::server::StoreEvent;

use arca_proto::cluster as cpb;

use super::Shared;
use super::pulls::PullFor;
use super::remote::id_bytes;
use super::state::{Body, ObjState, State, parse_id};
use crate::cluster::NodeId;

fn copies_message(added: &[ObjectId], dropped: &[ObjectId]) -> cpb::peer_message::Kind {
    cpb::peer_message::Kind::Copies(cpb::Copies {
        added: added.iter().map(id_bytes).collect(),
        dropped: dropped.iter().map(id_bytes).collect(),
    })
}

impl Shared {
    /// A pull of `id` from `from` landed: its copy here becomes a cache copy,
    /// the primary staying on `from`. A copy the store would not demote (it
    /// was spilled already) stays primary here.
    pub(crate) fn keep_as_copy(&self, st: &mut State, id: ObjectId, from: NodeId) {
        let Some(o) = st.objects.get_mut(&id) else {
            return;
        };
        o.copies.retain(|n| *n != from);
        let demoted = !o.keep_pulled && self.store.demote(self.store_client, &[id])[0];
        o.copy_of = demoted.then_some(from);
        if demoted {
            // The node it came from is a copy too.
            o.copies.push(from);
        }
        o.keep_pulled = false;
        if let Some(l) = o.lender {
            self.send_peer(l, copies_message(&[id], &[]));
        }
    }

    /// A borrower says it has (or no longer has) copies of objects lent it.
    pub(crate) fn on_copies(&self, st: &mut State, from: NodeId, c: cpb::Copies) {
        for (list, added) in [(&c.added, true), (&c.dropped, false)] {
            for id in list.iter().filter_map(|b| parse_id(b)) {
                let Some(o) = st.objects.get_mut(&id) else {
                    continue;
                };
                o.copies.retain(|n| *n != from);
                if added {
                    o.copies.push(from);
                }
            }
        }
    }

    /// Where else `id` can be pulled from, after a pull from `from` failed:
    /// the next known copy, made its state. False if none is known.
    pub(crate) fn try_next_copy(&self, st: &mut State, id: ObjectId, from: NodeId) -> bool {
        let Some(o) = st.objects.get_mut(&id) else {
            return false;
        };
        o.copies.retain(|n| *n != from);
        let ObjState::Ready(Body::Remote { node, size }) = o.state else {
            return false;
        };
        let next = if node != from {
            node // moved on already (its node died)
        } else if o.copies.is_empty() {
            return false;
        } else {
            o.keep_pulled = true;
            o.copies.remove(0)
        };
        o.state = ObjState::Ready(Body::Remote { node: next, size });
        let why = if o.waiters.is_empty() {
            PullFor::Arg
        } else {
            PullFor::Get
        };
        let wanted = !o.waiters.is_empty() || !o.fetchers.is_empty();
        tracing::info!(object = %id, failed = %from, next = %next, "pulling from another copy");
        if wanted {
            self.start_pull(st, id, why);
        }
        true
    }

    pub(crate) fn store_event(&self, st: &mut State, event: StoreEvent) {
        match event {
            StoreEvent::Evicted(ids) => {
                for id in ids {
                    self.copy_gone(st, &id);
                }
            }
            StoreEvent::Missing(ids) => {
                for id in ids {
                    self.copy_gone(st, &id);
                    // A reader waits in the store: the bytes come back.
                    self.start_pull(st, id, PullFor::Get);
                }
            }
        }
    }

    /// If `id` is a pulled copy the store no longer has, it is remote again.
    fn copy_gone(&self, st: &mut State, id: &ObjectId) {
        let Some(o) = st.objects.get_mut(id) else {
            return;
        };
        let (ObjState::Ready(Body::Stored(size)), Some(node)) = (&o.state, o.copy_of) else {
            return;
        };
        if self.store.contains(id) {
            return; // pulled again since
        }
        tracing::debug!(object = %id, primary = %node, "pulled copy evicted");
        o.state = ObjState::Ready(Body::Remote { node, size: *size });
        o.copy_of = None;
        o.copies.retain(|n| *n != node);
        if let Some(l) = o.lender {
            self.send_peer(l, copies_message(&[], &[*id]));
        }
    }

    /// `node` died: it is no longer a place to pull from; objects remote
    /// there with a copy elsewhere are remote at the copy now. Copies
    /// pulled from it are kept as primary copies here, since theirs went
    /// with it; one evicted meanwhile is remote on the dead node, which the
    /// caller treats as lost.
    pub(crate) fn keep_copies_of(&self, st: &mut State, node: NodeId) {
        let mut moved = Vec::new();
        for (id, o) in st.objects.iter_mut() {
            o.copies.retain(|n| *n != node);
            if let ObjState::Ready(Body::Remote { node: n, size }) = o.state
                && n == node
                && !o.copies.is_empty()
            {
                let next = o.copies.remove(0);
                o.state = ObjState::Ready(Body::Remote { node: next, size });
                o.keep_pulled = true;
                o.pulling = false;
                moved.push((*id, !o.waiters.is_empty(), !o.fetchers.is_empty()));
            }
        }
        for (id, gets, args) in moved {
            tracing::info!(object = %id, dead = %node, "its node died; another node has a copy");
            if gets || args {
                let why = if gets { PullFor::Get } else { PullFor::Arg };
                self.start_pull(st, id, why);
            }
        }
        let ids: Vec<ObjectId> = st
            .objects
            .iter()
            .filter(|(_, o)| o.copy_of == Some(node))
            .map(|(id, _)| *id)
            .collect();
        let kept = self.store.adopt(self.store_client, &ids);
        for (id, kept) in ids.iter().zip(kept) {
            let Some(o) = st.objects.get_mut(id) else {
                continue;
            };
            o.copy_of = None;
            if !kept && let ObjState::Ready(Body::Stored(size)) = o.state {
                o.state = ObjState::Ready(Body::Remote { node, size });
            }
        }
    }
}
