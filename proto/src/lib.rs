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
