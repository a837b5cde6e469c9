//! The store daemon: segments, the object table behind one mutex, and a thread
//! per client connection.
//!
//! Why threads and one lock: a request's work under the lock is a hash lookup
//! and an allocator step (well under a microsecond, never a syscall or a copy),
//! so the lock is rarely contended; a thread per connection can spin on its own
//! socket for the next request and answer it without any cross-thread handoff,
//! which on a 2-core machine costs more than the whole request. Waiting (a get
//! for an object not yet sealed, a create waiting for space) parks on one
//! condition variable with a bounded timeout.

mod conn;
mod spill;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::ObjectId;
use crate::segment::Segment;
use crate::size::ByteSize;
use crate::spill::io::RecordReader;
use crate::spill::{SpillConfig, SpillFiles};
use crate::table::{ClientId, Table};
use crate::wire::DEFAULT_SPIN;

/// Largest single segment: objects are addressed in 64-byte units by u32 in
/// places, and a few segments keep any one mapping reasonable.
pub const MAX_SEGMENT: u64 = 64 << 30;

/// How a store daemon runs.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The Unix socket clients connect to.
    pub socket: PathBuf,
    /// Capacity in bytes: the total size of the shared-memory segments.
    pub memory: u64,
    /// Touch every page at start, so puts never pay page faults.
    pub prefault: bool,
    /// How long a create waits for other clients to release memory before
    /// failing with `ObjectStoreFull`.
    pub create_timeout: Duration,
    /// How long a connection thread polls for the next request before blocking.
    pub spin: Duration,
    /// Fraction of capacity eviction frees at least, once it has to run.
    pub eviction_batch: f64,
    /// Spill primary copies to disk when memory runs short; `None` never
    /// spills (creates then fail with `ObjectStoreFull` once primary copies
    /// fill the store).
    pub spill: Option<SpillConfig>,
    /// With spilling on: a sparse file of this many bytes in the spill
    /// directory serves primary creates that memory cannot, instead of
    /// failing (`--fallback-to-disk`).
    pub fallback: Option<u64>,
}

impl StoreConfig {
    /// A config with defaults for everything but the socket and the size.
    pub fn new(socket: impl Into<PathBuf>, memory: u64) -> Self {
        Self {
            socket: socket.into(),
            memory,
            prefault: false,
            create_timeout: Duration::from_secs(1),
            spin: DEFAULT_SPIN,
            eviction_batch: 0.05,
            spill: None,
            fallback: None,
        }
    }
}

/// Why a store could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Capacity too small to hold anything.
    #[error("store memory of {0} is too small; use at least 1MiB")]
    TooSmall(ByteSize),
    /// Another daemon answers on the socket.
    #[error("another store is already listening on {0}; stop it or choose another --socket")]
    InUse(PathBuf),
    /// Creating the segments failed.
    #[error("cannot create {size} of shared memory: {cause}; lower --memory")]
    Memory {
        /// Requested size.
        size: ByteSize,
        /// The OS error (in the message, not a `source`, so it prints once).
        cause: io::Error,
    },
    /// `--fallback-to-disk` puts its file in the spill directory.
    #[error(
        "--fallback-to-disk needs spilling on (its file lives in the spill directory); drop --no-spill"
    )]
    FallbackWithoutSpill,
    /// The spill directory is unusable.
    #[error("cannot use spill directory {path}: {cause}; choose another --spill-dir", path = .path.display())]
    SpillDir {
        /// The directory.
        path: PathBuf,
        /// The OS error (in the message, not a `source`, so it prints once).
        cause: io::Error,
    },
    /// Binding the socket failed.
    #[error("cannot listen on {path}: {cause}", path = .path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The OS error (in the message, not a `source`, so it prints once).
        cause: io::Error,
    },
}

pub(crate) struct Shared {
    table: Mutex<Table>,
    cond: Condvar,
    /// Wakes the spill workers.
    spill_cond: Condvar,
    /// Threads parked on `cond`; changed only while holding `table`.
    waiters: AtomicUsize,
    segments: Vec<Segment>,
    /// What the store can hold: the segments' sizes, each rounded down to 64 bytes.
    capacity: u64,
    config: StoreConfig,
    shutdown: AtomicBool,
    conns: Mutex<HashMap<u64, Connection>>,
    spill_workers: Mutex<Vec<JoinHandle<()>>>,
    /// Where [`StoreEvent`]s go, once the embedding process asks for them.
    events: OnceLock<Box<dyn Fn(StoreEvent) + Send + Sync>>,
    /// [`Table::room`] as of the last change, for readers that must not
    /// wait for the table lock (the node's scheduler, under its own).
    room: AtomicU64,
}

/// What [`StoreHandle::take_over`] found for an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// Its primary pin moved to the caller.
    Taken,
    /// The caller held it already.
    Held,
    /// It is not here (unknown, unsealed or deleted).
    Missing,
}

/// What the store tells the process that embeds it (the node daemon) about
/// its cache copies: objects created without a primary pin, which the store
/// may evict while nobody reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// These cache copies were evicted.
    Evicted(Vec<ObjectId>),
    /// A client waits for objects the store has no entry for: perhaps
    /// evicted cache copies, to be fetched again.
    Missing(Vec<ObjectId>),
}

/// A live connection: a clone of its stream (to shut it down on stop) and its
/// thread, once started.
type Connection = (UnixStream, Option<JoinHandle<()>>);

impl Shared {
    /// Wakes waiting gets and creates if any: called after anything that can
    /// make an object readable or memory free, with the table lock held.
    fn notify(&self, _held: &MutexGuard<'_, Table>) {
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.cond.notify_all();
        }
    }

    /// Ends a change to the table: wakes waiters and, if spilling is wanted,
    /// a spill worker; then drops the lock and unlinks spill files that lost
    /// their last record (a syscall that may wait on the disk, so never under
    /// the lock).
    fn done(&self, mut t: MutexGuard<'_, Table>) {
        self.notify(&t);
        if t.spill_wanted() > 0 {
            self.spill_cond.notify_one();
        }
        let evicted = t.take_evicted();
        if !evicted.is_empty() {
            self.tell(StoreEvent::Evicted(evicted));
        }
        self.room.store(t.room(), Ordering::Relaxed);
        let dead = t.take_dead_files();
        drop(t);
        for f in dead {
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!("cannot remove spill file {}: {e}", f.display());
            }
        }
    }

    /// Hands `event` to the embedding process, if it asked for events. The
    /// table lock may be held: the receiver only queues it.
    fn tell(&self, event: StoreEvent) {
        if let Some(f) = self.events.get() {
            f(event);
        }
    }

    /// Parks on the condition until notified, `deadline`, or a 100 ms tick
    /// (so waiters notice shutdown and dead peers). Returns false once the
    /// deadline has passed.
    fn wait(&self, guard: &mut MutexGuard<'_, Table>, deadline: Option<Instant>) -> bool {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) || self.shutdown.load(Ordering::Relaxed) {
            return false;
        }
        let tick = now + Duration::from_millis(100);
        let until = deadline.map_or(tick, |d| d.min(tick));
        self.waiters.fetch_add(1, Ordering::Relaxed);
        self.cond.wait_until(guard, until);
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        true
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A running store daemon. Dropping it (or [`StoreHandle::shutdown`]) stops
/// it: clients are disconnected and the socket is removed.
#[derive(Debug)]
pub struct StoreHandle {
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
    /// The accept thread's listener, to wake it at stop.
    listener: UnixListener,
}

/// Starts a store daemon serving `config.socket` on background threads.
pub fn start(config: StoreConfig) -> Result<StoreHandle, StartError> {
    if config.memory < (1 << 20) {
        return Err(StartError::TooSmall(ByteSize(config.memory)));
    }
    if config.fallback.is_some() && config.spill.is_none() {
        return Err(StartError::FallbackWithoutSpill);
    }
    let began = Instant::now();
    let mut segments = Vec::new();
    let mut left = config.memory;
    while left > 0 {
        let size = left.min(MAX_SEGMENT);
        let seg = Segment::create(segments.len() as u32, size as usize, config.prefault).map_err(
            |cause| StartError::Memory {
                size: ByteSize(config.memory),
                cause,
            },
        )?;
        segments.push(seg);
        left -= size;
    }
    let sizes: Vec<u64> = segments.iter().map(|s| s.size() as u64).collect();
    let batch = (config.memory as f64 * config.eviction_batch.clamp(0.0, 1.0)) as u64;
    let listener = bind(&config.socket)?;
    let opened = match &config.spill {
        None => Ok(Table::new(&sizes, batch)),
        Some(sc) => SpillFiles::open(sc.clone()).and_then(|files| {
            let fallback = files.fallback_path();
            let table = Table::with_spill(&sizes, batch, files);
            match config.fallback {
                None => Ok(table),
                Some(size) => {
                    segments.push(Segment::create_file(&fallback, size as usize)?);
                    Ok(table.with_fallback(size))
                }
            }
        }),
    };
    let table = match opened {
        Ok(t) => t,
        Err(cause) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(StartError::SpillDir {
                path: config
                    .spill
                    .as_ref()
                    .map(|s| s.dir.clone())
                    .unwrap_or_default(),
                cause,
            });
        }
    };
    tracing::info!(
        socket = %config.socket.display(),
        capacity = %ByteSize(config.memory),
        segments = segments.len(),
        prefault = config.prefault,
        spill_dir = %config.spill.as_ref().map_or("off".into(), |s| s.dir.display().to_string()),
        setup_ms = began.elapsed().as_millis() as u64,
        "store listening"
    );
    let shared = Arc::new(Shared {
        capacity: table.capacity(),
        table: Mutex::new(table),
        cond: Condvar::new(),
        spill_cond: Condvar::new(),
        waiters: AtomicUsize::new(0),
        segments,
        config,
        shutdown: AtomicBool::new(false),
        conns: Mutex::new(HashMap::new()),
        spill_workers: Mutex::new(Vec::new()),
        events: OnceLock::new(),
        room: AtomicU64::new(0),
    });
    shared.done(shared.table.lock());
    if shared.config.spill.is_some() {
        for i in 0..spill::WORKERS {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("arca-spill-{i}"))
                .spawn(move || spill::worker(s))
                .map_err(|cause| StartError::Socket {
                    path: shared.config.socket.clone(),
                    cause,
                })?;
            shared.spill_workers.lock().push(h);
        }
    }
    let own = listener.try_clone().map_err(|cause| StartError::Socket {
        path: shared.config.socket.clone(),
        cause,
    })?;
    let s = Arc::clone(&shared);
    let accept = std::thread::Builder::new()
        .name("arca-accept".into())
        .spawn(move || accept_loop(s, listener))
        .map_err(|cause| StartError::Socket {
            path: shared.config.socket.clone(),
            cause,
        })?;
    Ok(StoreHandle {
        shared,
        accept: Mutex::new(Some(accept)),
        listener: own,
    })
}

fn bind(path: &Path) -> Result<UnixListener, StartError> {
    let err = |cause| StartError::Socket {
        path: path.to_path_buf(),
        cause,
    };
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        // A directory we create is private: only this user can reach the store.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && UnixStream::connect(path).is_ok() {
            return Err(StartError::InUse(path.to_path_buf()));
        }
        if meta.file_type().is_socket() {
            tracing::info!(socket = %path.display(), "removing stale socket of a store that is gone");
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Wakes a thread blocked accepting on `listener` (or a clone of it): its
/// accept fails from now on. Unlike connecting to the socket's path, this
/// works when the path is gone or the backlog is full.
pub fn stop_accepting(listener: &UnixListener) {
    use std::os::fd::AsRawFd;
    let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Read);
}

fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let mut next = 0u64;
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::Acquire) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                // EMFILE and friends: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        next += 1;
        let key = next;
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        // Registered before the thread starts, so its own removal always finds it.
        shared.conns.lock().insert(key, (clone, None));
        let s = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("arca-conn-{key}"))
            .stack_size(256 << 10)
            .spawn(move || {
                conn::serve(&s, stream);
                s.conns.lock().remove(&key);
            });
        match spawned {
            Ok(h) => {
                // If the thread already finished, its entry is gone and it is
                // simply detached.
                if let Some(entry) = shared.conns.lock().get_mut(&key) {
                    entry.1 = Some(h);
                }
            }
            Err(e) => {
                tracing::warn!("cannot start a connection thread: {e}");
                shared.conns.lock().remove(&key);
            }
        }
    }
}

impl StoreHandle {
    /// The socket clients connect to.
    pub fn socket(&self) -> &Path {
        &self.shared.config.socket
    }

    /// What the store can hold, in bytes.
    pub fn capacity(&self) -> u64 {
        self.shared.capacity
    }

    /// Registers an in-process client (the node daemon that embeds this
    /// store) for [`StoreHandle::take_over`].
    pub fn local_client(&self, name: &str) -> ClientId {
        self.shared
            .table
            .lock()
            .connect(std::process::id(), name.to_string())
    }

    /// Sends the store's [`StoreEvent`]s to `f` from now on (once per store;
    /// a second call is ignored). `f` runs on the store's threads, some
    /// with the table lock held: it must only queue the event, never call
    /// the store or wait.
    pub fn on_event(&self, f: impl Fn(StoreEvent) + Send + Sync + 'static) {
        let _ = self.shared.events.set(Box::new(f));
    }

    /// Moves the primary pins of sealed objects to `client`, saying for each
    /// whether it was taken, held already, or is not here.
    pub fn take_over(&self, client: ClientId, ids: &[ObjectId]) -> Vec<TakeOver> {
        let mut t = self.shared.table.lock();
        let out = ids
            .iter()
            .map(|id| match t.primary_of(id) {
                Some(c) if c == client => TakeOver::Held,
                _ if t.adopt(client, id) => TakeOver::Taken,
                _ => TakeOver::Missing,
            })
            .collect();
        self.shared.done(t);
        out
    }

    /// Turns primary copies `client` holds into cache copies, evictable
    /// while nobody reads them ([`Table::demote`]); false for those that
    /// stay primary.
    pub fn demote(&self, client: ClientId, ids: &[ObjectId]) -> Vec<bool> {
        let mut t = self.shared.table.lock();
        let demoted = ids.iter().map(|id| t.demote(client, id)).collect();
        self.shared.done(t);
        demoted
    }

    /// Deletes objects: memory and spilled copies are freed once no reader
    /// pins them.
    pub fn delete(&self, ids: &[ObjectId]) {
        let mut t = self.shared.table.lock();
        for id in ids {
            t.delete(id);
        }
        self.shared.done(t);
    }

    /// Whether `id` is sealed here and not deleted (in memory or spilled).
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.shared.table.lock().contains(id)
    }

    /// Bytes a create could have without spilling, as of the store's last
    /// change: read without taking the table lock.
    pub fn room(&self) -> u64 {
        self.shared.room.load(Ordering::Relaxed)
    }

    /// The store's totals, as `arca memory` shows them.
    pub fn totals(&self) -> arca_proto::store::StoreTotals {
        self.shared.table.lock().totals()
    }

    /// Stops accepting, disconnects every client, joins their threads and
    /// removes the socket.
    pub fn shutdown(self) {
        self.stop();
    }

    /// [`StoreHandle::shutdown`] for a handle that is shared; later calls do nothing.
    pub fn stop(&self) {
        let Some(accept) = self.accept.lock().take() else {
            return;
        };
        self.shared.shutdown.store(true, Ordering::Release);
        stop_accepting(&self.listener);
        let _ = accept.join();
        let conns: Vec<_> = self.shared.conns.lock().drain().collect();
        for (_, (stream, handle)) in conns {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        self.shared.spill_cond.notify_all();
        for h in self.shared.spill_workers.lock().drain(..) {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.shared.config.socket);
        tracing::info!(socket = %self.shared.config.socket.display(), "store stopped");
    }
}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An object the embedding process writes into its own store (an object
/// pulled from another node): create, write the bytes, [`LocalWrite::seal`].
/// Dropped unsealed, the create is aborted.
#[derive(Debug)]
pub struct LocalWrite {
    shared: Arc<Shared>,
    client: ClientId,
    id: ObjectId,
    region: Option<crate::view::WriteRegion>,
}

impl LocalWrite {
    /// The object's bytes, to be filled in.
    pub fn bytes(&mut self) -> &mut [u8] {
        self.region.as_deref_mut().unwrap_or(&mut [])
    }

    /// Seals the object: readers may get it, and `client` holds it as a
    /// primary copy (see [`StoreHandle::create_local`]).
    pub fn seal(mut self) -> Result<(), crate::StateError> {
        // The write view must be gone before readers can map the range.
        self.region = None;
        let mut t = self.shared.table.lock();
        let r = t.seal(self.client, &self.id);
        self.shared.done(t);
        self.client = ClientId::MAX;
        r
    }
}

impl Drop for LocalWrite {
    fn drop(&mut self) {
        if self.client == ClientId::MAX {
            return;
        }
        self.region = None;
        let mut t = self.shared.table.lock();
        let _ = t.abort(self.client, &self.id);
        self.shared.done(t);
    }
}

/// A sealed object pinned for the embedding process (an object served to
/// another node); the pin goes when this is dropped.
#[derive(Debug)]
pub struct LocalRead {
    shared: Arc<Shared>,
    client: ClientId,
    id: ObjectId,
    bytes: crate::view::SharedBytes,
}

impl LocalRead {
    /// The object's data.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for LocalRead {
    fn drop(&mut self) {
        let mut t = self.shared.table.lock();
        t.release(self.client, &self.id);
        self.shared.done(t);
    }
}

impl StoreHandle {
    /// Creates an object of `size` bytes for `client` (one made with
    /// [`StoreHandle::local_client`]), waiting for room as a client's create
    /// does; `primary` copies are spilled, never evicted.
    pub fn create_local(
        &self,
        client: ClientId,
        id: ObjectId,
        size: u64,
        primary: bool,
    ) -> Result<LocalWrite, crate::CreateError> {
        let loc = conn::create(&self.shared, &|| false, client, id, size, &[], primary)?;
        let seg = &self.shared.segments[loc.segment as usize];
        match seg.mapping().writable(loc.offset, size) {
            Ok(region) => Ok(LocalWrite {
                shared: Arc::clone(&self.shared),
                client,
                id,
                region: Some(region),
            }),
            Err(e) => {
                let mut t = self.shared.table.lock();
                let _ = t.abort(client, &id);
                self.shared.done(t);
                Err(crate::CreateError::Full(format!(
                    "the store handed out a block it cannot map: {e}"
                )))
            }
        }
    }

    /// Opens an object that is only on disk (spilled, not in memory) to be
    /// read in pieces without restoring it; `None` if it is in memory, being
    /// restored, or not here ([`StoreHandle::read_local`] serves those).
    pub fn open_spilled(&self, id: ObjectId) -> Option<Result<RecordReader, String>> {
        let (path, disk) = self.shared.table.lock().on_disk_only(&id)?;
        Some(
            RecordReader::open(&path, disk.offset, &disk.header).map_err(|e| {
                format!(
                    "object {id} cannot be read from spill file {} (record at byte {}): {e}",
                    path.display(),
                    disk.offset
                )
            }),
        )
    }

    /// Pins a sealed object for `client` and maps its data, restoring it
    /// from disk if it was spilled; waits up to `timeout` for one being
    /// created to be sealed. An unknown id fails at once.
    pub fn read_local(
        &self,
        client: ClientId,
        id: ObjectId,
        timeout: Duration,
    ) -> Result<LocalRead, String> {
        if !self.shared.table.lock().contains(&id) {
            // Not being made here either: nothing to wait for.
            return Err(format!("object {id} is not in this node's store"));
        }
        let results =
            conn::get(&self.shared, &|| false, client, &[id], Some(timeout)).unwrap_or_default();
        let r = results.into_iter().next().unwrap_or_default();
        let Some(loc) = r.location else {
            return Err(if r.error.is_empty() {
                format!("object {id} is not in this node's store")
            } else {
                r.error
            });
        };
        let seg = &self.shared.segments[loc.segment as usize];
        match seg.mapping().readable(loc.offset, loc.data_size) {
            Ok(bytes) => Ok(LocalRead {
                shared: Arc::clone(&self.shared),
                client,
                id,
                bytes,
            }),
            Err(e) => {
                let mut t = self.shared.table.lock();
                t.release(client, &id);
                self.shared.done(t);
                Err(format!("cannot map object {id}: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes([n; 20])
    }

    /// A 4 MiB store whose events go to its channel; its directory goes
    /// when it is dropped.
    struct Events {
        store: StoreHandle,
        rx: mpsc::Receiver<StoreEvent>,
        dir: PathBuf,
    }

    impl Drop for Events {
        fn drop(&mut self) {
            self.store.stop();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn store(name: &str) -> Events {
        let dir = std::env::temp_dir().join(format!("arca-ev-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = StoreConfig::new(dir.join("s.sock"), 4 << 20);
        config.eviction_batch = 0.0;
        let store = start(config).unwrap();
        let (tx, rx) = mpsc::channel();
        store.on_event(move |e| {
            let _ = tx.send(e);
        });
        Events { store, rx, dir }
    }

    fn write(s: &StoreHandle, client: ClientId, id: ObjectId, size: u64, primary: bool) {
        let mut w = s.create_local(client, id, size, primary).unwrap();
        w.bytes().fill(id.as_bytes()[0]);
        w.seal().unwrap();
    }

    #[test]
    fn evicted_cache_copies_are_reported_and_primaries_are_not() {
        let ev = store("evicted");
        let (s, rx) = (&ev.store, &ev.rx);
        let c = s.local_client("node");
        write(s, c, id(1), 1 << 20, false);
        write(s, c, id(2), 1 << 20, true);
        write(s, c, id(3), 1 << 20, false);
        assert!(rx.try_recv().is_err(), "nothing evicted yet");
        // Three more MiB: one fits, then only the cache copies can make
        // room, oldest first.
        for n in 4..=6 {
            write(s, c, id(n), 1 << 20, true);
        }
        let mut evicted = Vec::new();
        while let Ok(e) = rx.try_recv() {
            match e {
                StoreEvent::Evicted(ids) => evicted.extend(ids),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(evicted, vec![id(1), id(3)]);
    }

    #[test]
    fn a_get_waiting_for_an_unknown_id_is_reported_once() {
        let ev = store("missing");
        let (s, rx) = (&ev.store, &ev.rx);
        let c = s.local_client("reader");
        write(s, c, id(7), 4096, true);
        let shared = Arc::clone(&s.shared);
        let got = conn::get(
            &shared,
            &|| false,
            c,
            &[id(7), id(8)],
            Some(Duration::from_millis(300)),
        )
        .unwrap();
        assert!(got[0].location.is_some());
        assert!(got[1].location.is_none(), "8 was never made");
        assert_eq!(rx.try_recv(), Ok(StoreEvent::Missing(vec![id(8)])));
        assert!(rx.try_recv().is_err(), "one report per get");
        // A get that does not wait reports nothing.
        conn::get(&shared, &|| false, c, &[id(9)], Some(Duration::ZERO)).unwrap();
        assert!(rx.try_recv().is_err());
    }
}
