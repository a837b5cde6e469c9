//! The cluster: the head's control service, every node's client of it, and
//! the peer service nodes use to forward tasks, report results, locate
//! objects and pull their bytes (`proto/arca/cluster.proto`).
//!
//! gRPC runs on a tokio runtime owned by the node. Handlers never wait on the
//! scheduler's lock on a runtime thread: they hand the work to
//! `spawn_blocking`, and the scheduler hands messages for peers to per-peer
//! queues ([`Cluster::send`] never blocks), which one task per peer drains
//! into batched `Deliver` calls, in order.

mod head;
mod peer;
pub(crate) mod transfer;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arca_proto::cluster as cpb;
use arca_proto::cluster::control_client::ControlClient;
use arca_proto::cluster::peer_client::PeerClient;
use arca_proto::consts::TOKEN_HEADER;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::node::Shared;

/// Largest gRPC message a node takes: a chunk is 5 MiB, a batch of
/// forwarded tasks is cut at [`BATCH_BYTES`].
pub(crate) const MAX_MESSAGE: usize = 64 << 20;
/// HTTP/2 flow-control window per stream (connections get 4 times as
/// much): several 5 MiB chunks in flight, so a pull never waits for the
/// window while the receiver copies one into its store.
const WINDOW: u32 = 32 << 20;
/// A `Deliver` batch stops growing at this many encoded bytes.
const BATCH_BYTES: usize = 8 << 20;

/// A node's cluster-wide identity: random, so a restarted node is a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 16]);

/// This build's version: nodes of a cluster run the same one.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How this node asks the head to take it.
pub(crate) fn register_request(info: arca_proto::node::NodeInfo) -> cpb::RegisterRequest {
    cpb::RegisterRequest {
        node: Some(info),
        version: VERSION.to_string(),
    }
}

impl NodeId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// Reads an id off the wire.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Self(b.try_into().ok()?))
    }

    /// The id's bytes, for the wire.
    pub fn to_bytes(self) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(&self.0)
    }

    /// The id in hex, as `arca status` shows it.
    pub fn to_hex(self) -> String {
        arca_proto::hex::encode(&self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", &self.to_hex()[..8])
    }
}

fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        // No /dev/urandom: the clock and pid still differ between nodes.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        b = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    b
}

/// A fresh cluster token: 32 hex digits.
pub fn new_token() -> String {
    arca_proto::hex::encode(&random_bytes())
}

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Run the control service here (`arca start --head`).
    pub head: bool,
    /// The head's `HOST:PORT`: where the head's control service listens, or
    /// the head a node joins.
    pub address: String,
    /// The IP this node serves peers on (and that peers reach it at).
    pub node_ip: String,
    /// The secret every call between nodes carries.
    pub token: String,
    /// A node silent this long is declared dead by the head.
    pub death_timeout: Duration,
    /// How often a node reports to the head.
    pub heartbeat: Duration,
}

impl ClusterConfig {
    /// The defaults for `address` (a head's own, or the one to join).
    pub fn new(head: bool, address: String, node_ip: String, token: String) -> Self {
        Self {
            head,
            address,
            node_ip,
            token,
            death_timeout: Duration::from_secs(3),
            heartbeat: Duration::from_millis(100),
        }
    }
}

/// Why the cluster side of a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The runtime or a listener could not be made.
    #[error("cannot listen on {address}: {cause}")]
    Listen {
        /// What was bound.
        address: String,
        /// Why not.
        cause: std::io::Error,
    },
    /// The address is not `HOST:PORT`.
    #[error("{0:?} is not an address: give HOST:PORT, e.g. 127.0.0.1:6379")]
    BadAddress(String),
    /// The head refused or did not answer.
    #[error("{0}")]
    Join(String),
}

/// Metadata carried by every call: the cluster token.
#[derive(Clone)]
pub(crate) struct Token(AsciiMetadataValue);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(TOKEN_HEADER, self.0.clone());
        Ok(req)
    }
}

/// Refuses calls without the cluster token, and logs who tried.
#[derive(Clone)]
pub(crate) struct CheckToken(Arc<str>);

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let given = req
            .metadata()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        self.check(given, req.remote_addr())?;
        Ok(req)
    }
}

impl CheckToken {
    /// Whether a call from `from` carrying token `given` may go on.
    pub(crate) fn check(
        &self,
        given: Option<&str>,
        from: Option<SocketAddr>,
    ) -> Result<(), tonic::Status> {
        if given.is_some_and(|g| constant_time_eq(g.as_bytes(), self.0.as_bytes())) {
            return Ok(());
        }
        let from = from.map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
        let what = if given.is_some() { "a wrong" } else { "no" };
        tracing::warn!(%from, "refused a call with {what} cluster token");
        Err(tonic::Status::unauthenticated(format!(
            "refused: the call carries {what} cluster token; pass the head's token \
             (--token or ${}; it is in the head's temp dir, file {})",
            arca_proto::consts::ENV_TOKEN,
            arca_proto::consts::TOKEN_FILE
        )))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) type Peer = PeerClient<InterceptedService<Channel, Token>>;
pub(crate) type Control = ControlClient<InterceptedService<Channel, Token>>;

/// The cluster side of a running node.
pub(crate) struct Cluster {
    pub id: NodeId,
    /// Where peers reach this node's peer service.
    pub address: String,
    /// The head's control service.
    pub head_address: String,
    pub is_head: bool,
    token: Token,
    pub config: ClusterConfig,
    rt: tokio::runtime::Runtime,
    /// One queue per peer, drained in order by its sender task.
    outbox: Mutex<HashMap<NodeId, mpsc::UnboundedSender<cpb::PeerMessage>>>,
    /// Peer addresses by id, from the head's view.
    addresses: Mutex<HashMap<NodeId, String>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Connections for pulls, apart from `channels` (see `transfer`).
    pub(crate) pulls: transfer::Connections,
    /// Nodes the head declared dead.
    pub dead: Mutex<std::collections::HashSet<NodeId>>,
    /// Why the head cannot be reached, while it cannot.
    pub head_error: Mutex<Option<String>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

fn parse_addr(a: &str) -> Result<SocketAddr, ClusterError> {
    use std::net::ToSocketAddrs;
    a.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| ClusterError::BadAddress(a.to_string()))
}

impl Cluster {
    /// Binds the node's gRPC server (with the control service on a head),
    /// joins the head and starts the heartbeat.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        config: ClusterConfig,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("arca-grpc")
            .enable_all()
            .build()
            .map_err(|cause| ClusterError::Listen {
                address: config.address.clone(),
                cause,
            })?;
        let bind = if config.head {
            let head = parse_addr(&config.address)?;
            SocketAddr::new(
                config
                    .node_ip
                    .parse()
                    .map_err(|_| ClusterError::BadAddress(config.node_ip.clone()))?,
                head.port(),
            )
        } else {
            parse_addr(&format!("{}:0", config.node_ip))?
        };
        let listener =
            rt.block_on(tokio::net::TcpListener::bind(bind))
                .map_err(|cause| match cause.kind() {
                    std::io::ErrorKind::AddrInUse => ClusterError::Join(format!(
                        "cannot listen on {bind}: the port is in use (another head or program runs \
                     there); pick another with --port"
                    )),
                    _ => ClusterError::Listen {
                        address: bind.to_string(),
                        cause,
                    },
                })?;
        let local = listener
            .local_addr()
            .map_err(|cause| ClusterError::Listen {
                address: bind.to_string(),
                cause,
            })?;
        let address = local.to_string();
        let head_address = if config.head {
            address.clone()
        } else {
            config.address.clone()
        };
        let token = MetadataValue::try_from(config.token.as_str())
            .map_err(|_| ClusterError::Join("the cluster token must be printable ASCII".into()))?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let cluster = Arc::new(Cluster {
            id: NodeId::random(),
            address: address.clone(),
            head_address,
            is_head: config.head,
            token: Token(token),
            config: config.clone(),
            rt,
            outbox: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            pulls: Default::default(),
            dead: Mutex::new(Default::default()),
            head_error: Mutex::new(None),
            stop,
        });
        let check = CheckToken(config.token.as_str().into());
        let peer = peer::PeerService::new(Arc::downgrade(shared), Arc::downgrade(&cluster));
        let mut router = tonic::transport::Server::builder()
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW * 4)
            .add_service(cpb::peer_server::PeerServer::with_interceptor(
                peer,
                check.clone(),
            ))
            .add_service(transfer::TransferService::new(
                Arc::downgrade(shared),
                check.clone(),
            ));
        if config.head {
            let control = head::ControlService::new(config.death_timeout, &cluster.rt);
            router = router.add_service(cpb::control_server::ControlServer::with_interceptor(
                control, check,
            ));
        }
        // Nagle off: a small reply must not wait for the peer's delayed ACK.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut stop_serve = stop_rx.clone();
        cluster.rt.spawn(async move {
            let shutdown = async move {
                let _ = stop_serve.wait_for(|s| *s).await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!("gRPC server ended: {e}");
            }
        });
        cluster.join(shared)?;
        let weak = Arc::downgrade(shared);
        let c = Arc::clone(&cluster);
        cluster
            .rt
            .spawn(async move { head::heartbeat_loop(weak, c, stop_rx).await });
        tracing::info!(node = %cluster.id, %address, head = %cluster.head_address, "joined the cluster");
        Ok(cluster)
    }

    /// Registers with the head, retrying for a few seconds while it starts;
    /// a head that refuses (wrong token, other version) is not retried.
    fn join(&self, shared: &Arc<Shared>) -> Result<(), ClusterError> {
        let totals = shared.store().totals();
        let info = shared.node_info(&shared.state.lock(), self, &totals);
        let mut control = self.control();
        let request = register_request(info);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.rt.block_on(control.register(request.clone()));
            match r {
                Ok(view) => {
                    let view = view.into_inner();
                    let mut st = shared.state.lock();
                    shared.cluster_view(&mut st, self, view.nodes);
                    return Ok(());
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::Unauthenticated | tonic::Code::FailedPrecondition
                    ) =>
                {
                    return Err(ClusterError::Join(format!(
                        "the head at {} refused this node: {}",
                        self.head_address,
                        s.message()
                    )));
                }
                Err(s) if std::time::Instant::now() >= deadline => {
                    return Err(ClusterError::Join(format!(
                        "no head answers at {}: {}; start it with `arca start --head`, or check the address",
                        self.head_address,
                        s.message()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Leaves the cluster cleanly and stops the server.
    pub(crate) fn leave(&self) {
        let mut control = self.control();
        let req = cpb::UnregisterRequest {
            node_id: self.id.to_bytes(),
            reason: "stopped".into(),
        };
        let _ = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), control.unregister(req)).await
        });
        let _ = self.stop.send(true);
    }

    fn channel(&self, address: &str) -> Channel {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(address) {
            return c.clone();
        }
        let _enter = self.rt.enter();
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map(|e| {
                e.connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .initial_stream_window_size(Some(WINDOW))
                    .initial_connection_window_size(Some(WINDOW * 4))
                    .connect_lazy()
            })
            .unwrap_or_else(|_| Endpoint::from_static("http://0.0.0.0:1").connect_lazy());
        channels.insert(address.to_string(), channel.clone());
        channel
    }

    /// A client of the head's control service.
    pub(crate) fn control(&self) -> Control {
        ControlClient::with_interceptor(self.channel(&self.head_address), self.token.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// A client of a peer's service.
    pub(crate) fn peer(&self, address: &str) -> Peer {
        PeerClient::with_interceptor(self.channel(address), self.token.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The address of a node, from the head's last view.
    pub(crate) fn address_of(&self, node: NodeId) -> Option<String> {
        self.addresses.lock().get(&node).cloned()
    }

    /// Notes where a peer that sent us messages is.
    pub(crate) fn note_address(&self, node: NodeId, address: &str) {
        if address.parse::<SocketAddr>().is_ok() {
            self.addresses
                .lock()
                .entry(node)
                .or_insert_with(|| address.to_string());
        }
    }

    pub(crate) fn set_addresses(&self, nodes: &[arca_proto::node::NodeInfo]) {
        let mut a = self.addresses.lock();
        for n in nodes {
            if let Some(id) = NodeId::from_slice(&n.node_id) {
                a.insert(id, n.address.clone());
            }
        }
    }

    /// Queues a message for a peer; never blocks (the caller may hold the
    /// scheduler's lock). Messages to one peer arrive in the order queued.
    pub(crate) fn send(self: &Arc<Self>, to: NodeId, msg: cpb::peer_message::Kind) {
        let msg = cpb::PeerMessage { kind: Some(msg) };
        let mut outbox = self.outbox.lock();
        if let Some(tx) = outbox.get(&to)
            && tx.send(msg.clone()).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(msg);
        outbox.insert(to, tx);
        let me = Arc::clone(self);
        self.rt.spawn(async move { me.sender(to, rx).await });
    }

    /// Drains one peer's queue into `Deliver` calls. A failed call is retried
    /// while the peer is alive; messages to a dead peer are dropped (the
    /// scheduler handles the peer's death on its own).
    async fn sender(
        self: Arc<Self>,
        to: NodeId,
        mut rx: mpsc::UnboundedReceiver<cpb::PeerMessage>,
    ) {
        use prost::Message;
        while let Some(first) = rx.recv().await {
            let mut size = first.encoded_len();
            let mut messages = vec![first];
            while size < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(m) => {
                        size += m.encoded_len();
                        messages.push(m);
                    }
                    Err(_) => break,
                }
            }
            let batch = cpb::Batch {
                from: self.id.to_bytes(),
                messages,
                from_address: self.address.clone(),
            };
            let mut delay = Duration::from_millis(20);
            let unknown_since = std::time::Instant::now();
            loop {
                let Some(address) = self.address_of(to) else {
                    // Not in the head's view yet (it just joined): wait for it.
                    if unknown_since.elapsed() < self.config.death_timeout * 2 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    tracing::warn!(peer = %to, "dropping messages to a node this node does not know");
                    break;
                };
                match self.peer(&address).deliver(batch.clone()).await {
                    Ok(_) => break,
                    Err(s) => {
                        if *self.stop.borrow() || self.is_dead(to) {
                            tracing::warn!(peer = %to, "dropping messages to a dead node: {}", s.message());
                            break;
                        }
                        if s.code() == tonic::Code::Unauthenticated
                            || s.code() == tonic::Code::InvalidArgument
                        {
                            tracing::error!(peer = %to, "peer refused messages: {}", s.message());
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(500));
                    }
                }
            }
        }
    }

    fn is_dead(&self, node: NodeId) -> bool {
        self.dead.lock().contains(&node)
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
}

/// The token for a node: `--token`/`$ARCA_TOKEN`, else the one in the head's
/// temp dir (a node on the head's machine), else (for a head) a new one.
pub fn token_file(temp_dir: &Path) -> std::path::PathBuf {
    temp_dir.join(arca_proto::consts::TOKEN_FILE)
}
