//! `--fallback-to-disk`: primary copies that memory cannot take, even after
//! spilling, are served from a memory-mapped file in the spill directory.

mod common;

use arca_client::{Error, ObjectId, PutOptions};
use common::{Daemon, GET, MIB, TempDir, pattern, totals};

const OBJECT: usize = 4 << 20;

#[test]
fn primary_copies_memory_cannot_take_go_to_the_fallback_file() {
    let spill = TempDir::new();
    // A spill quota smaller than one record: spilling stops at once, so every
    // primary put past memory must be served by the fallback file.
    let d = Daemon::start_with(
        "16MiB",
        &[
            "--spill-dir",
            spill.path().to_str().unwrap(),
            "--spill-max-bytes",
            "1MiB",
            "--fallback-to-disk",
            "--fallback-size",
            "64MiB",
            "--create-timeout-ms",
            "100",
        ],
    );
    let c = d.client();
    assert_eq!(c.capacity(), 16 * MIB, "the fallback file is not memory");
    let ids: Vec<ObjectId> = (0..10u64)
        .map(|i| c.put(&pattern(i, OBJECT)).unwrap())
        .collect();

    let t = totals(&c);
    assert!(t.allocated <= t.capacity);
    assert!(t.fallback_bytes >= 6 * OBJECT as u64, "{t:?}");
    assert_eq!(t.fallback_capacity, 64 * MIB);
    let listed = c.list().unwrap();
    let in_file: Vec<_> = listed
        .iter()
        .filter(|o| o.spill_file.ends_with("fallback"))
        .collect();
    assert!(in_file.len() >= 6, "{listed:?}");
    assert!(in_file.iter().all(|o| o.on_disk && !o.in_memory));

    // Every object reads back, in place: fallback objects too point into a
    // segment this client mapped.
    for (i, id) in ids.iter().enumerate() {
        let b = c.get_one(*id, GET).unwrap();
        assert!(b[..] == pattern(i as u64, OBJECT)[..], "object {i}");
        let addr = b.as_ptr() as usize;
        assert!(
            c.segments()
                .iter()
                .any(|m| m.address_range().contains(&addr))
        );
    }

    // A cache entry (no primary pin) is not worth a disk file: it still fails.
    let cache = PutOptions {
        primary: false,
        ..PutOptions::default()
    };
    match c.put_with(&pattern(99, OBJECT), &cache) {
        Err(Error::ObjectStoreFull(msg)) => assert!(msg.contains("raise --memory"), "{msg}"),
        other => panic!("expected ObjectStoreFull, got {other:?}"),
    }

    // Deleting gives the fallback space back, and it is used again.
    c.delete_many(&ids).unwrap();
    assert_eq!(totals(&c).fallback_bytes, 0);
    let again: Vec<ObjectId> = (0..10u64)
        .map(|i| c.put(&pattern(i + 10, OBJECT)).unwrap())
        .collect();
    for (i, id) in again.iter().enumerate() {
        assert!(c.get_one(*id, GET).unwrap()[..] == pattern(i as u64 + 10, OBJECT)[..]);
    }
    c.delete_many(&again).unwrap();
    drop(c);
    d.stop();
}

#[test]
fn fallback_needs_spilling() {
    let out = std::process::Command::new(common::arca_bin())
        .args([
            "store",
            "--socket",
            "/nonexistent/s.sock",
            "--memory",
            "16MiB",
            "--no-spill",
            "--fallback-to-disk",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
