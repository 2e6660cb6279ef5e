//! [`Presence`]: which cache ids a store holds, kept in memory as keyed
//! 64-bit hashes, so that a lookup of an id the store does not hold is
//! answered without touching the store.
//!
//! Why: in an LSM tree a miss is not cheap. fjall searches the active and
//! sealed memtables and probes the bloom filter of every level-0 table and
//! of one table per deeper level. Half of Postfix's lookups miss (every new
//! TLS session is looked up before it is stored), and every `update` first
//! asks whether its id is new, to keep the entry count exact.
//!
//! The rule the store keeps: every id the store holds has its hash here.
//! A hash may be here for an id the store does not hold (two ids with one
//! hash, a dangling age-index key at open, a write that failed half way);
//! that costs a store lookup and nothing else. So [`Presence::may_hold`]
//! false means "certainly absent", and true means "ask the store".
//!
//! Each hash carries a count of the ids holding it, so removing one of two
//! colliding ids leaves the other present. The hash is keyed per process
//! ([`std::collections::hash_map::RandomState`]): a client that picks its
//! session ids cannot aim them at one hash.
//!
//! Memory: about 20 bytes per entry (a 100 000-entry cache: about 2.5 MiB),
//! in [`SHARDS`] tables, so readers on several I/O threads rarely meet on a
//! lock. Writers are serialized by the store's own writer lock; the order
//! it follows (add before the commit, remove after) is what keeps the rule
//! for readers that take no store lock.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Tables the hashes are spread over (a power of two).
pub const SHARDS: usize = 16;

/// Hashes the map's keys, which are already keyed hashes: the identity.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key is a u64); fold anything else.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

// A `(u64, u64)` bucket is no larger than a `(u64, u32)` one (alignment),
// and a 64-bit count cannot saturate.
type Shard = HashMap<u64, u64, BuildHasherDefault<PassThrough>>;

/// The ids a store holds, as counted keyed hashes (see the module doc).
pub struct Presence {
    key: RandomState,
    shards: [RwLock<Shard>; SHARDS],
}

impl Default for Presence {
    fn default() -> Self {
        Presence::new()
    }
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("hashes", &self.hashes())
            .finish_non_exhaustive()
    }
}

impl Presence {
    /// An empty record with a fresh key.
    pub fn new() -> Presence {
        Presence {
            key: RandomState::new(),
            shards: std::array::from_fn(|_| RwLock::new(Shard::default())),
        }
    }

    fn hash(&self, id: &[u8]) -> u64 {
        self.key.hash_one(id)
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // The top bits pick the shard: hashbrown starts its probe from the
        // low bits, which would then be the same for every key of a shard.
        &self.shards[(hash >> (u64::BITS - SHARDS.trailing_zeros())) as usize]
    }

    fn read(&self, hash: u64) -> RwLockReadGuard<'_, Shard> {
        // A panic while a shard was written leaves a map that may miss the
        // one change in progress, which the writer never finished anyway.
        self.shard(hash)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self, hash: u64) -> RwLockWriteGuard<'_, Shard> {
        self.shard(hash)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// False: the store certainly does not hold `id`. True: it may.
    pub fn may_hold(&self, id: &[u8]) -> bool {
        let h = self.hash(id);
        self.read(h).contains_key(&h)
    }

    /// Records that the store is about to hold `id` (call before the
    /// write that adds it, once per id added).
    pub fn add(&self, id: &[u8]) {
        let h = self.hash(id);
        let mut shard = self.write(h);
        let n = shard.entry(h).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Records that the store no longer holds `id` (call after the write
    /// that removed it, once per id removed, or to undo an [`add`] whose
    /// write failed).
    ///
    /// [`add`]: Presence::add
    pub fn remove(&self, id: &[u8]) {
        let h = self.hash(id);
        let mut shard = self.write(h);
        if let Some(n) = shard.get_mut(&h) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&h);
            }
        }
    }

    /// Forgets every id (after the store was emptied).
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut s = shard
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *s = Shard::default();
        }
    }

    /// Distinct hashes held (for tests and statistics).
    pub fn hashes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_until_added_and_after_removed() {
        let p = Presence::new();
        assert!(!p.may_hold(b"a"));
        p.add(b"a");
        assert!(p.may_hold(b"a"));
        assert!(!p.may_hold(b"b"));
        p.remove(b"a");
        assert!(!p.may_hold(b"a"));
        assert_eq!(p.hashes(), 0);
    }

    #[test]
    fn each_add_needs_its_remove() {
        // Two adds of one hash stand for two ids (a collision): removing
        // one leaves the other present.
        let p = Presence::new();
        p.add(b"x");
        p.add(b"x");
        p.remove(b"x");
        assert!(p.may_hold(b"x"));
        p.remove(b"x");
        assert!(!p.may_hold(b"x"));
        // A remove of what was never added changes nothing.
        p.remove(b"never");
        assert_eq!(p.hashes(), 0);
    }

    #[test]
    fn clear_forgets_everything_and_keys_differ_per_record() {
        let p = Presence::new();
        for i in 0..1000u32 {
            p.add(&i.to_be_bytes());
        }
        assert_eq!(p.hashes(), 1000);
        p.clear();
        assert!((0..1000u32).all(|i| !p.may_hold(&i.to_be_bytes())));
        let q = Presence::new();
        assert_ne!(p.hash(b"id"), q.hash(b"id"), "the hash is keyed per record");
    }
}
