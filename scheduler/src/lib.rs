//! arca-scheduler: the node daemon.
//!
//! A node is one process holding the object store (embedded, see
//! `arca-store`), the local scheduler and a pool of worker processes. Drivers
//! and workers talk to it over `<session>/node.sock` (the protocol is
//! `arca_proto::node`): they submit tasks and actor calls whose results are
//! ObjectRefs, get and wait on objects, and report the references they hold,
//! so that an object is freed, from memory and from spill files, when the
//! last reference anywhere is dropped.
//!
//! Workers run the driver's own program: the node starts it with
//! [`ENV_WORKER_ID`] and [`ENV_NODE_SOCKET`] set, and the program's
//! `arca::init()` turns it into a worker that runs tasks by their registered
//! names.
//!
//! ```no_run
//! use arca_scheduler::{Node, NodeConfig};
//!
//! let node = Node::start(NodeConfig {
//!     session_dir: "/tmp/arca-doc".into(),
//!     ..NodeConfig::default()
//! })?;
//! // ... drivers connect to node.node_socket() ...
//! node.shutdown();
//! # Ok::<(), arca_scheduler::NodeStartError>(())
//! ```

#![forbid(unsafe_code)]

mod cluster;
mod config;
mod node;
mod resources;

pub use cluster::{ClusterConfig, ClusterError, NodeId, new_token, token_file};
pub use config::{
    NODE_SOCKET, NodeConfig, STORE_SOCKET, fresh_session_dir, node_running, total_ram,
};
pub use node::{INLINE_RESULT_MAX, NODE_PROTOCOL_VERSION, Node, NodeStartError};
pub use resources::{InvalidResource, ResourceSet};

pub use arca_proto::consts::{ENV_NODE_SOCKET, ENV_WORKER_ID};
