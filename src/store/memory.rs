//! The in-process backend: [`MemoryStore`], for `memory:` databases and tests.
//!
//! Entries live in a hash map keyed by cache id. A second, ordered index of
//! `(stored_at, id)` pairs gives the oldest entries first, so that
//! [`Store::sweep_before`] and [`Store::evict_to`] cost O(k log n) for k
//! removed entries instead of a scan of the whole map. One mutex guards both,
//! so every operation is atomic for the threads that share the store; it is
//! held for a map operation, never across I/O. Nothing survives the process:
//! a `memory:` cache starts empty, as every Postfix cache does.

use super::{Entry, PutOutcome, Store, StoreError, StoreStats, SweepStep};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

/// Bytes charged per entry on top of id and session: the 8-byte timestamp,
/// as in the on-disk record, so both backends report comparable figures.
const PER_ENTRY_OVERHEAD: u64 = 8;

/// An in-memory session cache.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// id -> entry.
    entries: HashMap<Vec<u8>, Entry>,
    /// `(stored_at, id)` for every entry: oldest first, ties by id.
    by_age: BTreeSet<(u64, Vec<u8>)>,
    /// Sum of [`entry_bytes`] over all entries, kept up to date so that
    /// [`Store::stats`] is O(1).
    bytes: u64,
}

/// The bytes one entry is charged for in [`StoreStats::bytes`].
fn entry_bytes(id: &[u8], entry: &Entry) -> u64 {
    // usize -> u64 cannot lose information on any supported target.
    (id.len() as u64)
        .saturating_add(entry.session.len() as u64)
        .saturating_add(PER_ENTRY_OVERHEAD)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // A panic while the lock was held cannot leave the map and the index
        // out of step (every change updates both before returning), so a
        // poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Entries {
    /// Removes the entry for `id` from the map and the index.
    fn remove_entry(&mut self, id: &[u8]) -> bool {
        match self.entries.remove_entry(id) {
            Some((id, old)) => {
                self.bytes = self.bytes.saturating_sub(entry_bytes(&id, &old));
                self.by_age.remove(&(old.stored_at, id));
                true
            }
            None => false,
        }
    }

    /// Removes the oldest entry if `pred` accepts its timestamp.
    fn pop_oldest_if(&mut self, pred: impl Fn(u64) -> bool) -> bool {
        match self.by_age.first() {
            Some((stored_at, _)) if pred(*stored_at) => {}
            _ => return false,
        }
        if let Some((_, id)) = self.by_age.pop_first() {
            if let Some(old) = self.entries.remove(&id) {
                self.bytes = self.bytes.saturating_sub(entry_bytes(&id, &old));
            }
            true
        } else {
            false
        }
    }

    fn evict_to(&mut self, max_entries: u64) -> u64 {
        let mut removed = 0;
        while self.entries.len() as u64 > max_entries && self.pop_oldest_if(|_| true) {
            removed += 1;
        }
        removed
    }
}

impl Store for MemoryStore {
    fn get(&self, id: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(self.lock().entries.get(id).cloned())
    }

    fn put(&self, id: &[u8], entry: &Entry, max_entries: u64) -> Result<PutOutcome, StoreError> {
        let mut s = self.lock();
        let inserted = !s.remove_entry(id);
        // `id` is out of the map now, new or not: make room for one more.
        let evicted = match max_entries {
            0 => 0,
            max => s.evict_to(max - 1),
        };
        s.bytes = s.bytes.saturating_add(entry_bytes(id, entry));
        s.by_age.insert((entry.stored_at, id.to_vec()));
        s.entries.insert(id.to_vec(), entry.clone());
        Ok(PutOutcome { inserted, evicted })
    }

    fn delete(&self, id: &[u8]) -> Result<bool, StoreError> {
        Ok(self.lock().remove_entry(id))
    }

    fn sweep_before(&self, cutoff: u64, limit: usize) -> Result<SweepStep, StoreError> {
        let mut s = self.lock();
        let mut removed = 0;
        while removed < limit && s.pop_oldest_if(|t| t < cutoff) {
            removed += 1;
        }
        let more = removed == limit && s.by_age.first().is_some_and(|(t, _)| *t < cutoff);
        Ok(SweepStep { removed, more })
    }

    fn evict_to(&self, max_entries: u64) -> Result<u64, StoreError> {
        Ok(self.lock().evict_to(max_entries))
    }

    fn len(&self) -> u64 {
        self.lock().entries.len() as u64
    }

    fn stats(&self) -> StoreStats {
        let s = self.lock();
        StoreStats {
            entries: s.entries.len() as u64,
            bytes: s.bytes,
        }
    }

    fn for_each_entry(&self, f: &mut dyn FnMut(&[u8], Entry)) -> u64 {
        // Copied out first: `f` may take its time, and the lock is held
        // for map operations only.
        let all: Vec<(Vec<u8>, Entry)> = self
            .lock()
            .entries
            .iter()
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        for (id, e) in all {
            f(&id, e);
        }
        0
    }

    fn clear(&self) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.entries.clear();
        s.by_age.clear();
        s.bytes = 0;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn entry(stored_at: u64, session: &[u8]) -> Entry {
        Entry {
            stored_at,
            session: bytes::Bytes::copy_from_slice(session),
        }
    }

    /// The index and the map describe the same entries, and `bytes` is their sum.
    fn assert_consistent(s: &MemoryStore) {
        let s = s.lock();
        assert_eq!(s.by_age.len(), s.entries.len());
        for (t, id) in &s.by_age {
            assert_eq!(s.entries.get(id).map(|e| e.stored_at), Some(*t));
        }
        let sum: u64 = s.entries.iter().map(|(id, e)| entry_bytes(id, e)).sum();
        assert_eq!(s.bytes, sum);
    }

    #[test]
    fn bytes_count_id_session_and_timestamp() {
        let s = MemoryStore::new();
        assert_eq!(s.stats(), StoreStats::default());
        s.put(b"abc", &entry(1, b"12345"), 0).unwrap();
        assert_eq!(s.stats().bytes, 3 + 5 + 8);
        s.put(b"", &entry(1, b""), 0).unwrap();
        assert_eq!(s.stats().bytes, 16 + 8);
        // Replacing charges the new size only.
        s.put(b"abc", &entry(2, b"1"), 0).unwrap();
        assert_eq!(s.stats().bytes, 3 + 1 + 8 + 8);
        assert_consistent(&s);
        s.delete(b"abc").unwrap();
        assert_eq!(s.stats().bytes, 8);
        s.clear().unwrap();
        assert_eq!(s.stats(), StoreStats::default());
        assert_consistent(&s);
    }

    #[test]
    fn index_follows_every_change() {
        let s = MemoryStore::new();
        for i in 0..20u64 {
            s.put(&[i as u8 % 7], &entry(100 - i, b"x"), 0).unwrap();
            assert_consistent(&s);
        }
        s.sweep_before(90, 2).unwrap();
        assert_consistent(&s);
        s.evict_to(s.len() - 2).unwrap();
        assert_consistent(&s);
        s.delete(&[3]).unwrap();
        assert_consistent(&s);
    }

    #[test]
    fn the_bound_holds_with_writers_on_several_threads() {
        let s = std::sync::Arc::new(MemoryStore::new());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let id = [t, (i >> 8) as u8, i as u8];
                        s.put(&id, &entry(u64::from(i), b"x"), 100).unwrap();
                        assert!(s.len() <= 100);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.len(), 100);
        assert_consistent(&s);
    }

    #[test]
    fn sweep_with_zero_limit_reports_more_only_if_stale_entries_exist() {
        let s = MemoryStore::new();
        assert_eq!(s.sweep_before(10, 0).unwrap(), SweepStep::default());
        s.put(b"a", &entry(5, b""), 0).unwrap();
        assert_eq!(
            s.sweep_before(10, 0).unwrap(),
            SweepStep {
                removed: 0,
                more: true
            }
        );
        assert_eq!(s.sweep_before(5, 0).unwrap(), SweepStep::default());
    }
}
