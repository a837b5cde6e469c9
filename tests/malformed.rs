//! The daemon never trusts what arrives on its socket: garbage, impossible
//! lengths, truncated frames, bad ids and protocol violations each get (at
//! most) an error reply and a closed connection, and the daemon keeps serving
//! everyone else.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use arca_proto::store as pb;
use arca_proto::store::reply::Kind as R;
use arca_proto::store::request::Kind as Q;
use arca_store::wire::{MAX_REPLY_FRAME, PROTOCOL_VERSION, encode_frame, split_frame};
use common::{Daemon, GET, WAIT, pattern};
use prost::Message;
use prost::bytes::Bytes;

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(d.socket()).unwrap();
    // The watchdog on every read: a connection the daemon neither answers
    // nor closes fails the test instead of hanging it.
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

fn frame(req: &pb::Request) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_frame(req, &mut buf).unwrap();
    buf
}

fn request(kind: Q) -> Vec<u8> {
    frame(&pb::Request { kind: Some(kind) })
}

fn hello_frame(version: u32) -> Vec<u8> {
    request(Q::Hello(pb::Hello {
        version,
        pid: std::process::id(),
        name: "malformed-test".into(),
    }))
}

/// Reads one reply frame.
fn read_reply(s: &mut UnixStream) -> pb::Reply {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("a reply");
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).expect("a whole reply");
    pb::Reply::decode(&body[..]).expect("a valid reply")
}

/// A connection that completed the handshake.
fn hello(d: &Daemon) -> UnixStream {
    let mut s = connect(d);
    s.write_all(&hello_frame(PROTOCOL_VERSION)).unwrap();
    match read_reply(&mut s).kind {
        Some(R::Hello(h)) => assert_eq!(h.version, PROTOCOL_VERSION),
        other => panic!("expected a Hello reply, got {other:?}"),
    }
    s
}

/// Reads until the daemon closes the connection; returns the replies it sent
/// first. Panics if the connection is still open after [`WAIT`].
fn replies_until_closed(what: &str, s: &mut UnixStream) -> Vec<pb::Reply> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            // Closing with our garbage still unread resets the connection.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: the daemon kept the connection open for {WAIT:?}")
            }
            Err(e) => panic!("{what}: read failed: {e}"),
        }
    }
    let mut rest = &bytes[..];
    let mut replies = Vec::new();
    while !rest.is_empty() {
        let (body, tail) = split_frame(rest, MAX_REPLY_FRAME)
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: a partial reply frame"));
        replies.push(pb::Reply::decode(body).expect("a valid reply"));
        rest = tail;
    }
    replies
}

/// Asserts the connection is closed after nothing or one INVALID_REQUEST
/// error; returns the error message, if any.
fn expect_rejected(what: &str, s: &mut UnixStream) -> Option<String> {
    let replies = replies_until_closed(what, s);
    assert!(replies.len() <= 1, "{what}: {replies:?}");
    replies.into_iter().next().map(|r| match r.kind {
        Some(R::Error(e)) => {
            assert_eq!(
                e.code,
                pb::ErrorCode::InvalidRequest as i32,
                "{what}: {e:?}"
            );
            e.message
        }
        other => panic!("{what}: expected an error reply, got {other:?}"),
    })
}

fn send(s: &mut UnixStream, bytes: &[u8]) {
    // The daemon may close mid-write; what it does then is what we check.
    let _ = s.write_all(bytes);
}

fn id19() -> Bytes {
    Bytes::from(vec![7u8; 19])
}

#[test]
fn garbage_is_rejected_and_the_daemon_keeps_serving() {
    let mut d = Daemon::start("16MiB");
    let normal = d.client();
    let kept = normal.put(b"still here").unwrap();

    // Random bytes, then end of stream.
    for seed in 0..8 {
        let mut s = connect(&d);
        send(&mut s, &pattern(seed, 1000 + seed as usize * 777));
        let _ = s.shutdown(std::net::Shutdown::Write);
        expect_rejected(&format!("random bytes #{seed}"), &mut s);
    }

    // A length prefix of 4 GiB, before and after the handshake: refused at
    // once, without waiting for (or allocating) the body.
    for shaken in [false, true] {
        let mut s = if shaken { hello(&d) } else { connect(&d) };
        send(&mut s, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        let msg = expect_rejected("huge length prefix", &mut s);
        let msg = msg.expect("the huge frame gets an error reply");
        assert!(msg.contains("exceeds"), "{msg}");
    }

    // Truncated frames: the length says more than ever arrives. One small,
    // one announcing the largest allowed frame.
    for (shaken, len) in [(false, 100u32), (true, 100), (true, 64 << 20)] {
        let mut s = if shaken { hello(&d) } else { connect(&d) };
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0x0a; 10]);
        send(&mut s, &bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        expect_rejected(&format!("truncated frame of {len}"), &mut s);
    }

    // A valid Hello, then bytes that are no protobuf (wire type 7 is invalid).
    let mut s = hello(&d);
    send(&mut s, &[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let msg = expect_rejected("Hello then garbage", &mut s);
    assert!(msg.expect("an error reply").contains("malformed"));

    // Well-framed requests that break the protocol.
    let violations: Vec<(&str, bool, Vec<u8>)> = vec![
        ("an empty frame before Hello", false, vec![0, 0, 0, 0]),
        ("an empty frame", true, vec![0, 0, 0, 0]),
        (
            "a request before Hello",
            false,
            request(Q::Contains(pb::Contains {
                id: Bytes::from(vec![1u8; 20]),
            })),
        ),
        ("Hello twice", true, hello_frame(PROTOCOL_VERSION)),
        (
            "a get with a 19-byte id",
            true,
            request(Q::Get(pb::Get {
                ids: vec![Bytes::from(vec![1u8; 20]), id19()],
                timeout_ms: 0,
            })),
        ),
        (
            "a create with a 19-byte id",
            true,
            request(Q::Create(pb::Create {
                id: id19(),
                data_size: 10,
                metadata: Bytes::new(),
                primary: true,
            })),
        ),
        (
            "a put with a 21-byte id",
            true,
            request(Q::Put(pb::Put {
                id: Bytes::from(vec![1u8; 21]),
                data: Bytes::from_static(b"data"),
                metadata: Bytes::new(),
                primary: true,
            })),
        ),
        (
            "a seal with a 19-byte id",
            true,
            request(Q::Seal(pb::Seal { id: id19() })),
        ),
        (
            "a release of an object never got",
            true,
            request(Q::Release(pb::Release {
                ids: vec![Bytes::copy_from_slice(kept.as_bytes())],
            })),
        ),
    ];
    for (what, shaken, bytes) in violations {
        let mut s = if shaken { hello(&d) } else { connect(&d) };
        send(&mut s, &bytes);
        let msg = expect_rejected(what, &mut s);
        assert!(msg.is_some(), "{what}: closed without saying why");
    }

    // Many at once, all hanging up mid-frame.
    let streams: Vec<_> = (0..32)
        .map(|i| {
            let mut s = if i % 2 == 0 { hello(&d) } else { connect(&d) };
            send(&mut s, &[200, 0, 0, 0, 1, 2]);
            s
        })
        .collect();
    drop(streams);

    // The daemon is alive, forgot every bad connection, and serves as before.
    d.assert_alive();
    common::wait_until("bad connections to be forgotten", WAIT, || {
        common::other_clients(&normal.memory().unwrap(), &normal).is_empty()
    });
    assert_eq!(&normal.get_one(kept, GET).unwrap()[..], b"still here");
    let fresh = d.client();
    let id = fresh.put(&pattern(1, 100_000)).unwrap();
    common::check_pattern(
        "after the garbage",
        &fresh.get_one(id, GET).unwrap(),
        1,
        100_000,
    );
    // `normal` releases its pin on its own connection, which the daemon may
    // serve after `fresh` asks: wait for it rather than race it.
    common::wait_until("the gets' pins to be released", WAIT, || {
        common::totals(&fresh).pinned == 0
    });
    let t = common::totals(&fresh);
    assert_eq!((t.objects, t.pinned, t.creating), (2, 0, 0), "{t:?}");
    drop(fresh);
    d.stop();
}

#[test]
fn wrong_protocol_version_gets_version_mismatch() {
    let mut d = Daemon::start("16MiB");
    for version in [0, PROTOCOL_VERSION + 1, u32::MAX] {
        let mut s = connect(&d);
        send(&mut s, &hello_frame(version));
        let replies = replies_until_closed("wrong version", &mut s);
        assert_eq!(replies.len(), 1, "one reply, then closed: {replies:?}");
        match &replies[0].kind {
            Some(R::Error(e)) => {
                assert_eq!(
                    e.code,
                    pb::ErrorCode::VersionMismatch as i32,
                    "version {version}: {e:?}"
                );
                assert!(
                    e.message.contains(&format!("protocol version {version}")),
                    "{}",
                    e.message
                );
            }
            other => panic!("version {version}: expected an error, got {other:?}"),
        }
    }
    d.assert_alive();
    let c = d.client();
    let id = c.put(b"ok").unwrap();
    assert_eq!(&c.get_one(id, GET).unwrap()[..], b"ok");
    drop(c);
    d.stop();
}
