//! Every node's peer service: one-way messages in order (`Deliver`) and
//! object locations (`Locate`). Object bytes are `transfer`'s.

use std::sync::{Arc, Weak};

use arca_proto::cluster as cpb;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::{Cluster, NodeId};
use crate::node::Shared;

#[derive(Clone)]
pub(crate) struct PeerService {
    shared: Weak<Shared>,
    cluster: Weak<Cluster>,
}

impl PeerService {
    pub(crate) fn new(shared: Weak<Shared>, cluster: Weak<Cluster>) -> Self {
        Self { shared, cluster }
    }

    fn shared(&self) -> Result<Arc<Shared>, Status> {
        self.shared
            .upgrade()
            .ok_or_else(|| Status::unavailable("the node is stopping"))
    }
}

fn from(b: &[u8]) -> Result<NodeId, Status> {
    NodeId::from_slice(b).ok_or_else(|| {
        Status::invalid_argument(format!("malformed sender node id ({} bytes)", b.len()))
    })
}

#[tonic::async_trait]
impl cpb::peer_server::Peer for PeerService {
    async fn deliver(&self, req: Request<cpb::Batch>) -> Result<Response<cpb::Empty>, Status> {
        let batch = req.into_inner();
        let sender = from(&batch.from)?;
        let shared = self.shared()?;
        if let Some(c) = self.cluster.upgrade() {
            c.note_address(sender, &batch.from_address);
        }
        let r = tokio::task::spawn_blocking(move || {
            let mut st = shared.state.lock();
            // A bad message is refused, and the ones after it still count.
            let mut first_error = None;
            for m in batch.messages {
                let done = match m.kind {
                    Some(kind) => shared.peer_message(&mut st, sender, kind),
                    None => Err("an empty message".to_string()),
                };
                if let Err(e) = done {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        match r {
            Ok(()) => Ok(Response::new(cpb::Empty {})),
            Err(msg) => {
                tracing::warn!(peer = %sender, "refused a message: {msg}");
                Err(Status::invalid_argument(msg))
            }
        }
    }

    async fn locate(
        &self,
        req: Request<cpb::LocateRequest>,
    ) -> Result<Response<cpb::LocateReply>, Status> {
        let r = req.into_inner();
        let asker = from(&r.from)?;
        let shared = self.shared()?;
        let (tx, rx) = oneshot::channel();
        let registered = tokio::task::spawn_blocking(move || {
            let mut st = shared.state.lock();
            shared.locate(&mut st, asker, &r.ids, tx)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        registered.map_err(Status::invalid_argument)?;
        match rx.await {
            Ok(locations) => Ok(Response::new(cpb::LocateReply { locations })),
            Err(_) => Err(Status::unavailable(
                "the node stopped before the objects were ready",
            )),
        }
    }
}
