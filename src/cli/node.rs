//! `arca start`, `arca status`, `arca stop`, and the hidden `arca node` that
//! `arca start` runs in the background.
//!
//! The tools speak the node protocol (`arca_proto::node`) directly over
//! `<session>/node.sock`, as a `Tool` client: they never start a runtime or an
//! embedded node. A session directory holds, besides the node's sockets and
//! spill files, `node.pid` (written by the node once it serves, removed when
//! it stops) and `node.log` (the background node's stdout and stderr).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use arca_proto::node as pb;
use arca_scheduler::{NODE_PROTOCOL_VERSION, Node, NodeConfig};
use arca_store::ByteSize;
use arca_store::wire::{Conn, MAX_REPLY_FRAME, RecvError, Side};
use nix::sys::signal::{SigSet, Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};
use serde_json::json;

use super::UsageError;

/// Where a node keeps its session unless told otherwise.
pub const DEFAULT_TEMP_DIR: &str = arca_proto::consts::DEFAULT_SESSION_DIR;
const PID_FILE: &str = "node.pid";
const LOG_FILE: &str = "node.log";
/// How long `arca start` waits for the node to serve.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tool waits for any one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `arca stop` waits after asking (the node gives its workers 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `arca stop` waits after SIGTERM (the node gives its workers 5 s).
const SIGTERM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `arca stop` waits after SIGKILL.
const SIGKILL_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Arguments

/// The session directory a command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// The node's temp dir (its session): sockets, node.pid, node.log and
    /// spill files [default: $ARCA_TEMP_DIR, else /tmp/arca].
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
}

impl SessionArgs {
    /// The directory, absolute.
    pub fn dir(&self) -> PathBuf {
        let dir = self
            .temp_dir
            .clone()
            .or_else(|| {
                std::env::var_os(arca_proto::consts::ENV_TEMP_DIR)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TEMP_DIR));
        std::path::absolute(&dir).unwrap_or(dir)
    }
}

/// ` --temp-dir DIR` for a hint, or nothing for the default directory.
pub fn dir_flag(dir: &Path) -> String {
    if dir == Path::new(DEFAULT_TEMP_DIR) {
        String::new()
    } else {
        format!(" --temp-dir {}", dir.display())
    }
}

/// The error for a directory where no node answers.
pub fn not_running(dir: &Path) -> anyhow::Error {
    anyhow!(
        "no node is running in {}; start one with `arca start --head{}`",
        dir.display(),
        dir_flag(dir)
    )
}

/// `arca start`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("role").required(true).args(["head", "address"])))]
pub struct StartArgs {
    #[command(flatten)]
    node: NodeArgs,
}

/// The hidden `arca node`: a node in the foreground.
#[derive(Debug, clap::Args)]
pub struct NodeRunArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Started by `arca start`: leave the terminal's session.
    #[arg(long, hide = true)]
    daemon: bool,
}

/// What a node is started with.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// CPUs to schedule; also how many worker processes the pool grows to
    /// [default: this machine's CPUs].
    #[arg(long, value_name = "N", value_parser = amount)]
    num_cpus: Option<f64>,
    /// GPUs to schedule [default: 0].
    #[arg(long, value_name = "N", value_parser = amount)]
    num_gpus: Option<f64>,
    /// Custom resources as a JSON object of amounts, e.g. '{"Custom": 2}'.
    #[arg(long, value_name = "JSON", value_parser = custom_resources)]
    resources: Option<Custom>,
    /// Object store memory, e.g. 4GiB [default: 30% of this machine's RAM].
    #[arg(long, value_name = "SIZE")]
    memory: Option<ByteSize>,
    /// Never spill: once primary copies fill the store, puts fail with ObjectStoreFull.
    #[arg(long)]
    no_spill: bool,
    /// Start the head node of a new cluster: the control service and a node.
    #[arg(long, conflicts_with = "address")]
    head: bool,
    /// Join the cluster whose head is at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
    /// The head's port for its control service (with --head; 0 picks a
    /// free one).
    #[arg(long, default_value_t = arca_proto::consts::DEFAULT_PORT, requires = "head")]
    port: u16,
    /// The IP address other nodes reach this node at [default: 127.0.0.1].
    #[arg(long, value_name = "IP")]
    node_ip_address: Option<std::net::IpAddr>,
    /// The cluster token [default: $ARCA_TOKEN; a head makes one, a node on
    /// the head's machine finds it].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Seconds of silence after which the head declares a node dead.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0, hide = true)]
    node_timeout: f64,
    #[command(flatten)]
    session: SessionArgs,
}

/// Custom resources by name.
#[derive(Debug, Clone)]
pub struct Custom(Vec<(String, f64)>);

fn amount(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(format!("{s:?} is not an amount (a number, at least 0)")),
    }
}

fn custom_resources(s: &str) -> Result<Custom, String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(s).map_err(|e| {
        format!(r#"not a JSON object of resource amounts ({e}); write e.g. '{{"Custom": 2}}'"#)
    })?;
    let mut out = Vec::new();
    for (name, v) in map {
        let flag = match name.as_str() {
            "CPU" => Some("--num-cpus"),
            "GPU" => Some("--num-gpus"),
            "memory" | "object_store_memory" => Some("--memory (for the object store)"),
            _ => None,
        };
        if let Some(flag) = flag {
            return Err(format!("set {name} with {flag}, not in --resources"));
        }
        if name.is_empty() {
            return Err("a resource needs a name".into());
        }
        match v.as_f64() {
            Some(n) if n.is_finite() && n >= 0.0 => out.push((name, n)),
            _ => {
                return Err(format!(
                    "resource {name:?} is {v}; amounts are numbers, at least 0"
                ));
            }
        }
    }
    Ok(Custom(out))
}

impl NodeArgs {
    /// The node's settings; a usage error if they cannot make a node.
    fn config(&self) -> anyhow::Result<NodeConfig> {
        let mut c = NodeConfig {
            session_dir: self.session.dir(),
            spill: !self.no_spill,
            ..NodeConfig::default()
        };
        if let Some(n) = self.num_cpus {
            c.num_cpus = n;
        }
        if let Some(n) = self.num_gpus {
            c.num_gpus = n;
        }
        if let Some(Custom(r)) = &self.resources {
            c.custom = r.clone();
        }
        if let Some(m) = self.memory {
            c.object_store_memory = m.0;
        }
        if c.object_store_memory == 0 {
            return Err(
                UsageError("--memory 0: the object store needs at least 1MiB".into()).into(),
            );
        }
        let ram = arca_scheduler::total_ram();
        if c.object_store_memory > ram {
            return Err(UsageError(format!(
                "--memory {} is more than this machine's memory ({}); ask for less",
                ByteSize(c.object_store_memory),
                ByteSize(ram)
            ))
            .into());
        }
        c.total_resources()
            .map_err(|e| UsageError(format!("{e}")))?;
        c.cluster = self.cluster(&c.session_dir)?;
        Ok(c)
    }

    /// This node's part in a cluster, if it has one.
    fn cluster(&self, dir: &Path) -> anyhow::Result<Option<arca_scheduler::ClusterConfig>> {
        let ip = self
            .node_ip_address
            .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string());
        let given = self.token.clone().or_else(|| {
            std::env::var(arca_proto::consts::ENV_TOKEN)
                .ok()
                .filter(|t| !t.is_empty())
        });
        let mut c = if self.head {
            let token = given.unwrap_or_else(arca_scheduler::new_token);
            arca_scheduler::ClusterConfig::new(true, format!("{ip}:{}", self.port), ip, token)
        } else if let Some(address) = &self.address {
            if address
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(UsageError(format!(
                    "--address {address:?} is not HOST:PORT; give the head's address, e.g. 127.0.0.1:6379"
                ))
                .into());
            }
            let token = given.or_else(|| find_local_token(address, dir)).ok_or_else(|| {
                UsageError(format!(
                    "no cluster token: pass the head's with --token or ${} (the head printed it; \
                     it is in the head's temp dir, file {})",
                    arca_proto::consts::ENV_TOKEN,
                    arca_proto::consts::TOKEN_FILE
                ))
            })?;
            arca_scheduler::ClusterConfig::new(false, address.clone(), ip, token)
        } else {
            return Ok(None);
        };
        if !(self.node_timeout.is_finite() && self.node_timeout > 0.0) {
            return Err(
                UsageError("--node-timeout must be a positive number of seconds".into()).into(),
            );
        }
        c.death_timeout = Duration::from_secs_f64(self.node_timeout);
        Ok(Some(c))
    }

    /// The same settings as `arca node` arguments, the directory made absolute.
    fn to_args(&self, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--temp-dir".into(), dir.into()];
        let mut flag = |name: &str, value: String| {
            args.push(name.into());
            args.push(value.into());
        };
        if let Some(n) = self.num_cpus {
            flag("--num-cpus", n.to_string());
        }
        if let Some(n) = self.num_gpus {
            flag("--num-gpus", n.to_string());
        }
        if let Some(Custom(r)) = &self.resources {
            let map: serde_json::Map<_, _> = r.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            flag("--resources", serde_json::Value::Object(map).to_string());
        }
        if let Some(m) = self.memory {
            flag("--memory", m.0.to_string());
        }
        if self.no_spill {
            args.push("--no-spill".into());
        }
        if self.head {
            args.push("--head".into());
            args.push("--port".into());
            args.push(self.port.to_string().into());
        }
        if let Some(a) = &self.address {
            args.push("--address".into());
            args.push(a.into());
        }
        if let Some(ip) = self.node_ip_address {
            args.push("--node-ip-address".into());
            args.push(ip.to_string().into());
        }
        args.push("--node-timeout".into());
        args.push(self.node_timeout.to_string().into());
        args
    }
}

/// The head's address file in its temp dir, beside its token file.
const HEAD_ADDRESS_FILE: &str = "head_address";

/// The token of the head at `address` if that head runs on this machine:
/// its temp dir (this node's own, the default, or another `arca*` directory
/// under the system temp dir) holds the token beside the head's address.
fn find_local_token(address: &str, own: &Path) -> Option<String> {
    let mut dirs = vec![own.to_path_buf(), PathBuf::from(DEFAULT_TEMP_DIR)];
    if let Ok(d) = fs::read_to_string(head_registry(address)) {
        dirs.insert(0, PathBuf::from(d.trim()));
    }
    for base in [std::env::temp_dir(), PathBuf::from("/tmp")] {
        if let Ok(entries) = fs::read_dir(&base) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("arca"))
                    .map(|e| e.path()),
            );
        }
    }
    dirs.into_iter().find_map(|d| {
        let a = fs::read_to_string(d.join(HEAD_ADDRESS_FILE)).ok()?;
        (a.trim() == address)
            .then(|| fs::read_to_string(arca_scheduler::token_file(&d)).ok())
            .flatten()
            .map(|t| t.trim().to_string())
    })
}

/// Where a head on this machine notes its temp dir, so that nodes started
/// here find its token: `<tmp>/arca-heads/<HOST_PORT>`.
fn head_registry(address: &str) -> PathBuf {
    std::env::temp_dir()
        .join("arca-heads")
        .join(address.replace([':', '/'], "_"))
}

/// Writes the head's token (mode 0600) and address into its temp dir.
fn write_head_files(dir: &Path, c: &arca_scheduler::ClusterConfig) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = arca_scheduler::token_file(dir);
    let _ = fs::remove_file(&path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{}", c.token)?;
    fs::write(dir.join(HEAD_ADDRESS_FILE), format!("{}\n", c.address))
        .with_context(|| format!("cannot write {}", dir.join(HEAD_ADDRESS_FILE).display()))?;
    let registry = head_registry(&c.address);
    if let Some(parent) = registry.parent() {
        let _ = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o1777)
            .create(parent);
    }
    // Best effort: without it a node here needs --token.
    let _ = fs::write(&registry, format!("{}\n", dir.display()));
    Ok(())
}

// ---------------------------------------------------------------------------
// Talking to a node

/// A tool's connection to a node: one request at a time, each reply awaited
/// for at most [`REPLY_TIMEOUT`].
#[derive(Debug)]
pub struct NodeClient {
    conn: Conn,
    dir: PathBuf,
    /// The node's answer to the handshake (its store's socket, its name).
    pub hello: pb::HelloReply,
}

impl NodeClient {
    /// Connects to the node in `dir`; `None` if none is listening there.
    pub fn connect(dir: &Path, name: &str) -> anyhow::Result<Option<Self>> {
        let socket = dir.join(arca_scheduler::NODE_SOCKET);
        let stream = match UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
                "cannot connect to the node at {}: {e}; it belongs to another user: pick another --temp-dir",
                socket.display()
            ),
            Err(e) => bail!("cannot connect to the node at {}: {e}", socket.display()),
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let mut c = NodeClient {
            conn: Conn::new(stream, Side::Client, Duration::ZERO),
            dir: dir.to_path_buf(),
            hello: pb::HelloReply::default(),
        };
        let hello = pb::Hello {
            version: NODE_PROTOCOL_VERSION,
            pid: std::process::id(),
            role: pb::Role::Tool as i32,
            name: name.into(),
            ..Default::default()
        };
        match c.call(pb::request::Kind::Hello(hello))? {
            pb::reply::Kind::Hello(h) => c.hello = h,
            _ => bail!(
                "the node in {} answered Hello with something else",
                dir.display()
            ),
        }
        Ok(Some(c))
    }

    fn call(&mut self, kind: pb::request::Kind) -> anyhow::Result<pb::reply::Kind> {
        let log = self.dir.join(LOG_FILE);
        let gone = || {
            anyhow!(
                "the node in {} closed the connection (it stopped or crashed; see {})",
                self.dir.display(),
                log.display()
            )
        };
        self.conn
            // One request at a time, so the reply needs no matching: any seq.
            .send(&pb::Request {
                kind: Some(kind),
                seq: 1,
            })
            .map_err(|_| gone())?;
        let reply: pb::Reply = match self.conn.recv(MAX_REPLY_FRAME) {
            Ok(r) => r,
            Err(RecvError::Closed | RecvError::Truncated) => return Err(gone()),
            Err(RecvError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => bail!(
                "the node in {} did not answer within {REPLY_TIMEOUT:?}; see {}",
                self.dir.display(),
                log.display(),
            ),
            Err(e) => bail!("reading the node's reply: {e}"),
        };
        match reply.kind {
            Some(pb::reply::Kind::Error(e)) => bail!("the node refused: {}", e.message),
            Some(k) => Ok(k),
            None => bail!("empty reply from the node"),
        }
    }

    /// The node's `Status`.
    pub fn status(&mut self) -> anyhow::Result<pb::StatusReply> {
        match self.call(pb::request::Kind::Status(pb::Status {}))? {
            pb::reply::Kind::Status(s) => Ok(s),
            _ => bail!("the node answered Status with something else"),
        }
    }

    /// Every object the node knows.
    pub fn memory(&mut self) -> anyhow::Result<pb::MemoryReply> {
        match self.call(pb::request::Kind::Memory(pb::Memory {}))? {
            pb::reply::Kind::Memory(m) => Ok(m),
            _ => bail!("the node answered Memory with something else"),
        }
    }

    /// Asks the node to stop; it answers, then stops.
    fn shutdown(&mut self) -> anyhow::Result<()> {
        match self.call(pb::request::Kind::Shutdown(pb::Shutdown {}))? {
            pb::reply::Kind::Ok(_) => Ok(()),
            _ => bail!("the node answered Shutdown with something else"),
        }
    }
}

// ---------------------------------------------------------------------------
// arca start

pub fn start(a: StartArgs) -> anyhow::Result<()> {
    let config = a.node.config()?;
    let dir = config.session_dir.clone();
    if let Some(mut node) = NodeClient::connect(&dir, "arca start")? {
        let pid = node
            .status()
            .map_or_else(|_| "?".into(), |s| s.pid.to_string());
        bail!(
            "a node is already running in {} (pid {pid}); use it, stop it with `arca stop{}`, or pick another --temp-dir",
            dir.display(),
            dir_flag(&dir)
        );
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = fs::remove_file(dir.join(HEAD_ADDRESS_FILE));
    let log_path = dir.join(LOG_FILE);
    let log = fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the arca executable")?;
    let mut child = Command::new(exe)
        .arg("node")
        .arg("--daemon")
        .args(a.node.to_args(&dir))
        .env_remove(arca_scheduler::ENV_WORKER_ID)
        .env_remove(arca_scheduler::ENV_NODE_SOCKET)
        // The token goes by the environment, not argv, which `ps` shows.
        .envs(
            config
                .cluster
                .as_ref()
                .map(|c| (arca_proto::consts::ENV_TOKEN, c.token.clone())),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the node process")?;
    let status = wait_serving(&mut child, &dir, &log_path)?;
    if a.node.head {
        // The node notes its address for other nodes here right after it serves.
        let noted = dir.join(HEAD_ADDRESS_FILE);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !noted.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    print!("{}", started(&status, &config, &log_path));
    Ok(())
}

/// Waits until the node that `child` runs answers, or fails with the log's
/// last line if it exits first.
fn wait_serving(child: &mut Child, dir: &Path, log: &Path) -> anyhow::Result<pb::StatusReply> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(exit) = child.try_wait()? {
            let text = fs::read_to_string(log).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let last = last.strip_prefix("error: ").unwrap_or(last);
            bail!(
                "the node did not start ({exit}): {last} (log: {})",
                log.display()
            );
        }
        // Ours once it serves, says its pid is the child's, and has noted
        // that pid in node.pid (written just after it starts serving).
        if let Ok(Some(mut node)) = NodeClient::connect(dir, "arca start")
            && let Ok(s) = node.status()
            && s.pid == child.id()
            && read_pid(dir) == Some(s.pid)
        {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the node did not accept connections within {START_TIMEOUT:?}, so it was stopped; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn started(s: &pb::StatusReply, c: &NodeConfig, log: &Path) -> String {
    let dir = c.session_dir.display();
    let flag = dir_flag(&c.session_dir);
    let total = s.total.clone().unwrap_or_default().amounts;
    let resources: Vec<String> = resource_names(&total)
        .iter()
        .map(|n| {
            format!(
                "{n} {}",
                show_amount(n, total.get(n).copied().unwrap_or(0.0))
            )
        })
        .collect();
    let spill = if c.spill {
        format!("spills to {}/spill", dir)
    } else {
        "no spilling".into()
    };
    let default_note = if flag.is_empty() {
        "   # optional: arca::init() looks here by default"
    } else {
        ""
    };
    let connect = if flag.is_empty() {
        "Programs on this machine that call arca::init() use it.\n".to_string()
    } else {
        format!(
            "Programs that call arca::init() use it with\n  export {}={dir}\n",
            arca_proto::consts::ENV_TEMP_DIR
        )
    };
    let _ = default_note;
    let cluster = match &c.cluster {
        Some(cc) if cc.head => format!(
            "\nThis is the head of a cluster at {head}. To add another machine, run there\n  \
             arca start --address {head} --token {token}\n\
             (a node on this machine finds the token itself; add --node-ip-address IP to each).\n",
            head = s.cluster_address,
            token = cc.token,
        ),
        Some(_) => format!("\nJoined the cluster at {}.\n", s.cluster_address),
        None => String::new(),
    };
    format!(
        "Started a node in {dir} (pid {pid}).\n  \
         resources:    {res}\n  \
         object store: {store}, {spill}\n  \
         log:          {log}\n{cluster}\n\
         {connect}\n\
         See it with `arca status{flag}`, its objects with `arca memory{flag}`; stop it with `arca stop{flag}`.\n",
        pid = s.pid,
        res = resources.join(", "),
        store = ByteSize(s.store_capacity),
        log = log.display(),
    )
}

// ---------------------------------------------------------------------------
// arca node (hidden): the node in the foreground

pub fn run_node(a: NodeRunArgs) -> anyhow::Result<()> {
    if a.daemon {
        // Leave the terminal's session so that its hang-up and Ctrl-C do not
        // reach the node or its workers; fails only if already a group leader.
        let _ = nix::unistd::setsid();
    }
    // Block the stop signals before any thread starts, so every thread
    // inherits the mask and only the waiting thread below receives them.
    // (Worker processes start with an empty mask: `Command` resets it.)
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("cannot block signals")?;
    let config = a.node.config()?;
    let dir = config.session_dir.clone();
    let head = config.cluster.clone().filter(|c| c.head);
    let node = Node::start(config)?;
    let mut registry = None;
    if let (Some(mut c), Some(address)) = (head, node.cluster_address()) {
        c.address = address;
        write_head_files(&dir, &c)?;
        registry = Some(head_registry(&c.address));
    }
    let pid_file = dir.join(PID_FILE);
    let me = std::process::id();
    fs::write(&pid_file, format!("{me}\n"))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    let registered = register_node(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("arca-node-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!("received {sig:?}, shutting down");
                flag.store(true, Ordering::Relaxed);
            }
        })
        .context("cannot start the signal thread")?;
    node.wait_for_stop_request(&stop);
    if !stop.load(Ordering::Relaxed) {
        tracing::info!("asked to stop, shutting down");
    }
    node.shutdown();
    if let Some(r) = registry {
        let _ = fs::remove_file(r);
        let _ = fs::remove_file(dir.join(HEAD_ADDRESS_FILE));
    }
    let _ = fs::remove_file(registered);
    if read_pid(&dir) == Some(me) {
        let _ = fs::remove_file(&pid_file);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// arca status

/// `arca status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    let dir = a.session.dir();
    let mut node = NodeClient::connect(&dir, "arca status")?.ok_or_else(|| not_running(&dir))?;
    let s = node.status()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
    } else {
        print!("{}", render_status(&s));
    }
    Ok(())
}

/// CPU, GPU and memory first (always), then the custom resources by name.
/// Whether the text tables show a resource: not Ray's per-node ones
/// (`node:<IP>`, `node:__internal_head__`), which every node has one of and
/// the JSON lists.
fn shown(name: &str) -> bool {
    !name.starts_with("node:")
}

fn resource_names(amounts: &std::collections::HashMap<String, f64>) -> Vec<String> {
    let mut names: Vec<String> = ["CPU", "GPU", "memory"].map(String::from).to_vec();
    let mut custom: Vec<String> = amounts
        .keys()
        .filter(|k| !names.contains(k) && shown(k))
        .cloned()
        .collect();
    custom.sort();
    names.extend(custom);
    names
}

fn show_amount(name: &str, v: f64) -> String {
    if name == "memory" {
        ByteSize(v.max(0.0) as u64).to_string()
    } else {
        // Amounts are kept to 1/10,000; show no more digits than that.
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{:.1}s", ms as f64 / 1e3),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn render_status(s: &pb::StatusReply) -> String {
    let total = s.total.clone().unwrap_or_default().amounts;
    let avail = s.available.clone().unwrap_or_default().amounts;
    let mut out = format!(
        "node {} (pid {}) in {}, up {}\n\nresources {:>19} {:>14}\n",
        s.node_name,
        s.pid,
        s.session_dir,
        uptime(s.uptime_ms),
        "TOTAL",
        "AVAILABLE"
    );
    for n in resource_names(&total) {
        let get = |m: &std::collections::HashMap<String, f64>| m.get(&n).copied().unwrap_or(0.0);
        out += &format!(
            "  {:<16} {:>11} {:>14}\n",
            n,
            show_amount(&n, get(&total)),
            show_amount(&n, get(&avail))
        );
    }
    out += &format!(
        "\ntasks    {} queued, {} running, {} finished, {} failed\n\
         actors   {} alive\ndrivers  {}\n\
         objects  {} ({} inline)\n\
         store    {} of {} used, {} spilled\n",
        s.tasks_queued,
        s.tasks_running,
        s.tasks_finished,
        s.tasks_failed,
        s.actors_alive,
        s.drivers,
        s.objects,
        ByteSize(s.inline_bytes),
        ByteSize(s.store_used),
        ByteSize(s.store_capacity),
        ByteSize(s.store_spilled),
    );
    out += &render_cluster(s);
    out += &format!("\nworkers on this node ({})\n", s.workers.len());
    // A job forwarded from another node: its number there @ that node.
    let jobs: Vec<String> = s
        .workers
        .iter()
        .map(|w| match w.job_node.get(..4) {
            Some(node) => format!("{}@{}", w.job_id, arca_proto::hex::encode(node)),
            None => w.job_id.to_string(),
        })
        .collect();
    let width = jobs.iter().map(String::len).max().unwrap_or(0).max(5);
    if !s.workers.is_empty() {
        out += &format!(
            "  {:>8} {:>7} {:>width$} {:<9} {}\n",
            "PID", "WORKER", "JOB", "STATE", "TASK"
        );
    }
    for (w, job) in s.workers.iter().zip(&jobs) {
        out += &format!(
            "  {:>8} {:>7} {:>width$} {:<9} {}\n",
            w.pid,
            w.worker_id,
            job,
            w.state,
            if w.task.is_empty() { "-" } else { &w.task }
        );
    }
    out
}

/// Every node of the cluster, with cluster totals.
fn render_cluster(s: &pb::StatusReply) -> String {
    let mut out = String::new();
    if s.cluster_address.is_empty() {
        return out;
    }
    out += &format!("\ncluster at {}", s.cluster_address);
    if !s.head_error.is_empty() {
        out += &format!("\n  HEAD UNREACHABLE: {}", s.head_error);
    }
    let alive = s.cluster.iter().filter(|n| n.alive).count();
    out += &format!(" ({alive} of {} nodes alive)\n", s.cluster.len());
    out += &format!(
        "  {:<10} {:<21} {:<6} {:<12} {:<12} {:>6} {}\n",
        "NODE", "ADDRESS", "STATE", "CPU", "GPU", "QUEUED", "STORE USED"
    );
    let mut total = std::collections::BTreeMap::<String, (f64, f64)>::new();
    for n in &s.cluster {
        let t = n.total.clone().unwrap_or_default().amounts;
        let a = n.available.clone().unwrap_or_default().amounts;
        let pair = |k: &str| {
            format!(
                "{}/{}",
                show_amount(k, a.get(k).copied().unwrap_or(0.0)),
                show_amount(k, t.get(k).copied().unwrap_or(0.0))
            )
        };
        let id = arca_proto::hex::encode(&n.node_id);
        let state = if n.alive { "alive" } else { "dead" };
        let head = if n.is_head { " (head)" } else { "" };
        out += &format!(
            "  {:<10} {:<21} {:<6} {:<12} {:<12} {:>6} {} of {}{head}\n",
            id.get(..8).unwrap_or(&id),
            n.address,
            state,
            pair("CPU"),
            pair("GPU"),
            n.tasks_queued,
            ByteSize(n.store_used),
            ByteSize(n.store_capacity),
        );
        if !n.alive {
            out += &format!("             died: {}\n", n.death_reason);
            continue;
        }
        for (k, v) in t.iter().filter(|(k, _)| shown(k)) {
            let e = total.entry(k.clone()).or_default();
            e.0 += v;
            e.1 += a.get(k).copied().unwrap_or(0.0);
        }
        let custom: Vec<String> = t
            .iter()
            .filter(|(k, _)| !["CPU", "GPU", "memory"].contains(&k.as_str()) && shown(k))
            .map(|(k, v)| {
                format!(
                    "{k} {}/{}",
                    show_amount(k, a.get(k).copied().unwrap_or(0.0)),
                    show_amount(k, *v)
                )
            })
            .collect();
        if !custom.is_empty() {
            out += &format!("             also: {}\n", custom.join(", "));
        }
    }
    let sums: Vec<String> = total
        .iter()
        .map(|(k, (t, a))| format!("{k} {}/{}", show_amount(k, *a), show_amount(k, *t)))
        .collect();
    out += &format!("  cluster (available/total): {}\n", sums.join(", "));
    if s.tasks_infeasible_now > 0 {
        out += &format!(
            "  {} queued tasks here fit no node of the cluster now\n",
            s.tasks_infeasible_now
        );
    }
    out
}

fn status_json(s: &pb::StatusReply) -> serde_json::Value {
    let amounts = |r: &Option<pb::Resources>| {
        let mut m: Vec<_> = r.clone().unwrap_or_default().amounts.into_iter().collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        serde_json::Value::Object(m.into_iter().map(|(k, v)| (k, json!(v))).collect())
    };
    json!({
        "node": {
            "name": s.node_name, "pid": s.pid, "session_dir": s.session_dir,
            "uptime_ms": s.uptime_ms,
        },
        "resources": { "total": amounts(&s.total), "available": amounts(&s.available) },
        "workers": s.workers.iter().map(|w| json!({
            "pid": w.pid, "worker_id": w.worker_id, "job_id": w.job_id,
            "job_node": if w.job_node.is_empty() { None } else { Some(arca_proto::hex::encode(&w.job_node)) },
            "state": w.state,
            "task": if w.task.is_empty() { None } else { Some(&w.task) },
            "actor_id": arca_store::ObjectId::from_slice(&w.actor_id).ok().map(|a| a.to_hex()),
        })).collect::<Vec<_>>(),
        "tasks": {
            "queued": s.tasks_queued, "running": s.tasks_running,
            "finished": s.tasks_finished, "failed": s.tasks_failed,
        },
        "actors_alive": s.actors_alive,
        "drivers": s.drivers,
        "objects": s.objects,
        "inline_bytes": s.inline_bytes,
        "store": { "used": s.store_used, "capacity": s.store_capacity, "spilled": s.store_spilled },
        "cluster_address": if s.cluster_address.is_empty() { None } else { Some(&s.cluster_address) },
        "head_error": if s.head_error.is_empty() { None } else { Some(&s.head_error) },
        "nodes": s.cluster.iter().map(|n| json!({
            "node_id": arca_proto::hex::encode(&n.node_id),
            "address": n.address,
            "name": n.name,
            "alive": n.alive,
            "death_reason": if n.alive { None } else { Some(&n.death_reason) },
            "is_head": n.is_head,
            "temp_dir": n.temp_dir,
            "resources_total": amounts(&n.total),
            "resources_available": amounts(&n.available),
            "tasks_queued": n.tasks_queued,
            "store": { "used": n.store_used, "capacity": n.store_capacity, "spilled": n.store_spilled },
        })).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------
// arca stop

/// `arca stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    #[command(flatten)]
    session: SessionArgs,
}

/// Where each node on this machine notes its temp dir while it runs, so
/// that a bare `arca stop` finds them all: `<tmp>/arca-nodes/<pid>`.
fn node_registry() -> PathBuf {
    std::env::temp_dir().join("arca-nodes")
}

/// Notes a running node (best effort: without it, `arca stop` needs
/// `--temp-dir` for this node).
fn register_node(dir: &Path) -> PathBuf {
    let reg = node_registry();
    let _ = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o1777)
        .create(&reg);
    let entry = reg.join(std::process::id().to_string());
    let _ = fs::write(&entry, format!("{}\n", dir.display()));
    entry
}

/// The temp dirs of nodes on this machine that still run: joined nodes
/// first, heads last (so that nodes leave before their head goes).
fn nodes_on_this_machine() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(node_registry())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let dir = PathBuf::from(fs::read_to_string(e.path()).ok()?.trim());
            if is_node_process(pid, &dir) {
                Some(dir)
            } else {
                let _ = fs::remove_file(e.path());
                None
            }
        })
        .collect();
    dirs.sort_by_key(|d| d.join(HEAD_ADDRESS_FILE).exists());
    dirs
}

/// `arca stop`: the node in `--temp-dir` (or `$ARCA_TEMP_DIR`); with
/// neither, every node running on this machine.
pub fn stop(a: StopArgs) -> anyhow::Result<()> {
    let named = a.session.temp_dir.is_some()
        || std::env::var_os(arca_proto::consts::ENV_TEMP_DIR).is_some_and(|v| !v.is_empty());
    if !named {
        let all = nodes_on_this_machine();
        if !all.is_empty() {
            for dir in all {
                stop_one(&dir)?;
            }
            return Ok(());
        }
    }
    stop_one(&a.session.dir())
}

/// Asks the node to stop and waits until its process is gone, falling back to
/// SIGTERM and then SIGKILL (of its process group, workers included); then
/// ends any worker that outlived it and removes what a killed node leaves.
fn stop_one(dir: &Path) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    let mut pid = None;
    let mut workers = 0;
    let mut asked = false;
    let unresponsive = |e: anyhow::Error| {
        println!(
            "The node in {} does not answer ({}); stopping it with signals.",
            dir.display(),
            format!("{e:#}").replace('\n', " ")
        );
    };
    match NodeClient::connect(&dir, "arca stop") {
        Ok(Some(mut node)) => match node.status() {
            Ok(s) => {
                pid = Some(s.pid);
                workers = s.workers.len();
                match node.shutdown() {
                    Ok(()) => asked = true,
                    Err(e) => unresponsive(e),
                }
            }
            Err(e) => unresponsive(e),
        },
        Ok(None) => {}
        Err(e) => unresponsive(e),
    }
    let pid = pid.or_else(|| read_pid(&dir).filter(|&p| is_node_process(p, &dir)));
    let Some(pid) = pid else {
        let note = if remove_leftovers(&dir) {
            " (removed the files a stopped node left)"
        } else {
            ""
        };
        println!("No node running in {}{note}.", dir.display());
        return Ok(());
    };
    let how = end_process(pid, asked)?;
    let orphans = kill_workers_of(&dir);
    remove_leftovers(&dir);
    let mut what = format!("pid {pid}");
    if workers > 0 {
        what += &format!(", {workers} worker{}", if workers == 1 { "" } else { "s" });
    }
    if orphans > 0 {
        what += &format!(", {orphans} leftover worker process(es) killed");
    }
    println!("Stopped the node in {} ({what}){how}.", dir.display());
    Ok(())
}

/// Waits for `pid` to end: after the Shutdown request if `asked`, then
/// after SIGTERM, then after SIGKILL. Says how it ended.
fn end_process(pid: u32, asked: bool) -> anyhow::Result<&'static str> {
    if asked && wait_gone(pid, STOP_TIMEOUT) {
        return Ok("");
    }
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    // A stopped process (SIGSTOP, ^Z) acts on SIGTERM only once continued.
    let _ = kill(p, Signal::SIGCONT);
    if wait_gone(pid, SIGTERM_TIMEOUT) {
        return Ok(" with SIGTERM");
    }
    // The node leads its own process group (`arca start` made it a session
    // leader) and its workers are in it: kill them all at once. Never kill a
    // group the node does not lead: it could hold the user's shell.
    if getpgid(Some(p)) == Ok(p) {
        let _ = killpg(p, Signal::SIGKILL);
    }
    let _ = kill(p, Signal::SIGKILL);
    if wait_gone(pid, SIGKILL_TIMEOUT) {
        return Ok(" with SIGKILL");
    }
    bail!(
        "the node (pid {pid}) is still running after SIGKILL; is it stuck in the kernel (state D in `ps`)?"
    )
}

/// Whether a process is running (a zombie, exited but not reaped by whoever
/// adopted it, counts as gone).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn read_pid(dir: &Path) -> Option<u32> {
    fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a live `arca node` serving `dir` (and not some other
/// process that reused the pid of a node that died).
fn is_node_process(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    alive(pid)
        && args.contains(&&b"node"[..])
        && args
            .windows(2)
            .any(|w| w[0] == b"--temp-dir" && Path::new(OsStr::from_bytes(w[1])) == dir)
}

/// SIGKILLs the processes the node in `dir` started (they carry its socket
/// in their environment) that outlived it; how many there were.
fn kill_workers_of(dir: &Path) -> usize {
    let mut tag = format!("{}=", arca_scheduler::ENV_NODE_SOCKET).into_bytes();
    tag.extend_from_slice(
        dir.join(arca_scheduler::NODE_SOCKET)
            .as_os_str()
            .as_encoded_bytes(),
    );
    let Ok(procs) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Unreadable for other users' processes, which the node cannot have started.
        let Ok(env) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        // Not this process: `arca stop` run from inside a task inherits the tag.
        if pid != std::process::id() && env.split(|b| *b == 0).any(|v| v == tag) && alive(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

/// Removes the sockets and pid file of a node that no longer runs there;
/// true if there was anything to remove.
fn remove_leftovers(dir: &Path) -> bool {
    let mut removed = false;
    for name in [arca_scheduler::NODE_SOCKET, arca_scheduler::STORE_SOCKET] {
        let path = dir.join(name);
        let socket = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        let dead = matches!(UnixStream::connect(&path), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused);
        if socket && dead && fs::remove_file(&path).is_ok() {
            removed = true;
        }
    }
    if read_pid(dir).is_some_and(|p| !is_node_process(p, dir))
        && fs::remove_file(dir.join(PID_FILE)).is_ok()
    {
        removed = true;
    }
    // A killed head's note for nodes on this machine, if it still points here.
    let serving = UnixStream::connect(dir.join(arca_scheduler::NODE_SOCKET)).is_ok();
    if !serving && let Ok(address) = fs::read_to_string(dir.join(HEAD_ADDRESS_FILE)) {
        let registry = head_registry(address.trim());
        if fs::read_to_string(&registry).is_ok_and(|d| Path::new(d.trim()) == dir) {
            let _ = fs::remove_file(registry);
        }
        removed |= fs::remove_file(dir.join(HEAD_ADDRESS_FILE)).is_ok();
    }
    removed
}
