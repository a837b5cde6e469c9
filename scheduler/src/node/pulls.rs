//! Which pulls run: requests wait in a queue, gets first, then waits that
//! fetch (Ray's `fetch_local`), then task arguments, each kind in the order
//! asked, and are admitted while their
//! bytes fit in the store's room (free memory and what eviction may take,
//! less what running pulls will write). One always runs, however large, so
//! an object bigger than the room still arrives, the store spilling for it.

use std::collections::BTreeSet;

use arca_store::ObjectId;
use foldhash::HashMap;

use crate::cluster::NodeId;

/// Why an object is pulled, in the order pulls are admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum PullFor {
    /// A `get` waits for its bytes.
    Get,
    /// A `wait` with `fetch_local` waits for its bytes.
    Wait,
    /// A task's argument, before it can be dispatched here.
    Arg,
}

/// A pull to start now: from `node`, `size` bytes.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub id: ObjectId,
    pub ticket: u64,
    pub node: NodeId,
    pub size: u64,
}

/// The pull queue. Each admitted pull has a ticket, so that the end of a
/// pull given up on (its node died) is not taken for the end of a newer one.
#[derive(Debug, Default)]
pub(crate) struct Pulls {
    queue: BTreeSet<(PullFor, u64, ObjectId)>,
    /// Queued requests: why, their place in the queue, size.
    queued: HashMap<ObjectId, (PullFor, u64, u64)>,
    /// Running pulls: ticket, size, source.
    running: HashMap<ObjectId, (u64, u64, NodeId)>,
    /// Bytes of the running pulls.
    bytes: u64,
    next: u64,
}

impl Pulls {
    /// Asks for `id` (`size` bytes, on `node`) to be pulled for `why`. A
    /// request already queued moves up if `why` comes first; one already
    /// running is left alone.
    pub(crate) fn request(&mut self, id: ObjectId, size: u64, why: PullFor) {
        if self.running.contains_key(&id) {
            return;
        }
        if let Some(q) = self.queued.get_mut(&id) {
            if why < q.0 {
                self.queue.remove(&(q.0, q.1, id));
                q.0 = why;
                self.queue.insert((why, q.1, id));
            }
            return;
        }
        self.next += 1;
        self.queued.insert(id, (why, self.next, size));
        self.queue.insert((why, self.next, id));
    }

    /// Whether requests wait.
    pub(crate) fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The requests to start now, in order, given `room` bytes in the store:
    /// while each fits beside the running ones, and one if none runs.
    /// `source` says where a request's object is now (`None`: it need not
    /// be pulled any more, and is dropped). Each is marked running, with a
    /// ticket for [`Pulls::ended`].
    pub(crate) fn admit(
        &mut self,
        room: u64,
        mut source: impl FnMut(&ObjectId) -> Option<NodeId>,
    ) -> Vec<Admitted> {
        let mut out = Vec::new();
        while let Some(&(why, seq, id)) = self.queue.first() {
            let Some(&(_, _, size)) = self.queued.get(&id) else {
                self.queue.remove(&(why, seq, id));
                continue;
            };
            let Some(node) = source(&id) else {
                self.queue.remove(&(why, seq, id));
                self.queued.remove(&id);
                continue;
            };
            let fits = self.bytes.saturating_add(size) <= room;
            if !self.running.is_empty() && !fits {
                break;
            }
            self.queue.remove(&(why, seq, id));
            self.queued.remove(&id);
            self.next += 1;
            self.running.insert(id, (self.next, size, node));
            self.bytes += size;
            out.push(Admitted {
                id,
                ticket: self.next,
                node,
                size,
            });
        }
        out
    }

    /// A pull ended; false if it was not the running one for `id` (given up
    /// on, or another one runs now).
    pub(crate) fn ended(&mut self, id: ObjectId, ticket: u64) -> bool {
        match self.running.get(&id) {
            Some(&(t, size, _)) if t == ticket => {
                self.running.remove(&id);
                self.bytes -= size;
                true
            }
            _ => false,
        }
    }

    /// `node` died: its pulls will end in errors; their bytes no longer
    /// count, so that a pull stuck on a silent node holds nothing up.
    pub(crate) fn node_died(&mut self, node: NodeId) {
        let bytes = &mut self.bytes;
        self.running.retain(|_, &mut (_, size, n)| {
            if n == node {
                *bytes -= size;
            }
            n != node
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> ObjectId {
        ObjectId::from_slice(&[i; 20]).unwrap()
    }

    fn node(i: u8) -> NodeId {
        NodeId::from_slice(&[i; 16]).unwrap()
    }

    fn ids(v: &[Admitted]) -> Vec<ObjectId> {
        v.iter().map(|a| a.id).collect()
    }

    #[test]
    fn gets_go_first_then_waits_then_arguments() {
        let mut p = Pulls::default();
        p.request(id(1), 10, PullFor::Arg);
        p.request(id(5), 10, PullFor::Wait);
        p.request(id(2), 10, PullFor::Get);
        p.request(id(3), 10, PullFor::Get);
        p.request(id(4), 10, PullFor::Arg);
        // An argument asked for by a get too moves up, behind the get.
        p.request(id(4), 10, PullFor::Get);
        // A get asked for again by a wait stays a get.
        p.request(id(2), 10, PullFor::Wait);
        let started = p.admit(1000, |_| Some(node(1)));
        assert_eq!(ids(&started), [id(2), id(3), id(4), id(5), id(1)]);
        assert!(!p.waiting());
    }

    #[test]
    fn admitted_while_they_fit_and_always_one() {
        let mut p = Pulls::default();
        for i in 1..=3 {
            p.request(id(i), 40, PullFor::Arg);
        }
        // Larger than the room: still one runs.
        assert_eq!(ids(&p.admit(10, |_| Some(node(1)))), [id(1)]);
        assert_eq!(ids(&p.admit(1000, |_| Some(node(1)))), [id(2), id(3)]);
        let mut p = Pulls::default();
        for i in 1..=3 {
            p.request(id(i), 40, PullFor::Arg);
        }
        let first = p.admit(100, |_| Some(node(1)));
        assert_eq!(
            ids(&first),
            [id(1), id(2)],
            "80 of 100 bytes; the third waits"
        );
        assert!(p.admit(100, |_| Some(node(1))).is_empty());
        assert!(p.ended(first[0].id, first[0].ticket));
        assert_eq!(ids(&p.admit(100, |_| Some(node(1)))), [id(3)]);
        // A request for a running pull changes nothing.
        p.request(id(3), 40, PullFor::Get);
        assert!(!p.waiting());
    }

    #[test]
    fn stale_ends_and_dead_nodes_do_not_miscount() {
        let mut p = Pulls::default();
        p.request(id(1), 60, PullFor::Get);
        p.request(id(2), 60, PullFor::Get);
        let t1 = p.admit(100, |i| Some(node(if *i == id(1) { 2 } else { 1 })));
        assert_eq!(ids(&t1), [id(1)]);
        // Node B dies: its pull no longer counts, and the next one starts.
        p.node_died(node(2));
        let t2 = p.admit(100, |_| Some(node(1)));
        assert_eq!(ids(&t2), [id(2)]);
        // Pulled again from elsewhere; the first pull's end comes late.
        p.request(id(1), 60, PullFor::Get);
        let t3 = p.admit(0, |_| Some(node(1)));
        assert!(t3.is_empty(), "one runs and 60 more do not fit");
        assert!(p.ended(t2[0].id, t2[0].ticket));
        let t3 = p.admit(0, |_| Some(node(1)));
        assert_eq!(ids(&t3), [id(1)]);
        assert!(
            !p.ended(id(1), t1[0].ticket),
            "the given-up pull's end is stale"
        );
        assert!(p.ended(id(1), t3[0].ticket));
        assert_eq!(p.bytes, 0);
    }

    #[test]
    fn requests_no_longer_needed_are_dropped() {
        let mut p = Pulls::default();
        p.request(id(1), 10, PullFor::Arg);
        p.request(id(2), 10, PullFor::Arg);
        let started = p.admit(100, |i| (*i != id(1)).then(|| node(1)));
        assert_eq!(ids(&started), [id(2)]);
        assert!(!p.waiting());
    }
}
