//! `arca bench cluster`: a cluster of nodes on this machine, started for the
//! run with `arca start` (each node its own process, temp dir and IP
//! 127.0.1.k; the head's port in 17000-17999) and stopped after it. Objects
//! pulled and broadcast between nodes beside a raw TCP stream over loopback
//! measured in the same run, tasks run on a node other than the driver's,
//! and how long the head takes to see a killed node dead.
//!
//! A workload that fails is reported as failed (with the error and the kept
//! node logs) and the others still run.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use arca::{Buffer, ObjectRef};
use arca_bench::Report;

use super::bench_tasks::rate;
use super::node::NodeClient;

const GIB: usize = 1 << 30;
/// The only ports the run listens on (others run clusters on other ports).
const PORTS: std::ops::Range<u16> = 17000..18000;
/// How long any one `get` may take before the workload is called failed.
const GET_TIMEOUT: Duration = Duration::from_secs(120);
/// Each node's object store.
const NODE_MEMORY: &str = "3GiB";

const TRANSFER: &str = "object transfer gigabytes per second (two nodes)";
const TCP: &str = "tcp loopback gigabytes per second";
const PULL: &str = "pull 1 GiB object seconds";
const BROADCAST: &str = "broadcast 1 GiB to 3 nodes seconds";
const SYNC: &str = "remote tasks sync per second";
const ASYNC: &str = "remote tasks async per second";
const DEATH: &str = "node death detection seconds";

/// The metrics in the order they are reported, with their units.
const METRICS: [(&str, &str); 7] = [
    (TRANSFER, "GB/s"),
    (TCP, "GB/s"),
    (PULL, "s"),
    (BROADCAST, "s"),
    (SYNC, "tasks/s"),
    (ASYNC, "tasks/s"),
    (DEATH, "s"),
];

/// Reads an object where it runs: its length, the XOR of one byte per MiB
/// (so that every MiB's page is really there) and the node it ran on.
#[arca::remote]
fn read_object(b: Buffer) -> (u64, u8, String) {
    (
        b.len() as u64,
        sample(&b),
        arca::node_id().unwrap_or_default(),
    )
}

#[arca::remote]
fn small_value() -> u8 {
    0
}

fn sample(b: &[u8]) -> u8 {
    b.iter().step_by(1 << 20).fold(0, |a, x| a ^ x)
}

/// Settings of a `bench cluster` run.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Seconds per task-rate workload.
    pub seconds: f64,
}

type Figures = HashMap<&'static str, Result<f64, String>>;

pub fn run(o: &ClusterOptions) -> anyhow::Result<Report> {
    let mut figures = Figures::new();
    let mut ports = Ports::default();
    eprintln!("tcp loopback");
    figures.insert(
        TCP,
        ports
            .take("127.0.0.1")
            .and_then(tcp_loopback_gbps)
            .map_err(|e| format!("{e:#}")),
    );
    match ports.take("127.0.1.1") {
        Ok(port) => figures.extend(main_cluster(port, o)),
        Err(e) => {
            let e = format!("{e:#}");
            for m in [TRANSFER, PULL, BROADCAST, SYNC, ASYNC] {
                figures.insert(m, Err(e.clone()));
            }
        }
    }
    eprintln!("node death detection");
    figures.insert(
        DEATH,
        ports
            .take("127.0.1.1")
            .and_then(|port| {
                let mut c = Cluster::new("death", port)?;
                death_detection(&mut c).map_err(|e| anyhow!(c.failed(e)))
            })
            .map_err(|e| format!("{e:#}")),
    );
    let mut r = Report::default();
    for (name, unit) in METRICS {
        match figures.remove(name) {
            Some(Ok(v)) => r.push(name, v, unit),
            Some(Err(e)) => r.push_failed(name, unit, &e),
            None => r.push_failed(name, unit, "not measured"),
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// Ports

/// Picks free ports in [`PORTS`], starting from one derived from the pid so
/// that concurrent runs start apart.
#[derive(Debug, Default)]
struct Ports {
    taken: Vec<u16>,
}

impl Ports {
    /// A port free on `ip` that this run has not used yet.
    fn take(&mut self, ip: &str) -> anyhow::Result<u16> {
        let span = PORTS.end - PORTS.start;
        let first = (std::process::id() % u32::from(span)) as u16;
        for i in 0..span {
            let port = PORTS.start + (first + i * 7) % span;
            if !self.taken.contains(&port) && TcpListener::bind((ip, port)).is_ok() {
                self.taken.push(port);
                return Ok(port);
            }
        }
        bail!("no free port in {}-{} on {ip}", PORTS.start, PORTS.end - 1)
    }
}

// ---------------------------------------------------------------------------
// The cluster's nodes

/// Nodes started with `arca start` for one cluster, stopped (and their temp
/// dirs removed, unless a workload failed) when dropped, also on errors.
#[derive(Debug)]
struct Cluster {
    exe: PathBuf,
    name: &'static str,
    port: u16,
    /// Started nodes' temp dirs, head first.
    dirs: Vec<PathBuf>,
    token: String,
    /// Keep the temp dirs (their node.log) for a failure to be looked into.
    keep: bool,
}

impl Cluster {
    fn new(name: &'static str, port: u16) -> anyhow::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("cannot find the arca executable")?,
            name,
            port,
            dirs: Vec::new(),
            token: String::new(),
            keep: false,
        })
    }

    /// Node `k`'s temp dir (the head is node 1).
    fn dir(&self, k: usize) -> PathBuf {
        std::env::temp_dir().join(format!(
            "arca-bench-cluster-{}-{}-{k}",
            std::process::id(),
            self.name
        ))
    }

    fn head(&self) -> PathBuf {
        self.dir(1)
    }

    /// Starts the head (node 1, IP 127.0.1.1), which declares a node dead
    /// after `node_timeout` seconds of silence.
    fn start_head(&mut self, num_cpus: f64, node_timeout: f64) -> anyhow::Result<()> {
        let port = self.port.to_string();
        self.start_node(1, num_cpus, &["--head", "--port", &port], node_timeout)?;
        let file = arca::scheduler::token_file(&self.head());
        self.token = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read the head's token in {}", file.display()))?
            .trim()
            .to_string();
        Ok(())
    }

    /// Starts node `k` (IP 127.0.1.k, custom resource `node{k}`: 1) joined
    /// to the head.
    fn add_node(&mut self, k: usize, num_cpus: f64) -> anyhow::Result<()> {
        let address = format!("127.0.1.1:{}", self.port);
        let resources = format!("{{\"node{k}\": 1}}");
        self.start_node(
            k,
            num_cpus,
            &["--address", &address, "--resources", &resources],
            3.0,
        )
    }

    fn start_node(
        &mut self,
        k: usize,
        num_cpus: f64,
        role: &[&str],
        node_timeout: f64,
    ) -> anyhow::Result<()> {
        let dir = self.dir(k);
        if dir.exists() {
            // Left by an earlier run whose pid this one has.
            self.stop_node(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
        self.dirs.push(dir.clone());
        let mut cmd = Command::new(&self.exe);
        cmd.arg("start")
            .args(role)
            .arg("--temp-dir")
            .arg(&dir)
            .args(["--num-cpus", &num_cpus.to_string()])
            .args(["--memory", NODE_MEMORY])
            .args(["--node-ip-address", &format!("127.0.1.{k}")])
            .args(["--node-timeout", &node_timeout.to_string()])
            .env_remove(arca::ENV_TEMP_DIR)
            .env_remove(arca::ENV_ADDRESS)
            .env_remove(arca::scheduler::ENV_WORKER_ID)
            .stdin(Stdio::null());
        if self.token.is_empty() {
            cmd.env_remove(arca_proto::consts::ENV_TOKEN);
        } else {
            cmd.env(arca_proto::consts::ENV_TOKEN, &self.token);
        }
        let out = cmd.output().context("cannot run `arca start`")?;
        ensure!(
            out.status.success(),
            "`arca start` of node {k} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Waits until the head's table shows `n` nodes alive.
    fn wait_alive(&self, n: usize) -> anyhow::Result<()> {
        let head = self.head();
        let mut client = NodeClient::connect(&head, "arca bench cluster")?
            .ok_or_else(|| anyhow!("the head in {} does not answer", head.display()))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = client.status()?;
            let alive = s.cluster.iter().filter(|n| n.alive).count();
            if alive >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the head shows {alive} of {n} nodes alive after 15 s ({} in its table)",
                    s.cluster.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `e` as one line, followed by where the node logs are, which are
    /// then kept.
    fn failed(&mut self, e: anyhow::Error) -> String {
        self.keep = true;
        let logs: Vec<String> = self
            .dirs
            .iter()
            .map(|d| d.join("node.log").display().to_string())
            .collect();
        format!("{e:#} (node logs kept: {})", logs.join(", ")).replace('\n', " ")
    }

    fn stop_node(&self, dir: &Path) {
        let _ = Command::new(&self.exe)
            .arg("stop")
            .arg("--temp-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes first, the head last, so that no node reports to a
        // head that is gone.
        for dir in self.dirs.iter().rev() {
            self.stop_node(dir);
        }
        for dir in &self.dirs {
            if !self.keep {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Workloads

/// One writer thread streams 2 GiB in 8 MiB writes to one reader thread over
/// 127.0.0.1: the kernel's copy in and out, the limit under any transfer
/// between two nodes of this machine.
fn tcp_loopback_gbps(port: u16) -> anyhow::Result<f64> {
    const CHUNK: usize = 8 << 20;
    const TOTAL: usize = 2 * GIB;
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k,
            }
        }
    });
    let mut w = TcpStream::connect(("127.0.0.1", port))?;
    let buf = vec![0x5au8; CHUNK];
    let t = Instant::now();
    for _ in 0..TOTAL / CHUNK {
        w.write_all(&buf)?;
    }
    drop(w);
    let n = reader
        .join()
        .map_err(|_| anyhow!("the reader thread panicked"))??;
    let secs = t.elapsed().as_secs_f64();
    ensure!(n == TOTAL, "the reader got {n} of {TOTAL} bytes");
    Ok(n as f64 / secs / 1e9)
}

/// Head (no CPUs: every task runs elsewhere) and nodes 2-4 (one CPU each):
/// transfer, pull, broadcast, remote task rates.
fn main_cluster(port: u16, o: &ClusterOptions) -> Figures {
    let names = [TRANSFER, PULL, BROADCAST, SYNC, ASYNC];
    let mut c = match Cluster::new("main", port) {
        Ok(c) => c,
        Err(e) => return names.iter().map(|n| (*n, Err(format!("{e:#}")))).collect(),
    };
    eprintln!("starting a cluster of 4 nodes (head at 127.0.1.1:{port})");
    let started = (|| {
        c.start_head(0.0, 3.0)?;
        for k in 2..=4 {
            c.add_node(k, 1.0)?;
        }
        c.wait_alive(4)?;
        arca::init_with(arca::Config {
            temp_dir: Some(c.head()),
            ..Default::default()
        })?;
        anyhow::Ok(())
    })();
    if let Err(e) = started {
        let e = c.failed(e.context("cannot start the cluster"));
        return names.iter().map(|n| (*n, Err(e.clone()))).collect();
    }
    let s = o.seconds;
    eprintln!("remote tasks");
    let sync = rate(s, || {
        arca::get_timeout(&small_value::try_remote()?, Some(GET_TIMEOUT))?;
        Ok(1)
    });
    let batch = rate(s, || {
        let refs: Vec<_> = (0..1000)
            .map(|_| small_value::try_remote())
            .collect::<arca::Result<_>>()?;
        arca::get_many_timeout(&refs, Some(GET_TIMEOUT))?;
        Ok(1000)
    });
    eprintln!("1 GiB objects");
    let data = gib_of_data();
    let pull = pull_seconds(&data);
    let transfer = pull
        .as_ref()
        .map(|secs| GIB as f64 / secs / 1e9)
        .map_err(|e| anyhow!("{e:#}"));
    let broadcast = broadcast_seconds(&data);
    let mut out = Figures::new();
    for (name, r) in [
        (SYNC, sync),
        (ASYNC, batch),
        (TRANSFER, transfer),
        (PULL, pull),
        (BROADCAST, broadcast),
    ] {
        out.insert(name, r.map_err(|e| c.failed(e)));
    }
    arca::shutdown();
    out
}

/// 1 GiB of bytes that differ from MiB to MiB.
fn gib_of_data() -> Buffer {
    let mut v = vec![0u8; GIB];
    for (i, w) in v.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    }
    v.into()
}

/// A task pinned to node `k` by its custom resource.
fn pinned(k: usize) -> read_object::Options {
    read_object::options().resources(&format!("node{k}"), 1.0)
}

/// Runs `read_object` on node `k` for `r`; how long from submit to result.
fn read_on(k: usize, r: &ObjectRef<Buffer>) -> anyhow::Result<(Duration, (u64, u8, String))> {
    let t = Instant::now();
    let out = arca::get_timeout(&pinned(k).try_remote(r)?, Some(GET_TIMEOUT))?;
    Ok((t.elapsed(), out))
}

/// Checks what a task read from a 1 GiB object; its node id.
fn check(out: &(u64, u8, String), expect: u8, driver_node: &str) -> anyhow::Result<String> {
    let (len, s, node) = out;
    ensure!(*len == GIB as u64, "the task read {len} bytes of {GIB}");
    ensure!(*s == expect, "the task read other bytes than were put");
    ensure!(
        !node.is_empty() && node != driver_node,
        "the task ran on the driver's node ({node:?}), not on another"
    );
    Ok(node.clone())
}

/// Waits (at most 10 s) until no store of the cluster holds much, so that
/// each 1 GiB object starts on empty stores.
fn wait_stores_drained() -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = arca::status()?;
        let used = s.cluster.iter().map(|n| n.store_used).max().unwrap_or(0);
        if s.store_used.max(used) < (GIB / 2) as u64 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            eprintln!(
                "  (a store still holds {} after 10 s; going on)",
                arca::ByteSize(s.store_used.max(used))
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 1 GiB object put on the head and read by a task on node 2: seconds
/// from submit to result minus those of the same task on a tiny object,
/// best of 3 (a fresh object each time: node 2 keeps its copy while it is
/// referenced).
fn pull_seconds(data: &Buffer) -> anyhow::Result<f64> {
    let driver_node = arca::node_id()?;
    let expect = sample(data);
    let tiny = || arca::put(&Buffer::from(vec![0x5au8; 1024]));
    read_on(2, &tiny()?)?; // node 2's worker started
    // A fresh tiny object each time, as each 1 GiB one is: node 2 locates
    // every one anew.
    let mut baseline = Duration::MAX;
    for _ in 0..5 {
        baseline = baseline.min(read_on(2, &tiny()?)?.0);
    }
    let mut no_arg = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let task = small_value::options()
            .resources("node2", 1.0)
            .try_remote()?;
        arca::get_timeout(&task, Some(GET_TIMEOUT))?;
        no_arg = no_arg.min(t.elapsed());
    }
    eprintln!(
        "  a task on node 2: {:.4} s without arguments, {:.4} s with a 1 KiB object",
        no_arg.as_secs_f64(),
        baseline.as_secs_f64()
    );
    let mut best = Duration::MAX;
    for i in 0..3 {
        wait_stores_drained()?;
        let t = Instant::now();
        let r = arca::put(data)?;
        let put = t.elapsed();
        let (took, out) = read_on(2, &r)?;
        let node = check(&out, expect, &driver_node)?;
        eprintln!(
            "  pull {}: {:.3} s on node {} (put {:.3} s; task on a tiny object {:.4} s)",
            i + 1,
            took.as_secs_f64(),
            node.get(..8).unwrap_or(&node),
            put.as_secs_f64(),
            baseline.as_secs_f64()
        );
        best = best.min(took);
    }
    Ok(best.saturating_sub(baseline).as_secs_f64().max(1e-6))
}

/// A 1 GiB object put on the head and read at once by three tasks, one on
/// each other node: wall time from submit to the last result, best of 2.
fn broadcast_seconds(data: &Buffer) -> anyhow::Result<f64> {
    let driver_node = arca::node_id()?;
    let expect = sample(data);
    let tiny = arca::put(&Buffer::from(vec![0x5au8; 1024]))?;
    for k in 3..=4 {
        read_on(k, &tiny)?; // workers started
    }
    let mut best = Duration::MAX;
    for i in 0..2 {
        wait_stores_drained()?;
        let r = arca::put(data)?;
        let t = Instant::now();
        let refs: Vec<_> = (2..=4)
            .map(|k| pinned(k).try_remote(&r))
            .collect::<arca::Result<_>>()?;
        let outs = arca::get_many_timeout(&refs, Some(GET_TIMEOUT))?;
        let took = t.elapsed();
        let mut nodes = Vec::new();
        for out in &outs {
            nodes.push(check(out, expect, &driver_node)?);
        }
        nodes.sort();
        nodes.dedup();
        ensure!(
            nodes.len() == 3,
            "the three tasks ran on {} nodes",
            nodes.len()
        );
        eprintln!("  broadcast {}: {:.3} s", i + 1, took.as_secs_f64());
        best = best.min(took);
    }
    Ok(best.as_secs_f64())
}

/// A head that declares a node dead after 1 s of silence and one node; the
/// node's process is SIGKILLed and the head's table polled every 5 ms:
/// seconds from the kill until it shows the node dead.
fn death_detection(c: &mut Cluster) -> anyhow::Result<f64> {
    use nix::sys::signal::{Signal, kill};
    c.start_head(1.0, 1.0)?;
    c.add_node(2, 1.0)?;
    c.wait_alive(2)?;
    let dir = c.dir(2);
    let pid: i32 = std::fs::read_to_string(dir.join("node.pid"))
        .context("cannot read node 2's pid")?
        .trim()
        .parse()
        .context("node 2's pid file")?;
    let head = c.head();
    let mut client = NodeClient::connect(&head, "arca bench cluster")?
        .ok_or_else(|| anyhow!("the head in {} does not answer", head.display()))?;
    let is_it =
        |n: &arca_proto::node::NodeInfo| n.pid == pid as u32 || Path::new(&n.temp_dir) == dir;
    ensure!(
        client.status()?.cluster.iter().any(|n| is_it(n) && n.alive),
        "node 2 is not in the head's table"
    );
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).context("cannot kill node 2")?;
    let t = Instant::now();
    loop {
        let s = client.status()?;
        if let Some(n) = s.cluster.iter().find(|n| is_it(n) && !n.alive) {
            let secs = t.elapsed().as_secs_f64();
            eprintln!("  seen dead after {secs:.3} s: {}", n.death_reason);
            return Ok(secs);
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("node 2 was killed 30 s ago and the head still shows it alive");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
