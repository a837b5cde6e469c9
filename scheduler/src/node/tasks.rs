//! Tasks: submission, argument dependencies, the ready queues, dispatch to
//! workers, completion, failure and cancellation.

use std::sync::Arc;

use arca_proto::node as pb;
use arca_store::ObjectId;

use super::Shared;
use super::objects::{Hold, Taken, body_of};
use super::pulls::PullFor;
use super::state::{
    Body, ConnId, Obj, ObjState, State, Task, TaskId, TaskState, WorkerState, error, parse_id,
};
use crate::resources::ResourceSet;

use pb::ErrorKind as K;

pub(super) fn kind(spec: &pb::TaskSpec) -> pb::TaskKind {
    pb::TaskKind::try_from(spec.kind).unwrap_or(pb::TaskKind::Normal)
}

impl Shared {
    pub(crate) fn submit(
        &self,
        st: &mut State,
        conn: ConnId,
        spec: pb::TaskSpec,
    ) -> Result<(), String> {
        let (job, pid) = match st.conns.get(&conn) {
            Some(c) => (c.job.ok_or("only drivers and workers submit tasks")?, c.pid),
            None => return Ok(()),
        };
        let returns = spec.returns.clone();
        let tid = parse_id(&spec.task_id);
        if spec.resubmitted
            && let Some(tid) = tid
        {
            if self.resubmitted_but_done(st, conn, &spec, tid) {
                return Ok(());
            }
            // Results of the direct call this connection promised: the
            // task makes them now.
            for r in returns.iter().filter_map(|b| parse_id(b)) {
                if Self::promised_by(st, conn, &r)
                    && let Some(o) = st.objects.get_mut(&r)
                {
                    o.state = ObjState::Pending(tid);
                    if let Some(c) = st.conns.get_mut(&conn) {
                        c.promised.remove(&r);
                    }
                }
            }
        }
        self.submit_task(st, job, pid, spec, None)?;
        if let Some(t) = tid.and_then(|t| st.tasks.get_mut(&t)) {
            t.submitter = Some(conn);
        }
        if let Some(c) = st.conns.get_mut(&conn) {
            c.holds.extend(returns.iter().filter_map(|b| parse_id(b)));
        }
        Ok(())
    }

    /// A resubmitted direct call whose worker gave the node some of its
    /// results before it died (`Give`) ran to its end: it is not run again,
    /// and the results it had not given yet fail.
    fn resubmitted_but_done(
        &self,
        st: &mut State,
        conn: ConnId,
        spec: &pb::TaskSpec,
        tid: TaskId,
    ) -> bool {
        let returns: Vec<ObjectId> = spec.returns.iter().filter_map(|b| parse_id(b)).collect();
        let done = returns.iter().any(|r| {
            st.objects
                .get(r)
                .is_some_and(|o| !matches!(o.state, ObjState::Pending(t) if t == tid || t == *r))
        });
        if !done {
            return false;
        }
        let e = error(
            K::ActorDied,
            &spec.function,
            format!(
                "the actor's worker died while it answered {}",
                spec.function
            ),
        );
        for r in returns {
            if !st.objects.contains_key(&r) {
                Self::insert_held(st, conn, r, spec.function.as_str().into());
            }
            let pending = st.objects.get(&r).is_some_and(|o| !o.is_ready());
            if pending {
                if let Some(c) = st.conns.get_mut(&conn) {
                    c.promised.remove(&r);
                }
                self.complete(st, r, Body::Error(e.clone()), Vec::new());
            }
        }
        true
    }

    /// Queues a task of `job`: one submitted here (its returns become
    /// objects owned here, held by the submitter), or one forwarded here by
    /// `origin`, which owns its returns, after the runs it made there.
    pub(crate) fn submit_task(
        &self,
        st: &mut State,
        job: u64,
        pid: u32,
        spec: pb::TaskSpec,
        origin: Option<(crate::cluster::NodeId, u32)>,
    ) -> Result<(), String> {
        let (origin, attempts) = origin.map_or((None, 0), |(n, a)| (Some(n), a));
        let tid = parse_id(&spec.task_id).ok_or("Submit: malformed task id")?;
        let returns: Vec<ObjectId> = spec
            .returns
            .iter()
            .map(|b| parse_id(b).ok_or("Submit: malformed return id"))
            .collect::<Result<_, _>>()?;
        // A resubmitted direct call's promised results already wait for it.
        let ours = |o: &Obj| matches!(o.state, ObjState::Pending(t) if t == tid);
        if st.tasks.contains_key(&tid)
            || (origin.is_none()
                && returns
                    .iter()
                    .any(|r| st.objects.get(r).is_some_and(|o| !ours(o))))
        {
            return Err(format!(
                "Submit: task {tid} or one of its return ids already exists"
            ));
        }
        let kind = kind(&spec);
        let function: Arc<str> = spec.function.as_str().into();
        if origin.is_none() {
            for r in &returns {
                if st.objects.contains_key(r) {
                    continue;
                }
                let mut o = Obj::new(ObjState::Pending(tid), pid, Arc::clone(&function));
                o.conn_holds = 1;
                o.actor = kind == pb::TaskKind::ActorCreation;
                st.objects.insert(*r, o);
            }
        }
        let default = if kind == pb::TaskKind::Normal {
            ResourceSet::from_amounts([("CPU", 1.0)]).unwrap_or_default()
        } else {
            ResourceSet::default()
        };
        let mut task = Task {
            resources: ResourceSet::default(),
            retries_left: spec.max_retries,
            function: Arc::clone(&function),
            job,
            state: TaskState::Waiting,
            pending_deps: 0,
            attempt: attempts,
            cancelled: false,
            holds: Vec::new(),
            deps: Vec::new(),
            origin,
            fetching: 0,
            submitter: None,
            spec,
        };
        let mut failure = None;
        match ResourceSet::from_proto(task.spec.resources.as_ref(), &default) {
            Ok(r) => task.resources = r,
            Err(e) => failure = Some(error(K::Unschedulable, &function, e.to_string())),
        }
        if failure.is_none()
            && let Some(why) = self.infeasible(st, &task.resources)
        {
            failure = Some(error(
                K::Unschedulable,
                &function,
                format!(
                    "{function} asks for {} but {why}; ask for less, or start a node with more \
                     (arca start --num-cpus/--num-gpus/--resources)",
                    task.resources,
                ),
            ));
        }
        if kind == pb::TaskKind::ActorMethod
            && task.spec.resubmitted
            && failure.is_none()
            && let Some(actor) = super::state::parse_id(&task.spec.actor_id)
                .and_then(|a| st.actors.get(&a))
                .filter(|a| !matches!(a.state, super::state::ActorState::Dead(_)))
        {
            // Its worker died while it may have run: again only with
            // retries left, as for a call that went through the node.
            if task.retries_left == 0 {
                failure = Some(error(
                    K::ActorDied,
                    &function,
                    format!(
                        "actor {} died while it ran {function} (its worker process ended; \
                         set max_task_retries to run such calls again on a restarted actor)",
                        actor.class
                    ),
                ));
            } else {
                task.retries_left -= 1;
            }
        }
        // Hold the arguments (ObjectRefs, and refs nested in inline values).
        let mut refs: Vec<ObjectId> = Vec::new();
        for a in &task.spec.args {
            if let Some(pb::arg::Kind::Object(b)) = &a.kind {
                let id = parse_id(b).ok_or("Submit: malformed argument id")?;
                refs.push(id);
                task.deps.push(id);
            }
        }
        for b in &task.spec.contained {
            refs.push(parse_id(b).ok_or("Submit: malformed nested id")?);
        }
        for id in refs {
            if self.add_hold(st, &id, Hold::Task) {
                task.holds.push(id);
            } else if failure.is_none() {
                failure = Some(error(
                    K::ObjectLost,
                    &function,
                    format!(
                        "argument {id} of {function} no longer exists (freed, or its owner exited)"
                    ),
                ));
            }
        }
        if kind == pb::TaskKind::ActorCreation {
            self.actor_created(st, &task, &returns);
        }
        let deps = task.deps.clone();
        st.tasks.insert(tid, task);
        if let Some(e) = failure {
            self.fail_task(st, tid, e);
            return Ok(());
        }
        let mut pending = 0;
        for d in deps {
            if let Some(o) = st.objects.get_mut(&d).filter(|o| !o.is_ready()) {
                o.dependents.push(tid);
                pending += 1;
            }
        }
        if kind == pb::TaskKind::ActorMethod && !self.enqueue_actor_call(st, tid) {
            return Ok(());
        }
        if let Some(t) = st.tasks.get_mut(&tid) {
            t.pending_deps = pending;
        }
        if pending == 0 {
            self.deps_resolved(st, tid);
        }
        Ok(())
    }

    pub(crate) fn dependency_ready(&self, st: &mut State, tid: TaskId, _dep: ObjectId) {
        let Some(t) = st
            .tasks
            .get_mut(&tid)
            .filter(|t| t.state == TaskState::Waiting)
        else {
            return;
        };
        t.pending_deps = t.pending_deps.saturating_sub(1);
        if t.pending_deps == 0 {
            self.deps_resolved(st, tid);
        }
    }

    /// Every argument exists: fail with the first argument's error, or queue.
    pub(crate) fn deps_resolved(&self, st: &mut State, tid: TaskId) {
        if let Some(e) = st.failed_dep(&tid) {
            // The same cause as the argument's: `get` on this task reports the
            // function that failed first.
            self.fail_task(st, tid, e);
            return;
        }
        let Some(t) = st.tasks.get_mut(&tid) else {
            return;
        };
        t.state = TaskState::Ready;
        match kind(&t.spec) {
            pb::TaskKind::ActorMethod => {
                let actor = parse_id(&t.spec.actor_id);
                if let Some(a) = actor {
                    self.actor_dispatch(st, &a);
                }
            }
            _ => {
                let r = t.resources.clone();
                st.queue_ready(tid, r, false);
                self.schedule(st);
            }
        }
    }

    /// Starts ready tasks while resources and workers allow, in submission
    /// order within each resource shape.
    pub(crate) fn schedule(&self, st: &mut State) {
        let cpus = self.config.num_cpus.max(1.0);
        for ci in 0..st.classes.len() {
            // The pool grows to the CPU count, or further for tasks asking
            // for a fraction of a CPU (or none), as many as can run at once.
            let per_task = st.classes[ci].resources.get("CPU");
            let cap = if per_task > 0.0 {
                (cpus / per_task.min(1.0)).ceil()
            } else {
                cpus.ceil() * 4.0
            } as usize;
            while let Some(&tid) = st.classes[ci].queue.front() {
                if let Some(node) = self.placement(st, tid) {
                    st.classes[ci].queue.pop_front();
                    self.forward_ready(st, tid, node);
                    continue;
                }
                if !st.available.fits(&st.classes[ci].resources) {
                    break;
                }
                let Some(t) = st.tasks.get(&tid) else {
                    st.classes[ci].queue.pop_front();
                    continue;
                };
                let job = t.job;
                if kind(&t.spec) == pb::TaskKind::ActorCreation {
                    st.classes[ci].queue.pop_front();
                    let r = t.resources.clone();
                    st.available.subtract(&r);
                    self.start_actor(st, tid);
                    continue;
                }
                let Some(command) = st.jobs.get(&job).map(|j| Arc::clone(&j.command)) else {
                    st.classes[ci].queue.pop_front();
                    continue;
                };
                let idle = st.pools.get_mut(&command).and_then(|p| p.pop());
                match idle {
                    Some(wid) => {
                        st.classes[ci].queue.pop_front();
                        let r = t.resources.clone();
                        st.available.subtract(&r);
                        self.dispatch(st, wid, tid);
                    }
                    None => {
                        let waiting = st.classes[ci].queue.len();
                        if st.starting(&command) < waiting && self.make_room(st, &command, cap) {
                            self.spawn_worker(st, job, None);
                        }
                        break;
                    }
                }
            }
        }
        st.classes.retain(|c| !c.queue.is_empty());
    }

    /// Gives a task to an idle worker: at once, or once the arguments that
    /// are on other nodes have been pulled here.
    pub(crate) fn dispatch(&self, st: &mut State, wid: u64, tid: TaskId) {
        let Some(t) = st.tasks.get_mut(&tid) else {
            return;
        };
        t.state = TaskState::Running(wid);
        t.attempt += 1;
        if let Some(w) = st.workers.get_mut(&wid) {
            w.state = WorkerState::Busy(tid);
        }
        let deps = st
            .tasks
            .get(&tid)
            .map(|t| t.deps.clone())
            .unwrap_or_default();
        let mut fetching = 0;
        for d in deps {
            if let Some(o) = st.objects.get_mut(&d)
                && !o.is_local()
                && o.is_ready()
                && !o.fetchers.contains(&tid)
            {
                o.fetchers.push(tid);
                fetching += 1;
                self.start_pull(st, d, PullFor::Arg);
            }
        }
        if let Some(t) = st.tasks.get_mut(&tid) {
            t.fetching = fetching;
        }
        if fetching == 0 {
            self.execute(st, wid, tid);
        }
    }

    /// Takes back a dispatched task that cannot start: its worker is free
    /// again.
    fn undispatch(&self, st: &mut State, wid: u64, tid: TaskId) {
        let Some(t) = st.tasks.get_mut(&tid) else {
            return;
        };
        t.state = TaskState::Ready;
        let (k, r) = (kind(&t.spec), t.resources.clone());
        match k {
            pb::TaskKind::Normal => {
                st.available.add(&r);
                if let Some(w) = st.workers.get_mut(&wid) {
                    w.state = WorkerState::Idle;
                }
                st.pool_push(wid);
            }
            pb::TaskKind::ActorMethod => {
                let a = st.tasks.get(&tid).and_then(|t| parse_id(&t.spec.actor_id));
                if let Some(actor) = a.and_then(|a| st.actors.get_mut(&a)) {
                    actor.running.retain(|x| *x != tid);
                    let next = actor.running.first().copied();
                    if let Some(w) = st.workers.get_mut(&wid) {
                        w.state = next.map_or(WorkerState::Idle, WorkerState::Busy);
                    }
                }
            }
            pb::TaskKind::ActorCreation => {}
        }
    }

    /// An argument a dispatched task waited for is here (or lost).
    pub(crate) fn fetched(&self, st: &mut State, tid: TaskId) {
        let Some(t) = st.tasks.get_mut(&tid) else {
            return;
        };
        t.fetching = t.fetching.saturating_sub(1);
        if t.fetching > 0 {
            return;
        }
        if let TaskState::Running(wid) = t.state {
            self.execute(st, wid, tid);
        }
    }

    /// Sends a dispatched task with its arguments resolved to its worker.
    fn execute(&self, st: &mut State, wid: u64, tid: TaskId) {
        if let Some(e) = st.failed_dep(&tid) {
            // An argument was lost while it was pulled: the worker goes back.
            self.undispatch(st, wid, tid);
            self.fail_task(st, tid, e);
            return;
        }
        let Some(t) = st.tasks.get(&tid) else {
            return;
        };
        let attempt = t.attempt;
        let mut args = Vec::with_capacity(t.spec.args.len());
        for a in &t.spec.args {
            use pb::resolved_arg::Kind as A;
            let resolved = match &a.kind {
                Some(pb::arg::Kind::Value(v)) => (A::Value(v.clone()), a.encoding),
                Some(pb::arg::Kind::Object(b)) => {
                    match parse_id(b).and_then(|id| st.objects.get(&id)) {
                        Some(o) => match &o.state {
                            ObjState::Ready(Body::Inline(v)) => (A::Value(v.clone()), o.encoding),
                            _ => (A::Stored(b.clone()), o.encoding),
                        },
                        None => (A::Stored(b.clone()), 0),
                    }
                }
                None => (A::Value(Default::default()), 0),
            };
            args.push(pb::ResolvedArg {
                kind: Some(resolved.0),
                encoding: resolved.1,
            });
        }
        let mut spec = t.spec.clone();
        spec.args.clear();
        let Some(w) = st.workers.get(&wid) else {
            return;
        };
        if let Some(conn) = w.conn {
            st.send(
                conn,
                0,
                pb::reply::Kind::Execute(pb::Execute {
                    spec: Some(spec),
                    args,
                    attempt,
                }),
            );
        }
    }

    /// A worker finished a task: its results become objects.
    pub(crate) fn task_done(
        &self,
        st: &mut State,
        conn: ConnId,
        done: pb::TaskDone,
        taken: &Taken,
    ) -> Result<(), String> {
        let wid = st
            .conns
            .get(&conn)
            .and_then(|c| c.worker)
            .ok_or("TaskDone from a process that is not a worker")?;
        let tid = parse_id(&done.task_id).ok_or("TaskDone: malformed task id")?;
        let running = st.workers.get(&wid).is_some_and(|w| {
            w.state == WorkerState::Busy(tid)
                || w.actor
                    .and_then(|a| st.actors.get(&a))
                    .is_some_and(|a| a.running.contains(&tid))
        });
        if !running {
            return Err(format!(
                "TaskDone for task {tid}, which this worker is not running"
            ));
        }
        let Some(task) = st.tasks.remove(&tid) else {
            self.delete_later(st, taken.newly_taken());
            return Ok(());
        };
        let kind = kind(&task.spec);
        if let Some(w) = st.workers.get_mut(&wid) {
            w.state = WorkerState::Idle;
            w.last_function = Some(Arc::clone(&task.function));
        }
        let returns: Vec<ObjectId> = task
            .spec
            .returns
            .iter()
            .filter_map(|b| parse_id(b))
            .collect();
        let mut failed = None;
        if task.cancelled {
            // The worker says so if it skipped the call (one that waited
            // in it behind another, ACTOR_PIPELINE).
            let skipped = done.results.first().and_then(|o| match &o.body {
                Some(pb::object::Body::Error(e)) if e.kind == K::TaskCancelled as i32 => {
                    Some(e.clone())
                }
                _ => None,
            });
            failed = Some(skipped.unwrap_or_else(|| {
                error(
                    K::TaskCancelled,
                    &task.function,
                    format!("{} was cancelled while it ran", task.function),
                )
            }));
        } else if done.results.len() != returns.len() {
            failed = Some(error(
                K::TaskFailed,
                &task.function,
                format!(
                    "{} returned {} values but {} were expected",
                    task.function,
                    done.results.len(),
                    returns.len()
                ),
            ));
        }
        if failed.is_some() {
            // Results written to the store that nobody will read.
            let stored: Vec<ObjectId> = done
                .results
                .iter()
                .filter(|o| matches!(o.body, Some(pb::object::Body::Stored(_))))
                .filter_map(|o| parse_id(&o.id))
                .collect();
            self.delete_later(st, stored);
        }
        let mut error_result = None;
        let mut forwarded = Vec::new();
        if task.origin.is_none() {
            // First, so that the reply a waiter gets for these carries them.
            st.note_finished(task.submitter, &returns);
        }
        for (i, r) in returns.iter().enumerate() {
            let (body, contained, encoding) = match &failed {
                Some(e) => (Body::Error(e.clone()), Vec::new(), 0),
                None => {
                    let obj = &done.results[i];
                    let contained = obj.contained.iter().filter_map(|b| parse_id(b)).collect();
                    if let Some(o) = st.objects.get_mut(r) {
                        o.encoding = obj.encoding;
                    }
                    (
                        taken.body(r, body_of(obj), &task.function),
                        contained,
                        obj.encoding,
                    )
                }
            };
            if let Body::Error(e) = &body {
                error_result.get_or_insert_with(|| e.clone());
            }
            if task.origin.is_some() {
                forwarded.push((*r, body, encoding, contained));
            } else {
                self.complete(st, *r, body, contained);
            }
        }
        if let Some(origin) = task.origin {
            self.finish_forwarded(st, origin, &task, forwarded);
        }
        if error_result.is_some() {
            st.failed += 1;
        } else {
            st.finished += 1;
        }
        match kind {
            pb::TaskKind::Normal => {
                // A thread the task left running may still wait in `get`: then
                // the task's resources are lent out, i.e. already available.
                let lent = st
                    .workers
                    .get_mut(&wid)
                    .is_some_and(|w| std::mem::take(&mut w.blocked));
                if !lent {
                    st.available.add(&task.resources);
                }
                for h in &task.holds {
                    self.release(st, h, Hold::Task);
                }
                st.pool_push(wid);
                self.schedule(st);
            }
            pb::TaskKind::ActorCreation => self.actor_constructed(st, wid, task, error_result),
            pb::TaskKind::ActorMethod => {
                for h in &task.holds {
                    self.release(st, h, Hold::Task);
                }
                if let Some(a) = parse_id(&task.spec.actor_id) {
                    if let Some(actor) = st.actors.get_mut(&a) {
                        actor.running.retain(|t| *t != tid);
                        if let (Some(&other), Some(w)) =
                            (actor.running.first(), st.workers.get_mut(&wid))
                        {
                            w.state = WorkerState::Busy(other);
                        }
                    }
                    self.actor_dispatch(st, &a);
                }
            }
        }
        Ok(())
    }

    /// Ends a task that will not run (again): its results become `e`.
    pub(crate) fn fail_task(&self, st: &mut State, tid: TaskId, e: pb::ErrorInfo) {
        let Some(task) = st.tasks.remove(&tid) else {
            return;
        };
        if task.state == TaskState::Ready {
            for c in &mut st.classes {
                c.queue.retain(|t| *t != tid);
            }
        }
        let kind = kind(&task.spec);
        if kind == pb::TaskKind::ActorMethod
            && let Some(a) = parse_id(&task.spec.actor_id).and_then(|a| st.actors.get_mut(&a))
        {
            a.queue.retain(|t| *t != tid);
            a.running.retain(|t| *t != tid);
        }
        st.failed += 1;
        if let TaskState::Forwarded(node) = task.state {
            // It will not run here: the node running it drops it.
            self.send_peer_cancel(node, &task);
        }
        let returns = task.spec.returns.iter().filter_map(|b| parse_id(b));
        match task.origin {
            Some(origin) => {
                let results = returns
                    .map(|r| (r, Body::Error(e.clone()), 0, Vec::new()))
                    .collect();
                self.finish_forwarded(st, origin, &task, results);
            }
            None => {
                let returns: Vec<ObjectId> = returns.collect();
                st.note_finished(task.submitter, &returns);
                for r in returns {
                    self.complete(st, r, Body::Error(e.clone()), Vec::new());
                }
            }
        }
        for h in &task.holds {
            self.release(st, h, Hold::Task);
        }
        if kind == pb::TaskKind::ActorCreation
            && let Some(a) = parse_id(&task.spec.actor_id)
        {
            self.actor_failed(st, &a, e);
        }
    }

    /// `arca::cancel`: a task that has not started never runs; a running one
    /// is killed with `force` (not for actor calls), or else its result is
    /// discarded when it ends.
    pub(crate) fn cancel(&self, st: &mut State, id: &ObjectId, force: bool) {
        let Some(ObjState::Pending(tid)) = st.objects.get(id).map(|o| &o.state) else {
            return;
        };
        let tid = *tid;
        self.cancel_task(st, tid, force);
    }

    /// A cancelled actor call sent ahead to its worker, behind the calls
    /// that fill its slots, fails now rather than when the worker gets to
    /// it and skips it (the running call may take long). Its entry stays
    /// until the worker reports, which then changes nothing. If a call
    /// before it has in fact ended unreported, it may be running: its
    /// result is discarded then, as a running one's is.
    fn settle_waiting_call(&self, st: &mut State, tid: TaskId) {
        let Some(t) = st.tasks.get(&tid) else {
            return;
        };
        let waiting = parse_id(&t.spec.actor_id)
            .and_then(|a| st.actors.get(&a))
            .and_then(|a| {
                let at = a.running.iter().position(|r| *r == tid)?;
                Some(at >= a.max_concurrency)
            })
            .unwrap_or(false);
        // A forwarded call's results go back to its origin once, when the
        // worker reports.
        if !waiting || t.origin.is_some() {
            return;
        }
        let f = Arc::clone(&t.function);
        let e = error(
            K::TaskCancelled,
            &f,
            format!("{f} was cancelled before it ran"),
        );
        let returns: Vec<ObjectId> = t.spec.returns.iter().filter_map(|b| parse_id(b)).collect();
        st.note_finished(t.submitter, &returns);
        for r in returns {
            self.complete(st, r, Body::Error(e.clone()), Vec::new());
        }
    }

    /// Cancels a task by its id (see [`Shared::cancel`]).
    pub(crate) fn cancel_task(&self, st: &mut State, tid: TaskId, force: bool) {
        let Some(t) = st.tasks.get_mut(&tid) else {
            return;
        };
        match t.state {
            TaskState::Forwarded(node) => {
                self.send_peer_cancel_force(node, &t.spec.task_id, force);
            }
            TaskState::Waiting | TaskState::Ready => {
                let f = Arc::clone(&t.function);
                self.fail_task(
                    st,
                    tid,
                    error(
                        K::TaskCancelled,
                        &f,
                        format!("{f} was cancelled before it ran"),
                    ),
                );
            }
            TaskState::Running(wid) => {
                t.cancelled = true;
                // A Python worker can interrupt its task (KeyboardInterrupt);
                // a Rust one cannot, and its result is discarded instead. An
                // actor call is never interrupted, but one that waits in its
                // worker (ACTOR_PIPELINE) is skipped there.
                let call = kind(&t.spec) == pb::TaskKind::ActorMethod;
                if call || (!force && t.spec.language == pb::Language::Python as i32) {
                    let interrupt = pb::reply::Kind::CancelTask(pb::CancelTask {
                        task_id: t.spec.task_id.clone(),
                    });
                    if let Some(conn) = st.workers.get(&wid).and_then(|w| w.conn) {
                        st.send(conn, 0, interrupt);
                    }
                    if call {
                        self.settle_waiting_call(st, tid);
                    } else {
                        // Its main thread, running the task, reads the
                        // cancel when this signal tells it to.
                        st.interrupt_process(wid);
                    }
                    return;
                }
                let Some(t) = st.tasks.get(&tid) else {
                    return;
                };
                if force && kind(&t.spec) == pb::TaskKind::Normal {
                    let e = error(
                        K::TaskCancelled,
                        &t.function,
                        format!("{} was cancelled (force) while it ran", t.function),
                    );
                    self.kill_worker(st, wid, e);
                }
            }
        }
    }
}
