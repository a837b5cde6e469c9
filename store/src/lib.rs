//! arca-store: the per-node shared-memory object store.
//!
//! A store daemon owns a few large memfd segments, hands their file
//! descriptors to clients over a Unix socket, and keeps the table of objects
//! inside them: where each lives, whether it is sealed, who pins it. Clients
//! (see `arca-client`) write and read object bytes directly in shared memory;
//! the socket carries only small control messages, or the data of small puts.
//!
//! This is the only Arca crate with `unsafe` code, all of it in [`segment`]
//! and [`view`], where (segment, offset, length) becomes a slice.
//!
//! ```no_run
//! use arca_store::server::{StoreConfig, start};
//!
//! let store = start(StoreConfig::new("/tmp/arca-doc/store.sock", 64 << 20)).unwrap();
//! // ... clients connect to store.socket() ...
//! store.shutdown();
//! ```

pub mod alloc;
pub mod error;
pub mod eviction;
pub mod id;
pub mod segment;
pub mod server;
pub mod size;
pub mod spill;
pub mod table;
pub mod view;
pub mod wire;

pub use error::{CreateError, StateError};
pub use id::{InvalidObjectId, ObjectId};
pub use size::{ByteSize, InvalidSize};
