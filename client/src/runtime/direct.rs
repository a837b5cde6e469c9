//! Direct actor calls: a caller sends its calls to a local actor straight to
//! the actor's worker, over a Unix socket of the worker's, and the worker
//! answers on it. A sync call then wakes two processes (caller → worker →
//! caller) instead of four (caller → node → worker → node → caller).
//!
//! - **The switch.** Before its first direct call to an actor the caller
//!   asks the node (`DirectActor`), which grants it once the actor is alive
//!   here and none of this process's calls to it is queued or running, so
//!   that the calls stay in order. Until then, and after a refusal (asked
//!   again after a back-off), calls go through the node.
//! - **Ownership.** The caller owns the results, as Ray's caller does: the
//!   node does not know them. A small value travels back in the reply and
//!   is kept in this process; a large one, or one with refs nested in it,
//!   the worker gives the node for the caller (`Give`). A result the
//!   caller passes on (in a task's arguments, a put, a `wait`) is handed to
//!   the node first: put, or promised while the call runs (`Promise`, then
//!   put by a thread that waits for it).
//! - **A worker that dies.** The caller sends the calls it has no answer to
//!   to the node (`resubmitted`), which runs them again on a restarted actor
//!   if they have retries left, or fails them with `ActorDiedError`.
//!
//! `ARCA_DIRECT_CALLS=0` turns it off (every call goes through the node).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arca_proto::node as pb;
use arca_store::ObjectId;
use arca_store::wire::{Conn, MAX_REPLY_FRAME, MAX_REQUEST_FRAME, Side};
use foldhash::{HashMap, HashMapExt, HashSet};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::conn::poll_readable;
use super::spin::Spin;
use super::{Helper, ObjectRef, Runtime, task};
use crate::error::{Error, Result};

type Req = pb::request::Kind;

fn id_of(b: &[u8]) -> Option<ObjectId> {
    ObjectId::from_slice(b).ok()
}

/// Whether direct calls are on (`ARCA_DIRECT_CALLS`, default on).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("ARCA_DIRECT_CALLS").map_or(true, |v| v != "0"))
}

// ---------------------------------------------------------------- worker

/// An actor's worker's end: its listening socket and its callers.
pub(crate) struct Server {
    listener: UnixListener,
    path: PathBuf,
    peers: Mutex<Vec<Arc<Peer>>>,
    /// The callers' sockets, for the threads waiting in [`Server::next`]:
    /// one set they all poll, which a caller taken by any of them joins at
    /// once. (Polling each its own copy of the list, a thread could sleep
    /// on a list without a caller another had just taken, its wake-up
    /// byte drained by a third.)
    callers: Epoll,
    /// Calls and cancels read from callers, in order.
    queue: Mutex<VecDeque<Incoming>>,
    /// The direct calls this worker runs: where each one's results go.
    calls: Mutex<HashMap<ObjectId, Arc<Peer>>>,
    /// Written when a thread other than the one polling queued a call (a
    /// pool thread looking for cancels read it): wakes the poll.
    wake: (UnixStream, UnixStream),
    /// Threads in [`Server::next`] now (a threaded actor's waiting thread,
    /// and one that just ran a call looking for the next).
    inside: AtomicUsize,
    /// Whether waiting for the next call pays to spin: between a caller's
    /// sync calls it comes within microseconds.
    spin: Spin,
}

struct Peer {
    /// For polling; the same socket as the reader's and the writer's.
    stream: UnixStream,
    reader: Mutex<Conn>,
    writer: Mutex<Conn>,
    /// The caller's connection at the node (its Hello), for `Give`.
    client_id: AtomicU64,
    gone: AtomicBool,
}

/// Counts a thread in [`Server::next`] while it lives.
struct Inside<'a>(&'a AtomicUsize);

impl<'a> Inside<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Inside(count)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Incoming {
    Call(Box<pb::TaskSpec>, Arc<Peer>),
    Cancel(ObjectId),
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Server {
    /// Listens at the socket the node names for this worker.
    pub(crate) fn bind(session: &std::path::Path, worker_id: u64) -> Result<Server> {
        let path = session.join(arca_proto::consts::direct_socket(worker_id));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let wake = UnixStream::pair()?;
        wake.0.set_nonblocking(true)?;
        wake.1.set_nonblocking(true)?;
        let callers = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
        Ok(Server {
            wake,
            listener,
            path,
            peers: Mutex::new(Vec::new()),
            callers,
            queue: Mutex::new(VecDeque::new()),
            calls: Mutex::new(HashMap::new()),
            spin: Spin::default(),
            inside: AtomicUsize::new(0),
        })
    }

    /// The node's next message for this worker or the next direct call or
    /// cancel, waiting up to `timeout` (`Some(ZERO)`: not at all) or until
    /// `also` is readable.
    pub(crate) fn next(
        &self,
        rt: &Runtime,
        timeout: Option<Duration>,
        also: Option<BorrowedFd<'_>>,
    ) -> Result<Option<pb::reply::Kind>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let _inside = Inside::enter(&self.inside);
        loop {
            if let Some(k) = self.pop(rt)? {
                return Ok(Some(k));
            }
            let mut fds = vec![
                self.wake.0.as_fd(),
                self.listener.as_fd(),
                self.callers.0.as_fd(),
            ];
            fds.extend(also);
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let (k, ready) = rt.node.poll_execute(&fds, left, Some(&self.spin))?;
            if ready.first().copied().unwrap_or(false) {
                let mut buf = [0u8; 64];
                while matches!((&self.wake.0).read(&mut buf), Ok(n) if n > 0) {}
            }
            if ready.get(1).copied().unwrap_or(false) {
                // A caller taken joins `callers`: threads asleep see it.
                self.accept();
            }
            let filed = if ready.get(2).copied().unwrap_or(false) {
                self.read_ready_callers()
            } else {
                0
            };
            if filed > 0 && self.inside.load(Ordering::Acquire) > 1 {
                // Another thread here may have been woken by the bytes this
                // one read, and sleep again: it must look at the queue.
                let _ = (&self.wake.1).write(&[1]);
            }
            if k.is_some() {
                return Ok(k);
            }
            let also_ready = also.is_some() && ready.last().copied().unwrap_or(false);
            if also_ready || deadline.is_some_and(|d| Instant::now() >= d) {
                return self.pop(rt);
            }
        }
    }

    /// Reads what callers have sent, without waiting; takes their cancels.
    pub(crate) fn take_cancels(&self) -> Vec<ObjectId> {
        let peers = self.peers.lock().clone();
        let filed: usize = peers.iter().map(|p| self.read_peer(p)).sum();
        if filed > 0 {
            // The thread that runs calls may sleep in `next`'s poll, and
            // what it would wake for was read here.
            let _ = (&self.wake.1).write(&[1]);
        }
        let mut out = Vec::new();
        self.queue.lock().retain(|i| match i {
            Incoming::Cancel(t) => {
                out.push(*t);
                false
            }
            Incoming::Call(..) => true,
        });
        out
    }

    /// Takes the callers that connected.
    fn accept(&self) {
        while let Ok((s, _)) = self.listener.accept() {
            let peer = (|| {
                // Writes to it block while its socket is full: a caller
                // reads its answers whenever it calls or waits, and a
                // thread of its reads them meanwhile (`drain`).
                s.set_nonblocking(false)?;
                Ok::<_, std::io::Error>(Peer {
                    reader: Mutex::new(Conn::new(s.try_clone()?, Side::Daemon, Duration::ZERO)),
                    writer: Mutex::new(Conn::new(s.try_clone()?, Side::Daemon, Duration::ZERO)),
                    stream: s,
                    client_id: AtomicU64::new(0),
                    gone: AtomicBool::new(false),
                })
            })();
            match peer {
                Ok(p) => {
                    let fd = p.stream.as_raw_fd();
                    let event = EpollEvent::new(EpollFlags::EPOLLIN, fd as u64);
                    match self.callers.add(&p.stream, event) {
                        Ok(()) => self.peers.lock().push(Arc::new(p)),
                        Err(e) => tracing::warn!("cannot watch a direct caller: {e}"),
                    }
                }
                Err(e) => tracing::warn!("cannot take a direct caller: {e}"),
            }
        }
    }

    /// Reads the caller's messages that have arrived, and the rest of a
    /// frame begun (which comes at once: a caller writes each whole).
    /// Returns how many calls and cancels it queued. (Another thread may
    /// have read what the poll saw: nothing is waited for then.)
    fn read_peer(&self, p: &Arc<Peer>) -> usize {
        let Some(mut r) = p.reader.try_lock() else {
            return 0;
        };
        let mut filed = 0;
        loop {
            let got = match r.try_recv::<pb::Request>(MAX_REQUEST_FRAME) {
                Ok(None) if r.has_partial_frame() => {
                    r.recv::<pb::Request>(MAX_REQUEST_FRAME).map(Some)
                }
                other => other,
            };
            match got {
                Ok(Some(req)) => {
                    if let Err(e) = self.file(p, req) {
                        tracing::warn!("dropping a direct caller: {e}");
                        self.drop_peer(p);
                        return filed;
                    }
                    filed += 1;
                }
                Ok(None) => return filed,
                Err(_) => {
                    // Closed (the caller exited or let the actor go): the
                    // calls it sent still run; their results are dropped.
                    self.drop_peer(p);
                    return filed;
                }
            }
        }
    }

    fn drop_peer(&self, p: &Arc<Peer>) {
        p.gone.store(true, Ordering::Relaxed);
        // Out of the set first: shut down, it would be readable forever.
        let _ = self.callers.delete(&p.stream);
        let _ = p.stream.shutdown(std::net::Shutdown::Both);
        self.peers.lock().retain(|q| !Arc::ptr_eq(q, p));
    }

    /// Reads the callers whose sockets are readable now.
    fn read_ready_callers(&self) -> usize {
        let mut events = [EpollEvent::empty(); 16];
        let Ok(n) = self.callers.wait(&mut events, EpollTimeout::ZERO) else {
            return 0;
        };
        let ready: Vec<Arc<Peer>> = {
            let peers = self.peers.lock();
            events[..n]
                .iter()
                .filter_map(|e| {
                    let fd = e.data() as RawFd;
                    peers.iter().find(|p| p.stream.as_raw_fd() == fd).cloned()
                })
                .collect()
        };
        ready.iter().map(|p| self.read_peer(p)).sum()
    }

    fn file(&self, p: &Arc<Peer>, req: pb::Request) -> std::result::Result<(), String> {
        match req.kind {
            Some(Req::Hello(h)) => p.client_id.store(h.client_id, Ordering::Relaxed),
            Some(Req::Submit(s)) => {
                let spec = s.spec.ok_or("Submit without a task")?;
                self.queue
                    .lock()
                    .push_back(Incoming::Call(Box::new(spec), Arc::clone(p)));
            }
            Some(Req::Cancel(c)) => {
                // On a direct connection the id is the call's task id.
                let t = id_of(&c.id).ok_or("Cancel: malformed task id")?;
                self.queue.lock().push_back(Incoming::Cancel(t));
            }
            _ => return Err("unexpected message on a direct connection".into()),
        }
        Ok(())
    }

    /// The next queued call as the node would send it (its arguments read
    /// from the node), or cancel.
    fn pop(&self, rt: &Runtime) -> Result<Option<pb::reply::Kind>> {
        loop {
            let next = self.queue.lock().pop_front();
            let (spec, peer) = match next {
                None => return Ok(None),
                Some(Incoming::Cancel(t)) => {
                    return Ok(Some(pb::reply::Kind::CancelTask(pb::CancelTask {
                        task_id: t.as_bytes().to_vec().into(),
                    })));
                }
                Some(Incoming::Call(spec, peer)) => (*spec, peer),
            };
            let Some(task) = id_of(&spec.task_id) else {
                continue;
            };
            self.calls.lock().insert(task, peer);
            match resolve(rt, &spec) {
                Ok(args) => {
                    return Ok(Some(pb::reply::Kind::Execute(pb::Execute {
                        spec: Some(spec),
                        args,
                        attempt: 1,
                    })));
                }
                Err(e) => {
                    // It cannot run: its results say why.
                    let e = pb::ErrorInfo {
                        function: spec.function.clone(),
                        ..*e
                    };
                    let results = spec
                        .returns
                        .iter()
                        .filter_map(|r| id_of(r))
                        .map(|r| (r, Err(e.clone())))
                        .collect();
                    super::core::task_done(task, results)?;
                }
            }
        }
    }

    /// Sends a direct call's results to its caller; `None` if `done` is
    /// not a direct call's (it goes to the node).
    pub(crate) fn answer(&self, rt: &Runtime, mut done: pb::TaskDone) -> Option<pb::TaskDone> {
        let Some(task) = id_of(&done.task_id) else {
            return Some(done);
        };
        let Some(peer) = self.calls.lock().remove(&task) else {
            return Some(done);
        };
        let client_id = peer.client_id.load(Ordering::Relaxed);
        for o in &mut done.results {
            let stored = matches!(o.body, Some(pb::object::Body::Stored(_)));
            if !stored && o.contained.is_empty() {
                continue;
            }
            // The node keeps it (its bytes in the store, or the refs in
            // it) for the caller, before this worker lets go of them.
            let give = Req::Give(pb::Give {
                object: Some(o.clone()),
                client_id,
            });
            match rt.node.call(give) {
                Ok(_) => done.given.push(o.id.clone()),
                Err(e) => {
                    o.body = Some(pb::object::Body::Error(pb::ErrorInfo {
                        kind: pb::ErrorKind::TaskFailed as i32,
                        message: format!("cannot hand the result to the caller: {e}"),
                        ..Default::default()
                    }));
                    o.contained.clear();
                }
            }
        }
        if !peer.gone.load(Ordering::Relaxed) {
            let reply = pb::Reply {
                kind: Some(pb::reply::Kind::TaskDone(done)),
                seq: 0,
                finished: Default::default(),
            };
            if peer.writer.lock().send(&reply).is_err() {
                self.drop_peer(&peer);
            }
        }
        None
    }
}

/// A direct call's arguments, read as the node would send them: values as
/// they are, ObjectRefs from the node.
fn resolve(
    rt: &Runtime,
    spec: &pb::TaskSpec,
) -> std::result::Result<Vec<pb::ResolvedArg>, Box<pb::ErrorInfo>> {
    let refs: Vec<ObjectId> = task::ref_args(spec).collect();
    let lost = |message: String| {
        Box::new(pb::ErrorInfo {
            kind: pb::ErrorKind::ObjectLost as i32,
            message,
            ..Default::default()
        })
    };
    let mut objects = if refs.is_empty() {
        Vec::new()
    } else {
        super::fetch(rt, &refs, None).map_err(|e| lost(format!("cannot read an argument: {e}")))?
    }
    .into_iter();
    spec.args
        .iter()
        .map(|a| match &a.kind {
            Some(pb::arg::Kind::Object(_)) => {
                let (id, o) = objects
                    .next()
                    .ok_or_else(|| lost("an argument is missing".into()))?;
                let kind = match o.body {
                    pb::object::Body::Inline(v) => pb::resolved_arg::Kind::Value(v),
                    pb::object::Body::Stored(_) => {
                        pb::resolved_arg::Kind::Stored(id.as_bytes().to_vec().into())
                    }
                    // The same cause as the argument's, as the node does.
                    pb::object::Body::Error(e) => return Err(Box::new(e)),
                };
                Ok(pb::ResolvedArg {
                    kind: Some(kind),
                    encoding: o.encoding,
                })
            }
            Some(pb::arg::Kind::Value(v)) => Ok(pb::ResolvedArg {
                kind: Some(pb::resolved_arg::Kind::Value(v.clone())),
                encoding: a.encoding,
            }),
            None => Ok(pb::ResolvedArg::default()),
        })
        .collect()
}

// ---------------------------------------------------------------- caller

/// A caller's direct calls: its channels to actors and their results.
#[derive(Default)]
pub(crate) struct Caller {
    routes: Mutex<HashMap<ObjectId, Route>>,
    /// Results of direct calls that the node does not hold for this
    /// process: pending, or read and kept here (in `Runtime::inline`).
    objects: Mutex<HashMap<ObjectId, DirectObj>>,
    /// Per actor, the first result of each call sent through the node that
    /// this process has not read or dropped yet: while there are any, it
    /// does not ask to switch.
    node_calls: Mutex<NodeCalls>,
    /// Held from marking results promised until their `Promise`s are sent,
    /// and by a thread putting a promised result before it sends the
    /// `Put`: the node must hear of a promise before its value.
    promising: Mutex<()>,
}

#[derive(Default)]
struct NodeCalls {
    by_actor: HashMap<ObjectId, HashSet<ObjectId>>,
    actor_of: HashMap<ObjectId, ObjectId>,
}

enum Route {
    Open(Arc<Channel>),
    /// Through the node; ask again after `retry_at`.
    Node {
        retry_at: Instant,
        backoff: Duration,
    },
}

/// The first and longest waits before asking the node again.
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// A caller's direct results, locked.
pub(crate) struct Results<'a>(parking_lot::MutexGuard<'a, HashMap<ObjectId, DirectObj>>);

impl Results<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `id` is a direct call's result whose value came.
    pub(crate) fn came(&self, id: &ObjectId) -> bool {
        self.0.get(id).is_some_and(|d| d.ready)
    }
}

struct DirectObj {
    chan: Arc<Channel>,
    task: ObjectId,
    /// The value came, and is in `Runtime::inline`.
    ready: bool,
    /// The node holds a promise of it: its value is to be put.
    promised: bool,
    /// Cancelled: if the call ran anyway, its result is discarded (as the
    /// node does for a running actor call).
    cancelled: bool,
}

/// A connection to one actor's worker.
struct Channel {
    actor: ObjectId,
    /// Calls the actor runs at once.
    max_concurrency: usize,
    /// The actor's worker at the node.
    worker_id: u64,
    stream: UnixStream,
    writer: Mutex<Conn>,
    inbox: Mutex<ChanInbox>,
    changed: Condvar,
    /// Calls sent and not answered, in order.
    inflight: Mutex<VecDeque<Inflight>>,
    /// Whether waiting for a call's answer pays to spin (a quick method
    /// answers within microseconds).
    spin: Spin,
}

struct ChanInbox {
    reader: Option<Box<Conn>>,
    broken: bool,
}

struct Inflight {
    task: ObjectId,
    spec: pb::TaskSpec,
    /// Its arguments' refs and the actor's handle, held until it answers.
    keep: Vec<ObjectRef<()>>,
    /// Failed by its cancel before it answered (`settle_waiting`): never
    /// sent to the node if the worker goes.
    settled: bool,
    /// Its write failed (the worker had gone): it never reached the
    /// worker, so it runs on a restarted actor whatever its retries.
    undelivered: bool,
}

impl Caller {
    /// Whether `id` is a direct call's result this process waits for.
    fn pending(&self, id: &ObjectId) -> bool {
        self.objects.lock().get(id).is_some_and(|d| !d.ready)
    }

    /// Notes a call to `actor` sent through the node.
    fn note_node_call(&self, actor: ObjectId, first_return: ObjectId) {
        let mut n = self.node_calls.lock();
        n.by_actor.entry(actor).or_default().insert(first_return);
        n.actor_of.insert(first_return, actor);
    }

    /// `id` was read or dropped: a call through the node it was the first
    /// result of is over for this process.
    pub(crate) fn seen(&self, id: &ObjectId) {
        let mut n = self.node_calls.lock();
        if n.actor_of.is_empty() {
            return;
        }
        if let Some(a) = n.actor_of.remove(id)
            && let Some(set) = n.by_actor.get_mut(&a)
        {
            set.remove(id);
            if set.is_empty() {
                n.by_actor.remove(&a);
            }
        }
    }

    /// The last local ref to `id` is gone. True if the node does not know
    /// it (a direct call's result this process kept): nothing to release.
    pub(crate) fn released(&self, id: &ObjectId) -> bool {
        let mut objs = self.objects.lock();
        if objs.is_empty() {
            return false;
        }
        match objs.get(id) {
            Some(d) if !d.promised => {
                objs.remove(id);
                true
            }
            _ => false,
        }
    }

    /// The results, locked, to ask which came ([`Results::came`]).
    pub(crate) fn results(&self) -> Results<'_> {
        Results(self.objects.lock())
    }

    /// The last local ref to an actor is gone: its channel closes.
    pub(crate) fn forget_actor(&self, actor: &ObjectId) {
        let route = {
            let mut routes = self.routes.lock();
            if routes.is_empty() {
                return;
            }
            routes.remove(actor)
        };
        drop(route);
    }
}

/// Submits an actor call: straight to the actor's worker when the node
/// allows, else through the node. `keep` holds its arguments' refs.
pub(crate) fn submit_call(
    rt: &Runtime,
    actor: ObjectId,
    spec: pb::TaskSpec,
    keep: Vec<ObjectRef<()>>,
) -> Result<()> {
    let refs = task::refs_of(&spec);
    promote(rt, &refs)?;
    let mut spec = spec;
    let returns: Vec<ObjectId> = spec.returns.iter().filter_map(|b| id_of(b)).collect();
    let Some(chan) = route(rt, actor) else {
        if let Some(first) = returns.first() {
            rt.caller.note_node_call(actor, *first);
        }
        rt.send(Req::Submit(pb::Submit { spec: Some(spec) }))?;
        drop(keep);
        return Ok(());
    };
    inline_args(rt, &mut spec);
    let from_node = !spec.contained.is_empty() || has_ref_args(&spec);
    if from_node && rt.unsynced.swap(false, Ordering::Relaxed) {
        // The worker reads the arguments from the node, over its own
        // socket: the node must have handled this process's puts, submits
        // and promises first.
        barrier(rt)?;
    }
    let task = id_of(&spec.task_id).ok_or_else(|| Error::Protocol("malformed task id".into()))?;
    {
        let mut objs = rt.caller.objects.lock();
        for r in &returns {
            objs.insert(
                *r,
                DirectObj {
                    chan: Arc::clone(&chan),
                    task,
                    ready: false,
                    promised: false,
                    cancelled: false,
                },
            );
        }
    }
    let mut keep = keep;
    keep.push(ObjectRef::owned(actor));
    // The node holds a task's arguments while it runs; here the caller
    // does, until the call answers.
    keep.extend(refs.iter().map(|r| ObjectRef::owned(*r)));
    // The answer may be read (here, or by another thread) before the
    // caller wraps the ids in refs: held until this thread's next call, so
    // that the values are kept.
    let held: Vec<ObjectRef<()>> = returns.iter().map(|r| ObjectRef::owned(*r)).collect();
    let before = JUST_SUBMITTED.with(|j| std::mem::replace(&mut *j.borrow_mut(), held));
    drop(before);
    chan.inflight.lock().push_back(Inflight {
        task,
        spec: spec.clone(),
        keep,
        settled: false,
        undelivered: false,
    });
    let sent = chan.writer.lock().send(&pb::Request {
        kind: Some(Req::Submit(pb::Submit { spec: Some(spec) })),
        seq: 0,
    });
    if sent.is_err() {
        // A write fails once the worker has closed its end: this call never
        // reached it (the worker died while the caller had nothing in
        // flight, so nothing read its end before).
        if let Some(c) = chan.inflight.lock().iter_mut().find(|c| c.task == task) {
            c.undelivered = true;
        }
        chan.break_off(rt);
        return Ok(());
    }
    // Take the answers that have come (a caller that never gets must
    // not fill the socket the worker answers on).
    chan.read_now(rt);
    drainer().wake();
    Ok(())
}

/// A thread that reads the answers to calls in flight while no thread of
/// the caller does (it computes, or sleeps), every [`DRAIN_EVERY`], so that
/// the actor's worker never blocks on a full socket.
fn drainer() -> &'static Helper {
    static DRAINER: std::sync::OnceLock<Helper> = std::sync::OnceLock::new();
    Helper::get(&DRAINER, "arca-direct-drain", DRAIN_EVERY, drain)
}

const DRAIN_EVERY: Duration = Duration::from_millis(5);

/// Reads the answers that have come on every channel; true while calls
/// are in flight.
fn drain() -> bool {
    let Ok(rt) = super::runtime() else {
        return false;
    };
    let chans: Vec<Arc<Channel>> = rt
        .caller
        .routes
        .lock()
        .values()
        .filter_map(|r| match r {
            Route::Open(c) => Some(Arc::clone(c)),
            Route::Node { .. } => None,
        })
        .collect();
    let mut left = false;
    for c in chans {
        if !c.inflight.lock().is_empty() {
            c.read_now(&rt);
            left |= !c.inflight.lock().is_empty();
        }
    }
    left
}

thread_local! {
    /// The results of this thread's last direct call, until its next call
    /// into the runtime (`submit_call`).
    static JUST_SUBMITTED: std::cell::RefCell<Vec<ObjectRef<()>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Lets go of the holds `submit_call` kept for the caller to wrap the ids
/// (which it has done by its next call).
pub(crate) fn wrapped() {
    let held = JUST_SUBMITTED
        .try_with(|j| std::mem::take(&mut *j.borrow_mut()))
        .unwrap_or_default();
    drop(held);
}

/// The actor's open channel, or `None` (through the node). Asks the node
/// when allowed to; the routes' lock is held meanwhile, so no other thread
/// sends a call to the actor through the node during the switch.
fn route(rt: &Runtime, actor: ObjectId) -> Option<Arc<Channel>> {
    if !enabled() {
        return None;
    }
    let mut routes = rt.caller.routes.lock();
    let backoff = match routes.get(&actor) {
        Some(Route::Open(c)) if !c.inbox.lock().broken => return Some(Arc::clone(c)),
        Some(Route::Node { retry_at, .. }) if Instant::now() < *retry_at => return None,
        Some(Route::Node { backoff, .. }) => *backoff,
        _ => BACKOFF_MIN / 2,
    };
    if rt.caller.node_calls.lock().by_actor.contains_key(&actor) {
        return None;
    }
    let ask = Req::DirectActor(pb::DirectActor {
        actor_id: actor.as_bytes().to_vec().into(),
        gone_worker: 0,
    });
    let reply = match rt.call(ask) {
        Ok(pb::reply::Kind::DirectActor(r)) => r,
        _ => pb::DirectActorReply::default(),
    };
    if !reply.socket.is_empty() {
        let concurrency = reply.max_concurrency.max(1) as usize;
        match Channel::open(
            &reply.socket,
            rt.client_id,
            actor,
            concurrency,
            reply.worker_id,
        ) {
            Ok(c) => {
                let c = Arc::new(c);
                routes.insert(actor, Route::Open(Arc::clone(&c)));
                return Some(c);
            }
            Err(e) => tracing::debug!("no direct calls to actor {actor}: {e}"),
        }
    }
    let backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
    routes.insert(
        actor,
        Route::Node {
            retry_at: Instant::now() + backoff,
            backoff,
        },
    );
    None
}

/// Passes the values this process holds of its ObjectRef arguments (small
/// ones, kept in `Runtime::inline`) in the call itself, as the node does
/// when it sends a task: the worker need not ask the node for them. The
/// caller still holds the refs until the call answers.
fn inline_args(rt: &Runtime, spec: &mut pb::TaskSpec) {
    if !has_ref_args(spec) {
        return;
    }
    let cache = rt.inline.lock();
    for a in &mut spec.args {
        let Some(pb::arg::Kind::Object(b)) = &a.kind else {
            continue;
        };
        if let Some(id) = id_of(b)
            && let Some(got) = cache.get(&id)
            && let pb::object::Body::Inline(v) = &got.body
        {
            a.encoding = got.encoding;
            a.kind = Some(pb::arg::Kind::Value(v.clone()));
        }
    }
}

/// Whether the call takes an ObjectRef argument (passed by reference).
fn has_ref_args(spec: &pb::TaskSpec) -> bool {
    spec.args
        .iter()
        .any(|a| matches!(a.kind, Some(pb::arg::Kind::Object(_))))
}

/// Returns once the node has handled what this process sent it before.
fn barrier(rt: &Runtime) -> Result<()> {
    rt.node.request(Req::Get(pb::Get {
        ids: Vec::new(),
        timeout_ms: 0,
    }))?;
    Ok(())
}

/// Hands the node the direct calls' results among `ids` before they are
/// passed on: a result read is put, a pending one promised (and put by a
/// thread once it comes).
pub(crate) fn promote(rt: &Runtime, ids: &[ObjectId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut puts = Vec::new();
    let mut promises = Vec::new();
    let promising = rt.caller.promising.lock();
    {
        let mut objs = rt.caller.objects.lock();
        if objs.is_empty() {
            return Ok(());
        }
        for id in ids {
            let Some(d) = objs.get_mut(id) else {
                continue;
            };
            if d.ready {
                objs.remove(id);
                if let Some(got) = rt.inline.lock().get(id).cloned() {
                    puts.push(pb::Object {
                        id: id.as_bytes().to_vec().into(),
                        body: Some(got.body),
                        contained: Vec::new(),
                        encoding: got.encoding,
                    });
                }
            } else if !d.promised {
                d.promised = true;
                promises.push((*id, Arc::clone(&d.chan)));
            }
        }
    }
    for object in puts {
        rt.send(Req::Put(pb::Put {
            object: Some(object),
        }))?;
    }
    if promises.is_empty() {
        return Ok(());
    }
    for (id, _) in &promises {
        rt.send(Req::Promise(pb::Promise {
            id: id.as_bytes().to_vec().into(),
        }))?;
    }
    drop(promising);
    // Someone must read the answers to put them: a thread per channel
    // waits for them (reading each as it comes, in any order).
    let mut by_chan: Vec<(Arc<Channel>, Vec<ObjectId>)> = Vec::new();
    for (id, chan) in promises {
        match by_chan.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &chan)) {
            Some((_, ids)) => ids.push(id),
            None => by_chan.push((chan, vec![id])),
        }
    }
    for (chan, ids) in by_chan {
        let deliver = move || {
            if let Ok(rt) = super::runtime() {
                let _ = chan.wait(&rt, &ids, None);
            }
        };
        std::thread::Builder::new()
            .name("arca-deliver".into())
            .spawn(deliver)?;
    }
    Ok(())
}

/// Waits for the direct calls' results among `ids` (up to `deadline`);
/// false on timeout. Afterwards each is in `Runtime::inline` or held by
/// the node.
pub(crate) fn await_results(
    rt: &Runtime,
    ids: &[ObjectId],
    deadline: Option<Instant>,
) -> Result<bool> {
    wrapped();
    loop {
        let next = {
            let objs = rt.caller.objects.lock();
            if objs.is_empty() {
                return Ok(true);
            }
            ids.iter().find_map(|id| {
                objs.get(id)
                    .filter(|d| !d.ready)
                    .map(|d| (*id, Arc::clone(&d.chan)))
            })
        };
        let Some((id, chan)) = next else {
            return Ok(true);
        };
        if !chan.wait(rt, &[id], deadline)? {
            return Ok(false);
        }
    }
}

/// Cancels a direct call that makes `id`; false if `id` is not one.
pub(crate) fn cancel(rt: &Runtime, id: &ObjectId, force: bool) -> bool {
    let target = {
        let mut objs = rt.caller.objects.lock();
        let target = objs.get(id).map(|d| (d.ready, d.task, Arc::clone(&d.chan)));
        if let Some((false, task, _)) = &target {
            for d in objs.values_mut().filter(|d| d.task == *task) {
                d.cancelled = true;
            }
        }
        target
    };
    let Some((ready, task, chan)) = target else {
        return false;
    };
    if !ready {
        let req = pb::Request {
            kind: Some(Req::Cancel(pb::Cancel {
                id: task.as_bytes().to_vec().into(),
                force,
            })),
            seq: 0,
        };
        if chan.writer.lock().send(&req).is_err() {
            chan.break_off(rt);
        } else {
            chan.settle_waiting(rt, task);
        }
    }
    true
}

impl Channel {
    fn open(
        socket: &str,
        client_id: u64,
        actor: ObjectId,
        max_concurrency: usize,
        worker_id: u64,
    ) -> Result<Channel> {
        let stream = UnixStream::connect(socket)?;
        let mut writer = Conn::new(stream.try_clone()?, Side::Client, Duration::ZERO);
        writer.send(&pb::Request {
            kind: Some(Req::Hello(pb::Hello {
                version: arca_proto::consts::NODE_PROTOCOL_VERSION,
                pid: std::process::id(),
                client_id,
                ..Default::default()
            })),
            seq: 0,
        })?;
        Ok(Channel {
            actor,
            max_concurrency,
            worker_id,
            inbox: Mutex::new(ChanInbox {
                reader: Some(Box::new(Conn::new(
                    stream.try_clone()?,
                    Side::Client,
                    Duration::ZERO,
                ))),
                broken: false,
            }),
            stream,
            writer: Mutex::new(writer),
            changed: Condvar::new(),
            inflight: Mutex::new(VecDeque::new()),
            spin: Spin::default(),
        })
    }

    /// Waits until none of `ids` is a pending result of this channel (or it
    /// broke, and they went to the node), up to `deadline`: false on timeout.
    /// Whichever waiting thread finds nobody reading reads, as `NodeConn`.
    fn wait(&self, rt: &Runtime, ids: &[ObjectId], deadline: Option<Instant>) -> Result<bool> {
        let mut inbox = self.inbox.lock();
        loop {
            if inbox.broken || !ids.iter().any(|id| rt.caller.pending(id)) {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            let Some(mut reader) = inbox.reader.take() else {
                match deadline {
                    Some(d) => {
                        self.changed.wait_until(&mut inbox, d);
                    }
                    None => self.changed.wait(&mut inbox),
                }
                continue;
            };
            let read = MutexGuard::unlocked(&mut inbox, || self.read(rt, &mut reader, deadline));
            inbox.reader = Some(reader);
            self.changed.notify_all();
            if read.is_err() {
                drop(inbox);
                self.break_off(rt);
                inbox = self.inbox.lock();
            }
        }
    }

    /// Takes the answers that have arrived, if no other thread reads.
    fn read_now(&self, rt: &Runtime) {
        let Some(mut reader) = self.inbox.lock().reader.take() else {
            return;
        };
        let read = self.read(rt, &mut reader, Some(Instant::now()));
        let mut inbox = self.inbox.lock();
        inbox.reader = Some(reader);
        self.changed.notify_all();
        drop(inbox);
        if read.is_err() {
            self.break_off(rt);
        }
    }

    /// Reads answers: those buffered, else waits for some up to `deadline`.
    fn read(&self, rt: &Runtime, r: &mut Conn, deadline: Option<Instant>) -> Result<()> {
        let mut got = false;
        while let Some(reply) = r.try_recv::<pb::Reply>(MAX_REPLY_FRAME).map_err(recv_err)? {
            self.answered(rt, reply);
            got = true;
        }
        if got || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // Spinning pays for one call's answer (a sync call); with more in
        // flight, answers that pile up while this thread sleeps are read
        // together, and a spinner would take the core the actor needs.
        let one = self.inflight.lock().len() <= 1;
        let spin = one.then_some(&self.spin);
        let (readable, _) = poll_readable(Some(self.stream.as_fd()), &[], left, spin)?;
        if readable {
            let reply = r.recv::<pb::Reply>(MAX_REPLY_FRAME).map_err(recv_err)?;
            self.answered(rt, reply);
            while let Some(reply) = r.try_recv::<pb::Reply>(MAX_REPLY_FRAME).map_err(recv_err)? {
                self.answered(rt, reply);
            }
        }
        Ok(())
    }

    /// A call's answer: its results are kept here or (given) held by the
    /// node; a promised one is put.
    fn answered(&self, rt: &Runtime, reply: pb::Reply) {
        let Some(pb::reply::Kind::TaskDone(done)) = reply.kind else {
            return;
        };
        let Some(task) = id_of(&done.task_id) else {
            return;
        };
        let call = {
            let mut q = self.inflight.lock();
            q.iter()
                .position(|c| c.task == task)
                .and_then(|i| q.remove(i))
        };
        // Not in flight: sent to the node already (the channel broke).
        let Some(call) = call else {
            return;
        };
        let given: HashSet<&[u8]> = done.given.iter().map(|b| &b[..]).collect();
        let mut releases = Vec::new();
        // The results whose values are kept here (or put, if promised).
        let mut came = Vec::new();
        {
            let mut objs = rt.caller.objects.lock();
            for o in done.results {
                let Some(id) = id_of(&o.id) else {
                    continue;
                };
                // Dropped while it ran, or failed by its cancel.
                let Some(d) = objs.get_mut(&id).filter(|d| !d.ready) else {
                    if given.contains(&o.id[..]) {
                        releases.push(id);
                    }
                    continue;
                };
                let mut o = o;
                if d.cancelled && !is_cancelled(&o) {
                    if given.contains(&o.id[..]) {
                        releases.push(id);
                    }
                    let f = &call.spec.function;
                    o.body = Some(pb::object::Body::Error(pb::ErrorInfo {
                        kind: pb::ErrorKind::TaskCancelled as i32,
                        function: f.clone(),
                        message: format!("{f} was cancelled while it ran"),
                        ..Default::default()
                    }));
                    o.contained.clear();
                } else if given.contains(&o.id[..]) {
                    objs.remove(&id);
                    continue;
                }
                came.push((id, o));
            }
        }
        settle(rt, came);
        for id in releases {
            super::release_to_node(rt, id);
        }
        drop(call);
    }

    /// A cancelled call that waits in the worker behind the calls that
    /// fill its slots fails now, rather than when the worker skips it (the
    /// running one may take long), as the node does with a call it sent
    /// ahead. The answers that came are taken first: a call still in the
    /// first `max_concurrency` may have started. If one before it ended
    /// unanswered, it may run: its answer is discarded then, as a running
    /// cancelled call's is.
    fn settle_waiting(&self, rt: &Runtime, task: ObjectId) {
        self.read_now(rt);
        let returns = {
            let mut q = self.inflight.lock();
            let Some(at) = q.iter().position(|c| c.task == task) else {
                return;
            };
            if at < self.max_concurrency {
                return;
            }
            let call = &mut q[at];
            call.settled = true;
            let f = &call.spec.function;
            let e = pb::ErrorInfo {
                kind: pb::ErrorKind::TaskCancelled as i32,
                function: f.clone(),
                message: format!("{f} was cancelled before it ran"),
                ..Default::default()
            };
            (call.spec.returns.iter())
                .map(|r| pb::Object {
                    id: r.clone(),
                    body: Some(pb::object::Body::Error(e.clone())),
                    ..Default::default()
                })
                .collect::<Vec<_>>()
        };
        let came = {
            let objs = rt.caller.objects.lock();
            returns
                .into_iter()
                .filter_map(|o| id_of(&o.id).map(|id| (id, o)))
                .filter(|(id, _)| objs.get(id).is_some_and(|d| !d.ready))
                .collect()
        };
        settle(rt, came);
    }
    /// The worker is gone: the calls it did not answer go to the node, in
    /// order; their results are the node's to make now. Every answer it
    /// sent was read before its end was, so only the first
    /// `max_concurrency` of them can have started (`resubmitted`: run again
    /// only with retries left); the others had waited in the worker and
    /// go as new calls, as the node does with calls it sent ahead, and so
    /// do calls whose write failed.
    fn break_off(&self, rt: &Runtime) {
        {
            let mut inbox = self.inbox.lock();
            inbox.broken = true;
            self.changed.notify_all();
        }
        {
            let mut routes = rt.caller.routes.lock();
            if let Some(Route::Open(c)) = routes.get(&self.actor)
                && std::ptr::eq(Arc::as_ptr(c), self)
            {
                routes.insert(
                    self.actor,
                    Route::Node {
                        retry_at: Instant::now() + BACKOFF_MAX,
                        backoff: BACKOFF_MAX,
                    },
                );
            }
        }
        // The node must see the worker gone first, or it would send it
        // the calls that follow.
        let _ = rt.call(Req::DirectActor(pb::DirectActor {
            actor_id: self.actor.as_bytes().to_vec().into(),
            gone_worker: self.worker_id,
        }));
        let calls: Vec<Inflight> = self.inflight.lock().drain(..).collect();
        let mut delivered = 0;
        for call in calls {
            if call.settled {
                continue;
            }
            let mut spec = call.spec;
            if !call.undelivered {
                spec.resubmitted = delivered < self.max_concurrency;
                delivered += 1;
            }
            let returns: Vec<ObjectId> = spec.returns.iter().filter_map(|b| id_of(b)).collect();
            let dropped: Vec<ObjectId> = {
                let mut objs = rt.caller.objects.lock();
                returns
                    .iter()
                    .filter(|r| objs.remove(r).is_none())
                    .copied()
                    .collect()
            };
            if let Some(first) = returns.first() {
                rt.caller.note_node_call(self.actor, *first);
            }
            let _ = rt.send(Req::Submit(pb::Submit { spec: Some(spec) }));
            // The node holds the results for this process now; those it
            // dropped meanwhile are let go.
            for r in dropped {
                super::release_to_node(rt, r);
            }
            drop(call.keep);
        }
        self.changed.notify_all();
    }
}

/// Keeps the values of direct results that came (the call answered, or was
/// cancelled before it ran): cached in `Runtime::inline`, then marked ready;
/// a promised one is put instead.
fn settle(rt: &Runtime, came: Vec<(ObjectId, pb::Object)>) {
    let mut puts = Vec::new();
    {
        // Kept only while referenced: the last ref's release clears
        // it, and may have come first. (The count's lock is never
        // taken under `objects`'.)
        let refs = rt.refs.lock();
        let mut inline = rt.inline.lock();
        for (id, o) in &came {
            if refs.contains_key(id) {
                inline.insert(
                    *id,
                    super::Got {
                        encoding: o.encoding,
                        body: (o.body.clone())
                            .unwrap_or(pb::object::Body::Inline(bytes::Bytes::new())),
                        contained: None,
                    },
                );
            }
        }
    }
    {
        // Marked ready only now that the value is in `inline`: a `get`
        // that sees it ready reads it there, and would otherwise ask
        // the node, which does not know it. A promised one (before the
        // call answered, or since) is put.
        let mut objs = rt.caller.objects.lock();
        for (id, o) in came {
            match objs.get_mut(&id) {
                Some(d) if d.promised => {
                    objs.remove(&id);
                    puts.push(o);
                }
                Some(d) => d.ready = true,
                None => {}
            }
        }
    }
    if puts.is_empty() {
        return;
    }
    // The thread that promised them may not have sent the promises yet.
    let _promised = rt.caller.promising.lock();
    for object in puts {
        let _ = rt.send(Req::Put(pb::Put {
            object: Some(object),
        }));
    }
}

fn is_cancelled(o: &pb::Object) -> bool {
    matches!(&o.body, Some(pb::object::Body::Error(e)) if e.kind == pb::ErrorKind::TaskCancelled as i32)
}

fn recv_err(e: arca_store::wire::RecvError) -> Error {
    Error::Disconnected(format!(
        "an actor's worker closed its direct connection: {e}"
    ))
}
