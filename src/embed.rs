//! `init`: connect to a running node, or start one inside this process (an
//! embedded node) when none runs, as `ray.init()` does. The client library
//! does not link the node daemon; this facade does, and hands the node to
//! the client to keep.

use std::path::{Path, PathBuf};

use arca_client::{EmbeddedNode, Error, Result};
use arca_scheduler::{Node, NodeConfig};

/// How [`init_with`] finds or starts a node.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The cluster's head, `HOST:PORT`: use this machine's node of that
    /// cluster. Default: `$ARCA_ADDRESS`.
    pub address: Option<String>,
    /// The temp dir of the node on this machine to use (`arca start
    /// --temp-dir DIR`). Default: `$ARCA_TEMP_DIR`, else `/tmp/arca` if a
    /// node runs there, else start an embedded node.
    pub temp_dir: Option<PathBuf>,
    /// Always start an embedded node, with these settings (its session
    /// directory is made fresh and removed at shutdown when left default).
    pub embedded: Option<NodeConfig>,
    /// Arguments the node passes to this program when it starts it as a
    /// worker (for test binaries: the name of a test that calls `init`).
    pub worker_args: Vec<String>,
}

/// Connects this process to a node: the one running on this machine
/// (`$ARCA_TEMP_DIR`, or `/tmp/arca`; of the cluster at `$ARCA_ADDRESS` if
/// set), or else a new embedded node that lives as long as this
/// process (as `ray.init()` does).
///
/// Call it first thing in `main`: the node starts this same program as its
/// worker processes, and in a worker `init` runs tasks and never returns.
pub fn init() -> Result<()> {
    init_with(Config::default())
}

/// [`init`] with explicit settings.
pub fn init_with(config: Config) -> Result<()> {
    let client = arca_client::Config {
        address: config.address.clone(),
        temp_dir: config.temp_dir.clone(),
        worker_args: config.worker_args.clone(),
        ..Default::default()
    };
    match config.embedded {
        Some(nc) => arca_client::init_with_node(
            arca_client::Config {
                start_node: true,
                ..client
            },
            || start_embedded(nc),
        ),
        None => arca_client::init_with_node(client, || start_embedded(NodeConfig::default())),
    }
}

/// Starts a node for this process. One left at the default session
/// directory gets a fresh one, removed when it stops.
pub fn start_embedded(mut nc: NodeConfig) -> Result<Box<dyn EmbeddedNode>> {
    if nc.session_dir == NodeConfig::default().session_dir {
        nc.session_dir = arca_scheduler::fresh_session_dir();
        nc.remove_session_dir = true;
    }
    let node =
        Node::start(nc).map_err(|e| Error::Node(format!("cannot start an embedded node: {e}")))?;
    Ok(Box::new(Embedded(node)))
}

struct Embedded(Node);

impl EmbeddedNode for Embedded {
    fn session_dir(&self) -> &Path {
        self.0.session_dir()
    }

    fn shutdown(self: Box<Self>) {
        self.0.shutdown();
    }
}
