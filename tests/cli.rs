//! The `arca` command line: `arca memory` against a live store, `arca store`
//! usage and start-up errors, and a clean stop on SIGTERM / SIGINT. Exit
//! codes follow the contract: 0 success, 1 runtime failure (one `error:` line
//! on stderr that says what to do), 2 bad usage.

mod common;

use arca_client::ObjectId;
use common::{Daemon, GET, TempDir, one_error_line, run_arca};
use nix::sys::signal::Signal;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn memory_lists_objects_and_who_pins_them() {
    let d = Daemon::start("16MiB");
    let c = d.client();
    let me = std::process::id();
    let big = c.put(&common::pattern(1, 300_000)).unwrap();
    let small = c.put(b"small").unwrap();
    let held = c.get_one(small, GET).unwrap();
    let sock = d.socket().to_str().unwrap();

    let out = run_arca(&["memory", "--socket", sock]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    for id in [big, small] {
        assert!(text.contains(&id.to_hex()), "{id} not listed:\n{text}");
    }
    let row = |id: ObjectId| {
        text.lines()
            .find(|l| l.contains(&id.to_hex()))
            .unwrap()
            .to_string()
    };
    // The pinned object's row names the pinning pid (pid x count) and the
    // primary copy's pid.
    assert!(row(small).contains(&format!("{me}x1")), "{}", row(small));
    assert!(row(small).contains(&me.to_string()), "{}", row(small));
    assert!(
        row(big).contains(&me.to_string()),
        "primary pid: {}",
        row(big)
    );
    assert!(row(big).contains("sealed"), "{}", row(big));
    // This test process shows up as a client.
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(&*me.to_string())),
        "our pid in the clients table:\n{text}"
    );

    // --limit: largest first.
    let out = run_arca(&["memory", "--socket", sock, "--limit", "1"]);
    let text = stdout(&out);
    assert!(out.status.success());
    assert!(text.contains(&big.to_hex()), "{text}");
    assert!(
        !text.contains(&small.to_hex()),
        "--limit 1 shows one:\n{text}"
    );

    // --json parses and says the same.
    let out = run_arca(&["memory", "--socket", sock, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{}", stdout(&out)));
    assert_eq!(v["totals"]["objects"], 2, "{v}");
    assert_eq!(v["totals"]["capacity"], 16 << 20, "{v}");
    assert!(v["totals"]["pinned"].as_u64().unwrap() > 0, "{v}");
    let objects = v["objects"].as_array().unwrap();
    let obj = |id: ObjectId| {
        objects
            .iter()
            .find(|o| o["id"] == id.to_hex())
            .unwrap_or_else(|| panic!("{id} missing from {v}"))
    };
    assert_eq!(obj(small)["data_size"], 5);
    assert_eq!(obj(small)["state"], "sealed");
    assert_eq!(obj(small)["pins"][0]["pid"], me, "{v}");
    assert_eq!(obj(small)["pins"][0]["count"], 1, "{v}");
    assert_eq!(obj(big)["primary_pid"], me, "{v}");
    assert_eq!(obj(big)["pins"].as_array().unwrap().len(), 0, "{v}");
    assert!(
        v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["pid"] == me),
        "{v}"
    );
    drop(held);
    d.stop();
}

#[test]
fn bad_usage_exits_2() {
    let dir = TempDir::new();
    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().unwrap();
    for args in [
        vec![],
        vec!["store"],
        vec!["store", "--socket", sock],
        vec!["store", "--memory", "16MiB"],
        vec!["store", "--socket", sock, "--memory", "16MiB", "--bogus"],
        vec![
            "store",
            "--socket",
            sock,
            "--memory",
            "16MiB",
            "--spin-us",
            "-1",
        ],
        vec!["memory"],
        vec!["no-such-command"],
    ] {
        let out = run_arca(&args);
        assert_eq!(out.status.code(), Some(2), "arca {args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "arca {args:?} says why");
    }
    let out = run_arca(&["store", "--socket", sock, "--memory", "12 parsecs"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("12 parsecs") && err.contains("512MiB"),
        "{err}"
    );
    assert!(!dir.path().join("s.sock").exists(), "no daemon started");
}

#[test]
fn start_up_failures_exit_1_with_one_error_line() {
    let dir = TempDir::new();
    let sock = dir.path().join("s.sock");
    let out = run_arca(&[
        "store",
        "--socket",
        sock.to_str().unwrap(),
        "--memory",
        "1KiB",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = one_error_line(&out);
    assert!(
        line.contains("too small") && line.contains("1MiB"),
        "{line}"
    );
    assert!(!sock.exists());

    // A second daemon on a socket that a live one serves.
    let d = Daemon::start("16MiB");
    let sock = d.socket().to_str().unwrap();
    let out = run_arca(&["store", "--socket", sock, "--memory", "16MiB"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = one_error_line(&out);
    assert!(
        line.contains("already listening") && line.contains(sock),
        "{line}"
    );
    // ... and the first one is untouched.
    let c = d.client();
    let id = c.put(b"first daemon").unwrap();
    assert_eq!(&c.get_one(id, GET).unwrap()[..], b"first daemon");
    assert!(d.socket().exists());
    drop(c);
    d.stop();

    // A spill directory that cannot be made (under a regular file): one line
    // that names it and says what to do.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = run_arca(&[
        "store",
        "--socket",
        dir.path().join("t.sock").to_str().unwrap(),
        "--memory",
        "16MiB",
        "--spill-dir",
        file.join("spill").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = one_error_line(&out);
    assert!(
        line.contains("--spill-dir") && line.contains("a-file"),
        "{line}"
    );
}

#[test]
fn memory_without_a_store_says_to_start_one() {
    let dir = TempDir::new();
    let sock = dir.path().join("nothing.sock");
    let out = run_arca(&["memory", "--socket", sock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = one_error_line(&out);
    assert!(
        line.contains("arca store"),
        "says to start `arca store`: {line}"
    );
    assert!(line.contains(sock.to_str().unwrap()), "{line}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn sigterm_and_sigint_stop_the_daemon_cleanly() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut d = Daemon::start("16MiB");
        // A connected client, holding a pin, does not keep it from stopping.
        let c = d.client();
        let id = c.put(b"x").unwrap();
        let held = c.get_one(id, GET).unwrap();
        assert!(d.socket().exists());
        d.signal(sig);
        let status = d.wait_exit();
        assert_eq!(status.code(), Some(0), "{sig}: {status}\n{}", d.log());
        assert!(!d.socket().exists(), "{sig}: the socket was removed");
        // The client notices the daemon is gone.
        match c.contains(id) {
            Err(arca_client::Error::Disconnected(_)) => {}
            other => panic!("{sig}: expected Disconnected, got {other:?}"),
        }
        drop(held);
    }
}

#[test]
fn a_killed_daemons_stale_socket_is_replaced() {
    let mut old = Daemon::start("16MiB");
    old.signal(Signal::SIGKILL);
    old.wait_exit();
    assert!(
        old.socket().exists(),
        "SIGKILL leaves the socket file behind"
    );
    // Nothing answers there: clients get the hint to start a store.
    let out = run_arca(&["memory", "--socket", old.socket().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(one_error_line(&out).contains("arca store"));

    let new = Daemon::start_on(old.socket(), "16MiB", &[]);
    let c = new.client();
    let id = c.put(b"new daemon").unwrap();
    assert_eq!(&c.get_one(id, GET).unwrap()[..], b"new daemon");
    drop(c);
    new.stop();
}

#[test]
fn the_socket_lives_in_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let private = dir.path().join("session").join("store");
    let sock = private.join("s.sock");
    let d = Daemon::start_on(&sock, "16MiB", &[]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&private), 0o700, "the socket's directory is private");
    assert_eq!(mode(&sock), 0o600, "the socket is for this user only");
    d.stop();

    // A path that is not a socket is not clobbered.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"precious").unwrap();
    let out = run_arca(&[
        "store",
        "--socket",
        file.to_str().unwrap(),
        "--memory",
        "16MiB",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    one_error_line(&out);
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
}

#[test]
fn connect_error_names_the_cause_once_and_ends_with_the_fix() {
    let dir = TempDir::new();
    let sock = dir.path().join("nothing.sock");
    let out = run_arca(&["memory", "--socket", sock.to_str().unwrap()]);
    let line = one_error_line(&out);
    assert_eq!(line.matches("os error 2").count(), 1, "{line}");
    assert!(line.ends_with("running?"), "ends with what to do: {line}");
}
