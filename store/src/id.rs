//! Object ids: 20 opaque bytes, written as 40 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

/// The id of an object in the store: 20 bytes, like Ray's ObjectID.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId([u8; ObjectId::LEN]);

/// Every byte, as three fixed-width words: a fast hasher (foldhash) mixes
/// each in a step, where the derived impl hashed a 20-byte slice (its
/// length, then the bytes by the slow path for long input). Id maps are on
/// every hot path (a `wait` on 500 refs spent a third of its time hashing).
impl std::hash::Hash for ObjectId {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let b = &self.0;
        let word = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w[..r.len()].copy_from_slice(&b[r]);
            u64::from_le_bytes(w)
        };
        h.write_u64(word(0..8));
        h.write_u64(word(8..16));
        h.write_u64(word(16..20));
    }
}

/// A byte string or hex text that is not a 20-byte object id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid object id {0:?}: expected 20 bytes (40 hex digits)")]
pub struct InvalidObjectId(pub String);

impl ObjectId {
    /// Length of an id in bytes.
    pub const LEN: usize = 20;

    /// An id from its raw bytes.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh id that no other process will pick: a per-process random seed,
    /// the pid and a counter. The pid keeps forked children apart even though
    /// they inherit the seed; the counter keeps ids within a process apart.
    pub fn random() -> Self {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEED: OnceLock<[u8; 8]> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = SEED.get_or_init(|| {
            let mut seed = [0u8; 8];
            if read_urandom(&mut seed).is_err() {
                // No /dev/urandom: the clock still differs between runs.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or_default();
                seed = t.to_le_bytes();
            }
            seed
        });
        let mut bytes = [0u8; Self::LEN];
        bytes[..8].copy_from_slice(seed);
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        bytes[12..20].copy_from_slice(&n.to_le_bytes());
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// Parses the raw bytes of a wire message.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidObjectId> {
        <[u8; Self::LEN]>::try_from(bytes)
            .map(Self)
            .map_err(|_| InvalidObjectId(format!("{} bytes", bytes.len())))
    }

    /// The id as 40 hex digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

fn read_urandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl FromStr for ObjectId {
    type Err = InvalidObjectId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidObjectId(s.to_string());
        if s.len() != 2 * Self::LEN || !s.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; Self::LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ObjectId::random();
        assert_eq!(id.to_hex().len(), 40);
        assert_eq!(id.to_hex().parse::<ObjectId>().unwrap(), id);
    }

    #[test]
    fn rejects_bad_ids() {
        assert!("abc".parse::<ObjectId>().is_err());
        assert!("zz".repeat(20).parse::<ObjectId>().is_err());
        assert!(ObjectId::from_slice(&[0; 19]).is_err());
        assert!(ObjectId::from_slice(&[0; 21]).is_err());
    }

    #[test]
    fn random_ids_differ() {
        let a = ObjectId::random();
        let b = ObjectId::random();
        assert_ne!(a, b);
    }
}
