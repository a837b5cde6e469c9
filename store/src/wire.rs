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

/// What a write does when the socket is full ([`Conn::send_or`]), instead
/// of blocking in it.
type Stalled<'a> = Option<&'a mut dyn FnMut(&UnixStream) -> io::Result<()>>;

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
        self.send_queued(&[], None)
    }

    /// Encodes and sends one frame (after anything queued), attaching `fds`
    /// to the first byte sent.
    pub fn send_with_fds<M: Message>(&mut self, msg: &M, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        encode_frame(msg, &mut self.wbuf)?;
        self.send_queued(fds, None)
    }

    /// [`Conn::send`] that, whenever the socket is full, calls `stalled`
    /// instead of blocking in the write, and goes on once it returns. A
    /// process whose peer may itself be blocked writing to it reads
    /// meanwhile: neither then waits for the other.
    pub fn send_or<M: Message>(
        &mut self,
        msg: &M,
        mut stalled: impl FnMut(&UnixStream) -> io::Result<()>,
    ) -> io::Result<()> {
        encode_frame(msg, &mut self.wbuf)?;
        self.send_queued(&[], Some(&mut stalled))
    }

    fn send_queued(&mut self, fds: &[BorrowedFd<'_>], stalled: Stalled<'_>) -> io::Result<()> {
        let result = self.write_all(fds, stalled);
        self.wbuf.clear();
        if self.wbuf.capacity() > 4 * READ_CHUNK {
            self.wbuf.shrink_to(4096);
        }
        result
    }

    /// Writes `wbuf`; with `stalled`, never blocks in the write: a full
    /// socket calls it, and the write goes on once it returns.
    fn write_all(&mut self, fds: &[BorrowedFd<'_>], mut stalled: Stalled<'_>) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let flags = if stalled.is_some() {
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::MSG_NOSIGNAL
        };
        let mut sent = 0;
        while sent < self.wbuf.len() {
            let iov = [IoSlice::new(&self.wbuf[sent..])];
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !raw.is_empty() {
                &rights
            } else {
                &[]
            };
            match sendmsg::<()>(self.stream.as_raw_fd(), &iov, cmsgs, flags, None) {
                Ok(n) => sent += n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) if stalled.is_some() => {
                    if let Some(s) = stalled.as_deref_mut() {
                        s(&self.stream)?;
                    }
                }
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

    /// Receives one frame if a whole one has arrived, without blocking:
    /// `Ok(None)` when none has yet. A worker uses it to see a cancel that
    /// waits behind the task it is about to start.
    pub fn try_recv<M: Message + Default>(&mut self, max: usize) -> Result<Option<M>, RecvError> {
        if !self.has_frame() {
            if self.end == self.rbuf.len() {
                self.compact();
            }
            if self.end < self.rbuf.len() {
                match self.read_once(MsgFlags::MSG_DONTWAIT) {
                    Ok(0) if self.start == self.end => return Err(RecvError::Closed),
                    Ok(0) => return Err(RecvError::Truncated),
                    Ok(n) => self.end += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !self.has_frame() {
                return Ok(None);
            }
        }
        self.recv(max).map(Some)
    }

    /// Part of a frame is buffered: its rest is to come (a reader that
    /// polls then waits for it with [`Conn::recv`]).
    pub fn has_partial_frame(&self) -> bool {
        self.start < self.end && !self.has_frame()
    }

    /// A whole frame is buffered: [`Conn::recv`] returns it without reading.
    pub fn has_frame(&self) -> bool {
        let b = &self.rbuf[self.start..self.end];
        frame_len(b).is_some_and(|len| b.len() - 4 >= len)
    }

    /// Receives the bytes of one frame (without its length prefix).
    pub fn recv_frame(&mut self, max: usize) -> Result<&[u8], RecvError> {
        // Give back a buffer that grew for one large frame, once what is still
        // buffered fits the normal size again.
        if self.shrink_pending && self.end - self.start <= READ_CHUNK {
            self.compact();
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
        }
        // The frame's bytes must stay valid until the next call: shrink then.
        self.shrink_pending = self.rbuf.len() > 4 * READ_CHUNK;
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
        // Only POLLIN is asked for: the kernel always adds POLLHUP for a closed
        // peer, and asking for POLLRDHUP (a bit nix has no name for) would make
        // nix's `revents()` give up on the whole result.
        let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => false,
            Ok(_) => fds[0].revents().is_none_or(|r| {
                r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
            }),
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

#[cfg(test)]
mod tests {
    //! The deterministic half of `fuzz/fuzz_targets/frame_decoder.rs`: seeded
    //! valid and mutated streams through [`split_frame`], every frame decoded
    //! as a request, so CI checks the decoder without libFuzzer.

    use super::*;
    use arca_proto::store as pb;
    use arca_proto::store::request::Kind;
    use bytes::Bytes;

    /// splitmix64: a tiny seeded generator, so every run sees the same inputs.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let n = self.below(max + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }

        /// Mostly well-formed 20-byte ids, sometimes not.
        fn id(&mut self) -> Bytes {
            if self.below(8) == 0 {
                return self.bytes(40).into();
            }
            let mut id = [0u8; 20];
            id.iter_mut().for_each(|b| *b = self.next() as u8);
            Bytes::copy_from_slice(&id)
        }

        fn ids(&mut self) -> Vec<Bytes> {
            (0..self.below(5)).map(|_| self.id()).collect()
        }
    }

    fn random_request(rng: &mut Rng) -> pb::Request {
        let kind = match rng.below(12) {
            0 => Kind::Hello(pb::Hello {
                version: rng.next() as u32 % 3,
                pid: rng.next() as u32,
                name: String::from_utf8_lossy(&rng.bytes(16)).into_owned(),
            }),
            1 => Kind::Create(pb::Create {
                id: rng.id(),
                data_size: rng.next() >> rng.below(64),
                metadata: rng.bytes(32).into(),
                primary: rng.below(2) == 0,
            }),
            2 => Kind::Seal(pb::Seal { id: rng.id() }),
            3 => Kind::Abort(pb::Abort { id: rng.id() }),
            4 => Kind::Put(pb::Put {
                id: rng.id(),
                data: rng.bytes(200).into(),
                metadata: rng.bytes(16).into(),
                primary: rng.below(2) == 0,
            }),
            5 => Kind::Get(pb::Get {
                ids: rng.ids(),
                timeout_ms: rng.next() as i64 >> rng.below(64),
            }),
            6 => Kind::Release(pb::Release { ids: rng.ids() }),
            7 => Kind::Delete(pb::Delete { ids: rng.ids() }),
            8 => Kind::Contains(pb::Contains { id: rng.id() }),
            9 => Kind::List(pb::List {}),
            10 => Kind::Memory(pb::Memory {}),
            // An empty request is valid protobuf; the daemon rejects it later.
            _ => return pb::Request { kind: None },
        };
        pb::Request { kind: Some(kind) }
    }

    fn random_stream(rng: &mut Rng) -> (Vec<pb::Request>, Vec<u8>) {
        let requests: Vec<pb::Request> =
            (0..1 + rng.below(6)).map(|_| random_request(rng)).collect();
        let mut bytes = Vec::new();
        for r in &requests {
            encode_frame(r, &mut bytes).unwrap();
        }
        (requests, bytes)
    }

    /// One of the edits a fuzzer makes, applied to `bytes`.
    fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(7) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 if at < bytes.len() => bytes[at] = rng.next() as u8,
            2 => {
                let junk = rng.bytes(8);
                bytes.splice(at..at, junk);
            }
            3 => {
                let end = (at + rng.below(8)).min(bytes.len());
                bytes.drain(at..end);
            }
            4 => bytes.truncate(at),
            5 if at + 4 <= bytes.len() => {
                // A length prefix (or any four bytes) replaced by an interesting length.
                let len: u32 = match rng.below(5) {
                    0 => 0,
                    1 => MAX_REQUEST_FRAME as u32,
                    2 => MAX_REQUEST_FRAME as u32 + 1,
                    3 => u32::MAX,
                    _ => rng.below(64) as u32,
                };
                bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
            }
            _ => {
                let end = (at + rng.below(16)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, copy);
            }
        }
    }

    /// How a stream of frames ended.
    #[derive(Debug, PartialEq)]
    enum End {
        /// Every byte was a whole frame.
        Clean,
        /// The last frame is incomplete.
        NeedMore,
        /// A length prefix over the limit.
        TooLarge,
    }

    /// Splits `bytes` into frames and decodes each as a request, the way the
    /// daemon reads its socket, checking [`split_frame`]'s contract on the way.
    fn split_all(bytes: &[u8]) -> (Vec<Result<pb::Request, prost::DecodeError>>, End) {
        let mut decoded = Vec::new();
        let mut rest = bytes;
        loop {
            match split_frame(rest, MAX_REQUEST_FRAME) {
                Ok(Some((body, tail))) => {
                    let announced = frame_len(rest).unwrap();
                    assert_eq!(body.len(), announced);
                    assert_eq!(4 + body.len() + tail.len(), rest.len());
                    decoded.push(pb::Request::decode(body));
                    rest = tail;
                }
                Ok(None) if rest.is_empty() => return (decoded, End::Clean),
                Ok(None) => {
                    if let Some(len) = frame_len(rest) {
                        assert!(len > rest.len() - 4, "a whole frame was not split off");
                    }
                    return (decoded, End::NeedMore);
                }
                Err(RecvError::TooLarge { len, max }) => {
                    assert!(len > max && max == MAX_REQUEST_FRAME);
                    return (decoded, End::TooLarge);
                }
                Err(e) => panic!("split_frame failed with {e}"),
            }
        }
    }

    #[test]
    fn valid_streams_split_into_the_requests_sent() {
        let mut rng = Rng(1);
        for _ in 0..1000 {
            let (requests, bytes) = random_stream(&mut rng);
            let (decoded, end) = split_all(&bytes);
            assert_eq!(end, End::Clean);
            let decoded: Vec<pb::Request> = decoded.into_iter().map(Result::unwrap).collect();
            assert_eq!(decoded, requests);
            // Cut anywhere: the whole frames before the cut, then "need more"
            // unless the cut falls between frames.
            let cut = rng.below(bytes.len());
            let ends: Vec<usize> = requests
                .iter()
                .scan(0, |at, r| {
                    *at += 4 + r.encoded_len();
                    Some(*at)
                })
                .collect();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            let at_boundary = cut == 0 || ends.contains(&cut);
            let (decoded, end) = split_all(&bytes[..cut]);
            assert_eq!(
                end,
                if at_boundary {
                    End::Clean
                } else {
                    End::NeedMore
                }
            );
            assert_eq!(decoded.len(), whole);
            for (d, r) in decoded.into_iter().zip(&requests) {
                assert_eq!(&d.unwrap(), r);
            }
        }
    }

    #[test]
    fn garbage_and_mutated_frames_never_panic() {
        let mut rng = Rng(2);
        let (mut frames, mut errors) = (0, 0);
        for i in 0..4000 {
            let bytes = if i % 4 == 0 {
                rng.bytes(300)
            } else {
                let (_, mut bytes) = random_stream(&mut rng);
                for _ in 0..1 + rng.below(4) {
                    mutate(&mut rng, &mut bytes);
                }
                bytes
            };
            let (decoded, _) = split_all(&bytes);
            frames += decoded.len();
            errors += decoded.iter().filter(|d| d.is_err()).count();
            // Whatever decoded re-encodes to a request that decodes the same.
            for req in decoded.into_iter().flatten() {
                assert_eq!(pb::Request::decode(req.encode_to_vec().as_slice()), Ok(req));
            }
        }
        // The mutations reach both outcomes of decoding.
        assert!(
            frames > 4000 && errors > 100,
            "{frames} frames, {errors} errors"
        );
    }

    #[test]
    fn length_limit_is_inclusive() {
        let at_limit = (MAX_REQUEST_FRAME as u32).to_le_bytes();
        assert!(matches!(
            split_frame(&at_limit, MAX_REQUEST_FRAME),
            Ok(None)
        ));
        let over = (MAX_REQUEST_FRAME as u32 + 1).to_le_bytes();
        assert!(matches!(
            split_frame(&over, MAX_REQUEST_FRAME),
            Err(RecvError::TooLarge { len, max }) if len == MAX_REQUEST_FRAME + 1 && max == MAX_REQUEST_FRAME
        ));
        assert!(matches!(split_frame(&[0, 0, 0], 0), Ok(None)));
        let (body, rest) = split_frame(&[0, 0, 0, 0, 9], 0).unwrap().unwrap();
        assert_eq!((body, rest), (&[][..], &[9][..]));
    }

    /// [`Conn::recv_frame`] (what the daemon really reads with) and
    /// [`split_frame`] agree on the same bytes, including frames larger than
    /// the read buffer, which make it grow and then shrink back.
    #[test]
    fn conn_reads_the_frames_split_frame_splits() {
        let mut rng = Rng(3);
        let mut requests = Vec::new();
        let mut bytes = Vec::new();
        for i in 0..60 {
            let r = if i % 20 == 7 {
                let data = vec![i as u8; READ_CHUNK * 5 + rng.below(1000)];
                pb::Request {
                    kind: Some(Kind::Put(pb::Put {
                        id: rng.id(),
                        data: data.into(),
                        ..Default::default()
                    })),
                }
            } else {
                random_request(&mut rng)
            };
            encode_frame(&r, &mut bytes).unwrap();
            requests.push(r);
        }
        let (split, end) = split_all(&bytes);
        assert_eq!(end, End::Clean);
        for truncated in [false, true] {
            let (ours, theirs) = UnixStream::pair().unwrap();
            // A watchdog: a lost frame fails the test instead of hanging it.
            ours.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let sent = if truncated {
                bytes[..bytes.len() - 3].to_vec()
            } else {
                bytes.clone()
            };
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let mut theirs = theirs;
                // Uneven writes, so frames arrive split across reads.
                for chunk in sent.chunks(70_001) {
                    theirs.write_all(chunk).unwrap();
                }
            });
            let mut conn = Conn::new(ours, Side::Daemon, Duration::ZERO);
            for (i, expected) in split.iter().enumerate() {
                if truncated && i == split.len() - 1 {
                    break;
                }
                let got: pb::Request = conn.recv(MAX_REQUEST_FRAME).unwrap();
                assert_eq!(&got, expected.as_ref().unwrap(), "frame {i}");
            }
            writer.join().unwrap();
            let last = conn.recv::<pb::Request>(MAX_REQUEST_FRAME);
            if truncated {
                assert!(matches!(last, Err(RecvError::Truncated)), "{last:?}");
            } else {
                assert!(matches!(last, Err(RecvError::Closed)), "{last:?}");
                assert_eq!(conn.rbuf.len(), READ_CHUNK, "the read buffer shrank back");
            }
        }
    }

    #[test]
    fn try_recv_returns_whole_frames_and_never_blocks() {
        use std::io::Write;
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(ours, Side::Daemon, Duration::ZERO);
        assert!(
            conn.try_recv::<pb::Request>(MAX_REQUEST_FRAME)
                .unwrap()
                .is_none()
        );
        let mut rng = Rng(5);
        let (a, b) = (random_request(&mut rng), random_request(&mut rng));
        let mut bytes = Vec::new();
        encode_frame(&a, &mut bytes).unwrap();
        let first = bytes.len();
        encode_frame(&b, &mut bytes).unwrap();
        // One whole frame and part of the next: the first comes, then nothing.
        theirs.write_all(&bytes[..first + 3]).unwrap();
        let got = conn.try_recv::<pb::Request>(MAX_REQUEST_FRAME).unwrap();
        assert_eq!(got.as_ref(), Some(&a));
        assert!(
            conn.try_recv::<pb::Request>(MAX_REQUEST_FRAME)
                .unwrap()
                .is_none()
        );
        theirs.write_all(&bytes[first + 3..]).unwrap();
        let got = conn.try_recv::<pb::Request>(MAX_REQUEST_FRAME).unwrap();
        assert_eq!(got.as_ref(), Some(&b));
        drop(theirs);
        let end = conn.try_recv::<pb::Request>(MAX_REQUEST_FRAME);
        assert!(matches!(end, Err(RecvError::Closed)), "{end:?}");
    }
}
