//! The scheduler's side of the cluster: forwarding tasks and actor calls to
//! other nodes, running tasks forwarded here, references lent between nodes,
//! locating and pulling objects, and the death of a node.
//!
//! The rule for references (see `cluster.proto`): a node that sends another
//! an id grants it one hold at once; the receiver records it in the object's
//! `granted` list and gives it back (`Release`) when the object is freed
//! here. A grant for an id this node already tracks under another lender is
//! given back at once.

use std::sync::Arc;

use arca_proto::cluster as cpb;
use arca_proto::node as pb;
use arca_proto::store::StoreTotals;
use arca_store::ObjectId;
use tokio::sync::oneshot;

use super::Shared;
use super::objects::Hold;
use super::pulls::{Admitted, PullFor};
use super::state::{
    ActorState, Body, Job, Obj, ObjState, State, Task, TaskId, TaskState, WaitKind, WorkerCommand,
    count_down, count_up, error, parse_id,
};
use super::tasks::kind;
use crate::cluster::{Cluster, NodeId};
use crate::resources::ResourceSet;

use cpb::peer_message::Kind as M;
use pb::ErrorKind as K;

/// Arguments pull a task to their node once they are at least this large.
const LOCALITY_BYTES: u64 = 1 << 20;

/// Forwarded tasks a node may have queued per slot it has for them, so that
/// the next is there when one finishes.
const PIPELINE: usize = 2;

pub(crate) fn id_bytes(id: &ObjectId) -> bytes::Bytes {
    id.as_bytes().to_vec().into()
}

impl Shared {
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Sends `msg` to `node`, if this node is in a cluster.
    pub(crate) fn send_peer(&self, node: NodeId, msg: M) {
        if let Some(c) = self.cluster() {
            c.send(node, msg);
        }
    }

    /// Tells the node running a forwarded task to drop it.
    pub(crate) fn send_peer_cancel(&self, node: NodeId, task: &Task) {
        self.send_peer_cancel_force(node, &task.spec.task_id, true);
    }

    pub(crate) fn send_peer_cancel_force(&self, node: NodeId, task_id: &bytes::Bytes, force: bool) {
        self.send_peer(
            node,
            M::Cancel(cpb::CancelForwarded {
                task_id: task_id.clone(),
                force,
            }),
        );
    }

    /// Asks `node` to kill the actor `a` (it lives there, or its owner is);
    /// `orphaned`: its owner dropped the last handle, so it ends once its
    /// calls are done.
    pub(crate) fn send_kill(&self, node: NodeId, a: &ObjectId, no_restart: bool, orphaned: bool) {
        self.send_peer(
            node,
            M::KillActor(cpb::KillForwardedActor {
                actor_id: id_bytes(a),
                no_restart,
                orphaned,
            }),
        );
    }

    /// Gives back holds other nodes granted on `id`.
    pub(crate) fn give_back(&self, id: &ObjectId, granted: Vec<(NodeId, u32)>) {
        for (node, n) in granted {
            let ids = vec![id_bytes(id); n as usize];
            self.send_peer(node, M::Release(cpb::Release { ids }));
        }
    }

    /// This node as the head's table shows it. The store's `totals` are read
    /// before the node's lock is taken, as every store call is.
    pub(crate) fn node_info(&self, st: &State, c: &Cluster, totals: &StoreTotals) -> pb::NodeInfo {
        pb::NodeInfo {
            node_id: c.id.to_bytes(),
            address: c.address.clone(),
            name: self.config.name.clone(),
            alive: true,
            death_reason: String::new(),
            total: Some(st.total.to_proto()),
            available: Some(st.available.to_proto()),
            store_capacity: totals.capacity,
            store_used: totals.allocated,
            tasks_queued: self.queued_tasks(st) as u32,
            is_head: c.is_head,
            temp_dir: self.config.session_dir.display().to_string(),
            pid: std::process::id(),
            store_spilled: totals.spilled_bytes,
        }
    }

    /// Every node for `arca status`: the head's view with this node's own
    /// entry fresh; this node alone when standalone.
    pub(crate) fn cluster_nodes(&self, st: &State, totals: &StoreTotals) -> Vec<pb::NodeInfo> {
        let Some(c) = self.cluster() else {
            let mut me = self.node_info_standalone(st, totals);
            me.is_head = true;
            return vec![me];
        };
        let mine = self.node_info(st, c, totals);
        let mut nodes = st.cluster.clone();
        match nodes.iter_mut().find(|n| n.node_id == mine.node_id) {
            Some(n) => *n = mine,
            None => nodes.insert(0, mine),
        }
        nodes
    }

    fn node_info_standalone(&self, st: &State, totals: &StoreTotals) -> pb::NodeInfo {
        pb::NodeInfo {
            name: self.config.name.clone(),
            alive: true,
            total: Some(st.total.to_proto()),
            available: Some(st.available.to_proto()),
            store_capacity: totals.capacity,
            store_used: totals.allocated,
            tasks_queued: self.queued_tasks(st) as u32,
            temp_dir: self.config.session_dir.display().to_string(),
            pid: std::process::id(),
            store_spilled: totals.spilled_bytes,
            ..Default::default()
        }
    }

    fn queued_tasks(&self, st: &State) -> usize {
        st.classes.iter().map(|c| c.queue.len()).sum()
    }

    pub(crate) fn heartbeat(
        &self,
        st: &State,
        c: &Cluster,
        totals: &StoreTotals,
    ) -> cpb::HeartbeatRequest {
        cpb::HeartbeatRequest {
            node_id: c.id.to_bytes(),
            available: Some(st.available.to_proto()),
            store_used: totals.allocated,
            store_spilled: totals.spilled_bytes,
            tasks_queued: self.queued_tasks(st) as u32,
        }
    }

    /// The head's view of the cluster arrived: nodes that died are handled,
    /// and queued tasks may now fit somewhere.
    pub(crate) fn cluster_view(&self, st: &mut State, c: &Cluster, nodes: Vec<pb::NodeInfo>) {
        c.set_addresses(&nodes);
        st.node_id = Some(c.id);
        let newly_dead: Vec<(NodeId, String)> = nodes
            .iter()
            .filter(|n| !n.alive)
            .filter_map(|n| Some((NodeId::from_slice(&n.node_id)?, n.death_reason.clone())))
            .filter(|(id, _)| *id != c.id && c.dead.lock().insert(*id))
            .collect();
        // A node seen dead that answers again (the head, after a partition)
        // gets messages again; what was sent to it before was retried.
        for n in nodes.iter().filter(|n| n.alive) {
            if let Some(id) = NodeId::from_slice(&n.node_id) {
                c.dead.lock().remove(&id);
            }
        }
        st.cluster = nodes;
        for (node, why) in newly_dead {
            self.node_died(st, node, &why);
        }
        self.schedule(st);
    }

    /// Alive nodes other than this one, with what they have.
    fn peers(st: &State) -> impl Iterator<Item = (NodeId, ResourceSet, ResourceSet)> + '_ {
        st.cluster.iter().filter(|n| n.alive).filter_map(move |n| {
            let id = NodeId::from_slice(&n.node_id)?;
            if Some(id) == st.node_id {
                return None;
            }
            let get = |r: Option<&pb::Resources>| {
                ResourceSet::from_proto(r, &ResourceSet::default()).unwrap_or_default()
            };
            Some((id, get(n.total.as_ref()), get(n.available.as_ref())))
        })
    }

    /// The cluster's shortfall for a request no node could ever hold:
    /// `None` if some alive node could.
    pub(crate) fn infeasible(&self, st: &State, r: &ResourceSet) -> Option<String> {
        let here = st.total.shortfall(r);
        if here.is_empty() || Self::peers(st).any(|(_, total, _)| total.shortfall(r).is_empty()) {
            return None;
        }
        if st.cluster.len() <= 1 {
            return Some(format!(
                "this node has {} in all (short of {})",
                st.total,
                here.join(", ")
            ));
        }
        let nodes: Vec<String> = std::iter::once(format!("this node {}", st.total))
            .chain(Self::peers(st).map(|(id, t, _)| format!("{} {t}", &id.to_hex()[..8])))
            .collect();
        Some(format!(
            "no node of the cluster has it (nodes: {}; short here of {})",
            nodes.join("; "),
            here.join(", ")
        ))
    }

    /// Where a ready task should run: `Some(node)` to forward it, `None` to
    /// keep it here (to run now, or to wait for room here or anywhere).
    pub(crate) fn placement(&self, st: &State, tid: TaskId) -> Option<NodeId> {
        self.cluster()?;
        let t = st.tasks.get(&tid)?;
        if t.origin.is_some() {
            return None; // forwarded once already: it runs here
        }
        let r = &t.resources;
        let in_flight = |node: NodeId| {
            st.tasks
                .values()
                .filter(|t| t.state == TaskState::Forwarded(node))
                .count()
        };
        // Room for one more on `node`: slots its total has for this shape,
        // times the pipeline depth.
        let room = |node: NodeId, total: &ResourceSet| {
            let slots = total.times_fits(r).max(1);
            in_flight(node) < slots.saturating_mul(PIPELINE)
        };
        // Large arguments pull the task to their bytes.
        let mut bytes: Vec<(NodeId, u64)> = Vec::new();
        for d in &t.deps {
            if let Some(ObjState::Ready(Body::Remote { node, size })) =
                st.objects.get(d).map(|o| &o.state)
            {
                match bytes.iter_mut().find(|(n, _)| n == node) {
                    Some((_, b)) => *b += size,
                    None => bytes.push((*node, *size)),
                }
            }
        }
        let local_bytes: u64 = t
            .deps
            .iter()
            .filter_map(|d| match st.objects.get(d).map(|o| &o.state) {
                Some(ObjState::Ready(Body::Stored(n))) => Some(*n),
                _ => None,
            })
            .sum();
        if let Some(&(node, b)) = bytes.iter().max_by_key(|(_, b)| *b)
            && b >= LOCALITY_BYTES
            && b > local_bytes
            && let Some((_, total, _)) = Self::peers(st).find(|(n, _, _)| *n == node)
            && total.shortfall(r).is_empty()
            && room(node, &total)
        {
            return Some(node);
        }
        if st.available.fits(r) {
            return None;
        }
        // Spill back to the node with the most room for it.
        Self::peers(st)
            .filter(|(_, total, _)| total.shortfall(r).is_empty())
            .filter(|(n, total, _)| room(*n, total))
            .max_by_key(|(n, total, avail)| {
                let free = usize::from(avail.fits(r));
                let slots = total.times_fits(r).max(1).saturating_mul(PIPELINE);
                (free, slots.saturating_sub(in_flight(*n)))
            })
            .map(|(n, _, _)| n)
    }

    /// How a job's workers start, for the node a task is forwarded to.
    fn job_message(&self, st: &State, job: u64) -> cpb::Job {
        let Some(j) = st.jobs.get(&job) else {
            return cpb::Job::default();
        };
        cpb::Job {
            job_id: job,
            worker_command: j.command.argv.clone(),
            worker_cwd: j.command.cwd.clone(),
            worker_env: j.command.env.iter().cloned().collect(),
        }
    }

    /// Grants `node` one hold on `id` (it is being sent there).
    pub(crate) fn grant(&self, st: &mut State, node: NodeId, id: &ObjectId) -> bool {
        match st.objects.get_mut(id) {
            Some(o) => {
                count_up(&mut o.lent, node);
                true
            }
            None => false,
        }
    }

    /// Sends a ready task to `node` to run there.
    pub(crate) fn forward(&self, st: &mut State, tid: TaskId, node: NodeId) {
        let Some(t) = st.tasks.get_mut(&tid) else {
            return;
        };
        t.state = TaskState::Forwarded(node);
        let attempts = t.attempt;
        t.attempt += 1;
        let spec = t.spec.clone();
        let job = t.job;
        let refs = Self::sent_refs(&spec);
        for id in &refs {
            self.grant(st, node, id);
        }
        let job = self.job_message(st, job);
        tracing::debug!(task = %tid, to = %node, "forwarding");
        self.send_peer(
            node,
            M::Forward(cpb::Forward {
                spec: Some(spec),
                job: Some(job),
                attempts,
            }),
        );
    }

    /// Forwards a task the ready queue placed on `node`; an actor's
    /// constructor takes the actor (and its queued calls) there.
    pub(crate) fn forward_ready(&self, st: &mut State, tid: TaskId, node: NodeId) {
        let Some(t) = st.tasks.get(&tid) else {
            return;
        };
        let actor = (kind(&t.spec) == pb::TaskKind::ActorCreation)
            .then(|| parse_id(&t.spec.actor_id))
            .flatten();
        self.forward(st, tid, node);
        if let Some(a) = actor {
            if let Some(x) = st.actors.get_mut(&a) {
                x.location = Some(node);
                x.state = ActorState::Creating;
            }
            self.forward_actor_calls(st, &a, node);
        }
    }

    /// The ids a task spec carries: ObjectRef arguments and nested refs.
    fn sent_refs(spec: &pb::TaskSpec) -> Vec<ObjectId> {
        let args = spec.args.iter().filter_map(|a| match &a.kind {
            Some(pb::arg::Kind::Object(b)) => parse_id(b),
            _ => None,
        });
        args.chain(spec.contained.iter().filter_map(|b| parse_id(b)))
            .collect()
    }

    /// A hold granted by `from` on `id` arrived: a proxy entry is made (and
    /// located) if this node does not know the id, else the grant is kept
    /// with the entry (same lender) or given back.
    pub(crate) fn accept_grant(&self, st: &mut State, from: NodeId, id: ObjectId) {
        match st.objects.get_mut(&id) {
            Some(o) if o.lender == Some(from) => count_up(&mut o.granted, from),
            Some(_) => self.give_back(&id, vec![(from, 1)]),
            None => {
                let mut o = Obj::new(ObjState::Locating, 0, "borrowed".into());
                o.lender = Some(from);
                o.granted.push((from, 1));
                st.objects.insert(id, o);
                self.start_locate(from, id);
            }
        }
    }

    /// Asks `lender` where `id` is; the answer completes the proxy.
    fn start_locate(&self, lender: NodeId, id: ObjectId) {
        let Some(c) = self.cluster().cloned() else {
            return;
        };
        self.off_lock(
            c,
            move |c, _| async move {
                match c.address_of(lender) {
                    None => Err(format!("node {lender} is not in the cluster")),
                    Some(addr) => c
                        .peer(&addr)
                        .locate(cpb::LocateRequest {
                            ids: vec![id_bytes(&id)],
                            from: c.id.to_bytes(),
                        })
                        .await
                        .map(|r| r.into_inner().locations)
                        .map_err(|s| s.message().to_string()),
                }
            },
            move |shared, st, located| shared.located(st, lender, id, located),
        );
    }

    /// Runs `work` on the cluster's runtime, off the scheduler's lock, then
    /// hands what it gives to `then` under the lock (on a blocking thread,
    /// so no runtime thread waits for the lock).
    fn off_lock<T, W, Fut>(
        &self,
        c: Arc<Cluster>,
        work: W,
        then: impl FnOnce(&Shared, &mut State, T) + Send + 'static,
    ) where
        T: Send + 'static,
        W: FnOnce(Arc<Cluster>, std::sync::Weak<Shared>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + Send,
    {
        let me = self.me.clone();
        c.runtime().handle().clone().spawn(async move {
            let out = work(c, me.clone()).await;
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(shared) = me.upgrade() {
                    let mut st = shared.state.lock();
                    then(&shared, &mut st, out);
                }
            })
            .await;
        });
    }

    /// The lender said where a proxy's object is.
    fn located(
        &self,
        st: &mut State,
        lender: NodeId,
        id: ObjectId,
        located: Result<Vec<cpb::Location>, String>,
    ) {
        let loc = match located {
            Ok(mut l) if l.len() == 1 => Ok(l.remove(0)),
            Ok(l) => Err(format!(
                "the lender answered with {} locations for one id",
                l.len()
            )),
            Err(e) => Err(e),
        };
        let contained: Vec<ObjectId> = loc
            .as_ref()
            .map(|l| l.contained.iter().filter_map(|b| parse_id(b)).collect())
            .unwrap_or_default();
        if !st
            .objects
            .get(&id)
            .is_some_and(|o| matches!(o.state, ObjState::Locating))
        {
            // Already known here another way: the nested grants go back.
            for c in &contained {
                self.give_back(c, vec![(lender, 1)]);
            }
            return;
        }
        let me = st.node_id;
        let actor_node = loc
            .as_ref()
            .ok()
            .and_then(|l| NodeId::from_slice(&l.actor_node));
        let copies: Vec<NodeId> = loc
            .as_ref()
            .map(|l| {
                l.copies
                    .iter()
                    .filter_map(|b| NodeId::from_slice(b))
                    .filter(|n| Some(*n) != me)
                    .collect()
            })
            .unwrap_or_default();
        let (body, encoding) = match loc {
            Err(e) => (
                Body::Error(error(
                    K::ObjectLost,
                    "",
                    format!("object {id}: its owner's node {lender} cannot say where it is: {e}"),
                )),
                0,
            ),
            Ok(l) => {
                use cpb::location::Body as L;
                let node = NodeId::from_slice(&l.node_id);
                let body = match l.body {
                    Some(L::Inline(b)) => Body::Inline(b),
                    Some(L::Stored(n)) if node.is_some() && node == me => Body::Stored(n),
                    Some(L::Stored(size)) => match node {
                        Some(node) => Body::Remote { node, size },
                        None => Body::Error(error(
                            K::ObjectLost,
                            "",
                            format!("object {id}: no node holds it"),
                        )),
                    },
                    Some(L::Error(e)) => Body::Error(e),
                    None => Body::Error(error(
                        K::ObjectLost,
                        "",
                        format!("object {id}: empty location"),
                    )),
                };
                (body, l.encoding)
            }
        };
        for c in &contained {
            self.accept_grant(st, lender, *c);
        }
        let mut calls = Vec::new();
        if let Some(o) = st.objects.get_mut(&id) {
            o.encoding = encoding;
            o.actor_node = actor_node;
            for n in copies {
                if !o.copies.contains(&n) {
                    o.copies.push(n);
                }
            }
            o.keep_pulled = false;
            calls = std::mem::take(&mut o.waiting_calls);
        }
        self.complete(st, id, body, contained);
        for tid in calls {
            self.call_remote_actor(st, id, tid);
        }
    }

    /// Another node asks where objects are: answered once all are ready.
    pub(crate) fn locate(
        &self,
        st: &mut State,
        asker: NodeId,
        ids: &[bytes::Bytes],
        tx: oneshot::Sender<Vec<cpb::Location>>,
    ) -> Result<(), String> {
        let ids: Vec<ObjectId> = ids
            .iter()
            .map(|b| parse_id(b).ok_or_else(|| format!("malformed object id ({} bytes)", b.len())))
            .collect::<Result<_, _>>()?;
        self.add_peer_waiter(st, ids, WaitKind::Locate { asker }, tx);
        Ok(())
    }

    /// The answer to a `Locate`, with holds on nested refs granted to `asker`.
    pub(crate) fn locations(
        &self,
        st: &mut State,
        asker: NodeId,
        ids: &[ObjectId],
    ) -> Vec<cpb::Location> {
        use cpb::location::Body as L;
        let me = st.node_id;
        let my_address = self
            .cluster()
            .map(|c| c.address.clone())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let mut loc = cpb::Location {
                id: id_bytes(id),
                ..Default::default()
            };
            let contained = match st.objects.get(id) {
                None => {
                    loc.body = Some(L::Error(error(
                        K::ObjectLost,
                        "",
                        format!("object {id} is unknown to its owner's node (it was freed)"),
                    )));
                    Vec::new()
                }
                Some(o) => {
                    loc.encoding = o.encoding;
                    loc.body = Some(match &o.state {
                        ObjState::Ready(Body::Inline(b)) => L::Inline(b.clone()),
                        ObjState::Ready(Body::Stored(n)) => {
                            loc.address = my_address.clone();
                            loc.node_id = me.map(|m| m.to_bytes()).unwrap_or_default();
                            L::Stored(*n)
                        }
                        ObjState::Ready(Body::Remote { node, size }) => {
                            loc.address = self
                                .cluster()
                                .and_then(|c| c.address_of(*node))
                                .unwrap_or_default();
                            loc.node_id = node.to_bytes();
                            L::Stored(*size)
                        }
                        ObjState::Ready(Body::Error(e)) => L::Error(e.clone()),
                        _ => L::Error(error(
                            K::ObjectLost,
                            "",
                            format!("object {id} is not ready"),
                        )),
                    });
                    let main = NodeId::from_slice(&loc.node_id);
                    // A copy here lists its source among them.
                    loc.copies = o
                        .copies
                        .iter()
                        .filter(|n| Some(**n) != main && **n != asker)
                        .map(|n| n.to_bytes())
                        .collect();
                    if o.actor
                        && let Some(a) = st.actors.get(id)
                    {
                        loc.actor_node =
                            a.location.or(me).map(|n| n.to_bytes()).unwrap_or_default();
                    }
                    o.contained.clone()
                }
            };
            for c in &contained {
                self.grant(st, asker, c);
            }
            loc.contained = contained.iter().map(id_bytes).collect();
            out.push(loc);
        }
        out
    }

    /// Asks for a remote object's bytes here, once: the pull starts when
    /// the queue admits it (`pulls`).
    pub(crate) fn start_pull(&self, st: &mut State, id: ObjectId, why: PullFor) {
        let Some(o) = st.objects.get(&id) else {
            return;
        };
        let ObjState::Ready(Body::Remote { size, .. }) = o.state else {
            return;
        };
        if o.pulling || self.cluster().is_none() {
            return;
        }
        st.pulls.request(id, size, why);
        self.admit_pulls(st);
    }

    /// Starts the pulls the queue admits now.
    fn admit_pulls(&self, st: &mut State) {
        if !st.pulls.waiting() {
            return;
        }
        let Some(c) = self.cluster().cloned() else {
            return;
        };
        let room = self.store_room();
        let State { pulls, objects, .. } = st;
        let admitted = pulls.admit(room, |id| match objects.get(id)?.state {
            ObjState::Ready(Body::Remote { node, .. }) => Some(node),
            _ => None,
        });
        for Admitted {
            id,
            ticket,
            node,
            size,
        } in admitted
        {
            // `admit` saw it remote, on `node`, under this hold of the lock.
            if let Some(o) = st.objects.get_mut(&id) {
                o.pulling = true;
            }
            self.off_lock(
                Arc::clone(&c),
                move |c, me| async move {
                    match c.address_of(node) {
                        None => Err(format!("node {node} is not in the cluster")),
                        Some(addr) => crate::cluster::transfer::pull(me, &c, &addr, id, size).await,
                    }
                },
                move |shared, st, result| {
                    // A pull the queue dropped (its node died) was followed
                    // by another: only its bytes, if it got them, count.
                    if st.pulls.ended(id, ticket) || result.is_ok() {
                        shared.pulled(st, id, node, result);
                    }
                    shared.admit_pulls(st);
                },
            );
        }
    }

    /// A pull ended: readers waiting for the bytes go on.
    fn pulled(&self, st: &mut State, id: ObjectId, from: NodeId, result: Result<(), String>) {
        let Some(o) = st.objects.get_mut(&id) else {
            // Freed while it was pulled.
            if result.is_ok() {
                self.delete_later(st, vec![id]);
            }
            return;
        };
        o.pulling = false;
        let ObjState::Ready(Body::Remote { size, .. }) = o.state else {
            return;
        };
        // A pull that succeeded sealed its copy as a primary one of this
        // node's, so nothing can have taken it since.
        let adopted = result;
        if let Err(e) = &adopted {
            tracing::info!(object = %id, from = %from, "pull failed: {e}");
            // Another copy first, then the lender again.
            if self.try_next_copy(st, id, from) {
                return;
            }
        }
        let Some(o) = st.objects.get_mut(&id) else {
            return;
        };
        if adopted.is_err()
            && let Some(l) = o.lender
            && o.relocations < 3
        {
            // The copy it was told of is gone (its node died, or it was
            // remade elsewhere): ask the lender again.
            o.relocations += 1;
            o.state = ObjState::Locating;
            tracing::info!(object = %id, "no other copy known; locating it again");
            self.start_locate(l, id);
            return;
        }
        let landed = adopted.is_ok();
        o.state = ObjState::Ready(match adopted {
            Ok(()) => Body::Stored(size),
            Err(e) => {
                tracing::warn!(object = %id, from = %from, "pull failed: {e}");
                Body::Error(error(
                    K::ObjectLost,
                    "",
                    format!("object {id} could not be pulled from node {from}: {e}"),
                ))
            }
        });
        let waiters = std::mem::take(&mut o.waiters);
        let fetchers = std::mem::take(&mut o.fetchers);
        if landed {
            o.relocations = 0;
            self.keep_as_copy(st, id, from);
        }
        for w in waiters {
            self.waiter_progress(st, w);
        }
        for t in fetchers {
            self.fetched(st, t);
        }
        self.free_if_unused(st, id);
    }

    /// One message from a peer, in the order it sent them.
    pub(crate) fn peer_message(&self, st: &mut State, from: NodeId, m: M) -> Result<(), String> {
        match m {
            M::Forward(f) => self.on_forward(st, from, f),
            M::Finished(f) => self.on_finished(st, from, f),
            M::Release(r) => {
                for b in &r.ids {
                    let id = parse_id(b).ok_or("Release: malformed object id")?;
                    if let Some(o) = st.objects.get_mut(&id)
                        && count_down(&mut o.lent, from)
                    {
                        if !o.lent.iter().any(|(n, _)| *n == from) {
                            // It holds none: its copy went with its last.
                            o.copies.retain(|n| *n != from);
                        }
                        self.free_if_unused(st, id);
                    }
                }
                Ok(())
            }
            M::Copies(c) => {
                self.on_copies(st, from, c);
                Ok(())
            }
            M::Borrow(b) => {
                for x in &b.ids {
                    let id = parse_id(x).ok_or("Borrow: malformed object id")?;
                    if !self.grant(st, from, &id) {
                        // Gone already: the borrower finds out when it locates it.
                        tracing::debug!(object = %id, peer = %from, "borrow of an unknown object");
                    }
                }
                Ok(())
            }
            M::Log(l) => {
                if let (Some(conn), Some(log)) =
                    (st.jobs.get(&l.job_id).and_then(|j| j.logs), l.log)
                {
                    st.send(conn, 0, pb::reply::Kind::Log(log));
                }
                Ok(())
            }
            M::Cancel(c) => {
                let tid = parse_id(&c.task_id).ok_or("Cancel: malformed task id")?;
                if st.tasks.get(&tid).is_some_and(|t| t.origin == Some(from)) {
                    self.cancel_task(st, tid, c.force);
                }
                Ok(())
            }
            M::KillActor(k) => {
                let a = parse_id(&k.actor_id).ok_or("KillActor: malformed actor id")?;
                // Its owner may end it when no handle is left; any node of
                // the cluster may kill it (`kill` through a borrowed handle).
                match st.actors.get(&a) {
                    Some(x) if k.orphaned && x.origin == Some(from) => self.actor_orphaned(st, a),
                    Some(_) if !k.orphaned => self.kill_actor(st, &a, k.no_restart, false),
                    _ => {}
                }
                Ok(())
            }
        }
    }

    /// A task forwarded here by its owner's node.
    fn on_forward(&self, st: &mut State, from: NodeId, f: cpb::Forward) -> Result<(), String> {
        let spec = f.spec.ok_or("Forward without a task")?;
        let job = f.job.unwrap_or_default();
        if job.worker_command.is_empty() {
            return Err("Forward: the job does not say how to start workers".into());
        }
        let local_job = match st.remote_jobs.get(&(from, job.job_id)) {
            Some(j) => *j,
            None => {
                let j = st.next_remote_job;
                st.next_remote_job += 1;
                let hello = pb::Hello {
                    worker_command: job.worker_command,
                    worker_cwd: job.worker_cwd,
                    worker_env: job.worker_env,
                    ..Default::default()
                };
                st.jobs.insert(
                    j,
                    Job {
                        command: Arc::new(WorkerCommand::new(&hello)),
                        startup_failures: 0,
                        alive: true,
                        logs: None,
                        keys: Vec::new(),
                    },
                );
                st.remote_jobs.insert((from, job.job_id), j);
                j
            }
        };
        for id in Self::sent_refs(&spec) {
            self.accept_grant(st, from, id);
        }
        // The grants now hold the arguments; the task's own holds are added
        // by submission, and the grants go back when the proxies are freed.
        self.submit_task(st, local_job, 0, spec, Some((from, f.attempts)))
    }

    /// Results of a task forwarded to `from`: stored ones stay there (held
    /// for this node), nested refs come with a hold each.
    fn on_finished(&self, st: &mut State, from: NodeId, f: cpb::Finished) -> Result<(), String> {
        let tid = parse_id(&f.task_id).ok_or("Finished: malformed task id")?;
        let mut results = Vec::with_capacity(f.results.len());
        for r in &f.results {
            let id = parse_id(&r.id).ok_or("Finished: malformed result id")?;
            let contained: Vec<ObjectId> = r.contained.iter().filter_map(|b| parse_id(b)).collect();
            results.push((id, r, contained));
        }
        let ours = st
            .tasks
            .get(&tid)
            .is_some_and(|t| t.state == TaskState::Forwarded(from));
        if !ours {
            // Stale (the task was retried elsewhere or is gone): give
            // everything back.
            for (id, r, contained) in &results {
                if matches!(r.body, Some(pb::object::Body::Stored(_))) {
                    self.give_back(id, vec![(from, 1)]);
                }
                for c in contained {
                    self.give_back(c, vec![(from, 1)]);
                }
            }
            return Ok(());
        }
        let Some(task) = st.tasks.remove(&tid) else {
            return Ok(());
        };
        let mut error_result = None;
        for (id, r, contained) in results {
            for c in &contained {
                self.accept_grant(st, from, *c);
            }
            let body = match &r.body {
                Some(pb::object::Body::Inline(b)) => Body::Inline(b.clone()),
                Some(pb::object::Body::Stored(size)) => {
                    match st.objects.get_mut(&id) {
                        Some(o) => count_up(&mut o.granted, from),
                        None => self.give_back(&id, vec![(from, 1)]),
                    }
                    Body::Remote {
                        node: from,
                        size: *size,
                    }
                }
                Some(pb::object::Body::Error(e)) => {
                    error_result.get_or_insert_with(|| e.clone());
                    Body::Error(e.clone())
                }
                None => Body::Inline(bytes::Bytes::new()),
            };
            match st.objects.get_mut(&id) {
                Some(o) => o.encoding = r.encoding,
                None => {
                    // Nobody here holds the result any more.
                    for c in &contained {
                        self.free_if_unused(st, *c);
                    }
                    continue;
                }
            }
            self.complete(st, id, body, contained);
        }
        if error_result.is_some() {
            st.failed += 1;
        } else {
            st.finished += 1;
        }
        let mut task = task;
        match kind(&task.spec) {
            pb::TaskKind::ActorCreation => {
                let a = parse_id(&task.spec.actor_id);
                let alive = error_result.is_none();
                if let Some(e) = error_result
                    && let Some(a) = a
                {
                    self.actor_failed(st, &a, e);
                }
                if alive && let Some(actor) = a.and_then(|a| st.actors.get_mut(&a)) {
                    actor.creation = None;
                    actor.state = ActorState::Alive;
                    if actor.holds.is_empty() {
                        // Kept for restarts.
                        actor.holds = std::mem::take(&mut task.holds);
                    }
                }
                for h in &task.holds {
                    self.release(st, h, Hold::Task);
                }
            }
            pb::TaskKind::Normal if task.origin.is_none() => self.keep_lineage(st, tid, task),
            _ => {
                for h in &task.holds {
                    self.release(st, h, Hold::Task);
                }
            }
        }
        self.schedule(st);
        Ok(())
    }

    /// A task that ran on another node finished: while an output of it that
    /// lives only there is referenced, its spec and argument holds are kept
    /// to make that output again if the node dies.
    fn keep_lineage(&self, st: &mut State, tid: TaskId, task: Task) {
        let mut live = 0;
        for r in task.spec.returns.iter().filter_map(|b| parse_id(b)) {
            if let Some(o) = st.objects.get_mut(&r)
                && matches!(o.state, ObjState::Ready(Body::Remote { .. }))
            {
                o.lineage = Some(tid);
                live += 1;
            }
        }
        if live == 0 || task.retries_left == 0 {
            for r in task.spec.returns.iter().filter_map(|b| parse_id(b)) {
                if let Some(o) = st.objects.get_mut(&r) {
                    o.lineage = None;
                }
            }
            for h in &task.holds {
                self.release(st, h, Hold::Task);
            }
            return;
        }
        st.lineage.insert(
            tid,
            super::state::Lineage {
                reruns_left: task.retries_left,
                spec: task.spec,
                function: task.function,
                job: task.job,
                resources: task.resources,
                holds: task.holds,
                live,
            },
        );
    }

    /// Runs a finished task again to remake its outputs lost with a node;
    /// false if it cannot (no lineage, no reruns left, its driver is gone).
    fn reconstruct(&self, st: &mut State, tid: TaskId, dead: NodeId) -> bool {
        if st.tasks.contains_key(&tid) {
            return true; // already running again
        }
        let Some(l) = st.lineage.get_mut(&tid) else {
            return false;
        };
        if l.reruns_left == 0 || !st.jobs.get(&l.job).is_some_and(|j| j.alive) {
            return false;
        }
        l.reruns_left -= 1;
        let spec = l.spec.clone();
        let deps: Vec<ObjectId> = spec
            .args
            .iter()
            .filter_map(|a| match &a.kind {
                Some(pb::arg::Kind::Object(b)) => parse_id(b),
                _ => None,
            })
            .collect();
        let task = Task {
            function: Arc::clone(&l.function),
            job: l.job,
            state: TaskState::Waiting,
            pending_deps: 0,
            resources: l.resources.clone(),
            attempt: 0,
            retries_left: l.reruns_left,
            cancelled: false,
            holds: Vec::new(),
            deps: deps.clone(),
            origin: None,
            fetching: 0,
            submitter: None,
            spec,
        };
        tracing::info!(task = %task.function, node = %dead, "remaking outputs lost with their node");
        for r in task.spec.returns.iter().filter_map(|b| parse_id(b)) {
            if let Some(o) = st.objects.get_mut(&r)
                && matches!(o.state, ObjState::Ready(Body::Remote { node, .. }) if node == dead)
            {
                o.state = ObjState::Pending(tid);
                o.pulling = false;
            }
        }
        st.tasks.insert(tid, task);
        let mut pending = 0;
        for d in deps {
            if let Some(o) = st.objects.get_mut(&d).filter(|o| !o.is_ready()) {
                o.dependents.push(tid);
                pending += 1;
            }
        }
        if let Some(t) = st.tasks.get_mut(&tid) {
            t.pending_deps = pending;
        }
        if pending == 0 {
            self.deps_resolved(st, tid);
        }
        true
    }

    /// The node an actor lived on died: its calls there fail; it is
    /// restarted (on any node) if `max_restarts` allows, else it is dead.
    fn actor_node_died(&self, st: &mut State, a: &ObjectId, node: NodeId, why: &str) {
        let Some(actor) = st.actors.get_mut(a) else {
            return;
        };
        actor.location = None;
        let class = Arc::clone(&actor.class);
        let creation = actor.creation;
        let restart = actor.restarts_left > 0
            && !actor.orphaned
            && !matches!(actor.state, ActorState::Dead(_));
        let job = actor.job;
        let restart = restart && st.jobs.get(&job).is_some_and(|j| j.alive);
        let died = |f: &str| {
            error(
                K::ActorDied,
                f,
                format!("actor {class} died: its node {node} died ({why})"),
            )
        };
        let calls: Vec<TaskId> = st
            .tasks
            .iter()
            .filter(|(id, t)| {
                t.state == TaskState::Forwarded(node)
                    && Some(**id) != creation
                    && parse_id(&t.spec.actor_id) == Some(*a)
            })
            .map(|(id, _)| *id)
            .collect();
        for t in calls {
            let Some((spec, f)) = st
                .tasks
                .get(&t)
                .map(|t| (t.spec.clone(), t.function.to_string()))
            else {
                continue;
            };
            self.drop_grants(st, &spec, node);
            self.fail_task(st, t, died(&f));
        }
        if let Some(spec) = creation
            .and_then(|c| st.tasks.get(&c))
            .map(|t| t.spec.clone())
        {
            self.drop_grants(st, &spec, node);
        }
        if restart {
            if let Some(actor) = st.actors.get_mut(a) {
                actor.restarts_left -= 1;
                actor.state = ActorState::Pending;
                tracing::info!(actor = %class, restarts_left = actor.restarts_left, "restarting actor: its node {node} died");
            }
            self.requeue_creation(st, a);
        } else {
            match creation {
                Some(t) => self.fail_task(st, t, died("")),
                None => self.actor_failed(st, a, died("")),
            }
        }
    }

    /// Forgets the holds granted to `node` with a task it will never finish.
    fn drop_grants(&self, st: &mut State, spec: &pb::TaskSpec, node: NodeId) {
        for id in Self::sent_refs(spec) {
            if let Some(o) = st.objects.get_mut(&id) {
                count_down(&mut o.lent, node);
            }
        }
    }

    /// A forwarded task here ended: its results go to the owner's node.
    /// Stored ones are kept here for it (until it releases them); each ref
    /// nested in them is granted to it.
    pub(crate) fn finish_forwarded(
        &self,
        st: &mut State,
        origin: NodeId,
        task: &Task,
        results: Vec<(ObjectId, Body, i32, Vec<ObjectId>)>,
    ) {
        let mut out = Vec::with_capacity(results.len());
        for (id, body, encoding, contained) in results {
            use pb::object::Body as B;
            let body = match body {
                Body::Inline(b) => B::Inline(b),
                Body::Error(e) => B::Error(e),
                Body::Stored(n) => {
                    match st.objects.get_mut(&id) {
                        Some(o) => {
                            // A proxy of it was made here already.
                            count_up(&mut o.lent, origin);
                            if matches!(o.state, ObjState::Locating) {
                                o.encoding = encoding;
                                let c = contained.clone();
                                for x in &c {
                                    if let Some(co) = st.objects.get_mut(x) {
                                        co.contained_in += 1;
                                    }
                                }
                                if let Some(o) = st.objects.get_mut(&id) {
                                    o.contained = c;
                                    o.state = ObjState::Ready(Body::Stored(n));
                                }
                                self.proxy_ready(st, id);
                            }
                        }
                        None => {
                            let mut o = Obj::new(
                                ObjState::Ready(Body::Stored(n)),
                                0,
                                Arc::clone(&task.function),
                            );
                            o.lender = Some(origin);
                            o.lent.push((origin, 1));
                            o.encoding = encoding;
                            st.objects.insert(id, o);
                        }
                    }
                    B::Stored(n)
                }
                Body::Remote { .. } => B::Error(error(
                    K::ObjectLost,
                    &task.function,
                    "a result cannot be on another node".into(),
                )),
            };
            for c in &contained {
                self.grant(st, origin, c);
            }
            out.push(pb::Object {
                id: id_bytes(&id),
                body: Some(body),
                contained: contained.iter().map(id_bytes).collect(),
                encoding,
            });
        }
        self.send_peer(
            origin,
            M::Finished(cpb::Finished {
                task_id: task.spec.task_id.clone(),
                results: out,
            }),
        );
    }

    /// A proxy got its value by another way than its lender's answer.
    fn proxy_ready(&self, st: &mut State, id: ObjectId) {
        let Some(o) = st.objects.get_mut(&id) else {
            return;
        };
        let waiters = std::mem::take(&mut o.waiters);
        let dependents = std::mem::take(&mut o.dependents);
        for w in waiters {
            self.waiter_progress(st, w);
        }
        for t in dependents {
            self.dependency_ready(st, t, id);
        }
    }

    /// A call through a handle lent by another node: straight to the node
    /// the actor lives on, or held until the handle is located.
    pub(crate) fn call_remote_actor(&self, st: &mut State, a: ObjectId, tid: TaskId) {
        let Some(o) = st.objects.get_mut(&a) else {
            return;
        };
        match o.actor_node {
            Some(node) => self.forward(st, tid, node),
            None if matches!(o.state, ObjState::Locating) => o.waiting_calls.push(tid),
            None => {
                let f = st
                    .tasks
                    .get(&tid)
                    .map(|t| t.function.to_string())
                    .unwrap_or_default();
                let e = error(
                    K::ActorDied,
                    &f,
                    format!("{f}: the actor's owner does not say where it lives (it ended)"),
                );
                self.fail_task(st, tid, e);
            }
        }
    }

    /// A process here is about to hold `id`, which `lender` owns and did
    /// not grant: borrow it (and locate it) if this node does not know it.
    pub(crate) fn borrow_from(&self, st: &mut State, lender: NodeId, id: ObjectId) {
        if Some(lender) == st.node_id || st.objects.contains_key(&id) {
            return;
        }
        self.send_peer(
            lender,
            M::Borrow(cpb::Borrow {
                ids: vec![id_bytes(&id)],
            }),
        );
        self.accept_grant(st, lender, id);
    }

    /// The KV: the head's in a cluster (answered once the head does), else
    /// this node's own.
    pub(crate) fn kv_put(&self, st: &mut State, conn: u64, seq: u64, p: pb::KvPut) {
        use pb::reply::Kind as R;
        let Some(c) = self.cluster().cloned() else {
            let reply = match st.kv.get(&p.key) {
                Some(v) if !p.overwrite => pb::KvPutReply {
                    added: false,
                    existing: v.clone(),
                },
                _ => {
                    st.kv.insert(p.key, p.value);
                    pb::KvPutReply {
                        added: true,
                        existing: bytes::Bytes::new(),
                    }
                }
            };
            return st.send(conn, seq, R::KvPut(reply));
        };
        let req = cpb::KvPutRequest {
            key: p.key,
            value: p.value,
            overwrite: p.overwrite,
        };
        self.ask_head(c, Some((conn, seq)), |mut control| async move {
            let r = control.kv_put(req).await?.into_inner();
            Ok(R::KvPut(pb::KvPutReply {
                added: r.added,
                existing: r.existing,
            }))
        });
    }

    pub(crate) fn kv_get(&self, st: &mut State, conn: u64, seq: u64, key: String) {
        use pb::reply::Kind as R;
        let Some(c) = self.cluster().cloned() else {
            let reply = match st.kv.get(&key) {
                Some(v) => pb::KvGetReply {
                    found: true,
                    value: v.clone(),
                },
                None => pb::KvGetReply::default(),
            };
            return st.send(conn, seq, R::KvGet(reply));
        };
        self.ask_head(c, Some((conn, seq)), |mut control| async move {
            let r = control.kv_get(cpb::KvKey { key }).await?.into_inner();
            Ok(R::KvGet(pb::KvGetReply {
                found: r.found,
                value: r.value,
            }))
        });
    }

    /// Deletes a key; answers `reply_to` (a request) once done, if given.
    pub(crate) fn kv_delete(&self, st: &mut State, reply_to: Option<(u64, u64)>, key: String) {
        use pb::reply::Kind as R;
        let Some(c) = self.cluster().cloned() else {
            st.kv.remove(&key);
            if let Some((conn, seq)) = reply_to {
                st.send(conn, seq, R::Ok(pb::Ok {}));
            }
            return;
        };
        self.ask_head(c, reply_to, |mut control| async move {
            control.kv_delete(cpb::KvKey { key }).await?;
            Ok(R::Ok(pb::Ok {}))
        });
    }

    /// Runs `call` on the head's control service off the scheduler's lock,
    /// and answers the client's request `reply_to` with its reply (or with
    /// why the head did not give one) once it is done.
    fn ask_head<F, Fut>(&self, c: Arc<Cluster>, reply_to: Option<(u64, u64)>, call: F)
    where
        F: FnOnce(crate::cluster::Control) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<pb::reply::Kind, tonic::Status>> + Send,
    {
        self.off_lock(
            c,
            move |c, _| async move {
                call(c.control())
                    .await
                    .unwrap_or_else(|s| head_error(&c, &s))
            },
            move |_, st, reply| {
                if let Some((conn, seq)) = reply_to {
                    st.send(conn, seq, reply);
                }
            },
        );
    }

    /// Sends an actor's queued calls to the node it lives on, in order.
    pub(crate) fn forward_actor_calls(&self, st: &mut State, a: &ObjectId, node: NodeId) {
        let queued: Vec<TaskId> = match st.actors.get_mut(a) {
            Some(actor) => actor.queue.drain(..).collect(),
            None => return,
        };
        for tid in queued {
            self.forward(st, tid, node);
        }
    }

    /// A node died: what was forwarded there is retried or failed, objects
    /// only it had are lost, holds it had are dropped.
    fn node_died(&self, st: &mut State, node: NodeId, why: &str) {
        tracing::warn!(%node, "node died: {why}");
        // Its pulls end in errors; the room they held is free now.
        st.pulls.node_died(node);
        self.admit_pulls(st);
        let actors: Vec<ObjectId> = st
            .actors
            .iter()
            .filter(|(_, a)| a.location == Some(node))
            .map(|(id, _)| *id)
            .collect();
        for a in actors {
            self.actor_node_died(st, &a, node, why);
        }
        let forwarded: Vec<TaskId> = st
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::Forwarded(node))
            .map(|(id, _)| *id)
            .collect();
        self.keep_copies_of(st, node);
        for tid in forwarded {
            let Some(t) = st.tasks.get_mut(&tid) else {
                continue;
            };
            let kind = kind(&t.spec);
            let f = Arc::clone(&t.function);
            // The grants sent with it died with the node.
            let spec = t.spec.clone();
            self.drop_grants(st, &spec, node);
            let Some(t) = st.tasks.get_mut(&tid) else {
                continue;
            };
            if kind == pb::TaskKind::Normal && t.retries_left > 0 {
                t.retries_left -= 1;
                t.state = TaskState::Ready;
                let r = t.resources.clone();
                tracing::info!(task = %f, "its node died; retrying it");
                st.queue_ready(tid, r, true);
            } else {
                let (k, what) = if kind == pb::TaskKind::Normal {
                    (
                        K::WorkerCrashed,
                        "no retries left; raise max_retries to retry",
                    )
                } else {
                    (K::ActorDied, "its actor was there")
                };
                self.fail_task(
                    st,
                    tid,
                    error(
                        k,
                        &f,
                        format!("{f}: node {node} died while running it ({why}); {what}"),
                    ),
                );
            }
        }
        let ids: Vec<ObjectId> = st.objects.keys().copied().collect();
        for id in ids {
            let Some(o) = st.objects.get_mut(&id) else {
                continue;
            };
            o.lent.retain(|(n, _)| *n != node);
            o.granted.retain(|(n, _)| *n != node);
            let lost = match o.state {
                ObjState::Ready(Body::Remote { node: n, .. }) => n == node,
                ObjState::Locating => o.lender == Some(node),
                _ => false,
            };
            let lender = o.lender.filter(|l| *l != node);
            let lineage = o.lineage;
            if lost && let Some(l) = lender {
                // Its owner may remake it: ask again where it is.
                o.state = ObjState::Locating;
                o.pulling = false;
                self.start_locate(l, id);
                continue;
            }
            if lost && lineage.is_some_and(|t| self.reconstruct(st, t, node)) {
                continue;
            }
            let Some(o) = st.objects.get_mut(&id) else {
                continue;
            };
            if lost {
                let e = error(
                    K::ObjectLost,
                    "",
                    format!(
                        "object {id} was lost: its only copy was on node {node}, which died ({why})"
                    ),
                );
                o.state = ObjState::Locating; // so that `complete` takes the error
                o.pulling = false;
                self.complete(st, id, Body::Error(e), Vec::new());
            } else {
                self.free_if_unused(st, id);
            }
        }
        let jobs: Vec<u64> = st
            .remote_jobs
            .iter()
            .filter(|((n, _), _)| *n == node)
            .map(|(_, j)| *j)
            .collect();
        st.remote_jobs.retain(|(n, _), _| *n != node);
        for j in jobs {
            self.end_job(st, j);
        }
    }
}

/// The reply to a KV request the head could not answer.
fn head_error(c: &Cluster, s: &tonic::Status) -> pb::reply::Kind {
    pb::reply::Kind::Error(pb::Error {
        message: format!(
            "the cluster's KV on the head at {} did not answer: {}",
            c.head_address,
            s.message()
        ),
        timeout: false,
        missing: Vec::new(),
    })
}
