//! Polling for a while before sleeping, where it pays.
//!
//! In this VM a sleeping process costs whoever wakes it about 20 µs, and
//! the sleeper as much again before it runs (docs/benchmarks.md): a wait
//! answered within a few tens of µs is cheaper to poll through than to
//! sleep through. An actor's worker between a caller's sync calls, the
//! caller waiting for the answer, and a driver waiting for the node's reply
//! to a sync task's `get`, wait about that long. A spin that catches
//! nothing, though, takes a core that another process (the node, on 2
//! cores) may need, so each waiting site learns whether its spins pay: it
//! spins while they mostly catch what they wait for, and after misses tries
//! again only now and then. `ARCA_SPIN_US` sets the longest spin (0: never).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::os::fd::BorrowedFd;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// How a waiting site's spins have fared.
#[derive(Debug)]
pub(crate) struct Spin {
    /// Raised by a spin that caught, lowered by one that did not; spins
    /// while above zero.
    score: AtomicU32,
    /// Waits while the score is zero: every `PROBE_EVERY`th spins anyway.
    idle_waits: AtomicU32,
}

const MAX_SCORE: u32 = 8;
/// A miss costs more than a hit earns: a site whose waits are mostly long
/// stops after a few.
const MISS_COST: u32 = 2;
const PROBE_EVERY: u32 = 64;
const DEFAULT_BUDGET: Duration = Duration::from_micros(50);

impl Default for Spin {
    fn default() -> Self {
        Self {
            score: AtomicU32::new(MAX_SCORE / 2),
            idle_waits: AtomicU32::new(0),
        }
    }
}

/// Threads of this process spinning now: at most one fewer than the cores,
/// so that spinners never take every core (and on one core, none: what a
/// spinner waits for could not run meanwhile).
static SPINNERS: AtomicUsize = AtomicUsize::new(0);

fn budget() -> Duration {
    static BUDGET: OnceLock<Duration> = OnceLock::new();
    *BUDGET.get_or_init(|| match std::env::var("ARCA_SPIN_US") {
        Ok(v) => v
            .trim()
            .parse()
            .map(Duration::from_micros)
            .unwrap_or(DEFAULT_BUDGET),
        Err(_) => DEFAULT_BUDGET,
    })
}

fn max_spinners() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() - 1))
}

impl Spin {
    /// Polls `set` without sleeping for up to the spin budget, if this
    /// site's spins pay; true once some fd is ready (its `revents` set, as
    /// `poll` leaves them), false if the caller should sleep in `poll`.
    pub(crate) fn poll(&self, set: &mut [PollFd<'_>]) -> std::io::Result<bool> {
        let budget = budget();
        if budget.is_zero() || !self.worth_it() {
            return Ok(false);
        }
        if SPINNERS.fetch_add(1, Ordering::AcqRel) >= max_spinners() {
            SPINNERS.fetch_sub(1, Ordering::AcqRel);
            return Ok(false);
        }
        let start = Instant::now();
        let caught = loop {
            match poll(set, PollTimeout::ZERO) {
                Ok(n) if n > 0 => break Ok(true),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => break Err(std::io::Error::from(e)),
            }
            if start.elapsed() >= budget {
                break Ok(false);
            }
            // Whoever we wait for may be runnable on this very core.
            std::thread::yield_now();
        };
        SPINNERS.fetch_sub(1, Ordering::AcqRel);
        if let Ok(hit) = caught {
            self.fared(hit);
        }
        caught
    }

    /// [`Spin::poll`] for one fd: true once it is readable, false if the
    /// caller should block (at once, without a syscall, when spinning does
    /// not pay here).
    pub(crate) fn until_readable(&self, fd: BorrowedFd<'_>) -> std::io::Result<bool> {
        self.poll(&mut [PollFd::new(fd, PollFlags::POLLIN)])
    }

    fn worth_it(&self) -> bool {
        self.score.load(Ordering::Relaxed) > 0
            || self.idle_waits.fetch_add(1, Ordering::Relaxed) % PROBE_EVERY == PROBE_EVERY - 1
    }

    fn fared(&self, hit: bool) {
        // Racing updates from two threads may lose one: the score is a hint.
        let s = self.score.load(Ordering::Relaxed);
        let next = if hit {
            (s + 1).min(MAX_SCORE)
        } else {
            s.saturating_sub(MISS_COST)
        };
        self.score.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// The tests spin, and the process allows only so many spinners.
    static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

    fn readable(spin: &Spin, s: &UnixStream) -> bool {
        spin.until_readable(s.as_fd()).unwrap()
    }

    #[test]
    fn a_site_whose_spins_miss_stops_spinning_and_probes_now_and_then() {
        let _serial = SERIAL.lock();
        if max_spinners() == 0 {
            return; // one core: nothing spins
        }
        let (a, _b) = UnixStream::pair().unwrap();
        let spin = Spin::default();
        // Nothing ever arrives: two misses take the starting score to zero.
        assert!(!readable(&spin, &a));
        assert!(!readable(&spin, &a));
        assert_eq!(spin.score.load(Ordering::Relaxed), 0);
        // From then on it spins only once in PROBE_EVERY waits.
        for _ in 0..PROBE_EVERY * 2 {
            assert!(!readable(&spin, &a));
        }
        assert_eq!(spin.idle_waits.load(Ordering::Relaxed), PROBE_EVERY * 2);
    }

    #[test]
    fn a_spin_that_catches_raises_the_score() {
        let _serial = SERIAL.lock();
        if max_spinners() == 0 {
            return; // one core: nothing spins
        }
        let (a, mut b) = UnixStream::pair().unwrap();
        let spin = Spin::default();
        b.write_all(b"x").unwrap();
        assert!(readable(&spin, &a));
        assert_eq!(spin.score.load(Ordering::Relaxed), MAX_SCORE / 2 + 1);
        // A probe that catches brings a site that had stopped back.
        spin.score.store(0, Ordering::Relaxed);
        spin.idle_waits.store(PROBE_EVERY - 1, Ordering::Relaxed);
        assert!(readable(&spin, &a));
        assert_eq!(spin.score.load(Ordering::Relaxed), 1);
    }
}
