//! A driver's workers' output: the node sends it on a second connection
//! (role LOGS), so that a thread can print it as it comes without taking
//! turns with the calls on the main connection.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

use arca_proto::node as pb;
use arca_store::wire::{Conn, MAX_REPLY_FRAME, Side};

use super::hello;
use crate::error::{Error, Result};

/// Opens the LOGS connection for `job` and starts the thread that prints
/// what comes on it, each line as `(name pid=N) line`, as Ray does. The
/// thread ends when the node closes the connection.
pub(crate) fn stream(socket: &Path, job: u64) -> Result<()> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        Error::Node(format!(
            "cannot open the log connection to the node at {}: {e}",
            socket.display()
        ))
    })?;
    let mut conn = Conn::new(stream, Side::Client, std::time::Duration::ZERO);
    conn.send(&pb::Request {
        kind: Some(pb::request::Kind::Hello(pb::Hello {
            role: pb::Role::Logs as i32,
            job_id: job,
            ..hello()
        })),
        seq: 1,
    })?;
    match conn.recv::<pb::Reply>(MAX_REPLY_FRAME)?.kind {
        Some(pb::reply::Kind::Hello(_)) => {}
        Some(pb::reply::Kind::Error(e)) => return Err(Error::Node(e.message)),
        other => {
            return Err(Error::Protocol(format!(
                "expected a Hello reply on the log connection, got {other:?}"
            )));
        }
    }
    let print = move || {
        while let Ok(reply) = conn.recv::<pb::Reply>(MAX_REPLY_FRAME) {
            if let Some(pb::reply::Kind::Log(log)) = reply.kind {
                let text: String = log
                    .lines
                    .iter()
                    .map(|l| match log.ip.as_str() {
                        "" => format!("({} pid={}) {l}\n", log.name, log.pid),
                        ip => format!("({} pid={}, ip={ip}) {l}\n", log.name, log.pid),
                    })
                    .collect();
                let _ = if log.stderr {
                    std::io::stderr().lock().write_all(text.as_bytes())
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(text.as_bytes()).and_then(|()| out.flush())
                };
            }
        }
    };
    std::thread::Builder::new()
        .name("arca-logs".into())
        .spawn(print)
        .map_err(|e| Error::Node(format!("cannot start the log thread: {e}")))?;
    Ok(())
}
