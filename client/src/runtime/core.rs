//! The untyped core of the runtime: objects as encoded bytes with the
//! references nested in them, tasks as specs, and a worker's events. The
//! typed API and the `#[arca::remote]` macros build on it, and so do other
//! languages' bindings (the Python extension), so that every language
//! shares one implementation of ownership, reference counting and tasks.
//!
//! References: an [`ObjectRef`] counts one local reference; the node hears
//! of a process's first and last. A ref found inside a value (by the
//! language's deserializer) is taken with [`borrow`], between
//! [`begin_borrow`] and [`end_borrow`] to announce them in one message;
//! given the value's [`Source`], those nested in it need no message at all.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arca_proto::node as pb;
use arca_store::ObjectId;

use super::codec::{self, Encoded};
use super::worker::ArgData;
use super::{ObjectRef, runtime, task};
use crate::error::{Error, Result};

/// An object's value as read: its encoding and its bytes (inline, or in
/// place in shared memory).
#[derive(Debug)]
pub struct Value {
    /// How to decode `data`.
    pub encoding: pb::Encoding,
    /// The bytes.
    pub data: ArgData,
    /// The object it was read from, when the refs nested in it are known:
    /// pass it to [`begin_borrow`] before deserializing.
    pub source: Option<Source>,
}

/// The object a value was read from, with the refs nested in it that the
/// node holds for as long as it lives. A ref read out of the value in a
/// borrow scope opened with this source leans on this process's hold of the object:
/// it counts as one more hold of it here, and the node hears nothing. So
/// reading a value of 10,000 refs and dropping them costs the node nothing,
/// and the object lives until the last of them is dropped.
#[derive(Debug, Clone)]
pub struct Source {
    pub(crate) id: ObjectId,
    pub(crate) contained: Arc<[ObjectId]>,
}

/// What `get` found for one object.
#[derive(Debug)]
pub enum Fetched {
    /// The value.
    Value(Value),
    /// The task that makes it failed (or the object is lost): why.
    Error(pb::ErrorInfo),
}

/// Stores an encoded value that this process owns.
pub fn put(e: Encoded) -> Result<ObjectRef<()>> {
    runtime()?.put_encoded(e)
}

/// Waits for objects (up to `timeout`, else `Error::GetTimeout`) and reads
/// them, in order.
pub fn get(ids: &[ObjectId], timeout: Option<Duration>) -> Result<Vec<Fetched>> {
    let rt = runtime()?;
    let objects = super::fetch(&rt, ids, timeout)?;
    objects
        .into_iter()
        .map(|(id, o)| {
            let encoding = pb::Encoding::try_from(o.encoding).unwrap_or_default();
            let source = o.contained.map(|contained| Source { id, contained });
            Ok(match o.body {
                pb::object::Body::Inline(b) => Fetched::Value(Value {
                    encoding,
                    data: ArgData::Inline(b),
                    source,
                }),
                pb::object::Body::Stored(_) => {
                    let buf = rt.store.get_one(id, Some(Duration::from_secs(60)))?;
                    Fetched::Value(Value {
                        encoding,
                        data: ArgData::Stored(buf),
                        source,
                    })
                }
                pb::object::Body::Error(e) => Fetched::Error(e),
            })
        })
        .collect()
}

/// Waits until `num_returns` of `ids` are ready or `timeout` passes; returns
/// the indices of the ready ones, in order (at most `num_returns`). With
/// `fetch_local`, an object is ready once its bytes are on this node (one on
/// another node is pulled here); else once it exists anywhere.
pub fn wait(
    ids: &[ObjectId],
    num_returns: usize,
    timeout: Option<Duration>,
    fetch_local: bool,
) -> Result<Vec<usize>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rt = runtime()?;
    if let Some(ready) = super::known_ready(&rt, ids, num_returns) {
        return Ok(ready);
    }
    // The node answers: it must know the direct calls' results among them.
    super::direct::promote(&rt, ids)?;
    // A long list's head is asked about first, without waiting: when enough
    // of it is ready, those are the answer (the first ready refs in input
    // order), and the rest of the list never travels. Ray's 1k-refs `wait`
    // loop sends 500 ids a call on average, and its first is nearly always
    // ready.
    if ids.len() >= 2 * WAIT_PROBE && num_returns <= WAIT_PROBE {
        let head = wait_once(
            &ids[..WAIT_PROBE],
            num_returns,
            Some(Duration::ZERO),
            fetch_local,
        )?;
        if head.len() >= num_returns {
            return Ok(head);
        }
    }
    wait_once(ids, num_returns, timeout, fetch_local)
}

/// How many refs the head of a long `wait` list has.
const WAIT_PROBE: usize = 64;

fn wait_once(
    ids: &[ObjectId],
    num_returns: usize,
    timeout: Option<Duration>,
    fetch_local: bool,
) -> Result<Vec<usize>> {
    let rt = runtime()?;
    let reply = rt.call(pb::request::Kind::Wait(pb::Wait {
        ids: task::ids(ids),
        num_returns: num_returns.min(u32::MAX as usize) as u32,
        timeout_ms: timeout_ms(timeout),
        fetch_local,
    }))?;
    match reply {
        pb::reply::Kind::Wait(w) => Ok(w.ready.into_iter().map(|i| i as usize).collect()),
        other => Err(super::unexpected(&other)),
    }
}

pub(crate) fn timeout_ms(timeout: Option<Duration>) -> i64 {
    timeout.map_or(-1, |t| t.as_millis().min(i64::MAX as u128) as i64)
}

/// Cancels the task that makes `id` (see [`crate::cancel`]). Waits for the
/// node's answer, so a task that ends after this returns has its result
/// discarded rather than racing the cancel.
pub fn cancel(id: ObjectId, force: bool) -> Result<()> {
    let rt = runtime()?;
    if super::direct::cancel(&rt, &id, force) {
        return Ok(());
    }
    let req = pb::request::Kind::Cancel(pb::Cancel {
        id: id.as_bytes().to_vec().into(),
        force,
    });
    match rt.call(req)? {
        pb::reply::Kind::Ok(_) => Ok(()),
        other => Err(super::conn::unexpected(&other)),
    }
}

/// Ends actor `id`; with `no_restart` false it may be restarted.
pub fn kill_actor(id: ObjectId, no_restart: bool) -> Result<()> {
    send_kill(id, no_restart, false)
}

/// In actor `id`'s own worker: ends the actor as it chose (`exit_actor`).
/// The node kills this process, fails the calls left with
/// `Error::ActorDied` saying so, and does not restart it.
pub fn exit_actor(id: ObjectId) -> Result<()> {
    send_kill(id, true, true)
}

fn send_kill(id: ObjectId, no_restart: bool, exit: bool) -> Result<()> {
    runtime()?.send(pb::request::Kind::KillActor(pb::KillActor {
        actor_id: id.as_bytes().to_vec().into(),
        no_restart,
        exit,
    }))
}

/// A reference the node already counts for this process (a submit's
/// returns, an actor id about to be created): only the local count changes.
pub fn owned(id: ObjectId) -> ObjectRef<()> {
    ObjectRef::owned(id)
}

/// A reference this process got inside a value: counted locally, and
/// announced to the node (at [`end_borrow`], if a borrow scope is open).
pub fn borrow(id: ObjectId) -> ObjectRef<()> {
    ObjectRef::borrowed(id)
}

/// Opens a scope in which [`borrow`]ed refs are announced together, for
/// reading one value. Given the value's `source` (from [`get`]), the refs
/// nested in it lean on it instead and are not announced at all.
pub fn begin_borrow(source: Option<&Source>) {
    codec::begin_reading(source);
}

/// Closes the scope [`begin_borrow`] opened, announcing its refs.
pub fn end_borrow() {
    let fresh = codec::end_reading();
    if !fresh.is_empty() {
        super::announce_refs(&fresh);
    }
}

/// The connected node's session directory.
pub fn session_dir() -> Result<PathBuf> {
    Ok(runtime()?.session_dir.clone())
}

/// The connected node's id in its cluster, in hex (empty for a node
/// outside a cluster). A task reads its own node's.
pub fn node_id() -> Result<String> {
    Ok(runtime()?.node_id.clone())
}

/// Puts `value` under `key` in the cluster's KV (the head's; a standalone
/// node's own). Without `overwrite`, an existing value is kept and
/// returned: `Ok(Err(existing))`. A `job_scoped` key is deleted when this
/// driver's job ends.
pub fn kv_put(
    key: &str,
    value: Vec<u8>,
    overwrite: bool,
    job_scoped: bool,
) -> Result<std::result::Result<(), bytes::Bytes>> {
    let req = pb::request::Kind::KvPut(pb::KvPut {
        key: key.to_string(),
        value: value.into(),
        overwrite,
        job_scoped,
    });
    match runtime()?.call(req)? {
        pb::reply::Kind::KvPut(r) if r.added => Ok(Ok(())),
        pb::reply::Kind::KvPut(r) => Ok(Err(r.existing)),
        other => Err(super::conn::unexpected(&other)),
    }
}

/// The value under `key` in the cluster's KV, if any.
pub fn kv_get(key: &str) -> Result<Option<bytes::Bytes>> {
    let req = pb::request::Kind::KvGet(pb::KvKey {
        key: key.to_string(),
    });
    match runtime()?.call(req)? {
        pb::reply::Kind::KvGet(r) => Ok(r.found.then_some(r.value)),
        other => Err(super::conn::unexpected(&other)),
    }
}

/// Deletes `key` from the cluster's KV.
pub fn kv_delete(key: &str) -> Result<()> {
    let req = pb::request::Kind::KvDelete(pb::KvKey {
        key: key.to_string(),
    });
    match runtime()?.call(req)? {
        pb::reply::Kind::Ok(_) => Ok(()),
        other => Err(super::conn::unexpected(&other)),
    }
}

/// Before holding `id`, an object another node (`lender`, hex node id)
/// owns that this process learnt of outside a value (a named actor's
/// handle from the KV): lets this node borrow it. Send it before the ref
/// is announced ([`borrow`] + [`end_borrow`]).
pub fn borrow_from(id: ObjectId, lender: &str) -> Result<()> {
    let lender = arca_proto::hex::decode(lender)
        .ok_or_else(|| Error::Protocol(format!("{lender:?} is not a node id")))?;
    runtime()?.send(pb::request::Kind::Borrow(pb::Borrow {
        id: id.as_bytes().to_vec().into(),
        lender: lender.into(),
    }))
}

/// Makes the actor `id` outlive its handles and its driver.
pub fn detach(id: ObjectId) -> Result<()> {
    runtime()?.send(pb::request::Kind::Detach(pb::Detach {
        id: id.as_bytes().to_vec().into(),
    }))
}

/// This driver's job id at the node (a worker's is its driver's).
pub fn job_id() -> Result<u64> {
    Ok(runtime()?.job_id)
}

/// The tasks a worker was told lately to cancel. A cancel can arrive before
/// its task starts (the node sends actor calls ahead, and a task can wait in
/// the worker's queue), so it is remembered until the task is taken up.
/// Bounded: a cancel that comes just after its task ended stays until
/// pushed out.
#[derive(Debug, Default)]
pub struct RecentCancels(std::collections::VecDeque<ObjectId>);

impl RecentCancels {
    const KEPT: usize = 256;

    /// Remembers a cancel of `task`.
    pub fn insert(&mut self, task: ObjectId) {
        if self.0.len() >= Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back(task);
    }

    /// Whether `task` was cancelled.
    pub fn contains(&self, task: &ObjectId) -> bool {
        self.0.contains(task)
    }

    /// Forgets `task`'s cancel; whether there was one.
    pub fn remove(&mut self, task: &ObjectId) -> bool {
        let found = self.0.iter().position(|t| t == task);
        found.and_then(|i| self.0.remove(i)).is_some()
    }
}

/// What the node sends a worker.
#[derive(Debug)]
pub enum WorkerEvent {
    /// Run this task.
    Execute(TaskCall),
    /// Interrupt this running task (the caller cancelled it).
    Cancel(ObjectId),
}

/// A task as a worker runs it: its arguments read (in place, for stored ones).
#[derive(Debug)]
pub struct TaskCall {
    /// The task.
    pub task_id: ObjectId,
    /// A function, an actor's constructor or an actor method.
    pub kind: pb::TaskKind,
    /// The function's name (for Python actor methods: the method's).
    pub function: String,
    /// Python: the object holding the pickled function or class.
    pub function_ref: Option<ObjectId>,
    /// The arguments, in order.
    pub args: Vec<Value>,
    /// The ids its results get, one per return value.
    pub returns: Vec<ObjectId>,
    /// The function returns a list with one element per return id.
    pub split_returns: bool,
    /// The actor it creates or calls.
    pub actor_id: Option<ObjectId>,
    /// 1 on the first run, more on retries.
    pub attempt: u32,
    /// Actor creation: method calls it may run at once.
    pub max_concurrency: u32,
    /// Times the task may be retried.
    pub max_retries: u32,
    /// The resources it asked for (an actor's calls ask for none: its
    /// constructor's hold for the actor's life).
    pub resources: Vec<(String, f64)>,
}

/// Waits for the node's next task or cancellation (in a worker process
/// connected with [`super::connect_worker`]). An error means the node is gone:
/// the worker should exit.
pub fn next_event() -> Result<WorkerEvent> {
    loop {
        if let Some(ev) = event(runtime()?.next_execute()?)? {
            return Ok(ev);
        }
    }
}

/// [`next_event`] without waiting: `None` if nothing has arrived (or
/// another thread of this process reads the node's messages now).
pub fn try_next_event() -> Result<Option<WorkerEvent>> {
    let rt = runtime()?;
    while let Some(kind) = rt.try_next_execute()? {
        if let Some(ev) = event(kind)? {
            return Ok(Some(ev));
        }
    }
    Ok(None)
}

/// [`next_event`] that waits at most `timeout` (`None`: no limit), and
/// not beyond `also` becoming readable: `None` then. An async actor's event
/// loop waits so for tasks and its own events at once (`also` is its
/// selector's fd).
pub fn next_event_until(
    timeout: Option<Duration>,
    also: Option<BorrowedFd<'_>>,
) -> Result<Option<WorkerEvent>> {
    let rt = runtime()?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let Some(kind) = rt.next_execute_until(left, also)? else {
            return Ok(None);
        };
        if let Some(ev) = event(kind)? {
            return Ok(Some(ev));
        }
    }
}

/// The tasks the node has cancelled since the last call, read without
/// waiting; the tasks it sent stay queued for [`next_event`]. A worker
/// calls this while its thread runs a task, and before it starts one.
pub fn take_cancels() -> Result<Vec<ObjectId>> {
    runtime()?
        .take_cancels()?
        .into_iter()
        .map(|c| ObjectId::from_slice(&c.task_id).map_err(|e| Error::Protocol(e.0)))
        .collect()
}

/// Has `hook` called each time a thread of this process that reads the
/// node's messages for another purpose (a `get` in a helper thread, say)
/// comes across a cancel for this worker; [`take_cancels`] sees it then.
pub fn on_cancel_filed(hook: fn()) {
    super::conn::set_cancel_filed_hook(hook);
}

/// The event a message from the node is; `None` for a task that cannot run
/// (its results, which say why, are reported here).
fn event(kind: pb::reply::Kind) -> Result<Option<WorkerEvent>> {
    match kind {
        pb::reply::Kind::CancelTask(c) => Ok(Some(WorkerEvent::Cancel(
            ObjectId::from_slice(&c.task_id).map_err(|e| Error::Protocol(e.0))?,
        ))),
        pb::reply::Kind::Execute(exec) => {
            let mut spec = exec.spec.unwrap_or_default();
            let id = |b: &[u8]| ObjectId::from_slice(b).ok();
            let mut resources: Vec<(String, f64)> = spec
                .resources
                .take()
                .map(|r| r.amounts.into_iter().collect())
                .unwrap_or_default();
            resources.sort_by(|a, b| a.0.cmp(&b.0));
            let args = load_args(&exec.args);
            let task_id = id(&spec.task_id)
                .ok_or_else(|| Error::Protocol("Execute with a malformed task id".into()))?;
            let returns: Vec<ObjectId> = spec.returns.iter().filter_map(|b| id(b)).collect();
            let kind = pb::TaskKind::try_from(spec.kind).unwrap_or(pb::TaskKind::Normal);
            let args = match args {
                Ok(a) => a,
                Err(message) => {
                    // The task cannot run; its results say why.
                    let e = pb::ErrorInfo {
                        kind: pb::ErrorKind::TaskFailed as i32,
                        function: spec.function.clone(),
                        message,
                        ..Default::default()
                    };
                    task_done(
                        task_id,
                        returns.iter().map(|r| (*r, Err(e.clone()))).collect(),
                    )?;
                    return Ok(None);
                }
            };
            Ok(Some(WorkerEvent::Execute(TaskCall {
                task_id,
                kind,
                function: spec.function,
                function_ref: id(&spec.function_ref),
                args,
                returns,
                split_returns: spec.split_returns,
                actor_id: id(&spec.actor_id),
                attempt: exec.attempt,
                max_concurrency: spec.max_concurrency,
                max_retries: spec.max_retries,
                resources,
            })))
        }
        other => Err(super::unexpected(&other)),
    }
}

/// Reads a task's resolved arguments, stored ones in place from the store.
pub(crate) fn load_args(args: &[pb::ResolvedArg]) -> std::result::Result<Vec<Value>, String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    args.iter()
        .map(|a| {
            let encoding = pb::Encoding::try_from(a.encoding).unwrap_or_default();
            let data = match &a.kind {
                Some(pb::resolved_arg::Kind::Value(v)) => ArgData::Inline(v.clone()),
                Some(pb::resolved_arg::Kind::Stored(id)) => {
                    let id = ObjectId::from_slice(id).map_err(|e| e.0)?;
                    let buf = rt
                        .store()
                        .get_one(id, None)
                        .map_err(|e| format!("cannot read argument {id}: {e}"))?;
                    ArgData::Stored(buf)
                }
                None => ArgData::Inline(bytes::Bytes::new()),
            };
            Ok(Value {
                encoding,
                data,
                source: None,
            })
        })
        .collect()
}

/// Reports a task's results: a value or an error for each return id. Large
/// values are written to the store first. The refs nested in the values
/// must stay held by the caller until this returns.
pub fn task_done(
    task_id: ObjectId,
    results: Vec<(ObjectId, std::result::Result<Encoded, pb::ErrorInfo>)>,
) -> Result<()> {
    let rt = runtime()?;
    let results = results
        .into_iter()
        .map(|(id, r)| {
            let error = |e: pb::ErrorInfo| pb::Object {
                id: id.as_bytes().to_vec().into(),
                body: Some(pb::object::Body::Error(e)),
                contained: Vec::new(),
                encoding: 0,
            };
            match r {
                Ok(v) => {
                    let contained = task::ids(&v.contained);
                    let encoding = v.encoding as i32;
                    match v.into_body(id, rt.store()) {
                        Ok(body) => pb::Object {
                            id: id.as_bytes().to_vec().into(),
                            body: Some(body),
                            contained,
                            encoding,
                        },
                        Err(e) => error(pb::ErrorInfo {
                            kind: pb::ErrorKind::TaskFailed as i32,
                            message: format!("cannot store the result: {e}"),
                            ..Default::default()
                        }),
                    }
                }
                Err(e) => error(e),
            }
        })
        .collect();
    rt.report(pb::TaskDone {
        task_id: task_id.as_bytes().to_vec().into(),
        results,
        given: Vec::new(),
    })
}

/// Watches for the node (this worker's parent) to exit, and then exits.
pub fn exit_with_node() {
    super::worker::exit_with_parent();
}
