//! An in-memory client of the scheduler: no socket, the same handshake and
//! handlers a Unix-socket client reaches (`conn::connect`, `conn::dispatch`),
//! replies through a [`Transport`] that hands them to a channel. Tests of
//! the scheduler itself use it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use arca_proto::node as pb;

use super::Shared;
use super::conn;
use super::state::{ConnId, Transport};

/// Replies to an in-memory client, until it is closed.
struct MemoryTransport {
    tx: mpsc::Sender<pb::Reply>,
    closed: AtomicBool,
}

impl Transport for MemoryTransport {
    fn deliver(&self, batch: &[pb::Reply]) -> std::io::Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        for r in batch {
            // A client that went away reads nothing more: not an error here.
            let _ = self.tx.send(r.clone());
        }
        Ok(())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// A client of a running node's scheduler, in this process.
pub(crate) struct MemoryClient {
    shared: Arc<Shared>,
    id: ConnId,
    replies: mpsc::Receiver<pb::Reply>,
    next_seq: u64,
}

/// How long a test waits for a reply before it fails.
const REPLY_WAIT: Duration = Duration::from_secs(10);

impl MemoryClient {
    /// Connects with `hello`; the node's `Hello` reply, or why it refused.
    pub(crate) fn connect(
        shared: &Arc<Shared>,
        hello: pb::Hello,
    ) -> Result<(MemoryClient, pb::HelloReply), String> {
        let (tx, replies) = mpsc::channel();
        let transport = Arc::new(MemoryTransport {
            tx,
            closed: AtomicBool::new(false),
        });
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        conn::connect(shared, id, 0, &hello, transport)?;
        let mut c = MemoryClient {
            shared: Arc::clone(shared),
            id,
            replies,
            next_seq: 1,
        };
        match c.reply().kind {
            Some(pb::reply::Kind::Hello(h)) => Ok((c, h)),
            other => Err(format!("the node answered Hello with {other:?}")),
        }
    }

    /// Sends a request; its seq. False in `.1` if the node dropped the
    /// client for it.
    pub(crate) fn send(&mut self, kind: pb::request::Kind) -> (u64, bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        (seq, conn::dispatch(&self.shared, self.id, seq, kind))
    }

    /// The next reply (the test fails if none comes in [`REPLY_WAIT`]).
    pub(crate) fn reply(&mut self) -> pb::Reply {
        self.replies
            .recv_timeout(REPLY_WAIT)
            .expect("no reply from the node")
    }

    /// Sends a request and returns its reply's kind.
    pub(crate) fn call(&mut self, kind: pb::request::Kind) -> pb::reply::Kind {
        let (seq, kept) = self.send(kind);
        let r = self.reply();
        assert!(kept, "the node dropped the client: {r:?}");
        assert_eq!(r.seq, seq, "a reply out of order: {r:?}");
        r.kind.expect("a reply without a kind")
    }
}

impl Drop for MemoryClient {
    fn drop(&mut self) {
        conn::disconnect(&self.shared, self.id);
    }
}

#[cfg(test)]
mod tests {
    use arca_store::ObjectId;
    use bytes::Bytes;

    use super::*;
    use crate::node::{Node, NodeConfig};
    use pb::reply::Kind as R;
    use pb::request::Kind as Q;

    fn node(name: &str) -> Node {
        let dir = std::env::temp_dir().join(format!("arca-mem-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Node::start(NodeConfig {
            session_dir: dir,
            num_cpus: 1.0,
            object_store_memory: 16 << 20,
            spill: false,
            remove_session_dir: true,
            ..NodeConfig::default()
        })
        .unwrap()
    }

    fn driver(n: &Node) -> MemoryClient {
        let hello = pb::Hello {
            version: crate::node::NODE_PROTOCOL_VERSION,
            pid: std::process::id(),
            role: pb::Role::Driver as i32,
            name: "memory".into(),
            worker_command: vec!["/bin/false".into()],
            ..Default::default()
        };
        MemoryClient::connect(&n.shared, hello).unwrap().0
    }

    fn id(n: u8) -> Bytes {
        Bytes::copy_from_slice(ObjectId::from_bytes([n; 20]).as_bytes())
    }

    fn put(body: pb::object::Body, n: u8) -> Q {
        Q::Put(pb::Put {
            object: Some(pb::Object {
                id: id(n),
                body: Some(body),
                ..Default::default()
            }),
        })
    }

    fn get(n: u8) -> Q {
        Q::Get(pb::Get {
            ids: vec![id(n)],
            timeout_ms: 1000,
        })
    }

    #[test]
    fn puts_gets_and_waits_through_the_same_handlers() {
        let n = node("calls");
        let mut c = driver(&n);
        // Puts are one-way: the get after it sees the value.
        let (_, kept) = c.send(put(pb::object::Body::Inline(Bytes::from_static(b"hi")), 1));
        assert!(kept);
        let R::Get(g) = c.call(get(1)) else {
            panic!("not a Get reply")
        };
        assert_eq!(
            g.objects[0].body,
            Some(pb::object::Body::Inline(Bytes::from_static(b"hi")))
        );
        let w = c.call(Q::Wait(pb::Wait {
            ids: vec![id(1), id(2)],
            num_returns: 1,
            timeout_ms: 0,
            fetch_local: true,
        }));
        assert_eq!(w, R::Wait(pb::WaitReply { ready: vec![0] }));
        let R::Status(s) = c.call(Q::Status(pb::Status {})) else {
            panic!("not a Status reply")
        };
        assert_eq!(s.drivers, 1);
        assert_eq!(s.store_capacity, 16 << 20, "totals read before the lock");
    }

    #[test]
    fn a_put_of_a_stored_object_the_store_lacks_reads_as_lost() {
        let n = node("lost");
        let mut c = driver(&n);
        assert!(c.send(put(pb::object::Body::Stored(4096), 3)).1);
        let R::Get(g) = c.call(get(3)) else {
            panic!("not a Get reply")
        };
        let Some(pb::object::Body::Error(e)) = &g.objects[0].body else {
            panic!("{g:?}")
        };
        assert_eq!(e.kind, pb::ErrorKind::ObjectLost as i32);
        assert!(e.message.contains("not there"), "{}", e.message);
    }

    #[test]
    fn a_bad_request_drops_the_client_with_why() {
        let n = node("bad");
        let mut c = driver(&n);
        let (_, kept) = c.send(Q::Get(pb::Get {
            ids: vec![Bytes::from_static(b"short")],
            timeout_ms: 0,
        }));
        assert!(!kept);
        let Some(R::Error(e)) = c.reply().kind else {
            panic!("no error")
        };
        assert!(e.message.contains("malformed object id"), "{}", e.message);
        // A Hello of another protocol version is refused before it registers.
        let hello = pb::Hello {
            version: crate::node::NODE_PROTOCOL_VERSION + 1,
            ..Default::default()
        };
        let err = MemoryClient::connect(&n.shared, hello).err().unwrap();
        assert!(err.contains("not supported"), "{err}");
    }
}
