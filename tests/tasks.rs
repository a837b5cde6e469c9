//! End-to-end tests of the task runtime: remote functions and their
//! arguments and results, `get` and `wait`, resources, actors, and reference
//! counting. Each test runs a scenario in a driver process of its own, with
//! an embedded node whose workers are this test binary (see `task_common`);
//! failures (task errors, crashes, cancellation, dead actors) are in
//! `tasks_failures.rs`.

mod common;
mod task_common;

use std::time::{Duration, Instant};

use arca::ObjectRef;
use common::{check_pattern, pattern};
use task_common::*;

// ---------------------------------------------------------------------------
// Remote functions and actors (registered in this binary, so its workers
// find them)

/// Its `Vec` result can be split into one ObjectRef per element.
#[arca::remote]
fn words(s: String) -> Vec<String> {
    s.split(' ').map(String::from).collect()
}

#[arca::remote]
fn len_plus(s: String, n: usize) -> usize {
    s.len() + n
}

#[arca::remote(num_returns = 2)]
fn divmod(a: i64, b: i64) -> (i64, i64) {
    (a / b, a % b)
}

#[arca::remote]
fn make_pattern(seed: u64, len: usize) -> Vec<u8> {
    pattern(seed, len)
}

#[arca::remote]
fn is_pattern(data: Vec<u8>, seed: u64) -> bool {
    data == pattern(seed, data.len())
}

/// A buffer made in a worker: large ones go to the store as they are.
#[arca::remote]
fn make_buffer(seed: u64, len: usize) -> arca::Buffer {
    pattern(seed, len).into()
}

/// Checks a buffer argument in place; says whether it was read from
/// shared memory rather than copied.
#[arca::remote]
fn buffer_in_place(b: arca::Buffer, seed: u64) -> (bool, bool) {
    let c = arca::store_client().unwrap();
    (
        b[..] == pattern(seed, b.len())[..],
        common::in_segments(&c, b.as_ptr(), b.len()),
    )
}

/// Sums an Arrow column in a worker.
#[arca::remote]
fn arrow_sum(b: arca::ArrowBatch) -> i64 {
    use arrow_array::Array;
    let col = b
        .column(0)
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap();
    col.values().iter().sum()
}

/// Returns references to two tasks it submits.
#[arca::remote]
fn nested_adds(x: i64) -> Vec<ObjectRef<i64>> {
    vec![add::remote(x, 1), add::remote(x, 2)]
}

/// Returns a reference to a large result.
#[arca::remote]
fn nested_big(seed: u64) -> Vec<ObjectRef<Vec<u8>>> {
    vec![make_pattern::remote(seed, 300 << 10)]
}

/// Returns references to two tasks it waited for: they are finished (and
/// held only by this worker) when it returns.
#[arca::remote]
fn nested_finished(x: i64) -> Vec<ObjectRef<i64>> {
    let refs = vec![add::remote(x, 1), add::remote(x, 2)];
    let (ready, _) = arca::wait(&refs, 2, Some(BLOCK_LIMIT)).expect("wait in a task");
    assert_eq!(ready.len(), 2, "the nested tasks did not finish");
    refs
}

/// Returns the references to large objects it was given.
#[arca::remote]
fn passthrough_big(refs: Vec<ObjectRef<Vec<u8>>>) -> Vec<ObjectRef<Vec<u8>>> {
    refs
}

/// Puts a large value and returns its reference.
#[arca::remote]
fn put_in_task(seed: u64) -> ObjectRef<Vec<u8>> {
    arca::put(&pattern(seed, 300 << 10)).expect("put in a task")
}

/// Sums the values behind references passed inside a value.
#[arca::remote]
fn sum_refs(refs: Vec<ObjectRef<i64>>) -> i64 {
    arca::get_many_timeout(&refs, GET)
        .expect("get in a task")
        .iter()
        .sum()
}

/// Marks `started`, then waits (bounded) for flag `flag`; true if it came.
#[arca::remote]
fn block_on(started: String, flag: String) -> bool {
    touch(&started);
    wait_for(&flag, BLOCK_LIMIT)
}

/// `block_on` that then checks its (large) argument.
#[arca::remote]
fn check_after(data: Vec<u8>, seed: u64, started: String, flag: String) -> bool {
    touch(&started);
    wait_for(&flag, BLOCK_LIMIT) && data == pattern(seed, data.len())
}

/// Checks its (large) argument once `gate` (another task's result) is ready.
#[arca::remote]
fn check_gated(gate: bool, data: Vec<u8>, seed: u64) -> bool {
    gate && data == pattern(seed, data.len())
}

/// `block_on` that only then reads the object behind a nested reference.
#[arca::remote]
fn deref_after(refs: Vec<ObjectRef<Vec<u8>>>, seed: u64, started: String, flag: String) -> bool {
    touch(&started);
    if !wait_for(&flag, BLOCK_LIMIT) {
        return false;
    }
    let data = arca::get_timeout(&refs[0], GET).expect("get in a task");
    data == pattern(seed, data.len())
}

/// Runs in a group: marks itself started, waits (bounded) until `barrier`
/// members of `group` have started, holds for `hold_ms`, and returns its
/// interval on the shared monotonic clock and whether the barrier was met.
#[arca::remote]
fn span(group: String, barrier: usize, hold_ms: u64) -> (u64, u64, bool) {
    let start = monotonic_ns();
    touch(&format!("{group}-{}-{start}", std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut met = false;
    while Instant::now() < deadline {
        if count_markers(&format!("{group}-")) >= barrier {
            met = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(hold_ms));
    (start, monotonic_ns(), met)
}

/// Counts down to 0 through nested tasks, each blocked in `get` on the next.
/// Waits for subtasks from `n` threads at once, on the worker's one connection.
#[arca::remote]
fn squares_from_threads(n: i64) -> i64 {
    let threads: Vec<_> = (0..n)
        .map(|x| {
            std::thread::spawn(move || {
                arca::get_timeout(&square::remote(x), GET).expect("get from a task's thread")
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

#[arca::remote]
fn depth(n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    arca::get_timeout(&depth::remote(n - 1), GET).expect("nested get") + 1
}

#[arca::remote]
fn nothing() {}

#[arca::remote]
fn forty_two() -> i64 {
    42
}

/// Marks `started`, waits (bounded) for `flag`, returns `x`.
#[arca::remote]
fn slow_value(x: i64, started: String, flag: String) -> i64 {
    touch(&started);
    wait_for(&flag, BLOCK_LIMIT);
    x
}

/// Creates an actor, waits until it answers, and returns its handle.
#[arca::remote]
fn make_counter(n: i64) -> CounterHandle {
    let c = Counter::remote(n);
    arca::get_timeout(&c.get(), GET).expect("new actor answers");
    c
}

/// Returns the references it was given.
#[arca::remote]
fn passthrough(refs: Vec<ObjectRef<i64>>) -> Vec<ObjectRef<i64>> {
    refs
}

/// Marks `started`, waits (bounded) for `flag`, then returns a large value.
#[arca::remote]
fn big_after(seed: u64, started: String, flag: String) -> Vec<u8> {
    touch(&started);
    wait_for(&flag, BLOCK_LIMIT);
    pattern(seed, 1 << 20)
}

/// Calls an actor through a handle it was passed.
#[arca::remote]
fn bump(counter: CounterHandle, by: i64) -> i64 {
    arca::get_timeout(&counter.incr(by), GET).expect("actor call from a task")
}

#[derive(Debug)]
pub struct Counter {
    n: i64,
    log: Vec<i64>,
}

#[arca::actor]
impl Counter {
    fn new(n: i64) -> Self {
        Counter { n, log: Vec::new() }
    }

    fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }

    fn get(&self) -> i64 {
        self.n
    }

    /// Adds another actor's count, read through a handle it was passed.
    fn add_from(&mut self, other: CounterHandle) -> i64 {
        self.n += arca::get_timeout(&other.get(), GET).expect("actor call from an actor");
        self.n
    }

    fn push(&mut self, x: i64) -> usize {
        self.log.push(x);
        self.log.len()
    }

    fn log(&self) -> Vec<i64> {
        self.log.clone()
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }

    /// The count and a log of `len` bytes: two ObjectRefs, the second too
    /// big to travel inline.
    #[arca::method(num_returns = 2)]
    fn count_and_bytes(&self, len: usize) -> (i64, Vec<u8>) {
        (self.n, common::pattern(7, len))
    }

    /// Runs a task from inside the actor and waits for it.
    fn square_via_task(&self, x: i64) -> i64 {
        arca::get_timeout(&square::remote(x), GET).expect("task from an actor")
    }
}

// ---------------------------------------------------------------------------
// The tests

scenario_tests! {
    // Tasks, arguments, results.
    squares_args_chains_and_tuples,
    large_results_and_puts,
    nested_refs,
    nested_tasks_blocked_in_get,
    init_twice_and_again_after_shutdown,
    buffers_and_arrow_zero_copy,
    // get and wait.
    get_timeout_and_wait,
    // Resources.
    cpu_limit,
    fractional_cpus,
    custom_resources,
    unschedulable,
    // Actors.
    actor_state_order_and_handles,
    // Reference counting, and the store's limits.
    refs_freed_after_drop,
    large_object_deleted_from_store,
    large_result_dropped_before_it_is_made,
    nested_object_kept_alive,
    argument_kept_alive_while_task_runs,
    no_leak_after_many_objects,
    objects_larger_than_store,
    results_spilled_and_read_back,
    // Found as bugs by these tests, fixed since.
    nested_refs_from_tasks,
    put_in_task_returned_by_ref,
    actor_returned_from_task,
    ref_moved_into_value_arg,
    actor_handle_moved_into_task,
    cancelled_large_result_leaves_store,
    get_timeout_names_the_missing_object,
    threads_submit_while_another_waits,
    threads_call_concurrently,
}

#[test]
#[ignore = "entry point of the driver and worker processes the other tests start"]
fn child_entry() {
    task_common::child_main(scenario);
}

#[test]
fn max_overlap_counts_intervals() {
    assert_eq!(max_overlap(&[]), 0);
    assert_eq!(max_overlap(&[(0, 10), (10, 20)]), 1);
    assert_eq!(max_overlap(&[(0, 10), (5, 20), (6, 7), (30, 40)]), 3);
}

mod scenarios {
    use super::*;

    pub fn squares_args_chains_and_tuples() {
        init_default();
        let refs: Vec<_> = (0..16).map(square::remote).collect();
        let squares: Vec<i64> = (0..16).map(|x| x * x).collect();
        assert_eq!(arca::get_many_timeout(&refs, GET).unwrap(), squares);

        // Arguments as values, borrowed refs and owned refs, from tasks and puts.
        let a = add::remote(1, 2);
        let p = arca::put(&100i64).unwrap();
        let b = add::remote(&a, &p);
        let c = add::remote(a, 1000);
        let d = add::remote(b.clone(), p);
        assert_eq!(get(&b), 103);
        assert_eq!(get(&c), 1003);
        assert_eq!(get(&d), 203);

        // A chain of dependencies, submitted before any of it ran.
        let mut x = arca::put(&0i64).unwrap();
        for _ in 0..25 {
            x = add::remote(x, 1);
        }
        assert_eq!(get(&x), 25);

        // Two results, and those results as the next call's arguments.
        let (q, r) = divmod::remote(17, 5);
        assert_eq!((get(&q), get(&r)), (3, 2));
        let (q2, r2) = divmod::remote(&q, &r);
        assert_eq!((get(&q2), get(&r2)), (1, 1));

        // num_returns chosen at call time, for a function returning a Vec.
        let parts = words::options()
            .num_returns(3)
            .remote("a bb ccc".to_string());
        assert_eq!(parts.len(), 3);
        assert_eq!(get(&parts[2]), "ccc");
        assert_eq!(get(&len_plus::remote(&parts[1], 1)), 3);
        let one = words::options().num_returns(1).remote("a".to_string());
        assert_eq!(get(&one[0]), "a");
        assert!(
            words::options()
                .num_returns(0)
                .remote("".to_string())
                .is_empty()
        );
        assert_eq!(get(&words::remote("x y".to_string())), ["x", "y"]);

        // Getting the same ref twice, and many refs at once in any order.
        assert_eq!(get(&q), 3);
        let mixed = [r2.clone(), q.clone(), r.clone(), q2.clone()];
        assert_eq!(arca::get_many_timeout(&mixed, GET).unwrap(), [1, 3, 2, 1]);

        // No arguments, no result; the same ref twice in one get.
        get(&nothing::remote());
        let f = forty_two::remote();
        assert_eq!(
            arca::get_many_timeout(&[f.clone(), f.clone(), f], GET).unwrap(),
            [42; 3]
        );
        let (ready, not_ready) = arca::wait(&[q.clone(), q.clone()], 2, Some(WAIT)).unwrap();
        assert_eq!((ready.len(), not_ready.len()), (2, 0));

        let st = arca::status().unwrap();
        assert_eq!(st.tasks_queued, 0, "{st:?}");
        assert_eq!(st.tasks_running, 0, "{st:?}");
        assert_eq!(st.tasks_failed, 0, "{st:?}");
        assert!(st.tasks_finished >= 16 + 4 + 25 + 2, "{st:?}");
        // A Vec of the wrong length for num_returns: every ref has the error.
        for r in words::options().num_returns(2).remote("a b c".to_string()) {
            match get_err(&r) {
                arca::Error::TaskError { message, .. } => {
                    assert!(message.contains("num_returns(2)"), "{message}")
                }
                e => panic!("3 values for num_returns(2): {e:?}"),
            }
        }
    }

    pub fn large_results_and_puts() {
        init_default();
        let store = arca::store_client().unwrap();
        let len = 300 << 10;

        // A large result goes through the store.
        let r = make_pattern::remote(7u64, len);
        check_pattern("large task result", &get(&r), 7, len);
        let e = memory_entry(r.id()).expect("the large result is known");
        assert_eq!(e.state, "stored", "{e:?}");
        assert!(e.size >= len as u64, "{e:?}");
        assert!(store.contains(r.id()).unwrap());
        // ... and as another task's argument.
        assert!(get(&is_pattern::remote(&r, 7u64)));

        // A large put, read by a task.
        let p = arca::put(&pattern(9, 1 << 20)).unwrap();
        let e = memory_entry(p.id()).expect("the large put is known");
        assert_eq!(e.state, "stored", "{e:?}");
        assert!(store.contains(p.id()).unwrap());
        assert!(get(&is_pattern::remote(&p, 9u64)));
        check_pattern("large put", &get(&p), 9, 1 << 20);

        // A large value argument (stored on the way).
        assert!(get(&is_pattern::remote(pattern(11, 200 << 10), 11u64)));

        // Small values stay inline, in the node.
        let small = arca::put(&vec![1u8; 100]).unwrap();
        let e = memory_entry(small.id()).expect("the small put is known");
        assert_eq!(e.state, "inline", "{e:?}");
        assert!(!store.contains(small.id()).unwrap());
        assert_eq!(get(&small), vec![1u8; 100]);
    }

    pub fn nested_refs() {
        init_default();
        // A ref to a large object, returned by the task it was given to.
        let big = arca::put(&pattern(3, 300 << 10)).unwrap();
        let outer = passthrough_big::remote(vec![big.clone()]);
        drop(big);
        let inner = get(&outer);
        check_pattern("nested large object", &get(&inner[0]), 3, 300 << 10);

        // Refs nested in a put, and passed inside a value to a task.
        let a = arca::put(&1i64).unwrap();
        let b = square::remote(4);
        let holder = arca::put(&vec![a.clone(), b.clone()]).unwrap();
        let got: Vec<ObjectRef<i64>> = get(&holder);
        assert_eq!(got, [a.clone(), b.clone()]);
        assert_eq!(arca::get_many_timeout(&got, GET).unwrap(), [1, 16]);
        assert_eq!(get(&sum_refs::remote(vec![a.clone(), b.clone()])), 17);
        assert_eq!(get(&sum_refs::remote(get(&outer_refs(&a, &b)))), 17);

        // Refs a task got and returned, after the driver dropped its own.
        let c = arca::put(&2i64).unwrap();
        let back = passthrough::remote(vec![c.clone(), b.clone()]);
        let c_id = c.id();
        drop(c);
        let got = get(&back);
        drop(back);
        assert_eq!(got[0].id(), c_id);
        assert_eq!(arca::get_many_timeout(&got, GET).unwrap(), [2, 16]);
    }

    /// A put holding `[a, b]`, as a ref to a `Vec` of refs.
    fn outer_refs(
        a: &ObjectRef<i64>,
        b: &ObjectRef<i64>,
    ) -> ObjectRef<ObjectRef<Vec<ObjectRef<i64>>>> {
        let inner = arca::put(&vec![a.clone(), b.clone()]).unwrap();
        arca::put(&inner).unwrap()
    }

    pub fn nested_refs_from_tasks() {
        init_default();
        // Refs to tasks a task submitted and did not wait for: a race
        // between those tasks finishing and the outer result arriving.
        for i in 0..50 {
            let outer = nested_adds::remote(i);
            let inner = get(&outer);
            assert_eq!(
                arca::get_many_timeout(&inner, GET)
                    .unwrap_or_else(|e| panic!("refs returned by a task (round {i}): {e}")),
                [i + 1, i + 2]
            );
        }
        let outer = nested_big::remote(3u64);
        let inner = get(&outer);
        let data = arca::get_timeout(&inner[0], GET)
            .unwrap_or_else(|e| panic!("ref to a large result returned by a task: {e}"));
        check_pattern("nested large result", &data, 3, 300 << 10);
        // Refs to tasks it waited for: always lost.
        let outer = nested_finished::remote(5);
        let inner = get(&outer);
        assert_eq!(
            arca::get_many_timeout(&inner, GET)
                .unwrap_or_else(|e| panic!("refs returned by a task: {e}")),
            [6, 7]
        );
    }

    pub fn put_in_task_returned_by_ref() {
        init_default();
        let outer = put_in_task::remote(4u64);
        let inner = get(&outer);
        let data = arca::get_timeout(&inner, GET)
            .unwrap_or_else(|e| panic!("object put in a task and returned by ref: {e}"));
        check_pattern("object put in a task", &data, 4, 300 << 10);
    }

    pub fn ref_moved_into_value_arg() {
        init_default();
        let a = arca::put(&5i64).unwrap();
        // The driver gives its only ref to the task.
        let r = sum_refs::remote(vec![a]);
        assert_eq!(
            arca::get_timeout(&r, GET).unwrap_or_else(|e| panic!("task given a moved ref: {e}")),
            5
        );
    }

    pub fn actor_handle_moved_into_task() {
        init_default();
        let c = Counter::remote(0);
        assert_eq!(get(&c.get()), 0);
        // The driver gives its only handle to the task.
        let r = bump::remote(c, 1);
        assert_eq!(
            arca::get_timeout(&r, GET).unwrap_or_else(|e| panic!("task given a moved handle: {e}")),
            1
        );
    }

    pub fn actor_returned_from_task() {
        init_default();
        let c = get(&make_counter::remote(7));
        assert_eq!(
            arca::get_timeout(&c.incr(1), GET)
                .unwrap_or_else(|e| panic!("actor made by a task: {e}")),
            8
        );
    }

    pub fn nested_tasks_blocked_in_get() {
        // Six tasks blocked in get at once on 2 CPUs: each lends its CPU to
        // the task it waits for.
        init_default();
        assert_eq!(get(&depth::remote(6u32)), 6);
        let st = arca::status().unwrap();
        assert!(st.workers.len() >= 7, "{st:?}");
    }

    pub fn objects_larger_than_store() {
        let mut node = node(2.0);
        node.object_store_memory = 16 << 20;
        node.spill = false;
        init(node);
        match arca::put(&pattern(1, 32 << 20)) {
            Err(e) => println!("put larger than the store: {e}"),
            Ok(r) => panic!("a put larger than the store succeeded: {r:?}"),
        }
        match get_err(&make_pattern::remote(2u64, 32 << 20)) {
            arca::Error::TaskError {
                function, message, ..
            } => {
                assert_eq!(function, make_pattern::NAME);
                println!("result larger than the store: {message}");
            }
            e => panic!("a result larger than the store: {e:?}"),
        }
        // What fits still works.
        check_pattern(
            "result",
            &get(&make_pattern::remote(3u64, 4 << 20)),
            3,
            4 << 20,
        );
    }

    pub fn results_spilled_and_read_back() {
        let mut node = node(2.0);
        node.object_store_memory = 16 << 20;
        init(node);
        let len = 6 << 20;
        let refs: Vec<_> = (0..5u64).map(|i| make_pattern::remote(i, len)).collect();
        let (ready, _) = arca::wait(&refs, refs.len(), Some(WAIT)).unwrap();
        assert_eq!(ready.len(), refs.len());
        let st = arca::status().unwrap();
        assert!(st.store_spilled > 0, "nothing spilled: {st:?}");
        for (i, r) in refs.iter().enumerate() {
            check_pattern("spilled result", &get(r), i as u64, len);
        }
        // Read by tasks too.
        let checks: Vec<_> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| is_pattern::remote(r, i as u64))
            .collect();
        assert_eq!(arca::get_many_timeout(&checks, GET).unwrap(), [true; 5]);
    }

    pub fn init_twice_and_again_after_shutdown() {
        init_default();
        let old = square::remote(3);
        assert_eq!(get(&old), 9);
        match arca::init_with(arca::Config {
            embedded: Some(node(1.0)),
            worker_args: entry_args(),
            ..Default::default()
        }) {
            Err(arca::Error::AlreadyInitialized) => {}
            other => panic!("a second init: {other:?}"),
        }
        arca::shutdown();
        assert!(matches!(
            arca::get_timeout(&old, GET),
            Err(arca::Error::NotInitialized)
        ));
        assert!(matches!(arca::put(&1i64), Err(arca::Error::NotInitialized)));
        assert!(square::try_remote(2).is_err());
        // A new node, and the old ref dropped under it.
        init_default();
        assert_eq!(get(&square::remote(4)), 16);
        drop(old);
        assert_eq!(get(&square::remote(5)), 25);
        assert!(known_ids().len() <= 2, "{:?}", known_ids());
    }

    pub fn large_result_dropped_before_it_is_made() {
        init_default();
        let r = big_after::remote(1u64, s("s"), s("go"));
        let id = r.id();
        expect_marker("s");
        drop(r);
        touch("go");
        expect_freed("a result nobody holds", &[id]);
        common::wait_until("the store to be empty", WAIT, || {
            arca::status().unwrap().store_used == 0
        });
    }

    pub fn cancelled_large_result_leaves_store() {
        init_default();
        let r = big_after::remote(1u64, s("s"), s("go"));
        expect_marker("s");
        arca::cancel(&r, false).unwrap();
        touch("go");
        assert!(matches!(get_err(&r), arca::Error::TaskCancelled(_)));
        drop(r);
        common::wait_until("the store to be empty", WAIT, || {
            arca::status().unwrap().store_used == 0
        });
    }

    pub fn threads_submit_while_another_waits() {
        init_default();
        let blocked = block_on::remote(s("s"), s("go"));
        expect_marker("s");
        let waiter = std::thread::spawn(move || get(&blocked));
        // Let the waiter block in get.
        std::thread::sleep(Duration::from_millis(200));
        let other = std::thread::spawn(|| get(&square::remote(7)));
        let done = poll_until(Duration::from_secs(10), || other.is_finished());
        touch("go");
        assert!(
            done,
            "a thread could not submit and get while another was blocked in get"
        );
        assert_eq!(other.join().unwrap(), 49);
        assert!(common::join_timeout("the waiter", waiter, WAIT));
    }

    pub fn threads_call_concurrently() {
        init_default();
        // Driver threads whose replies interleave on one connection.
        let threads: Vec<_> = (0..4i64)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let x = t * 1000 + i;
                        assert_eq!(get(&square::remote(x)), x * x);
                        let (ready, _) = arca::wait(&[arca::put(&x).unwrap()], 1, GET).unwrap();
                        assert_eq!(get(&ready[0]), x);
                    }
                })
            })
            .collect();
        for t in threads {
            common::join_timeout("a calling thread", t, WAIT);
        }
        // Worker threads too, in tasks that outnumber the 2 CPUs while they
        // wait (each lends its CPU from its first get until its last).
        let refs: Vec<_> = (0..3).map(|_| squares_from_threads::remote(8)).collect();
        assert_eq!(arca::get_many_timeout(&refs, GET).unwrap(), vec![140; 3]);
    }

    pub fn get_timeout_names_the_missing_object() {
        init_default();
        let done = square::remote(2);
        assert_eq!(get(&done), 4);
        let blocked = block_on::remote(s("s"), s("go"));
        expect_marker("s");
        let e = arca::get_many_timeout(
            &[done.clone().cast::<bool>(), blocked.clone()],
            Some(Duration::from_millis(50)),
        );
        touch("go");
        match e {
            Err(arca::Error::GetTimeout { id, .. }) => assert_eq!(
                id,
                blocked.id(),
                "GetTimeout names {id}, which is ready, not {} which is not",
                blocked.id()
            ),
            other => panic!("{other:?}"),
        }
    }

    pub fn get_timeout_and_wait() {
        init_default();
        let blocked = block_on::remote(s("started"), s("release"));
        expect_marker("started");
        match arca::get_timeout(&blocked, Some(Duration::from_millis(100))) {
            Err(arca::Error::GetTimeout { id, .. }) => assert_eq!(id, blocked.id()),
            other => panic!("get of a running task with a timeout: {other:?}"),
        }
        match arca::get_many_timeout(std::slice::from_ref(&blocked), Some(Duration::ZERO)) {
            Err(arca::Error::GetTimeout { .. }) => {}
            other => panic!("get with a zero timeout: {other:?}"),
        }

        touch("open");
        let refs = vec![
            blocked.clone(),
            block_on::remote(s("a"), s("open")),
            block_on::remote(s("b"), s("open")),
        ];
        // Two of three finish: they are the ready ones, in the order given.
        let (ready, not_ready) = arca::wait(&refs, 2, Some(WAIT)).unwrap();
        assert_eq!(ready, refs[1..]);
        assert_eq!(not_ready, std::slice::from_ref(&blocked));
        // Asking for more than are ready: the timeout returns what is.
        let (ready, not_ready) = arca::wait(&refs, 3, Some(Duration::from_millis(100))).unwrap();
        assert_eq!(ready, refs[1..]);
        assert_eq!(not_ready, std::slice::from_ref(&blocked));
        // Asking for fewer: at most that many are returned ready.
        let (ready, not_ready) = arca::wait(&refs, 1, Some(WAIT)).unwrap();
        assert_eq!(ready.len(), 1);
        assert_ne!(ready[0], blocked);
        assert_eq!(not_ready.len(), 2);
        assert!(not_ready.contains(&blocked));
        // None, or more than were given, is an error, not a hang.
        assert!(arca::wait(&refs, 0, Some(WAIT)).is_err());
        match arca::wait(&refs, 4, Some(WAIT)) {
            Err(e) => assert!(e.to_string().contains("num_returns"), "{e}"),
            Ok(r) => panic!("wait for 4 of 3 refs returned {r:?}"),
        }

        // The ref that timed out still resolves once its task ends.
        touch("release");
        let (ready, not_ready) = arca::wait(&refs, 3, Some(WAIT)).unwrap();
        assert_eq!(ready, refs);
        assert!(not_ready.is_empty());
        assert!(get(&blocked));
        assert_eq!(arca::get_many_timeout(&refs, GET).unwrap(), [true; 3]);
    }

    /// Runs `n` [`span`] tasks with `opts` and returns their intervals,
    /// checking that each met its barrier.
    fn spans(
        n: usize,
        opts: impl Fn() -> span::Options,
        group: &str,
        barrier: usize,
    ) -> Vec<(u64, u64)> {
        let refs: Vec<_> = (0..n)
            .map(|_| opts().remote(s(group), barrier, 30u64))
            .collect();
        let got = arca::get_many_timeout(&refs, GET).unwrap();
        for (i, (_, _, met)) in got.iter().enumerate() {
            assert!(
                met,
                "{group}: task {i} never saw {barrier} tasks running at once"
            );
        }
        got.into_iter().map(|(s, e, _)| (s, e)).collect()
    }

    pub fn cpu_limit() {
        init_default();
        // 1-CPU tasks on 2 CPUs: two run at once (each waits to see the
        // other), never three.
        let iv = spans(6, span::options, "one", 2);
        assert!(max_overlap(&iv) <= 2, "more than 2 ran at once: {iv:?}");
        // 2-CPU tasks: one at a time.
        let iv = spans(3, || span::options().num_cpus(2.0), "two", 1);
        assert_eq!(max_overlap(&iv), 1, "2-CPU tasks overlapped: {iv:?}");
    }

    pub fn fractional_cpus() {
        init_default();
        // 0.5-CPU tasks on 2 CPUs: four run at once, never five.
        let iv = spans(5, || span::options().num_cpus(0.5), "half", 4);
        assert!(max_overlap(&iv) <= 4, "more than 4 ran at once: {iv:?}");
        // Tasks asking for no CPU are not held back by the busy ones.
        let blockers: Vec<_> = (0..2)
            .map(|i| block_on::remote(format!("busy{i}"), s("go")))
            .collect();
        expect_marker("busy0");
        expect_marker("busy1");
        spans(3, || span::options().num_cpus(0.0), "free", 3);
        touch("go");
        assert_eq!(arca::get_many_timeout(&blockers, GET).unwrap(), [true; 2]);
    }

    pub fn custom_resources() {
        let mut node = node(2.0);
        node.custom = vec![("Custom".into(), 1.0)];
        init(node);
        // One unit: tasks asking for all of it run one at a time.
        let iv = spans(3, || span::options().resources("Custom", 1.0), "whole", 1);
        assert_eq!(max_overlap(&iv), 1, "Custom=1 tasks overlapped: {iv:?}");
        // Halves: two run at once.
        let iv = spans(2, || span::options().resources("Custom", 0.5), "halves", 2);
        assert_eq!(max_overlap(&iv), 2, "{iv:?}");
        // More than there is.
        let e = get_err(&square::options().resources("Custom", 2.0).remote(2));
        assert!(matches!(e, arca::Error::Unschedulable(_)), "{e:?}");
        let e = get_err(&square::options().resources("Missing", 1.0).remote(2));
        assert!(matches!(e, arca::Error::Unschedulable(_)), "{e:?}");
    }

    pub fn unschedulable() {
        init_default();
        let cases = [
            ("3 CPUs", square::options().num_cpus(3.0)),
            ("a GPU", square::options().num_gpus(1.0)),
            ("1 PiB of memory", square::options().memory(1 << 50)),
            ("-1 CPU", square::options().num_cpus(-1.0)),
        ];
        for (what, opts) in cases {
            match arca::get_timeout(&opts.remote(3), GET) {
                Err(arca::Error::Unschedulable(m)) => assert!(
                    m.contains(square::NAME) || m.contains("at least 0"),
                    "{what}: {m}"
                ),
                other => panic!("a task asking for {what}: {other:?}"),
            }
        }
        // An actor asking for more than the node has fails too.
        let c = Counter::options().num_cpus(8.0).remote(0);
        let e = get_err(&c.get());
        assert!(
            matches!(e, arca::Error::Unschedulable(_) | arca::Error::ActorDied(_)),
            "{e:?}"
        );
        // The node still runs what fits.
        assert_eq!(get(&square::options().num_cpus(2.0).remote(3)), 9);
        let st = arca::status().unwrap();
        assert_eq!(st.tasks_queued, 0, "{st:?}");
    }

    pub fn actor_state_order_and_handles() {
        init_default();
        let c = Counter::remote(10);
        let incs: Vec<_> = (0..3).map(|_| c.incr(1)).collect();
        assert_eq!(arca::get_many_timeout(&incs, GET).unwrap(), [11, 12, 13]);
        assert_eq!(get(&c.get()), 13);

        // Many calls submitted before any ran, one at a time in call order.
        let pushes: Vec<_> = (0..200).map(|i| c.push(i)).collect();
        let log = c.log();
        assert_eq!(
            arca::get_many_timeout(&pushes, GET).unwrap(),
            (1..=200).collect::<Vec<usize>>()
        );
        assert_eq!(get(&log), (0..200).collect::<Vec<i64>>());

        // A ref as a call's argument.
        assert_eq!(get(&c.incr(square::remote(3))), 22);

        // A call waiting for its argument holds back the calls after it.
        let slow = slow_value::remote(-1, s("slow"), s("go-slow"));
        let first = c.push(&slow);
        let second = c.push(1000);
        expect_marker("slow");
        touch("go-slow");
        assert_eq!((get(&first), get(&second)), (201, 202));
        assert_eq!(get(&c.log())[200..], [-1, 1000]);

        // Another actor has its own state and process.
        let d = Counter::remote(0);
        assert_eq!(get(&d.incr(5)), 5);
        assert_eq!(get(&c.get()), 22);
        let (pc, pd) = (get(&c.pid()), get(&d.pid()));
        assert_ne!(pc, pd);
        let st = arca::status().unwrap();
        for pid in [pc, pd] {
            assert!(
                st.workers
                    .iter()
                    .any(|w| w.pid == pid && w.state == "actor"),
                "actor process {pid} not listed as one: {st:?}"
            );
        }
        assert_eq!(st.actors_alive, 2, "{st:?}");

        // A handle passed to another actor, which calls it.
        let e = Counter::remote(100);
        assert_eq!(get(&e.add_from(d.clone())), 105);
        drop(e);

        // Handles passed to tasks, which call the actor.
        let bumps: Vec<_> = (0..5).map(|_| bump::remote(c.clone(), 1)).collect();
        let mut seen = arca::get_many_timeout(&bumps, GET).unwrap();
        seen.sort();
        assert_eq!(seen, [23, 24, 25, 26, 27]);
        assert_eq!(get(&c.get()), 27);

        // An actor method running a task of its own.
        assert_eq!(get(&c.square_via_task(12)), 144);

        // A method with two returns, one stored and read from the store.
        let (n, bytes) = c.count_and_bytes(300 << 10);
        assert_eq!(get(&n), 27);
        check_pattern("actor's second return", &get(&bytes), 7, 300 << 10);

        // Dropping every handle ends the actor's process.
        drop(d);
        expect_gone(pd);
        assert_eq!(get(&c.get()), 27);
    }

    pub fn refs_freed_after_drop() {
        init_default();
        let puts: Vec<_> = (0..10i64).map(|i| arca::put(&i).unwrap()).collect();
        let tasks: Vec<_> = (0..5).map(square::remote).collect();
        arca::get_many_timeout(&tasks, GET).unwrap();
        let put_ids: Vec<_> = puts.iter().map(|r| r.id()).collect();
        let task_ids: Vec<_> = tasks.iter().map(|r| r.id()).collect();
        let known = known_ids();
        for id in put_ids.iter().chain(&task_ids) {
            assert!(known.contains(id), "object {id} unknown while referenced");
        }
        let e = memory_entry(put_ids[0]).unwrap();
        assert_eq!(e.ref_count, 1, "{e:?}");
        assert_eq!(e.holder_pids, [std::process::id()], "{e:?}");

        // A clone keeps its object; the others go.
        let kept = puts[0].clone();
        drop(puts);
        expect_freed("dropped puts", &put_ids[1..]);
        assert!(
            memory_entry(kept.id()).is_some(),
            "freed while a clone lives"
        );
        assert_eq!(get(&kept), 0);
        drop(kept);
        drop(tasks);
        expect_freed("dropped puts and results", &[put_ids, task_ids].concat());
        assert!(
            known_ids().is_empty(),
            "objects left after every ref was dropped"
        );
    }

    pub fn large_object_deleted_from_store() {
        init_default();
        let store = arca::store_client().unwrap();
        let p = arca::put(&pattern(1, 1 << 20)).unwrap();
        let r = make_pattern::remote(2u64, 300 << 10);
        check_pattern("large result", &get(&r), 2, 300 << 10);
        let ids = [p.id(), r.id()];
        for id in ids {
            assert!(store.contains(id).unwrap(), "{id} not in the store");
        }
        drop((p, r));
        expect_freed("large objects", &ids);
        common::wait_until("the store to delete the objects", WAIT, || {
            ids.iter().all(|id| !store.contains(*id).unwrap())
        });
    }

    pub fn nested_object_kept_alive() {
        init_default();
        let store = arca::store_client().unwrap();
        // Nested in a put.
        let inner = arca::put(&pattern(3, 300 << 10)).unwrap();
        let inner_id = inner.id();
        let outer = arca::put(&vec![inner.clone()]).unwrap();
        drop(inner);
        let e = memory_entry(inner_id).expect("nested object freed while its container lives");
        assert_eq!(e.contained_in, 1, "{e:?}");
        assert!(store.contains(inner_id).unwrap());
        let got: Vec<ObjectRef<Vec<u8>>> = get(&outer);
        let outer_id = outer.id();
        drop(outer);
        // The refs read from the container hold it now.
        check_pattern("nested object", &get(&got[0]), 3, 300 << 10);
        drop(got);
        expect_freed("container and nested object", &[outer_id, inner_id]);
        common::wait_until("the store to delete the nested object", WAIT, || {
            !store.contains(inner_id).unwrap()
        });

        // Nested in a task's result.
        let big = arca::put(&pattern(5, 300 << 10)).unwrap();
        let outer = passthrough_big::remote(vec![big.clone()]);
        drop(big);
        let got = get(&outer);
        let inner_id = got[0].id();
        drop(got);
        let e = memory_entry(inner_id).expect("nested result freed while its container lives");
        assert_eq!(e.contained_in, 1, "{e:?}");
        let got = get(&outer);
        check_pattern("nested result", &get(&got[0]), 5, 300 << 10);
        let outer_id = outer.id();
        drop((outer, got));
        expect_freed("result and nested result", &[outer_id, inner_id]);
        assert!(known_ids().is_empty(), "objects left: {:?}", known_ids());
    }

    pub fn argument_kept_alive_while_task_runs() {
        init_default();
        let store = arca::store_client().unwrap();
        let len = 300 << 10;

        // A ref argument, dropped by the driver while its task runs.
        let big = arca::put(&pattern(5, len)).unwrap();
        let id = big.id();
        let r = check_after::remote(&big, 5u64, s("s1"), s("go1"));
        expect_marker("s1");
        drop(big);
        let e = memory_entry(id).expect("argument freed while its task runs");
        assert_eq!(e.task_holds, 1, "{e:?}");
        assert!(store.contains(id).unwrap());
        touch("go1");
        assert!(get(&r));
        expect_freed("the argument after its task", &[id]);

        // A ref inside a value argument, read by the task only after the
        // driver dropped its own.
        let big = arca::put(&pattern(6, len)).unwrap();
        let id = big.id();
        let r = deref_after::remote(vec![big.clone()], 6u64, s("s2"), s("go2"));
        drop(big);
        expect_marker("s2");
        assert!(
            memory_entry(id).is_some(),
            "nested argument freed while its task runs"
        );
        touch("go2");
        assert!(get(&r));
        expect_freed("the nested argument after its task", &[id]);

        // A ref argument of a task still waiting for its other argument.
        let big = arca::put(&pattern(7, len)).unwrap();
        let id = big.id();
        let gate = block_on::remote(s("s3"), s("go3"));
        let r = check_gated::remote(&gate, &big, 7u64);
        drop(big);
        expect_marker("s3");
        let e = memory_entry(id).expect("argument freed before its task ran");
        assert_eq!(e.task_holds, 1, "{e:?}");
        touch("go3");
        assert!(get(&r));
        expect_freed("the argument after its task", &[id]);
    }

    pub fn buffers_and_arrow_zero_copy() {
        use arrow_array::{Array, Int64Array, RecordBatch};
        init_default();
        let store = arca::store_client().unwrap();

        // A large buffer is stored as it is and read back in place, by the
        // driver and by tasks.
        let len = 8 << 20;
        let r = arca::put(&arca::Buffer::from(pattern(3, len))).unwrap();
        let a: arca::Buffer = get(&r);
        let b: arca::Buffer = get(&r);
        check_pattern("buffer from the store", &a, 3, len);
        assert!(common::in_segments(&store, a.as_ptr(), len), "get copied");
        assert_eq!(a.as_ptr(), b.as_ptr(), "two gets, two copies");
        assert_eq!(get(&buffer_in_place::remote(&r, 3u64)), (true, true));
        let status = arca::status().unwrap();
        assert!(status.store_used >= len as u64, "{status:?}");
        // A buffer made by a task.
        let made = make_buffer::remote(4u64, 300 << 10);
        let m: arca::Buffer = get(&made);
        check_pattern("buffer from a task", &m, 4, 300 << 10);
        assert!(common::in_segments(&store, m.as_ptr(), m.len()));
        assert_eq!(get(&buffer_in_place::remote(made, 4u64)), (true, true));
        // Small ones travel inline, same API.
        let small = arca::put(&arca::Buffer::from(&b"hello"[..])).unwrap();
        assert_eq!(&get(&small)[..], b"hello");
        assert_eq!(
            get(&buffer_in_place::remote(
                arca::Buffer::from(pattern(5, 100)),
                5u64
            )),
            (true, false)
        );

        // Arrow: a record batch's columns come back pointing into the store.
        let n = 1_000_000i64;
        let batch = RecordBatch::try_from_iter([(
            "x",
            std::sync::Arc::new(Int64Array::from_iter_values(0..n)) as _,
        )])
        .unwrap();
        let r = arca::put(&arca::ArrowBatch(batch.clone())).unwrap();
        let back: arca::ArrowBatch = get(&r);
        assert_eq!(back.0, batch);
        let values = back.column(0).to_data().buffers()[0].clone();
        assert!(
            common::in_segments(&store, values.as_ptr(), values.len()),
            "the Arrow column was copied"
        );
        assert_eq!(get(&arrow_sum::remote(&r)), n * (n - 1) / 2);
        let tiny = RecordBatch::try_from_iter([(
            "x",
            std::sync::Arc::new(Int64Array::from(vec![1, 2, 3])) as _,
        )])
        .unwrap();
        assert_eq!(get(&arrow_sum::remote(arca::ArrowBatch(tiny))), 6);

        // Reading an object as the wrong kind is an error that says so.
        let buf_ref = arca::put(&arca::Buffer::from(vec![0u8; 1 << 20])).unwrap();
        let as_arrow: ObjectRef<arca::ArrowBatch> = buf_ref.cast();
        let e = arca::get_timeout(&as_arrow, GET).unwrap_err();
        assert!(e.to_string().contains("not an Arrow IPC stream"), "{e}");
    }

    pub fn no_leak_after_many_objects() {
        init_default();
        const PUTS: usize = 1_000_000;
        let t = Instant::now();
        for i in 0..PUTS {
            let r = arca::put(&(i as u64)).unwrap();
            drop(r);
        }
        println!("{PUTS} puts and drops in {:?}", t.elapsed());
        assert!(known_ids().is_empty(), "objects left after {PUTS} put+drop");

        // Values too big to travel inline live in the store until dropped.
        const STORED: usize = 1_000;
        let value = vec![7u8; 200 << 10];
        for _ in 0..STORED {
            drop(arca::put(&value).unwrap());
        }
        assert!(
            known_ids().is_empty(),
            "objects left after {STORED} stored put+drop"
        );
        common::wait_until("the store to be empty", WAIT, || {
            arca::status().unwrap().store_used == 0
        });

        const TASKS: usize = 2_000;
        let t = Instant::now();
        for batch in 0..(TASKS / 100) {
            let refs: Vec<_> = (0..100)
                .map(|i| square::remote((batch * 100 + i) as i64))
                .collect();
            arca::get_many_timeout(&refs, GET).unwrap();
        }
        for i in 0..50 {
            let (a, b) = (arca::put(&i).unwrap(), square::remote(i));
            let nested = passthrough::remote(vec![a.clone(), b.clone()]);
            drop((a, b));
            assert_eq!(
                arca::get_many_timeout(&get(&nested), GET).unwrap(),
                [i, i * i]
            );
        }
        println!("{TASKS} tasks and 50 with nested refs in {:?}", t.elapsed());
        common::wait_until("every object to be freed", WAIT, || known_ids().is_empty());
        common::wait_until("the store to be empty", WAIT, || {
            arca::status().unwrap().store_used == 0
        });
    }
}
