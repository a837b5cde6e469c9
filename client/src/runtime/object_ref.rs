//! ObjectRef: a typed, reference-counted future for an immutable object.

use std::fmt;
use std::marker::PhantomData;

use arca_store::ObjectId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A reference to an object that a `put`, a task or an actor call makes.
/// `arca::get` waits for it and returns the value.
///
/// References are counted across processes: cloning, passing to a task,
/// nesting in another value or returning it all keep the object alive; when
/// the last reference anywhere is dropped, the node frees the object (from
/// memory and spill files).
pub struct ObjectRef<T> {
    id: ObjectId,
    _value: PhantomData<fn() -> T>,
}

impl<T> ObjectRef<T> {
    /// A reference the node already counts for this process (a put or a
    /// submit's return): only the local count changes.
    pub(crate) fn owned(id: ObjectId) -> Self {
        super::local_hold(id, false);
        ObjectRef {
            id,
            _value: PhantomData,
        }
    }

    /// A reference that arrived inside a value: counted, and announced to
    /// the node if this process did not hold it yet.
    pub(crate) fn borrowed(id: ObjectId) -> Self {
        super::local_hold(id, true);
        ObjectRef {
            id,
            _value: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The same reference, read as another type (for values that
    /// deserialize from the same bytes).
    pub fn cast<U>(self) -> ObjectRef<U> {
        let id = self.id;
        std::mem::forget(self);
        ObjectRef {
            id,
            _value: PhantomData,
        }
    }
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        super::local_hold(self.id, false);
        ObjectRef {
            id: self.id,
            _value: PhantomData,
        }
    }
}

impl<T> Drop for ObjectRef<T> {
    fn drop(&mut self) {
        super::local_release(self.id);
    }
}

impl<T> fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectRef({})", self.id)
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<T> Eq for ObjectRef<T> {}

impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::codec::note_serialized(self.id);
        s.serialize_bytes(self.id.as_bytes())
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ObjectId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object id")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ObjectId, E> {
                ObjectId::from_slice(v).map_err(E::custom)
            }
        }
        Ok(ObjectRef::borrowed(d.deserialize_bytes(V)?))
    }
}
