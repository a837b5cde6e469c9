//! Errors from the store client.

use std::path::PathBuf;
use std::time::Duration;

use arca_proto::store as pb;
use arca_store::ObjectId;

/// Anything a store call can fail with. The text says what happened and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No store answers at the socket.
    #[error("cannot connect to the store at {path}: {cause}; is `arca store --socket {path}` running?", path = .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error (in the message, not a `source`, so it prints once).
        cause: std::io::Error,
    },
    /// No room, even after evicting everything evictable and waiting.
    #[error("{0}")]
    ObjectStoreFull(String),
    /// The id is taken.
    #[error("{0}")]
    ObjectExists(String),
    /// Larger than the whole store.
    #[error("{0}")]
    ObjectTooLarge(String),
    /// No such object (or not in the state the call needs).
    #[error("{0}")]
    NotFound(String),
    /// Seal or abort of an object this client is not creating.
    #[error("{0}")]
    InvalidState(String),
    /// `get` gave up waiting.
    #[error(
        "timed out after {timeout:?} waiting for object {id}: it is not ready (not put or sealed yet, or the task that makes it is still queued or running)"
    )]
    GetTimeout {
        /// The first object that did not appear.
        id: ObjectId,
        /// How long the call waited.
        timeout: Duration,
    },
    /// The object exists but cannot be read: its spilled copy failed its
    /// checksum or could not be read back, or there is no room to restore it.
    /// The message names the object and the spill file.
    #[error("{0}")]
    Unreadable(String),
    /// The object holds something other than what was asked for.
    #[error("object {id} is not {expected}: {detail}")]
    WrongKind {
        /// The object.
        id: ObjectId,
        /// What the caller asked for (an Arrow stream, a tensor of some dtype).
        expected: String,
        /// What was found.
        detail: String,
    },
    /// Arrow could not encode or decode.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The daemon went away.
    #[error("lost the connection to the store: {0}; the daemon stopped or crashed")]
    Disconnected(String),
    /// The daemon said something this client does not understand, or the
    /// reverse (different Arca versions).
    #[error("store protocol error: {0}")]
    Protocol(String),
    /// A task returned an error or panicked (or an argument it depended on
    /// did): the function that failed, its message and backtrace.
    #[error("task {function} failed: {message}{}", if backtrace.is_empty() { String::new() } else { format!("\n{backtrace}") })]
    TaskError {
        /// The registered name of the function that failed.
        function: String,
        /// Its error or panic message.
        message: String,
        /// Where it panicked, if it did and backtraces were captured.
        backtrace: String,
    },
    /// The task was cancelled with `arca::cancel`.
    #[error("{0}")]
    TaskCancelled(String),
    /// The worker running the task died and no retries were left.
    #[error("{0}")]
    WorkerCrashed(String),
    /// The actor is dead (killed, crashed without restarts left, or its
    /// constructor failed).
    #[error("{0}")]
    ActorDied(String),
    /// The task asks for more resources than the node has.
    #[error("{0}")]
    Unschedulable(String),
    /// The object is gone: freed, or its owner exited.
    #[error("{0}")]
    ObjectLost(String),
    /// The worker's program has no function by that name.
    #[error("{0}")]
    UnknownFunction(String),
    /// A value could not be serialized or deserialized.
    #[error("cannot (de)serialize a value: {0}")]
    Serialization(String),
    /// `arca::init()` was not called (or `arca::shutdown()` was).
    #[error("Arca is not initialized in this process: call arca::init() at the start of main")]
    NotInitialized,
    /// `arca::init()` was called twice.
    #[error(
        "Arca is already initialized in this process; call arca::shutdown() before init() again"
    )]
    AlreadyInitialized,
    /// The node could not be started or reached.
    #[error("{0}")]
    Node(String),
}

impl Error {
    pub(crate) fn from_reply(e: pb::Error) -> Self {
        use pb::ErrorCode as C;
        let m = e.message;
        match C::try_from(e.code).unwrap_or(C::Unspecified) {
            C::ObjectStoreFull => Self::ObjectStoreFull(m),
            C::ObjectExists => Self::ObjectExists(m),
            C::ObjectTooLarge => Self::ObjectTooLarge(m),
            C::ObjectNotFound => Self::NotFound(m),
            C::InvalidState => Self::InvalidState(m),
            C::InvalidRequest | C::VersionMismatch | C::Unspecified => Self::Protocol(m),
        }
    }
}

impl From<arca_store::wire::RecvError> for Error {
    fn from(e: arca_store::wire::RecvError) -> Self {
        use arca_store::wire::RecvError as E;
        match e {
            E::Closed | E::Truncated | E::Io(_) => Self::Disconnected(e.to_string()),
            other => Self::Protocol(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Disconnected(e.to_string())
    }
}

/// Shorthand for results of store calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
