//! End-to-end tests of what goes wrong with tasks and actors: errors and
//! panics and their propagation, workers killed with SIGKILL (retried or
//! not), cancellation, dead and restarted actors, unknown functions, and a
//! driver that exits without shutting down. Each scenario runs in a driver
//! process of its own with an embedded node (see `task_common`).

mod common;
mod task_common;

use std::time::Duration;

use arca::ObjectRef;
use task_common::*;

// ---------------------------------------------------------------------------
// Remote functions and actors

#[arca::remote]
fn fail_if(x: i64) -> Result<i64, String> {
    if x > 0 {
        Err(format!("bad input {x}"))
    } else {
        Ok(-x)
    }
}

#[arca::remote]
fn explode(what: String) -> i64 {
    panic!("explode: {what}")
}

/// Marks `started`, then waits (bounded) for flag `flag`; true if it came.
#[arca::remote]
fn block_on(started: String, flag: String) -> bool {
    touch(&started);
    wait_for(&flag, BLOCK_LIMIT)
}

/// The pid of the worker process that runs it.
#[arca::remote]
fn worker_pid(_i: u32) -> u32 {
    std::process::id()
}

/// `block_on` for the driver-exit tests: waits longer than those tests
/// wait for its worker to go, so a worker that outlives its driver shows.
#[arca::remote]
fn block_long(started: String) -> bool {
    touch(&started);
    wait_for("never", Duration::from_secs(90))
}

/// Adds a line to `log` on each attempt, then blocks like `block_on`.
#[arca::remote]
fn logged_block(log: String, flag: String) -> bool {
    append_line(&log, "attempt");
    wait_for(&flag, BLOCK_LIMIT)
}

/// Takes an argument (so it can wait for one), then marks that it ran.
#[arca::remote]
fn mark(_after: bool, name: String) -> i64 {
    touch(&name);
    1
}

/// Adds a line to `log`, then panics: an application error, not retried.
#[arca::remote]
fn panic_logged(log: String) -> i64 {
    append_line(&log, "attempt");
    panic!("logged panic")
}

/// Kills its own process on its first attempt, returns 42 on the next.
#[arca::remote]
fn die_once(log: String) -> i64 {
    append_line(&log, "attempt");
    if lines(&log).len() == 1 {
        kill_myself();
    }
    42
}

/// Kills its own process on every attempt.
#[arca::remote]
fn die_always(log: String) -> i64 {
    append_line(&log, "attempt");
    kill_myself()
}

#[derive(Debug)]
pub struct Counter {
    n: i64,
}

#[arca::actor]
impl Counter {
    fn new(n: i64) -> Self {
        Counter { n }
    }

    fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }

    fn get(&self) -> i64 {
        self.n
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn block(&self, started: String, flag: String) -> bool {
        touch(&started);
        wait_for(&flag, BLOCK_LIMIT)
    }

    fn die(&self) -> i64 {
        kill_myself()
    }

    fn fail(&self) -> Result<i64, String> {
        Err("method failed".into())
    }

    fn explode(&self) -> i64 {
        panic!("method exploded")
    }
}

/// An actor whose constructor fails for x > 0 and panics for x < 0.
#[derive(Debug)]
pub struct Fragile {
    x: i64,
}

#[arca::actor]
impl Fragile {
    fn new(x: i64) -> Result<Self, String> {
        if x < 0 {
            panic!("constructor exploded with {x}");
        }
        if x > 0 {
            return Err(format!("bad constructor argument {x}"));
        }
        Ok(Fragile { x })
    }

    fn get(&self) -> i64 {
        self.x
    }
}

/// An actor whose constructor leaves a marker.
#[derive(Debug)]
pub struct Noted;

#[arca::actor]
impl Noted {
    fn new(name: String) -> Self {
        touch(&name);
        Noted
    }

    fn ping(&self) -> i64 {
        1
    }
}

/// An actor whose constructor logs its attempt and kills its process.
#[derive(Debug)]
pub struct Doomed;

#[arca::actor]
impl Doomed {
    fn new(log: String) -> Self {
        append_line(&log, "attempt");
        kill_myself()
    }

    fn ping(&self) -> i64 {
        1
    }
}

// ---------------------------------------------------------------------------
// The tests

scenario_tests! {
    task_errors_and_panics,
    errors_propagate_through_dependents,
    worker_sigkill_retried,
    worker_killed_by_driver,
    cancel_queued_tasks,
    cancel_running_tasks,
    actor_method_errors,
    actor_killed,
    actor_process_dies,
    actor_restarts,
    actor_constructor_fails,
    unknown_function,
}

#[test]
#[ignore = "entry point of the driver and worker processes the other tests start"]
fn child_entry() {
    task_common::child_main(|name| match name {
        "exit_embedded" => exit_with_tasks_running(None),
        "exit_external" => exit_with_tasks_running(Some(file("session"))),
        "external_node" => external_node(),
        "external_squares" | "external_squares_2" => external_squares(),
        "external_put_and_wait" => external_put_and_wait(),
        "external_check_empty" => external_check_empty(),
        "rebuilt_old" | "rebuilt_new" => report_worker_pids(name),
        other => scenario(other),
    });
}

mod scenarios {
    use super::*;

    pub fn task_errors_and_panics() {
        init_default();
        assert_eq!(get(&fail_if::remote(0)), 0);

        // An Err: the function's name and the error's message.
        let r = fail_if::remote(5);
        match get_err(&r) {
            arca::Error::TaskError {
                function,
                message,
                backtrace,
            } => {
                assert_eq!(function, fail_if::NAME);
                assert!(message.contains("bad input 5"), "{message}");
                assert!(backtrace.is_empty(), "{backtrace}");
            }
            e => panic!("a task returning Err: {e:?}"),
        }
        // The same error on every get.
        let text = get_err(&r).to_string();
        assert!(
            text.contains(fail_if::NAME) && text.contains("bad input 5"),
            "{text}"
        );

        // A panic: "panicked", the message, and where.
        match get_err(&explode::remote(s("boom"))) {
            arca::Error::TaskError {
                function,
                message,
                backtrace,
            } => {
                assert_eq!(function, explode::NAME);
                assert!(message.contains("panicked"), "{message}");
                assert!(message.contains("explode: boom"), "{message}");
                assert!(!backtrace.trim().is_empty(), "no backtrace");
                assert!(backtrace.contains("tasks_failures.rs"), "{backtrace}");
            }
            e => panic!("a panicking task: {e:?}"),
        }

        // Errors are results like any other: ready for wait.
        let refs = [fail_if::remote(1), fail_if::remote(0)];
        let (ready, _) = arca::wait(&refs, 2, Some(WAIT)).unwrap();
        assert_eq!(ready.len(), 2);

        // The workers that ran them are fine.
        let st = arca::status().unwrap();
        assert!(st.tasks_failed >= 3, "{st:?}");
        let refs: Vec<_> = (0..8).map(square::remote).collect();
        assert_eq!(
            arca::get_many_timeout(&refs, GET).unwrap(),
            [0, 1, 4, 9, 16, 25, 36, 49]
        );
    }

    pub fn errors_propagate_through_dependents() {
        init_default();
        let a = fail_if::remote(7);
        let b = add::remote(&a, 1);
        let c = add::remote(&b, 1);
        let d = add::remote(2, &c);
        for (name, r) in [("a", &a), ("b", &b), ("c", &c), ("d", &d)] {
            match get_err(r) {
                arca::Error::TaskError {
                    function, message, ..
                } => {
                    assert_eq!(function, fail_if::NAME, "{name}");
                    assert!(message.contains("bad input 7"), "{name}: {message}");
                }
                e => panic!("{name}: {e:?}"),
            }
        }
        // A panic two levels down, next to a good argument.
        let p = add::remote(square::remote(2), explode::remote(s("deep")));
        let q = add::remote(&p, square::remote(3));
        match get_err(&q) {
            arca::Error::TaskError {
                function, message, ..
            } => {
                assert_eq!(function, explode::NAME);
                assert!(message.contains("explode: deep"), "{message}");
            }
            e => panic!("{e:?}"),
        }
        // A failed argument submitted after it failed.
        assert!(matches!(get_err(&a), arca::Error::TaskError { .. }));
        match get_err(&add::remote(&a, 0)) {
            arca::Error::TaskError { function, .. } => assert_eq!(function, fail_if::NAME),
            e => panic!("{e:?}"),
        }
        // Get of many with one failure fails with it.
        match arca::get_many_timeout(&[square::remote(1), b.clone()], GET) {
            Err(arca::Error::TaskError { function, .. }) => assert_eq!(function, fail_if::NAME),
            other => panic!("{other:?}"),
        }
    }

    pub fn worker_sigkill_retried() {
        init_default();
        // Killed on its first attempt, retried by default.
        assert_eq!(get(&die_once::remote(s("once"))), 42);
        assert_eq!(lines("once").len(), 2);

        // No retries: the crash is the result.
        match get_err(&die_always::options().max_retries(0).remote(s("never"))) {
            arca::Error::WorkerCrashed(m) => {
                assert!(m.contains(die_always::NAME), "{m}");
                assert!(m.contains("SIGKILL"), "{m}");
            }
            e => panic!("a task whose worker died, no retries: {e:?}"),
        }
        assert_eq!(lines("never").len(), 1);

        // Two retries: three attempts.
        let e = get_err(&die_always::options().max_retries(2).remote(s("twice")));
        assert!(matches!(e, arca::Error::WorkerCrashed(_)), "{e:?}");
        assert_eq!(lines("twice").len(), 3);

        // The default: 3 retries.
        let e = get_err(&die_always::remote(s("default")));
        assert!(matches!(e, arca::Error::WorkerCrashed(_)), "{e:?}");
        assert_eq!(
            lines("default").len(),
            1 + arca::DEFAULT_MAX_RETRIES as usize
        );

        // A panic is the task's own error: not retried.
        let e = get_err(&panic_logged::options().max_retries(3).remote(s("panics")));
        assert!(matches!(e, arca::Error::TaskError { .. }), "{e:?}");
        assert_eq!(lines("panics").len(), 1);

        // Dependents of a crashed task fail with its error.
        let dep = add::remote(die_always::options().max_retries(0).remote(s("dep")), 1);
        assert!(matches!(get_err(&dep), arca::Error::WorkerCrashed(_)));

        // The node replaced the dead workers.
        let refs: Vec<_> = (0..4).map(square::remote).collect();
        assert_eq!(arca::get_many_timeout(&refs, GET).unwrap(), [0, 1, 4, 9]);
    }

    pub fn worker_killed_by_driver() {
        init_default();
        // One retry left: killed while running, it runs again and finishes.
        let r = logged_block::options()
            .max_retries(1)
            .remote(s("k1"), s("go1"));
        common::wait_until("the first attempt", WAIT, || lines("k1").len() == 1);
        let pid = busy_worker(logged_block::NAME);
        sigkill(pid);
        common::wait_until("the retry", WAIT, || lines("k1").len() == 2);
        expect_gone(pid);
        touch("go1");
        assert!(get(&r));

        // No retries: killed while running, it fails.
        let r = logged_block::options()
            .max_retries(0)
            .remote(s("k2"), s("go2"));
        common::wait_until("the attempt", WAIT, || lines("k2").len() == 1);
        let pid = busy_worker(logged_block::NAME);
        sigkill(pid);
        match get_err(&r) {
            arca::Error::WorkerCrashed(m) => assert!(m.contains(&pid.to_string()), "{m}"),
            e => panic!("a task whose worker was killed, no retries: {e:?}"),
        }
        expect_gone(pid);
        let st = arca::status().unwrap();
        assert!(st.workers.iter().all(|w| w.pid != pid), "{st:?}");
        assert_eq!(get(&square::remote(5)), 25);
    }

    pub fn cancel_queued_tasks() {
        init_default();
        // Both CPUs busy.
        let b1 = block_on::remote(s("s1"), s("go"));
        let b2 = block_on::remote(s("s2"), s("go"));
        expect_marker("s1");
        expect_marker("s2");
        // Queued for a CPU, and waiting for an argument.
        let queued = mark::remote(true, s("queued-ran"));
        let waiting = mark::remote(&b1, s("waiting-ran"));
        let kept = mark::remote(true, s("kept-ran"));
        arca::cancel(&queued, false).unwrap();
        arca::cancel(&waiting, false).unwrap();
        for (what, r) in [("queued", &queued), ("waiting", &waiting)] {
            match get_err(r) {
                arca::Error::TaskCancelled(m) => assert!(m.contains(mark::NAME), "{what}: {m}"),
                e => panic!("cancelled {what} task: {e:?}"),
            }
        }
        touch("go");
        assert!(get(&b1) && get(&b2));
        assert_eq!(get(&kept), 1);
        // Run something after them, so a cancelled task that ran anyway would
        // have by now.
        assert_eq!(get(&mark::remote(true, s("after-ran"))), 1);
        assert!(exists("kept-ran") && exists("after-ran"));
        assert!(!exists("queued-ran"), "a cancelled queued task ran");
        assert!(!exists("waiting-ran"), "a cancelled waiting task ran");

        // Cancelling a finished task changes nothing.
        arca::cancel(&kept, true).unwrap();
        assert_eq!(get(&kept), 1);
        let st = arca::status().unwrap();
        assert_eq!(st.tasks_queued + st.tasks_running, 0, "{st:?}");
    }

    pub fn cancel_running_tasks() {
        init_default();
        // force: the worker is killed and the task is not retried.
        let r = block_on::remote(s("f"), s("never"));
        expect_marker("f");
        let pid = busy_worker(block_on::NAME);
        arca::cancel(&r, true).unwrap();
        match get_err(&r) {
            arca::Error::TaskCancelled(m) => assert!(m.contains(block_on::NAME), "{m}"),
            e => panic!("force-cancelled running task: {e:?}"),
        }
        expect_gone(pid);
        let st = arca::status().unwrap();
        assert!(st.workers.iter().all(|w| w.pid != pid), "{st:?}");

        // Without force: it runs to its end, its result is discarded, the
        // worker stays.
        let r = block_on::remote(s("n"), s("go"));
        expect_marker("n");
        let pid = busy_worker(block_on::NAME);
        arca::cancel(&r, false).unwrap();
        touch("go");
        match get_err(&r) {
            arca::Error::TaskCancelled(_) => {}
            e => panic!("cancelled running task: {e:?}"),
        }
        assert!(alive(pid), "a cancel without force killed the worker");

        // Actor calls: a queued one never runs; a running one, even with
        // force, is not interrupted, but its result is discarded.
        let c = Counter::remote(0);
        let pid = get(&c.pid());
        let running = c.block(s("ab"), s("go-ab"));
        let queued = c.incr(100);
        expect_marker("ab");
        arca::cancel(&queued, false).unwrap();
        arca::cancel(&running, true).unwrap();
        // The queued one fails at once, not when the running one ends.
        let e = get_err(&queued);
        assert!(matches!(e, arca::Error::TaskCancelled(_)), "{e:?}");
        let (done, _) =
            arca::wait(std::slice::from_ref(&running), 1, Some(Duration::ZERO)).unwrap();
        assert!(
            done.is_empty(),
            "the queued call failed only once the running one ended"
        );
        touch("go-ab");
        let e = get_err(&running);
        assert!(matches!(e, arca::Error::TaskCancelled(_)), "{e:?}");
        assert_eq!(get(&c.incr(1)), 1, "a cancelled call ran");
        assert_eq!(get(&c.pid()), pid);

        // The node runs what comes next.
        let refs: Vec<_> = (0..4).map(square::remote).collect();
        assert_eq!(arca::get_many_timeout(&refs, GET).unwrap(), [0, 1, 4, 9]);
    }

    pub fn actor_method_errors() {
        init_default();
        let c = Counter::remote(1);
        match get_err(&c.fail()) {
            arca::Error::TaskError {
                function, message, ..
            } => {
                assert!(function.ends_with("Counter::fail"), "{function}");
                assert!(message.contains("method failed"), "{message}");
            }
            e => panic!("{e:?}"),
        }
        match get_err(&c.explode()) {
            arca::Error::TaskError { message, .. } => {
                assert!(message.contains("method exploded"), "{message}")
            }
            e => panic!("{e:?}"),
        }
        // An error is not a death: the state is intact.
        assert_eq!(get(&c.incr(1)), 2);
    }

    pub fn actor_killed() {
        init_default();
        let c = Counter::remote(0);
        assert_eq!(get(&c.incr(1)), 1);
        let pid = get(&c.pid());
        let running = c.block(s("a"), s("never"));
        let queued: Vec<_> = (0..3).map(|_| c.incr(1)).collect();
        expect_marker("a");
        arca::kill(c.handle()).unwrap();
        let e = get_err(&running);
        assert!(
            matches!(e, arca::Error::ActorDied(_)),
            "running call: {e:?}"
        );
        for r in &queued {
            let e = get_err(r);
            assert!(matches!(e, arca::Error::ActorDied(_)), "queued call: {e:?}");
        }
        match get_err(&c.incr(1)) {
            arca::Error::ActorDied(m) => assert!(m.contains("kill"), "{m}"),
            e => panic!("call after kill: {e:?}"),
        }
        expect_gone(pid);

        // kill means no restart, whatever max_restarts says.
        let c = Counter::options().max_restarts(1).remote(0);
        let pid = get(&c.pid());
        arca::kill(c.handle()).unwrap();
        expect_gone(pid);
        let e = get_err(&c.get());
        assert!(matches!(e, arca::Error::ActorDied(_)), "{e:?}");

        // Killed before it was created (its CPUs are busy): it never is.
        let b1 = block_on::remote(s("b1"), s("go-b"));
        let b2 = block_on::remote(s("b2"), s("go-b"));
        expect_marker("b1");
        expect_marker("b2");
        let n = Noted::options().num_cpus(2.0).remote(s("noted"));
        let call = n.ping();
        arca::kill(n.handle()).unwrap();
        let e = get_err(&call);
        assert!(matches!(e, arca::Error::ActorDied(_)), "{e:?}");
        touch("go-b");
        assert!(get(&b1) && get(&b2));
        assert_eq!(get(&square::options().num_cpus(2.0).remote(2)), 4);
        assert!(!exists("noted"), "a killed actor was created");
        let st = arca::status().unwrap();
        assert_eq!(st.actors_alive, 0, "{st:?}");
    }

    pub fn actor_process_dies() {
        init_default();
        let c = Counter::remote(5);
        let pid = get(&c.pid());
        let died = c.die();
        let after = c.get();
        match get_err(&died) {
            arca::Error::ActorDied(m) => assert!(m.contains("SIGKILL"), "{m}"),
            e => panic!("the call that killed the actor: {e:?}"),
        }
        let e = get_err(&after);
        assert!(matches!(e, arca::Error::ActorDied(_)), "queued call: {e:?}");
        let e = get_err(&c.incr(1));
        assert!(matches!(e, arca::Error::ActorDied(_)), "later call: {e:?}");
        expect_gone(pid);
        // Other actors and tasks go on.
        let d = Counter::remote(1);
        assert_eq!(get(&d.incr(1)), 2);
        assert_eq!(get(&square::remote(4)), 16);
    }

    pub fn actor_restarts() {
        init_default();
        let c = Counter::options().max_restarts(1).remote(10);
        assert_eq!(get(&c.incr(5)), 15);
        let pid = get(&c.pid());
        // The call that killed it fails; the next ones reach the new
        // process, whose state starts over from the constructor.
        let died = c.die();
        let after = c.get();
        let e = get_err(&died);
        assert!(matches!(e, arca::Error::ActorDied(_)), "{e:?}");
        assert_eq!(get(&after), 10);
        assert_eq!(get(&c.incr(1)), 11);
        let pid2 = get(&c.pid());
        assert_ne!(pid, pid2);
        expect_gone(pid);
        // Constructor arguments given by ref outlive the driver's ref for
        // the restart.
        let arg = arca::put(&30i64).unwrap();
        let r = Counter::options().max_restarts(1).remote(&arg);
        drop(arg);
        assert_eq!(get(&r.incr(1)), 31);
        assert!(matches!(get_err(&r.die()), arca::Error::ActorDied(_)));
        assert_eq!(get(&r.get()), 30);

        // No restarts left.
        let e = get_err(&c.die());
        assert!(matches!(e, arca::Error::ActorDied(_)), "{e:?}");
        let e = get_err(&c.get());
        assert!(matches!(e, arca::Error::ActorDied(_)), "{e:?}");
        expect_gone(pid2);
    }

    pub fn actor_constructor_fails() {
        init_default();
        let bad = Fragile::remote(3);
        match get_err(&bad.get()) {
            arca::Error::ActorDied(m) => assert!(m.contains("bad constructor argument 3"), "{m}"),
            e => panic!("call on an actor whose constructor failed: {e:?}"),
        }
        let e = get_err(&bad.get());
        assert!(matches!(e, arca::Error::ActorDied(_)), "{e:?}");
        let worse = Fragile::options().max_restarts(2).remote(-1);
        match get_err(&worse.get()) {
            arca::Error::ActorDied(m) => assert!(m.contains("constructor exploded"), "{m}"),
            e => panic!("call on an actor whose constructor panicked: {e:?}"),
        }
        // Its ready ref fails with the constructor's error.
        match get_err(&bad.handle().ready()) {
            arca::Error::TaskError {
                function, message, ..
            } => {
                assert!(function.ends_with("Fragile::new"), "{function}");
                assert!(message.contains("bad constructor argument 3"), "{message}");
            }
            arca::Error::ActorDied(m) => assert!(m.contains("bad constructor argument 3"), "{m}"),
            e => panic!("ready ref of an actor whose constructor failed: {e:?}"),
        }

        // A constructor whose process dies is restarted, up to max_restarts.
        let doomed = Doomed::options().max_restarts(2).remote(s("doomed"));
        let e = get_err(&doomed.ping());
        assert!(matches!(e, arca::Error::ActorDied(_)), "{e:?}");
        assert_eq!(lines("doomed").len(), 3);

        let good = Fragile::remote(0);
        get(&good.handle().ready());
        assert_eq!(get(&good.get()), 0);
        let st = arca::status().unwrap();
        assert_eq!(st.actors_alive, 1, "{st:?}");
    }

    pub fn unknown_function() {
        init_default();
        let opts = arca::TaskOptions::new("no::such::function");
        let ids =
            arca::__private::submit(&opts, arca::__private::ArgsBuilder::default(), 1).unwrap();
        let r: ObjectRef<i64> = arca::__private::returns(&ids, 0);
        match get_err(&r) {
            arca::Error::UnknownFunction(m) => assert!(m.contains("no::such::function"), "{m}"),
            e => panic!("a task naming no registered function: {e:?}"),
        }
        // A ref to an object the node never had: ObjectLost, not a hang.
        let id = arca::ObjectId::from_slice(&[7u8; 20]).unwrap();
        let bytes = arca::__private::encode(&id.as_bytes().as_slice())
            .unwrap()
            .into_bytes()
            .unwrap();
        let lost: ObjectRef<i64> = arca::__private::decode(&bytes).unwrap();
        let e = get_err(&lost);
        assert!(matches!(e, arca::Error::ObjectLost(_)), "{e:?}");
        let e = get_err(&add::remote(&lost, 1));
        assert!(matches!(e, arca::Error::ObjectLost(_)), "{e:?}");

        // Its dependents fail with it; the worker that got it is fine.
        let dep = add::remote(&r, 1);
        assert!(matches!(get_err(&dep), arca::Error::UnknownFunction(_)));
        assert_eq!(get(&square::remote(6)), 36);
    }
}

// ---------------------------------------------------------------------------
// A driver that exits without `arca::shutdown` while its tasks run

/// Driver: starts two long tasks (on an embedded node, or the node in
/// `address`), prints the pids of the workers running them once they run,
/// and exits without shutting down.
fn exit_with_tasks_running(address: Option<std::path::PathBuf>) {
    match address {
        None => init_default(),
        Some(a) => arca::init_with(arca::Config {
            temp_dir: Some(a),
            worker_args: entry_args(),
            ..Default::default()
        })
        .expect("connect to the external node"),
    }
    let refs = [block_long::remote(s("l1")), block_long::remote(s("l2"))];
    expect_marker("l1");
    expect_marker("l2");
    let mut pids = Vec::new();
    common::wait_until("both workers busy", WAIT, || {
        let st = arca::status().unwrap();
        pids = st
            .workers
            .iter()
            .filter(|w| w.state == "busy" && w.task == block_long::NAME)
            .map(|w| w.pid)
            .collect();
        pids.len() == 2
    });
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("worker-pids: {}", pids.join(" "));
    println!("{DONE}");
    std::mem::forget(refs);
    std::process::exit(0);
}

/// A node in its own process, serving `<dir>/session` until flag `stop`.
fn external_node() {
    let node = arca::scheduler::Node::start(arca::scheduler::NodeConfig {
        session_dir: file("session"),
        remove_session_dir: true,
        ..node(2.0)
    })
    .expect("start the node");
    touch("node-ready");
    assert!(wait_for("stop", DRIVER_LIMIT), "never told to stop");
    node.shutdown();
}

/// Driver: squares on the external node.
fn external_squares() {
    init_external();
    let refs: Vec<_> = (0..20).map(square::remote).collect();
    let squares: Vec<i64> = (0..20).map(|x| x * x).collect();
    assert_eq!(arca::get_many_timeout(&refs, GET).unwrap(), squares);
    let st = arca::status().unwrap();
    let pids: Vec<String> = st.workers.iter().map(|w| w.pid.to_string()).collect();
    println!("worker-pids: {}", pids.join(" "));
}

/// Connects a driver to the external node.
fn init_external() {
    arca::init_with(arca::Config {
        temp_dir: Some(file("session")),
        worker_args: entry_args(),
        ..Default::default()
    })
    .expect("connect to the external node");
}

/// Driver: holds objects (one in the store) and a running task, then waits
/// to be killed.
fn external_put_and_wait() {
    init_external();
    let big = arca::put(&common::pattern(1, 4 << 20)).unwrap();
    let small = arca::put(&1i64).unwrap();
    let task = block_long::remote(s("held"));
    expect_marker("held");
    let pid = busy_worker(block_long::NAME);
    println!("worker-pids: {pid}");
    touch("holding");
    std::thread::sleep(BLOCK_LIMIT);
    drop((big, small, task));
    panic!("not killed");
}

/// Driver: waits until the node holds no object and no store memory.
fn external_check_empty() {
    init_external();
    common::wait_until("the killed driver's objects to be freed", WAIT, || {
        let st = arca::status().unwrap();
        st.objects == 0 && st.store_used == 0 && st.tasks_running == 0
    });
}

/// Driver: runs tasks on the external node and prints the pids of the
/// workers that ran them; `rebuilt_old` then stays until flag `old-release`,
/// so that its job (and its pooled workers) outlive the next driver's run.
fn report_worker_pids(name: &str) {
    init_external();
    let refs: Vec<_> = (0..8).map(worker_pid::remote).collect();
    let pids: Vec<String> = arca::get_many_timeout(&refs, GET)
        .unwrap()
        .iter()
        .map(u32::to_string)
        .collect();
    println!("worker-pids: {}", pids.join(" "));
    if name == "rebuilt_old" {
        touch("old-ran");
        assert!(wait_for("old-release", DRIVER_LIMIT), "never released");
    }
}

/// The pids a driver printed after `worker-pids: `.
fn printed_pids(out: &str) -> std::collections::BTreeSet<u32> {
    out.lines()
        .find_map(|l| l.split_once("worker-pids: ").map(|(_, p)| p))
        .unwrap_or_else(|| panic!("no worker pids printed:\n{out}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// Starts the `external_node` scenario in `dir` and waits until it serves.
fn start_external_node(dir: &std::path::Path) -> Driver {
    let node = Driver::spawn_at(dir, "external_node");
    common::wait_until("the node to start", WAIT, || {
        dir.join("node-ready").exists()
    });
    node
}

/// Tells the external node to stop and checks that it exits cleanly.
fn stop_external_node(dir: &std::path::Path, mut node: Driver) {
    std::fs::write(dir.join("stop"), b"1").unwrap();
    let status = node.wait();
    assert!(
        status.success(),
        "node failed ({status})\n{}",
        node.output()
    );
}

/// Runs a driver that exits mid-task and returns the pids of the workers
/// that were running its tasks.
fn exited_driver_workers(d: &mut Driver) -> Vec<u32> {
    let status = d.wait();
    let out = d.stdout();
    assert!(status.success(), "driver failed ({status})\n{}", d.output());
    printed_pids(&out).into_iter().collect()
}

#[test]
fn driver_exit_embedded_leaves_no_workers() {
    let mut d = Driver::spawn("exit_embedded");
    let pids = exited_driver_workers(&mut d);
    let _reaper = Reaper(pids.clone());
    for pid in pids {
        expect_gone(pid);
    }
}

#[test]
fn driver_exit_external_node_leaves_no_workers() {
    let dir = common::TempDir::new();
    let node = start_external_node(dir.path());
    let mut d = Driver::spawn_at(dir.path(), "exit_external");
    let pids = exited_driver_workers(&mut d);
    let _reaper = Reaper(pids.clone());
    for pid in pids {
        expect_gone(pid);
    }
    // The node serves the next drivers, two at once, and ends the workers
    // once the last of them is gone.
    let a = Driver::spawn_at(dir.path(), "external_squares");
    let b = Driver::spawn_at(dir.path(), "external_squares_2");
    let mut pids = Vec::new();
    for d in [a, b] {
        pids.extend(printed_pids(&d.finish()));
    }
    let _reaper = Reaper(pids.clone());
    for pid in pids {
        expect_gone(pid);
    }
    // A driver killed while it holds objects and a running task: the node
    // frees them and ends the task's worker.
    let mut holder = Driver::spawn_at(dir.path(), "external_put_and_wait");
    common::wait_until("the driver to hold its objects", WAIT, || {
        dir.path().join("holding").exists()
    });
    let worker = *printed_pids(&holder.stdout())
        .first()
        .expect("the driver printed its worker");
    let _reaper2 = Reaper(vec![worker]);
    holder.kill();
    expect_gone(worker);
    Driver::spawn_at(dir.path(), "external_check_empty").finish();
    stop_external_node(dir.path(), node);
}

/// A program rebuilt under the same path while a run of the old build still
/// goes: the new run's tasks must not go to the old build's pooled workers,
/// which would run stale code.
#[test]
fn rebuilt_program_gets_its_own_workers() {
    let dir = common::TempDir::new();
    let me = std::env::current_exe().unwrap();
    let program = dir.path().join("program");
    let rebuilt = dir.path().join("program.next");
    std::fs::copy(&me, &program).unwrap();
    std::fs::copy(&me, &rebuilt).unwrap();
    let node = start_external_node(dir.path());
    let old = Driver::spawn_program(dir.path(), &program, "rebuilt_old");
    common::wait_until("the old build's tasks to run", WAIT, || {
        dir.path().join("old-ran").exists()
    });
    // The rebuild: a new file renamed over the old, as linkers write one.
    std::fs::rename(&rebuilt, &program).unwrap();
    let new_pids =
        printed_pids(&Driver::spawn_program(dir.path(), &program, "rebuilt_new").finish());
    std::fs::write(dir.path().join("old-release"), b"1").unwrap();
    let old_pids = printed_pids(&old.finish());
    assert!(
        old_pids.is_disjoint(&new_pids),
        "the rebuilt program ran tasks in the old build's workers: old {old_pids:?}, new {new_pids:?}"
    );
    stop_external_node(dir.path(), node);
}
