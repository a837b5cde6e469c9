//! The driver's calls: connect, put, get, wait, submit, cancel, kill,
//! status. Every call that can block runs detached from the interpreter,
//! and waits in slices so that Ctrl-C (a pending signal) interrupts it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use arca_client::core::{self, Fetched};
use arca_client::{ArgsBuilder, EmbeddedNode, Encoded, Encoding, ObjectId, TaskKind, TaskOptions};
use arca_proto::consts::INLINE_RESULT_MAX;
use arca_scheduler::{Node, NodeConfig};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::buffer::borrow_bytes;
use crate::codec::{layout, value_to_py};
use crate::errors::{error_info_to_py, to_py_err};
use crate::refs::{Contained, PyObjectRef, wrap};

/// How long one slice of a blocking wait lasts before signals are checked.
const SLICE: Duration = Duration::from_millis(100);

struct Embedded(Node);

impl EmbeddedNode for Embedded {
    fn session_dir(&self) -> &std::path::Path {
        self.0.session_dir()
    }

    fn shutdown(self: Box<Self>) {
        self.0.shutdown();
    }
}

/// True if a node answers in `session_dir`.
#[pyfunction]
pub fn node_running(session_dir: PathBuf) -> bool {
    arca_client::node_running(&session_dir)
}

/// Connects as a driver. With `embedded` (a dict of node settings): to a
/// new node inside this process. Else to the node on this machine in
/// `temp_dir` (default `$ARCA_TEMP_DIR`, else `/tmp/arca`), which must belong
/// to the cluster whose head is at `address` (`HOST:PORT`) if one is given.
/// Returns the session directory and the job id.
#[pyfunction]
#[pyo3(signature = (address, temp_dir, embedded, worker_command, worker_cwd, worker_env, log_to_driver))]
#[allow(clippy::too_many_arguments)]
pub fn connect(
    py: Python<'_>,
    address: Option<String>,
    temp_dir: Option<PathBuf>,
    embedded: Option<&Bound<'_, PyDict>>,
    worker_command: Vec<String>,
    worker_cwd: PathBuf,
    worker_env: Vec<(String, String)>,
    log_to_driver: bool,
) -> PyResult<(String, u64)> {
    let node_config = embedded.map(node_config).transpose()?;
    let config = arca_client::Config {
        address,
        temp_dir,
        worker_command: Some(worker_command),
        worker_cwd: Some(worker_cwd),
        worker_env,
        log_to_driver,
        start_node: node_config.is_some(),
        ..Default::default()
    };
    py.detach(|| {
        arca_client::init_with_node(config, || {
            let mut nc = node_config.unwrap_or_default();
            nc.session_dir = arca_scheduler::fresh_session_dir();
            nc.remove_session_dir = true;
            let node = Node::start(nc).map_err(|e| {
                arca_client::Error::Node(format!("cannot start an embedded node: {e}"))
            })?;
            Ok(Box::new(Embedded(node)) as Box<dyn EmbeddedNode>)
        })
    })
    .map_err(to_py_err)?;
    let dir = core::session_dir().map_err(to_py_err)?;
    Ok((
        dir.display().to_string(),
        core::job_id().map_err(to_py_err)?,
    ))
}

/// The id (hex) of the node this process runs on in its cluster; empty for
/// a node outside a cluster.
#[pyfunction]
pub fn node_id() -> PyResult<String> {
    core::node_id().map_err(to_py_err)
}

/// Puts `value` under `key` in the cluster's KV; without `overwrite` an
/// existing value is kept. Returns `None` if added, else the kept value.
#[pyfunction]
pub fn kv_put<'py>(
    py: Python<'py>,
    key: &str,
    value: &[u8],
    overwrite: bool,
    job_scoped: bool,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let value = value.to_vec();
    let r = py
        .detach(|| core::kv_put(key, value, overwrite, job_scoped))
        .map_err(to_py_err)?;
    Ok(r.err().map(|v| PyBytes::new(py, &v)))
}

/// The value under `key` in the cluster's KV, or `None`.
#[pyfunction]
pub fn kv_get<'py>(py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let v = py.detach(|| core::kv_get(key)).map_err(to_py_err)?;
    Ok(v.map(|v| PyBytes::new(py, &v)))
}

/// Deletes `key` from the cluster's KV.
#[pyfunction]
pub fn kv_delete(py: Python<'_>, key: &str) -> PyResult<()> {
    py.detach(|| core::kv_delete(key)).map_err(to_py_err)
}

/// Borrows `id` from the node `lender` (hex) before a ref to it is made
/// here (a named actor's handle read from the KV).
#[pyfunction]
pub fn borrow_from(id: &[u8], lender: &str) -> PyResult<()> {
    let id = ObjectId::from_slice(id).map_err(|e| PyValueError::new_err(e.to_string()))?;
    core::borrow_from(id, lender).map_err(to_py_err)
}

/// Makes an actor outlive its handles and its driver.
#[pyfunction]
pub fn detach(actor: &Bound<'_, PyObjectRef>) -> PyResult<()> {
    core::detach(actor.get().inner.id()).map_err(to_py_err)
}

fn node_config(d: &Bound<'_, PyDict>) -> PyResult<NodeConfig> {
    let mut nc = NodeConfig::default();
    if let Some(v) = d.get_item("num_cpus")?.filter(|v| !v.is_none()) {
        nc.num_cpus = v.extract()?;
    }
    if let Some(v) = d.get_item("num_gpus")?.filter(|v| !v.is_none()) {
        nc.num_gpus = v.extract()?;
    }
    if let Some(v) = d.get_item("object_store_memory")?.filter(|v| !v.is_none()) {
        nc.object_store_memory = v.extract()?;
    }
    if let Some(v) = d.get_item("resources")?.filter(|v| !v.is_none()) {
        let r: BTreeMap<String, f64> = v.extract()?;
        nc.custom = r.into_iter().collect();
    }
    nc.total_resources()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(nc)
}

/// Disconnects (and stops the embedded node, if this process runs one).
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    py.detach(arca_client::shutdown);
}

#[pyfunction]
pub fn is_initialized() -> bool {
    arca_client::is_initialized()
}

/// An encoded value from its Python parts: for `PICKLE5` the in-band
/// pickle and the out-of-band buffers, for `RAW` the bytes.
pub fn encoded_value(
    encoding: i32,
    data: &Bound<'_, PyAny>,
    buffers: Option<&Bound<'_, PyList>>,
    contained: &Contained,
) -> PyResult<Encoded> {
    let encoding = Encoding::try_from(encoding)
        .map_err(|_| PyValueError::new_err(format!("unknown encoding {encoding}")))?;
    let data = borrow_bytes(data)?;
    let contained = contained.ids.clone();
    if encoding != Encoding::Pickle5 {
        return Ok(Encoded::from_bytes(encoding, data, contained));
    }
    let buffers = match buffers {
        Some(list) => list
            .iter()
            .map(|b| borrow_bytes(&b))
            .collect::<PyResult<Vec<_>>>()?,
        None => Vec::new(),
    };
    let (len, parts) = layout(data, buffers);
    Encoded::from_parts(encoding, len, parts, contained).map_err(to_py_err)
}

/// Stores a value this process owns.
#[pyfunction]
pub fn put<'py>(
    py: Python<'py>,
    encoding: i32,
    data: &Bound<'py, PyAny>,
    buffers: Option<&Bound<'py, PyList>>,
    contained: &Bound<'py, Contained>,
) -> PyResult<Bound<'py, PyObjectRef>> {
    let e = encoded_value(encoding, data, buffers, contained.get())?;
    let r = if e.len() > INLINE_RESULT_MAX {
        py.detach(|| core::put(e))
    } else {
        core::put(e)
    }
    .map_err(to_py_err)?;
    wrap(py, r)
}

fn ids(refs: &Bound<'_, PyList>) -> PyResult<Vec<ObjectId>> {
    refs.iter()
        .map(|r| {
            r.cast::<PyObjectRef>()
                .map(|r| r.get().inner.id())
                .map_err(|_| {
                    PyTypeError::new_err(format!(
                        "expected an ObjectRef, got {}",
                        r.get_type()
                            .name()
                            .map_or_else(|_| "?".into(), |n| n.to_string())
                    ))
                })
        })
        .collect()
}

/// Runs `call(timeout)` once on a helper thread and waits for it in slices
/// of [`SLICE`], checking for signals (Ctrl-C) between them: the request
/// goes to the node once, however long it waits. On Ctrl-C the helper is
/// left to finish (the node answers it when the objects are ready or the
/// timeout passes) and its answer is dropped.
fn blocking<T: Send + 'static>(
    py: Python<'_>,
    timeout: Option<Duration>,
    call: impl FnOnce(Option<Duration>) -> arca_client::Result<T> + Send + 'static,
) -> PyResult<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("arca-wait".into())
        .spawn(move || {
            let _ = tx.send(call(timeout));
        })
        .map_err(|e| PyValueError::new_err(format!("cannot start a thread to wait: {e}")))?;
    let mut rx = rx;
    loop {
        let (got, back) = py.detach(move || (rx.recv_timeout(SLICE), rx));
        rx = back;
        match got {
            Ok(r) => return r.map_err(to_py_err),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyValueError::new_err(
                    "the waiting thread ended without an answer",
                ));
            }
        }
    }
}

fn duration(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        Some(t) if t < 0.0 || t.is_nan() => {
            Err(PyValueError::new_err("timeout must be >= 0 or None"))
        }
        Some(t) => Ok(Some(Duration::from_secs_f64(t.min(1e9)))),
        None => Ok(None),
    }
}

/// Waits for `refs` and returns, for each, `(encoding, data, buffers)` or an
/// error tuple `(-1, kind, function, message, backtrace, cause, cause_type,
/// pid)`. Raises `GetTimeoutError` after `timeout` seconds.
#[pyfunction]
#[pyo3(signature = (refs, timeout=None))]
pub fn get<'py>(
    py: Python<'py>,
    refs: &Bound<'py, PyList>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyList>> {
    let ids = ids(refs)?;
    let timeout = duration(timeout)?;
    // Most gets are answered within a first slice, on this thread.
    let first_slice = timeout.map_or(SLICE, |t| t.min(SLICE));
    let fetched = match py.detach(|| core::get(&ids, Some(first_slice))) {
        Ok(f) => f,
        Err(arca_client::Error::GetTimeout { .. }) if timeout.is_none_or(|t| t > SLICE) => {
            py.check_signals()?;
            let left = timeout.map(|t| t - first_slice);
            let want = ids.clone();
            match blocking(py, left, move |t| core::get(&want, t)) {
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyTimeoutError>(py) => {
                    let waited = timeout.unwrap_or_default().as_secs_f64();
                    return Err(crate::errors::get_timeout(py, &ids, waited));
                }
                other => other?,
            }
        }
        Err(arca_client::Error::GetTimeout { .. }) => {
            let waited = timeout.unwrap_or_default().as_secs_f64();
            return Err(crate::errors::get_timeout(py, &ids, waited));
        }
        Err(e) => return Err(to_py_err(e)),
    };
    let out = PyList::empty(py);
    for f in fetched {
        match f {
            Fetched::Value(v) => out.append(value_to_py(py, v)?)?,
            Fetched::Error(e) => out.append(error_info_to_py(py, e)?)?,
        }
    }
    Ok(out)
}

/// Waits until `num_returns` of `refs` are ready (with `fetch_local`: their
/// bytes on this node) or `timeout` passes; returns the indices of the
/// ready ones.
#[pyfunction]
#[pyo3(signature = (refs, num_returns, timeout=None, fetch_local=true))]
pub fn wait(
    py: Python<'_>,
    refs: &Bound<'_, PyList>,
    num_returns: usize,
    timeout: Option<f64>,
    fetch_local: bool,
) -> PyResult<Vec<usize>> {
    let ids = ids(refs)?;
    if has_duplicates(&ids) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "Wait requires a list of unique object refs.",
        ));
    }
    let timeout = duration(timeout)?;
    let first_slice = timeout.map_or(SLICE, |t| t.min(SLICE));
    let ready = py
        .detach(|| core::wait(&ids, num_returns, Some(first_slice), fetch_local))
        .map_err(to_py_err)?;
    if ready.len() >= num_returns.min(ids.len()) || timeout.is_some_and(|t| t <= SLICE) {
        return Ok(ready);
    }
    py.check_signals()?;
    let left = timeout.map(|t| t - first_slice);
    blocking(py, left, move |t| {
        core::wait(&ids, num_returns, t, fetch_local)
    })
}

/// Whether an id is in `ids` twice. Every `wait` checks its whole list (as
/// Ray does), so the check works on 8-byte digests (less than half the
/// memory of 20-byte ids) and compares ids only when two digests match.
fn has_duplicates(ids: &[ObjectId]) -> bool {
    let digest = |id: &ObjectId| {
        let b = id.as_bytes();
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        // Ids differ mostly in their last bytes (a per-process counter).
        word(12) ^ word(0).rotate_left(29) ^ word(4).rotate_left(47)
    };
    let mut seen = foldhash::HashSet::with_capacity_and_hasher(ids.len(), Default::default());
    if ids.iter().all(|id| seen.insert(digest(id))) {
        return false;
    }
    let mut exact = foldhash::HashSet::with_capacity_and_hasher(ids.len(), Default::default());
    !ids.iter().all(|id| exact.insert(*id))
}

/// Submits a task, an actor's creation or an actor method call. `args`
/// holds ObjectRefs (passed by reference) and `(encoding, data, buffers,
/// contained)` tuples (values); `holds` refs the task keeps alive. Returns
/// the result refs (for a creation: the actor's ref).
#[pyfunction]
#[pyo3(signature = (kind, name, function_ref, args, holds, num_returns, resources, max_retries, max_restarts, max_concurrency, actor))]
#[allow(clippy::too_many_arguments)]
pub fn submit<'py>(
    py: Python<'py>,
    kind: i32,
    name: &str,
    function_ref: Option<&Bound<'py, PyObjectRef>>,
    args: &Bound<'py, PyList>,
    holds: &Bound<'py, PyList>,
    num_returns: usize,
    resources: Option<BTreeMap<String, f64>>,
    max_retries: u32,
    max_restarts: u32,
    max_concurrency: u32,
    actor: Option<&Bound<'py, PyObjectRef>>,
) -> PyResult<Bound<'py, PyList>> {
    let kind = TaskKind::try_from(kind)
        .map_err(|_| PyValueError::new_err(format!("unknown task kind {kind}")))?;
    let mut opts = TaskOptions::new(name)
        .max_retries(max_retries)
        .max_restarts(max_restarts)
        .max_concurrency(max_concurrency);
    opts = opts.python(function_ref.map(|f| f.get().inner.id()));
    if let Some(r) = resources {
        opts = opts.with_resources(r);
    }
    let mut builder = ArgsBuilder::default();
    // Refs that must live until the submit is sent: big values put now.
    let mut keep = Vec::new();
    for a in args.iter() {
        if let Ok(r) = a.cast::<PyObjectRef>() {
            builder.push_ref(r.get().inner.id());
            continue;
        }
        let t = a.cast::<PyTuple>()?;
        let contained = t.get_item(3)?;
        let buffers = t.get_item(2)?;
        let e = encoded_value(
            t.get_item(0)?.extract()?,
            &t.get_item(1)?,
            buffers.cast::<PyList>().ok(),
            contained.cast::<Contained>()?.get(),
        )?;
        if e.len() > INLINE_RESULT_MAX {
            let r = py.detach(|| core::put(e)).map_err(to_py_err)?;
            builder.push_ref(r.id());
            keep.push(r);
        } else {
            builder.push_encoded(e).map_err(to_py_err)?;
        }
    }
    for h in ids(holds)? {
        builder.hold(h);
    }
    if let Some(f) = function_ref {
        builder.hold(f.get().inner.id());
    }
    let actor_id = actor.map(|a| a.get().inner.id());
    let submit = || arca_client::submit_kind(&opts, builder, num_returns, kind, actor_id);
    let returns = if kind == TaskKind::ActorMethod {
        // A direct call may wait: for the node (the switch, a barrier), or
        // for room in the actor's socket while its worker is busy.
        py.detach(submit)
    } else {
        submit()
    }
    .map_err(to_py_err)?;
    drop(keep);
    let out = PyList::empty(py);
    if kind == TaskKind::ActorCreation {
        // The caller's actor ref counts the one hold the submit gave.
        return Ok(out);
    }
    for id in returns {
        out.append(wrap(py, core::owned(id))?)?;
    }
    Ok(out)
}

/// A new actor id, to create an actor under (its handle holds this ref).
#[pyfunction]
pub fn new_actor_ref(py: Python<'_>) -> PyResult<Bound<'_, PyObjectRef>> {
    wrap(py, core::owned(ObjectId::random()))
}

#[pyfunction]
pub fn cancel(r: &Bound<'_, PyObjectRef>, force: bool) -> PyResult<()> {
    core::cancel(r.get().inner.id(), force).map_err(to_py_err)
}

#[pyfunction]
pub fn kill(actor: &Bound<'_, PyObjectRef>, no_restart: bool) -> PyResult<()> {
    core::kill_actor(actor.get().inner.id(), no_restart).map_err(to_py_err)
}

/// In an actor's worker: ends the actor (`exit_actor`); the node kills
/// this process.
#[pyfunction]
pub fn exit_actor(actor_id: &[u8]) -> PyResult<()> {
    core::exit_actor(crate::refs::id_of(actor_id)?).map_err(to_py_err)
}

/// The node's status: resources, workers, tasks, store, and every node of
/// its cluster (`cluster`: one dict per node, `node_id` in hex; only this
/// node, with an empty id, outside a cluster).
#[pyfunction]
pub fn status(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = py.detach(arca_client::status).map_err(to_py_err)?;
    let d = PyDict::new(py);
    d.set_item("node_name", &s.node_name)?;
    d.set_item("pid", s.pid)?;
    d.set_item("session_dir", &s.session_dir)?;
    let amounts = |r: Option<arca_proto::node::Resources>| -> BTreeMap<String, f64> {
        r.map(|r| r.amounts)
            .unwrap_or_default()
            .into_iter()
            .collect()
    };
    d.set_item("total", amounts(s.total))?;
    d.set_item("available", amounts(s.available))?;
    d.set_item("store_used", s.store_used)?;
    d.set_item("store_capacity", s.store_capacity)?;
    d.set_item("store_spilled", s.store_spilled)?;
    d.set_item("objects", s.objects)?;
    d.set_item("workers", s.workers.len())?;
    d.set_item("tasks_queued", s.tasks_queued)?;
    d.set_item("tasks_running", s.tasks_running)?;
    let cluster = PyList::empty(py);
    for n in s.cluster {
        let c = PyDict::new(py);
        let id = arca_proto::hex::encode(&n.node_id);
        c.set_item("node_id", id)?;
        c.set_item("address", &n.address)?;
        c.set_item("name", &n.name)?;
        c.set_item("alive", n.alive)?;
        c.set_item("death_reason", &n.death_reason)?;
        c.set_item("total", amounts(n.total))?;
        c.set_item("available", amounts(n.available))?;
        c.set_item("store_capacity", n.store_capacity)?;
        c.set_item("store_used", n.store_used)?;
        c.set_item("store_spilled", n.store_spilled)?;
        c.set_item("tasks_queued", n.tasks_queued)?;
        c.set_item("is_head", n.is_head)?;
        c.set_item("temp_dir", &n.temp_dir)?;
        c.set_item("pid", n.pid)?;
        cluster.append(c)?;
    }
    d.set_item("cluster", cluster)?;
    d.set_item("cluster_address", &s.cluster_address)?;
    d.set_item("head_error", &s.head_error)?;
    Ok(d)
}

/// Every object the node knows: `(hex id, state, size, ref count)`.
#[pyfunction]
pub fn memory(py: Python<'_>) -> PyResult<Vec<(String, String, u64, u32)>> {
    let m = py.detach(arca_client::memory).map_err(to_py_err)?;
    Ok(m.objects
        .into_iter()
        .map(|o| {
            let id = ObjectId::from_slice(&o.id)
                .map(|i| i.to_string())
                .unwrap_or_default();
            (id, o.state, o.size, o.ref_count)
        })
        .collect())
}

/// The store's mapped address ranges in this process (for zero-copy tests).
#[pyfunction]
pub fn store_mappings() -> PyResult<Vec<(usize, usize)>> {
    let s = arca_client::store_client().map_err(to_py_err)?;
    Ok(s.segments()
        .iter()
        .map(|m| {
            let r = m.address_range();
            (r.start, r.end)
        })
        .collect())
}
