//! The task runtime: `init`, `put`, `get`, `wait`, `cancel`, remote
//! functions and actors. One runtime per process, connected to the node's
//! scheduler and its object store.

mod actor;
mod codec;
mod conn;
pub mod core;
mod direct;
mod logs;
mod object_ref;
mod spin;
mod task;
mod worker;

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_proto::consts::{ENV_NODE_SOCKET, ENV_WORKER_ID, NODE_PROTOCOL_VERSION, NODE_SOCKET};
use arca_proto::node as pb;
use arca_store::ObjectId;
use foldhash::{HashMap, HashMapExt};
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::{ClientOptions, StoreClient};
use conn::{NodeConn, unexpected};

pub use actor::ActorHandle;
pub use codec::{ArrowBatch, Buffer, Encoded, FromObject, ToObject, decode, encode};
pub use object_ref::ObjectRef;
pub use task::{
    Arg, ArgsBuilder, DEFAULT_MAX_RETRIES, IntoArg, TaskOptions, returns, submit, submit_kind,
};
pub use worker::{
    ActorConstructor, ActorMethod, ArgData, RemoteFunction, TaskFailure, failure, result, results,
};

/// The cluster's head (`HOST:PORT`) for [`init`], as `RAY_ADDRESS`.
pub use arca_proto::consts::ENV_ADDRESS;
/// The local node's temp dir (session directory) for [`init`].
pub use arca_proto::consts::ENV_TEMP_DIR;

pub use arca_proto::consts::DEFAULT_SESSION_DIR;

/// How [`init_with`] finds a node and how the node starts this job's workers.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster's head, `HOST:PORT`: the driver uses the node of that
    /// cluster running on this machine. Default: `$ARCA_ADDRESS`.
    pub address: Option<String>,
    /// The temp dir of the node on this machine to use (`arca start
    /// --temp-dir DIR`). Default: `$ARCA_TEMP_DIR`, else `/tmp/arca`.
    pub temp_dir: Option<PathBuf>,
    /// Arguments the node passes to this program when it starts it as a
    /// worker (for test binaries: the name of a test that calls `init`).
    pub worker_args: Vec<String>,
    /// The whole command that starts a worker, instead of this program and
    /// `worker_args` (a Python driver's `python -m arca._worker`).
    pub worker_command: Option<Vec<String>>,
    /// Where workers start (default: the node's directory).
    pub worker_cwd: Option<PathBuf>,
    /// Variables set in the workers' environment.
    pub worker_env: Vec<(String, String)>,
    /// Print the workers' output here, each line prefixed with the task or
    /// actor and pid, as Ray does (default true). Else it goes to the node's
    /// own output (`node.log` for a node started by `arca start`).
    pub log_to_driver: bool,
    /// [`init_with_node`]: start a node even if an address is given or a
    /// node runs at the default session directory.
    pub start_node: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            address: None,
            temp_dir: None,
            worker_args: Vec::new(),
            worker_command: None,
            worker_cwd: None,
            worker_env: Vec::new(),
            log_to_driver: true,
            start_node: false,
        }
    }
}

/// A node this process runs in itself (see the `arca` crate's `init`): kept
/// with the runtime and stopped by [`shutdown`].
pub trait EmbeddedNode: Send {
    /// Its session directory, which holds its socket.
    fn session_dir(&self) -> &Path;
    /// Stops it: its workers end and its objects are freed.
    fn shutdown(self: Box<Self>);
}

/// The process's runtime.
pub(crate) struct Runtime {
    /// Shared by all threads without a lock around calls: each waits for its
    /// own reply (see `conn`).
    node: NodeConn,
    store: StoreClient,
    /// Local reference counts; the node hears of the first and the last.
    refs: Mutex<HashMap<ObjectId, Held>>,
    /// Values of objects this process holds, as put or first read (inline
    /// bytes, or "in the store"): objects are immutable, so a `get` of these
    /// needs no round trip to the node (as Ray's in-process memory store).
    /// Dropped with the last local ref.
    inline: Mutex<HashMap<ObjectId, Got>>,
    /// Results of this process's tasks the node said finished
    /// (`Reply.finished`), while this process holds them: a `wait` on them
    /// needs no round trip.
    finished: Mutex<foldhash::HashSet<ObjectId>>,
    embedded: Mutex<Option<Box<dyn EmbeddedNode>>>,
    session_dir: PathBuf,
    job_id: u64,
    /// The head of the cluster the node belongs to (empty: standalone).
    cluster_address: String,
    /// The node's id in the cluster, hex (empty: standalone).
    node_id: String,
    /// This process's connection at the node (`HelloReply.client_id`).
    client_id: u64,
    /// Its direct calls to actors (`direct`).
    caller: direct::Caller,
    /// An actor's worker: its socket for direct calls.
    server: std::sync::OnceLock<direct::Server>,
    /// This process has sent the node an object it may not have handled
    /// yet (a put, a task's results to be, a promise): a direct call that
    /// passes refs waits for it first (`direct::submit_call`).
    unsynced: std::sync::atomic::AtomicBool,
}

/// This process's count of one reference.
#[derive(Debug, Default)]
struct Held {
    count: u32,
    /// Set for a ref read out of the value of object `via`, which contains
    /// it: the node does not count this process's hold on it, since `via`
    /// holds it there; instead this hold counts as one on `via` (see
    /// [`core::Source`]).
    via: Option<ObjectId>,
}

/// An object's value as this process has it: read from the node, or kept in
/// `Runtime::inline`.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) encoding: i32,
    pub(crate) body: pb::object::Body,
    /// The refs nested in it that the node holds for as long as it lives
    /// (None: none, or not known here).
    pub(crate) contained: Option<Arc<[ObjectId]>>,
}

impl Got {
    fn from_object(o: pb::Object) -> Result<(ObjectId, Got)> {
        let id = ObjectId::from_slice(&o.id).map_err(|e| Error::Protocol(e.0))?;
        let body = o
            .body
            .ok_or_else(|| Error::Protocol("object without a body".into()))?;
        let contained = (!o.contained.is_empty()).then(|| {
            o.contained
                .iter()
                .filter_map(|b| ObjectId::from_slice(b).ok())
                .collect()
        });
        Ok((
            id,
            Got {
                encoding: o.encoding,
                body,
                contained,
            },
        ))
    }
}

static RUNTIME: RwLock<Option<Arc<Runtime>>> = RwLock::new(None);

pub(crate) fn runtime() -> Result<Arc<Runtime>> {
    RUNTIME.read().clone().ok_or(Error::NotInitialized)
}

impl Runtime {
    pub(crate) fn send(&self, kind: pb::request::Kind) -> Result<()> {
        if matches!(
            kind,
            pb::request::Kind::Put(_)
                | pb::request::Kind::Submit(_)
                | pb::request::Kind::Promise(_)
        ) {
            self.unsynced
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.node.send(kind)
    }

    pub(crate) fn call(&self, kind: pb::request::Kind) -> Result<pb::reply::Kind> {
        self.node.call(kind)
    }

    /// A worker's next task or cancel, from the node or (an actor's
    /// worker) a direct caller.
    pub(crate) fn next_execute(&self) -> Result<pb::reply::Kind> {
        loop {
            if let Some(k) = self.next_execute_until(None, None)? {
                return Ok(k);
            }
        }
    }

    pub(crate) fn try_next_execute(&self) -> Result<Option<pb::reply::Kind>> {
        self.next_execute_until(Some(Duration::ZERO), None)
    }

    /// The node's next message for this worker, or a direct call, waiting
    /// up to `timeout` (`None`: no limit) or until `also` is readable.
    pub(crate) fn next_execute_until(
        &self,
        timeout: Option<Duration>,
        also: Option<BorrowedFd<'_>>,
    ) -> Result<Option<pb::reply::Kind>> {
        let k = match (self.server.get(), timeout, also) {
            (Some(s), _, _) => s.next(self, timeout, also)?,
            (None, None, None) => Some(self.node.next_execute()?),
            (None, Some(t), None) if t.is_zero() => self.node.try_next_execute()?,
            (None, _, _) => {
                let deadline = timeout.map(|t| Instant::now() + t);
                let fds: Vec<BorrowedFd<'_>> = also.into_iter().collect();
                loop {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    let (k, ready) = self.node.poll_execute(&fds, left, None)?;
                    if k.is_some()
                        || ready.contains(&true)
                        || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break k;
                    }
                }
            }
        };
        if let Some(k) = &k {
            self.serve_direct_calls(k);
        }
        Ok(k)
    }

    pub(crate) fn take_cancels(&self) -> Result<Vec<pb::CancelTask>> {
        let mut cancels = self.node.take_cancels()?;
        if let Some(s) = self.server.get() {
            cancels.extend(s.take_cancels().into_iter().map(|t| pb::CancelTask {
                task_id: t.as_bytes().to_vec().into(),
            }));
        }
        Ok(cancels)
    }

    /// An actor's worker, given its constructor, opens its socket for
    /// direct calls (before the constructor runs, so that it is there once
    /// the node says the actor is alive).
    fn serve_direct_calls(&self, k: &pb::reply::Kind) {
        let pb::reply::Kind::Execute(e) = k else {
            return;
        };
        if e.spec.as_ref().map(|s| s.kind) != Some(pb::TaskKind::ActorCreation as i32)
            || self.server.get().is_some()
        {
            return;
        }
        let wid = std::env::var(ENV_WORKER_ID)
            .ok()
            .and_then(|w| w.parse::<u64>().ok());
        if let Some(wid) = wid {
            match direct::Server::bind(&self.session_dir, wid) {
                Ok(s) => {
                    let _ = self.server.set(s);
                }
                // Its callers then go through the node.
                Err(e) => tracing::warn!("no socket for direct calls: {e}"),
            }
        }
    }

    /// Reports a task's results: to its direct caller, or to the node.
    pub(crate) fn report(&self, done: pb::TaskDone) -> Result<()> {
        let nested: Vec<ObjectId> = done
            .results
            .iter()
            .flat_map(|o| {
                o.contained
                    .iter()
                    .filter_map(|b| ObjectId::from_slice(b).ok())
            })
            .collect();
        direct::promote(self, &nested)?;
        let done = match self.server.get() {
            Some(s) => s.answer(self, done),
            None => Some(done),
        };
        match done {
            Some(d) => self.send(pb::request::Kind::TaskDone(d)),
            None => Ok(()),
        }
    }

    pub(crate) fn store(&self) -> &StoreClient {
        &self.store
    }

    /// Stores an encoded value this process owns.
    pub(crate) fn put_encoded<T>(&self, mut e: Encoded) -> Result<ObjectRef<T>> {
        // Held until the put is sent (see `Encoded::keep`).
        let _keep = std::mem::take(&mut e.keep);
        direct::promote(self, &e.contained)?;
        let id = ObjectId::random();
        let contained = task::ids(&e.contained);
        let nested = (!e.contained.is_empty()).then(|| e.contained.as_slice().into());
        let encoding = e.encoding as i32;
        let body = e.into_body(id, &self.store)?;
        let r = ObjectRef::owned(id);
        self.inline.lock().insert(
            id,
            Got {
                encoding,
                body: body.clone(),
                contained: nested,
            },
        );
        self.send(pb::request::Kind::Put(pb::Put {
            object: Some(pb::Object {
                id: id.as_bytes().to_vec().into(),
                body: Some(body),
                contained,
                encoding,
            }),
        }))?;
        Ok(r)
    }
}

/// Counts a local reference. `announce`: the node does not know this
/// process holds it yet (a ref that arrived inside a value).
pub(crate) fn local_hold(id: ObjectId, announce: bool) {
    let Ok(rt) = runtime() else {
        return;
    };
    let mut refs = rt.refs.lock();
    let h = refs.entry(id).or_default();
    h.count += 1;
    if h.count > 1 || !announce {
        return;
    }
    match codec::note_deserialized(id) {
        codec::Borrowed::Later => {}
        codec::Borrowed::Leans(source) => {
            h.via = Some(source);
            let s = refs.entry(source).or_default();
            s.count += 1;
            if s.count == 1 {
                codec::note_source_held(source);
            }
        }
        codec::Borrowed::Now => {
            drop(refs);
            let _ = rt.send(pb::request::Kind::AddRefs(pb::Refs {
                ids: task::ids(&[id]),
            }));
        }
    }
}

/// Drops a local reference; never blocks on the connection (it runs in
/// destructors, Python's `__del__` among them).
pub(crate) fn local_release(id: ObjectId) {
    let Some(rt) = RUNTIME.try_read().and_then(|r| r.clone()) else {
        return;
    };
    // The refs whose last local hold went: this one, and the value it was
    // read from when that hold was the value's last (and so on).
    let mut gone = smallvec::SmallVec::<[ObjectId; 2]>::new();
    let last = {
        let mut refs = rt.refs.lock();
        let mut id = id;
        loop {
            let std::collections::hash_map::Entry::Occupied(mut h) = refs.entry(id) else {
                break None;
            };
            if h.get().count > 1 {
                h.get_mut().count -= 1;
                break None;
            }
            let via = h.remove().via;
            gone.push(id);
            match via {
                Some(v) => id = v,
                None if rt.caller.released(&id) => {
                    // The node does not know it: a direct call's result
                    // kept here.
                    break None;
                }
                // Queued under the count's lock: see
                // `NodeConn::queue_release`.
                None => break Some(rt.node.queue_release(id.as_bytes().to_vec().into())),
            }
        }
    };
    for id in &gone {
        rt.caller.seen(id);
        rt.caller.forget_actor(id);
    }
    if !gone.is_empty() {
        let mut inline = rt.inline.lock();
        for id in &gone {
            inline.remove(id);
        }
        drop(inline);
        let mut finished = rt.finished.lock();
        if !finished.is_empty() {
            for id in &gone {
                finished.remove(id);
            }
        }
    }
    let Some(queued) = last else {
        return;
    };
    let in_burst = release_follows_another();
    if queued >= RELEASE_BATCH || (queued == 1 && !in_burst) {
        rt.node.flush_releases();
    } else if queued == 1 {
        release_flusher().wake();
    }
}

/// Notes results the node says finished (`Reply.finished`): those this
/// process still holds (the others' last release has come and gone).
fn note_finished(ids: &[u8]) {
    let Some(rt) = RUNTIME.try_read().and_then(|r| r.clone()) else {
        return;
    };
    let refs = rt.refs.lock();
    let mut finished = rt.finished.lock();
    for b in ids.chunks_exact(ObjectId::LEN) {
        if let Ok(id) = ObjectId::from_slice(b)
            && refs.contains_key(&id)
        {
            finished.insert(id);
        }
    }
}

/// The first `num_returns` of `ids` (indices, in order) known to be ready
/// without asking the node: results it said finished, and direct calls'
/// results that came. None if fewer are known among the first
/// [`KNOWN_SCAN`] not known.
pub(crate) fn known_ready(
    rt: &Runtime,
    ids: &[ObjectId],
    num_returns: usize,
) -> Option<Vec<usize>> {
    let finished = rt.finished.lock();
    let direct = rt.caller.results();
    if finished.is_empty() && direct.is_empty() {
        return None;
    }
    let mut ready = Vec::with_capacity(num_returns);
    let mut misses = 0;
    for (i, id) in ids.iter().enumerate() {
        if finished.contains(id) || direct.came(id) {
            ready.push(i);
            if ready.len() == num_returns {
                return Some(ready);
            }
        } else {
            misses += 1;
            if misses > KNOWN_SCAN {
                return None;
            }
        }
    }
    None
}

/// See [`known_ready`]: a long list with its ready refs far in is the
/// node's to answer.
const KNOWN_SCAN: usize = 256;

/// Tells the node about references that arrived inside a value.
pub(crate) fn announce_refs(ids: &[ObjectId]) {
    if let Ok(rt) = runtime() {
        let _ = rt.send(pb::request::Kind::AddRefs(pb::Refs {
            ids: task::ids(ids),
        }));
    }
}

/// A release is sent at once, unless it follows another by less than
/// [`BURST_GAP`]: then it waits up to [`RELEASE_DELAY`] for the rest of the
/// burst (up to [`RELEASE_BATCH`]), so dropping a list of 10,000 refs is a
/// few messages, not 10,000, while a loop that drops one ref per call
/// still sends it with no delay and no thread wakeup.
const RELEASE_BATCH: usize = 4096;
const RELEASE_DELAY: std::time::Duration = std::time::Duration::from_micros(200);
const BURST_GAP: std::time::Duration = std::time::Duration::from_micros(20);

/// Whether the last release was less than [`BURST_GAP`] ago; notes this one.
fn release_follows_another() -> bool {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
        + 1;
    let prev = LAST.swap(now, std::sync::atomic::Ordering::Relaxed);
    // Another thread may have noted a later time first (saturating).
    prev != 0 && now.saturating_sub(prev) < BURST_GAP.as_nanos() as u64
}

/// A thread that sends queued releases a moment after the first of a burst
/// (any other message this process sends carries them first anyway).
fn release_flusher() -> &'static Helper {
    static FLUSHER: std::sync::OnceLock<Helper> = std::sync::OnceLock::new();
    Helper::get(&FLUSHER, "arca-releases", RELEASE_DELAY, || {
        if let Some(rt) = RUNTIME.try_read().and_then(|r| r.clone()) {
            rt.node.flush_releases();
        }
        false
    })
}

/// A background thread of the runtime that sleeps until woken, then runs
/// its work `delay` later, and again after each `delay` while the work
/// says more is left. Started on first use.
pub(crate) struct Helper {
    woken: Mutex<bool>,
    cv: parking_lot::Condvar,
}

impl Helper {
    /// The helper in `cell`, started on first use.
    pub(crate) fn get(
        cell: &'static std::sync::OnceLock<Helper>,
        name: &str,
        delay: Duration,
        work: fn() -> bool,
    ) -> &'static Helper {
        let mut started = false;
        let h = cell.get_or_init(|| {
            started = true;
            Helper {
                woken: Mutex::new(false),
                cv: parking_lot::Condvar::new(),
            }
        });
        if started {
            // Without the thread, its work waits for the runtime's next
            // use (releases go with the next message sent).
            let _ = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || h.run(delay, work));
        }
        h
    }

    pub(crate) fn wake(&self) {
        let mut w = self.woken.lock();
        if !*w {
            *w = true;
            self.cv.notify_one();
        }
    }

    fn run(&self, delay: Duration, work: fn() -> bool) {
        loop {
            {
                let mut w = self.woken.lock();
                while !*w {
                    self.cv.wait(&mut w);
                }
                // Cleared before the work: a wake meanwhile runs it again.
                *w = false;
            }
            std::thread::sleep(delay);
            if work() {
                self.wake();
            }
        }
    }
}

/// Lets go of the node's hold for this process on `id`, which this process
/// no longer references (a direct call's result the node took on for it).
pub(crate) fn release_to_node(rt: &Runtime, id: ObjectId) {
    rt.node.queue_release(id.as_bytes().to_vec().into());
    rt.node.flush_releases();
}

/// Connects this process to the node running on this machine (the one in
/// `$ARCA_TEMP_DIR`, else `/tmp/arca`; with `$ARCA_ADDRESS`, it must belong
/// to that cluster). The `arca` crate's `init` also starts an embedded node
/// when none runs, as `ray.init()` does.
///
/// Call it first thing in `main`: the node starts this same program as its
/// worker processes, and in a worker `init` runs tasks and never returns.
pub fn init() -> Result<()> {
    init_with(Config::default())
}

/// [`init`] with explicit settings.
pub fn init_with(config: Config) -> Result<()> {
    init_with_node(config, || {
        Err(Error::Node(format!(
            "no Arca node is running (none in $ARCA_TEMP_DIR or {DEFAULT_SESSION_DIR}); \
             start one with `arca start --head`, or use the arca crate's init(), which embeds one"
        )))
    })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// [`init_with`], starting a node with `start` when no address or temp dir
/// is given and no node runs at the default temp dir.
pub fn init_with_node(
    config: Config,
    start: impl FnOnce() -> Result<Box<dyn EmbeddedNode>>,
) -> Result<()> {
    if std::env::var_os(ENV_WORKER_ID).is_some() {
        connect_worker()?;
        worker::serve();
    }
    if RUNTIME.read().is_some() {
        return Err(Error::AlreadyInitialized);
    }
    let (mut address, from_env) = match config.address.clone() {
        _ if config.start_node => (None, false),
        Some(a) => (Some(a), false),
        None => (env(ENV_ADDRESS), true),
    };
    // `auto` (as in Ray): a node must run here, of whichever cluster.
    let auto = address.as_deref() == Some("auto");
    if auto {
        address = None;
    }
    let temp_dir = config
        .temp_dir
        .clone()
        .or_else(|| env(ENV_TEMP_DIR).map(PathBuf::from));
    let named = if from_env {
        format!("${ENV_ADDRESS}")
    } else {
        "the address".into()
    };
    if let Some(a) = &address
        && (a.contains('/') || !a.contains(':'))
    {
        return Err(Error::Node(format!(
            "{named} is {a:?}, but an address is the head's HOST:PORT (e.g. 127.0.0.1:6379); \
             a node's directory goes in ${ENV_TEMP_DIR} or Config::temp_dir"
        )));
    }
    let default = PathBuf::from(DEFAULT_SESSION_DIR);
    let (session, node) = match (&address, temp_dir) {
        _ if config.start_node => {
            let node = start()?;
            (node.session_dir().to_path_buf(), Some(node))
        }
        (Some(a), dir) => {
            let dir = dir.unwrap_or(default);
            if !node_running(&dir) {
                let unset = if from_env {
                    format!(", or unset {ENV_ADDRESS} to run on a node of your own")
                } else {
                    String::new()
                };
                return Err(Error::Node(format!(
                    "no node of the cluster at {a} runs on this machine (none in {}); \
                     start one with `arca start --address {a}`{unset}",
                    dir.display()
                )));
            }
            (dir, None)
        }
        (None, Some(dir)) => {
            if !node_running(&dir) {
                return Err(Error::Node(format!(
                    "no node runs in {} (from ${ENV_TEMP_DIR} or Config::temp_dir); start one with \
                     `arca start --head --temp-dir {}`, or unset {ENV_TEMP_DIR}",
                    dir.display(),
                    dir.display()
                )));
            }
            (dir, None)
        }
        (None, None) if node_running(&default) => (default, None),
        (None, None) if auto => {
            return Err(Error::Node(format!(
                "{named} is `auto` but no node runs on this machine (none in {DEFAULT_SESSION_DIR}); \
                 start one with `arca start --head`, or set {ENV_TEMP_DIR} to a node's temp dir"
            )));
        }
        (None, None) => {
            let node = start()?;
            (node.session_dir().to_path_buf(), Some(node))
        }
    };
    connect_driver(&session, config, node, address)
}

/// True if both name the same `HOST:PORT` (after resolving names).
fn same_address(a: &str, b: &str) -> bool {
    use std::net::ToSocketAddrs;
    let resolve = |s: &str| s.to_socket_addrs().ok().and_then(|mut i| i.next());
    a == b || (resolve(a).is_some() && resolve(a) == resolve(b))
}

/// True if a node answers in `session_dir`.
pub fn node_running(session_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(session_dir.join(NODE_SOCKET)).is_ok()
}

/// In a process the node started as a worker (`ARCA_WORKER_ID` is set):
/// connects as that worker. The caller then runs tasks from
/// [`core::next_event`] (a Rust program's `init` does this by itself).
pub fn connect_worker() -> Result<()> {
    let wid: u64 = std::env::var(ENV_WORKER_ID)
        .ok()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| Error::Node(format!("{ENV_WORKER_ID} is not set to a worker id")))?;
    let socket = std::env::var_os(ENV_NODE_SOCKET)
        .map(PathBuf::from)
        .ok_or_else(|| Error::Node(format!("{ENV_NODE_SOCKET} is not set")))?;
    let hello = pb::Hello {
        role: pb::Role::Worker as i32,
        worker_id: wid,
        ..hello()
    };
    let session = socket.parent().map(Path::to_path_buf).unwrap_or_default();
    connect(&socket, hello, None, session, false)
}

fn hello() -> pb::Hello {
    pb::Hello {
        version: NODE_PROTOCOL_VERSION,
        pid: std::process::id(),
        name: ClientOptions::default().name,
        ..Default::default()
    }
}

fn connect_driver(
    session: &Path,
    config: Config,
    node: Option<Box<dyn EmbeddedNode>>,
    address: Option<String>,
) -> Result<()> {
    let command = match config.worker_command {
        Some(c) => c,
        None => {
            let exe = std::env::current_exe().map_err(|e| {
                Error::Node(format!(
                    "cannot find this program's path to start workers: {e}"
                ))
            })?;
            let mut command = vec![exe.display().to_string()];
            command.extend(config.worker_args.iter().cloned());
            command
        }
    };
    let hello = pb::Hello {
        role: pb::Role::Driver as i32,
        worker_command: command,
        worker_cwd: config
            .worker_cwd
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        worker_env: config.worker_env.into_iter().collect(),
        ..hello()
    };
    let socket = session.join(NODE_SOCKET);
    connect(
        &socket,
        hello,
        node,
        session.to_path_buf(),
        config.log_to_driver,
    )?;
    if let Some(a) = address {
        let joined = runtime()?.cluster_address.clone();
        if !same_address(&joined, &a) {
            shutdown();
            let what = if joined.is_empty() {
                "is not in a cluster".to_string()
            } else {
                format!("belongs to the cluster at {joined}")
            };
            return Err(Error::Node(format!(
                "the node in {} {what}, not {a}; start a node of that cluster with \
                 `arca start --address {a} --temp-dir DIR` and set {ENV_TEMP_DIR}=DIR",
                session.display()
            )));
        }
    }
    Ok(())
}

fn connect(
    socket: &Path,
    hello: pb::Hello,
    node: Option<Box<dyn EmbeddedNode>>,
    session_dir: PathBuf,
    log_to_driver: bool,
) -> Result<()> {
    conn::set_finished_hook(note_finished);
    let (conn, reply) = NodeConn::connect(socket, hello)?;
    let store = StoreClient::connect_with(
        &reply.store_socket,
        ClientOptions {
            populate: false,
            ..Default::default()
        },
    )?;
    if log_to_driver {
        logs::stream(socket, reply.job_id)?;
    }
    *RUNTIME.write() = Some(Arc::new(Runtime {
        node: conn,
        store,
        refs: Mutex::new(HashMap::new()),
        inline: Mutex::new(HashMap::new()),
        finished: Mutex::new(Default::default()),
        embedded: Mutex::new(node),
        session_dir,
        client_id: reply.client_id,
        caller: direct::Caller::default(),
        server: std::sync::OnceLock::new(),
        unsynced: std::sync::atomic::AtomicBool::new(false),
        job_id: reply.job_id,
        cluster_address: reply.cluster_address.clone(),
        node_id: arca_proto::hex::encode(&reply.node_id),
    }));
    Ok(())
}

/// Disconnects from the node (and stops the embedded node, if this process
/// started one: its workers end and its objects are freed). ObjectRefs still
/// alive afterwards are inert.
pub fn shutdown() {
    let rt = RUNTIME.write().take();
    if let Some(rt) = rt {
        let node = rt.embedded.lock().take();
        drop(rt);
        if let Some(n) = node {
            n.shutdown();
        }
    }
}

/// True if [`init`] has connected this process.
pub fn is_initialized() -> bool {
    RUNTIME.read().is_some()
}

/// This process's connection to the node's object store, for raw bytes,
/// Arrow batches and tensors read zero-copy.
pub fn store_client() -> Result<StoreClient> {
    Ok(runtime()?.store.clone())
}

/// Stores a value and returns a reference to it. This process owns it.
/// Typed values are serialized; a [`Buffer`] or [`ArrowBatch`] is stored as
/// it is.
pub fn put<T: ToObject>(value: &T) -> Result<ObjectRef<T>> {
    runtime()?.put_encoded(value.to_object()?)
}

/// Waits for an object and returns its value.
pub fn get<T: FromObject>(r: &ObjectRef<T>) -> Result<T> {
    get_timeout(r, None)
}

/// [`get`] that gives up after `timeout` with `Error::GetTimeout`.
pub fn get_timeout<T: FromObject>(r: &ObjectRef<T>, timeout: Option<Duration>) -> Result<T> {
    let mut v = get_many_timeout(std::slice::from_ref(r), timeout)?;
    Ok(v.remove(0))
}

/// Waits for all of `refs` and returns their values in order.
pub fn get_many<T: FromObject>(refs: &[ObjectRef<T>]) -> Result<Vec<T>> {
    get_many_timeout(refs, None)
}

/// [`get_many`] with a timeout.
pub fn get_many_timeout<T: FromObject>(
    refs: &[ObjectRef<T>],
    timeout: Option<Duration>,
) -> Result<Vec<T>> {
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    core::get(&ids, timeout)?
        .into_iter()
        .map(|f| match f {
            core::Fetched::Value(v) => {
                core::begin_borrow(v.source.as_ref());
                let value = T::from_object(&v.data);
                core::end_borrow();
                value
            }
            core::Fetched::Error(e) => Err(task_error(e)),
        })
        .collect()
}

fn fetch(
    rt: &Runtime,
    ids: &[ObjectId],
    timeout: Option<Duration>,
) -> Result<Vec<(ObjectId, Got)>> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    if !direct::await_results(rt, ids, deadline)? {
        return Err(Error::GetTimeout {
            id: ids[0],
            timeout: timeout.unwrap_or_default(),
        });
    }
    // Values held here (this process's puts, values read before, direct
    // calls' results, which only this process has) need no round trip.
    let mut found: Vec<Option<Got>> = {
        let cache = rt.inline.lock();
        ids.iter().map(|id| cache.get(id).cloned()).collect()
    };
    let missing: Vec<ObjectId> = ids
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(id, _)| *id)
        .collect();
    if missing.is_empty() {
        return Ok(ids
            .iter()
            .copied()
            .zip(found.into_iter().flatten())
            .collect());
    }
    let timeout_ms =
        core::timeout_ms(deadline.map(|d| d.saturating_duration_since(std::time::Instant::now())));
    let reply = rt.node.request(pb::request::Kind::Get(pb::Get {
        ids: task::ids(&missing),
        timeout_ms,
    }))?;
    match reply {
        pb::reply::Kind::Get(g) => {
            let got = g
                .objects
                .into_iter()
                .map(Got::from_object)
                .collect::<Result<Vec<_>>>()?;
            if got.len() != missing.len() || got.iter().zip(&missing).any(|((a, _), b)| a != b) {
                return Err(Error::Protocol(
                    "Get reply does not match the ids asked".into(),
                ));
            }
            {
                let refs = rt.refs.lock();
                let mut cache = rt.inline.lock();
                for (id, g) in &got {
                    if matches!(
                        g.body,
                        pb::object::Body::Inline(_) | pb::object::Body::Stored(_)
                    ) && refs.contains_key(id)
                    {
                        cache.insert(*id, g.clone());
                    }
                }
            }
            for id in &missing {
                rt.caller.seen(id);
            }
            let mut got = got.into_iter().map(|(_, g)| g);
            for f in found.iter_mut().filter(|f| f.is_none()) {
                *f = got.next();
            }
            Ok(ids
                .iter()
                .copied()
                .zip(found.into_iter().flatten())
                .collect())
        }
        pb::reply::Kind::Error(e) if e.timeout => Err(Error::GetTimeout {
            id: e
                .missing
                .first()
                .and_then(|b| ObjectId::from_slice(b).ok())
                .unwrap_or(ids[0]),
            timeout: timeout.unwrap_or_default(),
        }),
        pb::reply::Kind::Error(e) => Err(Error::Node(e.message)),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn task_error(e: pb::ErrorInfo) -> Error {
    use pb::ErrorKind as K;
    match K::try_from(e.kind).unwrap_or(K::TaskFailed) {
        K::TaskFailed => Error::TaskError {
            function: e.function,
            message: e.message,
            backtrace: e.backtrace,
        },
        K::TaskCancelled => Error::TaskCancelled(e.message),
        K::WorkerCrashed => Error::WorkerCrashed(e.message),
        K::ActorDied => Error::ActorDied(e.message),
        K::Unschedulable => Error::Unschedulable(e.message),
        K::ObjectLost => Error::ObjectLost(e.message),
        K::UnknownFunction => Error::UnknownFunction(e.message),
    }
}

/// What [`wait`] returns: (ready, not ready).
pub type Split<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `refs` are ready (finished, with a value or
/// an error) or `timeout` passes; returns (ready, not ready), each in the
/// order given. At most `num_returns` refs are returned as ready.
pub fn wait<T>(
    refs: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<Split<T>> {
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    let mut is_ready = vec![false; refs.len()];
    for i in core::wait(&ids, num_returns, timeout, false)? {
        if let Some(r) = is_ready.get_mut(i) {
            *r = true;
        }
    }
    let (ready, not_ready): (Vec<_>, Vec<_>) =
        refs.iter().cloned().zip(is_ready).partition(|(_, r)| *r);
    Ok((
        ready.into_iter().map(|(r, _)| r).collect(),
        not_ready.into_iter().map(|(r, _)| r).collect(),
    ))
}

/// Cancels the task that makes `r`: if it has not started it never runs; if
/// it is running, `force` kills its worker process (the task is not
/// retried), and without `force` its result is discarded when it ends. Either
/// way `get` then fails with `Error::TaskCancelled`. Actor calls that have
/// not started are cancelled; running ones are not interrupted. It returns
/// once the node has recorded the cancel: a running task that ends after
/// that has its result discarded. (A task running on another node is told
/// by message, so there it may still finish first.)
pub fn cancel<T>(r: &ObjectRef<T>, force: bool) -> Result<()> {
    core::cancel(r.id(), force)
}

/// Ends an actor now: its process is killed, its pending calls fail with
/// `Error::ActorDied`, and it is not restarted.
pub fn kill(actor: &ActorHandle) -> Result<()> {
    core::kill_actor(actor.id(), true)
}

/// The node's status (what `arca status` shows).
pub fn status() -> Result<pb::StatusReply> {
    match runtime()?.call(pb::request::Kind::Status(pb::Status {}))? {
        pb::reply::Kind::Status(s) => Ok(s),
        other => Err(unexpected(&other)),
    }
}

/// The id of the node this process runs on, in hex (empty outside a
/// cluster): in a task, the node that runs it.
pub fn node_id() -> Result<String> {
    core::node_id()
}

/// Every object the node knows, with owner and reference counts.
pub fn memory() -> Result<pb::MemoryReply> {
    match runtime()?.call(pb::request::Kind::Memory(pb::Memory {}))? {
        pb::reply::Kind::Memory(m) => Ok(m),
        other => Err(unexpected(&other)),
    }
}
