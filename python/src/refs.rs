//! `ObjectRef` for Python: a frozen pyclass over the Rust runtime's counted
//! reference, so that Python refs, Rust refs and the node agree on one
//! count. Pickling a ref (inside a value, an argument or a result) records
//! its id for the value's "contained" list; unpickling one borrows it.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};

use arca_client::ObjectId;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

/// A reference to an object: a future for an immutable value.
#[derive(Debug)]
#[pyclass(frozen, module = "arca._native", name = "ObjectRef")]
pub struct PyObjectRef {
    pub inner: arca_client::ObjectRef<()>,
}

thread_local! {
    /// Ids of refs pickled since `begin_collect` (None: not collecting).
    static COLLECT: RefCell<Option<Vec<ObjectId>>> = const { RefCell::new(None) };
}

pub fn id_of(b: &[u8]) -> PyResult<ObjectId> {
    ObjectId::from_slice(b).map_err(|e| PyValueError::new_err(format!("not an object id: {}", e.0)))
}

#[pymethods]
impl PyObjectRef {
    /// The id as hex, as Ray's `ObjectRef.hex()`.
    fn hex(&self) -> String {
        self.inner.id().to_string()
    }

    /// The id's bytes.
    fn binary<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.id().as_bytes())
    }

    fn __repr__(&self) -> String {
        format!("ObjectRef({})", self.inner.id())
    }

    fn __hash__(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.id().hash(&mut h);
        h.finish()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyObjectRef>()
            .is_ok_and(|o| o.get().inner.id() == self.inner.id())
    }

    /// `await ref`: the value, without blocking the event loop.
    fn __await__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let fut = slf
            .py()
            .import("arca._runtime")?
            .call_method1("_as_future", (slf,))?;
        fut.call_method0("__await__")
    }

    /// An `asyncio.Future` for the value (in the running event loop).
    fn as_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("arca._runtime")?
            .call_method1("_as_future", (slf,))
    }

    /// A `concurrent.futures.Future` for the value.
    fn future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("arca._runtime")?
            .call_method1("_future", (slf,))
    }

    /// Pickled as its id; the pickler's caller learns it is nested.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let id = slf.get().inner.id();
        COLLECT.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push(id);
            }
        });
        let rebuild = py.import("arca._native")?.getattr("_borrow_ref")?;
        let args = PyTuple::new(py, [PyBytes::new(py, id.as_bytes())])?;
        PyTuple::new(py, [rebuild, args.into_any()])
    }
}

/// Rebuilds a pickled ref: this process now holds it (announced to the node
/// at `end_borrow`).
#[pyfunction]
pub fn _borrow_ref<'py>(py: Python<'py>, id: &[u8]) -> PyResult<Bound<'py, PyObjectRef>> {
    wrap(py, arca_client::core::borrow(id_of(id)?))
}

/// The ids of the refs pickled into one value, for its "contained" list.
#[derive(Debug)]
#[pyclass(frozen, module = "arca._native")]
pub struct Contained {
    pub ids: Vec<ObjectId>,
}

#[pymethods]
impl Contained {
    fn __len__(&self) -> usize {
        self.ids.len()
    }
}

/// Starts recording the ids of refs pickled on this thread (a nested
/// recording, from pickling inside a reducer, is folded into the outer).
#[pyfunction]
pub fn begin_collect() -> bool {
    COLLECT.with(|c| {
        let mut c = c.borrow_mut();
        let outer = c.is_some();
        c.get_or_insert_with(Vec::new);
        outer
    })
}

/// Stops the recording `begin_collect` started (unless it returned true:
/// then the outer recording goes on) and returns what it recorded.
#[pyfunction]
pub fn end_collect(nested: bool) -> Contained {
    let ids = if nested {
        Vec::new()
    } else {
        COLLECT.with(|c| c.borrow_mut().take()).unwrap_or_default()
    };
    Contained { ids }
}

/// Opens a scope in which unpickled refs are announced together. Refs
/// nested in `source` (the value's object, from `get`) lean on this
/// process's hold of it instead of being announced.
#[pyfunction]
#[pyo3(signature = (source=None))]
pub fn begin_borrow(source: Option<&Bound<'_, Source>>) {
    arca_client::core::begin_borrow(source.map(|s| &s.get().0));
}

/// Closes it.
#[pyfunction]
pub fn end_borrow() {
    arca_client::core::end_borrow();
}

/// The object a value was read from, with the refs nested in it (see
/// `arca_client::core::Source`).
#[derive(Debug)]
#[pyclass(frozen, module = "arca._native")]
pub struct Source(pub arca_client::core::Source);

pub fn wrap(py: Python<'_>, r: arca_client::ObjectRef<()>) -> PyResult<Bound<'_, PyObjectRef>> {
    let obj = Bound::new(py, PyObjectRef { inner: r })?;
    // SAFETY: `obj` is a live object of a GC type (PyO3 makes every class
    // one). An ObjectRef holds no Python object, so it can never be part of
    // a reference cycle and the cycle collector need not visit it; a value
    // of 10,000 refs otherwise makes every young collection walk them.
    // Untracking is what CPython does for tuples of atoms, and the dealloc's
    // own untrack is a no-op on an untracked object.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) };
    Ok(obj)
}
