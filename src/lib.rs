//! Arca: Ray Core rebuilt in Rust. A shared-memory object store on every
//! node, a scheduler that runs remote functions and actors in worker
//! processes, and ObjectRefs that pass results between them.
//!
//! ```no_run
//! #[arca::remote]
//! fn square(x: i64) -> i64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), arca::Error> {
//!     arca::init()?; // in a worker process, this runs tasks and never returns
//!     let refs: Vec<_> = (0..4).map(square::remote).collect();
//!     assert_eq!(arca::get_many(&refs)?, [0, 1, 4, 9]);
//!     arca::shutdown();
//!     Ok(())
//! }
//! ```
//!
//! The store alone: start it with `arca store`, or embed one with
//! [`store::server::start`], then connect a [`StoreClient`] and read objects
//! in place.

#![forbid(unsafe_code)]

mod embed;

pub use arca_client::*;
pub use arca_macros::{actor, method, remote};
pub use arca_scheduler as scheduler;
pub use arca_store as store;
pub use embed::{Config, init, init_with, start_embedded};
