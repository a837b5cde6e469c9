//! The head's control service (node table, heartbeats, death detection, KV)
//! and every node's heartbeat to it.
//!
//! The head's state is one small table in memory behind its own lock (never
//! the scheduler's); each change is a plain method on [`HeadState`], so that
//! persisting it later is a matter of logging those calls.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arca_proto::cluster as cpb;
use arca_proto::node as pb;
use bytes::Bytes;
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

use super::{Cluster, NodeId};
use crate::node::Shared;

struct Entry {
    info: pb::NodeInfo,
    last_seen: Instant,
}

#[derive(Default)]
struct HeadState {
    nodes: HashMap<NodeId, Entry>,
    /// Joined order, for a stable listing.
    order: Vec<NodeId>,
    kv: HashMap<String, Bytes>,
}

impl HeadState {
    fn view(&self) -> cpb::ClusterView {
        cpb::ClusterView {
            nodes: self
                .order
                .iter()
                .filter_map(|id| self.nodes.get(id))
                .map(|e| e.info.clone())
                .collect(),
            unknown_node: false,
        }
    }

    fn register(&mut self, info: pb::NodeInfo, id: NodeId) {
        if !self.nodes.contains_key(&id) {
            self.order.push(id);
        }
        tracing::info!(node = %id, address = %info.address, name = %info.name, "node joined");
        self.nodes.insert(
            id,
            Entry {
                info: pb::NodeInfo {
                    alive: true,
                    death_reason: String::new(),
                    ..info
                },
                last_seen: Instant::now(),
            },
        );
    }

    /// Marks a node dead; false if it was not alive.
    fn declare_dead(&mut self, id: NodeId, reason: String) -> bool {
        match self.nodes.get_mut(&id) {
            Some(e) if e.info.alive => {
                tracing::warn!(node = %id, address = %e.info.address, "node is dead: {reason}");
                e.info.alive = false;
                e.info.death_reason = reason;
                e.info.available = e.info.total.as_ref().map(|_| pb::Resources::default());
                true
            }
            _ => false,
        }
    }
}

#[derive(Clone)]
pub(crate) struct ControlService {
    state: Arc<Mutex<HeadState>>,
}

impl ControlService {
    /// The service, and a task that declares silent nodes dead.
    pub(crate) fn new(death_timeout: Duration, rt: &tokio::runtime::Runtime) -> Self {
        let state = Arc::new(Mutex::new(HeadState::default()));
        let weak = Arc::downgrade(&state);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100).min(death_timeout / 4));
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else {
                    return;
                };
                let mut s = state.lock();
                let now = Instant::now();
                let silent: Vec<(NodeId, Duration)> = s
                    .nodes
                    .iter()
                    .filter(|(_, e)| e.info.alive && now - e.last_seen > death_timeout)
                    .map(|(id, e)| (*id, now - e.last_seen))
                    .collect();
                for (id, for_) in silent {
                    s.declare_dead(
                        id,
                        format!(
                            "no heartbeat for {:.1} s (it was killed, or the network is down)",
                            for_.as_secs_f64()
                        ),
                    );
                }
            }
        });
        Self { state }
    }
}

fn node_id(b: &[u8]) -> Result<NodeId, Status> {
    NodeId::from_slice(b)
        .ok_or_else(|| Status::invalid_argument(format!("malformed node id ({} bytes)", b.len())))
}

#[tonic::async_trait]
impl cpb::control_server::Control for ControlService {
    async fn register(
        &self,
        req: Request<cpb::RegisterRequest>,
    ) -> Result<Response<cpb::ClusterView>, Status> {
        let req = req.into_inner();
        if req.version != super::VERSION {
            let theirs = if req.version.is_empty() {
                "an older Arca".to_string()
            } else {
                format!("Arca {}", req.version)
            };
            return Err(Status::failed_precondition(format!(
                "this head runs Arca {} and the joining node runs {theirs}; \
                 run the same Arca version on every node",
                super::VERSION
            )));
        }
        let info = req
            .node
            .ok_or_else(|| Status::invalid_argument("Register without a node"))?;
        let id = node_id(&info.node_id)?;
        if info.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "Register: {:?} is not IP:PORT",
                info.address
            )));
        }
        let mut s = self.state.lock();
        s.register(info, id);
        Ok(Response::new(s.view()))
    }

    async fn heartbeat(
        &self,
        req: Request<cpb::HeartbeatRequest>,
    ) -> Result<Response<cpb::ClusterView>, Status> {
        let hb = req.into_inner();
        let id = node_id(&hb.node_id)?;
        let mut s = self.state.lock();
        match s.nodes.get_mut(&id) {
            Some(e) if e.info.alive => {
                e.last_seen = Instant::now();
                if hb.available.is_some() {
                    e.info.available = hb.available;
                }
                e.info.store_used = hb.store_used;
                e.info.store_spilled = hb.store_spilled;
                e.info.tasks_queued = hb.tasks_queued;
                Ok(Response::new(s.view()))
            }
            _ => Ok(Response::new(cpb::ClusterView {
                unknown_node: true,
                ..s.view()
            })),
        }
    }

    async fn unregister(
        &self,
        req: Request<cpb::UnregisterRequest>,
    ) -> Result<Response<cpb::Empty>, Status> {
        let r = req.into_inner();
        let id = node_id(&r.node_id)?;
        let reason = if r.reason.is_empty() {
            "left the cluster".to_string()
        } else {
            format!("left the cluster ({})", r.reason)
        };
        self.state.lock().declare_dead(id, reason);
        Ok(Response::new(cpb::Empty {}))
    }

    async fn kv_put(
        &self,
        req: Request<cpb::KvPutRequest>,
    ) -> Result<Response<cpb::KvPutReply>, Status> {
        let r = req.into_inner();
        let mut s = self.state.lock();
        match s.kv.get(&r.key) {
            Some(v) if !r.overwrite => Ok(Response::new(cpb::KvPutReply {
                added: false,
                existing: v.clone(),
            })),
            _ => {
                s.kv.insert(r.key, r.value);
                Ok(Response::new(cpb::KvPutReply {
                    added: true,
                    existing: Bytes::new(),
                }))
            }
        }
    }

    async fn kv_get(&self, req: Request<cpb::KvKey>) -> Result<Response<cpb::KvGetReply>, Status> {
        let key = req.into_inner().key;
        let s = self.state.lock();
        Ok(Response::new(match s.kv.get(&key) {
            Some(v) => cpb::KvGetReply {
                found: true,
                value: v.clone(),
            },
            None => cpb::KvGetReply::default(),
        }))
    }

    async fn kv_delete(&self, req: Request<cpb::KvKey>) -> Result<Response<cpb::Empty>, Status> {
        self.state.lock().kv.remove(&req.into_inner().key);
        Ok(Response::new(cpb::Empty {}))
    }
}

/// Reports to the head every `heartbeat`, and hands the cluster view it
/// answers with to the scheduler. While the head does not answer, the node
/// keeps running what it has and says so in `arca status`.
pub(crate) async fn heartbeat_loop(
    shared: Weak<Shared>,
    cluster: Arc<Cluster>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut control = cluster.control();
    let mut last_answer = Instant::now();
    let mut head_declared_dead = false;
    let mut tick = tokio::time::interval(cluster.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (s, c) = (shared.clone(), Arc::clone(&cluster));
        let Ok(Some(hb)) = tokio::task::spawn_blocking(move || {
            let shared = s.upgrade()?;
            let totals = shared.store().totals();
            let st = shared.state.lock();
            Some(shared.heartbeat(&st, &c, &totals))
        })
        .await
        else {
            return;
        };
        let timeout = cluster.config.death_timeout;
        let r = tokio::time::timeout(timeout, control.heartbeat(hb)).await;
        let why = match r {
            Ok(Ok(v)) => {
                *cluster.head_error.lock() = None;
                last_answer = Instant::now();
                head_declared_dead = false;
                Ok(v.into_inner())
            }
            Ok(Err(e)) => Err(e.message().to_string()),
            Err(_) => Err("no answer in time".to_string()),
        };
        let view = match why {
            Ok(v) => v,
            Err(why) => {
                head_unreachable(&cluster, &why);
                if !head_declared_dead && last_answer.elapsed() > cluster.config.death_timeout {
                    // The head's own node is gone too: what was sent there
                    // is retried elsewhere, as for any dead node.
                    head_declared_dead = true;
                    let (s, c) = (shared.clone(), Arc::clone(&cluster));
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Some(shared) = s.upgrade() {
                            let mut st = shared.state.lock();
                            let mut nodes = st.cluster.clone();
                            for n in nodes.iter_mut().filter(|n| n.is_head && n.alive) {
                                n.alive = false;
                                n.death_reason = format!("the head stopped answering ({why})");
                            }
                            shared.cluster_view(&mut st, &c, nodes);
                        }
                    })
                    .await;
                }
                continue;
            }
        };
        if view.unknown_node {
            // The head declared this node dead (or restarted): join again.
            let Some(sh) = shared.upgrade() else { return };
            let info = {
                let totals = sh.store().totals();
                let st = sh.state.lock();
                sh.node_info(&st, &cluster, &totals)
            };
            tracing::warn!("the head no longer knows this node; joining again");
            let _ = control.register(super::register_request(info)).await;
            continue;
        }
        let (s, c) = (shared.clone(), Arc::clone(&cluster));
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(shared) = s.upgrade() {
                let mut st = shared.state.lock();
                shared.cluster_view(&mut st, &c, view.nodes);
            }
        })
        .await;
    }
}

fn head_unreachable(cluster: &Cluster, why: &str) {
    let mut e = cluster.head_error.lock();
    if e.is_none() {
        tracing::error!(head = %cluster.head_address, "the head does not answer: {why}");
    }
    *e = Some(format!(
        "the head at {} does not answer ({why}); this node keeps running its own work",
        cluster.head_address
    ));
}
