//! The client end of the node socket.

use std::os::unix::net::UnixStream;
use std::path::Path;

use arca_proto::node as pb;
use arca_store::wire::{Conn, DEFAULT_SPIN, MAX_REPLY_FRAME, Side};

use crate::error::{Error, Result};

/// A connection to the node: one request awaiting a reply at a time.
#[derive(Debug)]
pub(crate) struct NodeConn {
    conn: Conn,
}

impl NodeConn {
    pub(crate) fn connect(socket: &Path, hello: pb::Hello) -> Result<(Self, pb::HelloReply)> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            Error::Node(format!(
                "cannot connect to the node at {}: {e}; start one with `arca start --head`, or call arca::init() without an address to run an embedded node",
                socket.display()
            ))
        })?;
        let mut c = NodeConn {
            conn: Conn::new(stream, Side::Client, DEFAULT_SPIN),
        };
        match c.call(pb::request::Kind::Hello(hello))? {
            pb::reply::Kind::Hello(h) => Ok((c, h)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a one-way request.
    pub(crate) fn send(&mut self, kind: pb::request::Kind) -> Result<()> {
        self.conn.send(&pb::Request { kind: Some(kind) })?;
        Ok(())
    }

    /// Sends a request and waits for its reply; an `Error` reply becomes `Err`.
    pub(crate) fn call(&mut self, kind: pb::request::Kind) -> Result<pb::reply::Kind> {
        self.send(kind)?;
        match self.recv()? {
            pb::reply::Kind::Error(e) => Err(Error::Node(e.message)),
            other => Ok(other),
        }
    }

    /// Receives the next reply (or, on a worker, the next `Execute`).
    pub(crate) fn recv(&mut self) -> Result<pb::reply::Kind> {
        let reply: pb::Reply = self.conn.recv(MAX_REPLY_FRAME).map_err(|e| match e {
            arca_store::wire::RecvError::Closed | arca_store::wire::RecvError::Truncated => {
                Error::Disconnected("the node closed the connection (it stopped or crashed)".into())
            }
            other => Error::from(other),
        })?;
        reply
            .kind
            .ok_or_else(|| Error::Protocol("empty reply from the node".into()))
    }
}

pub(crate) fn unexpected(reply: &pb::reply::Kind) -> Error {
    let name = match reply {
        pb::reply::Kind::Hello(_) => "Hello",
        pb::reply::Kind::Get(_) => "Get",
        pb::reply::Kind::Wait(_) => "Wait",
        pb::reply::Kind::Status(_) => "Status",
        pb::reply::Kind::Memory(_) => "Memory",
        pb::reply::Kind::Execute(_) => "Execute",
        pb::reply::Kind::Ok(_) => "Ok",
        pb::reply::Kind::Error(_) => "Error",
    };
    Error::Protocol(format!("unexpected {name} reply from the node"))
}
