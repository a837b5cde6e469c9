//! One connection's thread: the handshake, then requests until the peer
//! goes away.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use arca_proto::node as pb;
use arca_proto::store::StoreTotals;
use arca_store::ObjectId;
use arca_store::wire::{Conn, MAX_REQUEST_FRAME, RecvError, Side};
use foldhash::{HashSet, HashSetExt};
use parking_lot::Mutex;

use super::objects::{Hold, Taken};
use super::state::{
    ConnId, ConnState, Job, SocketTransport, State, Transport, WaitKind, WorkerCommand, parse_id,
};
use super::{NODE_PROTOCOL_VERSION, Shared};

use pb::reply::Kind as R;
use pb::request::Kind as Q;

/// How long the reader polls before blocking: not at all. Messages reach a
/// node thread further apart than a spin would last, so spinning only took
/// a core from the workers: on 2 cores, Python's async task rate rose by a
/// tenth without it (20 µs), and no sync rate fell.
const SPIN: Duration = Duration::ZERO;

/// How long a reply may wait for room in a client's socket before the client
/// counts as stuck and is disconnected (see `State::send`).
pub(crate) const WRITE_STALL: Duration = Duration::from_secs(2);

pub(crate) fn serve(shared: &Arc<Shared>, id: ConnId, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    if write_half.set_write_timeout(Some(WRITE_STALL)).is_err() {
        return;
    }
    let writer = Arc::new(SocketTransport(Mutex::new(Conn::new(
        write_half,
        Side::Daemon,
        Duration::ZERO,
    ))));
    let mut reader = Conn::new(stream, Side::Daemon, SPIN);
    let (hello, hello_seq) = match reader.recv::<pb::Request>(MAX_REQUEST_FRAME) {
        Ok(pb::Request {
            kind: Some(Q::Hello(h)),
            seq,
        }) => (h, seq),
        Ok(r) => return refuse(&writer, r.seq, "the first message must be Hello".into()),
        // A probe (`node_running`) connects and hangs up without a word.
        Err(RecvError::Closed) => return,
        Err(e) => return refuse(&writer, 0, format!("bad handshake: {e}")),
    };
    if let Err(msg) = connect(shared, id, hello_seq, &hello, writer.clone()) {
        return refuse(&writer, hello_seq, msg);
    }
    loop {
        let req = match reader.recv::<pb::Request>(MAX_REQUEST_FRAME) {
            Ok(r) => r,
            Err(RecvError::Closed) => break,
            Err(e) => {
                tracing::warn!(conn = id, pid = hello.pid, "dropping client: {e}");
                let mut st = shared.state.lock();
                st.send(
                    id,
                    0,
                    R::Error(pb::Error {
                        message: format!("malformed request: {e}"),
                        timeout: false,
                        missing: Vec::new(),
                    }),
                );
                break;
            }
        };
        let Some(kind) = req.kind else {
            continue;
        };
        if !dispatch(shared, id, req.seq, kind) {
            break;
        }
    }
    disconnect(shared, id);
}

/// Checks a client's `Hello` and registers it, its replies going to
/// `transport` (the Hello's own reply among them).
pub(crate) fn connect(
    shared: &Shared,
    id: ConnId,
    seq: u64,
    hello: &pb::Hello,
    transport: Arc<dyn Transport>,
) -> Result<(), String> {
    if hello.version != NODE_PROTOCOL_VERSION {
        return Err(format!(
            "node protocol version {} is not supported (this node speaks {NODE_PROTOCOL_VERSION}); \
             use the same Arca version for the node and its clients",
            hello.version
        ));
    }
    let role = pb::Role::try_from(hello.role).unwrap_or(pb::Role::Tool);
    register(
        shared,
        &mut shared.state.lock(),
        id,
        seq,
        hello,
        role,
        &transport,
    )?;
    tracing::debug!(conn = id, pid = hello.pid, ?role, "client connected");
    Ok(())
}

/// One request from client `id`: the store's part first, then the
/// scheduler's under its lock. False if the client is to be dropped (it
/// was told why).
pub(crate) fn dispatch(shared: &Shared, id: ConnId, seq: u64, kind: Q) -> bool {
    if let Q::Shutdown(_) = kind {
        shared.state.lock().send(id, seq, R::Ok(pb::Ok {}));
        shared.request_stop();
        return true;
    }
    let before = Before::of(shared, &kind);
    let mut st = shared.state.lock();
    let Err(msg) = handle(shared, &mut st, id, seq, kind, &before) else {
        return true;
    };
    let pid = st.conns.get(&id).map_or(0, |c| c.pid);
    tracing::warn!(conn = id, pid, "dropping client: {msg}");
    if before.refused_gives_back {
        shared.delete_later(&mut st, before.taken.newly_taken());
    }
    st.send(
        id,
        seq,
        R::Error(pb::Error {
            message: msg,
            timeout: false,
            missing: Vec::new(),
        }),
    );
    false
}

/// Client `id` is gone: what it held is let go.
pub(crate) fn disconnect(shared: &Shared, id: ConnId) {
    let mut st = shared.state.lock();
    let pid = st.conns.get(&id).map_or(0, |c| c.pid);
    shared.disconnect(&mut st, id);
    tracing::debug!(conn = id, pid, "client disconnected");
}

fn refuse(writer: &SocketTransport, seq: u64, message: String) {
    tracing::warn!("refusing client: {message}");
    let _ = writer.0.lock().send(&pb::Reply {
        kind: Some(R::Error(pb::Error {
            message,
            timeout: false,
            missing: Vec::new(),
        })),
        seq,
        finished: Default::default(),
    });
}

fn register(
    shared: &Shared,
    st: &mut State,
    id: ConnId,
    seq: u64,
    hello: &pb::Hello,
    role: pb::Role,
    transport: &Arc<dyn Transport>,
) -> Result<(), String> {
    let mut job = None;
    let mut worker = None;
    match role {
        pb::Role::Driver => {
            if hello.worker_command.is_empty() {
                return Err("a driver must say how to start its workers (worker_command)".into());
            }
            st.jobs.insert(
                id,
                Job {
                    command: Arc::new(WorkerCommand::new(hello)),
                    startup_failures: 0,
                    alive: true,
                    logs: None,
                    keys: Vec::new(),
                },
            );
            job = Some(id);
        }
        pb::Role::Worker => {
            let w = st
                .workers
                .get(&hello.worker_id)
                .filter(|w| w.conn.is_none())
                .ok_or_else(|| format!("no worker {} is expected by this node", hello.worker_id))?;
            job = Some(w.job);
            worker = Some(hello.worker_id);
        }
        pb::Role::Tool => {}
        pb::Role::Logs => {
            let j = st
                .jobs
                .get_mut(&hello.job_id)
                .ok_or_else(|| format!("no job {} at this node to stream logs of", hello.job_id))?;
            j.logs = Some(id);
            job = Some(hello.job_id);
        }
    }
    st.conns.insert(
        id,
        ConnState {
            transport: Arc::clone(transport),
            outbox: Arc::new(super::state::Outbox::new(
                Arc::clone(transport),
                id,
                hello.pid,
            )),
            pid: hello.pid,
            role,
            job,
            worker,
            holds: HashSet::new(),
            promised: HashSet::new(),
            waiters: Vec::new(),
            finished: Vec::new(),
        },
    );
    st.send(
        id,
        seq,
        R::Hello(pb::HelloReply {
            store_socket: shared.config.store_socket().display().to_string(),
            client_id: id,
            job_id: job.unwrap_or(0),
            node_name: shared.config.name.clone(),
            cluster_address: shared
                .cluster()
                .map(|c| c.head_address.clone())
                .unwrap_or_default(),
            node_id: shared
                .cluster()
                .map(|c| c.id.to_bytes())
                .unwrap_or_default(),
        }),
    );
    if let Some(w) = worker {
        shared.worker_connected(st, w, id);
    }
    Ok(())
}

fn ids(list: &[bytes::Bytes]) -> Result<Vec<ObjectId>, String> {
    list.iter()
        .map(|b| parse_id(b).ok_or_else(|| format!("malformed object id ({} bytes)", b.len())))
        .collect()
}

/// The store's part of a request, done before the node's lock is taken so
/// that no store call happens under it.
#[derive(Default)]
struct Before {
    totals: Option<StoreTotals>,
    /// The stored objects it reports, taken over by the node.
    taken: Taken,
    /// A refused request gives them back (a task's results; not a put,
    /// which is refused when its object exists already).
    refused_gives_back: bool,
}

impl Before {
    fn of(shared: &Shared, kind: &Q) -> Before {
        let take = |objects: &mut dyn Iterator<Item = &pb::Object>| {
            let ids: Vec<ObjectId> = objects
                .filter(|o| matches!(o.body, Some(pb::object::Body::Stored(_))))
                .filter_map(|o| parse_id(&o.id))
                .collect();
            if ids.is_empty() {
                return Taken::default();
            }
            let found = shared.store().take_over(shared.store_client, &ids);
            Taken(ids.into_iter().zip(found).collect())
        };
        match kind {
            Q::Status(_) => Before {
                totals: Some(shared.store().totals()),
                ..Before::default()
            },
            Q::Put(p) => Before {
                taken: take(&mut p.object.iter()),
                ..Before::default()
            },
            Q::TaskDone(d) => Before {
                taken: take(&mut d.results.iter()),
                refused_gives_back: true,
                ..Before::default()
            },
            Q::Give(g) => Before {
                taken: take(&mut g.object.iter()),
                refused_gives_back: true,
                ..Before::default()
            },
            _ => Before::default(),
        }
    }
}

/// `conn` holds `id` (once, however often it says so).
fn hold_for(shared: &Shared, st: &mut State, conn: ConnId, id: ObjectId) {
    let fresh = st.conns.get_mut(&conn).is_some_and(|c| c.holds.insert(id));
    if fresh && !shared.add_hold(st, &id, Hold::Conn) {
        // Already freed: nothing to hold.
        if let Some(c) = st.conns.get_mut(&conn) {
            c.holds.remove(&id);
        }
    }
}

/// Handles one request; one that waits for objects is answered later (by
/// whichever thread completes them, or the timer), so this never blocks.
fn handle(
    shared: &Shared,
    st: &mut State,
    conn: ConnId,
    seq: u64,
    kind: Q,
    before: &Before,
) -> Result<(), String> {
    match kind {
        Q::Hello(_) => return Err("Hello sent twice".into()),
        Q::Submit(s) => {
            let spec = s.spec.ok_or("Submit without a task")?;
            shared.submit(st, conn, spec)?;
        }
        Q::Put(p) => shared.put(
            st,
            conn,
            p.object.ok_or("Put without an object")?,
            &before.taken,
        )?,
        Q::Get(g) => {
            let ids = ids(&g.ids)?;
            shared.add_waiter(st, conn, seq, ids, WaitKind::Get, g.timeout_ms);
        }
        Q::Wait(w) => {
            let ids = ids(&w.ids)?;
            let num_returns = w.num_returns as usize;
            if num_returns == 0 || num_returns > ids.len() {
                st.send(
                    conn,
                    seq,
                    R::Error(pb::Error {
                        message: format!(
                            "wait: num_returns is {num_returns} but {} refs were given; ask for 1 to {}",
                            ids.len(),
                            ids.len()
                        ),
                        timeout: false, missing: Vec::new(),
                    }),
                );
                return Ok(());
            }
            let kind = WaitKind::Wait {
                num_returns,
                fetch_local: w.fetch_local,
            };
            shared.add_waiter(st, conn, seq, ids, kind, w.timeout_ms);
        }
        Q::AddRefs(r) => {
            for id in ids(&r.ids)? {
                hold_for(shared, st, conn, id);
            }
        }
        Q::RemoveRefs(r) => {
            for id in ids(&r.ids)? {
                if st.conns.get_mut(&conn).is_some_and(|c| c.holds.remove(&id)) {
                    shared.release(st, &id, Hold::Conn);
                }
            }
        }
        Q::Cancel(c) => {
            let id = parse_id(&c.id).ok_or("Cancel: malformed object id")?;
            shared.cancel(st, &id, c.force);
            st.send(conn, seq, R::Ok(pb::Ok {}));
        }
        Q::KillActor(k) => {
            let id = parse_id(&k.actor_id).ok_or("KillActor: malformed actor id")?;
            shared.kill_actor(st, &id, k.no_restart, k.exit);
        }
        Q::TaskDone(d) => shared.task_done(st, conn, d, &before.taken)?,
        Q::Status(_) => {
            let totals = before.totals.clone().unwrap_or_default();
            let reply = shared.status_reply(st, &totals);
            st.send(conn, seq, R::Status(reply));
        }
        Q::Memory(_) => {
            let reply = shared.memory_reply(st);
            st.send(conn, seq, R::Memory(reply));
        }
        Q::Shutdown(_) => {}
        Q::KvPut(p) => {
            if p.job_scoped
                && let Some(j) = st.conns.get(&conn).and_then(|c| c.job)
                && let Some(job) = st.jobs.get_mut(&j)
            {
                job.keys.push(p.key.clone());
            }
            shared.kv_put(st, conn, seq, p);
        }
        Q::KvGet(k) => shared.kv_get(st, conn, seq, k.key),
        Q::KvDelete(k) => shared.kv_delete(st, Some((conn, seq)), k.key),
        Q::Borrow(b) => {
            let id = parse_id(&b.id).ok_or("Borrow: malformed object id")?;
            let lender =
                crate::cluster::NodeId::from_slice(&b.lender).ok_or("Borrow: malformed node id")?;
            shared.borrow_from(st, lender, id);
            // Held for the borrower from now, not from its AddRefs: the
            // lender's answer could come first and free an unheld proxy
            // (a named actor's handle then failed its first call, "no
            // such actor on this node"). The AddRefs that follows is a
            // no-op.
            hold_for(shared, st, conn, id);
        }
        Q::DirectActor(d) => {
            let a = parse_id(&d.actor_id).ok_or("DirectActor: malformed actor id")?;
            if d.gone_worker != 0
                && let Some(w) = st.workers.get_mut(&d.gone_worker)
            {
                // Answered once it has exited (`worker_exited`).
                w.death_waiters.push((conn, seq));
                return Ok(());
            }
            let reply = shared.direct_actor(st, conn, &a);
            st.send(conn, seq, R::DirectActor(reply));
        }
        Q::Promise(p) => {
            let id = parse_id(&p.id).ok_or("Promise: malformed object id")?;
            shared.promise(st, conn, id)?;
        }
        Q::Give(g) => {
            let obj = g.object.ok_or("Give without an object")?;
            shared.give(st, g.client_id, obj, &before.taken)?;
            st.send(conn, seq, R::Ok(pb::Ok {}));
        }
        Q::Detach(d) => {
            let id = parse_id(&d.id).ok_or("Detach: malformed actor id")?;
            if let Some(o) = st.objects.get_mut(&id) {
                o.detached = true;
            }
            if let Some(a) = st.actors.get_mut(&id) {
                a.detached = true;
            }
        }
    }
    Ok(())
}
