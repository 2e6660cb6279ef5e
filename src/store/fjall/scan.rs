//! Walks of the age index, oldest first, for sweeps and eviction (see
//! "Sweep cursor" in the parent module).

use super::super::Store;
use super::record::{session_key, split_ts, successor, IndexTarget, TS_LEN};
use super::rotation::memtable_cost;
use super::{FjallStore, StoreError, Writer};
use std::collections::HashSet;
use std::ops::Bound;

impl FjallStore {
    /// Classifies index key `akey` (see [`IndexTarget`]).
    pub(super) fn target_of(&self, akey: &[u8]) -> Result<IndexTarget, StoreError> {
        let Some((ts, id)) = split_ts(akey) else {
            return Ok(IndexTarget::Dangling);
        };
        let skey = session_key(id);
        Ok(match self.raw_get(&skey)? {
            None => IndexTarget::Dangling,
            Some(record) => match split_ts(&record) {
                Some((t, _)) if t != ts => IndexTarget::Dangling,
                // Indexed here, or malformed: either way an entry to remove.
                _ => IndexTarget::Entry(skey),
            },
        })
    }

    /// Walks the age index oldest first, up to `end` (exclusive; `None`: to
    /// the end), removing every key it meets and the entries they index,
    /// until `enough(removed_entries, examined_keys)`, asked before each key,
    /// says stop. Returns the entries removed and whether it stopped with
    /// keys left in range. The caller holds the writer lock.
    pub(super) fn remove_oldest(
        &self,
        w: &mut Writer,
        end: Option<[u8; TS_LEN]>,
        enough: impl Fn(u64, usize) -> bool,
    ) -> Result<(u64, bool), StoreError> {
        let mut batch = self.db.batch();
        let mut removed = 0u64;
        let mut stopped_early = false;
        // Two index keys can point at one malformed record; count it once.
        let mut removed_keys = HashSet::new();
        // Start at the cursor: every key before it is gone already.
        let start = Bound::Included(w.scan_from.as_slice());
        let iter = match &end {
            Some(end) if end.as_slice() <= w.scan_from.as_slice() => {
                return Ok((0, false));
            }
            Some(end) => self
                .by_age
                .range::<&[u8], _>((start, Bound::Excluded(end.as_slice()))),
            None => self.by_age.range::<&[u8], _>((start, Bound::Unbounded)),
        };
        let mut last_removed = None;
        let mut tombstone_bytes = [0u64; 2];
        for (examined, guard) in iter.enumerate() {
            if enough(removed, examined) {
                stopped_early = true;
                break;
            }
            let akey = guard.key().map_err(|e| self.err(e))?;
            if let IndexTarget::Entry(skey) = self.target_of(&akey)? {
                if removed_keys.insert(skey.clone()) {
                    tombstone_bytes[0] += memtable_cost(skey.len(), 0);
                    batch.remove(&self.sessions, skey);
                    removed += 1;
                }
            }
            tombstone_bytes[1] += memtable_cost(akey.len(), 0);
            batch.remove(&self.by_age, akey.clone());
            last_removed = Some(akey);
        }
        batch.commit().map_err(|e| self.err(e))?;
        for skey in &removed_keys {
            self.presence.remove(&skey[1..]);
        }
        self.removed(w, removed);
        self.committed(w, 0, tombstone_bytes[0]);
        self.committed(w, 1, tombstone_bytes[1]);
        // Every key from the cursor up to the last one removed is gone; one
        // that ran to `end` removed every key before it too.
        if let Some(last) = last_removed {
            w.advance_cursor(successor(&last));
        }
        if let (Some(end), false) = (end, stopped_early) {
            w.advance_cursor(end.to_vec());
        }
        Ok((removed, stopped_early))
    }

    /// Evicts oldest entries until at most `max_entries` remain. The caller
    /// holds the writer lock.
    pub(super) fn evict_locked(&self, w: &mut Writer, max_entries: u64) -> Result<u64, StoreError> {
        let excess = self.len().saturating_sub(max_entries);
        if excess == 0 {
            return Ok(0);
        }
        let (removed, _) = self.remove_oldest(w, None, |removed, _| removed >= excess)?;
        Ok(removed)
    }
}

impl Writer {
    /// Moves the cursor forward to `to` (never back: see "Sweep cursor").
    pub(super) fn advance_cursor(&mut self, to: Vec<u8>) {
        if to > self.scan_from {
            self.scan_from = to;
        }
    }
}
