//! Helpers shared by the end-to-end tests: a real `arca store` daemon in a
//! private temp dir, client child processes that re-run the current test
//! binary, seeded byte patterns, and waits that always give up.
//!
//! Nothing here waits without a bound: every poll has a deadline, every
//! daemon has a watchdog that kills it if its test runs far too long (so a
//! client call blocked on a deadlocked daemon fails with `Disconnected`
//! instead of hanging), and every child process is killed if it outlives its
//! deadline or its handle.
//!
//! Child processes: a test binary that uses them defines
//!
//! ```ignore
//! #[test]
//! #[ignore = "entry point of child processes started by the other tests"]
//! fn child_entry() {
//!     common::child_main(|role| match role { "putter" => putter(), _ => unreachable!() });
//! }
//! ```
//!
//! and [`Daemon::child`] re-executes the binary with
//! `--exact child_entry --ignored --nocapture` and [`ROLE_VAR`] set. That is
//! plain libtest command line, so it works the same under `cargo test` and
//! `cargo nextest` (which runs each test in its own process anyway).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arca_client::{MemoryReport, ObjectId, StoreClient, StoreTotals};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// Bound on any single wait in a test (a socket appearing, a child finishing,
/// the daemon releasing a dead client's memory). Generous: these waits end in
/// milliseconds unless something is broken.
pub const WAIT: Duration = Duration::from_secs(20);

/// Timeout for `get` calls that expect the object to exist or appear soon.
pub const GET: Option<Duration> = Some(Duration::from_secs(15));

/// The daemon watchdog: a test still running after this long has hung.
pub const TEST_LIMIT: Duration = Duration::from_secs(90);

/// Env var naming the role a child process plays.
pub const ROLE_VAR: &str = "ARCA_E2E_ROLE";
/// Env var with the daemon's socket, for children.
pub const SOCKET_VAR: &str = "ARCA_E2E_SOCKET";
/// Env var with the test's private directory, for children.
pub const DIR_VAR: &str = "ARCA_E2E_DIR";
/// Env var with the child's name (its ready file is `<dir>/<name>.ready`).
pub const NAME_VAR: &str = "ARCA_E2E_NAME";

/// Printed by a child that finished its role, so the parent can tell it from
/// a libtest run that matched no test at all (which also exits 0).
const CHILD_DONE: &str = "arca-e2e-child-done";

/// The `arca` binary under test.
pub fn arca_bin() -> &'static str {
    env!("CARGO_BIN_EXE_arca")
}

// ---------------------------------------------------------------------------
// Waiting

/// Polls `cond` until it holds, panicking after `timeout` with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a process to exit, up to `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("cannot wait for pid {}: {e}", child.id()),
        }
    }
}

/// Joins a thread, panicking (instead of hanging) if it is not done within `timeout`.
pub fn join_timeout<T>(what: &str, handle: JoinHandle<T>, timeout: Duration) -> T {
    wait_until(what, timeout, || handle.is_finished());
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

// ---------------------------------------------------------------------------
// Temp dirs

/// A fresh private directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/arca-e2e-<pid>-<n>`: unique per test even when tests of one
    /// binary run in parallel threads, and short enough for a socket path.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("arca-e2e-{}-{n}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Self(path),
                // Left over from an earlier run whose pid was the same.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        // A node a test SIGKILLed could not remove its entry in the
        // machine's node registry (`<tmp>/arca-nodes/<pid>`, which a bare
        // `arca stop` reads): remove those naming a directory in here.
        let registry = std::env::temp_dir().join("arca-nodes");
        for e in fs::read_dir(registry).into_iter().flatten().flatten() {
            let inside = fs::read_to_string(e.path())
                .is_ok_and(|d| Path::new(d.trim()).starts_with(&self.0));
            if inside {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The daemon

/// A real `arca store` process on a socket in its own temp dir. Killed (and
/// reaped) on drop; [`Daemon::stop`] stops it gracefully and checks that.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    stderr: PathBuf,
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    // Last, so the directory goes after the process.
    dir: TempDir,
}

impl Daemon {
    /// Starts `arca store --memory <memory>` and waits until it serves clients.
    pub fn start(memory: &str) -> Self {
        Self::start_with(memory, &[])
    }

    /// Starts with extra `arca store` arguments.
    pub fn start_with(memory: &str, extra: &[&str]) -> Self {
        let dir = TempDir::new();
        let socket = dir.path().join("store.sock");
        Self::spawn(dir, socket, memory, extra)
    }

    /// Starts on a given socket path (its logs still go to a temp dir of its own).
    pub fn start_on(socket: &Path, memory: &str, extra: &[&str]) -> Self {
        Self::spawn(TempDir::new(), socket.to_path_buf(), memory, extra)
    }

    /// Spilling is off unless `extra` has a `--spill-*` flag: most tests
    /// check what a store does once primary copies fill its memory.
    fn spawn(dir: TempDir, socket: PathBuf, memory: &str, extra: &[&str]) -> Self {
        let stderr = dir.path().join("daemon.stderr");
        let spills = extra
            .iter()
            .any(|a| a.starts_with("--spill") || *a == "--no-spill");
        let child = Command::new(arca_bin())
            .arg("store")
            .arg("--socket")
            .arg(&socket)
            .args(["--memory", memory])
            .args(if spills { &[][..] } else { &["--no-spill"][..] })
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                fs::File::create(dir.path().join("daemon.stdout")).unwrap(),
            ))
            .stderr(Stdio::from(fs::File::create(&stderr).unwrap()))
            .spawn()
            .expect("cannot start the arca binary");
        let watchdog = watchdog(child.id());
        let mut d = Self {
            child: Some(child),
            socket,
            stderr,
            watchdog: Some(watchdog),
            dir,
        };
        d.wait_serving();
        d
    }

    fn wait_serving(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child_mut().try_wait().unwrap() {
                panic!(
                    "arca store exited with {status} before serving; its stderr:\n{}",
                    self.log()
                );
            }
            if StoreClient::connect(&self.socket).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "arca store did not serve {} within {WAIT:?}; its stderr:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the daemon was already reaped")
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon reaped").id()
    }

    /// The daemon's stderr so far (its logs and any error line).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// A new client connection.
    pub fn client(&self) -> StoreClient {
        StoreClient::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect: {e}; daemon stderr:\n{}", self.log()))
    }

    /// Panics if the daemon process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child_mut().try_wait().unwrap() {
            panic!("the daemon died ({status}); its stderr:\n{}", self.log());
        }
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("kill");
    }

    /// Waits (bounded) for the daemon to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.stop_watchdog();
        let mut child = self.child.take().expect("daemon reaped");
        match wait_timeout(&mut child, WAIT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not exit within {WAIT:?}; its stderr:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Stops the daemon with SIGTERM and checks that it shut down cleanly:
    /// it was still running, exits 0 and removes its socket.
    pub fn stop(mut self) {
        self.assert_alive();
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit();
        assert!(
            status.success(),
            "arca store exited with {status} on SIGTERM; its stderr:\n{}",
            self.log()
        );
        assert!(
            !self.socket.exists(),
            "arca store left its socket behind on SIGTERM"
        );
    }

    fn stop_watchdog(&mut self) {
        if let Some((tx, handle)) = self.watchdog.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// Starts a child process playing `role`, with the socket, the dir and
    /// its `name` in its environment, plus `env`.
    pub fn child(&self, role: &str, name: &str, env: &[(&str, String)]) -> ChildProc {
        ChildProc::spawn(self.dir(), role, name, |cmd| {
            cmd.env(SOCKET_VAR, &self.socket);
            for (k, v) in env {
                cmd.env(k, v);
            }
        })
    }

    /// Path of a file in the test's dir (flags shared with children).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }
}

/// Kills `pid` if the test has not dropped the returned sender within
/// [`TEST_LIMIT`]: a hung test then fails (every client call errors out)
/// instead of hanging forever.
fn watchdog(pid: u32) -> (mpsc::Sender<()>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TEST_LIMIT) {
            eprintln!(
                "watchdog: the test is still running after {TEST_LIMIT:?}; \
                 killing the daemon (pid {pid}) so blocked calls fail"
            );
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    });
    (tx, handle)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_watchdog();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- arca store stderr ---\n{}--- end ---", self.log());
        }
    }
}

/// Memory totals as the daemon reports them.
pub fn totals(c: &StoreClient) -> StoreTotals {
    c.memory()
        .expect("memory")
        .totals
        .expect("totals in report")
}

/// Whether nothing is pinned, primary or being created.
pub fn released(t: &StoreTotals) -> bool {
    t.pinned == 0 && t.primary == 0 && t.creating == 0
}

/// The clients in a report other than `me`.
pub fn other_clients(r: &MemoryReport, me: &StoreClient) -> Vec<u32> {
    r.clients
        .iter()
        .filter(|c| c.client != me.client_id())
        .map(|c| c.pid)
        .collect()
}

// ---------------------------------------------------------------------------
// Child processes

/// A client child process: this test binary re-run as `child_entry`.
/// Killed and reaped on drop if still running.
#[derive(Debug)]
pub struct ChildProc {
    child: Option<Child>,
    name: String,
    role: String,
    dir: PathBuf,
}

impl ChildProc {
    fn spawn(dir: &Path, role: &str, name: &str, configure: impl FnOnce(&mut Command)) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", "child_entry", "--ignored", "--nocapture"])
            .env(ROLE_VAR, role)
            .env(DIR_VAR, dir)
            .env(NAME_VAR, name)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                fs::File::create(dir.join(format!("{name}.stdout"))).unwrap(),
            ))
            .stderr(Stdio::from(
                fs::File::create(dir.join(format!("{name}.stderr"))).unwrap(),
            ));
        configure(&mut cmd);
        let child = cmd.spawn().expect("cannot re-run the test binary");
        Self {
            child: Some(child),
            name: name.to_string(),
            role: role.to_string(),
            dir: dir.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child reaped").id()
    }

    /// The child's stdout and stderr so far.
    pub fn output(&self) -> String {
        let read = |ext: &str| {
            fs::read_to_string(self.dir.join(format!("{}.{ext}", self.name))).unwrap_or_default()
        };
        format!(
            "--- {} ({}) stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.name,
            self.role,
            read("stdout"),
            read("stderr")
        )
    }

    /// Waits until the child calls [`signal_ready`], panicking if it exits
    /// first or takes longer than [`WAIT`].
    pub fn wait_ready(&mut self) {
        self.wait_ready_within(WAIT);
    }

    /// [`ChildProc::wait_ready`] with another bound, for children with a
    /// long job before they are ready.
    pub fn wait_ready_within(&mut self, timeout: Duration) {
        let flag = self.dir.join(format!("{}.ready", self.name));
        let deadline = Instant::now() + timeout;
        while !flag.exists() {
            let child = self.child.as_mut().expect("child reaped");
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "child {} exited ({status}) before it was ready\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "child {} not ready within {timeout:?}\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (bounded) for the child to finish its role successfully.
    pub fn wait_success(self) {
        self.wait_success_within(WAIT);
    }

    /// [`ChildProc::wait_success`] with another bound.
    pub fn wait_success_within(mut self, timeout: Duration) {
        let mut child = self.child.take().expect("child reaped");
        let Some(status) = wait_timeout(&mut child, timeout) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "child {} still running after {timeout:?}; killed it\n{}",
                self.name,
                self.output()
            );
        };
        let out = self.output();
        assert!(
            status.success() && out.contains(CHILD_DONE),
            "child {} failed ({status})\n{out}",
            self.name
        );
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("child reaped");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait")
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("{}", self.output());
            }
        }
    }
}

/// The body of a binary's `child_entry` test: runs `f` with the role if this
/// process is a child, does nothing in a normal test run.
pub fn child_main(f: impl FnOnce(&str)) {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    f(&role);
    println!("{CHILD_DONE} {role}");
}

/// An env var a child needs.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child process needs {name}"))
}

/// In a child: the daemon's socket.
pub fn child_client() -> StoreClient {
    StoreClient::connect(env(SOCKET_VAR)).expect("child connect")
}

/// In a child: a file in the test's dir.
pub fn child_file(name: &str) -> PathBuf {
    PathBuf::from(env(DIR_VAR)).join(name)
}

/// In a child: tells the parent ([`ChildProc::wait_ready`]) it is ready.
pub fn signal_ready() {
    let name = env(NAME_VAR);
    let tmp = child_file(&format!("{name}.ready.tmp"));
    fs::write(&tmp, b"ready").unwrap();
    fs::rename(&tmp, child_file(&format!("{name}.ready"))).unwrap();
}

/// Creates a flag file (atomically) that a child waits for.
pub fn raise_flag(path: &Path) {
    write_atomic(path, b"go");
}

/// Replaces `path` with `contents` in one step: a reader sees the old file
/// or the new one, never a partly written one.
pub fn write_atomic(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// In a child: waits for the parent to raise a flag, panicking after
/// `timeout` so an orphaned child never lingers.
pub fn wait_flag(path: &Path, timeout: Duration) {
    wait_until(&format!("flag {}", path.display()), timeout, || {
        path.exists()
    });
}

/// In a child that the parent will SIGKILL: sleeps until killed, giving up
/// (and failing) after [`WAIT`] so it never lingers.
pub fn park_until_killed() -> ! {
    std::thread::sleep(WAIT);
    panic!("the parent did not kill this child within {WAIT:?}");
}

// ---------------------------------------------------------------------------
// Object contents

/// `len` bytes that depend on `seed` and position: any misplaced, stale or
/// foreign byte shows up.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, &mut v);
    v
}

/// Fills `buf` with [`pattern`]`(seed, buf.len())`, in place.
pub fn fill_pattern(seed: u64, buf: &mut [u8]) {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in buf.chunks_mut(8) {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// Asserts `got` is exactly [`pattern`]`(seed, len)`, reporting the first
/// wrong byte rather than dumping megabytes.
pub fn check_pattern(what: &str, got: &[u8], seed: u64, len: usize) {
    check_bytes(what, got, &pattern(seed, len));
}

/// Asserts two byte strings are equal, reporting the first difference.
pub fn check_bytes(what: &str, got: &[u8], expected: &[u8]) {
    assert_eq!(
        got.len(),
        expected.len(),
        "{what}: got {} bytes, expected {}",
        got.len(),
        expected.len()
    );
    // Slice equality is a memcmp even in debug builds; search only on failure.
    if got == expected {
        return;
    }
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first wrong byte at offset {i} of {}: got {:#04x}, expected {:#04x}",
            got.len(),
            got[i],
            expected[i]
        );
    }
}

/// One object a test puts and checks: id, data length, pattern seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub id: ObjectId,
    pub size: usize,
    pub seed: u64,
}

impl Spec {
    pub fn new(size: usize, seed: u64) -> Self {
        Self {
            id: ObjectId::random(),
            size,
            seed,
        }
    }

    pub fn data(&self) -> Vec<u8> {
        pattern(self.seed, self.size)
    }

    /// Metadata that names the object, so a mixed-up metadata block shows.
    pub fn metadata(&self) -> Vec<u8> {
        format!("e2e seed={} size={}", self.seed, self.size).into_bytes()
    }

    /// Asserts a buffer holds exactly this object's data and metadata.
    pub fn check(&self, buf: &arca_client::ObjectBuffer) {
        let what = format!(
            "object {} (seed {}, {} bytes)",
            self.id, self.seed, self.size
        );
        assert_eq!(buf.id(), self.id, "{what}: buffer has the wrong id");
        check_pattern(&what, buf.data(), self.seed, self.size);
        check_bytes(
            &format!("{what} metadata"),
            buf.metadata(),
            &self.metadata(),
        );
    }

    /// Asserts a buffer holds this object's data and no metadata (for
    /// objects put without any).
    pub fn check_data(&self, buf: &arca_client::ObjectBuffer) {
        let what = format!(
            "object {} (seed {}, {} bytes)",
            self.id, self.seed, self.size
        );
        check_pattern(&what, buf.data(), self.seed, self.size);
        assert!(buf.metadata().is_empty(), "{what}: unexpected metadata");
    }
}

/// Specs as one env var value: `id:size:seed,...`.
pub fn encode_specs(specs: &[Spec]) -> String {
    specs
        .iter()
        .map(|s| format!("{}:{}:{}", s.id, s.size, s.seed))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses [`encode_specs`] output.
pub fn decode_specs(text: &str) -> Vec<Spec> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| {
            let mut parts = item.split(':');
            let mut next = || parts.next().expect("spec field");
            Spec {
                id: next().parse().expect("spec id"),
                size: next().parse().expect("spec size"),
                seed: next().parse().expect("spec seed"),
            }
        })
        .collect()
}

/// Whether `[ptr, ptr + len)` lies inside one of the client's shared-memory
/// segment mappings: the buffer is the store's memory, not a copy.
pub fn in_segments(c: &StoreClient, ptr: *const u8, len: usize) -> bool {
    let start = ptr as usize;
    c.segments().iter().any(|m| {
        let r = m.address_range();
        start >= r.start && start + len <= r.end
    })
}

// ---------------------------------------------------------------------------
// The command line

/// Runs `arca <args>` to completion (killed after [`WAIT`]) and returns its output.
pub fn run_arca(args: &[&str]) -> Output {
    let mut child = Command::new(arca_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the arca binary");
    // Drain both pipes on threads so a chatty process cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).ok();
        v
    });
    let Some(status) = wait_timeout(&mut child, WAIT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`arca {}` still running after {WAIT:?}; killed it",
            args.join(" ")
        );
    };
    Output {
        status,
        stdout: join_timeout("arca stdout", out, WAIT),
        stderr: join_timeout("arca stderr", err, WAIT),
    }
}

/// Asserts stderr is exactly one line `error: ...` and returns it.
pub fn one_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("error: "),
        "expected one `error: ...` line on stderr, got:\n{stderr}"
    );
    lines[0].to_string()
}
