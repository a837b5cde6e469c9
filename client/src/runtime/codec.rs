//! How values become bytes: serde with postcard (compact, varint), with the
//! ObjectRefs nested in a value collected on the way out and registered as
//! this process's references on the way in.

use std::cell::RefCell;

use arca_store::ObjectId;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

thread_local! {
    /// Refs met while serializing a value (None when not collecting).
    static NESTED_OUT: RefCell<Option<Vec<ObjectId>>> = const { RefCell::new(None) };
    /// Refs this process started holding while deserializing a value, to be
    /// announced to the node in one message.
    static NESTED_IN: RefCell<Option<Vec<ObjectId>>> = const { RefCell::new(None) };
}

/// An encoded value and the references nested in it.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The bytes.
    pub bytes: Vec<u8>,
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
        bytes,
        contained,
        keep,
    })
}

/// Deserializes a value; ObjectRefs inside it become references held by
/// this process (announced to the node before this returns).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let outer = NESTED_IN.with(|n| n.borrow_mut().replace(Vec::new()));
    let value = postcard::from_bytes(bytes);
    let fresh = NESTED_IN
        .with(|n| std::mem::replace(&mut *n.borrow_mut(), outer))
        .unwrap_or_default();
    if !fresh.is_empty() {
        super::announce_refs(fresh);
    }
    value.map_err(|e| {
        Error::Serialization(format!(
            "{e} (decoding {} as {}; do the caller and the function agree on the type?)",
            arca_store::ByteSize(bytes.len() as u64),
            std::any::type_name::<T>()
        ))
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

/// Called when deserializing made this process start holding `id`; false if
/// no decode is collecting (announce it directly).
pub(crate) fn note_deserialized(id: ObjectId) -> bool {
    NESTED_IN.with(|n| match n.borrow_mut().as_mut() {
        Some(v) => {
            v.push(id);
            true
        }
        None => false,
    })
}
