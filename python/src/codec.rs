//! The layout of a Python value (encoding `PICKLE5`), and values read back
//! as Python objects.
//!
//! ```text
//! offset  size       field
//! 0       4          in-band pickle length, u32 LE
//! 4       4          out-of-band buffer count n, u32 LE
//! 8       16 * n     per buffer: offset u64 LE, length u64 LE
//! 8+16n   in-band    the pickle stream (protocol 5)
//! ...                each buffer at a 64-byte-aligned offset
//! ```
//!
//! Objects start 64-byte aligned in the store, so every buffer is too
//! (what numpy, Arrow and SIMD code want). A reader checks every range
//! against the object's length before slicing.
//!
//! A large buffer is placed so that its copy's destination sits at the
//! source's offset within a page, rounded down to 64 (large objects start on
//! a page). glibc's large `memmove` runs at a third of its speed when the
//! destination is a little ahead of the source modulo 4 KiB (measured here:
//! 3 GB/s at 64 to 256 bytes ahead, 9 GB/s level or behind), and the
//! pickle's header would otherwise put it exactly there.

use arca_client::Encoding;
use arca_client::core::Value;
use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::buffer::StoreBuffer;
use crate::refs::Source;

const ALIGN: usize = 64;
const PAGE: usize = 4096;
/// Buffers this large are placed by their source's page offset: the store
/// starts objects this large (and larger) on a page.
const PLACED: usize = 64 << 10;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Where each piece goes: (total length, [(offset, bytes)]), header first.
pub fn layout(inband: Bytes, buffers: Vec<Bytes>) -> (usize, Vec<(usize, Bytes)>) {
    let head = 8 + 16 * buffers.len();
    let mut at = head + inband.len();
    let mut header = Vec::with_capacity(head);
    header.extend_from_slice(&(inband.len() as u32).to_le_bytes());
    header.extend_from_slice(&(buffers.len() as u32).to_le_bytes());
    let mut parts = Vec::with_capacity(buffers.len() + 2);
    let mut placed = Vec::with_capacity(buffers.len());
    for b in buffers {
        at = align(at);
        if b.len() >= PLACED {
            let want = (b.as_ptr() as usize % PAGE) & !(ALIGN - 1);
            at += (want + PAGE - at % PAGE) % PAGE;
        }
        header.extend_from_slice(&(at as u64).to_le_bytes());
        header.extend_from_slice(&(b.len() as u64).to_le_bytes());
        let len = b.len();
        placed.push((at, b));
        at += len;
    }
    parts.push((0, Bytes::from(header)));
    parts.push((head, inband));
    parts.extend(placed);
    (at, parts)
}

fn corrupt(what: &str) -> PyErr {
    PyValueError::new_err(format!(
        "corrupt Python object: {what} (not written by arca's Python serializer?)"
    ))
}

fn u32_at(b: &[u8], at: usize) -> PyResult<usize> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()) as usize)
        .ok_or_else(|| corrupt("truncated header"))
}

fn u64_at(b: &[u8], at: usize) -> PyResult<usize> {
    b.get(at..at + 8)
        .and_then(|s| usize::try_from(u64::from_le_bytes(s.try_into().ok()?)).ok())
        .ok_or_else(|| corrupt("truncated header"))
}

/// Splits a `PICKLE5` object into its in-band pickle and its buffers, as
/// slices of the same memory.
pub fn split(b: &Bytes) -> PyResult<(Bytes, Vec<Bytes>)> {
    let inband_len = u32_at(b, 0)?;
    let n = u32_at(b, 4)?;
    let head = n
        .checked_mul(16)
        .and_then(|h| h.checked_add(8))
        .filter(|h| *h <= b.len())
        .ok_or_else(|| corrupt("buffer table past the end"))?;
    let inband_end = head
        .checked_add(inband_len)
        .filter(|e| *e <= b.len())
        .ok_or_else(|| corrupt("pickle past the end"))?;
    let mut buffers = Vec::with_capacity(n);
    for i in 0..n {
        let off = u64_at(b, 8 + 16 * i)?;
        let len = u64_at(b, 16 + 16 * i)?;
        let end = off
            .checked_add(len)
            .filter(|e| *e <= b.len())
            .ok_or_else(|| corrupt("buffer past the end"))?;
        buffers.push(b.slice(off..end));
    }
    Ok((b.slice(head..inband_end), buffers))
}

/// A value as Python reads it: `(encoding, data, buffers, source)`, where
/// `data` is a `StoreBuffer` (the in-band pickle for `PICKLE5`, else the
/// whole object), `buffers` the pickle's out-of-band buffers (else `None`)
/// and `source` what to pass to `begin_borrow` (or `None`).
pub fn value_to_py<'py>(py: Python<'py>, v: Value) -> PyResult<Bound<'py, PyTuple>> {
    let bytes = match v.data {
        arca_client::ArgData::Inline(b) => b,
        arca_client::ArgData::Stored(buf) => buf.to_bytes(),
    };
    let source = match v.source {
        Some(s) => Bound::new(py, Source(s))?.into_any(),
        None => py.None().into_bound(py),
    };
    let (data, buffers) = if v.encoding == Encoding::Pickle5 {
        let (inband, buffers) = split(&bytes)?;
        let buffers = PyList::new(py, buffers.into_iter().map(StoreBuffer::new))?;
        (inband, buffers.into_any())
    } else {
        (bytes, py.None().into_bound(py))
    };
    PyTuple::new(
        py,
        [
            (v.encoding as i32).into_pyobject(py)?.into_any(),
            Bound::new(py, StoreBuffer::new(data))?.into_any(),
            buffers,
            source,
        ],
    )
}
