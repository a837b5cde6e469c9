//! The node daemon against clients that speak its protocol badly: every bad
//! message gets an error reply (or the connection is dropped), and the node
//! keeps serving everyone else. Real node, real sockets, no workers needed.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use arca::scheduler::{NODE_PROTOCOL_VERSION, Node, NodeConfig};
use arca_proto::node as pb;
use arca_store::ObjectId;
use arca_store::wire::{Conn, MAX_REPLY_FRAME, RecvError, Side};

use pb::reply::Kind as R;
use pb::request::Kind as Q;

fn node() -> (Node, tempdir::Dir) {
    let dir = tempdir::Dir::new("node-protocol");
    let node = Node::start(NodeConfig {
        session_dir: dir.path().join("s"),
        num_cpus: 1.0,
        object_store_memory: 16 << 20,
        spill: false,
        ..Default::default()
    })
    .expect("node starts");
    (node, dir)
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "arca-test-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn raw(node: &Node) -> UnixStream {
    let s = UnixStream::connect(node.node_socket()).expect("connect");
    // Watchdog: no read may hang the test.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn conn(node: &Node) -> Conn {
    Conn::new(raw(node), Side::Client, Duration::ZERO)
}

fn send(c: &mut Conn, kind: Q) {
    send_seq(c, 0, kind);
}

fn send_seq(c: &mut Conn, seq: u64, kind: Q) {
    c.send(&pb::Request {
        kind: Some(kind),
        seq,
    })
    .expect("send");
}

fn recv(c: &mut Conn) -> Result<R, RecvError> {
    recv_seq(c).map(|(_, kind)| kind)
}

fn recv_seq(c: &mut Conn) -> Result<(u64, R), RecvError> {
    let r: pb::Reply = c.recv(MAX_REPLY_FRAME)?;
    Ok((r.seq, r.kind.expect("reply has a kind")))
}

fn hello(role: pb::Role, command: &[&str]) -> Q {
    Q::Hello(pb::Hello {
        version: NODE_PROTOCOL_VERSION,
        pid: std::process::id(),
        role: role as i32,
        name: "test".into(),
        worker_command: command.iter().map(|s| s.to_string()).collect(),
        worker_id: 0,
        ..Default::default()
    })
}

fn tool(node: &Node) -> Conn {
    let mut c = conn(node);
    send(&mut c, hello(pb::Role::Tool, &[]));
    assert!(matches!(recv(&mut c), Ok(R::Hello(_))));
    c
}

fn driver(node: &Node) -> Conn {
    let mut c = conn(node);
    send(&mut c, hello(pb::Role::Driver, &["/bin/false"]));
    assert!(matches!(recv(&mut c), Ok(R::Hello(_))));
    c
}

/// The node still answers a well-behaved client.
fn assert_serving(node: &Node) {
    let mut c = tool(node);
    send(&mut c, Q::Status(pb::Status {}));
    match recv(&mut c) {
        Ok(R::Status(s)) => assert_eq!(s.pid, std::process::id()),
        other => panic!("status after abuse: {other:?}"),
    }
}

fn error_text(r: Result<R, RecvError>) -> String {
    match r {
        Ok(R::Error(e)) => e.message,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn id_bytes(id: ObjectId) -> bytes::Bytes {
    id.as_bytes().to_vec().into()
}

/// A task of function "f" with these arguments and one result, `ret`.
fn task(ret: ObjectId, args: Vec<pb::Arg>) -> Q {
    Q::Submit(pb::Submit {
        spec: Some(pb::TaskSpec {
            task_id: id_bytes(ObjectId::random()),
            function: "f".into(),
            args,
            returns: vec![id_bytes(ret)],
            ..Default::default()
        }),
    })
}

/// A get of one object.
fn get_one(id: ObjectId, timeout_ms: i64) -> Q {
    Q::Get(pb::Get {
        ids: vec![id_bytes(id)],
        timeout_ms,
    })
}

#[test]
fn garbage_and_bad_handshakes_get_errors() {
    let (node, _dir) = node();

    let mut s = raw(&node);
    s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let mut c = Conn::new(s, Side::Client, Duration::ZERO);
    assert!(error_text(recv(&mut c)).contains("handshake"));

    let mut c = conn(&node);
    send(&mut c, Q::Status(pb::Status {}));
    assert!(error_text(recv(&mut c)).contains("Hello"));

    let mut c = conn(&node);
    send_seq(
        &mut c,
        3,
        Q::Hello(pb::Hello {
            version: 999,
            ..Default::default()
        }),
    );
    let (seq, reply) = recv_seq(&mut c).unwrap();
    assert_eq!(seq, 3, "a refused Hello's error answers it");
    assert!(error_text(Ok(reply)).contains("version"));

    let mut c = conn(&node);
    send(&mut c, hello(pb::Role::Driver, &[]));
    assert!(error_text(recv(&mut c)).contains("worker_command"));

    let mut c = conn(&node);
    send(
        &mut c,
        Q::Hello(pb::Hello {
            version: NODE_PROTOCOL_VERSION,
            role: pb::Role::Worker as i32,
            worker_id: 12345,
            ..Default::default()
        }),
    );
    assert!(error_text(recv(&mut c)).contains("no worker 12345"));

    // An oversized length prefix after a good handshake.
    let mut c = tool(&node);
    let mut s = c.stream().try_clone().unwrap();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(error_text(recv(&mut c)).contains("malformed"));
    assert_serving(&node);
}

#[test]
fn malformed_requests_drop_only_that_client() {
    let (node, _dir) = node();
    let cases: Vec<Q> = vec![
        Q::Hello(pb::Hello::default()),
        Q::Submit(pb::Submit { spec: None }),
        Q::Submit(pb::Submit {
            spec: Some(pb::TaskSpec {
                task_id: vec![1, 2, 3].into(),
                ..Default::default()
            }),
        }),
        Q::Put(pb::Put { object: None }),
        Q::Put(pb::Put {
            object: Some(pb::Object {
                id: vec![9].into(),
                ..Default::default()
            }),
        }),
        Q::Get(pb::Get {
            ids: vec![vec![0; 3].into()],
            timeout_ms: 0,
        }),
        Q::AddRefs(pb::Refs {
            ids: vec![vec![1].into()],
        }),
        Q::Cancel(pb::Cancel {
            id: vec![].into(),
            force: true,
        }),
        Q::KillActor(pb::KillActor {
            actor_id: vec![1].into(),
            no_restart: true,
            exit: true,
        }),
        Q::TaskDone(pb::TaskDone {
            task_id: id_bytes(ObjectId::random()),
            results: vec![],
            given: vec![],
        }),
        Q::DirectActor(pb::DirectActor {
            actor_id: vec![1].into(),
            gone_worker: 0,
        }),
        Q::Promise(pb::Promise { id: vec![2].into() }),
        Q::Give(pb::Give {
            object: None,
            client_id: 1,
        }),
        Q::Give(pb::Give {
            object: Some(pb::Object {
                id: vec![9].into(),
                ..Default::default()
            }),
            client_id: 1,
        }),
    ];
    for case in cases {
        let mut c = driver(&node);
        let shown = format!("{case:?}");
        send(&mut c, case);
        let r = recv(&mut c);
        assert!(matches!(r, Ok(R::Error(_))), "{shown}: {r:?}");
        // Then the connection is closed.
        assert!(matches!(recv(&mut c), Err(RecvError::Closed)), "{shown}");
    }
    assert_serving(&node);
}

#[test]
fn unknown_ids_are_errors_not_hangs() {
    let (node, _dir) = node();
    let mut c = driver(&node);
    let unknown = ObjectId::random();
    send(&mut c, get_one(unknown, -1));
    match recv(&mut c) {
        Ok(R::Get(g)) => match &g.objects[0].body {
            Some(pb::object::Body::Error(e)) => {
                assert_eq!(e.kind, pb::ErrorKind::ObjectLost as i32);
                assert!(e.message.contains("unknown"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    send(
        &mut c,
        Q::Wait(pb::Wait {
            ids: vec![id_bytes(unknown)],
            num_returns: 2,
            timeout_ms: 0,
            fetch_local: false,
        }),
    );
    assert!(error_text(recv(&mut c)).contains("num_returns"));
    // Removing a reference never held, cancelling an unknown task, killing
    // an unknown actor: ignored (a cancel is answered Ok all the same).
    send(
        &mut c,
        Q::RemoveRefs(pb::Refs {
            ids: vec![id_bytes(unknown)],
        }),
    );
    send_seq(
        &mut c,
        7,
        Q::Cancel(pb::Cancel {
            id: id_bytes(unknown),
            force: true,
        }),
    );
    assert!(matches!(recv_seq(&mut c), Ok((7, R::Ok(_)))));
    send(
        &mut c,
        Q::KillActor(pb::KillActor {
            actor_id: id_bytes(unknown),
            no_restart: true,
            exit: false,
        }),
    );
    // A task whose argument does not exist fails with ObjectLost.
    let ret = ObjectId::random();
    let arg = pb::Arg {
        kind: Some(pb::arg::Kind::Object(id_bytes(unknown))),
        encoding: 0,
    };
    send(&mut c, task(ret, vec![arg]));
    send(&mut c, get_one(ret, 10_000));
    match recv(&mut c) {
        Ok(R::Get(g)) => match &g.objects[0].body {
            Some(pb::object::Body::Error(e)) => {
                assert_eq!(e.kind, pb::ErrorKind::ObjectLost as i32)
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert_serving(&node);
}

#[test]
fn puts_are_counted_and_freed() {
    let (node, _dir) = node();
    let mut c = driver(&node);
    let ids: Vec<ObjectId> = (0..100).map(|_| ObjectId::random()).collect();
    for id in &ids {
        send(
            &mut c,
            Q::Put(pb::Put {
                object: Some(pb::Object {
                    id: id_bytes(*id),
                    body: Some(pb::object::Body::Inline(vec![1, 2, 3].into())),
                    contained: vec![],
                    encoding: 0,
                }),
            }),
        );
    }
    let count = |node: &Node| {
        let mut t = tool(node);
        send(&mut t, Q::Memory(pb::Memory {}));
        match recv(&mut t) {
            Ok(R::Memory(m)) => m.objects.len(),
            other => panic!("{other:?}"),
        }
    };
    // The tool's request is answered after the driver's puts only if they
    // were handled; poll (bounded) for them.
    wait_for(|| count(&node) == 100);
    send(
        &mut c,
        Q::RemoveRefs(pb::Refs {
            ids: ids.iter().map(|i| id_bytes(*i)).collect(),
        }),
    );
    wait_for(|| count(&node) == 0);
    // A duplicate put of the same id is a protocol error.
    let dup = ObjectId::random();
    let put = |id| {
        Q::Put(pb::Put {
            object: Some(pb::Object {
                id: id_bytes(id),
                body: Some(pb::object::Body::Inline(vec![].into())),
                contained: vec![],
                encoding: 0,
            }),
        })
    };
    send(&mut c, put(dup));
    send(&mut c, put(dup));
    assert!(error_text(recv(&mut c)).contains("already exists"));
    // The driver's connection closed: its references went with it.
    wait_for(|| count(&node) == 0);
    assert_serving(&node);
}

#[test]
fn replies_echo_their_request_seq_in_any_order() {
    let (node, _dir) = node();
    let mut c = conn(&node);
    // Workers that never connect: a task stays queued until cancelled.
    send_seq(&mut c, 7, hello(pb::Role::Driver, &["/bin/sleep", "60"]));
    assert!(matches!(recv_seq(&mut c), Ok((7, R::Hello(_)))));
    let ret = ObjectId::random();
    send(&mut c, task(ret, vec![]));
    send_seq(&mut c, 8, get_one(ret, -1));
    send_seq(
        &mut c,
        9,
        Q::Wait(pb::Wait {
            ids: vec![id_bytes(ret)],
            num_returns: 1,
            timeout_ms: 50,
            fetch_local: false,
        }),
    );
    send_seq(&mut c, 10, Q::Status(pb::Status {}));
    send_seq(
        &mut c,
        11,
        Q::Wait(pb::Wait {
            ids: vec![id_bytes(ret)],
            num_returns: 2,
            timeout_ms: 0,
            fetch_local: false,
        }),
    );
    // The Get waits; the later requests are answered meanwhile (the Wait at
    // its deadline, so in no fixed order relative to the others).
    let mut early: Vec<(u64, R)> = (0..3).map(|_| recv_seq(&mut c).unwrap()).collect();
    early.sort_by_key(|(seq, _)| *seq);
    match &early[..] {
        [(9, R::Wait(w)), (10, R::Status(s)), (11, R::Error(e))] => {
            assert!(w.ready.is_empty(), "{w:?}");
            assert_eq!(s.pid, std::process::id());
            assert!(e.message.contains("num_returns"), "{}", e.message);
        }
        other => panic!("expected replies to 9, 10 and 11: {other:?}"),
    }
    // Its object completes (cancelled) only now: the deferred reply comes
    // after all the others and still answers request 8.
    send_seq(
        &mut c,
        12,
        Q::Cancel(pb::Cancel {
            id: id_bytes(ret),
            force: false,
        }),
    );
    match recv_seq(&mut c) {
        Ok((8, R::Get(g))) => match &g.objects[0].body {
            Some(pb::object::Body::Error(e)) => {
                assert_eq!(e.kind, pb::ErrorKind::TaskCancelled as i32)
            }
            other => panic!("{other:?}"),
        },
        other => panic!("expected the reply to Get 8: {other:?}"),
    }
    // Then the cancel's own answer.
    assert!(matches!(recv_seq(&mut c), Ok((12, R::Ok(_)))));
    assert_serving(&node);
}

fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("condition not reached within 10 s");
}

#[test]
fn a_client_that_never_reads_its_replies_is_dropped_not_waited_for() {
    let (node, _dir) = node();
    let mut stuck = tool(&node);
    stuck
        .stream()
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    // Ask for far more replies than a socket buffers, reading none: the
    // node's writes to it stall, then it is disconnected.
    let request = pb::Request {
        kind: Some(Q::Memory(pb::Memory {})),
        seq: 1,
    };
    let mut sent = 0;
    while sent < 200_000 && stuck.send(&request).is_ok() {
        sent += 1;
    }
    // Everyone else is still served (the watchdog is `raw`'s read timeout).
    assert_serving(&node);
    // And the stuck client's connection was ended: reading its replies
    // eventually finds the end.
    let mut closed = false;
    for _ in 0..1_000_000 {
        match recv(&mut stuck) {
            Ok(_) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the stuck client was never disconnected");
}

#[test]
fn a_worker_command_that_cannot_start_fails_the_tasks_with_why() {
    let (node, _dir) = node();
    let mut c = conn(&node);
    send(
        &mut c,
        hello(pb::Role::Driver, &["/nonexistent/arca-test-worker"]),
    );
    assert!(matches!(recv(&mut c), Ok(R::Hello(_))));
    let ret = ObjectId::random();
    send(&mut c, task(ret, vec![]));
    send_seq(&mut c, 7, get_one(ret, 20_000));
    // The reply to the get (other messages may come first).
    let reply = loop {
        match recv_seq(&mut c) {
            Ok((7, r)) => break r,
            Ok(_) => continue,
            Err(e) => panic!("no answer to the get: {e}"),
        }
    };
    let text = format!("{reply:?}");
    assert!(
        text.contains("cannot start a worker process") && text.contains("arca-test-worker"),
        "{text}"
    );
    assert_serving(&node);
}

#[test]
fn a_promised_object_is_put_later_or_lost_with_its_owner() {
    let (node, _dir) = node();
    let inline = |id: ObjectId, v: &[u8]| pb::Object {
        id: id_bytes(id),
        body: Some(pb::object::Body::Inline(bytes::Bytes::copy_from_slice(v))),
        ..Default::default()
    };
    let get = |c: &mut Conn, id: ObjectId| {
        send_seq(
            c,
            7,
            Q::Get(pb::Get {
                ids: vec![id_bytes(id)],
                timeout_ms: 20_000,
            }),
        );
        match recv(c) {
            Ok(R::Get(g)) => g.objects.into_iter().next().and_then(|o| o.body),
            other => panic!("get: {other:?}"),
        }
    };
    // Kept: another client waits for it, and reads it once it is put.
    let mut owner = driver(&node);
    let mut reader = driver(&node);
    let kept = ObjectId::random();
    // The node reads each client on its own thread: a request another
    // client sends depends on this one only once it is answered.
    let handled = |c: &mut Conn| {
        send_seq(c, 3, Q::Status(pb::Status {}));
        assert!(matches!(recv(c), Ok(R::Status(_))));
    };
    send(&mut owner, Q::Promise(pb::Promise { id: id_bytes(kept) }));
    handled(&mut owner);
    // A second promise of the same id is refused.
    let mut twice = driver(&node);
    send(&mut twice, Q::Promise(pb::Promise { id: id_bytes(kept) }));
    assert!(error_text(recv(&mut twice)).contains("already exists"));
    send(
        &mut reader,
        Q::AddRefs(pb::Refs {
            ids: vec![id_bytes(kept)],
        }),
    );
    send(
        &mut owner,
        Q::Put(pb::Put {
            object: Some(inline(kept, b"v")),
        }),
    );
    assert!(matches!(get(&mut reader, kept), Some(pb::object::Body::Inline(b)) if &b[..] == b"v"));
    // Lost: its owner exits first; the waiting reader gets an error, not a hang.
    let lost = ObjectId::random();
    send(&mut owner, Q::Promise(pb::Promise { id: id_bytes(lost) }));
    handled(&mut owner);
    send(
        &mut reader,
        Q::AddRefs(pb::Refs {
            ids: vec![id_bytes(lost)],
        }),
    );
    // The AddRefs is handled before the owner goes.
    handled(&mut reader);
    drop(owner);
    match get(&mut reader, lost) {
        Some(pb::object::Body::Error(e)) => {
            assert_eq!(e.kind, pb::ErrorKind::ObjectLost as i32);
            assert!(
                e.message.contains("exited before the call answered"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a lost object, got {other:?}"),
    }
    assert_serving(&node);
}

#[test]
fn direct_calls_are_refused_for_unknown_actors() {
    let (node, _dir) = node();
    let mut c = driver(&node);
    send_seq(
        &mut c,
        5,
        Q::DirectActor(pb::DirectActor {
            actor_id: id_bytes(ObjectId::random()),
            gone_worker: 0,
        }),
    );
    match recv_seq(&mut c) {
        Ok((5, R::DirectActor(r))) => assert!(r.socket.is_empty()),
        other => panic!("{other:?}"),
    }
    // A worker id the node does not have: answered at once.
    send_seq(
        &mut c,
        6,
        Q::DirectActor(pb::DirectActor {
            actor_id: id_bytes(ObjectId::random()),
            gone_worker: 999,
        }),
    );
    assert!(matches!(recv_seq(&mut c), Ok((6, R::DirectActor(_)))));
    assert_serving(&node);
}
