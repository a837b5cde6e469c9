//! Spill files follow live data: deleting most of the objects in a spill file
//! gets it compacted in the background, and the objects left are intact.

mod common;

use std::time::Duration;

use arca_client::{ObjectId, PutOptions};
use common::{Daemon, GET, KIB, TempDir, totals, wait_until};

const SIZE: usize = 32 * KIB as usize;
const COUNT: u8 = 200;

fn content(i: u8) -> Vec<u8> {
    (0..SIZE).map(|j| (j as u8).wrapping_mul(7) ^ i).collect()
}

#[test]
fn mostly_dead_spill_files_are_compacted() {
    let spill = TempDir::new();
    // A low threshold makes the daemon spill nearly everything it is given.
    let d = Daemon::start_with(
        "8MiB",
        &[
            "--spill-dir",
            spill.path().to_str().unwrap(),
            "--spill-threshold",
            "0.05",
        ],
    );
    let c = d.client();
    let ids: Vec<ObjectId> = (0..COUNT)
        .map(|i| {
            let id = ObjectId::from_bytes([i; 20]);
            c.put_with(
                &content(i),
                &PutOptions {
                    id: Some(id),
                    ..PutOptions::default()
                },
            )
            .unwrap()
        })
        .collect();
    wait_until("most objects spilled", Duration::from_secs(20), || {
        totals(&c).spilled_objects >= u64::from(COUNT) / 2
    });

    // Keep every tenth object: every spill file is now at most a fifth alive.
    let (keep, doomed): (Vec<_>, Vec<_>) = ids.iter().enumerate().partition(|(i, _)| i % 10 == 0);
    let gone: Vec<ObjectId> = doomed.into_iter().map(|(_, id)| *id).collect();
    assert!(c.delete_many(&gone).unwrap().iter().all(|&d| d));

    // A record is a 512-byte header sector and the body, padded to a sector.
    let record = 512 + SIZE as u64;
    wait_until(
        "spill files compacted to at most twice the live data",
        Duration::from_secs(20),
        || {
            let t = totals(&c);
            let on_disk = c.list().unwrap().iter().filter(|o| o.on_disk).count() as u64;
            t.spill_disk_bytes <= 2 * on_disk * record
        },
    );
    assert!(
        d.log().contains("compacted a mostly-dead spill file"),
        "{}",
        d.log()
    );
    let t = totals(&c);
    assert!(
        t.spill_disk_bytes > 0,
        "the kept objects' records are still on disk"
    );
    // The store unlinks a dead file after it updates its books (outside its
    // lock), so the directory may briefly hold one file more.
    let files = || -> u64 {
        std::fs::read_dir(&t.spill_dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != "lock")
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    wait_until(
        "the books to match the files",
        Duration::from_secs(20),
        || files() == totals(&c).spill_disk_bytes,
    );

    for (i, id) in keep {
        let b = c.get_one(*id, GET).unwrap();
        assert!(b[..] == content(i as u8)[..], "object {i} changed");
    }
    c.delete_many(&ids).unwrap();
    wait_until("spill files removed", Duration::from_secs(20), || {
        totals(&c).spill_disk_bytes == 0
    });
    drop(c);
    d.stop();
}
