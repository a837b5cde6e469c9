//! Pulled copies: this node's copies of objects whose primary copy lives on
//! another node. They are cache copies in the store, which may evict them
//! while nobody reads them (they are never spilled); the object is then
//! remote again here, and pulled back when a reader wants it.
//!
//! The store says what it evicted and which ids a reader waits for that it
//! has never heard of ([`StoreEvent`]); both may be late, so the handler
//! checks the store first (before taking the node's lock, as every store
//! call is), and skips an object pulled again since it checked
//! (`Shared::landings`).

use std::sync::atomic::Ordering;

use arca_proto::node::ErrorKind as K;
use arca_store::ObjectId;
use arca_store::server::{StoreEvent, TakeOver};

use arca_proto::cluster as cpb;

use super::Shared;
use super::pulls::PullFor;
use super::remote::id_bytes;
use super::state::{Body, ObjState, State, error, parse_id};
use crate::cluster::NodeId;

fn copies_message(added: &[ObjectId], dropped: &[ObjectId]) -> cpb::peer_message::Kind {
    cpb::peer_message::Kind::Copies(cpb::Copies {
        added: added.iter().map(id_bytes).collect(),
        dropped: dropped.iter().map(id_bytes).collect(),
    })
}

impl Shared {
    /// A pull of `id` from `from` landed: its copy here becomes a cache copy
    /// (once the lock is let go), the primary staying on `from`. A copy the
    /// store would not demote (it was spilled already) stays primary here.
    pub(crate) fn keep_as_copy(&self, st: &mut State, id: ObjectId, from: NodeId) {
        let Some(o) = st.objects.get_mut(&id) else {
            return;
        };
        o.landed = self.landings.fetch_add(1, Ordering::SeqCst) + 1;
        o.copies.retain(|n| *n != from);
        let demote = !o.keep_pulled;
        o.keep_pulled = false;
        if demote {
            o.copy_of = Some(from);
            // The node it came from is a copy too.
            o.copies.push(from);
        }
        if let Some(l) = o.lender {
            self.send_peer(l, copies_message(&[id], &[]));
        }
        if !demote {
            return;
        }
        let me = self.me.clone();
        st.after.push(Box::new(move || {
            let Some(shared) = me.upgrade() else { return };
            if !shared.store().demote(shared.store_client, &[id])[0] {
                let mut st = shared.state.lock();
                if let Some(o) = st.objects.get_mut(&id)
                    && o.copy_of == Some(from)
                {
                    o.copy_of = None;
                }
            }
        }));
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

    /// Hands store events to the scheduler: what the store no longer has is
    /// checked first, without the node's lock, then applied under it.
    pub(crate) fn store_events(&self, events: Vec<StoreEvent>) {
        let seen = self.landings.load(Ordering::SeqCst);
        let checked: Vec<(bool, Vec<ObjectId>)> = events
            .into_iter()
            .map(|e| match e {
                StoreEvent::Evicted(ids) => (false, ids),
                StoreEvent::Missing(ids) => (true, ids),
            })
            .map(|(wanted, ids)| {
                let gone = ids
                    .into_iter()
                    .filter(|id| !self.store().contains(id))
                    .collect();
                (wanted, gone)
            })
            .collect();
        let mut st = self.state.lock();
        for (wanted, gone) in checked {
            for id in gone {
                self.copy_gone(&mut st, &id, seen);
                if wanted {
                    // A reader waits in the store: the bytes come back.
                    self.start_pull(&mut st, id, PullFor::Get);
                }
            }
        }
    }

    /// A pulled copy the store no longer had when checked (with `seen`
    /// landings then) is remote again, unless it was pulled again since.
    fn copy_gone(&self, st: &mut State, id: &ObjectId, seen: u64) {
        let Some(o) = st.objects.get_mut(id) else {
            return;
        };
        let (ObjState::Ready(Body::Stored(size)), Some(node)) = (&o.state, o.copy_of) else {
            return;
        };
        if o.landed > seen {
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
    /// pulled from it are made primary copies here (once the lock is let
    /// go), since theirs went with it; one evicted meanwhile is lost.
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
        if ids.is_empty() {
            return;
        }
        let me = self.me.clone();
        st.after.push(Box::new(move || {
            let Some(shared) = me.upgrade() else { return };
            let kept = shared.store().take_over(shared.store_client, &ids);
            let mut st = shared.state.lock();
            for (id, kept) in ids.iter().zip(kept) {
                let Some(o) = st.objects.get_mut(id) else {
                    continue;
                };
                if o.copy_of != Some(node) {
                    continue;
                }
                o.copy_of = None;
                if kept == TakeOver::Missing && matches!(o.state, ObjState::Ready(Body::Stored(_))) {
                    o.state = ObjState::Ready(Body::Error(error(
                        K::ObjectLost,
                        "",
                        format!(
                            "object {id} was lost: its primary copy was on node {node}, which died, \
                             and the copy here had been evicted"
                        ),
                    )));
                }
            }
        }));
    }
}
