//! End-to-end tests of a cluster: several real node daemons on this machine
//! (`arca start --head` and `arca start --address`), each with its own temp
//! dir, 127.0.0.x address and port, and driver processes on them.
//!
//! Every node is stopped when its test ends (also when it fails): the
//! [`Cluster`] guard runs `arca stop` for each, then kills what is left.

mod common;
mod task_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use arca::ObjectRef;
use common::{TempDir, arca_bin, pattern};
use task_common::*;

// ---------------------------------------------------------------------------
// Tasks the scenarios run

#[arca::remote]
fn whoami(i: u32) -> (u32, String) {
    (i, arca::node_id().unwrap_or_default())
}

#[arca::remote]
fn here() -> String {
    arca::node_id().unwrap_or_default()
}

/// Checks a large argument byte for byte where it runs.
#[arca::remote]
fn check_buffer(b: arca::Buffer, seed: u64) -> (bool, usize, String) {
    let ok = b[..] == pattern(seed, b.len())[..];
    (ok, b.len(), arca::node_id().unwrap_or_default())
}

#[arca::remote]
fn make_buffer(seed: u64, len: usize) -> arca::Buffer {
    pattern(seed, len).into()
}

/// Puts a value on its node and returns the reference, nested.
#[arca::remote]
fn put_here(seed: u64, len: usize) -> Vec<ObjectRef<Vec<u8>>> {
    vec![arca::put(&pattern(seed, len)).expect("put")]
}

/// Takes a nested reference made elsewhere, reads it, and passes it on.
#[arca::remote]
fn pass_on(refs: Vec<ObjectRef<Vec<u8>>>, seed: u64) -> Vec<ObjectRef<Vec<u8>>> {
    let v = arca::get(&refs[0]).expect("get of a nested ref");
    assert!(v == pattern(seed, v.len()), "nested value corrupted");
    refs
}

struct Counter {
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

    fn node(&self) -> String {
        arca::node_id().unwrap_or_default()
    }

    /// Adds the buffer's length: a call whose argument may live elsewhere.
    fn add_len(&mut self, b: arca::Buffer) -> i64 {
        self.n += b.len() as i64;
        self.n
    }
}

/// Calls an actor through a handle passed to a task on another node.
#[arca::remote]
fn call_actor(c: CounterHandle, times: u32) -> Vec<i64> {
    let refs: Vec<_> = (0..times).map(|_| c.incr(1)).collect();
    arca::get_many_timeout(&refs, Some(Duration::from_secs(30))).expect("calls from a third node")
}

/// Keeps references, and the copies of their objects on its node.
struct Keeper {
    kept: Vec<ObjectRef<arca::Buffer>>,
}

#[arca::actor]
impl Keeper {
    fn new() -> Self {
        Keeper { kept: Vec::new() }
    }

    /// Reads each object here (pulling a copy) and keeps its reference.
    fn keep(&mut self, refs: Vec<ObjectRef<arca::Buffer>>) -> usize {
        let mut bytes = 0;
        for r in refs {
            bytes += arca::get(&r).expect("get on the keeper's node").len();
            self.kept.push(r);
        }
        bytes
    }
}

#[arca::remote]
fn shout(what: String) -> String {
    println!("{what}");
    arca::node_id().unwrap_or_default()
}

/// Where a task with a large argument runs.
#[arca::remote]
fn where_is(b: arca::Buffer) -> (usize, String) {
    (b.len(), arca::node_id().unwrap_or_default())
}

#[arca::remote]
fn sleep_then(ms: u64, i: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    i
}

// ---------------------------------------------------------------------------
// The cluster harness

/// Ports for the tests' heads: one block per test process.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A head and the nodes that joined it, stopped on drop.
/// This run's 100 head ports: below the kernel's ephemeral range
/// (32768 and up), where the nodes' own outgoing connections take theirs,
/// and apart from other runs'.
fn port_base() -> u16 {
    20_000 + (std::process::id() % 120) as u16 * 100
}

struct Cluster {
    port: u16,
    nodes: Vec<PathBuf>,
    _dirs: Vec<TempDir>,
}

struct NodeSpec<'a> {
    cpus: u32,
    resources: &'a str,
    memory: &'a str,
}

const PLAIN: NodeSpec = NodeSpec {
    cpus: 2,
    resources: "",
    memory: "512MiB",
};

fn arca_cmd(cmd: &mut Command) -> Output {
    cmd.output().expect("cannot run arca")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Cluster {
    fn start(specs: &[NodeSpec]) -> Cluster {
        Self::start_with(specs, &[])
    }

    /// Starts node 0 as the head and the others joining it; `extra`
    /// arguments go to every node.
    fn start_with(specs: &[NodeSpec], extra: &[&str]) -> Cluster {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = port_base() + n;
        let mut c = Cluster {
            port,
            nodes: Vec::new(),
            _dirs: Vec::new(),
        };
        for s in specs {
            c.add(s, extra);
        }
        c.wait_alive(specs.len());
        c
    }

    /// Starts one more node (the first is the head).
    fn add(&mut self, s: &NodeSpec, extra: &[&str]) {
        let i = self.nodes.len();
        let dir = TempDir::new();
        let node_dir = dir.path().join("node");
        let mut cmd = Command::new(arca_bin());
        cmd.arg("start")
            .arg("--temp-dir")
            .arg(&node_dir)
            .args(["--num-cpus", &s.cpus.to_string(), "--memory", s.memory])
            .args(["--node-ip-address", &format!("127.0.0.{}", i + 1)])
            .args(extra)
            .env_remove("ARCA_TOKEN")
            .env_remove("ARCA_ADDRESS")
            .env_remove("ARCA_TEMP_DIR");
        if i == 0 {
            cmd.args(["--head", "--port", &self.port.to_string()]);
        } else {
            cmd.args(["--address", &self.address()]);
        }
        if !s.resources.is_empty() {
            cmd.args(["--resources", s.resources]);
        }
        let out = arca_cmd(&mut cmd);
        // Registered first, so that a failed start still stops the others.
        self.nodes.push(node_dir);
        self._dirs.push(dir);
        assert!(
            out.status.success(),
            "node {i} did not start: {}",
            text(&out)
        );
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn head(&self) -> &Path {
        &self.nodes[0]
    }

    /// `arca status --json` of node `i`.
    fn status(&self, i: usize) -> serde_json::Value {
        let out = arca_cmd(
            Command::new(arca_bin())
                .args(["status", "--json", "--temp-dir"])
                .arg(&self.nodes[i]),
        );
        assert!(out.status.success(), "arca status failed: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn wait_alive(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status(0);
            let alive = s["nodes"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|n| n["alive"] == true).count());
            if alive == n {
                return;
            }
            assert!(Instant::now() < deadline, "{n} nodes not alive: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node ids by index, from node i's own status.
    fn node_id(&self, i: usize) -> String {
        let s = self.status(i);
        let dir = self.nodes[i].display().to_string();
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["temp_dir"] == dir.as_str())
            .map(|n| n["node_id"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("node {i} not in its own status: {s}"))
    }

    fn pid(&self, i: usize) -> u32 {
        fs::read_to_string(self.nodes[i].join("node.pid"))
            .expect("node.pid")
            .trim()
            .parse()
            .unwrap()
    }

    /// Starts a driver of `scenario` on node `i`, with `files` written in
    /// its directory first.
    fn driver(&self, i: usize, scenario: &str, files: &[(&str, String)]) -> Driver {
        let dir = TempDir::new();
        for (name, contents) in files {
            fs::write(dir.path().join(name), contents).unwrap();
        }
        fs::write(
            dir.path().join("temp_dir"),
            self.nodes[i].display().to_string(),
        )
        .unwrap();
        fs::write(dir.path().join("address"), self.address()).unwrap();
        for (k, n) in self.nodes.iter().enumerate() {
            fs::write(dir.path().join(format!("node{k}")), n.display().to_string()).unwrap();
        }
        Driver::spawn_in(dir, scenario)
    }

    /// Objects and store bytes left on every node.
    fn leftovers(&self) -> Vec<(u64, u64)> {
        (0..self.nodes.len())
            .map(|i| {
                let s = self.status(i);
                (
                    s["objects"].as_u64().unwrap(),
                    s["store"]["used"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Joined nodes first, the head last.
        for dir in self.nodes.iter().rev() {
            let _ = Command::new(arca_bin())
                .arg("stop")
                .arg("--temp-dir")
                .arg(dir)
                .output();
        }
    }
}

// In a driver: the node it should use.
fn connect() {
    let temp_dir = PathBuf::from(fs::read_to_string(file("temp_dir")).unwrap());
    arca::init_with(arca::Config {
        temp_dir: Some(temp_dir),
        worker_args: entry_args(),
        ..Default::default()
    })
    .expect("arca::init_with (a cluster node)");
}

fn node_ids() -> Vec<String> {
    arca::status()
        .unwrap()
        .cluster
        .iter()
        .map(|n| arca_proto::hex::encode(&n.node_id))
        .collect()
}

// ---------------------------------------------------------------------------
// Scenarios (in driver processes)

fn spread() {
    connect();
    assert_eq!(node_ids().len(), 3, "{:?}", arca::status().unwrap().cluster);
    let refs: Vec<_> = (0..1000).map(whoami::remote).collect();
    let results = arca::get_many_timeout(&refs, GET).expect("1000 tasks");
    let mut per_node = std::collections::BTreeMap::<String, u32>::new();
    for (i, (j, node)) in results.into_iter().enumerate() {
        assert_eq!(i as u32, j);
        *per_node.entry(node).or_default() += 1;
    }
    let ids = node_ids();
    for id in &ids {
        assert!(
            per_node.contains_key(id),
            "no task ran on node {id}: {per_node:?}"
        );
    }
    println!("per node: {per_node:?}");
}

fn custom_resource() {
    connect();
    let special = fs::read_to_string(file("special_node")).unwrap();
    let refs: Vec<_> = (0..20)
        .map(|_| here::options().resources("special", 1.0).remote())
        .collect();
    for node in arca::get_many_timeout(&refs, GET).unwrap() {
        assert_eq!(node, special, "a task asking for `special` ran elsewhere");
    }
    // One that no node can ever run fails at once, naming the shortfall.
    let r = here::options().resources("nowhere", 1.0).remote();
    let e = get_err(&r);
    let msg = e.to_string();
    assert!(msg.contains("nowhere") && msg.contains("no node"), "{msg}");
}

fn big_object() {
    connect();
    let len: usize = 1 << 30;
    let target = fs::read_to_string(file("other_node")).unwrap();
    // Made here, read on another node.
    let r = arca::put(&arca::Buffer::from(pattern(7, len))).unwrap();
    let (ok, n, node) = get(&check_buffer::options()
        .resources("other", 1.0)
        .remote(&r, 7));
    assert!(
        ok && n == len,
        "1 GiB object corrupted on the way ({n} bytes)"
    );
    assert_eq!(node, target);
    drop(r);
    // Made on another node, read here.
    let made = make_buffer::options()
        .resources("other", 1.0)
        .remote(11, 256 << 20);
    let b: arca::Buffer = get(&made);
    assert!(
        b[..] == pattern(11, 256 << 20)[..],
        "pulled result corrupted"
    );
}

fn chain() {
    connect();
    let nodes = [
        fs::read_to_string(file("n1")).unwrap(),
        fs::read_to_string(file("n2")).unwrap(),
    ];
    let _ = nodes;
    // A ref put on node 1, passed through node 2 and back here.
    let first = put_here::options().resources("one", 1.0).remote(5, 1 << 20);
    let second = pass_on::options().resources("two", 1.0).remote(&first, 5);
    let third = pass_on::options().resources("one", 1.0).remote(&second, 5);
    let refs = get(&third);
    let v = arca::get(&refs[0]).expect("get of the nested ref at the end of the chain");
    assert!(v == pattern(5, 1 << 20));
    drop((first, second, third, refs));
    touch("dropped");
    assert!(
        wait_for("checked", WAIT),
        "the test did not check for leftovers"
    );
}

fn remote_actor() {
    connect();
    let home = fs::read_to_string(file("home")).unwrap();
    let c = Counter::options().resources("home", 1.0).remote(100);
    assert_eq!(
        get(&c.node()),
        home,
        "the actor is not on the node with its resource"
    );
    // Calls run in order, one at a time.
    let refs: Vec<_> = (1..=50).map(|_| c.incr(1)).collect();
    let got = arca::get_many_timeout(&refs, GET).unwrap();
    assert_eq!(got, (101..=150).collect::<Vec<i64>>());
    // Through a handle passed to a task on a third node.
    let third = call_actor::options()
        .resources("third", 1.0)
        .remote(c.clone(), 10);
    assert_eq!(get(&third), (151..=160).collect::<Vec<i64>>());
    assert_eq!(get(&c.incr(0)), 160);
    // A call whose argument lives on this node (the actor's node pulls it)
    // between calls that need nothing: still in order, though the node sends
    // the calls after it ahead to the actor's worker.
    let mut refs = Vec::new();
    let mut want = Vec::new();
    let mut n = 160;
    for i in 0..6 {
        let big = arca::put(&make_buffer(i, 1 << 20)).unwrap();
        refs.push(c.add_len(&big));
        n += 1 << 20;
        want.push(n);
        for _ in 0..5 {
            refs.push(c.incr(1));
            n += 1;
            want.push(n);
        }
    }
    assert_eq!(arca::get_many_timeout(&refs, GET).unwrap(), want);
}

fn lost_node() {
    connect();
    // On the victim: an actor, and an object only it has. Elsewhere: long
    // tasks, some of which run on the victim and are retried.
    let victim = fs::read_to_string(file("victim")).unwrap();
    let c = Counter::options()
        .resources("victim", 1.0)
        .max_restarts(1)
        .remote(0);
    assert_eq!(get(&c.node()), victim);
    assert_eq!(get(&c.incr(5)), 5);
    let lost = make_buffer::options()
        .resources("victim", 1.0)
        .remote(3, 4 << 20);
    arca::wait(std::slice::from_ref(&lost), 1, GET).unwrap();
    let refs: Vec<_> = (0..6)
        .map(|i| sleep_then::options().max_retries(3).remote(1500, i))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    touch("kill");
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(
            get(r),
            i as u32,
            "task {i} was not retried after its node died"
        );
    }
    // A node with the same resources replaces the victim: the actor is
    // restarted there (fresh state) and the lost object made again.
    let replaced = get(&c.node());
    assert_ne!(replaced, victim, "the actor did not move");
    assert_eq!(get(&c.incr(1)), 1, "the restarted actor has fresh state");
    let b: arca::Buffer = get(&lost);
    assert!(
        b[..] == pattern(3, 4 << 20)[..],
        "the remade object differs"
    );
    // A value put by a driver on the dead node... is not here: a put here
    // whose only pulled copy died elsewhere is still here.
    let kept = arca::put(&7u64).unwrap();
    assert_eq!(get(&kept), 7);
}

fn logs_and_locality() {
    connect();
    let other = fs::read_to_string(file("other_node")).unwrap();
    // Output of a task on another node reaches this driver, with its IP.
    let node = get(&shout::options()
        .resources("other", 1.0)
        .remote(String::from("hello from afar")));
    assert_eq!(node, other);
    // A task whose 8 MiB argument lives on the other node runs there,
    // although it would fit here.
    let big = make_buffer::options()
        .resources("other", 1.0)
        .remote(9, 8 << 20);
    arca::wait(std::slice::from_ref(&big), 1, GET).unwrap();
    for _ in 0..3 {
        let (n, at) = get(&where_is::remote(&big));
        assert_eq!(
            (n, at.as_str()),
            (8 << 20, other.as_str()),
            "the task did not go to its bytes"
        );
    }
    // Lines are printed by a thread of their own: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
}

fn local_work() {
    connect();
    let refs: Vec<_> = (0..20).map(whoami::remote).collect();
    let results = arca::get_many_timeout(&refs, GET).expect("tasks with the head gone");
    assert_eq!(results.len(), 20);
    let s = arca::status().unwrap();
    assert!(
        !s.head_error.is_empty(),
        "the driver's status does not say the head is gone"
    );
}

fn blip() {
    connect();
    let refs: Vec<_> = (0..200).map(|i| sleep_then::remote(20, i)).collect();
    touch("pause");
    assert!(
        wait_for("resumed", WAIT),
        "the test did not resume the node"
    );
    let got = arca::get_many_timeout(&refs, GET).expect("tasks across a pause");
    assert_eq!(got, (0..200).collect::<Vec<u32>>());
}

/// Bytes of each of [`spilled_pull`]'s objects: four overfill node 0's
/// 64 MiB store, so the first ones are spilled.
const SPILLED: usize = 20 << 20;

/// Puts four objects here, waits for the test to see some spilled, then has
/// another node read every byte of each.
fn spilled_pull() {
    connect();
    let refs: Vec<_> = (0..4u64)
        .map(|i| arca::put(&arca::Buffer::from(pattern(i, SPILLED))).expect("put"))
        .collect();
    touch("put");
    assert!(wait_for("go", WAIT), "the test saw nothing spilled");
    for (i, r) in refs.iter().enumerate() {
        let (ok, n, _) = get(&check_buffer::options()
            .resources("other", 1.0)
            .remote(r, i as u64));
        assert!(
            ok && n == SPILLED,
            "object {i} corrupted on the way ({n} bytes)"
        );
    }
    touch("pulled");
    assert!(wait_for("checked", WAIT), "the test did not check");
}

/// Bytes of [`evicted_copy`]'s objects: four overfill node 1's 64 MiB store.
const EVICTED: usize = 20 << 20;

/// On node 1: reads an object made on node 0 (a pulled copy here), puts
/// enough to overfill this node's store, then reads the object again once
/// the test saw the copy evicted.
fn evicted_copy() {
    connect();
    let made = make_buffer::options()
        .resources("maker", 1.0)
        .remote(7, EVICTED);
    let check = |what: &str| {
        let b = arca::get_timeout(&made, GET).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(b[..] == pattern(7, EVICTED)[..], "{what}: corrupted");
    };
    check("the first read");
    let filler: Vec<_> = (0..4u64)
        .map(|i| arca::put(&arca::Buffer::from(pattern(i, EVICTED))).expect("put"))
        .collect();
    touch("put");
    assert!(wait_for("go", WAIT), "the test saw nothing evicted");
    check("the read after eviction");
    for (i, r) in filler.iter().enumerate() {
        let b = get(r);
        assert!(
            b[..] == pattern(i as u64, EVICTED)[..],
            "filler {i} corrupted"
        );
    }
    touch("read");
    assert!(wait_for("checked", WAIT), "the test did not check");
}

/// Makes two objects on node 1 and has an actor on node 2 pull copies;
/// reads one as soon as the test killed node 1 (the pull from node 1 fails
/// and goes to the copy), the other once this node knows node 1 is dead
/// (the object is remote at the copy from then on). Nothing else could
/// make them: the resource they need died with node 1.
fn copy_elsewhere() {
    connect();
    let made: Vec<_> = (0..2u64)
        .map(|i| {
            make_buffer::options()
                .resources("maker", 1.0)
                .remote(5 + i, EVICTED)
        })
        .collect();
    let keeper = Keeper::options().resources("keeper", 1.0).remote();
    assert_eq!(get(&keeper.keep(made.clone())), 2 * EVICTED);
    touch("kill");
    for (i, r) in made.iter().enumerate() {
        let flag = ["killed", "dead"][i];
        assert!(wait_for(flag, WAIT), "the test did not say {flag}");
        let b = arca::get_timeout(r, GET).expect("an object after its node died");
        assert!(
            b[..] == pattern(5 + i as u64, EVICTED)[..],
            "copy {i} differs"
        );
    }
}

/// Bytes of [`serve_object`]'s object: three chunks and a bit.
const SERVED: usize = (15 << 20) + 5;

/// Puts an object on its node for the test to pull, and waits.
fn serve_object() {
    connect();
    let r = arca::put(&arca::Buffer::from(pattern(11, SERVED))).expect("put");
    fs::write(file("object"), r.id().to_hex()).unwrap();
    assert!(
        wait_for("checked", WAIT),
        "the test did not pull the object"
    );
}

#[test]
#[ignore = "entry point of the driver and worker processes the tests start"]
fn child_entry() {
    child_main(|scenario| match scenario {
        "spread" => spread(),
        "custom_resource" => custom_resource(),
        "big_object" => big_object(),
        "chain" => chain(),
        "lost_node" => lost_node(),
        "remote_actor" => remote_actor(),
        "local_work" => local_work(),
        "logs_and_locality" => logs_and_locality(),
        "blip" => blip(),
        "serve_object" => serve_object(),
        "spilled_pull" => spilled_pull(),
        "evicted_copy" => evicted_copy(),
        "copy_elsewhere" => copy_elsewhere(),
        other => panic!("unknown scenario {other}"),
    });
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn thousand_tasks_spread_over_three_nodes() {
    let c = Cluster::start(&[PLAIN, PLAIN, PLAIN]);
    c.driver(0, "spread", &[]).finish();
}

#[test]
fn custom_resources_only_where_they_exist() {
    let c = Cluster::start(&[
        PLAIN,
        NodeSpec {
            resources: r#"{"special": 2}"#,
            ..PLAIN
        },
    ]);
    c.driver(0, "custom_resource", &[("special_node", c.node_id(1))])
        .finish();
    // `arca status` on any node shows the whole cluster and its totals.
    let s = c.status(0);
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[1]["resources_total"]["special"], 2.0);
}

#[test]
fn one_gib_object_made_on_one_node_read_on_another() {
    let c = Cluster::start(&[
        NodeSpec {
            memory: "2GiB",
            ..PLAIN
        },
        NodeSpec {
            memory: "2GiB",
            resources: r#"{"other": 1}"#,
            ..PLAIN
        },
    ]);
    c.driver(0, "big_object", &[("other_node", c.node_id(1))])
        .finish();
    // Everything freed everywhere once the driver is gone.
    wait_until_clean(&c);
}

/// Spill totals of node `k`'s store: (objects only on disk, restored).
fn spill_counts(c: &Cluster, k: usize) -> (u64, u64) {
    let t = store_totals(c, k);
    let spill = &t["spill"];
    let n = |k: &str| spill[k].as_u64().unwrap_or_else(|| panic!("no {k} in {t}"));
    (n("objects_on_disk_only"), n("restored_objects"))
}

#[test]
fn a_spilled_object_is_pulled_from_disk_without_restoring_it() {
    let c = Cluster::start(&[
        NodeSpec {
            memory: "64MiB",
            ..PLAIN
        },
        NodeSpec {
            resources: r#"{"other": 1}"#,
            ..PLAIN
        },
    ]);
    let mut d = c.driver(0, "spilled_pull", &[]);
    d.await_flag("put", WAIT);
    common::wait_until("an object spilled", WAIT, || spill_counts(&c, 0).0 > 0);
    d.raise("go");
    d.await_flag("pulled", WAIT);
    let (on_disk, restored) = spill_counts(&c, 0);
    assert!(on_disk > 0, "nothing stayed on disk");
    assert_eq!(restored, 0, "node 0 restored objects to serve them");
    d.raise("checked");
    d.finish();
}

/// Node `k`'s store totals, from `arca memory --json`.
fn store_totals(c: &Cluster, k: usize) -> serde_json::Value {
    let out = Command::new(arca_bin())
        .args(["memory", "--json", "--temp-dir"])
        .arg(&c.nodes[k])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("arca memory --json: {e}: {out:?}"));
    v["totals"].clone()
}

#[test]
fn a_pulled_copy_is_evicted_not_spilled_and_pulled_again() {
    let c = Cluster::start(&[
        NodeSpec {
            resources: r#"{"maker": 1}"#,
            ..PLAIN
        },
        NodeSpec {
            memory: "64MiB",
            ..PLAIN
        },
    ]);
    let mut d = c.driver(1, "evicted_copy", &[]);
    d.await_flag("put", WAIT);
    let t = store_totals(&c, 1);
    assert_eq!(t["evicted_objects"], 1, "the copy was not evicted: {t}");
    assert_eq!(
        t["evicted_bytes"].as_u64().map(|b| b >= EVICTED as u64),
        Some(true),
        "{t}"
    );
    d.raise("go");
    d.await_flag("read", WAIT);
    d.raise("checked");
    d.finish();
}

#[test]
fn an_object_whose_node_died_is_read_from_a_copy_on_another_node() {
    let c = Cluster::start_with(
        &[
            PLAIN,
            NodeSpec {
                resources: r#"{"maker": 1}"#,
                ..PLAIN
            },
            NodeSpec {
                resources: r#"{"keeper": 1}"#,
                ..PLAIN
            },
        ],
        &["--node-timeout", "1"],
    );
    let mut d = c.driver(0, "copy_elsewhere", &[]);
    d.await_flag("kill", WAIT);
    let victim = c.node_id(1);
    sigkill(c.pid(1));
    d.raise("killed");
    common::wait_until("node 1 declared dead", WAIT, || {
        c.status(0)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node_id"] == victim.as_str() && n["alive"] == false)
    });
    d.raise("dead");
    d.finish();
    let log = fs::read_to_string(c.head().join("node.log")).unwrap();
    assert!(
        log.contains("another node has a copy"),
        "the head did not turn to the copy:\n{log}"
    );
    assert!(
        !log.contains("remaking outputs"),
        "the head remade what a copy had:\n{log}"
    );
}

#[test]
fn refs_passed_across_nodes_are_freed_at_the_end() {
    let c = Cluster::start(&[
        PLAIN,
        NodeSpec {
            resources: r#"{"one": 1}"#,
            ..PLAIN
        },
        NodeSpec {
            resources: r#"{"two": 1}"#,
            ..PLAIN
        },
    ]);
    let mut d = c.driver(0, "chain", &[("n1", c.node_id(1)), ("n2", c.node_id(2))]);
    d.await_flag("dropped", WAIT * 2);
    // While the driver still runs, nothing is left on any node.
    wait_until_clean(&c);
    d.raise("checked");
    d.finish();
}

fn wait_until_clean(c: &Cluster) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = c.leftovers();
        if left
            .iter()
            .all(|&(objects, used)| objects == 0 && used == 0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "objects left on the nodes (objects, store bytes): {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn actors_on_other_nodes_take_calls_in_order() {
    let c = Cluster::start(&[
        PLAIN,
        NodeSpec {
            resources: r#"{"home": 1}"#,
            ..PLAIN
        },
        NodeSpec {
            resources: r#"{"third": 1}"#,
            ..PLAIN
        },
    ]);
    c.driver(0, "remote_actor", &[("home", c.node_id(1))])
        .finish();
}

#[test]
fn a_killed_node_is_declared_dead_its_work_retried_restarted_and_remade() {
    let victim_spec = NodeSpec {
        resources: r#"{"victim": 2}"#,
        ..PLAIN
    };
    let mut c = Cluster::start_with(
        &[NodeSpec { cpus: 1, ..PLAIN }, victim_spec, PLAIN],
        &["--node-timeout", "1"],
    );
    let victim = c.node_id(1);
    let mut d = c.driver(0, "lost_node", &[("victim", victim.clone())]);
    d.await_flag("kill", WAIT);
    // The victim's workers run the driver's job, shown by the head's id
    // and the job's number there.
    let head_id = c.node_id(0);
    let s = c.status(1);
    let workers = s["workers"].as_array().unwrap();
    assert!(
        !workers.is_empty() && workers.iter().all(|w| w["job_node"] == head_id.as_str()),
        "{s}"
    );
    assert!(
        workers.iter().all(|w| w["job_id"].as_u64() < Some(1 << 48)),
        "{s}"
    );
    sigkill(c.pid(1));
    c.add(
        &NodeSpec {
            resources: r#"{"victim": 2}"#,
            ..PLAIN
        },
        &["--node-timeout", "1"],
    );
    d.finish();
    let s = c.status(0);
    let dead = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == victim.as_str())
        .unwrap()
        .clone();
    assert_eq!(dead["alive"], false, "{s}");
    assert!(
        dead["death_reason"].as_str().unwrap().contains("heartbeat"),
        "{dead}"
    );
    // The head did remake the object and restart the actor (the driver saw
    // the results).
    let log = fs::read_to_string(c.head().join("node.log")).unwrap();
    for want in ["remaking outputs lost with their node", "restarting actor"] {
        assert!(log.contains(want), "`{want}` not in the head's log:\n{log}");
    }
}

#[test]
fn remote_output_reaches_the_driver_and_tasks_go_to_their_bytes() {
    let c = Cluster::start(&[
        PLAIN,
        NodeSpec {
            resources: r#"{"other": 1}"#,
            ..PLAIN
        },
    ]);
    let out = c
        .driver(0, "logs_and_locality", &[("other_node", c.node_id(1))])
        .finish();
    assert!(
        out.lines()
            // (The worker's libtest may have written on the line before.)
            .any(|l| l.starts_with("(shout pid=")
                && l.contains(", ip=127.0.0.2) ")
                && l.ends_with("hello from afar")),
        "the remote task's line is not in the driver's output:\n{out}"
    );
}

#[test]
fn a_dead_head_is_reported_and_the_nodes_keep_working() {
    let c = Cluster::start_with(&[PLAIN, PLAIN], &["--node-timeout", "1"]);
    sigkill(c.pid(0));
    let deadline = Instant::now() + WAIT;
    loop {
        let s = c.status(1);
        let head_dead = s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["is_head"] == true && n["alive"] == false);
        if s["head_error"].is_string() && head_dead {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 does not see the head gone: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = arca_cmd(
        Command::new(arca_bin())
            .args(["status", "--temp-dir"])
            .arg(&c.nodes[1]),
    );
    assert!(text(&out).contains("HEAD UNREACHABLE"), "{}", text(&out));
    c.driver(1, "local_work", &[]).finish();
}

#[test]
fn a_pause_shorter_than_the_timeout_loses_nothing() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let c = Cluster::start(&[NodeSpec { cpus: 1, ..PLAIN }, PLAIN]);
    let mut d = c.driver(0, "blip", &[]);
    let pause = d.dir().join("pause");
    common::wait_until("the driver to submit", WAIT, || {
        pause.exists() || d.exited()
    });
    let node = Pid::from_raw(c.pid(1) as i32);
    kill(node, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    kill(node, Signal::SIGCONT).unwrap();
    fs::write(d.dir().join("resumed"), "").unwrap();
    d.finish();
    c.wait_alive(2);
}

#[test]
fn a_node_with_the_wrong_token_is_refused() {
    let c = Cluster::start(&[PLAIN]);
    let dir = TempDir::new();
    let out = arca_cmd(
        Command::new(arca_bin())
            .args([
                "start",
                "--num-cpus",
                "1",
                "--memory",
                "64MiB",
                "--token",
                "not-the-token",
            ])
            .args(["--node-ip-address", "127.0.0.2", "--address", &c.address()])
            .arg("--temp-dir")
            .arg(dir.path().join("node")),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("refused") && t.contains("token"), "{t}");
    let log = fs::read_to_string(c.head().join("node.log")).unwrap();
    assert!(
        log.contains("refused a call with a wrong cluster token"),
        "{log}"
    );
    assert_eq!(c.status(0)["nodes"].as_array().unwrap().len(), 1);
}

#[test]
fn garbage_on_the_grpc_port_does_not_hurt_the_head() {
    use std::io::{Read, Write};
    let c = Cluster::start(&[PLAIN, PLAIN]);
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff\xff\xff"[..],
        &[0xffu8; 4096][..],
    ] {
        let mut s = std::net::TcpStream::connect(c.address()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(junk);
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    // A well-formed gRPC call with a malformed body.
    let body = [0u8, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff];
    let mut s = std::net::TcpStream::connect(c.address()).unwrap();
    let _ = s.write_all(&body);
    c.wait_alive(2);
}

#[test]
fn a_bare_stop_stops_every_node_on_the_machine() {
    // A private TMPDIR keeps this test's node registry apart from others'.
    let tmp = TempDir::new();
    let port = port_base() + 99;
    let arca = |args: &[&str], dir: &Path| {
        let out = arca_cmd(
            Command::new(arca_bin())
                .args(args)
                .arg("--temp-dir")
                .arg(dir)
                .env("TMPDIR", tmp.path())
                .env_remove("ARCA_TEMP_DIR")
                .env_remove("ARCA_TOKEN"),
        );
        assert!(out.status.success(), "arca {args:?}: {}", text(&out));
    };
    let (head, other) = (tmp.path().join("head"), tmp.path().join("other"));
    let head_args = [
        "start",
        "--head",
        "--port",
        &port.to_string(),
        "--num-cpus",
        "1",
        "--memory",
        "64MiB",
    ];
    arca(&head_args, &head);
    let address = format!("127.0.0.1:{port}");
    let join = [
        "start",
        "--address",
        &address,
        "--node-ip-address",
        "127.0.0.2",
        "--num-cpus",
        "1",
        "--memory",
        "64MiB",
    ];
    arca(&join, &other);
    let pids: Vec<u32> = [&head, &other]
        .iter()
        .map(|d| {
            fs::read_to_string(d.join("node.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    let out = arca_cmd(
        Command::new(arca_bin())
            .arg("stop")
            .env("TMPDIR", tmp.path())
            .env_remove("ARCA_TEMP_DIR"),
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // The joined node first, then its head.
    let (a, b) = (
        t.find(&*other.display().to_string()),
        t.find(&*head.display().to_string()),
    );
    assert!(a.is_some() && b.is_some() && a < b, "{t}");
    for pid in pids {
        assert!(!alive(pid), "node {pid} still runs after `arca stop`:\n{t}");
    }
}

/// Well-formed gRPC with bad contents, from a peer holding the token (and
/// one without): every call gets an error, and the head keeps serving.
#[test]
fn malformed_peer_messages_get_errors() {
    use arca_proto::cluster as cpb;
    use tonic::Code;
    let c = Cluster::start(&[PLAIN]);
    let d = c.driver(0, "serve_object", &[]);
    let served = d.dir().to_path_buf();
    let token = fs::read_to_string(c.head().join("cluster_token")).unwrap();
    let address = format!("http://{}", c.address());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(address)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let tok: tonic::metadata::AsciiMetadataValue = token.trim().parse().unwrap();
        let with_token = move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("arca-token", tok.clone());
            Ok(r)
        };
        let mut peer =
            cpb::peer_client::PeerClient::with_interceptor(channel.clone(), with_token.clone())
                .max_encoding_message_size(256 << 20);
        let mut control = cpb::control_client::ControlClient::with_interceptor(
            channel.clone(),
            with_token.clone(),
        );
        let code = |r: Result<tonic::Response<cpb::Empty>, tonic::Status>| {
            r.map(|_| ()).unwrap_err().code()
        };
        let msg = |k: cpb::peer_message::Kind| cpb::PeerMessage { kind: Some(k) };
        let me = bytes::Bytes::from_static(&[7u8; 16]);
        // A sender id of the wrong size.
        let bad_from = cpb::Batch {
            from_address: String::new(),
            from: vec![1, 2, 3].into(),
            messages: vec![],
        };
        assert_eq!(code(peer.deliver(bad_from).await), Code::InvalidArgument);
        // A task without a spec, a release of a malformed id, an empty message.
        for m in [
            msg(cpb::peer_message::Kind::Forward(cpb::Forward::default())),
            msg(cpb::peer_message::Kind::Release(cpb::Release {
                ids: vec![vec![1u8; 3].into()],
            })),
            cpb::PeerMessage { kind: None },
        ] {
            let b = cpb::Batch {
                from_address: String::new(),
                from: me.clone(),
                messages: vec![m],
            };
            assert_eq!(code(peer.deliver(b).await), Code::InvalidArgument);
        }
        // A node of another Arca version is refused, saying which.
        let other = cpb::RegisterRequest {
            node: Some(arca_proto::node::NodeInfo {
                node_id: me.clone(),
                address: "127.0.0.1:1".into(),
                ..Default::default()
            }),
            version: "0.0.1".into(),
        };
        let s = control.register(other).await.unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(
            s.message().contains("joining node runs Arca 0.0.1"),
            "{}",
            s.message()
        );
        // Results for a task this node never forwarded: ignored, not a crash.
        let stale = cpb::Finished {
            task_id: vec![9u8; 20].into(),
            results: vec![arca_proto::node::Object {
                id: vec![8u8; 20].into(),
                body: Some(arca_proto::node::object::Body::Stored(1 << 20)),
                ..Default::default()
            }],
        };
        let b = cpb::Batch {
            from_address: String::new(),
            from: me.clone(),
            messages: vec![msg(cpb::peer_message::Kind::Finished(stale))],
        };
        peer.deliver(b)
            .await
            .expect("stale results are dropped quietly");
        // Chunks of an object this node does not have, or of a malformed
        // id; without the token. tonic's own client reads the hand-written
        // Transfer service.
        let mut transfer = cpb::transfer_client::TransferClient::with_interceptor(
            channel.clone(),
            with_token.clone(),
        )
        .max_decoding_message_size(64 << 20);
        let pull_code = |r: Result<
            tonic::Response<tonic::Streaming<cpb::Chunk>>,
            tonic::Status,
        >| { r.map(|_| ()).unwrap_err().code() };
        let pull = |id: Vec<u8>| cpb::PullRequest { id: id.into() };
        assert_eq!(
            pull_code(transfer.pull(pull(vec![5u8; 20])).await),
            Code::NotFound
        );
        assert_eq!(
            pull_code(transfer.pull(pull(vec![5u8; 2])).await),
            Code::InvalidArgument
        );
        let mut anon_transfer = cpb::transfer_client::TransferClient::new(channel.clone());
        assert_eq!(
            pull_code(anon_transfer.pull(pull(vec![5u8; 20])).await),
            Code::Unauthenticated
        );
        // A real object, every byte.
        let object = served.join("object");
        common::wait_until("the driver's put", WAIT, || object.exists());
        let id = arca_proto::hex::decode(&fs::read_to_string(&object).unwrap()).unwrap();
        let mut s = transfer.pull(pull(id)).await.unwrap().into_inner();
        let mut got = Vec::new();
        while let Some(chunk) = s.message().await.unwrap() {
            assert_eq!(chunk.offset, got.len() as u64);
            assert_eq!(chunk.total, SERVED as u64);
            got.extend_from_slice(&chunk.data);
        }
        assert!(got == pattern(11, SERVED), "the pulled bytes differ");
        fs::write(served.join("checked"), "").unwrap();
        // Where is an object with a malformed id.
        let r = peer
            .locate(cpb::LocateRequest {
                ids: vec![vec![1u8].into()],
                from: me.clone(),
            })
            .await;
        assert_eq!(r.map(|_| ()).unwrap_err().code(), Code::InvalidArgument);
        // A node that registers without an address it can be reached at.
        let bad = cpb::RegisterRequest {
            node: Some(arca_proto::node::NodeInfo {
                node_id: me.clone(),
                address: "nowhere".into(),
                ..Default::default()
            }),
            // The workspace's version, the head's own.
            version: env!("CARGO_PKG_VERSION").into(),
        };
        assert_eq!(
            control.register(bad).await.map(|_| ()).unwrap_err().code(),
            Code::InvalidArgument
        );
        // An oversized message (the limit is 64 MiB).
        let big = cpb::Batch {
            from_address: String::new(),
            from: me.clone(),
            messages: vec![msg(cpb::peer_message::Kind::Release(cpb::Release {
                ids: vec![vec![0u8; 80 << 20].into()],
            }))],
        };
        assert_ne!(peer.deliver(big).await.map(|_| ()).ok(), Some(()));
        // No token at all.
        let mut anon = cpb::peer_client::PeerClient::new(channel);
        let b = cpb::Batch {
            from_address: String::new(),
            from: me,
            messages: vec![],
        };
        assert_eq!(
            anon.deliver(b).await.map(|_| ()).unwrap_err().code(),
            Code::Unauthenticated
        );
    });
    d.finish();
    c.wait_alive(1);
}

/// The seed programs' cluster flow: a head, two nodes joining it, and the
/// `which_worker` example reporting that its tasks ran on all three.
#[test]
fn the_which_worker_example_runs_on_every_node() {
    let c = Cluster::start(&[PLAIN, PLAIN, PLAIN]);
    // `cargo test` builds the examples beside the test binaries' directory.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/which_worker");
    assert!(example.exists(), "{} is not built", example.display());
    let mut child = Command::new(&example)
        .env("ARCA_TEMP_DIR", c.head())
        .env_remove("ARCA_ADDRESS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_timeout(&mut child, WAIT * 2);
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert!(
        status.is_some_and(|s| s.success()),
        "which_worker failed:\n{t}"
    );
    assert!(t.contains("1000 tasks ran on 3 node(s)"), "{t}");
}
