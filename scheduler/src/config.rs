//! What a node is started with.

use std::path::{Path, PathBuf};

use arca_store::spill::SpillConfig;

use crate::resources::{InvalidResource, ResourceSet};

pub use arca_proto::consts::{NODE_SOCKET, STORE_SOCKET};

/// A node daemon's settings. `Default` is a node sized to this machine with
/// its session in `/tmp/arca`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Holds `node.sock`, `store.sock` and `spill/`. Created mode 0700.
    pub session_dir: PathBuf,
    /// Shown by `arca status`.
    pub name: String,
    /// CPUs to schedule; also the size the worker pool grows to.
    pub num_cpus: f64,
    /// GPUs to schedule (a count only: Arca does not assign devices yet).
    pub num_gpus: f64,
    /// Custom resources by name.
    pub custom: Vec<(String, f64)>,
    /// Object store capacity in bytes.
    pub object_store_memory: u64,
    /// Spill primary copies to `<session>/spill` when memory runs short.
    pub spill: bool,
    /// Remove the session directory when the node stops (embedded nodes).
    pub remove_session_dir: bool,
    /// Take part in a cluster (head or member); `None`: standalone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            session_dir: PathBuf::from(arca_proto::consts::DEFAULT_SESSION_DIR),
            name: hostname(),
            num_cpus: cpus as f64,
            num_gpus: 0.0,
            custom: Vec::new(),
            object_store_memory: default_store_memory(),
            spill: true,
            remove_session_dir: false,
            cluster: None,
        }
    }
}

impl NodeConfig {
    /// The node's socket.
    pub fn node_socket(&self) -> PathBuf {
        self.session_dir.join(NODE_SOCKET)
    }

    /// The store's socket.
    pub fn store_socket(&self) -> PathBuf {
        self.session_dir.join(STORE_SOCKET)
    }

    /// Everything the node can hand out: CPU, GPU, `memory` (bytes of RAM
    /// beside the object store) and the custom resources.
    pub fn total_resources(&self) -> Result<ResourceSet, InvalidResource> {
        let memory = total_ram().saturating_sub(self.object_store_memory) as f64;
        let mut amounts: Vec<(&str, f64)> = vec![
            ("CPU", self.num_cpus),
            ("GPU", self.num_gpus),
            ("memory", memory),
        ];
        amounts.extend(self.custom.iter().map(|(k, v)| (k.as_str(), *v)));
        // Ray's per-node resources, which pin a task to a node
        // (`resources={"node:10.0.0.2": 0.01}`) or to the head.
        let ip = self
            .cluster
            .as_ref()
            .map_or("127.0.0.1", |c| c.node_ip.as_str());
        let node = format!("node:{ip}");
        amounts.push((&node, 1.0));
        if self.cluster.as_ref().is_none_or(|c| c.head) {
            amounts.push(("node:__internal_head__", 1.0));
        }
        ResourceSet::from_amounts(amounts)
    }

    /// The store's settings: its socket and spill directory in the session.
    pub fn store_config(&self) -> arca_store::server::StoreConfig {
        let mut c =
            arca_store::server::StoreConfig::new(self.store_socket(), self.object_store_memory);
        c.spill = self
            .spill
            .then(|| SpillConfig::new(self.session_dir.join("spill")));
        c
    }
}

/// Ray's default: 30% of the machine's memory, at most 200 GiB.
fn default_store_memory() -> u64 {
    (total_ram() as f64 * 0.3) as u64 & !((1 << 20) - 1)
}

/// Physical memory in bytes (from /proc/meminfo; 8 GiB if unreadable).
pub fn total_ram() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(8 << 30, |kib| kib * 1024)
        .min(200 << 30)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// True if a node answers on `session_dir`'s socket.
pub fn node_running(session_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(session_dir.join(NODE_SOCKET)).is_ok()
}

/// A new session directory for an embedded node, `<tmp>/arca-<pid>-<n>`.
/// Those of processes that no longer exist (killed before they could clean
/// up) are removed on the way.
pub fn fresh_session_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("arca-"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(pid, n)| n.parse::<u32>().ok().and(pid.parse::<i32>().ok()));
            let dead = pid.is_some_and(|p| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None)
                    == Err(nix::errno::Errno::ESRCH)
            });
            if dead && e.path().join(NODE_SOCKET).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tmp.join(format!(
        "arca-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}
