//! The connection to a store daemon.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arca_proto::store as pb;
use arca_proto::store::reply::Kind as R;
use arca_proto::store::request::Kind as Q;
use arca_store::ObjectId;
use arca_store::segment::Mapping;
use arca_store::wire::{Conn, DEFAULT_SPIN, MAX_REPLY_FRAME, PROTOCOL_VERSION, Side};
use parking_lot::Mutex;

use crate::buffer::{ObjectBuffer, ObjectWriter};
use crate::error::{Error, Result};

/// Objects up to this size (data + metadata) travel inside the put request:
/// one round trip, and the copy through the socket is cheaper than a second
/// round trip for create + seal.
pub const INLINE_MAX: usize = 64 << 10;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// A name shown by `arca memory` next to this client's pid.
    pub name: String,
    /// How long to poll for a reply before blocking (zero never polls).
    pub spin: Duration,
    /// Fill this process's page tables for the whole store at connect
    /// (`MAP_POPULATE`) when the daemon prefaulted it, so that reads and writes
    /// never take a page fault. Costs about 0.2 s per GiB of store at connect;
    /// turn it off for short-lived tools that do not touch object data.
    pub populate: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        let name = std::env::args().next().and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        });
        Self {
            name: name.unwrap_or_else(|| "client".into()),
            spin: DEFAULT_SPIN,
            populate: true,
        }
    }
}

/// How to put an object.
#[derive(Debug, Clone)]
pub struct PutOptions<'a> {
    /// The id to use; a fresh random one if `None`.
    pub id: Option<ObjectId>,
    /// Metadata stored beside the data (a type tag, a schema...).
    pub metadata: &'a [u8],
    /// Keep a primary pin: the store never evicts the object until this client
    /// deletes it or disconnects. Without it the object is a cache entry that
    /// the store may evict once nobody reads it.
    pub primary: bool,
}

impl Default for PutOptions<'_> {
    fn default() -> Self {
        Self {
            id: None,
            metadata: &[],
            primary: true,
        }
    }
}

/// A connection to a store daemon. Cheap to clone; usable from many threads
/// (calls on one client take turns on its connection; use one client per
/// thread for parallel calls).
#[derive(Debug, Clone)]
pub struct StoreClient {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    conn: Mutex<Conn>,
    /// Releases from dropped buffers, sent with the next request (or at once
    /// if the connection is free): dropping a buffer never blocks.
    releases: Mutex<Vec<ObjectId>>,
    segments: Vec<Arc<Mapping>>,
    client_id: u64,
    capacity: u64,
}

impl StoreClient {
    /// Connects to the store daemon listening on `socket`.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(socket, ClientOptions::default())
    }

    /// Connects with options.
    pub fn connect_with(socket: impl AsRef<Path>, opts: ClientOptions) -> Result<Self> {
        let path = socket.as_ref();
        let stream = UnixStream::connect(path).map_err(|cause| Error::Connect {
            path: path.to_path_buf(),
            cause,
        })?;
        let mut conn = Conn::new(stream, Side::Client, opts.spin);
        let hello = pb::Request {
            kind: Some(Q::Hello(pb::Hello {
                version: PROTOCOL_VERSION,
                pid: std::process::id(),
                name: opts.name.clone(),
            })),
        };
        conn.send(&hello)?;
        let reply: pb::Reply = conn.recv(MAX_REPLY_FRAME)?;
        let hello = match reply.kind {
            Some(R::Hello(h)) => h,
            Some(R::Error(e)) => return Err(Error::from_reply(e)),
            other => {
                return Err(Error::Protocol(format!(
                    "expected a Hello reply, got {other:?}"
                )));
            }
        };
        let fds = conn.take_fds();
        if fds.len() != hello.segments.len() {
            return Err(Error::Protocol(format!(
                "the store announced {} segments but sent {} file descriptors",
                hello.segments.len(),
                fds.len()
            )));
        }
        let segments = hello
            .segments
            .iter()
            .zip(fds)
            .map(|(info, fd)| {
                let file = std::fs::File::from(fd);
                Mapping::map(&file, info.size as usize, info.prefaulted && opts.populate)
                    .map(Arc::new)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                releases: Mutex::new(Vec::new()),
                segments,
                client_id: hello.client_id,
                capacity: hello.capacity,
            }),
        })
    }

    /// The store's capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// This connection's client number in the daemon (shown by `arca memory`).
    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// The shared-memory mappings of this process, one per segment.
    pub fn segments(&self) -> &[Arc<Mapping>] {
        &self.inner.segments
    }

    /// Stores `data` under a fresh id, with a primary pin, and returns the id.
    pub fn put(&self, data: &[u8]) -> Result<ObjectId> {
        self.put_with(data, &PutOptions::default())
    }

    /// Stores `data` with options (id, metadata, primary pin).
    pub fn put_with(&self, data: &[u8], opts: &PutOptions<'_>) -> Result<ObjectId> {
        let id = opts.id.unwrap_or_else(ObjectId::random);
        if data.len() + opts.metadata.len() <= INLINE_MAX {
            let put = Q::Put(pb::Put {
                id: id_bytes(&id),
                data: bytes::Bytes::copy_from_slice(data),
                metadata: bytes::Bytes::copy_from_slice(opts.metadata),
                primary: opts.primary,
            });
            self.inner.call(put)?;
            return Ok(id);
        }
        let mut w = self.create(id, data.len() as u64, opts.metadata, opts.primary)?;
        w.copy_from_slice(data);
        w.seal()
    }

    /// Reserves `data_size` bytes for an object that the caller writes in
    /// place (through the returned writer) and then seals.
    pub fn create(
        &self,
        id: ObjectId,
        data_size: u64,
        metadata: &[u8],
        primary: bool,
    ) -> Result<ObjectWriter> {
        let create = Q::Create(pb::Create {
            id: id_bytes(&id),
            data_size,
            metadata: bytes::Bytes::copy_from_slice(metadata),
            primary,
        });
        let loc = match self.inner.call(create)? {
            R::Created(loc) => loc,
            other => return Err(unexpected(other)),
        };
        let region = self
            .mapping(loc.segment)?
            .writable(loc.offset, loc.data_size)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(ObjectWriter::new(self.clone(), id, region))
    }

    /// Gets objects, waiting up to `timeout` (forever if `None`) for those not
    /// yet sealed. Each returned buffer points into shared memory and pins its
    /// object until dropped; `None` marks an object that did not appear in time.
    pub fn get(
        &self,
        ids: &[ObjectId],
        timeout: Option<Duration>,
    ) -> Result<Vec<Option<ObjectBuffer>>> {
        let get = Q::Get(pb::Get {
            ids: ids.iter().map(id_bytes).collect(),
            timeout_ms: timeout.map_or(-1, |t| t.as_millis().min(i64::MAX as u128) as i64),
        });
        let results = match self.inner.call(get)? {
            R::Get(g) if g.results.len() == ids.len() => g.results,
            other => return Err(unexpected(other)),
        };
        let mut out = Vec::with_capacity(ids.len());
        let mut bad = None;
        for (id, r) in ids.iter().zip(results) {
            if !r.error.is_empty() {
                bad.get_or_insert(Error::Unreadable(r.error));
                out.push(None);
                continue;
            }
            let Some(loc) = r.location else {
                out.push(None);
                continue;
            };
            // Build the buffer first: its drop releases the pin even if the
            // location turns out to be bad.
            match self.buffer(*id, &loc) {
                Ok(b) => out.push(Some(b)),
                Err(e) => {
                    bad.get_or_insert(e);
                    out.push(None);
                }
            }
        }
        match bad {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Gets one object, failing with [`Error::GetTimeout`] if it does not
    /// appear within `timeout` (forever if `None`).
    pub fn get_one(&self, id: ObjectId, timeout: Option<Duration>) -> Result<ObjectBuffer> {
        match self.get(&[id], timeout)?.pop().flatten() {
            Some(b) => Ok(b),
            None => Err(Error::GetTimeout {
                id,
                timeout: timeout.unwrap_or(Duration::MAX),
            }),
        }
    }

    fn buffer(&self, id: ObjectId, loc: &pb::Location) -> Result<ObjectBuffer> {
        let guard = crate::buffer::Pin::new(self.clone(), id);
        let len = loc
            .data_size
            .checked_add(loc.metadata_size)
            .ok_or_else(|| Error::Protocol("object size overflows".into()))?;
        let bytes = self
            .mapping(loc.segment)?
            .readable(loc.offset, len)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(ObjectBuffer::new(guard, bytes, loc.data_size as usize))
    }

    fn mapping(&self, segment: u32) -> Result<&Arc<Mapping>> {
        self.inner.segments.get(segment as usize).ok_or_else(|| {
            Error::Protocol(format!(
                "the store named segment {segment}, which it never sent"
            ))
        })
    }

    /// Whether the object exists and is sealed.
    pub fn contains(&self, id: ObjectId) -> Result<bool> {
        match self
            .inner
            .call(Q::Contains(pb::Contains { id: id_bytes(&id) }))?
        {
            R::Contains(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes an object: its memory is freed once no reader holds it.
    /// Returns whether it existed.
    pub fn delete(&self, id: ObjectId) -> Result<bool> {
        Ok(self.delete_many(&[id])?[0])
    }

    /// Deletes several objects in one round trip.
    pub fn delete_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        match self.inner.call(Q::Delete(pb::Delete {
            ids: ids.iter().map(id_bytes).collect(),
        }))? {
            R::Delete(d) if d.deleted.len() == ids.len() => Ok(d.deleted),
            other => Err(unexpected(other)),
        }
    }

    /// Every object in the store, largest first.
    pub fn list(&self) -> Result<Vec<pb::ObjectInfo>> {
        match self.inner.call(Q::List(pb::List {}))? {
            R::List(l) => Ok(l.objects),
            other => Err(unexpected(other)),
        }
    }

    /// Objects, clients and totals (what `arca memory` prints).
    pub fn memory(&self) -> Result<pb::MemoryReport> {
        match self.inner.call(Q::Memory(pb::Memory {}))? {
            R::Memory(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn seal(&self, id: ObjectId) -> Result<()> {
        match self.inner.call(Q::Seal(pb::Seal { id: id_bytes(&id) }))? {
            R::Ok(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn abort(&self, id: ObjectId) -> Result<()> {
        match self.inner.call(Q::Abort(pb::Abort { id: id_bytes(&id) }))? {
            R::Ok(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Queues a release of one pin; sent now if the connection is free.
    pub(crate) fn release(&self, id: ObjectId) {
        self.inner.releases.lock().push(id);
        if let Some(mut conn) = self.inner.conn.try_lock() {
            // A failed send means the daemon is gone, and with it every pin.
            let _ = self
                .inner
                .queue_releases(&mut conn)
                .and_then(|()| conn.flush());
        }
    }
}

impl Inner {
    /// One request, one reply. Pending releases go out in the same write.
    fn call(&self, kind: Q) -> Result<R> {
        let mut conn = self.conn.lock();
        self.queue_releases(&mut conn)?;
        conn.send(&pb::Request { kind: Some(kind) })?;
        let reply: pb::Reply = conn.recv(MAX_REPLY_FRAME)?;
        drop(conn);
        // Buffers dropped by other threads while we held the connection: their
        // `try_lock` failed before we let go, so their releases are queued by now.
        self.flush_if_idle();
        match reply.kind {
            Some(R::Error(e)) => Err(Error::from_reply(e)),
            Some(k) => Ok(k),
            None => Err(Error::Protocol("empty reply".into())),
        }
    }

    /// Sends queued releases if any and the connection is free; a busy
    /// connection's holder flushes them when it lets go.
    fn flush_if_idle(&self) {
        if self.releases.lock().is_empty() {
            return;
        }
        if let Some(mut conn) = self.conn.try_lock() {
            // A failed send means the daemon is gone, and with it every pin.
            let _ = self.queue_releases(&mut conn).and_then(|()| conn.flush());
        }
    }

    fn queue_releases(&self, conn: &mut Conn) -> std::io::Result<()> {
        let ids = std::mem::take(&mut *self.releases.lock());
        if ids.is_empty() {
            return Ok(());
        }
        conn.queue(&pb::Request {
            kind: Some(Q::Release(pb::Release {
                ids: ids.iter().map(id_bytes).collect(),
            })),
        })
    }
}

fn id_bytes(id: &ObjectId) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(id.as_bytes())
}

fn unexpected(reply: R) -> Error {
    Error::Protocol(format!("unexpected reply {reply:?}"))
}
