//! Arca: a shared-memory object store and (soon) task runtime, Ray Core rebuilt in Rust.
//!
//! This facade re-exports the user API. Start a store with `arca store`, or
//! embed one with [`store::server::start`], then connect a [`StoreClient`]:
//!
//! ```no_run
//! use arca::StoreClient;
//!
//! let store = StoreClient::connect("/tmp/arca/store.sock")?;
//! let id = store.put(&[1, 2, 3])?;
//! let buf = store.get_one(id, None)?; // points into shared memory
//! assert_eq!(&buf[..], &[1, 2, 3]);
//! # Ok::<(), arca::Error>(())
//! ```

#![forbid(unsafe_code)]

pub use arca_client::*;
pub use arca_store as store;
