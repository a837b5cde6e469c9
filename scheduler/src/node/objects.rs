//! Objects: puts, results, reference counts, freeing, and the clients
//! waiting for objects in `get` and `wait`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arca_proto::node as pb;
use arca_store::ObjectId;
use arca_store::server::TakeOver;

use super::Shared;
use super::pulls::PullFor;
use super::state::{
    Body, ConnId, Obj, ObjState, State, WaitKind, Waiter, WaiterId, WorkerState, error,
};

/// The stored objects a request reports, with what taking over their
/// primary pins found: done before the node's lock is taken (`conn`), as
/// every store call is.
#[derive(Debug, Default)]
pub(crate) struct Taken(pub Vec<(ObjectId, TakeOver)>);

impl Taken {
    pub(crate) fn of(&self, id: &ObjectId) -> TakeOver {
        self.0
            .iter()
            .find(|(i, _)| i == id)
            .map_or(TakeOver::Missing, |&(_, t)| t)
    }

    /// The body of a value reported written to the store, whose primary pin
    /// the node took over (so that it outlives the process that wrote it);
    /// an error if it was not there.
    pub(crate) fn body(&self, id: &ObjectId, body: Body, function: &str) -> Body {
        match body {
            Body::Stored(n) if self.of(id) != TakeOver::Missing => Body::Stored(n),
            Body::Stored(_) => Body::Error(error(
                pb::ErrorKind::ObjectLost,
                function,
                format!("object {id} was reported written to the store but is not there"),
            )),
            b => b,
        }
    }

    /// The pins the node took, to give back if the request is refused.
    pub(crate) fn newly_taken(&self) -> Vec<ObjectId> {
        self.0
            .iter()
            .filter(|(_, t)| *t == TakeOver::Taken)
            .map(|&(id, _)| id)
            .collect()
    }
}

/// Which count a hold is kept in (holds by containing objects are set
/// when the containing object completes).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hold {
    Conn,
    Task,
}

impl Obj {
    pub(crate) fn new(state: ObjState, owner_pid: u32, function: std::sync::Arc<str>) -> Self {
        Obj {
            state,
            owner_pid,
            conn_holds: 0,
            task_holds: 0,
            contained_in: 0,
            contained: Vec::new(),
            waiters: Vec::new(),
            dependents: Vec::new(),
            function,
            actor: false,
            encoding: 0,
            lender: None,
            granted: Vec::new(),
            lent: Vec::new(),
            pulling: false,
            fetchers: Vec::new(),
            actor_node: None,
            waiting_calls: Vec::new(),
            lineage: None,
            relocations: 0,
            copy_of: None,
            copies: Vec::new(),
            keep_pulled: false,
            landed: 0,
            detached: false,
        }
    }
}

pub(crate) fn body_of(obj: &pb::Object) -> Body {
    match &obj.body {
        Some(pb::object::Body::Inline(b)) => Body::Inline(b.clone()),
        Some(pb::object::Body::Stored(n)) => Body::Stored(*n),
        Some(pb::object::Body::Error(e)) => Body::Error(e.clone()),
        None => Body::Inline(bytes::Bytes::new()),
    }
}

/// The indices of the first `n` of `ids` that count as there for `kind`,
/// if `n` of them do (unknown ids count, as in `finish_waiter`): a `wait`
/// whose first refs are ready is answered after looking at those alone.
fn ready_prefix(st: &State, ids: &[ObjectId], kind: &WaitKind, n: usize) -> Option<Vec<u32>> {
    let mut ready = Vec::with_capacity(n.min(ids.len()));
    for (i, id) in ids.iter().enumerate() {
        if ready.len() >= n {
            break;
        }
        if st.objects.get(id).is_none_or(|o| kind.has(o)) {
            ready.push(i as u32);
        }
    }
    (ready.len() >= n).then_some(ready)
}

impl Shared {
    /// A process stores an object it owns (`arca::put`).
    pub(crate) fn put(
        &self,
        st: &mut State,
        conn: ConnId,
        obj: pb::Object,
        taken: &Taken,
    ) -> Result<(), String> {
        let id = super::state::parse_id(&obj.id).ok_or("put: malformed object id")?;
        if Self::promised_by(st, conn, &id) {
            // A direct call's result this process promised.
            return self.give(st, conn, obj, taken);
        }
        if st.objects.contains_key(&id) {
            return Err(format!("put: object {id} already exists"));
        }
        Self::insert_held(st, conn, id, "put".into()).encoding = obj.encoding;
        let contained = obj
            .contained
            .iter()
            .filter_map(|b| super::state::parse_id(b))
            .collect();
        let body = taken.body(&id, body_of(&obj), "put");
        self.complete(st, id, body, contained);
        Ok(())
    }

    /// A new object that `conn`'s process owns and holds, pending until it
    /// is completed: a put, or a direct call's result.
    pub(crate) fn insert_held(
        st: &mut State,
        conn: ConnId,
        id: ObjectId,
        function: std::sync::Arc<str>,
    ) -> &mut Obj {
        let pid = match st.conns.get_mut(&conn) {
            Some(c) => {
                c.holds.insert(id);
                c.pid
            }
            None => 0,
        };
        let mut o = Obj::new(ObjState::Pending(id), pid, function);
        o.conn_holds = 1;
        st.objects.entry(id).insert_entry(o).into_mut()
    }

    /// Deletes objects from the store once the lock is let go.
    pub(crate) fn delete_later(&self, st: &mut State, ids: Vec<ObjectId>) {
        if ids.is_empty() {
            return;
        }
        let me = self.me.clone();
        st.after.push(Box::new(move || {
            if let Some(shared) = me.upgrade() {
                shared.store().delete(&ids);
            }
        }));
    }

    /// An object has its value: waiters and dependent tasks learn of it.
    pub(crate) fn complete(
        &self,
        st: &mut State,
        id: ObjectId,
        body: Body,
        contained: Vec<ObjectId>,
    ) {
        let Some(o) = st.objects.get_mut(&id) else {
            // Nobody holds it any more: drop what was made.
            match body {
                Body::Stored(_) => self.delete_later(st, vec![id]),
                Body::Remote { node, .. } => self.give_back(&id, vec![(node, 1)]),
                _ => {}
            }
            return;
        };
        if o.is_ready() {
            // Made twice (a task run again): the second copy goes.
            match body {
                Body::Stored(_) => self.delete_later(st, vec![id]),
                Body::Remote { node, .. } => self.give_back(&id, vec![(node, 1)]),
                _ => {}
            }
            return;
        }
        let remote = matches!(body, Body::Remote { .. });
        let fetchers = if remote {
            Vec::new()
        } else {
            std::mem::take(&mut o.fetchers)
        };
        let pull_for_fetchers = remote && !o.fetchers.is_empty();
        o.state = ObjState::Ready(body);
        let mut waiters = std::mem::take(&mut o.waiters);
        let dependents = std::mem::take(&mut o.dependents);
        if remote {
            // Gets (and waits that fetch) wait for the bytes to be pulled
            // here; other waits and locates are answered now.
            let mut why = None;
            let mut fetching = Vec::new();
            waiters.retain(|w| {
                let Some(p) = st.waiters.get(w).and_then(|w| w.kind.pulls()) else {
                    return true;
                };
                why = Some(why.map_or(p, |w: PullFor| w.min(p)));
                fetching.push(*w);
                false
            });
            if let Some(why) = why {
                if let Some(o) = st.objects.get_mut(&id) {
                    o.waiters = fetching;
                }
                self.start_pull(st, id, why);
            }
        }
        let mut kept = Vec::with_capacity(contained.len());
        for c in contained {
            if let Some(co) = st.objects.get_mut(&c) {
                co.contained_in += 1;
                kept.push(c);
            }
        }
        if let Some(o) = st.objects.get_mut(&id) {
            o.contained = kept;
        }
        for w in waiters {
            self.waiter_progress(st, w);
        }
        for t in dependents {
            self.dependency_ready(st, t, id);
        }
        for t in fetchers {
            self.fetched(st, t);
        }
        if pull_for_fetchers {
            self.start_pull(st, id, PullFor::Arg);
        }
        self.free_if_unused(st, id);
    }

    pub(crate) fn add_hold(&self, st: &mut State, id: &ObjectId, hold: Hold) -> bool {
        let Some(o) = st.objects.get_mut(id) else {
            return false;
        };
        match hold {
            Hold::Conn => o.conn_holds += 1,
            Hold::Task => o.task_holds += 1,
        }
        true
    }

    pub(crate) fn release(&self, st: &mut State, id: &ObjectId, hold: Hold) {
        let Some(o) = st.objects.get_mut(id) else {
            return;
        };
        let n = match hold {
            Hold::Conn => &mut o.conn_holds,
            Hold::Task => &mut o.task_holds,
        };
        *n = n.saturating_sub(1);
        self.free_if_unused(st, *id);
    }

    /// Frees an object nobody references once it has its value, and then what
    /// only it referenced.
    pub(crate) fn free_if_unused(&self, st: &mut State, id: ObjectId) {
        // Most releases leave the object held: answer those without the
        // allocations below.
        let free = |o: &Obj| o.refs() == 0 && o.is_ready();
        if !st.objects.get(&id).is_some_and(free) {
            return;
        }
        let mut stack = vec![id];
        let mut deletes = Vec::new();
        let mut lineage_holds = Vec::new();
        while let Some(id) = stack.pop() {
            if !st.objects.get(&id).is_some_and(free) {
                continue;
            }
            let Some(mut o) = st.objects.remove(&id) else {
                continue;
            };
            if matches!(o.state, ObjState::Ready(Body::Stored(_))) && !o.pulling {
                deletes.push(id);
            }
            self.give_back(&id, std::mem::take(&mut o.granted));
            if let Some(t) = o.lineage
                && let Some(l) = st.lineage.get_mut(&t)
            {
                l.live = l.live.saturating_sub(1);
                if l.live == 0
                    && let Some(l) = st.lineage.remove(&t)
                {
                    lineage_holds.extend(l.holds);
                }
            }
            if o.actor {
                self.actor_orphaned(st, id);
            }
            for c in o.contained {
                if let Some(co) = st.objects.get_mut(&c) {
                    co.contained_in = co.contained_in.saturating_sub(1);
                    stack.push(c);
                }
            }
        }
        self.delete_later(st, deletes);
        for h in lineage_holds {
            self.release(st, &h, Hold::Task);
        }
    }

    /// A `get` or `wait` (request `seq`): answered at once if it can be, else
    /// when enough of its objects are ready or at its deadline.
    pub(crate) fn add_waiter(
        &self,
        st: &mut State,
        conn: ConnId,
        seq: u64,
        ids: Vec<ObjectId>,
        kind: WaitKind,
        timeout_ms: i64,
    ) {
        if let WaitKind::Wait { num_returns, .. } = kind
            && let Some(ready) = ready_prefix(st, &ids, &kind, num_returns)
        {
            // Enough are ready already: answered without registering.
            st.send(conn, seq, pb::reply::Kind::Wait(pb::WaitReply { ready }));
            return;
        }
        let wid = st.next_waiter;
        st.next_waiter += 1;
        let mut missing = 0;
        let mut pulls = Vec::new();
        for id in &ids {
            if let Some(o) = st.objects.get_mut(id).filter(|o| !kind.has(o)) {
                o.waiters.push(wid);
                missing += 1;
                if o.is_ready() {
                    pulls.push(*id);
                }
            }
        }
        if let Some(why) = kind.pulls() {
            for id in pulls {
                self.start_pull(st, id, why);
            }
        }
        let deadline = u64::try_from(timeout_ms)
            .ok()
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        st.waiters.insert(
            wid,
            Waiter {
                reply: None,
                conn,
                seq,
                ids,
                kind,
                deadline,
                missing,
            },
        );
        if let Some(c) = st.conns.get_mut(&conn) {
            c.waiters.push(wid);
        }
        if self.satisfied(st, wid) || timeout_ms == 0 {
            self.finish_waiter(st, wid);
            return;
        }
        if let Some(d) = deadline {
            st.deadlines.insert((d, wid));
            if st.timer_wake.is_none_or(|w| d < w) {
                self.timer.notify_one();
            }
        }
        self.lend_resources(st, conn);
    }

    /// A peer's `Locate`: answered through `tx` once every object exists.
    pub(crate) fn add_peer_waiter(
        &self,
        st: &mut State,
        ids: Vec<ObjectId>,
        kind: WaitKind,
        tx: tokio::sync::oneshot::Sender<Vec<arca_proto::cluster::Location>>,
    ) {
        let wid = st.next_waiter;
        st.next_waiter += 1;
        let mut missing = 0;
        for id in &ids {
            if let Some(o) = st.objects.get_mut(id).filter(|o| !kind.has(o)) {
                o.waiters.push(wid);
                missing += 1;
            }
        }
        st.waiters.insert(
            wid,
            Waiter {
                reply: Some(tx),
                conn: 0,
                seq: 0,
                ids,
                kind,
                deadline: None,
                missing,
            },
        );
        if missing == 0 {
            self.finish_waiter(st, wid);
        }
    }

    fn satisfied(&self, st: &State, wid: WaiterId) -> bool {
        let Some(w) = st.waiters.get(&wid) else {
            return false;
        };
        match w.kind {
            WaitKind::Get | WaitKind::Locate { .. } => w.missing == 0,
            WaitKind::Wait { num_returns, .. } => {
                w.ids.len() - w.missing >= num_returns.min(w.ids.len())
            }
        }
    }

    pub(crate) fn waiter_progress(&self, st: &mut State, wid: WaiterId) {
        let Some(w) = st.waiters.get_mut(&wid) else {
            return;
        };
        w.missing = w.missing.saturating_sub(1);
        if self.satisfied(st, wid) {
            self.finish_waiter(st, wid);
        }
    }

    /// Answers a waiter with what is ready now (its deadline may have passed).
    pub(crate) fn finish_waiter(&self, st: &mut State, wid: WaiterId) {
        let Some(w) = st.waiters.remove(&wid) else {
            return;
        };
        if let Some(d) = w.deadline {
            st.deadlines.remove(&(d, wid));
        }
        let mut ready = Vec::new();
        for (i, id) in w.ids.iter().enumerate() {
            match st.objects.get_mut(id) {
                Some(o) if !w.kind.has(o) => o.waiters.retain(|x| *x != wid),
                _ => ready.push(i),
            }
        }
        if let WaitKind::Locate { asker } = w.kind {
            let locations = self.locations(st, asker, &w.ids);
            if let Some(tx) = w.reply {
                let _ = tx.send(locations);
            }
            return;
        }
        let reply = match w.kind {
            WaitKind::Locate { .. } => return,
            WaitKind::Get if ready.len() < w.ids.len() => pb::reply::Kind::Error(pb::Error {
                message: format!(
                    "get timed out: {} of {} objects are not ready yet",
                    w.ids.len() - ready.len(),
                    w.ids.len()
                ),
                timeout: true,
                missing: w
                    .ids
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !ready.contains(i))
                    .map(|(_, id)| id.as_bytes().to_vec().into())
                    .collect(),
            }),
            WaitKind::Get => pb::reply::Kind::Get(pb::GetReply {
                objects: w.ids.iter().map(|id| self.object_reply(st, id)).collect(),
            }),
            WaitKind::Wait { num_returns, .. } => {
                ready.truncate(num_returns);
                pb::reply::Kind::Wait(pb::WaitReply {
                    ready: ready.into_iter().map(|i| i as u32).collect(),
                })
            }
        };
        if let Some(c) = st.conns.get_mut(&w.conn) {
            c.waiters.retain(|x| *x != wid);
            // Other threads of the process may still wait.
            if c.waiters.is_empty() {
                self.reclaim_resources(st, w.conn);
            }
        }
        st.send(w.conn, w.seq, reply);
    }

    /// Forgets a waiter whose client went away.
    pub(crate) fn drop_waiter(&self, st: &mut State, wid: WaiterId) {
        let Some(w) = st.waiters.remove(&wid) else {
            return;
        };
        if let Some(d) = w.deadline {
            st.deadlines.remove(&(d, wid));
        }
        for id in &w.ids {
            if let Some(o) = st.objects.get_mut(id) {
                o.waiters.retain(|x| *x != wid);
            }
        }
    }

    fn object_reply(&self, st: &State, id: &ObjectId) -> pb::Object {
        use pb::object::Body as B;
        let obj = st.objects.get(id);
        let body = match obj.map(|o| &o.state) {
            Some(ObjState::Ready(Body::Inline(b))) => B::Inline(b.clone()),
            Some(ObjState::Ready(Body::Stored(n))) => B::Stored(*n),
            Some(ObjState::Ready(Body::Remote { node, .. })) => B::Error(error(
                pb::ErrorKind::ObjectLost,
                "",
                format!("object {id} is on node {node} and was not pulled here"),
            )),
            Some(ObjState::Ready(Body::Error(e))) => B::Error(e.clone()),
            _ => B::Error(error(
                pb::ErrorKind::ObjectLost,
                "",
                format!(
                    "object {id} is unknown to this node: it was freed (no reference was left), \
                     its owner exited, or it was never created here"
                ),
            )),
        };
        // What the value holds while it lives: the reader's refs read out
        // of it can lean on its hold of the value (`core::Source`).
        let contained = match (&body, obj) {
            (B::Inline(_) | B::Stored(_), Some(o)) => {
                o.contained.iter().map(super::remote::id_bytes).collect()
            }
            _ => Vec::new(),
        };
        pb::Object {
            id: id.as_bytes().to_vec().into(),
            body: Some(body),
            contained,
            encoding: obj.map_or(0, |o| o.encoding),
        }
    }

    /// A worker blocked in `get` gives its task's CPU back while it waits, so
    /// that the tasks it waits for can run (as Ray does); with several threads
    /// waiting, from the first `get` until the last is answered.
    fn lend_resources(&self, st: &mut State, conn: ConnId) {
        let Some(wid) = st.conns.get(&conn).and_then(|c| c.worker) else {
            return;
        };
        let Some(w) = st.workers.get_mut(&wid) else {
            return;
        };
        let WorkerState::Busy(task) = w.state else {
            return;
        };
        if w.actor.is_some() || w.blocked {
            return;
        }
        w.blocked = true;
        if let Some(t) = st.tasks.get(&task) {
            let r = t.resources.clone();
            st.available.add(&r);
        }
        self.schedule(st);
    }

    fn reclaim_resources(&self, st: &mut State, conn: ConnId) {
        let Some(wid) = st.conns.get(&conn).and_then(|c| c.worker) else {
            return;
        };
        let Some(w) = st.workers.get_mut(&wid).filter(|w| w.blocked) else {
            return;
        };
        w.blocked = false;
        if let WorkerState::Busy(task) = w.state
            && let Some(t) = st.tasks.get(&task)
        {
            let r = t.resources.clone();
            st.available.subtract(&r);
        }
    }

    /// Answers `get`s and `wait`s whose deadline has passed.
    pub(crate) fn timer_loop(&self) {
        let mut st = self.state.lock();
        while !self.shutdown.load(Ordering::Acquire) {
            let now = Instant::now();
            while let Some(&(d, wid)) = st.deadlines.first() {
                if d > now {
                    break;
                }
                st.deadlines.pop_first();
                self.finish_waiter(&mut st, wid);
            }
            let tick = now + Duration::from_millis(100);
            let until = st.deadlines.first().map_or(tick, |(d, _)| (*d).min(tick));
            st.timer_wake = Some(until);
            st.wait_until(&self.timer, until);
            st.timer_wake = None;
        }
    }

    pub(crate) fn memory_reply(&self, st: &State) -> pb::MemoryReply {
        let mut objects: Vec<pb::NodeObject> = st
            .objects
            .iter()
            .map(|(id, o)| {
                let (state, size) = match &o.state {
                    _ if o.actor => ("actor", 0),
                    ObjState::Pending(_) => ("pending", 0),
                    ObjState::Ready(Body::Inline(b)) => ("inline", b.len() as u64),
                    ObjState::Ready(Body::Stored(n)) if o.copy_of.is_some() => ("copy", *n),
                    ObjState::Ready(Body::Stored(n)) => ("stored", *n),
                    ObjState::Ready(Body::Remote { size, .. }) => ("remote", *size),
                    ObjState::Locating => ("locating", 0),
                    ObjState::Ready(Body::Error(_)) => ("error", 0),
                };
                pb::NodeObject {
                    id: id.as_bytes().to_vec().into(),
                    state: state.into(),
                    size,
                    owner_pid: o.owner_pid,
                    ref_count: o.refs(),
                    holder_pids: st
                        .conns
                        .values()
                        .filter(|c| c.holds.contains(id))
                        .map(|c| c.pid)
                        .collect(),
                    task_holds: o.task_holds,
                    contained_in: o.contained_in,
                    function: o.function.to_string(),
                }
            })
            .collect();
        objects.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.id.cmp(&b.id)));
        pb::MemoryReply { objects }
    }
}
