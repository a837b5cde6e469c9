//! The spill directory: one sub-directory per daemon ("session"), locked for
//! as long as that daemon lives, so that a new daemon can tell which files
//! belong to a dead one and remove them.
//!
//! `DIR/session-<pid>-<start ms>-<n>/lock` is held with an exclusive `flock` by the
//! live daemon; the kernel drops the lock when the daemon dies, however it
//! dies. At start, every session directory whose lock can be taken belongs to
//! a dead daemon and is removed (pid reuse cannot fool this).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// This daemon's spill session: its directory, locked while it lives.
#[derive(Debug)]
pub struct Session {
    dir: PathBuf,
    _lock: Flock<File>,
}

/// What cleaning a spill directory found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    /// Session directories of dead daemons removed.
    pub sessions: usize,
    /// Spill files in them.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

impl Session {
    /// Creates `root` (mode 0700) if needed, removes the sessions of dead
    /// daemons in it, and starts a new session.
    pub fn open(root: &Path) -> io::Result<(Self, Cleaned)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        let cleaned = clean_dead(root)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        // The counter keeps apart stores embedded in one process that start
        // within the same millisecond.
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root.join(format!("session-{}-{stamp}-{n}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let lock = File::create(dir.join("lock"))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io::Error::from(e))?;
        Ok((Self { dir, _lock: lock }, cleaned))
    }

    /// Where this session's spill files go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A clean stop leaves nothing behind.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn clean_dead(root: &Path) -> io::Result<Cleaned> {
    let mut c = Cleaned::default();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("session-") || !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = entry.path();
        let alive = match File::open(dir.join("lock")) {
            // Taking the lock succeeds only if its daemon is gone; it is
            // released again when `_held` drops at the end of this arm.
            Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err(),
            // No lock file: a daemon died between creating the directory and the lock.
            Err(_) => false,
        };
        if alive {
            continue;
        }
        for f in fs::read_dir(&dir)?.flatten() {
            if f.file_name() != "lock" {
                c.files += 1;
                c.bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        fs::remove_dir_all(&dir)?;
        c.sessions += 1;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sessions_stay_dead_ones_go() {
        let root = std::env::temp_dir().join(format!("arca-session-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (live, cleaned) = Session::open(&root).unwrap();
        assert_eq!(cleaned, Cleaned::default());
        fs::write(live.dir().join("spill-1"), b"live data").unwrap();
        // A dead daemon's session: a directory whose lock nobody holds.
        let dead = root.join("session-1-1");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        fs::write(dead.join("spill-7"), vec![0u8; 1000]).unwrap();
        let (other, cleaned) = Session::open(&root).unwrap();
        assert_eq!(
            cleaned,
            Cleaned {
                sessions: 1,
                files: 1,
                bytes: 1000
            }
        );
        assert!(!dead.exists());
        assert!(
            live.dir().join("spill-1").exists(),
            "a live session is never touched"
        );
        drop(other);
        drop(live);
        assert_eq!(
            fs::read_dir(&root).unwrap().count(),
            0,
            "a clean stop leaves nothing"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
