//! The scheduler's state: connections, jobs, objects, tasks, workers, actors
//! and the clients waiting in `get` or `wait`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use arca_proto::node as pb;
use arca_store::ObjectId;
use arca_store::wire::Conn;
use bytes::Bytes;
use foldhash::{HashMap, HashMapExt, HashSet};
use parking_lot::Mutex;

use crate::cluster::NodeId;
use crate::resources::ResourceSet;

pub(crate) type ConnId = u64;
pub(crate) type JobId = u64;
pub(crate) type WorkerId = u64;
pub(crate) type WaiterId = u64;
pub(crate) type TaskId = ObjectId;

pub(crate) struct ConnState {
    pub transport: Arc<dyn Transport>,
    /// Replies queued for it under the lock, written after (`StateLock`).
    pub outbox: Arc<Outbox>,
    pub pid: u32,
    pub role: pb::Role,
    pub job: Option<JobId>,
    pub worker: Option<WorkerId>,
    /// Objects this process holds references to.
    pub holds: HashSet<ObjectId>,
    /// Direct calls' results it promised to put (`Promise`) and has not.
    pub promised: HashSet<ObjectId>,
    /// Its `get`s and `wait`s not answered yet (one per client thread).
    pub waiters: Vec<WaiterId>,
    /// Results of its tasks that finished since the last reply to it, sent
    /// with the next (`Reply.finished`); at most [`FINISHED_MAX`].
    pub finished: Vec<ObjectId>,
}

/// How many finished results a connection is told of at once: a hint, so
/// a client that never asks for anything does not grow the list forever.
pub(crate) const FINISHED_MAX: usize = 4096;

/// Where a connection's replies go: a Unix-socket client
/// ([`SocketTransport`]) or an in-memory one (`node::memory`, for tests).
/// The scheduler only queues replies ([`State::send`]); the transport
/// delivers them once the lock is let go, so every kind of client reaches
/// the same handlers.
pub(crate) trait Transport: Send + Sync {
    /// Delivers replies in order; an error ends the connection.
    fn deliver(&self, batch: &[pb::Reply]) -> std::io::Result<()>;
    /// Ends the connection: its reader then sees it closed and cleans up.
    fn close(&self);
}

/// A Unix-socket client: a batch of replies is one write.
pub(crate) struct SocketTransport(pub Mutex<Conn>);

impl Transport for SocketTransport {
    fn deliver(&self, batch: &[pb::Reply]) -> std::io::Result<()> {
        let mut w = self.0.lock();
        batch.iter().try_for_each(|m| w.queue(m))?;
        w.flush()
    }

    fn close(&self) {
        let _ = self.0.lock().stream().shutdown(std::net::Shutdown::Both);
    }
}

/// Replies to one connection, queued while the state lock is held and
/// delivered once it is released ([`StateLock`]), in order: the queue is
/// drained only by the thread holding `delivering`.
pub(crate) struct Outbox {
    queue: Mutex<Vec<pb::Reply>>,
    transport: Arc<dyn Transport>,
    delivering: Mutex<()>,
    conn: ConnId,
    pid: u32,
}

impl Outbox {
    pub fn new(transport: Arc<dyn Transport>, conn: ConnId, pid: u32) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            transport,
            delivering: Mutex::new(()),
            conn,
            pid,
        }
    }

    /// Queues `msg`; true if the queue was empty (the caller then owes a
    /// flush).
    fn push(&self, msg: pb::Reply) -> bool {
        let mut q = self.queue.lock();
        q.push(msg);
        q.len() == 1
    }

    /// Delivers what is queued, a batch at a time. A delivery that fails
    /// (for a socket: a write that fails, or stalls for
    /// [`super::conn::WRITE_STALL`] because the client stopped reading)
    /// ends the connection. Only this thread waits meanwhile, never the
    /// node's lock.
    pub fn flush(&self) {
        let _turn = self.delivering.lock();
        loop {
            let batch = std::mem::take(&mut *self.queue.lock());
            if batch.is_empty() {
                return;
            }
            if let Err(e) = self.transport.deliver(&batch) {
                tracing::warn!(
                    conn = self.conn,
                    pid = self.pid,
                    "dropping a client that does not take its replies: {e}"
                );
                self.transport.close();
                self.queue.lock().clear();
                return;
            }
        }
    }
}

/// The scheduler's state behind its lock. Replies queued while it is held
/// ([`State::send`]) are written when the guard is dropped, after the lock
/// is released, so that no socket write happens under it.
pub(crate) struct StateLock(Mutex<State>);

impl StateLock {
    pub fn new(state: State) -> Self {
        Self(Mutex::new(state))
    }

    pub fn lock(&self) -> Locked<'_> {
        let g = self.0.lock();
        HELD.set(true);
        Locked(Some(g))
    }
}

thread_local! {
    /// Whether this thread holds the node's lock, for [`assert_unlocked`].
    static HELD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Checks (in debug builds, so in every test) that this thread does not
/// hold the node's lock: the store is never called under it.
pub(crate) fn assert_unlocked() {
    debug_assert!(
        !HELD.get(),
        "a store call under the node's lock (do it before locking, or in `State::after`)"
    );
}

/// A held [`StateLock`].
pub(crate) struct Locked<'a>(Option<parking_lot::MutexGuard<'a, State>>);

impl Locked<'_> {
    /// Waits on `cv` until `until`, releasing the lock meanwhile. What was
    /// queued so far is done first, with the lock let go; then it returns
    /// at once, since the state may have changed meanwhile (a notification
    /// then had nobody to wake), and the caller looks again.
    pub fn wait_until(&mut self, cv: &parking_lot::Condvar, until: Instant) {
        if let Some(g) = self.0.as_mut() {
            let (unsent, after) = (std::mem::take(&mut g.unsent), std::mem::take(&mut g.after));
            HELD.set(false);
            if !unsent.is_empty() || !after.is_empty() {
                parking_lot::MutexGuard::unlocked(g, || run_after(unsent, after));
            } else {
                cv.wait_until(g, until);
            }
            HELD.set(true);
        }
    }
}

/// Writes the queued replies, then runs the queued work, with the lock let
/// go (the work may take it again).
fn run_after(unsent: Vec<Arc<Outbox>>, after: Vec<Box<dyn FnOnce() + Send>>) {
    for o in unsent {
        o.flush();
    }
    for f in after {
        f();
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.0.as_deref().expect("the guard is held until drop")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.as_deref_mut().expect("the guard is held until drop")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut g) = self.0.take() else {
            return;
        };
        let (unsent, after) = (std::mem::take(&mut g.unsent), std::mem::take(&mut g.after));
        drop(g);
        HELD.set(false);
        run_after(unsent, after);
    }
}

/// How a job's workers start, and which build of the program that is.
/// Jobs share pooled workers only when both match, so a driver rebuilt while
/// a run of the old build is still going never gets the old build's workers.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct WorkerCommand {
    pub argv: Vec<String>,
    /// Where workers start (empty: the node's directory).
    pub cwd: String,
    /// Added to the node's environment, sorted by name.
    pub env: Vec<(String, String)>,
    /// The program file's device, inode, size and modification time when
    /// the job started; `None` for a program found on `PATH`.
    build: Option<(u64, u64, u64, i64, i64)>,
}

impl WorkerCommand {
    pub fn new(hello: &pb::Hello) -> Self {
        use std::os::unix::fs::MetadataExt;
        let argv = hello.worker_command.clone();
        let build = argv
            .first()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
        let mut env: Vec<_> = hello
            .worker_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.sort();
        Self {
            argv,
            cwd: hello.worker_cwd.clone(),
            env,
            build,
        }
    }
}

/// A driver and the workers started for it.
pub(crate) struct Job {
    /// How its workers start; jobs with the same command share workers.
    pub command: Arc<WorkerCommand>,
    /// Workers that exited before connecting, in a row.
    pub startup_failures: u32,
    pub alive: bool,
    /// The driver's LOGS connection, which gets its workers' output.
    pub logs: Option<ConnId>,
    /// KV keys it put that go when it ends (its named actors).
    pub keys: Vec<String>,
}

/// A finished object's contents.
#[derive(Clone)]
pub(crate) enum Body {
    Inline(Bytes),
    /// In this node's store, this many bytes.
    Stored(u64),
    /// In another node's store only: pulled here when a reader needs it.
    Remote {
        node: NodeId,
        size: u64,
    },
    Error(pb::ErrorInfo),
}

pub(crate) enum ObjState {
    /// A task will produce it.
    Pending(TaskId),
    /// Another node owns it (its `lender`); it was asked where it is.
    Locating,
    Ready(Body),
}

pub(crate) struct Obj {
    pub state: ObjState,
    pub owner_pid: u32,
    /// Processes holding a reference.
    pub conn_holds: u32,
    /// Queued or running tasks taking it as an argument (or actors, for
    /// their constructor's arguments).
    pub task_holds: u32,
    /// Objects whose value contains a reference to it.
    pub contained_in: u32,
    /// References nested in this object's value.
    pub contained: Vec<ObjectId>,
    pub waiters: Vec<WaiterId>,
    /// Tasks waiting for it as an argument.
    pub dependents: Vec<TaskId>,
    /// The function that makes it, for `arca memory`.
    pub function: Arc<str>,
    /// This id is an actor's: freeing it ends the actor.
    pub actor: bool,
    /// How its value is to be read (`pb::Encoding`), passed on to readers.
    pub encoding: i32,
    /// The node that lent this node its reference (`None`: owned here).
    pub lender: Option<NodeId>,
    /// Holds other nodes granted this node on the object (the lender's, and
    /// a node keeping a copy for us), given back when it is freed here.
    pub granted: Vec<(NodeId, u32)>,
    /// Holds this node granted other nodes, until they release them.
    pub lent: Vec<(NodeId, u32)>,
    /// A pull of its bytes into this node's store is under way.
    pub pulling: bool,
    /// Tasks dispatched here that wait for its bytes before they start.
    pub fetchers: Vec<TaskId>,
    /// A borrowed actor handle: the node the actor lives on, once located.
    pub actor_node: Option<NodeId>,
    /// Calls to that actor made here before it was located.
    pub waiting_calls: Vec<TaskId>,
    /// The task that made it, kept to make it again if its only copy is
    /// lost with a node (lineage).
    pub lineage: Option<TaskId>,
    /// Times a pull of it failed and it was located again.
    pub relocations: u8,
    /// Its bytes here are a cache copy pulled from this node, which keeps
    /// the primary copy (`copies`).
    pub copy_of: Option<NodeId>,
    /// Other nodes known to hold a copy, to pull from if the one in its
    /// state fails: told by the lender's answer, and, on the lender, by
    /// the borrowers that pulled one (`copies`).
    pub copies: Vec<NodeId>,
    /// `Shared::landings` when its last pull landed.
    pub landed: u64,
    /// It is pulled from a copy found in `copies`, which its node does not
    /// keep for this one: the pulled copy stays primary here.
    pub keep_pulled: bool,
    /// A detached actor's handle: held until the actor is killed.
    pub detached: bool,
}

/// What it takes to run a finished task again: its spec, and holds on its
/// arguments, kept while an output of it that lives only on another node is
/// referenced.
pub(crate) struct Lineage {
    pub spec: pb::TaskSpec,
    pub function: Arc<str>,
    pub job: JobId,
    pub resources: ResourceSet,
    pub holds: Vec<ObjectId>,
    /// Outputs still referenced that it could remake.
    pub live: usize,
    /// Runs left for remaking them (`max_retries`).
    pub reruns_left: u32,
}

impl Obj {
    pub fn refs(&self) -> u32 {
        self.conn_holds
            + self.task_holds
            + self.contained_in
            + self.lent.iter().map(|(_, n)| n).sum::<u32>()
            + u32::from(self.detached)
    }

    /// Its value exists somewhere (possibly only on another node).
    pub fn is_ready(&self) -> bool {
        matches!(self.state, ObjState::Ready(_))
    }

    /// Its value can be read here without a pull.
    pub fn is_local(&self) -> bool {
        matches!(
            self.state,
            ObjState::Ready(Body::Inline(_) | Body::Stored(_) | Body::Error(_))
        )
    }
}

/// Adds one to `node`'s count in a list of holds.
pub(crate) fn count_up(list: &mut Vec<(NodeId, u32)>, node: NodeId) {
    match list.iter_mut().find(|(n, _)| *n == node) {
        Some((_, c)) => *c += 1,
        None => list.push((node, 1)),
    }
}

/// Takes one from `node`'s count; false if it had none.
pub(crate) fn count_down(list: &mut Vec<(NodeId, u32)>, node: NodeId) -> bool {
    let Some(i) = list.iter().position(|(n, _)| *n == node) else {
        return false;
    };
    list[i].1 -= 1;
    if list[i].1 == 0 {
        list.swap_remove(i);
    }
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// Waiting for arguments.
    Waiting,
    /// Queued for resources and a worker (or, for an actor call, its turn).
    Ready,
    Running(WorkerId),
    /// Sent to another node to run.
    Forwarded(NodeId),
}

pub(crate) struct Task {
    pub spec: pb::TaskSpec,
    pub function: Arc<str>,
    pub job: JobId,
    pub state: TaskState,
    pub pending_deps: usize,
    pub resources: ResourceSet,
    pub attempt: u32,
    pub retries_left: u32,
    pub cancelled: bool,
    /// Objects held for the task: its ObjectRef arguments and the references
    /// nested in its inline arguments.
    pub holds: Vec<ObjectId>,
    pub deps: Vec<ObjectId>,
    /// Forwarded here by this node: results go back to it.
    pub origin: Option<NodeId>,
    /// Arguments still being pulled here before it can start.
    pub fetching: usize,
    /// The connection that submitted it here (`None`: forwarded, or a
    /// restart's constructor).
    pub submitter: Option<ConnId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerState {
    Starting,
    Idle,
    Busy(TaskId),
}

pub(crate) struct Worker {
    /// 0 until its process is started, after the lock is let go.
    pub pid: u32,
    /// Asked to die before its process started: it is killed once it has.
    pub kill_on_start: bool,
    /// The job it was started for.
    pub job: JobId,
    pub command: Arc<WorkerCommand>,
    pub conn: Option<ConnId>,
    pub state: WorkerState,
    /// Blocked in `get`/`wait` with its task's resources lent out.
    pub blocked: bool,
    pub actor: Option<ObjectId>,
    /// Killed on purpose (cancel, kill, job end): no retry.
    pub killed: Option<pb::ErrorInfo>,
    /// The function of its last task, to label output written after it.
    pub last_function: Option<Arc<str>>,
    /// Callers whose direct connection to it broke, answered once it has
    /// exited (`DirectActor.gone_worker`): (connection, seq).
    pub death_waiters: Vec<(ConnId, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ActorState {
    /// Waiting for its constructor's arguments or resources.
    Pending,
    /// Its worker is starting or running the constructor.
    Creating,
    Alive,
    Dead(pb::ErrorInfo),
}

pub(crate) struct Actor {
    pub job: JobId,
    pub class: Arc<str>,
    pub spec: pb::TaskSpec,
    pub state: ActorState,
    pub worker: Option<WorkerId>,
    pub queue: VecDeque<TaskId>,
    /// Calls sent to its worker, in order: the first `max_concurrency` may
    /// run, the rest wait in it (`ACTOR_PIPELINE`).
    pub running: Vec<TaskId>,
    /// Calls it may run at once (1: in order, one at a time).
    pub max_concurrency: usize,
    pub restarts_left: u32,
    pub resources: ResourceSet,
    /// Constructor arguments held for restarts.
    pub holds: Vec<ObjectId>,
    /// No handle is left: end it once its queue is done.
    pub orphaned: bool,
    /// Its constructor's task, while that is queued or running.
    pub creation: Option<TaskId>,
    /// Set by `arca::kill`: the reason its calls fail.
    pub killed: Option<pb::ErrorInfo>,
    /// Outlives its driver (`lifetime="detached"`).
    pub detached: bool,
    /// It lives on another node: calls are forwarded there.
    pub location: Option<NodeId>,
    /// It lives here for an owner on another node.
    pub origin: Option<NodeId>,
}

pub(crate) enum WaitKind {
    /// Needs every object's bytes here.
    Get,
    /// Needs `num_returns` objects to exist anywhere, or with `fetch_local`
    /// to have their bytes here.
    Wait {
        num_returns: usize,
        fetch_local: bool,
    },
    /// Another node asks where the objects are, once all exist.
    Locate { asker: NodeId },
}

impl WaitKind {
    /// Whether an object counts as there for this waiter.
    pub fn has(&self, o: &Obj) -> bool {
        match self {
            WaitKind::Get
            | WaitKind::Wait {
                fetch_local: true, ..
            } => o.is_local(),
            _ => o.is_ready(),
        }
    }

    /// Which pulls it asks for, if it wants bytes here.
    pub fn pulls(&self) -> Option<super::pulls::PullFor> {
        use super::pulls::PullFor;
        match self {
            WaitKind::Get => Some(PullFor::Get),
            WaitKind::Wait {
                fetch_local: true, ..
            } => Some(PullFor::Wait),
            _ => None,
        }
    }
}

pub(crate) struct Waiter {
    /// The answer to a peer's `Locate` goes here (`conn` is then 0).
    pub reply: Option<tokio::sync::oneshot::Sender<Vec<arca_proto::cluster::Location>>>,
    pub conn: ConnId,
    /// The request's seq, echoed in the reply.
    pub seq: u64,
    pub ids: Vec<ObjectId>,
    pub kind: WaitKind,
    pub deadline: Option<Instant>,
    /// Ids not ready yet.
    pub missing: usize,
}

/// Ready tasks that ask for the same resources, in submission order.
pub(crate) struct Class {
    pub resources: ResourceSet,
    pub queue: VecDeque<TaskId>,
}

pub(crate) struct State {
    pub total: ResourceSet,
    pub available: ResourceSet,
    pub conns: HashMap<ConnId, ConnState>,
    pub jobs: HashMap<JobId, Job>,
    pub objects: HashMap<ObjectId, Obj>,
    pub tasks: HashMap<TaskId, Task>,
    pub classes: Vec<Class>,
    pub workers: HashMap<WorkerId, Worker>,
    /// Idle task workers by the command that started them: any job with
    /// that command may use them.
    pub pools: HashMap<Arc<WorkerCommand>, Vec<WorkerId>>,
    pub actors: HashMap<ObjectId, Actor>,
    pub waiters: HashMap<WaiterId, Waiter>,
    pub deadlines: BTreeSet<(Instant, WaiterId)>,
    /// When the timer thread wakes next by itself: a deadline after it
    /// needs no wakeup (most `get`s have one, Python's a 100 ms slice).
    pub timer_wake: Option<Instant>,
    pub next_waiter: WaiterId,
    pub next_worker: WorkerId,
    pub finished: u64,
    pub failed: u64,
    /// This node in the cluster (`None`: standalone).
    pub node_id: Option<NodeId>,
    /// Every node as the head last reported it.
    pub cluster: Vec<pb::NodeInfo>,
    /// Finished tasks whose outputs could be remade, by task id.
    pub lineage: HashMap<TaskId, Lineage>,
    /// The KV of a standalone node (a cluster's is on its head).
    pub kv: HashMap<String, Bytes>,
    /// Jobs of other nodes' drivers, by (node, job id there).
    pub remote_jobs: HashMap<(NodeId, u64), JobId>,
    pub next_remote_job: JobId,
    /// Pulls waiting for room, and the running ones.
    pub pulls: super::pulls::Pulls,
    /// Connections with replies queued under this hold of the lock.
    unsent: Vec<Arc<Outbox>>,
    /// Work to do once the lock is let go, after the replies are written
    /// (starting worker processes).
    pub after: Vec<Box<dyn FnOnce() + Send>>,
}

impl State {
    pub fn new(total: ResourceSet) -> Self {
        Self {
            available: total.clone(),
            total,
            conns: HashMap::new(),
            jobs: HashMap::new(),
            objects: HashMap::new(),
            tasks: HashMap::new(),
            classes: Vec::new(),
            workers: HashMap::new(),
            pools: HashMap::new(),
            actors: HashMap::new(),
            waiters: HashMap::new(),
            deadlines: BTreeSet::new(),
            timer_wake: None,
            next_waiter: 1,
            next_worker: 1,
            finished: 0,
            failed: 0,
            node_id: None,
            cluster: Vec::new(),
            lineage: HashMap::new(),
            kv: HashMap::new(),
            remote_jobs: HashMap::new(),
            // Above any connection id, so remote jobs never collide with drivers'.
            next_remote_job: 1 << 48,
            pulls: Default::default(),
            unsent: Vec::new(),
            after: Vec::new(),
        }
    }

    /// SIGKILLs a worker's process, or has it killed as soon as it starts.
    pub fn kill_process(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        if w.pid == 0 {
            w.kill_on_start = true;
        } else {
            let pid = nix::unistd::Pid::from_raw(w.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Sends SIGUSR1 to a Python worker once what was queued for it is
    /// written: its handler reads the cancel the node just sent and
    /// interrupts the task it was for. Linux hands a process's signal to its
    /// main thread unless that thread blocks it or has one pending already,
    /// and Python's main thread, which runs the task, blocks none.
    pub fn interrupt_process(&mut self, wid: WorkerId) {
        let Some(w) = self.workers.get(&wid).filter(|w| w.pid != 0) else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(w.pid as i32);
        let outbox = w
            .conn
            .and_then(|c| self.conns.get(&c))
            .map(|c| Arc::clone(&c.outbox));
        self.after.push(Box::new(move || {
            // Another thread may be the one delivering the cancel: this
            // returns once it is written, whoever writes it.
            if let Some(o) = outbox {
                o.flush();
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1);
        }));
    }

    /// Sends `reply` to the request `seq` of a connection (0: not a reply):
    /// queued, and written once the lock is released (`Outbox::flush`).
    pub fn send(&mut self, conn: ConnId, seq: u64, reply: pb::reply::Kind) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let finished = if c.finished.is_empty() {
            bytes::Bytes::new()
        } else {
            let ids = std::mem::take(&mut c.finished);
            ids.iter()
                .flat_map(|id| *id.as_bytes())
                .collect::<Vec<u8>>()
                .into()
        };
        let msg = pb::Reply {
            kind: Some(reply),
            seq,
            finished,
        };
        if c.outbox.push(msg) {
            let o = Arc::clone(&c.outbox);
            self.unsent.push(o);
        }
    }

    /// How a worker's output lines are labelled: its actor's class, else the
    /// function it runs (or last ran), by its last name as Ray prints them.
    /// `None` once the worker has left (its output may still be read).
    pub fn worker_label(&self, wid: WorkerId) -> Option<String> {
        let w = self.workers.get(&wid)?;
        let full: &str = match (w.actor.and_then(|a| self.actors.get(&a)), w.state) {
            (Some(a), _) => &a.class,
            (None, WorkerState::Busy(t)) => self.tasks.get(&t).map(|t| &*t.function)?,
            _ => w.last_function.as_deref()?,
        };
        let short = full.rsplit("::").next().unwrap_or(full);
        Some(short.rsplit('.').next().unwrap_or(short).to_string())
    }

    /// Notes that results of a task `conn` submitted finished here (see
    /// `ConnState::finished`).
    pub fn note_finished(&mut self, conn: Option<ConnId>, ids: &[ObjectId]) {
        if let Some(c) = conn.and_then(|c| self.conns.get_mut(&c))
            && c.finished.len() + ids.len() <= FINISHED_MAX
        {
            c.finished.extend_from_slice(ids);
        }
    }

    /// The error of the first argument of `tid` that failed, if any.
    pub fn failed_dep(&self, tid: &TaskId) -> Option<pb::ErrorInfo> {
        self.tasks
            .get(tid)?
            .deps
            .iter()
            .find_map(|d| match self.objects.get(d).map(|o| &o.state) {
                Some(ObjState::Ready(Body::Error(e))) => Some(e.clone()),
                _ => None,
            })
    }

    /// Queues a ready task behind those asking for the same resources; a
    /// retried one goes `first`, ahead of them.
    pub fn queue_ready(&mut self, tid: TaskId, resources: ResourceSet, first: bool) {
        match self.classes.iter_mut().find(|c| c.resources == resources) {
            Some(c) if first => c.queue.push_front(tid),
            Some(c) => c.queue.push_back(tid),
            None => self.classes.push(Class {
                resources,
                queue: [tid].into(),
            }),
        }
    }

    /// Puts an idle task worker in its pool.
    pub fn pool_push(&mut self, wid: WorkerId) {
        if let Some(w) = self.workers.get(&wid) {
            self.pools
                .entry(Arc::clone(&w.command))
                .or_default()
                .push(wid);
        }
    }

    /// Takes a worker out of its pool (it is busy, dying or gone).
    pub fn pool_remove(&mut self, wid: WorkerId) {
        if let Some(w) = self.workers.get(&wid)
            && let Some(p) = self.pools.get_mut(&w.command)
        {
            p.retain(|x| *x != wid);
        }
    }

    /// Task workers of `command` still starting.
    pub fn starting(&self, command: &WorkerCommand) -> usize {
        self.workers
            .values()
            .filter(|w| {
                w.state == WorkerState::Starting && w.actor.is_none() && &*w.command == command
            })
            .count()
    }

    /// Workers that count against the pool's size: task workers (not actors')
    /// that are starting or running, less those lending their CPU while
    /// blocked in `get`.
    pub fn pool_size(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.actor.is_none() && !w.blocked)
            .count()
    }
}

pub(crate) fn error(kind: pb::ErrorKind, function: &str, message: String) -> pb::ErrorInfo {
    pb::ErrorInfo {
        kind: kind as i32,
        function: function.to_string(),
        message,
        ..Default::default()
    }
}

pub(crate) fn parse_id(bytes: &[u8]) -> Option<ObjectId> {
    ObjectId::from_slice(bytes).ok()
}
