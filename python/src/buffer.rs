//! Memory crossing the boundary without a copy, both ways.
//!
//! `StoreBuffer` lends Python read-only bytes that Rust owns: a slice of an
//! object in shared memory (keeping its pin) or of an inline value. numpy,
//! pyarrow and `memoryview` read it through the buffer protocol; the array
//! built on it keeps it (and so the pin) alive through its `.base` chain.
//!
//! `PyBytesOwner` lends Rust the bytes of a Python buffer (a `bytes`, a
//! numpy array's `PickleBuffer`) while the export is held, so that a put
//! copies them once, straight into shared memory.
//!
//! This is the one place in the extension with `unsafe`: the buffer
//! protocol is a C interface of raw pointers.

use std::ffi::c_int;

use bytes::Bytes;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Read-only bytes owned by Rust, exported to Python through the buffer
/// protocol (a 1-D `B` buffer).
#[derive(Debug)]
#[pyclass(frozen, module = "arca._native")]
pub struct StoreBuffer {
    bytes: Bytes,
}

impl StoreBuffer {
    pub fn new(bytes: Bytes) -> Self {
        Self { bytes }
    }
}

#[pymethods]
impl StoreBuffer {
    fn __len__(&self) -> usize {
        self.bytes.len()
    }

    /// The address of the first byte (tests check it lies in the store's mapping).
    fn address(&self) -> usize {
        self.bytes.as_ptr() as usize
    }

    fn __repr__(&self) -> String {
        format!("StoreBuffer({} bytes)", self.bytes.len())
    }

    /// # Safety
    /// Called by CPython with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("Py_buffer must not be null"));
        }
        let b = &slf.get().bytes;
        let len = isize::try_from(b.len())
            .map_err(|_| PyBufferError::new_err("buffer too large for this platform"))?;
        // SAFETY: `view` is non-null and CPython's to fill. The bytes stay
        // valid and unchanged while the view lives: `Bytes` is immutable, the
        // view holds a reference to `slf` (its `obj`, set by FillInfo), and
        // `slf` owns the `Bytes` (and through it the store pin). readonly=1,
        // so FillInfo refuses PyBUF_WRITABLE with a BufferError.
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                b.as_ptr() as *mut std::ffi::c_void,
                len,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// # Safety
    /// Called by CPython when a view made by `__getbuffer__` is released.
    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}
}

/// The bytes of a Python buffer, held exported for as long as Rust uses them.
#[derive(Debug)]
pub struct PyBytesOwner {
    buf: PyBuffer<u8>,
}

impl AsRef<[u8]> for PyBytesOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `PyBuffer::get` checked the buffer is C-contiguous bytes
        // (format "B", itemsize 1); the exporter keeps `buf_ptr()` valid for
        // `len_bytes()` bytes until the buffer is released, which happens
        // only when `self` drops. Python code may still write to a writable
        // exporter meanwhile, as with any buffer Ray or numpy reads; the
        // bytes read are then whatever was there, never out of bounds.
        unsafe { std::slice::from_raw_parts(self.buf.buf_ptr() as *const u8, self.buf.len_bytes()) }
    }
}

/// The bytes of `obj` (anything exporting a contiguous byte buffer:
/// `bytes`, `memoryview`, `PickleBuffer.raw()`), without copying.
pub fn borrow_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = obj.cast::<PyBytes>()
        && b.as_bytes().len() <= 4096
    {
        // Small: a copy is cheaper than holding an export.
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    let buf = PyBuffer::<u8>::get(obj)?;
    if !buf.is_c_contiguous() {
        return Err(PyBufferError::new_err(
            "a non-contiguous buffer cannot be stored out of band; pass a contiguous copy",
        ));
    }
    Ok(Bytes::from_owner(PyBytesOwner { buf }))
}
