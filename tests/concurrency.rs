//! Many clients at once, in threads and in processes, each cycling through
//! put, get, check, delete while all of them read one shared object; at the
//! end the store is empty and every total is back to zero.

mod common;

use arca_client::{ObjectId, PutOptions, StoreClient};
use common::{
    Daemon, GET, KIB, WAIT, check_bytes, check_pattern, child_client, env, join_timeout,
    other_clients, pattern, totals,
};

const SHARED_VAR: &str = "ARCA_E2E_SHARED";
const WORKER_VAR: &str = "ARCA_E2E_WORKER";

const THREADS: usize = 32;
const CYCLES: usize = 30;
const PROCESSES: usize = 4;
const THREADS_PER_PROCESS: usize = 4;
const SHARED_LEN: usize = 256 * KIB as usize;

#[test]
#[ignore = "entry point of the child processes started by the other tests"]
fn child_entry() {
    common::child_main(|role| match role {
        "worker" => {
            let shared: ObjectId = env(SHARED_VAR).parse().unwrap();
            let base: u64 = env(WORKER_VAR).parse().unwrap();
            let threads: Vec<_> = (0..THREADS_PER_PROCESS as u64)
                .map(|t| {
                    let c = child_client();
                    std::thread::spawn(move || cycles(&c, shared, base + t))
                })
                .collect();
            for t in threads {
                join_timeout("a worker thread", t, WAIT);
            }
        }
        other => panic!("unknown role {other}"),
    });
}

/// Sizes from empty through inline to create + seal.
fn size(worker: u64, cycle: usize) -> usize {
    const SIZES: [usize; 6] = [0, 1, 100, 5000, 70_000, 300_000];
    SIZES[(worker as usize + cycle) % SIZES.len()]
}

/// One client's workload: put, get and check, check the shared object,
/// delete, make sure it is gone.
fn cycles(c: &StoreClient, shared: ObjectId, worker: u64) {
    let expected_shared = pattern(0, SHARED_LEN);
    for cycle in 0..CYCLES {
        let seed = worker * 1000 + cycle as u64;
        let len = size(worker, cycle);
        let primary = cycle % 2 == 0;
        let meta = seed.to_le_bytes();
        let id = c
            .put_with(
                &pattern(seed, len),
                &PutOptions {
                    id: None,
                    metadata: &meta,
                    primary,
                },
            )
            .unwrap();
        let got = c.get(&[id, shared], GET).unwrap();
        let mine = got[0].as_ref().expect("my object");
        check_pattern(&format!("worker {worker} cycle {cycle}"), mine, seed, len);
        assert_eq!(mine.metadata(), meta);
        let s = got[1].as_ref().expect("the shared object");
        check_bytes("the shared object", s, &expected_shared);
        // Delete while still holding it: freed when the buffer goes.
        assert_eq!(c.delete_many(&[id]).unwrap(), [true]);
        assert!(!c.contains(id).unwrap());
        drop(got);
        assert!(!c.delete(id).unwrap(), "deleted twice");
    }
}

#[test]
fn many_clients_cycle_concurrently_and_leave_the_store_empty() {
    let mut d = Daemon::start("64MiB");
    let main = d.client();
    let shared = main.put(&pattern(0, SHARED_LEN)).unwrap();

    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            d.child(
                "worker",
                &format!("worker{p}"),
                &[
                    (SHARED_VAR, shared.to_hex()),
                    (WORKER_VAR, (1000 + p * THREADS_PER_PROCESS).to_string()),
                ],
            )
        })
        .collect();
    let threads: Vec<_> = (0..THREADS as u64)
        .map(|t| {
            let socket = d.socket().to_path_buf();
            std::thread::spawn(move || {
                let c = StoreClient::connect(&socket).unwrap();
                cycles(&c, shared, t);
            })
        })
        .collect();
    for t in threads {
        join_timeout("a client thread", t, WAIT);
    }
    for c in children {
        c.wait_success();
    }

    d.assert_alive();
    common::wait_until("every other client to disconnect", WAIT, || {
        other_clients(&main.memory().unwrap(), &main).is_empty()
    });
    let t = totals(&main);
    let clients = THREADS + PROCESSES * THREADS_PER_PROCESS;
    assert_eq!(t.objects, 1, "only the shared object is left: {t:?}");
    assert_eq!(t.pinned, 0, "{t:?}");
    assert_eq!(t.creating, 0, "{t:?}");
    assert_eq!(t.created_objects, (1 + clients * CYCLES) as u64, "{t:?}");
    assert_eq!(t.evicted_objects, 0, "nothing needed evicting: {t:?}");
    check_pattern(
        "the shared object",
        &main.get_one(shared, GET).unwrap(),
        0,
        SHARED_LEN,
    );

    assert!(main.delete(shared).unwrap());
    let t = totals(&main);
    assert_eq!(
        (
            t.objects,
            t.allocated,
            t.pinned,
            t.primary,
            t.creating,
            t.evictable
        ),
        (0, 0, 0, 0, 0, 0),
        "the store is empty: {t:?}"
    );
    assert!(main.list().unwrap().is_empty());
    drop(main);
    d.stop();
}
