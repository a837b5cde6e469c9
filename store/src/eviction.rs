//! Which sealed objects to evict first: least recently released.
//!
//! Only objects nobody pins (no reader, no primary copy) are in the policy, so
//! popping never has to skip a pinned object. An object enters when its last
//! pin goes and leaves when it is pinned again or evicted; the order is the
//! order of those releases, which is LRU as far as the store can see (a get
//! pins, so "used" means "released").

use lru::LruCache;

use crate::id::ObjectId;

/// Least-recently-used order over evictable objects, with their block sizes.
#[derive(Debug)]
pub struct Lru {
    order: LruCache<ObjectId, u64>,
    bytes: u64,
}

impl Default for Lru {
    fn default() -> Self {
        Self {
            order: LruCache::unbounded(),
            bytes: 0,
        }
    }
}

impl Lru {
    /// Adds `id` (or moves it) to the most recently used end.
    pub fn push(&mut self, id: ObjectId, bytes: u64) {
        if let Some(old) = self.order.push(id, bytes).map(|(_, b)| b) {
            self.bytes -= old;
        }
        self.bytes += bytes;
    }

    /// Removes `id` if present (it was pinned or deleted).
    pub fn remove(&mut self, id: &ObjectId) {
        if let Some(b) = self.order.pop(id) {
            self.bytes -= b;
        }
    }

    /// Takes the least recently used object.
    pub fn pop(&mut self) -> Option<(ObjectId, u64)> {
        let (id, b) = self.order.pop_lru()?;
        self.bytes -= b;
        Some((id, b))
    }

    /// The least recently used object, left in place.
    pub fn peek(&self) -> Option<(ObjectId, u64)> {
        self.order.peek_lru().map(|(&id, &b)| (id, b))
    }

    /// Bytes that eviction could free right now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of evictable objects.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is evictable.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes([n; 20])
    }

    #[test]
    fn pops_least_recent_first() {
        let mut l = Lru::default();
        l.push(id(1), 10);
        l.push(id(2), 20);
        l.push(id(3), 30);
        l.push(id(1), 10); // touched again
        l.remove(&id(2));
        assert_eq!(l.bytes(), 40);
        assert_eq!(l.pop(), Some((id(3), 30)));
        assert_eq!(l.pop(), Some((id(1), 10)));
        assert_eq!(l.pop(), None);
        assert_eq!(l.bytes(), 0);
    }
}
