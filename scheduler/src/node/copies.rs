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

use super::Shared;
use super::pulls::PullFor;
use super::state::{Body, ObjState, State};
use crate::cluster::NodeId;

impl Shared {
    /// A pull of `id` from `from` landed: its copy here becomes a cache copy,
    /// the primary staying on `from`. A copy the store would not demote (it
    /// was spilled already) stays primary here.
    pub(crate) fn keep_as_copy(&self, st: &mut State, id: ObjectId, from: NodeId) {
        let demoted = self.store.demote(self.store_client, &[id])[0];
        if let Some(o) = st.objects.get_mut(&id) {
            o.copy_of = demoted.then_some(from);
        }
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
    }

    /// `node` died: copies pulled from it are kept as primary copies here,
    /// since theirs went with it. One evicted meanwhile is remote on the
    /// dead node, which the caller treats as lost.
    pub(crate) fn keep_copies_of(&self, st: &mut State, node: NodeId) {
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
