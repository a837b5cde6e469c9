//! `arca start`, `arca status`, `arca memory` and `arca stop` on real node
//! processes: a node started in the background, a driver process connected to
//! it with a task running in a worker, and what `arca stop` leaves behind
//! (nothing: no node, no worker, no socket, no pid file).
//!
//! Every test has its own session directory and a [`Session`] guard that
//! runs `arca stop` when the test ends, pass or fail, and a watchdog that
//! SIGKILLs the node if the test runs far too long.

mod common;
mod task_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{TEST_LIMIT, TempDir, WAIT, one_error_line, run_arca, wait_timeout, wait_until};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use task_common::entry_args;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(out)))
}

/// Whether a process is running (a zombie counts as gone: whoever adopted
/// the node may not reap it at once).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

fn expect_gone(pid: u32) {
    wait_until(&format!("process {pid} to end"), WAIT, || !alive(pid));
}

/// A session directory for one test's node: `arca stop` runs on drop, and a
/// watchdog SIGKILLs the node (and its workers) if the test hangs.
struct Session {
    dir: PathBuf,
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    // Last: the directory goes after the node.
    _tmp: TempDir,
}

impl Session {
    fn new() -> Self {
        let tmp = TempDir::new();
        let dir = tmp.path().join("session");
        let (tx, rx) = mpsc::channel::<()>();
        let pid_file = dir.join("node.pid");
        let watchdog = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(TEST_LIMIT) {
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    eprintln!("watchdog: test ran past {TEST_LIMIT:?}; killing node {pid}");
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        });
        Self {
            dir,
            watchdog: Some((tx, watchdog)),
            _tmp: tmp,
        }
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// `arca <args> --temp-dir <dir>`.
    fn arca(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--temp-dir", self.dir_str()]);
        run_arca(&all)
    }

    /// `arca start --head` with a small store and `extra` flags; must succeed.
    fn start(&self, extra: &[&str]) -> Output {
        // Port 0: tests run at once, each head on a port of its own.
        let mut args = vec!["start", "--head", "--port", "0", "--memory", "64MiB"];
        args.extend(extra);
        let out = self.arca(&args);
        assert!(
            out.status.success(),
            "arca start: {out:?}\nlog:\n{}",
            self.log()
        );
        out
    }

    fn node_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.dir.join("node.pid")).expect("node.pid");
        text.trim().parse().expect("a pid in node.pid")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// Asserts that nothing of the node is left: process, sockets, pid file.
    fn assert_stopped(&self, pid: u32) {
        expect_gone(pid);
        for f in ["node.sock", "store.sock", "node.pid"] {
            assert!(!self.dir.join(f).exists(), "{f} left behind");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new(common::arca_bin())
            .args(["stop", "--temp-dir", self.dir_str()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some((tx, handle)) = self.watchdog.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

// ---------------------------------------------------------------------------
// A driver process connected to the node (this test binary, re-run)

const ROLE_VAR: &str = "ARCA_CLI_NODE_ROLE";
const MARKERS_VAR: &str = "ARCA_CLI_NODE_MARKERS";
/// Bytes of the driver's put: above the inline limit, so it lives in the store.
const BIG: usize = 300_000;

/// Writes `contents` to `dir/name` atomically.
fn mark(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn read_marker(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    wait_until(&format!("marker {name}"), WAIT, || path.exists());
    std::fs::read_to_string(path).unwrap()
}

/// Runs in a worker until the node kills it (a bounded wait all the same).
#[arca::remote]
fn hold(markers: String) -> u32 {
    mark(
        Path::new(&markers),
        "worker",
        &std::process::id().to_string(),
    );
    let deadline = Instant::now() + TEST_LIMIT;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::id()
}

/// The driver: puts a large object, starts `hold`, and waits for it; the
/// wait ends when `arca stop` stops the node.
fn driver() {
    let markers = std::env::var(MARKERS_VAR).unwrap();
    arca::init_with(arca::Config {
        worker_args: entry_args(),
        ..arca::Config::default()
    })
    .expect("arca::init_with (the node in $ARCA_TEMP_DIR)");
    let big = arca::put(&vec![7u8; BIG]).expect("put");
    mark(Path::new(&markers), "put", &big.id().to_hex());
    let held = hold::remote(markers.clone());
    let _ = arca::get_timeout(&held, Some(TEST_LIMIT));
    arca::shutdown();
}

#[test]
#[ignore = "entry point of the driver and worker processes the tests start"]
fn child_entry() {
    if std::env::var_os("ARCA_WORKER_ID").is_some() {
        let e = arca::init_with(arca::Config::default());
        panic!("arca::init_with in a worker returned: {e:?}");
    }
    if std::env::var(ROLE_VAR).as_deref() == Ok("driver") {
        driver();
    }
}

/// A driver child process, killed on drop if still running.
struct Driver(Option<Child>);

impl Driver {
    fn spawn(session: &Session, markers: &Path) -> Self {
        let log = std::fs::File::create(markers.join("driver.log")).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(entry_args())
            .env(ROLE_VAR, "driver")
            .env(MARKERS_VAR, markers)
            .env("ARCA_TEMP_DIR", session.dir())
            .env_remove("ARCA_WORKER_ID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self(Some(child))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Waits for the driver to end (it does once its node is gone).
    fn wait(mut self) {
        let mut child = self.0.take().unwrap();
        if wait_timeout(&mut child, WAIT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the driver still runs {WAIT:?} after its node stopped");
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn start_status_memory_stop() {
    let s = Session::new();
    let out = s.start(&[
        "--num-cpus",
        "2",
        "--num-gpus",
        "1",
        "--resources",
        r#"{"Custom": 2}"#,
    ]);
    let text = stdout(&out);
    let node = s.node_pid();
    for want in [
        format!("export ARCA_TEMP_DIR={}", s.dir_str()),
        format!("arca stop --temp-dir {}", s.dir_str()),
        format!("pid {node}"),
        "Custom 2".into(),
    ] {
        assert!(text.contains(&want), "`{want}` missing from:\n{text}");
    }
    assert!(alive(node));

    // A driver with an object in the store and a task running in a worker.
    let markers = TempDir::new();
    let driver = Driver::spawn(&s, markers.path());
    let driver_pid = driver.pid();
    let worker: u32 = read_marker(markers.path(), "worker").parse().unwrap();
    let put_id = read_marker(markers.path(), "put");

    let v = json(&s.arca(&["status", "--json"]));
    assert_eq!(v["node"]["pid"], node, "{v}");
    assert_eq!(v["node"]["session_dir"], s.dir_str(), "{v}");
    let total = &v["resources"]["total"];
    assert_eq!(total["CPU"], 2.0, "{v}");
    assert_eq!(total["GPU"], 1.0, "{v}");
    assert_eq!(total["Custom"], 2.0, "{v}");
    assert!(total["memory"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(
        v["resources"]["available"]["CPU"], 1.0,
        "hold takes 1 CPU: {v}"
    );
    assert_eq!(v["store"]["capacity"], 64 << 20, "{v}");
    assert!(v["store"]["used"].as_u64().unwrap() >= BIG as u64, "{v}");
    assert_eq!(v["drivers"], 1, "{v}");
    assert_eq!(v["tasks"]["running"], 1, "{v}");
    let workers = v["workers"].as_array().unwrap();
    let w = workers
        .iter()
        .find(|w| w["pid"] == worker)
        .unwrap_or_else(|| panic!("worker {worker} missing: {v}"));
    assert_eq!(w["state"], "busy", "{v}");
    assert!(w["task"].as_str().unwrap().ends_with("hold"), "{v}");

    let out = s.arca(&["status"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    for want in ["Custom", "GPU", &worker.to_string(), "busy", "64.0 MiB"] {
        assert!(text.contains(want), "`{want}` missing from:\n{text}");
    }

    // memory: the node's view (owner, holders) joined with the store's (pins, place).
    let v = json(&s.arca(&["memory", "--json"]));
    assert_eq!(v["node"]["pid"], node, "{v}");
    let objects = v["objects"].as_array().unwrap();
    let big = objects
        .iter()
        .find(|o| o["id"] == put_id.as_str())
        .unwrap_or_else(|| panic!("the put {put_id} missing: {v}"));
    assert_eq!(big["state"], "stored", "{big}");
    assert_eq!(big["owner_pid"], driver_pid, "{big}");
    assert!(big["ref_count"].as_u64().unwrap() >= 1, "{big}");
    assert!(
        big["holder_pids"]
            .as_array()
            .unwrap()
            .contains(&driver_pid.into()),
        "{big}"
    );
    assert!(big["size"].as_u64().unwrap() >= BIG as u64, "{big}");
    assert_eq!(big["where"], "memory", "{big}");
    assert_eq!(big["store"]["state"], "sealed", "{big}");
    let pending = objects
        .iter()
        .find(|o| o["state"] == "pending")
        .unwrap_or_else(|| panic!("hold's result missing: {v}"));
    assert!(
        pending["function"].as_str().unwrap().ends_with("hold"),
        "{v}"
    );
    assert!(pending["store"].is_null(), "{v}");

    let out = s.arca(&["memory"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    let row = text
        .lines()
        .find(|l| l.contains(&put_id))
        .unwrap_or_else(|| panic!("{put_id} not listed:\n{text}"));
    assert!(row.contains(&driver_pid.to_string()), "{row}");
    assert!(row.contains("stored"), "{row}");
    let out = s.arca(&["memory", "--limit", "1"]);
    assert!(stdout(&out).contains("1 of 2"), "{}", stdout(&out));

    // stop: the node, its worker and its files are gone; the driver notices.
    let out = s.arca(&["stop"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("Stopped") && text.contains(&format!("pid {node}")),
        "{text}"
    );
    s.assert_stopped(node);
    expect_gone(worker);
    driver.wait();
}

#[test]
fn start_twice_exits_1_and_stop_twice_exits_0() {
    let s = Session::new();
    s.start(&[]);
    let node = s.node_pid();
    let out = s.arca(&["start", "--head", "--port", "0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = one_error_line(&out);
    assert!(
        line.contains("already running") && line.contains(&node.to_string()),
        "{line}"
    );
    assert!(line.contains("arca stop"), "says what to do: {line}");
    assert!(alive(node), "the running node is untouched");

    let out = s.arca(&["stop"]);
    assert!(out.status.success(), "{out:?}");
    s.assert_stopped(node);

    let out = s.arca(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("No node running"), "{}", stdout(&out));
}

#[test]
fn without_a_node_status_and_memory_exit_1_and_stop_exits_0() {
    let s = Session::new();
    for cmd in ["status", "memory"] {
        let out = s.arca(&[cmd]);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {out:?}");
        let line = one_error_line(&out);
        assert!(
            line.contains("no node is running") && line.contains("arca start --head"),
            "{cmd}: {line}"
        );
        assert!(stdout(&out).is_empty());
    }
    let out = s.arca(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("No node running"), "{out:?}");
}

#[test]
fn bad_usage_exits_2_and_starts_nothing() {
    let s = Session::new();
    for args in [
        vec!["start", "--head", "--resources", "{not json"],
        vec!["start", "--head", "--resources", r#"{"Custom": -1}"#],
        vec!["start", "--head", "--resources", r#"{"Custom": "two"}"#],
        vec!["start", "--head", "--resources", r#"{"CPU": 4}"#],
        vec!["start", "--head", "--resources", "[1, 2]"],
        vec!["start", "--head", "--num-cpus", "-1"],
        vec!["start", "--head", "--memory", "lots"],
        vec!["start"],
        vec!["start", "--head", "--address", "10.0.0.1:6379"],
        vec!["start", "--head", "--memory", "0"],
        vec!["start", "--head", "--memory", "1000TiB"],
        vec!["start", "--address", "nonsense"],
        vec!["status", "--bogus"],
        vec!["memory", "--socket", "/nowhere.sock"],
    ] {
        let out = s.arca(&args);
        assert_eq!(out.status.code(), Some(2), "arca {args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "arca {args:?} says why");
    }
    // No head of that address runs here, so no token can be found.
    let out = s.arca(&["start", "--address", "10.0.0.1:6379"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(one_error_line(&out).contains("no cluster token"), "{out:?}");
    assert!(!s.dir().join("node.sock").exists(), "no node started");
}

#[test]
fn a_node_that_cannot_start_fails_start_with_its_error() {
    let s = Session::new();
    let out = s.arca(&["start", "--head", "--memory", "1KiB"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = one_error_line(&out);
    assert!(
        line.contains("too small") && line.contains("node.log"),
        "the node's own error and where its log is: {line}"
    );
    assert!(!s.dir().join("node.sock").exists());
}

#[test]
fn stop_cleans_up_after_a_killed_node_and_sigterm_stops_one() {
    let s = Session::new();
    s.start(&[]);
    let node = s.node_pid();
    kill(Pid::from_raw(node as i32), Signal::SIGKILL).unwrap();
    expect_gone(node);
    assert!(
        s.dir().join("node.sock").exists(),
        "SIGKILL leaves the socket"
    );
    let out = s.arca(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = s.arca(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("No node running"), "{out:?}");
    s.assert_stopped(node);

    // A node stopped by a signal removes its own files.
    s.start(&[]);
    let node = s.node_pid();
    kill(Pid::from_raw(node as i32), Signal::SIGTERM).unwrap();
    s.assert_stopped(node);
}
