//! Object bytes between nodes: a pull streams an object in chunks, written
//! as they arrive straight into the receiving store's shared memory (create,
//! write each chunk in place, seal), with no copy of the whole object.

use std::sync::{Arc, Weak};

use arca_proto::cluster as cpb;
use arca_store::ObjectId;
use arca_store::server::LocalRead;
use tokio::sync::mpsc;
use tonic::Status;

use super::Cluster;
use crate::node::Shared;

/// Ray's chunk size.
pub(crate) const CHUNK: usize = 5 << 20;

/// A chunk of a pinned object, handed to the encoder without a copy: the
/// pin lasts as long as any chunk of it.
struct Slice(Arc<LocalRead>, std::ops::Range<usize>);

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes()[self.1.clone()]
    }
}

/// Streams a pinned object as chunks (on a blocking thread: it waits for
/// the receiver to take each one).
pub(crate) fn send_chunks(obj: LocalRead, tx: &mpsc::Sender<Result<cpb::Chunk, Status>>) {
    let obj = Arc::new(obj);
    let len = obj.bytes().len();
    let total = len as u64;
    let mut offset = 0;
    loop {
        let end = (offset + CHUNK).min(len);
        let chunk = cpb::Chunk {
            offset: offset as u64,
            data: bytes::Bytes::from_owner(Slice(Arc::clone(&obj), offset..end)),
            total,
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            return; // the puller went away
        }
        offset = end;
        if offset >= len {
            return;
        }
    }
}

/// Pulls object `id` (`size` bytes) from the node at `address` into this
/// node's store, where this node holds it.
pub(crate) async fn pull(
    shared: Weak<Shared>,
    cluster: &Cluster,
    address: &str,
    id: ObjectId,
    size: u64,
) -> Result<(), String> {
    let mut stream = cluster
        .peer(address)
        .pull(cpb::PullRequest {
            id: id.as_bytes().to_vec().into(),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let s = shared.clone();
    let mut object = tokio::task::spawn_blocking(move || {
        let shared = s.upgrade().ok_or("the node is stopping")?;
        shared
            .store
            .create_local(shared.store_client, id, size, true)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut got = 0u64;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| s.message().to_string())?
    {
        let (off, len) = (chunk.offset, chunk.data.len() as u64);
        if chunk.total != size || off != got || off + len > size {
            return Err(format!(
                "the sender's chunk {off}+{len} of {} does not fit object {id} of {size} bytes",
                chunk.total
            ));
        }
        object.bytes()[off as usize..(off + len) as usize].copy_from_slice(&chunk.data);
        got += len;
    }
    if got != size {
        return Err(format!("the sender stopped after {got} of {size} bytes"));
    }
    tokio::task::spawn_blocking(move || object.seal().map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
}
