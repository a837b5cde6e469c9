//! The client end of the node socket, shared by all threads of the process.
//!
//! Each request that wants a reply carries a sequence number, which the node
//! echoes, so several threads can wait on one connection at once: a `get`
//! waiting for a slow task must not hold up (or deadlock) another thread's
//! calls. Whichever waiting thread finds nobody reading becomes the reader
//! and reads until its own reply comes, filing the others' for their threads.
//! A lone thread so reads its own reply itself, with no handoff.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arca_proto::node as pb;
use arca_store::wire::{Conn, MAX_REPLY_FRAME, RecvError, Side};
use foldhash::{HashMap, HashMapExt};
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::spin::Spin;
use crate::error::{Error, Result};

/// A connection to the node, multiplexed by request sequence numbers.
#[derive(Debug)]
pub(crate) struct NodeConn {
    /// Held only while a request is written.
    writer: Mutex<Conn>,
    /// References dropped while another thread was writing, sent by that
    /// thread when it is done (see [`NodeConn::release`]).
    releases: Mutex<Vec<bytes::Bytes>>,
    next_seq: AtomicU64,
    inbox: Mutex<Inbox>,
    /// Signalled when a reply is filed, the read half is put back (another
    /// waiter may take over reading) or the connection breaks.
    changed: Condvar,
    /// Whether a thread waiting for its own request's reply pays to spin
    /// (a sync task's result comes within tens of µs). A worker waiting for
    /// its next task never spins: on 2 cores a spinning worker takes the
    /// core the node and the driver need (async tasks 41k -> 30k/s).
    reply_spin: Spin,
}

#[derive(Debug)]
struct Inbox {
    /// The read half, while no thread is reading.
    reader: Option<Box<Conn>>,
    /// Replies read by another thread than the one waiting for them, by seq.
    replies: HashMap<u64, pb::reply::Kind>,
    /// Tasks (and task cancellations) the node sent this worker.
    executes: VecDeque<pb::reply::Kind>,
    /// Set once nothing more can be read: every waiter fails with it.
    broken: Option<Broken>,
}

/// What a thread waits for.
#[derive(Debug, Clone, Copy)]
enum Want {
    Reply(u64),
    Execute,
    /// Nothing: every message read is filed.
    Nothing,
}

/// Why the connection is unusable, kept to give every waiter the same error.
#[derive(Debug)]
struct Broken {
    make: fn(String) -> Error,
    message: String,
}

impl Broken {
    fn error(&self) -> Error {
        (self.make)(self.message.clone())
    }
}

impl Inbox {
    fn take(&mut self, want: Want) -> Option<pb::reply::Kind> {
        match want {
            Want::Reply(seq) if !self.replies.is_empty() => self.replies.remove(&seq),
            Want::Reply(_) | Want::Nothing => None,
            Want::Execute => self.executes.pop_front(),
        }
    }
}

impl NodeConn {
    /// Its reads never poll before sleeping (unlike the store's, see
    /// `arca_store::wire`): the node's messages come further apart than a
    /// spin lasts, so on 2 cores polling only took the core that a task, or
    /// the node, needed (Rust's multi-client async task rate rose from about
    /// 21,000 to 34,000/s without it, and no sync rate fell).
    pub(crate) fn connect(socket: &Path, hello: pb::Hello) -> Result<(Self, pb::HelloReply)> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            Error::Node(format!(
                "cannot connect to the node at {}: {e}; start one with `arca start --head`, or call arca::init() without an address to run an embedded node",
                socket.display()
            ))
        })?;
        let write_half = stream.try_clone()?;
        let c = NodeConn {
            writer: Mutex::new(Conn::new(
                write_half,
                Side::Client,
                std::time::Duration::ZERO,
            )),
            releases: Mutex::new(Vec::new()),
            next_seq: AtomicU64::new(1),
            inbox: Mutex::new(Inbox {
                reader: Some(Box::new(Conn::new(
                    stream,
                    Side::Client,
                    std::time::Duration::ZERO,
                ))),
                replies: HashMap::new(),
                executes: VecDeque::new(),
                broken: None,
            }),
            changed: Condvar::new(),
            reply_spin: Spin::default(),
        };
        match c.call(pb::request::Kind::Hello(hello))? {
            pb::reply::Kind::Hello(h) => Ok((c, h)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a one-way request.
    pub(crate) fn send(&self, kind: pb::request::Kind) -> Result<()> {
        self.write(pb::Request {
            kind: Some(kind),
            seq: 0,
        })
    }

    /// Writes one request, after the releases queued before it: a release
    /// must reach the node before a later message that holds the same object
    /// again (an `AddRefs` of a ref received anew), or the node would drop
    /// a hold the process has.
    fn write(&self, req: pb::Request) -> Result<()> {
        let sent = {
            let mut w = self.writer.lock();
            Self::send_releases(&mut w, &self.releases);
            w.send_or(&req, |stream| self.stalled(stream))
        };
        self.flush_releases();
        sent?;
        Ok(())
    }

    /// The node's socket is full: waits until it takes more, reading what
    /// the node sends meanwhile (unless another thread reads it). The node
    /// writes a worker tasks it did not ask for, and may be blocked doing
    /// so: a worker that stopped reading while it reports results would
    /// wait for the node as the node waits for it (an async actor's one
    /// thread both reads its calls and reports them).
    fn stalled(&self, stream: &UnixStream) -> std::io::Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut inbox = self.inbox.lock();
        let Some(reader) = inbox.reader.take() else {
            // The reading thread reads what comes; wait for room alone.
            drop(inbox);
            let mut set = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
            return match poll(&mut set, PollTimeout::from(STALLED_POLL_MS)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
                Err(e) => Err(e.into()),
            };
        };
        self.read_with(&mut inbox, reader, |r| {
            let mut set = [PollFd::new(
                stream.as_fd(),
                PollFlags::POLLOUT | PollFlags::POLLIN,
            )];
            match poll(&mut set, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(Broken {
                        make: Error::Disconnected,
                        message: format!("poll: {e}"),
                    });
                }
            }
            while let Some(reply) = r.try_recv(MAX_REPLY_FRAME).map_err(broken)? {
                self.file(reply, Want::Nothing)?;
            }
            Ok(())
        })
        .map_err(std::io::Error::other)
    }

    /// Queues the release of this process's reference to `id` (the caller
    /// does it while holding its reference-count lock, so that the release
    /// is queued before any later hold of the same id is announced); returns
    /// how many are queued. Never waits for the writer: safe in a
    /// destructor (Python's `__del__` runs one with the GIL held).
    pub(crate) fn queue_release(&self, id: bytes::Bytes) -> usize {
        let mut q = self.releases.lock();
        q.push(id);
        q.len()
    }

    /// Sends the queued releases if the writer is free. A release queued
    /// while another thread holds the writer is sent by that thread, which
    /// calls this after unlocking.
    pub(crate) fn flush_releases(&self) {
        if self.releases.lock().is_empty() {
            return;
        }
        if let Some(mut w) = self.writer.try_lock() {
            Self::send_releases(&mut w, &self.releases);
        }
    }

    fn send_releases(w: &mut Conn, releases: &Mutex<Vec<bytes::Bytes>>) {
        let ids = std::mem::take(&mut *releases.lock());
        if !ids.is_empty() {
            let _ = w.send(&pb::Request {
                kind: Some(pb::request::Kind::RemoveRefs(pb::Refs { ids })),
                seq: 0,
            });
        }
    }

    /// Sends a request and waits for its reply; an `Error` reply becomes `Err`.
    pub(crate) fn call(&self, kind: pb::request::Kind) -> Result<pb::reply::Kind> {
        match self.request(kind)? {
            pb::reply::Kind::Error(e) => Err(Error::Node(e.message)),
            other => Ok(other),
        }
    }

    /// Sends a request and waits for its reply, `Error` replies included.
    pub(crate) fn request(&self, kind: pb::request::Kind) -> Result<pb::reply::Kind> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.write(pb::Request {
            kind: Some(kind),
            seq,
        })?;
        self.wait_for(Want::Reply(seq))
    }

    /// Waits for the node's next `Execute` or `CancelTask` (on a worker).
    pub(crate) fn next_execute(&self) -> Result<pb::reply::Kind> {
        self.wait_for(Want::Execute)
    }

    fn wait_for(&self, want: Want) -> Result<pb::reply::Kind> {
        let mut inbox = self.inbox.lock();
        loop {
            if let Some(r) = inbox.take(want) {
                return Ok(r);
            }
            if let Some(b) = &inbox.broken {
                return Err(b.error());
            }
            let Some(reader) = inbox.reader.take() else {
                self.changed.wait(&mut inbox);
                continue;
            };
            return self.read_with(&mut inbox, reader, |r| self.read_until(r, want));
        }
    }

    /// Runs `read` on the read half, taken from the inbox, with the inbox
    /// unlocked; then gives the half back and wakes the other waiters (they
    /// need a new reader; a no-op if there are none). A read that breaks
    /// the connection breaks it for every waiter.
    fn read_with<T>(
        &self,
        inbox: &mut MutexGuard<'_, Inbox>,
        mut reader: Box<Conn>,
        read: impl FnOnce(&mut Conn) -> std::result::Result<T, Broken>,
    ) -> Result<T> {
        let got = MutexGuard::unlocked(inbox, || read(&mut reader));
        inbox.reader = Some(reader);
        self.changed.notify_all();
        got.map_err(|b| {
            let e = b.error();
            inbox.broken = Some(b);
            e
        })
    }

    /// Reads replies until the one wanted, filing the others.
    fn read_until(
        &self,
        reader: &mut Conn,
        want: Want,
    ) -> std::result::Result<pb::reply::Kind, Broken> {
        loop {
            if matches!(want, Want::Reply(_)) && !reader.has_frame() {
                // Whether it caught the reply or not, `recv` reads it next.
                let _ = self.reply_spin.until_readable(reader.stream().as_fd());
            }
            let reply: pb::Reply = reader.recv(MAX_REPLY_FRAME).map_err(broken)?;
            if let Some(kind) = self.file(reply, want)? {
                return Ok(kind);
            }
        }
    }

    /// The node's next `Execute` or `CancelTask` if one has arrived, without
    /// waiting (`None` also while another thread reads the connection).
    pub(crate) fn try_next_execute(&self) -> Result<Option<pb::reply::Kind>> {
        let mut inbox = self.inbox.lock();
        if let Some(k) = inbox.take(Want::Execute) {
            return Ok(Some(k));
        }
        if let Some(b) = &inbox.broken {
            return Err(b.error());
        }
        let Some(reader) = inbox.reader.take() else {
            return Ok(None);
        };
        self.read_with(&mut inbox, reader, |reader| {
            while let Some(reply) = reader.try_recv(MAX_REPLY_FRAME).map_err(broken)? {
                if let Some(kind) = self.file(reply, Want::Execute)? {
                    return Ok(Some(kind));
                }
            }
            Ok(None)
        })
    }

    /// Waits for the node's next `Execute` or `CancelTask`, or for one of
    /// `fds` to be readable, up to `timeout` (`None`: no limit): the node's
    /// message if one came, and which of `fds` are readable. An actor's
    /// worker waits so for its direct callers too (`direct`), spinning first
    /// while its spins catch calls (`spin`). While another
    /// thread reads the node's messages, it looks at `fds` alone, for at
    /// most [`OTHER_READER_POLL`], and its caller asks again.
    pub(crate) fn poll_execute(
        &self,
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
        spin: Option<&Spin>,
    ) -> Result<(Option<pb::reply::Kind>, Vec<bool>)> {
        let mut inbox = self.inbox.lock();
        if let Some(k) = inbox.take(Want::Execute) {
            return Ok((Some(k), vec![false; fds.len()]));
        }
        if let Some(b) = &inbox.broken {
            return Err(b.error());
        }
        let Some(reader) = inbox.reader.take() else {
            drop(inbox);
            let t = timeout.map_or(OTHER_READER_POLL, |t| t.min(OTHER_READER_POLL));
            let (_, ready) = poll_readable(None, fds, Some(t), spin)?;
            return Ok((None, ready));
        };
        self.read_with(&mut inbox, reader, |r| {
            // What is buffered already would not wake the poll.
            while let Some(reply) = r.try_recv(MAX_REPLY_FRAME).map_err(broken)? {
                if let Some(kind) = self.file(reply, Want::Execute)? {
                    return Ok((Some(kind), vec![false; fds.len()]));
                }
            }
            let (node, ready) = poll_readable(Some(r.stream().as_fd()), fds, timeout, spin)
                .map_err(|e| Broken {
                    make: Error::Disconnected,
                    message: format!("poll: {e}"),
                })?;
            if !node {
                return Ok((None, ready));
            }
            // Whole frames: the node writes each batch at once.
            let mut next = Some(r.recv(MAX_REPLY_FRAME).map_err(broken)?);
            while let Some(reply) = next {
                if let Some(kind) = self.file(reply, Want::Execute)? {
                    return Ok((Some(kind), ready));
                }
                next = r.try_recv(MAX_REPLY_FRAME).map_err(broken)?;
            }
            Ok((None, ready))
        })
    }

    /// Reads what has arrived, without waiting, and takes the task
    /// cancellations among the node's messages to this worker; its
    /// `Execute`s stay queued, in order. A worker whose thread runs a task
    /// calls this to learn of a cancel the node sent meanwhile.
    pub(crate) fn take_cancels(&self) -> Result<Vec<pb::CancelTask>> {
        let mut inbox = self.inbox.lock();
        if let Some(reader) = inbox.reader.take() {
            self.read_with(&mut inbox, reader, |reader| {
                while let Some(reply) = reader.try_recv(MAX_REPLY_FRAME).map_err(broken)? {
                    self.file(reply, Want::Nothing)?;
                }
                Ok(())
            })?;
        }
        let mut cancels = Vec::new();
        inbox.executes.retain(|k| match k {
            pb::reply::Kind::CancelTask(c) => {
                cancels.push(c.clone());
                false
            }
            _ => true,
        });
        Ok(cancels)
    }

    /// Hands `reply` to the reading thread if it is what that thread wants,
    /// or files it for the thread that waits for it.
    fn file(
        &self,
        reply: pb::Reply,
        want: Want,
    ) -> std::result::Result<Option<pb::reply::Kind>, Broken> {
        if !reply.finished.is_empty()
            && let Some(hook) = FINISHED.get()
        {
            hook(&reply.finished);
        }
        let Some(kind) = reply.kind else {
            // The node never sends one; its waiter would hang, so give up.
            return Err(Broken {
                make: Error::Protocol,
                message: "empty reply from the node".into(),
            });
        };
        match (reply.seq, kind, want) {
            (0, k @ (pb::reply::Kind::Execute(_) | pb::reply::Kind::CancelTask(_)), w) => {
                if let Want::Execute = w {
                    return Ok(Some(k));
                }
                let cancel = matches!(k, pb::reply::Kind::CancelTask(_));
                self.inbox.lock().executes.push_back(k);
                self.changed.notify_all();
                if cancel && let Some(hook) = CANCEL_FILED.get() {
                    hook();
                }
            }
            (seq, kind, Want::Reply(w)) if seq == w => return Ok(Some(kind)),
            // The node could not read a request, or refused a one-way
            // one, and closes the connection.
            (0, pb::reply::Kind::Error(e), _) => {
                return Err(Broken {
                    make: Error::Node,
                    message: e.message,
                });
            }
            (0, other, _) => {
                tracing::debug!("ignoring {} from the node", unexpected(&other));
            }
            (seq, kind, _) => {
                self.inbox.lock().replies.insert(seq, kind);
                self.changed.notify_all();
            }
        }
        Ok(None)
    }
}

/// How long a stalled write waits for room at a time while another thread
/// reads the node's messages ([`NodeConn::stalled`]).
const STALLED_POLL_MS: u16 = 5;

/// How long [`NodeConn::poll_execute`] looks at other fds alone while
/// another thread reads the node's messages (and may file a task).
const OTHER_READER_POLL: Duration = Duration::from_millis(5);

/// Waits until `first` or one of `fds` is readable (or hung up), up to
/// `timeout`, spinning first if `spin` says it pays; which are.
/// Interrupted by a signal, it returns none ready.
pub(crate) fn poll_readable(
    first: Option<BorrowedFd<'_>>,
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
    spin: Option<&Spin>,
) -> std::io::Result<(bool, Vec<bool>)> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let flags = PollFlags::POLLIN;
    let mut set: Vec<PollFd<'_>> = first
        .iter()
        .chain(fds)
        .map(|fd| PollFd::new(*fd, flags))
        .collect();
    let t = match timeout {
        None => PollTimeout::NONE,
        // Rounded up: a timeout of less than 1 ms must still wait.
        Some(t) => PollTimeout::try_from(t.as_micros().div_ceil(1000)).unwrap_or(PollTimeout::MAX),
    };
    let caught = match spin {
        Some(spin) if t != PollTimeout::ZERO => spin.poll(&mut set)?,
        _ => false,
    };
    if !caught {
        match poll(&mut set, t) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut ready = set
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()));
    let first = if first.is_some() {
        ready.next().unwrap_or(false)
    } else {
        false
    };
    Ok((first, ready.collect()))
}

/// Called after a thread filed a task cancellation it did not wait for
/// ([`set_cancel_filed_hook`]).
static CANCEL_FILED: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Has `hook` called each time a thread reading the node's messages for
/// something else files a cancel for this worker, once `take_cancels` can
/// see it. A Python worker's main thread may be running the task: the hook
/// signals it to look (it found no cancel if it looked before this).
pub(crate) fn set_cancel_filed_hook(hook: fn()) {
    let _ = CANCEL_FILED.set(hook);
}

/// Called with each reply's `finished` ids ([`set_finished_hook`]).
static FINISHED: std::sync::OnceLock<fn(&[u8])> = std::sync::OnceLock::new();

/// Has `hook` called with the results the node says finished (20-byte ids
/// back to back), before the reply that carries them is filed.
pub(crate) fn set_finished_hook(hook: fn(&[u8])) {
    let _ = FINISHED.set(hook);
}

/// Why a read ended the connection.
fn broken(e: RecvError) -> Broken {
    match e {
        RecvError::Closed | RecvError::Truncated => Broken {
            make: Error::Disconnected,
            message: "the node closed the connection (it stopped or crashed)".into(),
        },
        RecvError::Io(e) => Broken {
            make: Error::Disconnected,
            message: e.to_string(),
        },
        other => Broken {
            make: Error::Protocol,
            message: other.to_string(),
        },
    }
}

pub(crate) fn unexpected(reply: &pb::reply::Kind) -> Error {
    let name = match reply {
        pb::reply::Kind::Hello(_) => "Hello",
        pb::reply::Kind::Get(_) => "Get",
        pb::reply::Kind::Wait(_) => "Wait",
        pb::reply::Kind::Status(_) => "Status",
        pb::reply::Kind::Memory(_) => "Memory",
        pb::reply::Kind::Execute(_) => "Execute",
        pb::reply::Kind::Ok(_) => "Ok",
        pb::reply::Kind::Error(_) => "Error",
        pb::reply::Kind::CancelTask(_) => "CancelTask",
        pb::reply::Kind::Log(_) => "Log",
        pb::reply::Kind::KvPut(_) => "KvPut",
        pb::reply::Kind::KvGet(_) => "KvGet",
        pb::reply::Kind::DirectActor(_) => "DirectActor",
        pb::reply::Kind::TaskDone(_) => "TaskDone",
    };
    Error::Protocol(format!("unexpected {name} reply from the node"))
}
