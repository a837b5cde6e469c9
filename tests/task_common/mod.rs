//! Harness for the task-runtime end-to-end tests (`tests/tasks*.rs`).
//!
//! The runtime is process-global and its workers re-run the driver's own
//! program, so every scenario runs in a driver child process of its own: the
//! test re-executes this test binary as its `child_entry` test with
//! [`SCENARIO_VAR`] naming the scenario. That driver starts an embedded node
//! (store, scheduler, worker pool), whose workers are this binary once more,
//! run as `child_entry` with `ARCA_WORKER_ID` set: there `arca::init_with`
//! becomes the worker loop and never returns.
//!
//! ```ignore
//! #[test]
//! #[ignore = "entry point of the driver and worker processes the tests start"]
//! fn child_entry() {
//!     task_common::child_main(|scenario| match scenario { "squares" => squares(), _ => unreachable!() });
//! }
//! ```
//!
//! Nothing waits without a bound: the test kills a driver that outlives
//! [`DRIVER_LIMIT`], drivers `get` with [`GET`], and tasks that block wait
//! for a flag file with a deadline.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arca::scheduler::NodeConfig;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{TempDir, wait_timeout, wait_until};

/// Env var naming the scenario a driver child runs (also the role of the
/// other helper processes: an external node).
pub const SCENARIO_VAR: &str = "ARCA_TASKS_SCENARIO";
/// Env var with the test's private directory (marker and flag files),
/// inherited by the node's workers.
pub const DIR_VAR: &str = "ARCA_TASKS_DIR";
/// Printed by a driver whose scenario finished, so the test can tell it from
/// a libtest run that matched no test at all (which also exits 0).
pub const DONE: &str = "arca-tasks-scenario-done";

/// A driver child still running after this long has hung; it is killed.
pub const DRIVER_LIMIT: Duration = Duration::from_secs(90);
/// Bound on a `get` of a result that should arrive soon.
pub const GET: Option<Duration> = Some(Duration::from_secs(30));
/// Bound on any other wait (a marker appearing, a process ending).
pub const WAIT: Duration = Duration::from_secs(30);
/// How long a blocking task waits for its flag before it gives up (and
/// returns false), so that no worker outlives a failed test by much.
pub const BLOCK_LIMIT: Duration = Duration::from_secs(30);

/// The libtest arguments that run only `child_entry`.
pub fn entry_args() -> Vec<String> {
    [
        "--exact",
        "child_entry",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
    .map(String::from)
    .to_vec()
}

// ---------------------------------------------------------------------------
// In the child processes

/// The body of a binary's `child_entry` test: in a worker process it runs
/// tasks and never returns; in a driver it runs the scenario, shuts the
/// runtime down and prints [`DONE`]; in a normal test run it does nothing.
pub fn child_main(f: impl FnOnce(&str)) {
    if std::env::var_os("ARCA_WORKER_ID").is_some() {
        // In a worker `init_with` serves tasks until the node goes away and
        // exits the process; it only returns if it cannot connect.
        let e = arca::init_with(arca::Config::default());
        panic!("arca::init_with in a worker process returned: {e:?}");
    }
    let Ok(scenario) = std::env::var(SCENARIO_VAR) else {
        return;
    };
    f(&scenario);
    if arca::is_initialized() {
        expect_resources_back();
    }
    arca::shutdown();
    println!("{DONE} {scenario}");
}

/// In a driver whose tasks are all done: waits until the node has every
/// resource back (a leak in the accounting shows here).
pub fn expect_resources_back() {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = arca::status().expect("arca::status");
        let (total, available) = (st.total.clone().unwrap(), st.available.clone().unwrap());
        let back = total.amounts.iter().all(|(k, v)| {
            let have = available.amounts.get(k).copied().unwrap_or(0.0);
            (have - v).abs() < 1e-6
        });
        if back {
            return;
        }
        if Instant::now() >= deadline {
            panic!("resources not all back after the scenario: {st:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A node config for an embedded node: `cpus` CPUs, a 256 MiB store, a
/// fresh session directory removed at shutdown.
pub fn node(cpus: f64) -> NodeConfig {
    NodeConfig {
        num_cpus: cpus,
        object_store_memory: 256 << 20,
        ..NodeConfig::default()
    }
}

/// In a driver: starts an embedded node with `node` and connects to it;
/// workers re-run this binary as `child_entry`.
pub fn init(node: NodeConfig) {
    arca::init_with(arca::Config {
        embedded: Some(node),
        worker_args: entry_args(),
        ..Default::default()
    })
    .expect("arca::init_with (embedded node)");
}

/// In a driver: [`init`] with 2 CPUs.
pub fn init_default() {
    init(node(2.0));
}

/// In a child process (driver or worker): a file in the test's directory.
pub fn file(name: &str) -> PathBuf {
    let dir = std::env::var(DIR_VAR).unwrap_or_else(|_| panic!("{DIR_VAR} is not set"));
    PathBuf::from(dir).join(name)
}

/// Creates a marker file (atomically: readers see it whole or not at all).
pub fn touch(name: &str) {
    touch_with(name, b"1");
}

/// Creates a marker file holding `contents`, atomically.
pub fn touch_with(name: &str, contents: &[u8]) {
    let path = file(name);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, &path).unwrap();
}

/// Whether a marker file exists.
pub fn exists(name: &str) -> bool {
    file(name).exists()
}

/// Appends one line to a file (each attempt of a task adds one).
pub fn append_line(name: &str, line: &str) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file(name))
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// The lines of a file (none if it does not exist).
pub fn lines(name: &str) -> Vec<String> {
    fs::read_to_string(file(name))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Waits until marker `name` exists; false if it does not within `limit`.
pub fn wait_for(name: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !exists(name) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Polls `cond` until it holds (true) or `limit` passes (false).
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded by [`WAIT`]) for a marker, panicking if it never comes.
pub fn expect_marker(name: &str) {
    assert!(
        wait_for(name, WAIT),
        "marker {name} did not appear within {WAIT:?}"
    );
}

/// Nanoseconds on CLOCK_MONOTONIC, which every process on the machine
/// shares, so that intervals measured in different workers compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The most intervals `[start, end)` that overlap at any instant.
pub fn max_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut events: Vec<(u64, i32)> = intervals
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    // Ends sort before starts at the same instant: touching is not overlapping.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// Whether a process is still running (a zombie, exited but not reaped by
/// whoever adopted it, counts as gone).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Waits (bounded by [`WAIT`]) until `pid` is gone.
pub fn expect_gone(pid: u32) {
    wait_until(&format!("process {pid} to end"), WAIT, || !alive(pid));
}

/// In a driver: the pid of the worker running `function`, once there is one.
pub fn busy_worker(function: &str) -> u32 {
    let mut pid = 0;
    wait_until(&format!("a worker running {function}"), WAIT, || {
        let st = arca::status().expect("arca::status");
        match st
            .workers
            .iter()
            .find(|w| w.state == "busy" && w.task == function)
        {
            Some(w) => {
                pid = w.pid;
                true
            }
            None => false,
        }
    });
    pid
}

/// In a driver: SIGKILLs a process.
pub fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL");
}

/// In a task: SIGKILLs the process running it (a worker crash).
pub fn kill_myself() -> ! {
    let _ = kill(Pid::this(), Signal::SIGKILL);
    std::thread::sleep(Duration::from_secs(60));
    unreachable!("SIGKILL did not end the process");
}

/// In a driver: the value of `r`, waiting at most [`GET`].
pub fn get<T: arca::FromObject>(r: &arca::ObjectRef<T>) -> T {
    arca::get_timeout(r, GET).unwrap_or_else(|e| panic!("get {r:?}: {e}"))
}

/// In a driver: the error `get` of `r` gives (within [`GET`]).
pub fn get_err<T: arca::FromObject + std::fmt::Debug>(r: &arca::ObjectRef<T>) -> arca::Error {
    match arca::get_timeout(r, GET) {
        Ok(v) => panic!("get {r:?}: expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// A `String` argument.
pub fn s(x: &str) -> String {
    x.to_string()
}

/// The number of marker files whose name starts with `prefix`.
pub fn count_markers(prefix: &str) -> usize {
    let dir = file("");
    fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with(prefix) && !n.contains(".tmp")
                })
                .count()
        })
        .unwrap_or(0)
}

/// In a driver: the ids the node still knows.
pub fn known_ids() -> Vec<arca::ObjectId> {
    arca::memory()
        .expect("arca::memory")
        .objects
        .iter()
        .map(|o| arca::ObjectId::from_slice(&o.id).expect("object id from the node"))
        .collect()
}

/// In a driver: the node's entry for one object, if it has one.
pub fn memory_entry(id: arca::ObjectId) -> Option<arca_proto::node::NodeObject> {
    arca::memory()
        .expect("arca::memory")
        .objects
        .into_iter()
        .find(|o| o.id[..] == id.as_bytes()[..])
}

/// In a driver: waits until the node has forgotten every one of `ids`.
pub fn expect_freed(what: &str, ids: &[arca::ObjectId]) {
    wait_until(&format!("{what} to be freed"), WAIT, || {
        let known = known_ids();
        ids.iter().all(|id| !known.contains(id))
    });
}

// ---------------------------------------------------------------------------
// In the test

/// A driver (or node) child process running a scenario, with its private
/// directory. Killed on drop if still running.
#[derive(Debug)]
pub struct Driver {
    child: Option<Child>,
    scenario: String,
    out: PathBuf,
    err: PathBuf,
    dir: PathBuf,
    // Last, so that the directory goes after the process.
    _own: Option<TempDir>,
}

impl Driver {
    /// Starts `scenario` in a child process with a fresh directory.
    pub fn spawn(scenario: &str) -> Self {
        let dir = TempDir::new();
        let mut d = Self::spawn_at(dir.path(), scenario);
        d._own = Some(dir);
        d
    }

    /// Starts `scenario` in a child process with the directory `dir` (files
    /// for it already written), which goes with the driver.
    pub fn spawn_in(dir: TempDir, scenario: &str) -> Self {
        let mut d = Self::spawn_at(dir.path(), scenario);
        d._own = Some(dir);
        d
    }

    /// True once the child has exited (it is not reaped).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Starts `scenario` in a child process sharing the directory `dir`
    /// (which the caller keeps).
    pub fn spawn_at(dir: &Path, scenario: &str) -> Self {
        let program = std::env::current_exe().expect("current_exe");
        Self::spawn_program(dir, &program, scenario)
    }

    /// Starts `scenario` in a child process running `program` (a copy of
    /// this test binary), sharing the directory `dir`.
    pub fn spawn_program(dir: &Path, program: &Path, scenario: &str) -> Self {
        let out = dir.join(format!("{scenario}.stdout"));
        let err = dir.join(format!("{scenario}.stderr"));
        let mut cmd = Command::new(program);
        cmd.args(entry_args())
            .env(SCENARIO_VAR, scenario)
            .env(DIR_VAR, dir)
            // Task panics are expected; their reports reach the driver as errors.
            .env("ARCA_WORKER_QUIET_PANICS", "1")
            .env_remove("ARCA_ADDRESS")
            .env_remove("ARCA_WORKER_ID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            // Files, not pipes: workers inherit them and may outlive the driver.
            .stdout(Stdio::from(fs::File::create(&out).unwrap()))
            .stderr(Stdio::from(fs::File::create(&err).unwrap()));
        let child = cmd.spawn().expect("cannot re-run the test binary");
        Self {
            child: Some(child),
            scenario: scenario.to_string(),
            out,
            err,
            dir: dir.to_path_buf(),
            _own: None,
        }
    }

    /// The test's private directory (shared with the child and its workers).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits (up to `limit`) for the child to touch `name` in its
    /// directory; fails with its output if it exits first.
    pub fn await_flag(&mut self, name: &str, limit: Duration) {
        let flag = self.dir.join(name);
        wait_until(name, limit, || flag.exists() || self.exited());
        assert!(flag.exists(), "{}", self.output());
    }

    /// Touches `name` in the child's directory.
    pub fn raise(&self, name: &str) {
        fs::write(self.dir.join(name), "").unwrap();
    }

    /// The child's stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The child's stdout and stderr so far, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- {} stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.scenario,
            self.stdout(),
            fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("driver already reaped").id()
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("driver already reaped");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    /// Waits (bounded by [`DRIVER_LIMIT`]) for the child to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("driver already reaped");
        match wait_timeout(&mut child, DRIVER_LIMIT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "scenario {} still running after {DRIVER_LIMIT:?}; killed it\n{}",
                    self.scenario,
                    self.output()
                );
            }
        }
    }

    /// Waits for the scenario to finish and checks that it succeeded;
    /// returns its stdout.
    pub fn finish(mut self) -> String {
        let status = self.wait();
        let out = self.stdout();
        assert!(
            status.success() && out.contains(DONE),
            "scenario {} failed ({status})\n{}",
            self.scenario,
            self.output()
        );
        // Shown by libtest with --nocapture or on failure.
        println!("{}", self.output());
        out
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `scenario` in a driver child process and checks that it succeeded.
pub fn run(scenario: &str) -> String {
    Driver::spawn(scenario).finish()
}

/// Kills, on drop, processes a test found still running (workers that a
/// failed check left behind), so that they do not outlive the test.
#[derive(Debug, Default)]
pub struct Reaper(pub Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// Defines one `#[test]` per scenario, each running the scenario function
/// of the same name (from `scenarios`) in a driver child, and the
/// `scenario(name)` dispatcher `child_entry` calls.
#[macro_export]
macro_rules! scenario_tests {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        $(
            #[test]
            $(#[$meta])*
            fn $name() {
                task_common::run(stringify!($name));
            }
        )*

        /// Runs the scenario named `name` (in a driver child process).
        fn scenario(name: &str) {
            match name {
                $(stringify!($name) => scenarios::$name(),)*
                other => panic!("no scenario named {other}"),
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Remote functions both task test binaries use (each registers its own copy,
// since each binary is its own workers' program).

#[arca::remote]
pub fn square(x: i64) -> i64 {
    x * x
}

#[arca::remote]
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}
