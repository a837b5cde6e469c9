//! The node daemon: an embedded object store, the local scheduler and the
//! worker pool, serving drivers and workers on `<session>/node.sock`.
//!
//! One mutex guards the scheduler's [`State`]; every connection has a thread
//! that reads its requests. Replies are queued per connection while the
//! mutex is held and written by the same thread right after it lets go
//! (`state::StateLock`), so a result that completes a `get` is written to
//! the waiting driver by the thread that received it, with no hand-off, and
//! a client that stops reading holds up that thread only, never the lock.
//! Replies to one connection are written in the order the state changed.

mod actors;
mod conn;
mod copies;
mod direct;
#[cfg(test)]
mod memory;
mod objects;
mod pulls;
mod remote;
mod state;
mod tasks;
mod workers;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca_store::server::{StartError, StoreHandle};
use arca_store::table::ClientId;
use parking_lot::{Condvar, Mutex};

use crate::config::NodeConfig;
use crate::resources::InvalidResource;
pub(crate) use state::State;

/// Version of the node protocol; the handshake rejects any other. 2: replies
/// echo their request's `seq` and may come out of order. 3: objects carry
/// their encoding, tasks their language, and actors may run calls at once.
pub use arca_proto::consts::NODE_PROTOCOL_VERSION;

/// Values up to this size travel inline through the node instead of the store.
pub use arca_proto::consts::INLINE_RESULT_MAX;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeStartError {
    /// The session directory could not be made.
    #[error("cannot create session directory {path}: {cause}")]
    SessionDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        cause: std::io::Error,
    },
    /// A node already serves this session directory.
    #[error(
        "a node is already running in {0} (connect to it, or stop it with `arca stop`, or pick another --temp-dir)"
    )]
    InUse(PathBuf),
    /// The node socket could not be bound.
    #[error("cannot listen on {path}: {cause}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        cause: std::io::Error,
    },
    /// The embedded store did not start.
    #[error("object store: {0}")]
    Store(#[from] StartError),
    /// A resource amount is invalid.
    #[error(transparent)]
    Resources(#[from] InvalidResource),
    /// The node could not serve peers or join the head.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    /// Reached through [`Shared::store`].
    store_handle: StoreHandle,
    pub(crate) store_client: ClientId,
    pub(crate) state: state::StateLock,
    /// Wakes the timer thread when an earlier deadline is registered.
    pub(crate) timer: Condvar,
    pub(crate) shutdown: AtomicBool,
    stop_requested: Mutex<bool>,
    stop_cond: Condvar,
    pub(crate) started: Instant,
    next_conn: AtomicU64,
    /// Itself, for the threads that wait for worker processes.
    pub(crate) me: std::sync::Weak<Shared>,
    /// The cluster side, once joined (never, for a standalone node).
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Pulls landed so far: tells a store event checked before a landing
    /// from one checked after it (`copies`).
    pub(crate) landings: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The embedded store, never called under the node's lock (checked in
    /// debug builds).
    pub(crate) fn store(&self) -> &StoreHandle {
        state::assert_unlocked();
        &self.store_handle
    }

    /// The store's room as of its last change: an atomic read, not a call
    /// into the store, so the scheduler may read it under its lock.
    pub(crate) fn store_room(&self) -> u64 {
        self.store_handle.room()
    }

    /// Asks whoever owns the [`Node`] to stop it (`arca stop`).
    pub(crate) fn request_stop(&self) {
        *self.stop_requested.lock() = true;
        self.stop_cond.notify_all();
    }
}

/// A running node. Dropping it (or [`Node::shutdown`]) stops it: workers are
/// killed, clients disconnected, sockets removed.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The accept thread's listener, to wake it at stop.
    listener: UnixListener,
}

impl Node {
    /// Starts a node serving `config.session_dir`.
    pub fn start(config: NodeConfig) -> Result<Node, NodeStartError> {
        let total = config.total_resources()?;
        let dir = &config.session_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|cause| NodeStartError::SessionDir {
                path: dir.clone(),
                cause,
            })?;
        let node_socket = config.node_socket();
        if UnixStream::connect(&node_socket).is_ok() {
            return Err(NodeStartError::InUse(dir.clone()));
        }
        let _ = std::fs::remove_file(&node_socket);
        let store = arca_store::server::start(config.store_config())?;
        let listener = bind(&node_socket)?;
        let store_client = store.local_client("node");
        tracing::info!(
            session = %dir.display(),
            resources = %total,
            store = %arca_store::ByteSize(store.capacity()),
            "node started"
        );
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            state: state::StateLock::new(State::new(total)),
            config,
            store_handle: store,
            store_client,
            timer: Condvar::new(),
            shutdown: AtomicBool::new(false),
            stop_requested: Mutex::new(false),
            stop_cond: Condvar::new(),
            started: Instant::now(),
            next_conn: AtomicU64::new(1),
            cluster: std::sync::OnceLock::new(),
            landings: AtomicU64::new(0),
        });
        if let Some(cc) = shared.config.cluster.clone() {
            let c = crate::cluster::Cluster::start(&shared, cc)?;
            let _ = shared.cluster.set(c);
        }
        let own = listener
            .try_clone()
            .map_err(|cause| NodeStartError::Socket {
                path: node_socket.clone(),
                cause,
            })?;
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("arca-node-accept".into())
            .spawn(move || accept_loop(&s, &listener))
            .map_err(|cause| NodeStartError::Socket {
                path: node_socket.clone(),
                cause,
            })?;
        let s = Arc::clone(&shared);
        let timer = std::thread::Builder::new()
            .name("arca-node-timer".into())
            .spawn(move || s.timer_loop())
            .map_err(|cause| NodeStartError::Socket {
                path: node_socket,
                cause,
            })?;
        let mut threads = vec![accept, timer];
        if shared.cluster.get().is_some() {
            threads.push(
                copies_thread(&shared).map_err(|cause| NodeStartError::Socket {
                    path: shared.config.node_socket(),
                    cause,
                })?,
            );
        }
        Ok(Node {
            shared,
            threads,
            listener: own,
        })
    }

    /// The session directory (`node.sock`, `store.sock`, `spill/`).
    pub fn session_dir(&self) -> &Path {
        &self.shared.config.session_dir
    }

    /// The cluster's head (`HOST:PORT`, the port chosen if 0 was asked
    /// for), if this node is in a cluster.
    pub fn cluster_address(&self) -> Option<String> {
        self.shared.cluster.get().map(|c| c.head_address.clone())
    }

    /// The node's socket.
    pub fn node_socket(&self) -> PathBuf {
        self.shared.config.node_socket()
    }

    /// Blocks until a client sends `Shutdown` (`arca stop`) or `stop` is set.
    pub fn wait_for_stop_request(&self, stop: &AtomicBool) {
        let mut requested = self.shared.stop_requested.lock();
        while !*requested && !stop.load(Ordering::Relaxed) {
            self.shared
                .stop_cond
                .wait_for(&mut requested, Duration::from_millis(100));
        }
    }

    /// Stops the node: kills its workers, disconnects clients, stops the
    /// store and removes the sockets.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        let shared = &self.shared;
        if let Some(c) = shared.cluster.get() {
            c.leave();
        }
        shared.shutdown.store(true, Ordering::Release);
        arca_store::server::stop_accepting(&self.listener);
        shared.timer.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        shared.stop_all(Duration::from_secs(5));
        let _ = std::fs::remove_file(shared.config.node_socket());
        if shared.config.remove_session_dir {
            // The store removes its socket and spill session on its own drop;
            // what remains is ours.
            let _ = std::fs::remove_dir_all(&shared.config.session_dir);
        }
        tracing::info!(session = %shared.config.session_dir.display(), "node stopped");
    }
}

/// Starts the thread that hands the store's events about pulled copies to
/// the scheduler (only nodes in a cluster pull).
fn copies_thread(shared: &Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    shared.store().on_event(move |e| {
        let _ = tx.send(e);
    });
    let s = Arc::clone(shared);
    std::thread::Builder::new()
        .name("arca-node-copies".into())
        .spawn(move || {
            while !s.shutdown.load(Ordering::Acquire) {
                let first = match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(e) => e,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let mut events = vec![first];
                events.extend(rx.try_iter());
                s.store_events(events);
            }
        })
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind(path: &Path) -> Result<UnixListener, NodeStartError> {
    let err = |cause| NodeStartError::Socket {
        path: path.to_path_buf(),
        cause,
    };
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::Acquire) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("arca-node-conn-{id}"))
            .stack_size(512 << 10)
            .spawn(move || conn::serve(&s, id, stream));
        if let Err(e) = spawned {
            tracing::warn!("cannot start a connection thread: {e}");
        }
    }
}
