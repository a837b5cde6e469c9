//! What clients see when a call cannot be served: a full store, an object
//! larger than the store, a taken id, a get that times out; and a get that
//! waits for an object another client seals later.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use arca_client::{Error, ObjectId, PutOptions};
use common::{Daemon, GET, MIB, WAIT, check_pattern, fill_pattern, join_timeout};

const SHORT: Option<Duration> = Some(Duration::from_millis(50));

#[test]
fn store_full_error_says_what_holds_the_memory() {
    let d = Daemon::start_with("16MiB", &["--create-timeout-ms", "100"]);
    let c = d.client();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(c.put(&common::pattern(i, 4 * MIB as usize)).unwrap());
    }
    // Held by a buffer as well as by the primary pin.
    let held = c.get_one(ids[0], GET).unwrap();
    let err = c.put(&[1u8; 1000]).unwrap_err();
    let Error::ObjectStoreFull(msg) = &err else {
        panic!("expected ObjectStoreFull, got {err:?}");
    };
    assert_eq!(err.to_string(), *msg);
    for part in [
        "object store full",
        "16.0 MiB",
        "pinned by 1 client",
        &format!("pid {}", std::process::id()),
        "16.0 MiB held as primary copies",
        "release references",
        "raise --memory",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    // The failed create left nothing behind.
    let t = common::totals(&c);
    assert_eq!((t.objects, t.creating), (4, 0), "{t:?}");
    // Freeing one primary makes room again.
    drop(held);
    assert!(c.delete(ids[1]).unwrap());
    c.put(&[1u8; 1000]).unwrap();
    d.stop();
}

#[test]
fn object_larger_than_the_store_is_refused() {
    let d = Daemon::start_with("16MiB", &["--create-timeout-ms", "100"]);
    let c = d.client();
    let capacity = c.capacity();
    for (size, meta) in [
        (capacity + 1, &b""[..]),
        (capacity, &b"x"[..]),
        (u64::MAX, &b""[..]),
        (u64::MAX - 3, &b"meta"[..]),
    ] {
        match c.create(ObjectId::random(), size, meta, true) {
            Err(Error::ObjectTooLarge(msg)) => {
                assert!(msg.contains("raise --memory"), "{msg}");
                assert!(msg.contains("larger than the store"), "{msg}");
            }
            other => panic!("create of {size} + {} bytes: {other:?}", meta.len()),
        }
    }
    let t = common::totals(&c);
    assert_eq!((t.objects, t.allocated), (0, 0));
    // Exactly the capacity fits.
    let id = ObjectId::random();
    let mut w = c.create(id, capacity, b"", false).unwrap();
    w[capacity as usize - 1] = 9;
    w.seal().unwrap();
    assert_eq!(c.get_one(id, GET).unwrap()[capacity as usize - 1], 9);
    d.stop();
}

#[test]
fn duplicate_ids_are_refused() {
    let d = Daemon::start("16MiB");
    let c = d.client();
    let other = d.client();
    let id = ObjectId::random();
    let opts = PutOptions {
        id: Some(id),
        ..PutOptions::default()
    };
    c.put_with(b"first", &opts).unwrap();
    // Inline put, create, and a put from another client all see the taken id.
    for (who, result) in [
        ("put", c.put_with(b"second", &opts).map(|_| ())),
        (
            "large put",
            c.put_with(&vec![0u8; 2 * MIB as usize], &opts).map(|_| ()),
        ),
        ("create", c.create(id, 10, b"", true).map(|_| ())),
        ("other client", other.put_with(b"third", &opts).map(|_| ())),
    ] {
        match result {
            Err(Error::ObjectExists(msg)) => assert!(msg.contains(&id.to_hex()), "{msg}"),
            r => panic!("{who} of a taken id: {r:?}"),
        }
    }
    assert_eq!(&c.get_one(id, GET).unwrap()[..], b"first", "unchanged");

    // An id being created (unsealed) is taken too.
    let id2 = ObjectId::random();
    let w = other.create(id2, 100, b"", true).unwrap();
    assert!(matches!(
        c.put_with(
            b"x",
            &PutOptions {
                id: Some(id2),
                ..PutOptions::default()
            }
        ),
        Err(Error::ObjectExists(_))
    ));
    drop(w); // aborts
    // After an abort, or a delete, the id is free again.
    c.put_with(
        b"now",
        &PutOptions {
            id: Some(id2),
            ..PutOptions::default()
        },
    )
    .unwrap();
    assert!(c.delete(id).unwrap());
    c.put_with(b"again", &opts).unwrap();
    assert_eq!(&c.get_one(id, GET).unwrap()[..], b"again");
    d.stop();
}

#[test]
fn get_of_a_missing_object_times_out() {
    let d = Daemon::start("16MiB");
    let c = d.client();
    let missing = ObjectId::random();
    match c.get_one(missing, SHORT) {
        Err(e @ Error::GetTimeout { .. }) => {
            let Error::GetTimeout { id, timeout } = &e else {
                unreachable!()
            };
            assert_eq!(*id, missing);
            assert_eq!(Some(*timeout), SHORT);
            assert!(e.to_string().contains(&missing.to_hex()), "{e}");
        }
        other => panic!("expected GetTimeout, got {other:?}"),
    }
    // A batch returns what exists and None for the rest.
    let there = c.put(b"here").unwrap();
    let got = c.get(&[there, missing, there], SHORT).unwrap();
    assert_eq!(got[0].as_deref().unwrap(), b"here");
    assert!(got[1].is_none());
    assert_eq!(got[2].as_deref().unwrap(), b"here");
    // Zero timeout: a poll.
    assert!(c.get(&[missing], Some(Duration::ZERO)).unwrap()[0].is_none());
    // An unsealed object is not readable either.
    let creating = ObjectId::random();
    let _w = c.create(creating, 10, b"", true).unwrap();
    assert!(matches!(
        c.get_one(creating, SHORT),
        Err(Error::GetTimeout { .. })
    ));
    // Timeouts leave no pins behind.
    drop(got);
    let t = common::totals(&c);
    assert_eq!(t.pinned, 0, "{t:?}");
    d.stop();
}

#[test]
fn get_waits_for_a_later_seal() {
    let d = Daemon::start("32MiB");
    let writer = d.client();
    let size = 5 * MIB as usize;
    let created = ObjectId::random();
    let not_yet = ObjectId::random();
    let mut w = writer.create(created, size as u64, b"late", true).unwrap();

    // Another connection waits for both: one being written, one not even created.
    let reader = d.client();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let got = reader.get(&[created, not_yet], Some(WAIT));
        tx.send(()).unwrap();
        let got = got.unwrap();
        let a = got[0].as_ref().expect("the sealed object");
        check_pattern("sealed while a get waited", a, 3, size);
        assert_eq!(a.metadata(), b"late");
        assert_eq!(got[1].as_deref().expect("the later put"), b"later");
    });
    // Give the get time to park in the daemon (the test is valid either
    // way; this only makes sure the waiting path is what runs).
    std::thread::sleep(Duration::from_millis(200));
    fill_pattern(3, &mut w);
    w.seal().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        rx.try_recv().is_err(),
        "get returned before all its objects existed"
    );
    writer
        .put_with(
            b"later",
            &PutOptions {
                id: Some(not_yet),
                ..PutOptions::default()
            },
        )
        .unwrap();
    join_timeout("the waiting get", waiter, WAIT);
    d.stop();
}

type Created = (arca_client::StoreClient, arca_client::Result<ObjectId>);

/// Creates and seals a `size`-byte object on a new connection, on a thread;
/// the receiver hears when the create call returned.
fn create_in_thread(
    d: &Daemon,
    size: usize,
    seed: u64,
) -> (std::thread::JoinHandle<Created>, mpsc::Receiver<()>) {
    let socket = d.socket().to_path_buf();
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let c = arca_client::StoreClient::connect(socket).unwrap();
        let r = c.create(ObjectId::random(), size as u64, b"", true);
        tx.send(()).unwrap();
        let r = r.map(|mut w| {
            fill_pattern(seed, &mut w);
            w.seal().unwrap()
        });
        (c, r)
    });
    (handle, rx)
}

#[test]
fn a_waiting_create_succeeds_when_another_client_frees_memory() {
    // A long create timeout: the create must be woken by the release, not
    // give up first.
    let d = Daemon::start_with("16MiB", &["--create-timeout-ms", "60000"]);
    let holder = d.client();
    let block = 4 * MIB as usize;
    let primaries: Vec<ObjectId> = (0..3)
        .map(|i| holder.put(&common::pattern(i, block)).unwrap())
        .collect();
    let cached = holder
        .put_with(
            &common::pattern(3, block),
            &PutOptions {
                primary: false,
                ..PutOptions::default()
            },
        )
        .unwrap();
    // Full: three primaries and a cache entry pinned by a reader.
    let mut reading = Some(holder.get_one(cached, GET).unwrap());
    let mut keep = Vec::new();

    for (seed, how) in [(10, "drop the reader's buffer"), (11, "delete a primary")] {
        let (creator, returned) = create_in_thread(&d, block, seed);
        // Let the create park in the daemon (the test is valid either way).
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            returned.try_recv().is_err(),
            "the create returned while the store was full"
        );
        if seed == 10 {
            drop(reading.take());
        } else {
            assert!(holder.delete(primaries[0]).unwrap());
        }
        let (c, r) = join_timeout(how, creator, WAIT);
        let id = r.unwrap_or_else(|e| panic!("after we {how}, the create failed: {e}"));
        check_pattern(how, &c.get_one(id, GET).unwrap(), seed, block);
        assert!(!holder.contains(cached).unwrap(), "evicted to make room");
        // Keep the new object's primary pin: the store stays full.
        keep.push(c);
    }
    d.stop();
}

#[test]
fn reported_capacity_is_what_the_store_can_hold() {
    let d = Daemon::start("1048577");
    let c = d.client();
    assert_eq!(c.capacity(), common::totals(&c).capacity);
    let w = c.create(ObjectId::random(), c.capacity(), b"", false);
    w.expect("an object as large as the reported capacity fits")
        .seal()
        .unwrap();
    d.stop();
}
