//! What `get` and `create` hand out: views into shared memory that give the
//! pin (or the unsealed object) back when dropped.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use arca_store::ObjectId;
use arca_store::view::{SharedBytes, WriteRegion};

use crate::client::StoreClient;
use crate::error::Result;

/// One pin on one object, released when dropped.
#[derive(Debug)]
pub(crate) struct Pin {
    client: StoreClient,
    id: ObjectId,
}

impl Pin {
    pub(crate) fn new(client: StoreClient, id: ObjectId) -> Self {
        Self { client, id }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.client.release(self.id);
    }
}

/// A sealed object's bytes, read in place from shared memory.
///
/// Derefs to the data; [`ObjectBuffer::metadata`] gives the metadata. The
/// object stays pinned (never evicted or freed) until this buffer and every
/// `Bytes` or Arrow buffer made from it are dropped. Cloning is cheap and
/// shares the pin.
#[derive(Debug, Clone)]
pub struct ObjectBuffer {
    inner: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    // Field order matters: the bytes view goes before the pin is released.
    bytes: SharedBytes,
    data_len: usize,
    pin: Pin,
}

impl Held {
    fn data(&self) -> &[u8] {
        &self.bytes[..self.data_len]
    }
}

impl ObjectBuffer {
    pub(crate) fn new(pin: Pin, bytes: SharedBytes, data_len: usize) -> Self {
        Self {
            inner: Arc::new(Held {
                bytes,
                data_len,
                pin,
            }),
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.inner.pin.id
    }

    /// The data.
    pub fn data(&self) -> &[u8] {
        self.inner.data()
    }

    /// The metadata stored with the object.
    pub fn metadata(&self) -> &[u8] {
        &self.inner.bytes[self.inner.data_len..]
    }

    /// The data as `bytes::Bytes`, without copying; the pin lives as long as
    /// any clone of it.
    pub fn to_bytes(&self) -> bytes::Bytes {
        bytes::Bytes::from_owner(Owner(Arc::clone(&self.inner)))
    }

    /// The data as an Arrow buffer, without copying.
    pub fn to_arrow_buffer(&self) -> arrow_buffer::Buffer {
        arrow_buffer::Buffer::from(self.to_bytes())
    }
}

/// `Bytes::from_owner` needs an owned `AsRef<[u8]>`; an `Arc` of the held
/// view is one.
#[derive(Debug)]
struct Owner(Arc<Held>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        self.0.data()
    }
}

impl Deref for ObjectBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.data()
    }
}

impl AsRef<[u8]> for ObjectBuffer {
    fn as_ref(&self) -> &[u8] {
        self.data()
    }
}

/// An object being created: write its data in place, then [`seal`](Self::seal).
/// Dropping it unsealed aborts the create and frees the space.
#[derive(Debug)]
pub struct ObjectWriter {
    client: StoreClient,
    id: ObjectId,
    region: WriteRegion,
    done: bool,
}

impl ObjectWriter {
    pub(crate) fn new(client: StoreClient, id: ObjectId, region: WriteRegion) -> Self {
        Self {
            client,
            id,
            region,
            done: false,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Makes the object immutable and readable by everyone; returns its id.
    pub fn seal(mut self) -> Result<ObjectId> {
        self.done = true;
        self.client.seal(self.id)?;
        Ok(self.id)
    }

    /// Gives the object up and frees its space.
    pub fn abort(mut self) -> Result<()> {
        self.done = true;
        self.client.abort(self.id)
    }
}

impl Deref for ObjectWriter {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.region
    }
}

impl DerefMut for ObjectWriter {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.region
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if !self.done {
            // If this fails the connection is gone, and the daemon aborts the
            // create when it sees the disconnect.
            let _ = self.client.abort(self.id);
        }
    }
}
