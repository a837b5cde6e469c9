//! Actors: a dedicated worker process each, calls run one at a time in the
//! order they were submitted, restarts up to `max_restarts`.

use std::sync::Arc;

use arca_proto::node as pb;
use arca_store::ObjectId;

use super::Shared;
use super::objects::Hold;
use super::state::{
    Actor, ActorState, Body, ObjState, State, Task, TaskId, TaskState, WorkerId, WorkerState,
    error, parse_id,
};

use pb::ErrorKind as K;

/// Calls sent to an actor's worker beyond those it may run at once: they
/// wait there, in order, so the worker starts the next call as soon as one
/// ends instead of after a round trip through the node (1.7 times the 1:1
/// call rate of a sequential Python actor). A cancel of one that has not
/// started reaches the worker, which skips it.
pub(crate) const ACTOR_PIPELINE: usize = 16;

/// The largest call sent ahead (its spec and inline arguments). A worker
/// running a call may not read its socket until the call ends (a Python
/// worker's main thread reads it), so what waits there must fit in the
/// socket's buffer: 16 calls of at most 4 KiB do, and a node writing to it
/// never blocks. A larger call waits in the node for a free slot.
const AHEAD_MAX_BYTES: usize = 4096;

impl Shared {
    /// An actor's constructor was submitted.
    pub(crate) fn actor_created(&self, st: &mut State, task: &Task, returns: &[ObjectId]) {
        let Some(id) = returns.first().copied() else {
            return;
        };
        let class: Arc<str> = task
            .function
            .rsplit_once("::")
            .map_or(&*task.function, |(c, _)| c)
            .into();
        let tid = parse_id(&task.spec.task_id);
        st.actors.insert(
            id,
            Actor {
                job: task.job,
                class,
                spec: task.spec.clone(),
                state: ActorState::Pending,
                worker: None,
                queue: Default::default(),
                running: Vec::new(),
                max_concurrency: task.spec.max_concurrency.max(1) as usize,
                restarts_left: task.spec.max_restarts,
                resources: task.resources.clone(),
                holds: Vec::new(),
                orphaned: false,
                creation: tid,
                killed: None,
                location: None,
                origin: task.origin,
                detached: false,
            },
        );
    }

    /// Queues a method call; false if the actor is gone (the call failed).
    pub(crate) fn enqueue_actor_call(&self, st: &mut State, tid: TaskId) -> bool {
        let Some(t) = st.tasks.get(&tid) else {
            return false;
        };
        let f = Arc::clone(&t.function);
        let actor = parse_id(&t.spec.actor_id);
        if let Some(a) = actor
            && !st.actors.contains_key(&a)
            && st.objects.get(&a).is_some_and(|o| o.lender.is_some())
        {
            // A borrowed handle: the call goes to the actor's node.
            self.call_remote_actor(st, a, tid);
            return false;
        }
        let dead = match actor.and_then(|a| st.actors.get(&a)) {
            None => Some(error(
                K::ActorDied,
                &f,
                format!("{f}: no such actor on this node (it ended, or its handle is stale)"),
            )),
            Some(a) => match &a.state {
                ActorState::Dead(e) => Some(pb::ErrorInfo {
                    function: f.to_string(),
                    ..e.clone()
                }),
                _ => None,
            },
        };
        if let Some(e) = dead {
            self.fail_task(st, tid, e);
            return false;
        }
        if let Some(a) = actor.and_then(|a| st.actors.get_mut(&a)) {
            a.queue.push_back(tid);
        }
        true
    }

    /// Resources are reserved for the actor's constructor: start its worker.
    pub(crate) fn start_actor(&self, st: &mut State, tid: TaskId) {
        let Some(t) = st.tasks.get(&tid) else {
            return;
        };
        let (job, f) = (t.job, Arc::clone(&t.function));
        let Some(a) = parse_id(&t.spec.actor_id) else {
            return;
        };
        match self.spawn_worker(st, job, Some(a)) {
            Some(wid) => {
                if let Some(t) = st.tasks.get_mut(&tid) {
                    t.state = TaskState::Running(wid);
                }
                if let Some(actor) = st.actors.get_mut(&a) {
                    actor.worker = Some(wid);
                    actor.state = ActorState::Creating;
                }
            }
            None => {
                if let Some(actor) = st.actors.get(&a) {
                    let r = actor.resources.clone();
                    st.available.add(&r);
                }
                let e = error(
                    K::ActorDied,
                    &f,
                    format!("cannot start a worker process for {f}"),
                );
                self.fail_task(st, tid, e);
            }
        }
    }

    /// The actor's worker connected: run the constructor.
    pub(crate) fn actor_worker_ready(&self, st: &mut State, a: &ObjectId, wid: WorkerId) {
        match st.actors.get(a).and_then(|a| a.creation) {
            Some(tid) => self.dispatch(st, wid, tid),
            None => {
                let e = error(K::ActorDied, "", "actor has no constructor to run".into());
                self.kill_worker(st, wid, e);
            }
        }
    }

    /// The constructor returned: the actor is alive, or dead if it failed.
    pub(crate) fn actor_constructed(
        &self,
        st: &mut State,
        wid: WorkerId,
        task: Task,
        failed: Option<pb::ErrorInfo>,
    ) {
        let Some(a) = parse_id(&task.spec.actor_id) else {
            return;
        };
        let Some(actor) = st.actors.get_mut(&a) else {
            return;
        };
        actor.creation = None;
        match failed {
            None => {
                actor.state = ActorState::Alive;
                if actor.holds.is_empty() {
                    actor.holds = task.holds;
                } else {
                    // A restart: the first construction's holds are kept.
                    for h in &task.holds {
                        self.release(st, h, Hold::Task);
                    }
                }
                if let Some(w) = st.workers.get_mut(&wid) {
                    w.state = WorkerState::Idle;
                }
                self.actor_dispatch(st, &a);
            }
            Some(e) => {
                let class = Arc::clone(&actor.class);
                actor.restarts_left = 0;
                for h in &task.holds {
                    self.release(st, h, Hold::Task);
                }
                let e = error(
                    K::ActorDied,
                    &e.function,
                    format!("actor {class} could not be created: {}", e.message),
                );
                self.actor_failed(st, &a, e);
            }
        }
    }

    /// Sends the actor's next calls, in order, while it has free slots
    /// (`max_concurrency`, plus [`ACTOR_PIPELINE`] queued in its worker) and
    /// the next call's arguments exist.
    pub(crate) fn actor_dispatch(&self, st: &mut State, a: &ObjectId) {
        if let Some(node) = st.actors.get(a).and_then(|x| x.location) {
            // It lives on another node: its calls go there, in order.
            return self.forward_actor_calls(st, a, node);
        }
        loop {
            let Some(actor) = st.actors.get(a) else {
                return;
            };
            if actor.state != ActorState::Alive
                || actor.running.len() >= actor.max_concurrency + ACTOR_PIPELINE
            {
                return;
            }
            let Some(wid) = actor.worker.filter(|w| {
                st.workers
                    .get(w)
                    .is_some_and(|w| w.conn.is_some() && w.state != WorkerState::Starting)
            }) else {
                return;
            };
            let next = actor.queue.front().copied();
            // A call sent ahead must start after those before it: none of
            // them may still wait for an argument from another node, nor
            // may it. Only calls sent while a slot was free can wait so (the
            // first `max_concurrency`: none is sent ahead while one waits).
            if actor.running.len() >= actor.max_concurrency {
                let waits = |t: &TaskId| st.tasks.get(t).is_some_and(|t| t.fetching > 0);
                if actor.running.iter().take(actor.max_concurrency).any(waits)
                    || next.is_some_and(|t| needs_fetch(st, t) || !small(st, t))
                {
                    return;
                }
            }
            match next {
                Some(tid)
                    if st
                        .tasks
                        .get(&tid)
                        .is_some_and(|t| t.state == TaskState::Ready) =>
                {
                    if let Some(actor) = st.actors.get_mut(a) {
                        actor.queue.pop_front();
                        actor.running.push(tid);
                    }
                    self.dispatch(st, wid, tid);
                }
                _ => return self.actor_idle(st, a, wid),
            }
        }
    }

    /// Nothing more to dispatch to the actor now: one without handles ends
    /// once its last call is done.
    fn actor_idle(&self, st: &mut State, a: &ObjectId, wid: WorkerId) {
        let Some(actor) = st.actors.get(a) else {
            return;
        };
        match actor.queue.front() {
            Some(_) => {}
            None if actor.orphaned && actor.running.is_empty() => {
                let e = error(
                    K::ActorDied,
                    "",
                    format!("actor {} ended: no handle to it is left", actor.class),
                );
                if let Some(actor) = st.actors.get_mut(a) {
                    actor.restarts_left = 0;
                }
                self.kill_worker(st, wid, e);
            }
            None => {}
        }
    }

    /// The last handle to the actor was dropped: it ends once its calls are done.
    pub(crate) fn actor_orphaned(&self, st: &mut State, a: ObjectId) {
        let Some(actor) = st.actors.get_mut(&a) else {
            return;
        };
        actor.orphaned = true;
        if let Some(node) = actor.location {
            // It lives on another node: it ends there once its calls are done.
            self.send_kill(node, &a, true, true);
        }
        if matches!(actor.state, ActorState::Dead(_)) {
            st.actors.remove(&a);
            return;
        }
        if actor.worker.is_none() && actor.state != ActorState::Alive {
            let e = error(K::ActorDied, "", "no handle to the actor is left".into());
            match actor.creation {
                Some(t) => self.fail_task(st, t, e),
                None => self.actor_failed(st, &a, e),
            }
            return;
        }
        self.actor_dispatch(st, &a);
    }

    /// `arca::kill`; with `exit`, the actor's own `exit_actor`.
    pub(crate) fn kill_actor(&self, st: &mut State, a: &ObjectId, no_restart: bool, exit: bool) {
        if no_restart && let Some(o) = st.objects.get_mut(a).filter(|o| o.detached) {
            // A detached actor's handle is no longer held for it.
            o.detached = false;
            self.free_if_unused(st, *a);
        }
        let Some(actor) = st.actors.get_mut(a) else {
            // A borrowed handle: the actor's node (or its owner's) kills it.
            if let Some(node) = st.objects.get(a).and_then(|o| o.actor_node.or(o.lender)) {
                self.send_kill(node, a, no_restart, false);
            }
            return;
        };
        if no_restart {
            actor.restarts_left = 0;
            actor.detached = false;
        }
        if let Some(node) = actor.location {
            return self.send_kill(node, a, no_restart, false);
        }
        let why = if exit {
            format!("actor {} exited: it called exit_actor()", actor.class)
        } else {
            format!("actor {} was killed by arca::kill", actor.class)
        };
        let e = error(K::ActorDied, "", why);
        match actor.worker {
            Some(w) => {
                actor.killed = Some(e);
                st.kill_process(w);
            }
            None => match actor.creation {
                Some(t) => self.fail_task(st, t, e),
                None => self.actor_failed(st, a, e),
            },
        }
    }

    /// Queues the actor's constructor again (a restart): its task if it is
    /// still there, else a new one made from the actor's spec.
    pub(crate) fn requeue_creation(&self, st: &mut State, a: &ObjectId) {
        let Some(actor) = st.actors.get_mut(a) else {
            return;
        };
        let resources = actor.resources.clone();
        let class = Arc::clone(&actor.class);
        // The constructor's runs so far: one per restart (the worker tells
        // a restarted actor by an attempt above 1).
        let restarts = actor.spec.max_restarts.saturating_sub(actor.restarts_left);
        let tid = match actor.creation {
            Some(t) => t,
            None => {
                let spec = actor.spec.clone();
                let tid = parse_id(&spec.task_id).unwrap_or_else(ObjectId::random);
                let task = Task {
                    function: format!("{class}::new").into(),
                    job: actor.job,
                    state: TaskState::Ready,
                    pending_deps: 0,
                    resources: resources.clone(),
                    attempt: restarts,
                    retries_left: 0,
                    cancelled: false,
                    holds: Vec::new(),
                    deps: Vec::new(),
                    origin: actor.origin,
                    fetching: 0,
                    submitter: None,
                    spec,
                };
                actor.creation = Some(tid);
                st.tasks.insert(tid, task);
                tid
            }
        };
        if let Some(t) = st.tasks.get_mut(&tid) {
            t.state = TaskState::Ready;
        }
        st.queue_ready(tid, resources, true);
        self.schedule(st);
    }

    /// The actor's process ended: restart it, or fail what it had left.
    pub(crate) fn actor_worker_died(&self, st: &mut State, a: &ObjectId, why: pb::ErrorInfo) {
        let Some(actor) = st.actors.get_mut(a) else {
            return;
        };
        actor.worker = None;
        let why = actor.killed.take().unwrap_or(why);
        let resources = actor.resources.clone();
        let class = Arc::clone(&actor.class);
        let mut running = std::mem::take(&mut actor.running);
        let job_alive = st.jobs.get(&actor.job).is_some_and(|j| j.alive);
        let restart = actor.restarts_left > 0
            && !actor.orphaned
            && job_alive
            && !matches!(actor.state, ActorState::Dead(_));
        // Only the first `max_concurrency` calls sent can have started; the
        // rest waited in the worker (ACTOR_PIPELINE) and go to the restarted
        // actor, in order, as if they had never been sent. Of those that may
        // have started, the ones with retries left (`max_task_retries`) run
        // again on the restarted actor, ahead of the rest, as in Ray.
        let mut again = Vec::new();
        if restart {
            let waited = running.split_off(running.len().min(actor.max_concurrency));
            let (retried, failed) = running.into_iter().partition(|tid| {
                st.tasks
                    .get(tid)
                    .is_some_and(|t| t.retries_left > 0 && !t.cancelled)
            });
            running = failed;
            for tid in &retried {
                if let Some(t) = st.tasks.get_mut(tid) {
                    t.retries_left -= 1;
                }
            }
            // Dispatch counts an attempt: a call that only waited made none.
            for tid in &waited {
                if let Some(t) = st.tasks.get_mut(tid) {
                    t.attempt = t.attempt.saturating_sub(1);
                }
            }
            again = retried;
            again.extend(waited);
        }
        let mut cancelled = Vec::new();
        for &tid in again.iter().rev() {
            let Some(t) = st.tasks.get_mut(&tid) else {
                continue;
            };
            t.state = TaskState::Ready;
            if t.cancelled {
                cancelled.push(tid);
            }
            if let Some(actor) = st.actors.get_mut(a) {
                actor.queue.push_front(tid);
            }
        }
        // Cancelled while they waited in the worker: queued again, a cancel
        // ends them as it ends any queued call.
        for tid in cancelled {
            self.cancel_task(st, tid, false);
        }
        st.available.add(&resources);
        let died = |f: &str| {
            let msg = if why.message.starts_with("actor ") {
                why.message.clone()
            } else {
                format!("actor {class} died: {}", why.message)
            };
            error(K::ActorDied, f, msg)
        };
        for t in running {
            let f = st
                .tasks
                .get(&t)
                .map_or_else(String::new, |t| t.function.to_string());
            self.fail_task(st, t, died(&f));
        }
        if restart {
            let Some(actor) = st.actors.get_mut(a) else {
                return;
            };
            actor.restarts_left -= 1;
            actor.state = ActorState::Pending;
            tracing::info!(actor = %class, restarts_left = actor.restarts_left, "restarting actor: {}", why.message);
            self.requeue_creation(st, a);
        } else {
            let e = died("");
            match st.actors.get(a).and_then(|a| a.creation) {
                Some(t) => self.fail_task(st, t, e),
                None => self.actor_failed(st, a, e),
            }
        }
    }

    /// The actor is dead for good: its queued calls fail with `e`.
    pub(crate) fn actor_failed(&self, st: &mut State, a: &ObjectId, e: pb::ErrorInfo) {
        let Some(actor) = st.actors.get_mut(a) else {
            return;
        };
        if matches!(actor.state, ActorState::Dead(_)) {
            return;
        }
        actor.state = ActorState::Dead(e.clone());
        actor.creation = None;
        let queue: Vec<_> = actor.queue.drain(..).collect();
        let holds = std::mem::take(&mut actor.holds);
        let (worker, orphaned) = (actor.worker, actor.orphaned);
        for t in queue {
            let f = st
                .tasks
                .get(&t)
                .map_or_else(String::new, |t| t.function.to_string());
            self.fail_task(
                st,
                t,
                pb::ErrorInfo {
                    function: f,
                    ..e.clone()
                },
            );
        }
        for h in &holds {
            self.release(st, h, Hold::Task);
        }
        if let Some(w) = worker {
            self.kill_worker(st, w, e);
        }
        if orphaned {
            st.actors.remove(a);
        }
    }
}

/// The call is small enough to wait in its worker's socket
/// ([`AHEAD_MAX_BYTES`]), with the arguments that travel inline in it.
fn small(st: &State, tid: TaskId) -> bool {
    use prost::Message;
    st.tasks.get(&tid).is_some_and(|t| {
        let inline_args: usize = t
            .deps
            .iter()
            .map(|d| match st.objects.get(d).map(|o| &o.state) {
                Some(ObjState::Ready(Body::Inline(v))) => v.len(),
                _ => 0,
            })
            .sum();
        t.spec.encoded_len() + inline_args <= AHEAD_MAX_BYTES
    })
}

/// Once dispatched, the task would wait for an argument from another node.
fn needs_fetch(st: &State, tid: TaskId) -> bool {
    st.tasks.get(&tid).is_some_and(|t| {
        t.deps.iter().any(|d| {
            st.objects
                .get(d)
                .is_some_and(|o| !o.is_local() && o.is_ready())
        })
    })
}
