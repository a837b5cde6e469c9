//! How values become objects and back. Typed values go through serde with
//! postcard (compact, varint), with the ObjectRefs nested in a value
//! collected on the way out and registered as this process's references on
//! the way in. [`Buffer`] and [`ArrowBatch`] skip serialization: their bytes
//! are the object, and a stored one is read back in place from shared memory.

use std::cell::RefCell;
use std::ops::Deref;

use arca_proto::consts::INLINE_RESULT_MAX;
use arca_proto::node as pb;
use arca_store::ObjectId;
use arrow_array::RecordBatch;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::worker::ArgData;
use crate::error::{Error, Result};
use crate::{ObjectBuffer, PutOptions, StoreClient};

thread_local! {
    /// Refs met while serializing a value (None when not collecting).
    static NESTED_OUT: RefCell<Option<Vec<ObjectId>>> = const { RefCell::new(None) };
    /// The value being deserialized on this thread (None: none).
    static READING: RefCell<Option<Reading>> = const { RefCell::new(None) };
}

/// A deserialization in progress (nested ones fold into the outermost).
struct Reading {
    depth: u32,
    /// Refs it made this process start holding that the node must hear of,
    /// in one message at the end.
    fresh: Vec<ObjectId>,
    /// The value's object, whose nested refs lean on it.
    source: Option<Nest>,
}

/// A value's object and the refs the node holds inside it.
struct Nest {
    source: super::core::Source,
    /// Refs are read in the order they were written: where to look next.
    at: usize,
    /// Once one was not where expected, all of them.
    set: Option<foldhash::HashSet<ObjectId>>,
}

impl Nest {
    fn contains(&mut self, id: &ObjectId) -> bool {
        let all = &self.source.contained;
        if self.set.is_none() {
            if let Some(p) = all[self.at..].iter().position(|c| c == id) {
                self.at += p + 1;
                return true;
            }
            self.set = Some(all.iter().copied().collect());
        }
        self.set.as_ref().is_some_and(|s| s.contains(id))
    }
}

/// How a ref that deserialization made this process start holding reaches
/// the node.
pub(crate) enum Borrowed {
    /// Announce it now: no deserialization is in progress.
    Now,
    /// At the end of the deserialization.
    Later,
    /// Never: it is nested in this object, which the node holds it by;
    /// this process's hold on it is one on the object.
    Leans(ObjectId),
}

/// What can be put, passed to a task or returned from one.
///
/// Every `serde::Serialize` type is, serialized with postcard; so are
/// [`Buffer`] and [`ArrowBatch`], stored as they are.
pub trait ToObject {
    /// Encodes the value.
    fn to_object(&self) -> Result<Encoded>;
}

/// What can be read back from an object ([`crate::get`], a task's argument).
///
/// Every `serde::de::DeserializeOwned` type is; [`Buffer`] and [`ArrowBatch`]
/// come back without a copy when their object is in the store.
pub trait FromObject: Sized {
    /// Decodes an object's content.
    fn from_object(data: &ArgData) -> Result<Self>;
}

impl<T: Serialize + ?Sized> ToObject for T {
    fn to_object(&self) -> Result<Encoded> {
        encode(self)
    }
}

impl<T: DeserializeOwned> FromObject for T {
    fn from_object(data: &ArgData) -> Result<Self> {
        decode(data.bytes())
    }
}

/// What an encoded value is made of.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Serialized or raw bytes.
    Bytes(Bytes),
    /// A record batch, written as an Arrow IPC stream only where it goes
    /// (straight into shared memory when stored).
    Arrow(RecordBatch, usize),
    /// `len` bytes made of pieces at their offsets (a Python pickle and its
    /// out-of-band buffers), copied once, straight to where they go.
    Parts {
        len: usize,
        parts: Vec<(usize, Bytes)>,
    },
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Bytes(Bytes::new())
    }
}

/// An encoded value and the references nested in it.
#[derive(Debug, Default)]
pub struct Encoded {
    pub(crate) payload: Payload,
    /// How readers are to decode it.
    pub encoding: pb::Encoding,
    /// ObjectRefs found inside the value.
    pub contained: Vec<ObjectId>,
    /// Clones of those refs: the value may be dropped right after encoding,
    /// and its refs must stay held until the message that carries them (a
    /// put, a submit, a task's results) has been sent, or the node could
    /// free them first.
    pub(crate) keep: Vec<super::ObjectRef<()>>,
}

/// Serializes `value`, collecting the ObjectRefs inside it.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded> {
    let outer = NESTED_OUT.with(|n| n.borrow_mut().replace(Vec::new()));
    let bytes = postcard::to_stdvec(value);
    let contained = NESTED_OUT
        .with(|n| std::mem::replace(&mut *n.borrow_mut(), outer))
        .unwrap_or_default();
    let bytes = bytes.map_err(|e| Error::Serialization(e.to_string()))?;
    let keep = contained
        .iter()
        .map(|id| super::ObjectRef::owned(*id))
        .collect();
    Ok(Encoded {
        payload: Payload::Bytes(bytes.into()),
        encoding: pb::Encoding::Postcard,
        contained,
        keep,
    })
}

impl Encoded {
    /// Bytes with nothing nested, read back as `encoding`.
    fn raw(payload: Payload, encoding: pb::Encoding) -> Self {
        Self {
            payload,
            encoding,
            ..Self::default()
        }
    }

    /// A value already encoded in `bytes` (by another language's runtime),
    /// holding references to `contained`. The caller keeps those alive until
    /// the message carrying it is sent.
    pub fn from_bytes(encoding: pb::Encoding, bytes: Bytes, contained: Vec<ObjectId>) -> Self {
        Self {
            payload: Payload::Bytes(bytes),
            encoding,
            contained,
            keep: Vec::new(),
        }
    }

    /// A value of `len` bytes made of `parts`, each written at its offset
    /// (gaps between them are padding): copied once, into the message if
    /// small, else straight into shared memory.
    pub fn from_parts(
        encoding: pb::Encoding,
        len: usize,
        parts: Vec<(usize, Bytes)>,
        contained: Vec<ObjectId>,
    ) -> Result<Self> {
        if let Some((off, p)) = parts.iter().find(|(off, p)| off + p.len() > len) {
            return Err(Error::Serialization(format!(
                "a part of {} bytes at offset {off} does not fit in {len} bytes",
                p.len()
            )));
        }
        Ok(Self {
            payload: Payload::Parts { len, parts },
            encoding,
            contained,
            keep: Vec::new(),
        })
    }

    /// The size of the object it makes.
    pub fn len(&self) -> usize {
        match &self.payload {
            Payload::Bytes(b) => b.len(),
            Payload::Arrow(_, n) => *n,
            Payload::Parts { len, .. } => *len,
        }
    }

    /// True for an empty object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The object's bytes, for sending inline.
    pub fn into_bytes(self) -> Result<Bytes> {
        match self.payload {
            Payload::Bytes(b) => Ok(b),
            Payload::Arrow(batch, n) => {
                let mut v = Vec::with_capacity(n);
                crate::arrow::write_batches(&mut v, &batch.schema(), &[batch])?;
                Ok(v.into())
            }
            Payload::Parts { len, parts } => {
                let mut v = vec![0u8; len];
                write_parts(&mut v, &parts);
                Ok(v.into())
            }
        }
    }

    /// The body of object `id`: inline if small, else written to the store
    /// (with `id`, primary copy pinned by `store`'s client).
    pub(crate) fn into_body(self, id: ObjectId, store: &StoreClient) -> Result<pb::object::Body> {
        let len = self.len();
        if len <= INLINE_RESULT_MAX {
            return Ok(pb::object::Body::Inline(self.into_bytes()?));
        }
        match self.payload {
            Payload::Bytes(b) => {
                let opts = PutOptions {
                    id: Some(id),
                    ..Default::default()
                };
                store.put_with(&b, &opts)?;
            }
            Payload::Arrow(batch, size) => {
                store.put_record_batches_as(id, size, &batch.schema(), &[batch], true)?;
            }
            Payload::Parts { len, parts } => {
                let mut w = store.create(id, len as u64, &[], true)?;
                write_parts(&mut w, &parts);
                w.seal()?;
            }
        }
        Ok(pb::object::Body::Stored(len as u64))
    }
}

/// Copies each part to its offset (checked to fit by `from_parts`).
fn write_parts(dst: &mut [u8], parts: &[(usize, Bytes)]) {
    for (off, p) in parts {
        dst[*off..*off + p.len()].copy_from_slice(p);
    }
}

/// Bytes stored as they are, without serialization, and read back in place:
/// `get` of a stored `Buffer` maps the store's shared memory, so it costs the
/// same for 1 KB and 1 GB. Derefs to `[u8]`; cloning is cheap.
///
/// ```no_run
/// let r = arca_client::put(&arca_client::Buffer::from(vec![7u8; 1 << 30]))?;
/// let b: arca_client::Buffer = arca_client::get(&r)?; // no copy
/// assert_eq!(b.len(), 1 << 30);
/// # Ok::<(), arca_client::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buffer(Bytes);

impl Buffer {
    /// The bytes, sharing the same memory (a stored object stays pinned
    /// while any clone lives).
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// The bytes as an Arrow buffer, without copying.
    pub fn to_arrow_buffer(&self) -> arrow_buffer::Buffer {
        arrow_buffer::Buffer::from(self.0.clone())
    }
}

impl Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Buffer {
    fn from(v: Vec<u8>) -> Self {
        Buffer(v.into())
    }
}

impl From<Bytes> for Buffer {
    fn from(b: Bytes) -> Self {
        Buffer(b)
    }
}

impl From<&[u8]> for Buffer {
    fn from(s: &[u8]) -> Self {
        Buffer(Bytes::copy_from_slice(s))
    }
}

impl From<ObjectBuffer> for Buffer {
    fn from(b: ObjectBuffer) -> Self {
        Buffer(b.to_bytes())
    }
}

impl ToObject for Buffer {
    fn to_object(&self) -> Result<Encoded> {
        Ok(Encoded::raw(
            Payload::Bytes(self.0.clone()),
            pb::Encoding::Raw,
        ))
    }
}

impl FromObject for Buffer {
    fn from_object(data: &ArgData) -> Result<Self> {
        Ok(match data {
            ArgData::Inline(b) => Buffer(b.clone()),
            ArgData::Stored(b) => Buffer(b.to_bytes()),
        })
    }
}

/// An Arrow record batch stored as an Arrow IPC stream, without serde. Read
/// back from the store, every column's buffers point into shared memory.
/// Derefs to [`RecordBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct ArrowBatch(pub RecordBatch);

impl Deref for ArrowBatch {
    type Target = RecordBatch;

    fn deref(&self) -> &RecordBatch {
        &self.0
    }
}

impl From<RecordBatch> for ArrowBatch {
    fn from(b: RecordBatch) -> Self {
        ArrowBatch(b)
    }
}

impl ToObject for ArrowBatch {
    fn to_object(&self) -> Result<Encoded> {
        let n = crate::arrow::encoded_len(&self.0.schema(), std::slice::from_ref(&self.0))?;
        Ok(Encoded::raw(
            Payload::Arrow(self.0.clone(), n),
            pb::Encoding::Arrow,
        ))
    }
}

impl FromObject for ArrowBatch {
    fn from_object(data: &ArgData) -> Result<Self> {
        let batches = match data {
            // Inline bytes arrive unaligned; small, so copying to align is fine.
            ArgData::Inline(b) => {
                crate::arrow::read_batches(arrow_buffer::Buffer::from(b.clone()), false)?
            }
            ArgData::Stored(b) => crate::arrow::batches_of(b)?,
        };
        match <[RecordBatch; 1]>::try_from(batches) {
            Ok([b]) => Ok(ArrowBatch(b)),
            Err(v) => Err(Error::Serialization(format!(
                "expected one Arrow record batch, the object holds {}",
                v.len()
            ))),
        }
    }
}

/// Deserializes a value; ObjectRefs inside it become references held by
/// this process (announced to the node before this returns, or at the end
/// of the borrow scope this runs in: see [`super::core::begin_borrow`]).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    begin_reading(None);
    let value = postcard::from_bytes(bytes);
    let fresh = end_reading();
    if !fresh.is_empty() {
        super::announce_refs(&fresh);
    }
    value.map_err(|e| {
        Error::Serialization(format!(
            "{e} (decoding {} as {}; do the caller and the function agree on the type?)",
            arca_store::ByteSize(bytes.len() as u64),
            std::any::type_name::<T>()
        ))
    })
}

/// Opens a deserialization on this thread (or nests one in the open one,
/// whose `source` stays).
pub(crate) fn begin_reading(source: Option<&super::core::Source>) {
    READING.with(|r| {
        let mut r = r.borrow_mut();
        match r.as_mut() {
            Some(open) => open.depth += 1,
            None => {
                *r = Some(Reading {
                    depth: 1,
                    fresh: Vec::new(),
                    source: source.filter(|s| !s.contained.is_empty()).map(|s| Nest {
                        source: s.clone(),
                        at: 0,
                        set: None,
                    }),
                })
            }
        }
    })
}

/// Closes what [`begin_reading`] opened; the outermost returns the refs to
/// announce.
pub(crate) fn end_reading() -> Vec<ObjectId> {
    READING.with(|r| {
        let mut r = r.borrow_mut();
        match r.as_mut() {
            Some(open) if open.depth > 1 => {
                open.depth -= 1;
                Vec::new()
            }
            _ => r.take().map(|open| open.fresh).unwrap_or_default(),
        }
    })
}

/// Called by an ObjectRef being serialized.
pub(crate) fn note_serialized(id: ObjectId) {
    NESTED_OUT.with(|n| {
        if let Some(v) = n.borrow_mut().as_mut() {
            v.push(id);
        }
    });
}

/// Called when deserializing made this process start holding `id`.
pub(crate) fn note_deserialized(id: ObjectId) -> Borrowed {
    READING.with(|r| match r.borrow_mut().as_mut() {
        None => Borrowed::Now,
        Some(open) => {
            if let Some(n) = &mut open.source
                && n.contains(&id)
            {
                return Borrowed::Leans(n.source.id);
            }
            open.fresh.push(id);
            Borrowed::Later
        }
    })
}

/// Called when a ref leaning on `id` made this process start holding it
/// (it was read while something else held it: a task's argument).
pub(crate) fn note_source_held(id: ObjectId) {
    READING.with(|r| {
        if let Some(open) = r.borrow_mut().as_mut() {
            open.fresh.push(id);
        }
    })
}
