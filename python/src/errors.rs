//! Errors cross into Python here, and only here: a Rust error kind maps to
//! one class of `arca.exceptions` (the hierarchy lives in Python).

use arca_client::{Error, ErrorInfo, ObjectId};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    let made = py
        .import("arca.exceptions")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1((message.clone(),)));
    match made {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}

/// An error of the runtime as the `arca.exceptions` class Ray would raise.
pub fn to_py_err(e: Error) -> PyErr {
    Python::attach(|py| {
        let class = match &e {
            Error::ObjectStoreFull(_) | Error::ObjectTooLarge(_) => "ObjectStoreFullError",
            Error::GetTimeout { .. } => "GetTimeoutError",
            Error::TaskCancelled(_) => "TaskCancelledError",
            Error::WorkerCrashed(_) => "WorkerCrashedError",
            Error::ActorDied(_) => "ActorDiedError",
            Error::Unschedulable(_) => "TaskUnschedulableError",
            Error::ObjectLost(_) | Error::NotFound(_) => "ObjectLostError",
            Error::NotInitialized => "RaySystemError",
            Error::Connect { .. } | Error::Disconnected(_) | Error::Node(_) => "RaySystemError",
            _ => "RaySystemError",
        };
        raise(py, class, e.to_string())
    })
}

/// `GetTimeoutError` for a `get` of `ids` that waited `timeout` seconds.
pub fn get_timeout(py: Python<'_>, ids: &[ObjectId], timeout: f64) -> PyErr {
    let first = ids.first().map(|i| i.to_string()).unwrap_or_default();
    raise(
        py,
        "GetTimeoutError",
        format!(
            "Get timed out: some object(s) not ready after {timeout} s (first: ObjectRef({first})); \
             the task that makes it is still queued or running"
        ),
    )
}

/// A task's error as the tuple the Python layer turns into an exception:
/// `(-1, kind, function, message, backtrace, cause, cause_type, pid)`.
pub fn error_info_to_py(py: Python<'_>, e: ErrorInfo) -> PyResult<Bound<'_, PyTuple>> {
    (
        -1i32,
        e.kind,
        e.function,
        e.message,
        e.backtrace,
        PyBytes::new(py, &e.cause),
        e.cause_type,
        e.pid,
    )
        .into_pyobject(py)
}

/// The reverse, for a worker reporting a failed task.
pub fn error_info_from_py(t: &Bound<'_, PyTuple>) -> PyResult<ErrorInfo> {
    Ok(ErrorInfo {
        kind: t.get_item(1)?.extract()?,
        function: t.get_item(2)?.extract()?,
        message: t.get_item(3)?.extract()?,
        backtrace: t.get_item(4)?.extract()?,
        cause: t.get_item(5)?.extract::<Vec<u8>>()?.into(),
        cause_type: t.get_item(6)?.extract()?,
        pid: t.get_item(7)?.extract()?,
    })
}
