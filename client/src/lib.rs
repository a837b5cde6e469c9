//! arca-client: what a user process links to talk to the node's object store.
//!
//! Objects are written and read directly in shared memory: `get` returns an
//! [`ObjectBuffer`] that points into the store's segment (no copy, whatever
//! the size), keeps the object pinned until dropped, and converts without
//! copying into `bytes::Bytes`, an Arrow buffer, Arrow record batches or a
//! typed [`Tensor`].
//!
//! ```no_run
//! use arca_client::StoreClient;
//! use std::time::Duration;
//!
//! let store = StoreClient::connect("/tmp/arca/store.sock")?;
//! let id = store.put(b"hello")?;
//! let buf = store.get_one(id, Some(Duration::from_secs(1)))?;
//! assert_eq!(&buf[..], b"hello");
//! # Ok::<(), arca_client::Error>(())
//! ```

#![forbid(unsafe_code)]

mod arrow;
mod buffer;
mod client;
mod error;
mod runtime;
mod tensor;

pub use arca_proto::node::{Encoding, ErrorInfo, ErrorKind, Language, TaskKind};
pub use arca_proto::store::{
    ClientInfo, MemoryReport, ObjectInfo, ObjectState, PinInfo, StoreTotals,
};
pub use arca_store::{ByteSize, ObjectId};
pub use arrow::ARROW_METADATA;
pub use buffer::{ObjectBuffer, ObjectWriter};
pub use client::{ClientOptions, INLINE_MAX, PutOptions, StoreClient};
pub use error::{Error, Result};
pub use runtime::{
    ActorHandle, Arg, ArgData, ArgsBuilder, ArrowBatch, Buffer, Config, DEFAULT_MAX_RETRIES,
    DEFAULT_SESSION_DIR, ENV_ADDRESS, ENV_TEMP_DIR, EmbeddedNode, Encoded, FromObject, IntoArg,
    ObjectRef, TaskOptions, ToObject, cancel, connect_worker, core, get, get_many,
    get_many_timeout, get_timeout, init, init_with, init_with_node, is_initialized, kill, memory,
    node_id, node_running, put, shutdown, status, store_client, submit_kind, wait,
};
pub use tensor::{Element, Tensor};

/// What `#[arca::remote]` and `#[arca::actor]` expand to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::{
        ActorConstructor, ActorMethod, ArgData, ArgsBuilder, Encoded, RemoteFunction, TaskFailure,
        decode, encode, failure, result, results, returns, submit,
    };
    pub use inventory;
    pub use serde;
}
