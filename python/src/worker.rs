//! A Python worker process: the node starts `python -m arca._worker`, which
//! connects here and runs tasks the node sends. The main thread reads the
//! node's messages itself whenever it waits for a task, so a task reaches it
//! without a handoff between threads. While a task runs, a cancel waits
//! unread in the socket: the node also sends SIGUSR1 to the main thread,
//! whose handler reads it ([`task_cancelled`]) and raises
//! `KeyboardInterrupt` in the task (the signal also wakes a `time.sleep`).
//! If another thread of the task reads the socket meanwhile (a `get` in a
//! helper thread), it signals the main thread once it has filed the cancel.

use std::collections::VecDeque;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use arca_client::core::{self, RecentCancels, TaskCall, WorkerEvent};
use arca_proto::consts::INLINE_RESULT_MAX;
use nix::sys::pthread::{Pthread, pthread_kill, pthread_self};
use nix::sys::signal::Signal;
use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes, PyList, PyTuple};

use crate::codec::value_to_py;
use crate::errors::{error_info_from_py, to_py_err};
use crate::refs::{Contained, wrap};

struct Worker {
    cancels: Mutex<RecentCancels>,
    main: Pthread,
    /// Held by the one thread that waits for the node's next task: a
    /// threaded actor's threads each ask, and would otherwise all wake for
    /// every message.
    waiting: Mutex<()>,
    /// A threaded actor's threads running calls (see [`Runners`]).
    runners: Mutex<Runners>,
    /// Signalled when a thread that ran a call finds none arrived: the
    /// waiting thread may have to watch the sockets again.
    runner_idle: Condvar,
    /// Calls the waiting thread read while another thread was taking calls
    /// one after another: that thread takes them next.
    handed: Mutex<VecDeque<TaskCall>>,
}

/// A threaded actor runs calls on up to `max_concurrency` threads. While
/// one of them takes call after call (each ends quickly, and the next has
/// arrived), a thread that sleeps watching the sockets would only be woken
/// for every call to hand it over: a wake-up and a switch of the GIL per
/// call. So the waiting thread watches only once no call started within
/// [`QUIET`]: then the running ones may be blocked, and a call that comes
/// must start on another thread.
struct Runners {
    running: usize,
    last_start: Instant,
}

const QUIET: Duration = Duration::from_millis(1);
/// How long a thread that ran a call waits for the next itself.
const SOON: Duration = Duration::from_micros(100);

thread_local! {
    /// This thread runs a call it took from `next_task(arrived=True)`.
    static RUNS_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

static WORKER: std::sync::OnceLock<Worker> = std::sync::OnceLock::new();

/// Connects this process as the worker the node started. Returns its
/// driver's job id.
#[pyfunction]
pub fn worker_connect(py: Python<'_>) -> PyResult<u64> {
    py.detach(arca_client::connect_worker).map_err(to_py_err)?;
    core::exit_with_node();
    let worker = Worker {
        cancels: Mutex::new(RecentCancels::default()),
        main: pthread_self(),
        waiting: Mutex::new(()),
        runners: Mutex::new(Runners {
            running: 0,
            last_start: Instant::now(),
        }),
        runner_idle: Condvar::new(),
        handed: Mutex::new(VecDeque::new()),
    };
    if WORKER.set(worker).is_err() {
        return Err(PyRuntimeError::new_err("this process is already a worker"));
    }
    // Another thread (a `get` in a helper thread) may read the cancel the
    // node sent while the main thread ran the task, after the node's signal
    // found none: signal again once it is filed.
    core::on_cancel_filed(|| {
        if let Some(w) = WORKER.get() {
            let _ = pthread_kill(w.main, Signal::SIGUSR1);
        }
    });
    core::job_id().map_err(to_py_err)
}

/// The task the event brings; a cancel is remembered instead (it can come
/// before its task starts: the task checks when it starts).
fn task_of(w: &Worker, ev: WorkerEvent) -> Option<TaskCall> {
    match ev {
        WorkerEvent::Execute(call) => Some(call),
        WorkerEvent::Cancel(task) => {
            w.cancels.lock().insert(task);
            None
        }
    }
}

/// Waits for the node's next task.
fn wait_call(w: &Worker) -> PyResult<TaskCall> {
    let _turn = w.waiting.lock();
    loop {
        if let Some(call) = task_of(w, core::next_event().map_err(node_gone)?) {
            return Ok(call);
        }
    }
}

/// A threaded actor's thread waits for its next call: as [`wait_call`],
/// but not watching the sockets while another thread takes calls one after
/// another ([`Runners`]).
fn wait_call_threaded(w: &Worker) -> PyResult<TaskCall> {
    let _turn = w.waiting.lock();
    loop {
        {
            let mut r = w.runners.lock();
            while r.running > 0 && r.last_start.elapsed() < QUIET {
                let left = QUIET.saturating_sub(r.last_start.elapsed());
                w.runner_idle.wait_for(&mut r, left);
            }
        }
        if let Some(call) = w.handed.lock().pop_front() {
            return Ok(call);
        }
        let Some(call) = task_of(w, core::next_event().map_err(node_gone)?) else {
            continue;
        };
        let r = w.runners.lock();
        if r.running > 0 && r.last_start.elapsed() < QUIET {
            // Another thread took a call just now: it takes this one next.
            w.handed.lock().push_back(call);
            continue;
        }
        return Ok(call);
    }
}

/// The node's next task if it has arrived.
fn try_call(w: &Worker) -> PyResult<Option<TaskCall>> {
    if let Some(call) = w.handed.lock().pop_front() {
        return Ok(Some(call));
    }
    while let Some(ev) = core::try_next_event().map_err(node_gone)? {
        if let Some(call) = task_of(w, ev) {
            return Ok(Some(call));
        }
    }
    Ok(None)
}

fn node_gone(e: arca_client::Error) -> PyErr {
    PyRuntimeError::new_err(format!("the node closed the connection: {e}"))
}

/// Waits for the next task (from any thread: one waits at a time, the
/// others behind it): `(task_id, kind, function, function_ref, args,
/// returns, split_returns, actor_id, attempt, max_concurrency, max_retries,
/// resources)`, each arg `(encoding, data, buffers)`, `resources` a dict.
/// With `arrived`, one that has arrived already is taken without letting
/// go of the GIL (a threaded actor's thread that ended a call runs the next
/// at once, rather than handing the GIL to a thread that woke for it).
/// (`arrived` is for a threaded actor's threads, which count their calls
/// in [`Runners`].)
#[pyfunction]
#[pyo3(signature = (arrived=false))]
pub fn next_task(py: Python<'_>, arrived: bool) -> PyResult<Bound<'_, PyTuple>> {
    let w = worker()?;
    if !arrived {
        return task_tuple(py, py.detach(|| wait_call(w))?);
    }
    // A thread counts as running from taking a call until it gives up
    // waiting for the next.
    let ran = RUNS_CALL.replace(false);
    // The call, and whether this thread still counts as running.
    let (call, counted) = match try_call(w)? {
        Some(call) => (call, ran),
        None => py.detach(|| {
            // The next call often comes within microseconds: wait for it
            // here a while (the waiting thread stays dormant meanwhile).
            if ran && let Some(call) = take_soon(w)? {
                return Ok::<_, PyErr>((call, true));
            }
            if ran {
                w.runners.lock().running -= 1;
            }
            // The waiting thread may be leaving the sockets to this one.
            w.runner_idle.notify_one();
            Ok((wait_call_threaded(w)?, false))
        })?,
    };
    {
        let mut r = w.runners.lock();
        if !counted {
            r.running += 1;
        }
        r.last_start = Instant::now();
    }
    RUNS_CALL.set(true);
    task_tuple(py, call)
}

/// A call that comes within [`SOON`], taken by a thread that just ran one.
fn take_soon(w: &Worker) -> PyResult<Option<TaskCall>> {
    let deadline = Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match core::next_event_until(Some(left), None).map_err(node_gone)? {
            None => return Ok(None),
            Some(ev) => {
                if let Some(call) = task_of(w, ev) {
                    return Ok(Some(call));
                }
            }
        }
    }
}

/// Waits for the next task, then takes those that have arrived behind it,
/// up to `max` in all. An async actor's event loop calls this from its
/// selector (`selector`): it waits for tasks and for the loop's own events
/// at once, at most `timeout` seconds, and returns none once the loop has
/// something to do.
#[pyfunction]
#[pyo3(signature = (max, timeout=None, selector=None))]
pub fn next_tasks<'py>(
    py: Python<'py>,
    max: usize,
    timeout: Option<f64>,
    selector: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let w = worker()?;
    let fd: Option<RawFd> = selector
        .map(|s| s.call_method0("fileno")?.extract())
        .transpose()?;
    // Past what a Duration holds (or NaN): no limit, as for None.
    let timeout = timeout.and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok());
    let calls = py.detach(|| {
        // SAFETY: `fd` is the selector's own (epoll) fd, and the selector,
        // which the caller holds, closes it only in `close()`, which its
        // event loop calls when it is closed, never while it waits in its
        // `select()`, which is what calls this.
        let also = fd.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
        let mut calls = Vec::new();
        if let Some(first) = wait_call_until(w, timeout, also)? {
            calls.push(first);
            while calls.len() < max {
                match try_call(w)? {
                    Some(c) => calls.push(c),
                    None => break,
                }
            }
        }
        Ok::<_, PyErr>(calls)
    })?;
    let out = PyList::empty(py);
    for call in calls {
        out.append(task_tuple(py, call)?)?;
    }
    Ok(out)
}

/// Waits for the node's next task up to `timeout`, or until `also` is
/// readable: `None` then.
fn wait_call_until(
    w: &Worker,
    timeout: Option<Duration>,
    also: Option<BorrowedFd<'_>>,
) -> PyResult<Option<TaskCall>> {
    let _turn = w.waiting.lock();
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match core::next_event_until(left, also).map_err(node_gone)? {
            None => return Ok(None),
            Some(ev) => {
                if let Some(call) = task_of(w, ev) {
                    return Ok(Some(call));
                }
            }
        }
    }
}

fn worker() -> PyResult<&'static Worker> {
    WORKER
        .get()
        .ok_or_else(|| PyRuntimeError::new_err("not connected as a worker"))
}

fn task_tuple(py: Python<'_>, call: TaskCall) -> PyResult<Bound<'_, PyTuple>> {
    let args = PyList::empty(py);
    for a in call.args {
        args.append(value_to_py(py, a)?)?;
    }
    let returns = PyList::new(
        py,
        call.returns.iter().map(|r| PyBytes::new(py, r.as_bytes())),
    )?;
    let function_ref = match call.function_ref {
        Some(f) => Some(wrap(py, core::borrow(f))?),
        None => None,
    };
    (
        PyBytes::new(py, call.task_id.as_bytes()),
        call.kind as i32,
        call.function,
        function_ref,
        args,
        returns,
        call.split_returns,
        call.actor_id.map(|a| PyBytes::new(py, a.as_bytes())),
        call.attempt,
        call.max_concurrency,
        call.max_retries,
        call.resources.into_py_dict(py)?,
    )
        .into_pyobject(py)
}

/// True if `task_id` was cancelled: checked when the task starts and by the
/// SIGUSR1 handler while it runs. Reads the cancels that have arrived.
#[pyfunction]
pub fn task_cancelled(task_id: &[u8]) -> PyResult<bool> {
    let task = crate::refs::id_of(task_id)?;
    let w = worker()?;
    let arrived = core::take_cancels().map_err(node_gone)?;
    let mut c = w.cancels.lock();
    for t in arrived {
        c.insert(t);
    }
    Ok(c.contains(&task))
}

/// Reports a task's results: for each return id, `(encoding, data,
/// buffers, contained)` or an error tuple (see `errors`). Forgets the
/// task's cancel, if any.
#[pyfunction]
pub fn task_done(py: Python<'_>, task_id: &[u8], results: &Bound<'_, PyList>) -> PyResult<()> {
    let task = crate::refs::id_of(task_id)?;
    if let Some(w) = WORKER.get() {
        w.cancels.lock().remove(&task);
    }
    let mut out = Vec::with_capacity(results.len());
    for r in results.iter() {
        let t = r.cast::<PyTuple>()?;
        let id = crate::refs::id_of(&t.get_item(0)?.extract::<Vec<u8>>()?)?;
        let v = t.get_item(1)?;
        let v = v.cast::<PyTuple>()?;
        let enc: i32 = v.get_item(0)?.extract()?;
        if enc < 0 {
            out.push((id, Err(error_info_from_py(v)?)));
            continue;
        }
        let buffers = v.get_item(2)?;
        let contained = v.get_item(3)?;
        let e = crate::api::encoded_value(
            enc,
            &v.get_item(1)?,
            buffers.cast::<PyList>().ok(),
            contained.cast::<Contained>()?.get(),
        )?;
        out.push((id, Ok(e)));
    }
    // Small results without refs only go into a socket: sent holding the
    // GIL, a threaded actor's thread goes on to its next call, where letting
    // go would hand the GIL to the thread that woke for that call (a switch
    // per call: half the calls a second). A store write or the node's round trip
    // for a `Give` may take long, so those let go. A full socket blocks only
    // until its reader drains it, which needs no GIL of ours.
    let quick = out.iter().all(|(_, r)| match r {
        Ok(e) => e.len() <= INLINE_RESULT_MAX && e.contained.is_empty(),
        Err(_) => true,
    });
    if quick {
        core::task_done(task, out)
    } else {
        py.detach(|| core::task_done(task, out))
    }
    .map_err(to_py_err)
}
