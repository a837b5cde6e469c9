//! Object bytes between nodes: the `Transfer` service's one streaming call,
//! `Pull`, written by hand over HTTP/2 on both ends so that each byte is
//! copied once in user space, where tonic's generated code copies it three
//! times (prost's encoder, tonic's frame buffer, then into the store):
//!
//! - the holder sends each chunk as two body frames, a few bytes of gRPC and
//!   protobuf framing, then a slice of the pinned object itself, which h2
//!   writes to the socket without a copy;
//! - the puller parses that framing as DATA frames arrive, cut wherever
//!   HTTP/2 cut them, and copies each frame's bytes straight into the object
//!   it created in its store (create, write each chunk in place, seal).
//!
//! On the wire it is plain gRPC: tonic's generated `TransferClient` reads it
//! (a test does). The puller keeps one connection per peer of its own, with
//! 16 MiB HTTP/2 frames (tonic's channel keeps h2's 16 KiB, 320 frames per
//! chunk), so that a chunk arrives in one frame and a pull never queues
//! behind the peer's messages.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arca_proto::cluster as cpb;
use arca_proto::consts::TOKEN_HEADER;
use arca_store::ObjectId;
use arca_store::server::LocalRead;
use arca_store::spill::io::RecordReader;
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::{CheckToken, Cluster, WINDOW};
use crate::node::Shared;

/// Ray's chunk size.
pub(crate) const CHUNK: usize = 5 << 20;
/// HTTP/2's largest frame (2^24 - 1 bytes): a whole chunk fits in one.
const MAX_FRAME: u32 = (1 << 24) - 1;
const PATH: &str = "/arca.cluster.Transfer/Pull";
/// A pull request holds an object id; anything longer is not one.
const MAX_REQUEST: usize = 1024;

// ---------------------------------------------------------------------------
// The holder's side

/// The `Transfer` service: serves `Pull` from this node's store.
#[derive(Clone)]
pub(crate) struct TransferService {
    shared: Weak<Shared>,
    check: CheckToken,
}

impl TransferService {
    pub(crate) fn new(shared: Weak<Shared>, check: CheckToken) -> Self {
        Self { shared, check }
    }

    async fn serve(self, req: http::Request<tonic::body::Body>) -> Result<Response, Status> {
        if req.uri().path() != PATH {
            return Err(Status::unimplemented(format!(
                "no method {} here (the Transfer service has {PATH})",
                req.uri().path()
            )));
        }
        let given = req
            .headers()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        let from = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr());
        self.check.check(given, from)?;
        let body = Limited::new(req.into_body(), MAX_REQUEST)
            .collect()
            .await
            .map_err(|e| Status::invalid_argument(format!("cannot read the pull request: {e}")))?
            .to_bytes();
        let id = parse_request(&body)?;
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| Status::unavailable("the node is stopping"))?;
        let source = tokio::task::spawn_blocking(move || {
            // A spilled object is served from its spill file, not restored
            // here first.
            match shared.store().open_spilled(id) {
                Some(Ok(record)) => return Ok(Source::Disk(record)),
                // Restored or deleted meanwhile, or unreadable: the store
                // says which.
                Some(Err(e)) => tracing::debug!("serving {id} from memory: {e}"),
                None => {}
            }
            shared
                .store()
                .read_local(shared.store_client, id, Duration::from_secs(10))
                .map(|obj| Source::Memory(Arc::new(obj)))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::not_found)?;
        let (tx, rx) = mpsc::channel(8);
        tokio::task::spawn_blocking(move || send_chunks(source, &tx));
        let body = tonic::body::Body::new(StreamBody::new(ReceiverStream::new(rx)));
        let mut response = http::Response::new(body);
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        Ok(response)
    }
}

type Response = http::Response<tonic::body::Body>;

impl tonic::server::NamedService for TransferService {
    const NAME: &'static str = "arca.cluster.Transfer";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for TransferService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        // An error before the first chunk is a trailers-only response.
        Box::pin(async move { Ok(this.serve(req).await.unwrap_or_else(Status::into_http)) })
    }
}

/// A gRPC-framed `PullRequest` for `id`.
fn encode_request(id: ObjectId) -> Bytes {
    let req = cpb::PullRequest {
        id: id.as_bytes().to_vec().into(),
    };
    let mut b = BytesMut::with_capacity(5 + req.encoded_len());
    b.put_u8(0);
    b.put_u32(req.encoded_len() as u32);
    req.encode_raw(&mut b);
    b.freeze()
}

/// The object id in a gRPC-framed `PullRequest`.
fn parse_request(b: &[u8]) -> Result<ObjectId, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("a malformed pull request: {why}"));
    let (prefix, msg) = b.split_at_checked(5).ok_or_else(|| bad("too short"))?;
    if prefix[0] != 0 {
        return Err(bad("compressed (nodes do not compress)"));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len != msg.len() {
        return Err(bad("its length disagrees with its body"));
    }
    let req = cpb::PullRequest::decode(msg).map_err(|e| bad(&e.to_string()))?;
    ObjectId::from_slice(&req.id).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A chunk of a pinned object, handed to h2 without a copy: the pin lasts
/// as long as any chunk of it.
struct Slice(Arc<LocalRead>, std::ops::Range<usize>);

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes()[self.1.clone()]
    }
}

type Frames = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// Where a pull's bytes come from.
enum Source {
    /// The object pinned in the store.
    Memory(Arc<LocalRead>),
    /// Its spill record, read in order and checked at the end.
    Disk(RecordReader),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Memory(obj) => obj.bytes().len(),
            Source::Disk(r) => r.header().data_size as usize,
        }
    }

    /// The bytes `offset..end`, which follow the last ones asked for.
    fn chunk(&mut self, offset: usize, end: usize) -> Result<Bytes, String> {
        match self {
            Source::Memory(obj) => Ok(Bytes::from_owner(Slice(Arc::clone(obj), offset..end))),
            Source::Disk(r) => r
                .next(end - offset)
                .map(Bytes::from_owner)
                .map_err(|e| format!("cannot read the spill file: {e}")),
        }
    }

    /// Whether every byte sent was the object's.
    fn finish(self) -> Result<(), String> {
        match self {
            Source::Memory(_) => Ok(()),
            Source::Disk(r) => r
                .finish()
                .map_err(|e| format!("the spill record is bad: {e}")),
        }
    }
}

/// Streams an object as chunks, then its status (on a blocking thread: it
/// waits for h2 to take each chunk).
fn send_chunks(mut source: Source, tx: &Frames) {
    let len = source.len();
    let mut offset = 0;
    let status = loop {
        let end = (offset + CHUNK).min(len);
        let data = match source.chunk(offset, end) {
            Ok(data) => data,
            Err(e) => break Status::data_loss(e),
        };
        let head = chunk_head(offset as u64, len as u64, end - offset);
        if tx.blocking_send(Ok(Frame::data(head))).is_err() {
            return; // the puller went away
        }
        if !data.is_empty() && tx.blocking_send(Ok(Frame::data(data))).is_err() {
            return;
        }
        offset = end;
        if offset >= len {
            break match source.finish() {
                Ok(()) => Status::ok(""),
                Err(e) => Status::data_loss(e),
            };
        }
    };
    if status.code() != Code::Ok {
        tracing::error!("a pull failed: {}", status.message());
    }
    let mut trailers = http::HeaderMap::new();
    match status.add_header(&mut trailers) {
        Ok(()) => {
            let _ = tx.blocking_send(Ok(Frame::trailers(trailers)));
        }
        Err(e) => tracing::error!("cannot end a pull: {e}"),
    }
}

/// The gRPC message prefix and a `Chunk`'s fields up to its bytes: offset,
/// total, then data's tag and length.
fn chunk_head(offset: u64, total: u64, len: usize) -> Bytes {
    let mut fields = BytesMut::with_capacity(MAX_HEAD);
    for (tag, v) in [
        (OFFSET_TAG, offset),
        (TOTAL_TAG, total),
        (DATA_TAG, len as u64),
    ] {
        fields.put_u8(tag);
        prost::encoding::encode_varint(v, &mut fields);
    }
    let mut b = BytesMut::with_capacity(5 + fields.len());
    b.put_u8(0);
    b.put_u32((fields.len() + len) as u32);
    b.put_slice(&fields);
    b.freeze()
}

// ---------------------------------------------------------------------------
// The puller's side

/// The puller's HTTP/2 connections, one per peer address, made on first use
/// and again once closed.
#[derive(Default)]
pub(crate) struct Connections(Mutex<HashMap<String, SendRequest<Full<Bytes>>>>);

impl Connections {
    async fn get(&self, address: &str) -> Result<SendRequest<Full<Bytes>>, String> {
        if let Some(c) = self.0.lock().get(address).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let connect = tokio::net::TcpStream::connect(address);
        let tcp = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| format!("{address} did not answer within 2 s"))?
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        // Nagle off: a request must not wait for the peer's delayed ACK.
        tcp.set_nodelay(true)
            .map_err(|e| format!("cannot set up the connection to {address}: {e}"))?;
        let (send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .initial_stream_window_size(WINDOW)
                .initial_connection_window_size(WINDOW * 4)
                .max_frame_size(MAX_FRAME)
                // A peer that goes silent mid-pull (no reset: a partition,
                // a stopped process) fails the pull instead of holding its
                // half-written object forever; a pause shorter than a node's
                // death timeout is well inside this.
                .keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(20))
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| format!("no HTTP/2 with {address}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("a pull connection ended: {e}");
            }
        });
        self.0.lock().insert(address.to_string(), send.clone());
        Ok(send)
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
    let mut conn = cluster.pulls.get(address).await?;
    let body = encode_request(id);
    let request = http::Request::post(format!("http://{address}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(TOKEN_HEADER, cluster.config.token.as_str())
        .body(Full::new(body))
        .map_err(|e| format!("cannot make a pull request: {e}"))?;
    let broke = |e: hyper::Error| format!("the pull from {address} broke off: {e}");
    conn.ready().await.map_err(broke)?;
    let response = conn.send_request(request).await.map_err(broke)?;
    if let Some(s) = Status::from_header_map(response.headers())
        && s.code() != Code::Ok
    {
        return Err(s.message().to_string());
    }
    if response.status() != http::StatusCode::OK {
        return Err(format!(
            "{address} answered a pull with {}",
            response.status()
        ));
    }
    let s = shared.clone();
    let mut object = tokio::task::spawn_blocking(move || {
        let shared = s.upgrade().ok_or("the node is stopping")?;
        shared
            .store()
            .create_local(shared.store_client, id, size, true)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut chunks = ChunkReader::default();
    let mut body = response.into_body();
    let status = loop {
        let frame = match body.frame().await {
            Some(frame) => frame.map_err(broke)?,
            None => break None,
        };
        match frame.into_data() {
            Ok(data) => chunks
                .feed(&data, object.bytes())
                .map_err(|e| format!("{address} sent {e} for object {id} of {size} bytes"))?,
            Err(frame) => {
                break frame
                    .into_trailers()
                    .ok()
                    .and_then(|t| Status::from_header_map(&t));
            }
        }
    };
    match status {
        Some(s) if s.code() == Code::Ok => {}
        Some(s) => return Err(s.message().to_string()),
        None => return Err(format!("{address} ended the pull without a status")),
    }
    chunks.finish(size)?;
    tokio::task::spawn_blocking(move || object.seal().map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
}

const OFFSET_TAG: u8 = 1 << 3; // field 1, varint
const TOTAL_TAG: u8 = 2 << 3; // field 2, varint
const DATA_TAG: u8 = (3 << 3) | 2; // field 3, length-delimited
/// The gRPC prefix (5 bytes) and three fields of a one-byte tag and a
/// varint of at most 10 bytes.
const MAX_HEAD: usize = 5 + 3 * 11;

/// Reads a stream of `Chunk` messages as HTTP/2 frames bring them, cut
/// anywhere, and copies each chunk's bytes into the destination at its
/// offset. Chunks come in order and cover the object once.
#[derive(Debug, Default)]
struct ChunkReader {
    /// The current message's bytes before its data, while incomplete.
    head: Vec<u8>,
    /// Bytes of the current chunk's data still to come.
    left: usize,
    /// Where they go.
    at: usize,
    /// Bytes of the object written so far.
    got: u64,
}

/// A parsed message head.
#[derive(Debug, PartialEq)]
struct Head {
    /// Its length, prefix included.
    len: usize,
    offset: u64,
    total: u64,
    /// The data's length, all of it after the head.
    data: usize,
}

impl ChunkReader {
    fn feed(&mut self, mut frame: &[u8], dst: &mut [u8]) -> Result<(), String> {
        while !frame.is_empty() {
            if self.left > 0 {
                let n = self.left.min(frame.len());
                dst[self.at..self.at + n].copy_from_slice(&frame[..n]);
                self.at += n;
                self.left -= n;
                self.got += n as u64;
                frame = &frame[n..];
                continue;
            }
            let had = self.head.len();
            let take = (MAX_HEAD - had).min(frame.len());
            self.head.extend_from_slice(&frame[..take]);
            let Some(h) = parse_head(&self.head)? else {
                if self.head.len() == MAX_HEAD {
                    return Err("a chunk header longer than any".into());
                }
                frame = &frame[take..];
                continue;
            };
            let size = dst.len() as u64;
            let end = h.offset.checked_add(h.data as u64);
            if h.total != size || h.offset != self.got || end.is_none_or(|e| e > size) {
                return Err(format!(
                    "a chunk {}+{} of {} bytes after {} bytes",
                    h.offset, h.data, h.total, self.got
                ));
            }
            // The head needed more than `had` bytes, so it ends in this frame.
            frame = &frame[h.len - had..];
            self.head.clear();
            self.at = h.offset as usize;
            self.left = h.data;
        }
        Ok(())
    }

    fn finish(&self, size: u64) -> Result<(), String> {
        if self.left > 0 || !self.head.is_empty() || self.got != size {
            return Err(format!(
                "the sender stopped after {} of {size} bytes",
                self.got
            ));
        }
        Ok(())
    }
}

/// The head of a gRPC-framed `Chunk`, once `b` holds all of it.
fn parse_head(b: &[u8]) -> Result<Option<Head>, String> {
    let Some(prefix) = b.get(..5) else {
        return Ok(None);
    };
    if prefix[0] != 0 {
        return Err("a compressed chunk (nodes do not compress)".into());
    }
    let msg = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let (mut offset, mut total) = (0, 0);
    let mut p = 5;
    loop {
        let read = p - 5;
        if read == msg {
            // No data field: an empty chunk, as prost writes it.
            return Ok(Some(Head {
                len: p,
                offset,
                total,
                data: 0,
            }));
        }
        if read > msg {
            return Err("a chunk whose fields overrun its message".into());
        }
        let Some((tag, n)) = varint(&b[p..])? else {
            return Ok(None);
        };
        let Some((v, m)) = varint(&b[p + n..])? else {
            return Ok(None);
        };
        p += n + m;
        match u8::try_from(tag) {
            Ok(OFFSET_TAG) => offset = v,
            Ok(TOTAL_TAG) => total = v,
            Ok(DATA_TAG) => {
                let data = usize::try_from(v).unwrap_or(usize::MAX);
                if (p - 5).checked_add(data) != Some(msg) {
                    return Err("a chunk whose data length disagrees with its message".into());
                }
                return Ok(Some(Head {
                    len: p,
                    offset,
                    total,
                    data,
                }));
            }
            _ => return Err(format!("a chunk with an unknown field (tag {tag})")),
        }
    }
}

/// A protobuf varint and its length, once `b` holds all of it.
fn varint(b: &[u8]) -> Result<Option<(u64, usize)>, String> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    if b.len() >= 10 {
        return Err("a malformed varint in a chunk".into());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gRPC-framed messages the holder sends for an object.
    fn stream(obj: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let end = (offset + 7).min(obj.len());
            out.extend_from_slice(&chunk_head(offset as u64, obj.len() as u64, end - offset));
            out.extend_from_slice(&obj[offset..end]);
            offset = end;
            if offset >= obj.len() {
                return out;
            }
        }
    }

    /// Feeds `wire` cut into pieces of `cut` bytes.
    fn read(wire: &[u8], size: usize, cut: usize) -> Result<Vec<u8>, String> {
        let mut dst = vec![0u8; size];
        let mut r = ChunkReader::default();
        for piece in wire.chunks(cut.max(1)) {
            r.feed(piece, &mut dst)?;
        }
        r.finish(size as u64)?;
        Ok(dst)
    }

    #[test]
    fn chunks_cut_anywhere_land_in_place() {
        let obj: Vec<u8> = (0..50u8).collect();
        let wire = stream(&obj);
        for cut in 1..=wire.len() {
            assert_eq!(read(&wire, obj.len(), cut).unwrap(), obj, "cut {cut}");
        }
    }

    #[test]
    fn an_empty_object_is_one_empty_chunk() {
        assert_eq!(read(&stream(&[]), 0, 3).unwrap(), Vec::<u8>::new());
        // prost leaves out default fields: an empty chunk is its prefix.
        assert_eq!(read(&[0, 0, 0, 0, 0], 0, 5).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn prost_encoded_chunks_read_the_same() {
        let obj = vec![9u8; 30];
        let mut wire = Vec::new();
        for (offset, part) in [(0usize, &obj[..10]), (10, &obj[10..])] {
            let m = cpb::Chunk {
                offset: offset as u64,
                total: 30,
                data: Bytes::copy_from_slice(part),
            };
            wire.push(0);
            wire.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
            m.encode(&mut wire).unwrap();
        }
        assert_eq!(read(&wire, 30, 4).unwrap(), obj);
    }

    #[test]
    fn malformed_streams_are_refused() {
        let obj = vec![1u8; 20];
        let good = stream(&obj);
        let mut compressed = good.clone();
        compressed[0] = 1;
        let mut wrong_total = Vec::new();
        wrong_total.extend_from_slice(&chunk_head(0, 21, 20));
        wrong_total.extend_from_slice(&obj);
        let mut gap = Vec::new();
        gap.extend_from_slice(&chunk_head(7, 20, 13));
        gap.extend_from_slice(&obj[7..]);
        let mut unknown = vec![0, 0, 0, 0, 2, 0x28, 1];
        unknown.extend_from_slice(&good);
        let mut long_varint = vec![0, 0, 0, 0, 12, OFFSET_TAG];
        long_varint.extend_from_slice(&[0xff; 11]);
        // A data length past the message's end.
        let mut overrun = chunk_head(0, 20, 20).to_vec();
        overrun[4] -= 1;
        overrun.extend_from_slice(&obj);
        for (what, wire) in [
            ("compressed", compressed),
            ("wrong total", wrong_total),
            ("gap", gap),
            ("unknown field", unknown),
            ("long varint", long_varint),
            ("overrun", overrun),
        ] {
            assert!(read(&wire, 20, 5).is_err(), "{what} was taken");
        }
        // Cut short: every prefix but the whole is refused at the end.
        for end in 0..good.len() {
            assert!(read(&good[..end], 20, 3).is_err(), "{end} bytes were taken");
        }
    }

    #[test]
    fn pull_requests_are_checked() {
        let id = ObjectId::from_slice(&[3u8; 20]).unwrap();
        let b = encode_request(id);
        assert_eq!(parse_request(&b).unwrap(), id);
        let code = |b: &[u8]| parse_request(b).unwrap_err().code();
        assert_eq!(code(&b[..3]), Code::InvalidArgument);
        assert_eq!(code(&b[..b.len() - 1]), Code::InvalidArgument);
        let mut compressed = b.to_vec();
        compressed[0] = 1;
        assert_eq!(code(&compressed), Code::InvalidArgument);
        assert_eq!(code(&[0, 0, 0, 0, 2, 0x0a, 0]), Code::InvalidArgument);
    }
}
