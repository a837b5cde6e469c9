//! Eviction on a real daemon: evictable (non-primary) objects go least
//! recently released first; objects held by a live buffer or a primary pin
//! are never evicted, and once only they remain, creates fail with an
//! `ObjectStoreFull` that names who holds the memory.

mod common;

use arca_client::{Error, ObjectId, PutOptions, StoreClient};
use common::{
    Daemon, GET, MIB, Spec, WAIT, child_client, child_file, decode_specs, encode_specs, env,
    signal_ready, totals, wait_flag,
};

const SPECS_VAR: &str = "ARCA_E2E_SPECS";
const HELD_VAR: &str = "ARCA_E2E_HELD";

#[test]
#[ignore = "entry point of the child processes started by the other tests"]
fn child_entry() {
    common::child_main(|role| match role {
        "holder" => holder(),
        other => panic!("unknown role {other}"),
    });
}

/// Puts a primary object and holds a buffer on one of the parent's
/// evictable objects until the parent raises the `done` flag.
fn holder() {
    let c = child_client();
    let p = decode_specs(&env(SPECS_VAR))[0];
    let opts = PutOptions {
        id: Some(p.id),
        metadata: &p.metadata(),
        primary: true,
    };
    c.put_with(&p.data(), &opts).unwrap();
    let h = decode_specs(&env(HELD_VAR))[0];
    let held = c.get_one(h.id, GET).unwrap();
    h.check(&held);
    signal_ready();
    wait_flag(&child_file("done"), WAIT);
    // Still intact after the parent's flood.
    h.check(&held);
}

fn put_evictable(c: &StoreClient, s: &Spec) {
    let opts = PutOptions {
        id: Some(s.id),
        metadata: &s.metadata(),
        primary: false,
    };
    c.put_with(&s.data(), &opts).unwrap();
}

/// Objects of exactly 1 MiB in a 16 MiB store: sixteen fill it exactly, and
/// since the store's eviction batch (5% of capacity) is below one object,
/// each new object evicts exactly one old one.
#[test]
fn evicts_least_recently_released_first_and_spares_touched_objects() {
    let d = Daemon::start("16MiB");
    let c = d.client();
    let size = MIB as usize;
    let old: Vec<Spec> = (0..16).map(|i| Spec::new(size, i)).collect();
    for s in &old {
        // No metadata, so sixteen blocks fill the store exactly.
        let opts = PutOptions {
            id: Some(s.id),
            metadata: &[],
            primary: false,
        };
        c.put_with(&s.data(), &opts).unwrap();
    }
    let t = totals(&c);
    assert_eq!(t.allocated, t.capacity, "sixteen objects fill the store");
    assert_eq!(t.evicted_objects, 0);

    // Touch 0 and 1 (get + drop): most recently released.
    for i in [0, 1] {
        drop(c.get_one(old[i].id, GET).unwrap());
    }
    // Hold 7 for the whole test: pinned, never evicted however old.
    let held = c.get_one(old[7].id, GET).unwrap();
    // Get 8 then 9, release 9 first: 9 is the less recently *released*.
    let b8 = c.get_one(old[8].id, GET).unwrap();
    let b9 = c.get_one(old[9].id, GET).unwrap();
    drop(b9);
    drop(b8);
    let order: Vec<usize> = [2, 3, 4, 5, 6, 10, 11, 12, 13, 14, 15, 0, 1, 9, 8].to_vec();

    let evicted = |c: &StoreClient| -> Vec<usize> {
        order
            .iter()
            .copied()
            .filter(|&i| !c.contains(old[i].id).unwrap())
            .collect()
    };
    let mut new = Vec::new();
    loop {
        let s = Spec::new(size, 100 + new.len() as u64);
        let opts = PutOptions {
            id: Some(s.id),
            metadata: &[],
            primary: false,
        };
        c.put_with(&s.data(), &opts).unwrap();
        new.push(s);
        let gone = evicted(&c);
        assert_eq!(
            gone,
            order[..gone.len()],
            "after {} new objects, the evicted ones are not the least recently released",
            new.len()
        );
        assert!(
            gone.len() >= new.len(),
            "{} new objects fit in a full store but only {} were evicted",
            new.len(),
            gone.len()
        );
        assert!(c.contains(old[7].id).unwrap(), "a held object was evicted");
        if new.len() == 3 {
            assert_eq!(gone, [2, 3, 4], "the untouched oldest go first");
            assert!(
                c.contains(old[0].id).unwrap() && c.contains(old[1].id).unwrap(),
                "objects touched by get + drop survive"
            );
        }
        if gone.contains(&9) {
            break;
        }
        assert!(new.len() < order.len(), "object 9 was never evicted");
    }
    assert_eq!(new.len(), 14, "one eviction per new object");
    assert!(
        c.contains(old[8].id).unwrap(),
        "8 was released after 9, so it outlives it"
    );
    old[8].check_data(&c.get_one(old[8].id, GET).unwrap());
    old[7].check_data(&held);
    for s in &new {
        assert!(c.contains(s.id).unwrap(), "new objects are the most recent");
    }
    let t = totals(&c);
    assert_eq!(t.evicted_objects, 14);
    assert_eq!(t.evicted_bytes, 14 * MIB);
    drop(held);
    d.stop();
}

#[test]
fn pinned_and_primary_objects_survive_a_flood_then_the_store_is_full() {
    let d = Daemon::start_with("16MiB", &["--create-timeout-ms", "200"]);
    let c = d.client();
    let h = Spec::new(4 * MIB as usize - 64, 1);
    put_evictable(&c, &h);
    let p = Spec::new(4 * MIB as usize - 64, 2);
    let mut holder = d.child(
        "holder",
        "holder",
        &[
            (SPECS_VAR, encode_specs(&[p])),
            (HELD_VAR, encode_specs(&[h])),
        ],
    );
    holder.wait_ready();
    let pid = holder.pid();

    // A flood of evictable objects, three times the store. Exactly 1 MiB
    // blocks (no metadata), so the free space never fragments.
    for i in 0..48 {
        let opts = PutOptions {
            primary: false,
            ..PutOptions::default()
        };
        c.put_with(&common::pattern(10 + i, MIB as usize), &opts)
            .unwrap();
    }
    let t = totals(&c);
    assert!(t.evicted_objects >= 40, "the flood evicted itself: {t:?}");
    for s in [&h, &p] {
        assert!(c.contains(s.id).unwrap(), "{} was evicted", s.id);
        s.check(&c.get_one(s.id, GET).unwrap());
    }
    let report = c.memory().unwrap();
    let info = |id: ObjectId| {
        report
            .objects
            .iter()
            .find(|o| o.id.as_ref() == id.as_bytes())
            .unwrap()
            .clone()
    };
    assert_eq!(info(p.id).primary_pid, pid, "the holder owns the primary");
    assert!(
        info(h.id).pins.iter().any(|pin| pin.pid == pid),
        "the holder pins its buffer: {:?}",
        info(h.id).pins
    );

    // Fill what is left with primary copies of our own until nothing is
    // evictable: then the store is full.
    let mut ours = Vec::new();
    let err = loop {
        match c.put(&vec![7u8; MIB as usize]) {
            Ok(id) => ours.push(id),
            Err(e) => break e,
        }
        assert!(
            ours.len() <= 16,
            "a 16 MiB store took {} MiB of primaries",
            ours.len()
        );
    };
    let Error::ObjectStoreFull(msg) = err else {
        panic!("expected ObjectStoreFull, got {err:?}");
    };
    assert!(
        msg.contains(&format!("pid {pid}")),
        "the message names the pinning process (pid {pid}): {msg}"
    );
    assert!(
        msg.contains("raise --memory"),
        "the message says what to do: {msg}"
    );
    let t = totals(&c);
    assert_eq!(t.evictable, 0, "full only once nothing is evictable: {t:?}");
    assert!(
        c.contains(h.id).unwrap() && c.contains(p.id).unwrap(),
        "still there when the store is full"
    );
    assert_eq!(
        ours.len(),
        8,
        "16 MiB - 8 MiB pinned = 8 primaries of 1 MiB"
    );

    // The holder goes: its pin and primary go with it, and the space with them.
    common::raise_flag(&d.file("done"));
    holder.wait_success();
    common::wait_until("the holder's pins to go", WAIT, || {
        let t = totals(&c);
        t.pinned == 0 && t.evictable >= 8 * MIB - 128
    });
    c.put(&vec![8u8; 4 * MIB as usize]).unwrap();
    let first = c.get_one(ours[0], GET).unwrap();
    assert!(first.iter().all(|&b| b == 7), "our primaries are intact");
    drop(first);
    d.stop();
}
