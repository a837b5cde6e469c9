//! One client connection: the handshake, then requests until it closes.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arca_proto::store as pb;
use arca_proto::store::reply::Kind as R;
use arca_proto::store::request::Kind as Q;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::Shared;
use super::spill::restore;
use crate::error::{CreateError, StateError};
use crate::id::ObjectId;
use crate::table::{ClientId, Location, RestoreStep};
use crate::wire::{Conn, MAX_REQUEST_FRAME, PROTOCOL_VERSION, RecvError, Side};

/// What handling one request produced. Lives on the stack for one request;
/// boxing the large reply variant would allocate on every reply instead.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Reply(R),
    /// One-way request: nothing to send.
    Silent,
    /// The client broke the protocol: send this error, then drop the connection.
    Fatal(String),
}

fn error(code: pb::ErrorCode, message: impl Into<String>) -> R {
    R::Error(pb::Error {
        code: code as i32,
        message: message.into(),
    })
}

fn create_error(e: CreateError) -> R {
    let code = match e {
        CreateError::Exists(_) | CreateError::Deleting(_) => pb::ErrorCode::ObjectExists,
        CreateError::TooLarge { .. } => pb::ErrorCode::ObjectTooLarge,
        CreateError::Full(_) => pb::ErrorCode::ObjectStoreFull,
        CreateError::UnknownClient(_) => pb::ErrorCode::InvalidState,
    };
    error(code, e.to_string())
}

fn state_error(e: StateError) -> R {
    let code = match e {
        StateError::NotFound(_) => pb::ErrorCode::ObjectNotFound,
        StateError::NotCreating(_) => pb::ErrorCode::InvalidState,
    };
    error(code, e.to_string())
}

fn send(conn: &mut Conn, kind: R) -> bool {
    conn.send(&pb::Reply { kind: Some(kind) }).is_ok()
}

/// Serves one connection until it closes, then releases everything it held.
pub(super) fn serve(shared: &Shared, stream: UnixStream) {
    let peer_pid = getsockopt(&stream, PeerCredentials)
        .map(|c| c.pid() as u32)
        .ok();
    let mut conn = Conn::new(stream, Side::Daemon, shared.config.spin);
    let Some(client) = handshake(shared, &mut conn, peer_pid) else {
        return;
    };
    loop {
        let req = match conn.recv::<pb::Request>(MAX_REQUEST_FRAME) {
            Ok(req) => req,
            Err(RecvError::Closed) => break,
            Err(RecvError::Io(e)) => {
                tracing::debug!(client, "connection error: {e}");
                break;
            }
            Err(e) => {
                tracing::warn!(client, pid = peer_pid, "dropping client: {e}");
                send(
                    &mut conn,
                    error(pb::ErrorCode::InvalidRequest, e.to_string()),
                );
                break;
            }
        };
        match handle(shared, &conn, client, req) {
            Outcome::Reply(r) => {
                if !send(&mut conn, r) {
                    break;
                }
            }
            Outcome::Silent => {}
            Outcome::Fatal(msg) => {
                tracing::warn!(client, pid = peer_pid, "dropping client: {msg}");
                send(&mut conn, error(pb::ErrorCode::InvalidRequest, msg));
                break;
            }
        }
        if shared.shutdown.load(Ordering::Relaxed) {
            break;
        }
    }
    let mut t = shared.table.lock();
    t.disconnect(client);
    shared.done(t);
    tracing::debug!(client, pid = peer_pid, "client disconnected");
}

fn handshake(shared: &Shared, conn: &mut Conn, peer_pid: Option<u32>) -> Option<ClientId> {
    let hello = match conn.recv::<pb::Request>(MAX_REQUEST_FRAME) {
        Ok(pb::Request {
            kind: Some(Q::Hello(h)),
        }) => h,
        Ok(_) => {
            send(
                conn,
                error(
                    pb::ErrorCode::InvalidRequest,
                    "the first message must be Hello",
                ),
            );
            return None;
        }
        Err(RecvError::Closed) => return None,
        Err(e) => {
            send(conn, error(pb::ErrorCode::InvalidRequest, e.to_string()));
            return None;
        }
    };
    if hello.version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} is not supported by this store (version {PROTOCOL_VERSION}); \
             use a client and daemon from the same Arca release",
            hello.version
        );
        send(conn, error(pb::ErrorCode::VersionMismatch, msg));
        return None;
    }
    let pid = peer_pid.unwrap_or(hello.pid);
    let client = shared.table.lock().connect(pid, hello.name);
    let reply = pb::Reply {
        kind: Some(R::Hello(pb::HelloReply {
            version: PROTOCOL_VERSION,
            client_id: client,
            capacity: shared.capacity,
            segments: shared
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| pb::SegmentInfo {
                    index: i as u32,
                    size: s.size() as u64,
                    prefaulted: s.prefaulted(),
                })
                .collect(),
        })),
    };
    let fds: Vec<BorrowedFd<'_>> = shared.segments.iter().map(|s| s.fd()).collect();
    if conn.send_with_fds(&reply, &fds).is_err() {
        let mut t = shared.table.lock();
        t.disconnect(client);
        shared.done(t);
        return None;
    }
    tracing::debug!(client, pid, "client connected");
    Some(client)
}

fn parse_id(bytes: &[u8]) -> Result<ObjectId, String> {
    ObjectId::from_slice(bytes).map_err(|e| e.to_string())
}

fn parse_ids(list: &[bytes::Bytes]) -> Result<Vec<ObjectId>, String> {
    list.iter().map(|b| parse_id(b)).collect()
}

fn handle(shared: &Shared, conn: &Conn, client: ClientId, req: pb::Request) -> Outcome {
    match handle_inner(shared, conn, client, req) {
        Ok(o) => o,
        Err(msg) => Outcome::Fatal(msg),
    }
}

fn handle_inner(
    shared: &Shared,
    conn: &Conn,
    client: ClientId,
    req: pb::Request,
) -> Result<Outcome, String> {
    let Some(kind) = req.kind else {
        return Err("empty request".into());
    };
    let reply = match kind {
        Q::Hello(_) => return Err("Hello sent twice".into()),
        Q::Create(c) => {
            let id = parse_id(&c.id)?;
            match create(
                shared,
                &|| conn.peer_hung_up(),
                client,
                id,
                c.data_size,
                &c.metadata,
                c.primary,
            ) {
                Ok(loc) => R::Created(loc.into()),
                Err(e) => create_error(e),
            }
        }
        Q::Put(p) => {
            let id = parse_id(&p.id)?;
            match create(
                shared,
                &|| conn.peer_hung_up(),
                client,
                id,
                p.data.len() as u64,
                &p.metadata,
                p.primary,
            ) {
                Ok(loc) => {
                    write(shared, loc, 0, &p.data);
                    let mut t = shared.table.lock();
                    let sealed = t.seal(client, &id);
                    shared.done(t);
                    match sealed {
                        Ok(()) => R::Ok(pb::Ok {}),
                        Err(e) => state_error(e),
                    }
                }
                Err(e) => create_error(e),
            }
        }
        Q::Seal(s) => {
            let id = parse_id(&s.id)?;
            let mut t = shared.table.lock();
            let r = t.seal(client, &id);
            shared.done(t);
            r.map_or_else(state_error, |()| R::Ok(pb::Ok {}))
        }
        Q::Abort(a) => {
            let id = parse_id(&a.id)?;
            let mut t = shared.table.lock();
            let r = t.abort(client, &id);
            shared.done(t);
            r.map_or_else(state_error, |()| R::Ok(pb::Ok {}))
        }
        Q::Get(g) => {
            let ids = parse_ids(&g.ids)?;
            let timeout = u64::try_from(g.timeout_ms).ok().map(Duration::from_millis);
            match get(shared, &|| conn.peer_hung_up(), client, &ids, timeout) {
                Some(results) => R::Get(pb::GetReply { results }),
                None => return Ok(Outcome::Silent), // the client hung up while waiting
            }
        }
        Q::Release(r) => {
            let ids = parse_ids(&r.ids)?;
            let mut t = shared.table.lock();
            for id in &ids {
                if !t.release(client, id) {
                    return Err(format!("release of {id}, which this client does not hold"));
                }
            }
            shared.done(t);
            return Ok(Outcome::Silent);
        }
        Q::Delete(d) => {
            let ids = parse_ids(&d.ids)?;
            let mut t = shared.table.lock();
            let deleted = ids.iter().map(|id| t.delete(id)).collect();
            shared.done(t);
            R::Delete(pb::DeleteReply { deleted })
        }
        Q::Contains(c) => {
            let id = parse_id(&c.id)?;
            R::Contains(shared.table.lock().contains(&id))
        }
        Q::List(_) => R::List(pb::ListReply {
            objects: shared.table.lock().list(),
        }),
        Q::Memory(_) => R::Memory(shared.table.lock().memory_report()),
    };
    Ok(Outcome::Reply(reply))
}

/// How long a create or restore keeps waiting while spilling makes room.
const SPILL_WAIT: Duration = Duration::from_secs(60);

/// Creates an object, waiting for memory if the store is full: for spilling
/// to make room (while it can), or for other clients to release memory (up to
/// the configured timeout). Then writes its metadata.
pub(super) fn create(
    shared: &Shared,
    hung_up: &dyn Fn() -> bool,
    client: ClientId,
    id: ObjectId,
    data_size: u64,
    metadata: &[u8],
    primary: bool,
) -> Result<Location, CreateError> {
    let start = Instant::now();
    let meta_len = metadata.len() as u64;
    let mut t = shared.table.lock();
    let loc = loop {
        match t.create(client, id, data_size, meta_len, primary) {
            Err(CreateError::Full(msg)) => {
                let spilling = t.can_spill();
                if spilling {
                    t.request_space(data_size.saturating_add(meta_len));
                    shared.spill_cond.notify_all();
                }
                let deadline = start
                    + if spilling {
                        SPILL_WAIT
                    } else {
                        shared.config.create_timeout
                    };
                // A primary copy memory cannot take goes to the fallback file,
                // once spilling cannot make room in time (or at once, if it cannot at all).
                let out_of_time = !spilling || Instant::now() >= deadline;
                if primary
                    && out_of_time
                    && let Some(r) = t.create_fallback(client, id, data_size, meta_len)
                {
                    break r?;
                }
                let peer_gone = parking_lot::MutexGuard::unlocked(&mut t, hung_up);
                if peer_gone || !shared.wait(&mut t, Some(deadline)) {
                    return Err(CreateError::Full(msg));
                }
            }
            other => break other?,
        }
    };
    // `done`, not a bare unlock: the create may have evicted cache copies.
    shared.done(t);
    write(shared, loc, loc.data_size, metadata);
    Ok(loc)
}

/// Copies `bytes` into an object being created, at `at` bytes into its block.
pub(super) fn write(shared: &Shared, loc: Location, at: u64, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let seg = &shared.segments[loc.segment as usize];
    // The table allocated this block inside the segment, so the range is in bounds.
    if let Ok(mut region) = seg.mapping().writable(loc.offset + at, bytes.len() as u64) {
        region.copy_from_slice(bytes);
    }
}

/// Waits until every id is readable or the timeout passes, restoring spilled
/// objects on the way (each connection restores its own, so several gets
/// restore in parallel). Each object is pinned as soon as it is readable, so
/// restoring the next one cannot evict it. Returns what is there, pinned; an
/// unreadable object carries its error. `None` if the client hung up while
/// waiting (its pins go with it).
pub(super) fn get(
    shared: &Shared,
    hung_up: &dyn Fn() -> bool,
    client: ClientId,
    ids: &[ObjectId],
    timeout: Option<Duration>,
) -> Option<Vec<pb::GetResult>> {
    let start = Instant::now();
    let deadline = timeout.map(|t| start + t);
    let past = |d: Option<Instant>| d.is_some_and(|d| Instant::now() >= d);
    let mut results = vec![pb::GetResult::default(); ids.len()];
    let mut done = vec![false; ids.len()];
    let mut asked = false;
    let mut t = shared.table.lock();
    loop {
        let mut job = None;
        for (i, id) in ids.iter().enumerate() {
            if done[i] {
                continue;
            }
            if let Some(loc) = t.get(client, id) {
                results[i].location = Some(loc.into());
                done[i] = true;
                continue;
            }
            if past(deadline) {
                continue; // no new restores once the time is up
            }
            match t.begin_restore(id) {
                RestoreStep::Ready => {} // pinned on the next pass
                RestoreStep::Failed(msg) => {
                    results[i].error = msg;
                    done[i] = true;
                }
                RestoreStep::Missing | RestoreStep::Wait => {}
                RestoreStep::NoSpace
                    if !t.can_spill() && start.elapsed() >= shared.config.create_timeout =>
                {
                    results[i].error = format!(
                        "object {id} is spilled and there is no room to restore it: {}",
                        t.no_room_message(id)
                    );
                    done[i] = true;
                }
                RestoreStep::NoSpace => {
                    shared.spill_cond.notify_all();
                }
                RestoreStep::Start(j) => {
                    job = Some(j);
                    break;
                }
            }
        }
        if let Some(job) = job {
            drop(t);
            let began = Instant::now();
            let result = restore(shared, &job);
            t = shared.table.lock();
            t.finish_restore(&job.id, result, began.elapsed());
            shared.notify(&t);
            // The restored object is pinned on the next pass, under this same lock.
            continue;
        }
        if !asked && !past(deadline) {
            // Once per get: ids the store never heard of may be evicted
            // cache copies, which the node fetches again when told.
            asked = true;
            let missing: Vec<ObjectId> = ids
                .iter()
                .zip(&done)
                .filter(|&(id, &d)| !d && t.absent(id))
                .map(|(id, _)| *id)
                .collect();
            if !missing.is_empty() {
                shared.tell(super::StoreEvent::Missing(missing));
            }
        }
        if done.iter().all(|&d| d) || !shared.wait(&mut t, deadline) {
            break;
        }
        if parking_lot::MutexGuard::unlocked(&mut t, hung_up) {
            return None;
        }
    }
    shared.done(t);
    Some(results)
}
