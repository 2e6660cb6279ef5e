//! The in-process backend: [`MemoryStore`], for `memory:` databases and tests.
//!
//! Entries live in a hash map keyed by cache id. A second, ordered index of
//! `(stored_at, id)` pairs gives the oldest entries first, so that
//! [`Store::sweep_before`] and [`Store::evict_oldest`] cost O(k log n) for k
//! removed entries instead of a scan of the whole map. Nothing survives the
//! process: a `memory:` cache starts empty, as every Postfix cache does.

use super::location::MAX_CACHE_ID_LEN;
use super::{Entry, Store, StoreError, StoreStats, SweepStep};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

/// Bytes charged per entry on top of id and session: the 8-byte timestamp,
/// as in the on-disk record, so both backends report comparable figures.
const PER_ENTRY_OVERHEAD: u64 = 8;

/// An in-memory session cache.
#[derive(Debug, Default)]
pub struct MemoryStore {
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
}

impl Store for MemoryStore {
    fn get(&mut self, id: &[u8]) -> Result<Option<Entry>, StoreError> {
        Ok(self.entries.get(id).cloned())
    }

    fn put(&mut self, id: &[u8], entry: &Entry) -> Result<(), StoreError> {
        if id.len() > MAX_CACHE_ID_LEN {
            return Err(StoreError::Backend {
                path: PathBuf::from("memory:"),
                message: format!(
                    "cache id of {} bytes is longer than the limit of {} bytes",
                    id.len(),
                    MAX_CACHE_ID_LEN
                ),
            });
        }
        self.remove_entry(id);
        self.bytes = self.bytes.saturating_add(entry_bytes(id, entry));
        self.by_age.insert((entry.stored_at, id.to_vec()));
        self.entries.insert(id.to_vec(), entry.clone());
        Ok(())
    }

    fn delete(&mut self, id: &[u8]) -> Result<bool, StoreError> {
        Ok(self.remove_entry(id))
    }

    fn sweep_before(&mut self, cutoff: u64, limit: usize) -> Result<SweepStep, StoreError> {
        let mut removed = 0;
        while removed < limit && self.pop_oldest_if(|t| t < cutoff) {
            removed += 1;
        }
        let more = removed == limit && self.by_age.first().is_some_and(|(t, _)| *t < cutoff);
        Ok(SweepStep { removed, more })
    }

    fn evict_oldest(&mut self, n: u64) -> Result<u64, StoreError> {
        let mut removed = 0;
        while removed < n && self.pop_oldest_if(|_| true) {
            removed += 1;
        }
        Ok(removed)
    }

    fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.len(),
            bytes: self.bytes,
        }
    }

    fn clear(&mut self) -> Result<(), StoreError> {
        self.entries.clear();
        self.by_age.clear();
        self.bytes = 0;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
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
            session: session.to_vec(),
        }
    }

    /// The index and the map describe the same entries, and `bytes` is their sum.
    fn assert_consistent(s: &MemoryStore) {
        assert_eq!(s.by_age.len(), s.entries.len());
        for (t, id) in &s.by_age {
            assert_eq!(s.entries.get(id).map(|e| e.stored_at), Some(*t));
        }
        let sum: u64 = s.entries.iter().map(|(id, e)| entry_bytes(id, e)).sum();
        assert_eq!(s.bytes, sum);
    }

    #[test]
    fn bytes_count_id_session_and_timestamp() {
        let mut s = MemoryStore::new();
        assert_eq!(s.stats(), StoreStats::default());
        s.put(b"abc", &entry(1, b"12345")).unwrap();
        assert_eq!(s.stats().bytes, 3 + 5 + 8);
        s.put(b"", &entry(1, b"")).unwrap();
        assert_eq!(s.stats().bytes, 16 + 8);
        // Replacing charges the new size only.
        s.put(b"abc", &entry(2, b"1")).unwrap();
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
        let mut s = MemoryStore::new();
        for i in 0..20u64 {
            s.put(&[i as u8 % 7], &entry(100 - i, b"x")).unwrap();
            assert_consistent(&s);
        }
        s.sweep_before(90, 2).unwrap();
        assert_consistent(&s);
        s.evict_oldest(2).unwrap();
        assert_consistent(&s);
        s.delete(&[3]).unwrap();
        assert_consistent(&s);
    }

    #[test]
    fn too_long_id_is_rejected_without_change() {
        let mut s = MemoryStore::new();
        let id = vec![b'a'; MAX_CACHE_ID_LEN + 1];
        let err = s.put(&id, &entry(1, b"x")).unwrap_err();
        assert!(matches!(err, StoreError::Backend { .. }), "{err}");
        assert!(err.to_string().contains("longer than"), "{err}");
        assert_eq!(s.len(), 0);
        assert_eq!(s.get(&id).unwrap(), None);
        assert!(!s.delete(&id).unwrap());
    }

    #[test]
    fn sweep_with_zero_limit_reports_more_only_if_stale_entries_exist() {
        let mut s = MemoryStore::new();
        assert_eq!(s.sweep_before(10, 0).unwrap(), SweepStep::default());
        s.put(b"a", &entry(5, b"")).unwrap();
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
