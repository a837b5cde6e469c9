//! `arca bench tasks`: the task and actor workloads of `ray microbenchmark`,
//! on an embedded node (or a running one with --address).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use arca::ObjectRef;
use arca_bench::Report;

#[arca::remote]
fn small_value() -> u8 {
    0
}

#[arca::remote]
fn refs_10k() -> Vec<ObjectRef<u8>> {
    (0..10_000).map(|_| arca::put(&0u8).expect("put")).collect()
}

struct Echo;

#[arca::actor]
impl Echo {
    fn new() -> Self {
        Echo
    }

    fn small_value(&self) -> u8 {
        0
    }
}

/// Settings of a `bench tasks` run.
#[derive(Debug, Clone)]
pub struct TasksOptions {
    /// Seconds per workload.
    pub seconds: f64,
    /// Driver processes for the multi-client workload.
    pub clients: usize,
    /// A running node's temp dir; an embedded node if `None`.
    pub temp_dir: Option<PathBuf>,
}

/// Calls `f` (which does `n` operations) until `seconds` pass; ops per second.
pub(super) fn rate(
    seconds: f64,
    mut f: impl FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<f64> {
    f()?; // warm-up: workers started, pages touched
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed().as_secs_f64() < seconds {
        n += f()?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn async_batch(n: usize) -> anyhow::Result<u64> {
    let refs: Vec<_> = (0..n).map(|_| small_value::remote()).collect();
    arca::get_many(&refs)?;
    Ok(n as u64)
}

pub fn run(o: &TasksOptions) -> anyhow::Result<Report> {
    let mut config = arca::Config::default();
    match &o.temp_dir {
        Some(dir) => config.temp_dir = Some(dir.clone()),
        None => {
            config.embedded = Some(arca::scheduler::NodeConfig {
                object_store_memory: 1 << 30,
                ..Default::default()
            })
        }
    }
    arca::init_with(config)?;
    let result = measure(o);
    arca::shutdown();
    result
}

/// The physical limit under a sync task: a blocking one-byte round trip
/// over a Unix socket between two threads (each hop is a cross-core wake-up;
/// a sync task takes two such round trips: driver-node, node-worker).
fn socket_round_trips(seconds: f64) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while b.read_exact(&mut byte).is_ok() && b.write_all(&byte).is_ok() {}
    });
    let mut byte = [0u8; 1];
    let n = rate(seconds, || {
        for _ in 0..100 {
            a.write_all(&byte)?;
            a.read_exact(&mut byte)?;
        }
        Ok(100)
    });
    drop(a);
    let _ = echo.join();
    n
}

fn measure(o: &TasksOptions) -> anyhow::Result<Report> {
    let s = o.seconds;
    let mut r = Report::default();
    row(
        &mut r,
        "unix socket round trips per second (blocking, two threads)",
        "round trips/s",
        || socket_round_trips(s.min(1.0)),
    )?;
    row(
        &mut r,
        "single client tasks sync per second",
        "tasks/s",
        || {
            rate(s, || {
                arca::get(&small_value::remote())?;
                Ok(1)
            })
        },
    )?;
    row(
        &mut r,
        "single client tasks async per second",
        "tasks/s",
        || rate(s, || async_batch(1000)),
    )?;
    row(
        &mut r,
        "multi client tasks async per second",
        "tasks/s",
        || multi_client(o),
    )?;
    let a = Echo::remote();
    row(&mut r, "1:1 actor calls sync per second", "calls/s", || {
        rate(s, || {
            arca::get(&a.small_value())?;
            Ok(1)
        })
    })?;
    row(
        &mut r,
        "1:1 actor calls async per second",
        "calls/s",
        || {
            rate(s, || {
                let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
                arca::get_many(&refs)?;
                Ok(1000)
            })
        },
    )?;
    row(
        &mut r,
        "single client wait 1k refs per second",
        "waits/s",
        || {
            rate(s, || {
                let mut not_ready: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
                while !not_ready.is_empty() {
                    not_ready = arca::wait(&not_ready, 1, None)?.1;
                }
                Ok(1)
            })
        },
    )?;
    row(
        &mut r,
        "single client tasks and get batch per second",
        "batches/s",
        || rate(s, || async_batch(1000).map(|_| 1)),
    )?;
    let outer = refs_10k::remote();
    row(
        &mut r,
        "single client get object containing 10k refs per second",
        "gets/s",
        || {
            rate(s, || {
                let inner = arca::get(&outer)?;
                anyhow::ensure!(inner.len() == 10_000);
                Ok(1)
            })
        },
    )?;
    Ok(r)
}

/// Measures one workload; an error names the workload it came from.
fn row(
    r: &mut Report,
    name: &str,
    unit: &str,
    measure: impl FnOnce() -> anyhow::Result<f64>,
) -> anyhow::Result<()> {
    let value = measure().with_context(|| format!("measuring {name:?}"))?;
    r.push(name, value, unit);
    Ok(())
}

/// Several driver processes submitting batches to the same node at once.
fn multi_client(o: &TasksOptions) -> anyhow::Result<f64> {
    let status = arca::status()?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for _ in 0..o.clients {
        let child = Command::new(&exe)
            .args([
                "bench-tasks-client",
                "--temp-dir",
                &status.session_dir,
                "--seconds",
            ])
            .arg(o.seconds.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start a bench client process")?;
        children.push(child);
    }
    let mut total = 0.0;
    for c in children {
        let out = c.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "a bench client failed ({})",
            out.status
        );
        total += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .context("bench client output")?;
    }
    Ok(total)
}

/// `arca bench-tasks-client`: one multi-client driver; prints its tasks/s.
pub fn client(temp_dir: PathBuf, seconds: f64) -> anyhow::Result<()> {
    arca::init_with(arca::Config {
        temp_dir: Some(temp_dir),
        ..Default::default()
    })?;
    let r = rate(seconds, || async_batch(1000));
    arca::shutdown();
    println!("{}", r?);
    Ok(())
}
