//! The store's socket framing, shared by the daemon and the client.
//!
//! A frame is a little-endian `u32` byte length followed by that many bytes of
//! one protobuf message (`arca_proto::store::Request` or `Reply`). The daemon's
//! handshake reply carries the segments' memfds as `SCM_RIGHTS` ancillary data.
//!
//! Receiving spins before it blocks. A blocking round trip between two
//! processes on different cores costs about 56 µs here, nearly all of it the
//! wake-up of the sleeping receiver; polling the socket with `MSG_DONTWAIT` for
//! a few tens of microseconds catches the reply (or the next request) while
//! the receiver is still running, and a round trip then costs a few syscalls.
//! Spinning is bounded in time and in the number of threads of a process that
//! may spin at once (one fewer than the cores), so an idle or oversubscribed
//! machine falls back to plain blocking reads.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use prost::Message;

/// Protocol version spoken by this build; the handshake rejects any other.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request frame the daemon accepts (inline puts are far smaller;
/// large objects go through create + seal).
pub const MAX_REQUEST_FRAME: usize = 64 << 20;

/// Largest reply frame a client accepts (`list` and `memory` of a store with
/// millions of objects).
pub const MAX_REPLY_FRAME: usize = 1 << 30;

/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 64;

/// How long a receiver polls before it blocks, by default.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

const READ_CHUNK: usize = 64 << 10;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame (truncated frame)")]
    Truncated,
    /// The length prefix is larger than this side accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame is not a valid message.
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

/// Which end of a connection this is. Each end has its own budget of
/// spinning threads, so an embedded daemon and a client in one process do not
/// starve each other's spinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The store daemon's end.
    Daemon,
    /// A client's end.
    Client,
}

impl Side {
    /// Threads of this process currently spinning in [`Conn::recv`] on this side.
    fn spinners(self) -> &'static AtomicUsize {
        static DAEMON: AtomicUsize = AtomicUsize::new(0);
        static CLIENT: AtomicUsize = AtomicUsize::new(0);
        match self {
            Side::Daemon => &DAEMON,
            Side::Client => &CLIENT,
        }
    }
}

fn spin_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1).max(1))
            .unwrap_or(1)
    })
}

/// One end of a store connection: buffered, framed, with received fds queued.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    wbuf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    spin: Duration,
    side: Side,
    /// The read buffer grew for one large frame; shrink it once that frame is consumed.
    shrink_pending: bool,
}

impl Conn {
    /// Wraps a connected stream; `spin` bounds how long a receive polls
    /// before blocking (zero never polls).
    pub fn new(stream: UnixStream, side: Side, spin: Duration) -> Self {
        Self {
            stream,
            rbuf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            wbuf: Vec::with_capacity(4096),
            fds: VecDeque::new(),
            spin,
            side,
            shrink_pending: false,
        }
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Encodes and sends one frame.
    pub fn send<M: Message>(&mut self, msg: &M) -> io::Result<()> {
        self.send_with_fds(msg, &[])
    }

    /// Encodes one frame to go out with the next [`Conn::send`], so that
    /// one-way messages ride along with a request in a single write.
    pub fn queue<M: Message>(&mut self, msg: &M) -> io::Result<()> {
        encode_frame(msg, &mut self.wbuf)
    }

    /// Sends everything queued, if anything.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.send_queued(&[])
    }

    /// Encodes and sends one frame (after anything queued), attaching `fds`
    /// to the first byte sent.
    pub fn send_with_fds<M: Message>(&mut self, msg: &M, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        encode_frame(msg, &mut self.wbuf)?;
        self.send_queued(fds)
    }

    fn send_queued(&mut self, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let result = self.write_all(fds);
        self.wbuf.clear();
        if self.wbuf.capacity() > 4 * READ_CHUNK {
            self.wbuf.shrink_to(4096);
        }
        result
    }

    fn write_all(&mut self, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut sent = 0;
        while sent < self.wbuf.len() {
            let iov = [IoSlice::new(&self.wbuf[sent..])];
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !raw.is_empty() {
                &rights
            } else {
                &[]
            };
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => sent += n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one frame of at most `max` bytes and decodes it.
    pub fn recv<M: Message + Default>(&mut self, max: usize) -> Result<M, RecvError> {
        let frame = self.recv_frame(max)?;
        Ok(M::decode(frame)?)
    }

    /// Receives the bytes of one frame (without its length prefix).
    pub fn recv_frame(&mut self, max: usize) -> Result<&[u8], RecvError> {
        if self.shrink_pending && self.start == self.end {
            self.rbuf.truncate(READ_CHUNK);
            self.rbuf.shrink_to_fit();
            self.shrink_pending = false;
        }
        let len = loop {
            if let Some(len) = frame_len(&self.rbuf[self.start..self.end]) {
                break len;
            }
            self.fill(self.start == self.end)?;
        };
        if len > max {
            return Err(RecvError::TooLarge { len, max });
        }
        let need = 4 + len;
        if self.rbuf.len() < need {
            // Grow only for this big frame; the buffer shrinks back below.
            self.compact();
            self.rbuf.resize(need, 0);
        } else if self.rbuf.len() - self.start < need {
            self.compact();
        }
        while self.end - self.start < need {
            self.fill(false)?;
        }
        let frame = self.start + 4..self.start + need;
        self.start += need;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // The frame's bytes must stay valid until the next call: shrink then.
            self.shrink_pending = self.rbuf.len() > 4 * READ_CHUNK;
        }
        Ok(&self.rbuf[frame])
    }

    fn compact(&mut self) {
        self.rbuf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// Reads more bytes. `at_boundary` says no partial frame is buffered, so
    /// end of stream is a clean close rather than a truncation.
    fn fill(&mut self, at_boundary: bool) -> Result<(), RecvError> {
        if self.end == self.rbuf.len() {
            self.compact();
            if self.end == self.rbuf.len() {
                self.rbuf.resize(self.rbuf.len() * 2, 0);
            }
        }
        let n = self.read_spinning()?;
        if n == 0 {
            return Err(if at_boundary && self.start == self.end {
                RecvError::Closed
            } else {
                RecvError::Truncated
            });
        }
        self.end += n;
        Ok(())
    }

    fn read_spinning(&mut self) -> io::Result<usize> {
        let spinners = self.side.spinners();
        if !self.spin.is_zero() && spinners.fetch_add(1, Ordering::AcqRel) < spin_limit() {
            let deadline = Instant::now() + self.spin;
            let result = loop {
                match self.read_once(MsgFlags::MSG_DONTWAIT) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            break None;
                        }
                        std::hint::spin_loop();
                    }
                    other => break Some(other),
                }
            };
            spinners.fetch_sub(1, Ordering::AcqRel);
            if let Some(r) = result {
                return r;
            }
        } else if !self.spin.is_zero() {
            spinners.fetch_sub(1, Ordering::AcqRel);
        }
        loop {
            match self.read_once(MsgFlags::empty()) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn read_once(&mut self, flags: MsgFlags) -> io::Result<usize> {
        let fd = self.stream.as_raw_fd();
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut self.rbuf[self.end..])];
        let msg = recvmsg::<()>(
            fd,
            &mut iov,
            Some(&mut cmsg),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let n = msg.bytes;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: the kernel just installed `fd` in this process for
                    // us (SCM_RIGHTS); nothing else owns it.
                    self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Ok(n)
    }

    /// File descriptors received so far, in order.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        self.fds.drain(..).collect()
    }

    /// Whether the peer has hung up (checked without blocking or consuming
    /// data): lets a daemon thread waiting on a condition notice a dead client.
    pub fn peer_hung_up(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        // nix has no name for POLLRDHUP (the peer shut down its side), only the bit.
        let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
        let mut fds = [PollFd::new(self.stream.as_fd(), rdhup)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => false,
            Ok(_) => fds[0]
                .revents()
                .is_some_and(|r| r.intersects(rdhup | PollFlags::POLLHUP | PollFlags::POLLERR)),
            Err(_) => true,
        }
    }
}

/// Appends `msg` as one frame (length prefix + body) to `buf`.
pub fn encode_frame<M: Message>(msg: &M, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = msg.encoded_len();
    let len32 = u32::try_from(len).map_err(|_| {
        io::Error::other(format!("message of {len} bytes is too large for one frame"))
    })?;
    buf.reserve(4 + len);
    buf.extend_from_slice(&len32.to_le_bytes());
    msg.encode(buf).map_err(io::Error::other)?;
    Ok(())
}

/// A frame's body and the bytes after it.
pub type Split<'a> = (&'a [u8], &'a [u8]);

/// Splits one frame off the front of `bytes`: `Ok(Some((body, rest)))`, or
/// `Ok(None)` if more bytes are needed. The decoder the fuzz target exercises.
pub fn split_frame(bytes: &[u8], max: usize) -> Result<Option<Split<'_>>, RecvError> {
    let Some(len) = frame_len(bytes) else {
        return Ok(None);
    };
    if len > max {
        return Err(RecvError::TooLarge { len, max });
    }
    if bytes.len() - 4 < len {
        return Ok(None);
    }
    Ok(Some((&bytes[4..4 + len], &bytes[4 + len..])))
}

/// The length prefix at the front of `bytes`, if all four bytes are there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(prefix) as usize)
}
