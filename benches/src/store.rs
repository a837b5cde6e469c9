//! `arca bench store`: put/get calls and bandwidth against a store daemon.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arca_client::{ObjectId, StoreClient};
use arca_store::server::{StoreConfig, StoreHandle, start};

use crate::limits::memcpy_gbps;
use crate::{BenchOptions, Report};

const SMALL: usize = 8;
const LARGE: usize = 100 << 20;
const GIB: u64 = 1 << 30;

/// Arguments of one benchmark client process (`arca bench-client`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The store's socket.
    #[arg(long)]
    socket: PathBuf,
    /// `put-calls` or `put-bytes`.
    #[arg(long)]
    workload: String,
    /// How long to run after the start signal.
    #[arg(long)]
    seconds: f64,
}

/// A store for the run: embedded (prefaulted, in a private temp directory) or
/// the one at `--socket`.
struct Target {
    socket: PathBuf,
    _store: Option<StoreHandle>,
    _dir: Option<TempDir>,
}

/// A private directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn target(opts: &BenchOptions) -> anyhow::Result<Target> {
    if let Some(s) = &opts.socket {
        return Ok(Target {
            socket: s.clone(),
            _store: None,
            _dir: None,
        });
    }
    let dir = TempDir(std::env::temp_dir().join(format!("arca-bench-{}", std::process::id())));
    let socket = dir.0.join("store.sock");
    let mut config = StoreConfig::new(&socket, opts.memory);
    config.prefault = true;
    eprintln!(
        "starting an embedded store of {} (prefaulting every page)",
        arca_store::ByteSize(opts.memory)
    );
    let store = start(config)?;
    Ok(Target {
        socket,
        _store: Some(store),
        _dir: Some(dir),
    })
}

/// Runs `f` repeatedly for about `secs`; returns calls per second.
fn rate(secs: f64, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let deadline = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while n == 0 || start.elapsed() < deadline {
        f()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Small puts; deletes in batches of 1,000 (timed too) so the store never fills.
fn put_calls(c: &StoreClient, secs: f64) -> anyhow::Result<f64> {
    let data = [7u8; SMALL];
    let mut ids = Vec::with_capacity(1000);
    let r = rate(secs, || {
        ids.push(c.put(&data)?);
        if ids.len() == 1000 {
            c.delete_many(&ids)?;
            ids.clear();
        }
        Ok(())
    })?;
    c.delete_many(&ids)?;
    Ok(r)
}

/// Large puts, each deleted after; returns bytes per second.
fn put_bytes(c: &StoreClient, secs: f64) -> anyhow::Result<f64> {
    let data = vec![7u8; LARGE];
    Ok(rate(secs, || {
        let id = c.put(&data)?;
        c.delete(id)?;
        Ok(())
    })? * LARGE as f64)
}

/// Mean microseconds to get (and drop) one object of `size` bytes.
fn get_latency_us(c: &StoreClient, size: u64, secs: f64) -> anyhow::Result<f64> {
    let id = ObjectId::random();
    let mut w = c.create(id, size, &[], true)?;
    w.fill(1);
    w.seal()?;
    let r = rate(secs, || {
        let b = c.get_one(id, Some(Duration::from_secs(10)))?;
        std::hint::black_box(b[0]);
        Ok(())
    });
    c.delete(id)?;
    Ok(1e6 / r?)
}

pub(crate) fn run(opts: &BenchOptions) -> anyhow::Result<Report> {
    let mut r = Report::default();
    r.push(
        "memcpy gigabytes per second",
        memcpy_gbps(LARGE, Duration::from_secs(1)),
        "GB/s",
    );
    let t = target(opts)?;
    let c = StoreClient::connect(&t.socket)?;
    let secs = opts.seconds;

    r.push(
        "single client put calls per second",
        put_calls(&c, secs)?,
        "calls/s",
    );

    let id = c.put(&[1u8; SMALL])?;
    let same = rate(secs, || {
        std::hint::black_box(c.get_one(id, None)?[0]);
        Ok(())
    })?;
    r.push("single client get calls per second", same, "calls/s");

    let ids: Vec<ObjectId> = (0..10_000)
        .map(|_| c.put(&[2u8; SMALL]))
        .collect::<Result<_, _>>()?;
    let mut i = 0;
    let distinct = rate(secs, || {
        std::hint::black_box(c.get_one(ids[i % ids.len()], None)?[0]);
        i += 1;
        Ok(())
    })?;
    r.push(
        "single client get distinct objects calls per second",
        distinct,
        "calls/s",
    );
    c.delete_many(&ids)?;
    c.delete(id)?;

    let batch: Vec<ObjectId> = (0..1000)
        .map(|_| c.put(&[3u8; SMALL]))
        .collect::<Result<_, _>>()?;
    let batched = rate(secs, || {
        std::hint::black_box(c.get(&batch, None)?.len());
        Ok(())
    })? * batch.len() as f64;
    r.push(
        "single client get objects per second (batches of 1000)",
        batched,
        "objects/s",
    );
    c.delete_many(&batch)?;

    let (calls, _) = multi(opts, &t.socket, "put-calls")?;
    r.push("multi client put calls per second", calls, "calls/s");

    r.push(
        "single client put gigabytes per second",
        put_bytes(&c, secs)? / 1e9,
        "GB/s",
    );
    let (_, bytes) = multi(opts, &t.socket, "put-bytes")?;
    r.push("multi client put gigabytes per second", bytes / 1e9, "GB/s");

    if c.capacity() >= GIB + (64 << 20) {
        r.push(
            "get 1 GiB object microseconds",
            get_latency_us(&c, GIB, secs.min(1.0))?,
            "us",
        );
    } else {
        eprintln!("  skipped get 1 GiB object: the store holds less than 1 GiB");
    }
    r.push(
        "get 1 KiB object microseconds",
        get_latency_us(&c, 1 << 10, secs.min(1.0))?,
        "us",
    );
    Ok(r)
}

/// Runs `workload` in `opts.clients` processes started together; returns
/// total calls per second and bytes per second.
fn multi(opts: &BenchOptions, socket: &Path, workload: &str) -> anyhow::Result<(f64, f64)> {
    let mut children: Vec<Child> = Vec::new();
    let kill_all = |children: &mut Vec<Child>| {
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    };
    for _ in 0..opts.clients {
        let child = Command::new(&opts.exe)
            .args([
                "bench-client",
                "--workload",
                workload,
                "--seconds",
                &opts.seconds.to_string(),
                "--socket",
            ])
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", opts.exe.display()));
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                kill_all(&mut children);
                return Err(e);
            }
        }
    }
    let result = (|| {
        let mut outs = Vec::new();
        for c in &mut children {
            let mut out = BufReader::new(c.stdout.take().context("child stdout")?);
            let mut line = String::new();
            out.read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("benchmark client failed to start: {line:?}");
            }
            outs.push(out);
        }
        let start = Instant::now();
        for c in &mut children {
            writeln!(c.stdin.as_mut().context("child stdin")?, "go")?;
        }
        // Totals over the wall-clock time from "go" to the last client done,
        // so clients that ran at different moments are not summed as if parallel.
        let (mut calls, mut bytes) = (0.0, 0.0);
        for mut out in outs {
            let mut line = String::new();
            out.read_line(&mut line)?;
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("benchmark client said {line:?}"))?;
            calls += v["calls"].as_f64().unwrap_or(0.0);
            bytes += v["bytes"].as_f64().unwrap_or(0.0);
        }
        let secs = start.elapsed().as_secs_f64();
        Ok((calls / secs, bytes / secs))
    })();
    kill_all(&mut children);
    result
}

/// Entry point of `arca bench-client`: connect, say "ready", wait for "go",
/// run, print one JSON line.
pub fn client_main(a: &ClientArgs) -> anyhow::Result<()> {
    let c = StoreClient::connect(&a.socket)?;
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let start = Instant::now();
    let (calls, bytes) = match a.workload.as_str() {
        "put-calls" => (put_calls(&c, a.seconds)?, 0.0),
        "put-bytes" => {
            let b = put_bytes(&c, a.seconds)?;
            (b / LARGE as f64, b)
        }
        w => bail!("unknown workload {w:?}"),
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"calls": calls * secs, "bytes": bytes * secs})
    );
    Ok(())
}
