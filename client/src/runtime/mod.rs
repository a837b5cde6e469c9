//! The task runtime: `init`, `put`, `get`, `wait`, `cancel`, remote
//! functions and actors. One runtime per process, connected to the node's
//! scheduler and its object store.

mod actor;
mod codec;
mod conn;
mod object_ref;
mod task;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arca_proto::node as pb;
use arca_scheduler::{ENV_NODE_SOCKET, ENV_WORKER_ID, NODE_PROTOCOL_VERSION, Node, NodeConfig};
use arca_store::ObjectId;
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::{ClientOptions, StoreClient};
use conn::{NodeConn, unexpected};

pub use actor::ActorHandle;
pub use codec::{ArrowBatch, Buffer, Encoded, FromObject, ToObject, decode, encode};
pub use object_ref::ObjectRef;
pub use task::{Arg, ArgsBuilder, DEFAULT_MAX_RETRIES, IntoArg, TaskOptions, returns, submit};
pub use worker::{
    ActorConstructor, ActorMethod, ArgData, RemoteFunction, TaskFailure, failure, result, results,
};

/// Environment variable naming a running node's session directory for
/// [`init`] to connect to.
pub const ENV_ADDRESS: &str = "ARCA_ADDRESS";

/// How [`init_with`] finds or starts a node.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Connect to the node in this session directory (as made by
    /// `arca start --head --temp-dir DIR`). Default: `$ARCA_ADDRESS`, else
    /// `/tmp/arca` if a node runs there, else start an embedded node.
    pub address: Option<PathBuf>,
    /// Always start an embedded node, with these settings (its session
    /// directory is made fresh and removed at shutdown when left default).
    pub embedded: Option<NodeConfig>,
    /// Arguments the node passes to this program when it starts it as a
    /// worker (for test binaries: the name of a test that calls `init`).
    pub worker_args: Vec<String>,
}

/// The process's runtime.
pub(crate) struct Runtime {
    /// Shared by all threads without a lock around calls: each waits for its
    /// own reply (see `conn`).
    node: NodeConn,
    store: StoreClient,
    /// Local reference counts; the node hears of the first and the last.
    refs: Mutex<HashMap<ObjectId, u32>>,
    embedded: Mutex<Option<Node>>,
}

static RUNTIME: RwLock<Option<Arc<Runtime>>> = RwLock::new(None);

pub(crate) fn runtime() -> Result<Arc<Runtime>> {
    RUNTIME.read().clone().ok_or(Error::NotInitialized)
}

impl Runtime {
    pub(crate) fn send(&self, kind: pb::request::Kind) -> Result<()> {
        self.node.send(kind)
    }

    pub(crate) fn call(&self, kind: pb::request::Kind) -> Result<pb::reply::Kind> {
        self.node.call(kind)
    }

    pub(crate) fn next_execute(&self) -> Result<pb::Execute> {
        self.node.next_execute()
    }

    pub(crate) fn store(&self) -> &StoreClient {
        &self.store
    }

    /// Stores an encoded value this process owns.
    pub(crate) fn put_encoded<T>(&self, mut e: Encoded) -> Result<ObjectRef<T>> {
        // Held until the put is sent (see `Encoded::keep`).
        let _keep = std::mem::take(&mut e.keep);
        let id = ObjectId::random();
        let contained = task::ids(&e.contained);
        let body = e.into_body(id, &self.store)?;
        let r = ObjectRef::owned(id);
        self.send(pb::request::Kind::Put(pb::Put {
            object: Some(pb::Object {
                id: id.as_bytes().to_vec().into(),
                body: Some(body),
                contained,
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
    let first = {
        let mut refs = rt.refs.lock();
        let n = refs.entry(id).or_insert(0);
        *n += 1;
        *n == 1
    };
    if first && announce && !codec::note_deserialized(id) {
        let _ = rt.send(pb::request::Kind::AddRefs(pb::Refs {
            ids: task::ids(&[id]),
        }));
    }
}

pub(crate) fn local_release(id: ObjectId) {
    let Ok(rt) = runtime() else {
        return;
    };
    let last = {
        let mut refs = rt.refs.lock();
        match refs.get_mut(&id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                refs.remove(&id);
                true
            }
            None => false,
        }
    };
    if last {
        let _ = rt.send(pb::request::Kind::RemoveRefs(pb::Refs {
            ids: task::ids(&[id]),
        }));
    }
}

/// Tells the node about references that arrived inside a value.
pub(crate) fn announce_refs(ids: Vec<ObjectId>) {
    if let Ok(rt) = runtime() {
        let _ = rt.send(pb::request::Kind::AddRefs(pb::Refs {
            ids: task::ids(&ids),
        }));
    }
}

/// Connects this process to a node: the running one (`$ARCA_ADDRESS`, or
/// `/tmp/arca`), or else a new embedded node that lives as long as this
/// process (as `ray.init()` does).
///
/// Call it first thing in `main`: the node starts this same program as its
/// worker processes, and in a worker `init` runs tasks and never returns.
pub fn init() -> Result<()> {
    init_with(Config::default())
}

/// [`init`] with explicit settings.
pub fn init_with(config: Config) -> Result<()> {
    if let Some(wid) = std::env::var_os(ENV_WORKER_ID) {
        let wid: u64 = wid
            .to_string_lossy()
            .parse()
            .map_err(|_| Error::Node(format!("bad {ENV_WORKER_ID}")))?;
        let socket = std::env::var_os(ENV_NODE_SOCKET)
            .map(PathBuf::from)
            .ok_or_else(|| Error::Node(format!("{ENV_NODE_SOCKET} is not set")))?;
        connect(&socket, pb::Role::Worker, wid, Vec::new(), None)?;
        worker::serve();
    }
    if RUNTIME.read().is_some() {
        return Err(Error::AlreadyInitialized);
    }
    let exe = std::env::current_exe().map_err(|e| {
        Error::Node(format!(
            "cannot find this program's path to start workers: {e}"
        ))
    })?;
    let mut command = vec![exe.display().to_string()];
    command.extend(config.worker_args.iter().cloned());
    let address = config
        .address
        .clone()
        .or_else(|| std::env::var_os(ENV_ADDRESS).map(PathBuf::from));
    let (session, node) = match (address, config.embedded) {
        (Some(dir), None) => (dir, None),
        (None, None) if arca_scheduler::node_running(&NodeConfig::default().session_dir) => {
            (NodeConfig::default().session_dir, None)
        }
        (_, embedded) => {
            let mut nc = embedded.unwrap_or_default();
            if nc.session_dir == NodeConfig::default().session_dir {
                nc.session_dir = fresh_session_dir();
                nc.remove_session_dir = true;
            }
            let node = Node::start(nc)
                .map_err(|e| Error::Node(format!("cannot start an embedded node: {e}")))?;
            (node.session_dir().to_path_buf(), Some(node))
        }
    };
    connect(
        &session.join(arca_scheduler::NODE_SOCKET),
        pb::Role::Driver,
        0,
        command,
        node,
    )
}

/// A new session directory for an embedded node, `<tmp>/arca-<pid>-<n>`.
/// Those of processes that no longer exist (killed before they could clean
/// up) are removed on the way.
fn fresh_session_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("arca-"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(pid, n)| n.parse::<u32>().ok().and(pid.parse::<i32>().ok()));
            let dead = pid.is_some_and(|p| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None)
                    == Err(nix::errno::Errno::ESRCH)
            });
            if dead && e.path().join(arca_scheduler::NODE_SOCKET).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tmp.join(format!(
        "arca-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn connect(
    socket: &std::path::Path,
    role: pb::Role,
    worker_id: u64,
    command: Vec<String>,
    node: Option<Node>,
) -> Result<()> {
    let hello = pb::Hello {
        version: NODE_PROTOCOL_VERSION,
        pid: std::process::id(),
        role: role as i32,
        name: ClientOptions::default().name,
        worker_command: command,
        worker_id,
    };
    let (conn, reply) = NodeConn::connect(socket, hello)?;
    let store = StoreClient::connect_with(
        &reply.store_socket,
        ClientOptions {
            populate: false,
            ..Default::default()
        },
    )?;
    *RUNTIME.write() = Some(Arc::new(Runtime {
        node: conn,
        store,
        refs: Mutex::new(HashMap::new()),
        embedded: Mutex::new(node),
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
    let rt = runtime()?;
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    let objects = fetch(&rt, &ids, timeout)?;
    objects.into_iter().map(|o| decode_object(&rt, o)).collect()
}

fn fetch(rt: &Runtime, ids: &[ObjectId], timeout: Option<Duration>) -> Result<Vec<pb::Object>> {
    let timeout_ms = timeout.map_or(-1, |t| t.as_millis().min(i64::MAX as u128) as i64);
    let reply = rt.node.request(pb::request::Kind::Get(pb::Get {
        ids: task::ids(ids),
        timeout_ms,
    }))?;
    match reply {
        pb::reply::Kind::Get(g) => Ok(g.objects),
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

fn decode_object<T: FromObject>(rt: &Runtime, o: pb::Object) -> Result<T> {
    match o.body {
        Some(pb::object::Body::Inline(b)) => T::from_object(&ArgData::Inline(b)),
        Some(pb::object::Body::Stored(_)) => {
            let id = ObjectId::from_slice(&o.id).map_err(|e| Error::Protocol(e.0))?;
            let buf = rt.store.get_one(id, Some(Duration::from_secs(60)))?;
            T::from_object(&ArgData::Stored(buf))
        }
        Some(pb::object::Body::Error(e)) => Err(task_error(e)),
        None => Err(Error::Protocol("object without a body".into())),
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
    if refs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let rt = runtime()?;
    let ids: Vec<ObjectId> = refs.iter().map(|r| r.id()).collect();
    let timeout_ms = timeout.map_or(-1, |t| t.as_millis().min(i64::MAX as u128) as i64);
    let reply = rt.call(pb::request::Kind::Wait(pb::Wait {
        ids: task::ids(&ids),
        num_returns: num_returns.min(u32::MAX as usize) as u32,
        timeout_ms,
    }))?;
    let pb::reply::Kind::Wait(w) = reply else {
        return Err(unexpected(&reply));
    };
    let mut is_ready = vec![false; refs.len()];
    for i in w.ready {
        if let Some(r) = is_ready.get_mut(i as usize) {
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
/// not started are cancelled; running ones are not interrupted.
pub fn cancel<T>(r: &ObjectRef<T>, force: bool) -> Result<()> {
    runtime()?.send(pb::request::Kind::Cancel(pb::Cancel {
        id: r.id().as_bytes().to_vec().into(),
        force,
    }))
}

/// Ends an actor now: its process is killed, its pending calls fail with
/// `Error::ActorDied`, and it is not restarted.
pub fn kill(actor: &ActorHandle) -> Result<()> {
    runtime()?.send(pb::request::Kind::KillActor(pb::KillActor {
        actor_id: actor.id().as_bytes().to_vec().into(),
        no_restart: true,
    }))
}

/// The node's status (what `arca status` shows).
pub fn status() -> Result<pb::StatusReply> {
    match runtime()?.call(pb::request::Kind::Status(pb::Status {}))? {
        pb::reply::Kind::Status(s) => Ok(s),
        other => Err(unexpected(&other)),
    }
}

/// Every object the node knows, with owner and reference counts.
pub fn memory() -> Result<pb::MemoryReply> {
    match runtime()?.call(pb::request::Kind::Memory(pb::Memory {}))? {
        pb::reply::Kind::Memory(m) => Ok(m),
        other => Err(unexpected(&other)),
    }
}
