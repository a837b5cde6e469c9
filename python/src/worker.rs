//! A Python worker process: the node starts `python -m arca._worker`, which
//! connects here and runs tasks the node sends. A reader thread takes the
//! node's messages: tasks go to the Python main thread through a channel
//! (it waits detached), and a cancellation of the task running now becomes
//! SIGUSR1 to the main thread, whose handler raises `KeyboardInterrupt` in
//! the task (the signal also wakes a `time.sleep`).

use std::sync::mpsc;

use arca_client::core::{self, RecentCancels, TaskCall, WorkerEvent};
use arca_client::{ObjectId, TaskKind};
use nix::sys::pthread::{Pthread, pthread_kill, pthread_self};
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::codec::value_to_py;
use crate::errors::{error_info_from_py, to_py_err};
use crate::refs::{Contained, wrap};

struct Worker {
    tasks: Mutex<mpsc::Receiver<TaskCall>>,
    cancels: Mutex<Cancels>,
    main: Pthread,
}

/// The task the main thread runs now (of a sequential worker), and the
/// tasks cancelled lately. A cancel can come before its task reaches the main
/// thread (the node sent both), so it is remembered, and the task checks
/// when it starts.
#[derive(Default)]
struct Cancels {
    running: Option<ObjectId>,
    cancelled: RecentCancels,
}

static WORKER: std::sync::OnceLock<Worker> = std::sync::OnceLock::new();

/// Connects this process as the worker the node started, and starts the
/// thread that reads the node's messages. Returns its driver's job id.
#[pyfunction]
pub fn worker_connect(py: Python<'_>) -> PyResult<u64> {
    py.detach(|| arca_client::connect_worker_spinning(std::time::Duration::ZERO))
        .map_err(to_py_err)?;
    core::exit_with_node();
    let (tx, rx) = mpsc::channel();
    let worker = Worker {
        tasks: Mutex::new(rx),
        cancels: Mutex::new(Cancels::default()),
        main: pthread_self(),
    };
    if WORKER.set(worker).is_err() {
        return Err(PyRuntimeError::new_err("this process is already a worker"));
    }
    let read = move || {
        while let Ok(ev) = core::next_event() {
            match ev {
                WorkerEvent::Execute(call) => {
                    if tx.send(call).is_err() {
                        break;
                    }
                }
                WorkerEvent::Cancel(task) => {
                    if let Some(w) = WORKER.get() {
                        let mut c = w.cancels.lock();
                        c.cancelled.insert(task);
                        if c.running == Some(task) {
                            let _ = pthread_kill(w.main, Signal::SIGUSR1);
                        }
                    }
                }
            }
        }
        // The node is gone: so is this worker.
        std::process::exit(0);
    };
    std::thread::Builder::new()
        .name("arca-worker-reader".into())
        .spawn(read)
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the reader thread: {e}")))?;
    core::job_id().map_err(to_py_err)
}

/// Waits for the next task: `(task_id, kind, function, function_ref, args,
/// returns, split_returns, actor_id, attempt, max_concurrency, max_retries)`, each arg
/// `(encoding, data, buffers)`. `interruptible`: the main thread will run it,
/// and a cancel may interrupt it.
#[pyfunction]
pub fn next_task(py: Python<'_>, interruptible: bool) -> PyResult<Bound<'_, PyTuple>> {
    let w = worker()?;
    let call = py
        .detach(|| w.tasks.lock().recv())
        .map_err(|_| PyRuntimeError::new_err("the node closed the connection"))?;
    if interruptible && call.kind == TaskKind::Normal {
        w.cancels.lock().running = Some(call.task_id);
    }
    task_tuple(py, call)
}

/// Waits for the next task, then takes those that have arrived behind it,
/// up to `max` in all: an async actor starts them in its event loop with
/// one wake-up instead of one per call. Never interruptible.
#[pyfunction]
pub fn next_tasks(py: Python<'_>, max: usize) -> PyResult<Bound<'_, PyList>> {
    let w = worker()?;
    let calls = py
        .detach(|| {
            let rx = w.tasks.lock();
            let first = rx.recv()?;
            let mut calls = vec![first];
            calls.extend(rx.try_iter().take(max.saturating_sub(1)));
            Ok::<_, mpsc::RecvError>(calls)
        })
        .map_err(|_| PyRuntimeError::new_err("the node closed the connection"))?;
    let out = PyList::empty(py);
    for call in calls {
        out.append(task_tuple(py, call)?)?;
    }
    Ok(out)
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
    )
        .into_pyobject(py)
}

/// True if `task_id` was cancelled (checked when the task starts and by the
/// SIGUSR1 handler, which only interrupts the task the cancel was for).
#[pyfunction]
pub fn task_cancelled(task_id: &[u8]) -> PyResult<bool> {
    let task = crate::refs::id_of(task_id)?;
    Ok(WORKER
        .get()
        .is_some_and(|w| w.cancels.lock().cancelled.contains(&task)))
}

/// Reports a task's results: for each return id, `(encoding, data,
/// buffers, contained)` or an error tuple (see `errors`). Clears the
/// running task first, so a late cancel no longer interrupts.
#[pyfunction]
pub fn task_done(py: Python<'_>, task_id: &[u8], results: &Bound<'_, PyList>) -> PyResult<()> {
    let task = crate::refs::id_of(task_id)?;
    if let Some(w) = WORKER.get() {
        let mut c = w.cancels.lock();
        if c.running == Some(task) {
            c.running = None;
        }
        c.cancelled.remove(&task);
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
    py.detach(|| core::task_done(task, out)).map_err(to_py_err)
}
