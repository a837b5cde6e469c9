//! Arca's protobuf messages.
//!
//! `store` is the protocol between a store daemon and its clients over the node's
//! Unix socket: every frame is a little-endian `u32` length followed by one encoded
//! [`store::Request`] (client to daemon) or [`store::Reply`] (daemon to client).
//! The framing, limits and file-descriptor passing live in `arca-store`'s `wire`
//! module; this crate holds only the generated messages.

#![forbid(unsafe_code)]

/// The store socket protocol (`proto/arca/store.proto`).
#[allow(missing_debug_implementations, clippy::all)]
pub mod store {
    include!(concat!(env!("OUT_DIR"), "/arca.store.rs"));
}

/// The node socket protocol (`proto/arca/node.proto`): drivers and workers to
/// the local scheduler.
#[allow(missing_debug_implementations, clippy::all)]
pub mod node {
    include!(concat!(env!("OUT_DIR"), "/arca.node.rs"));
}

/// gRPC between nodes (`proto/arca/cluster.proto`): the head's `Control`
/// service and every node's `Peer` service.
#[cfg(feature = "grpc")]
#[allow(missing_debug_implementations, clippy::all)]
pub mod cluster {
    include!(concat!(env!("OUT_DIR"), "/arca.cluster.rs"));
}

/// Ids in hex, as tools and logs show them (node ids travel as bytes).
pub mod hex {
    /// `bytes` as lowercase hex digits.
    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Hex digits back to bytes; `None` if `s` is not an even number of
    /// hex digits.
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    }
}

/// Constants of the node protocol that both ends (the node daemon and every
/// client) must agree on; here so that a client need not link the daemon.
pub mod consts {
    /// The node protocol's version, checked at `Hello`.
    pub const NODE_PROTOCOL_VERSION: u32 = 6;
    /// Values up to this size travel inline in node messages (puts, results,
    /// arguments); larger ones are written to the store.
    pub const INLINE_RESULT_MAX: usize = 100 << 10;
    /// Set in a worker process's environment: its id at the node.
    pub const ENV_WORKER_ID: &str = "ARCA_WORKER_ID";
    /// Set in a worker process's environment: the node's socket.
    pub const ENV_NODE_SOCKET: &str = "ARCA_NODE_SOCKET";
    /// The node's socket, inside its session directory.
    pub const NODE_SOCKET: &str = "node.sock";
    /// The node's embedded store's socket, beside the node's.
    pub const STORE_SOCKET: &str = "store.sock";
    /// An actor's worker's socket for direct calls, in the session
    /// directory (node.proto's `DirectActor`).
    pub fn direct_socket(worker_id: u64) -> String {
        format!("direct-{worker_id}.sock")
    }
    /// The session directory a node runs in unless told otherwise, and
    /// where clients look for one.
    pub const DEFAULT_SESSION_DIR: &str = "/tmp/arca";
    /// The head's control service port unless `--port` says otherwise.
    pub const DEFAULT_PORT: u16 = 6379;
    /// The gRPC metadata entry that carries the cluster token.
    pub const TOKEN_HEADER: &str = "arca-token";
    /// The cluster token, if not in the head's temp dir.
    pub const ENV_TOKEN: &str = "ARCA_TOKEN";
    /// The head's address (`HOST:PORT`), as `RAY_ADDRESS`.
    pub const ENV_ADDRESS: &str = "ARCA_ADDRESS";
    /// A node's session directory, if not the default.
    pub const ENV_TEMP_DIR: &str = "ARCA_TEMP_DIR";
    /// The token's file in the head's temp dir (mode 0600).
    pub const TOKEN_FILE: &str = "cluster_token";
}
