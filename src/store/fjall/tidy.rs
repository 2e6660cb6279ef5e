//! What a quiet sync does to give back disk space (see "Disk use" in the
//! parent module): flush what sealed journals wait for, and compact away
//! what removals left.

use super::{FjallStore, StoreError, Writer};
use std::sync::atomic::Ordering;

/// A quiet cache is compacted whole once the entries removed since the
/// last time reach one in this many of those left: each compaction rewrites
/// the live entries, so this bounds that cost to this many times the bytes
/// removed, while a cache that only ever loses a few entries to expiry is
/// not rewritten at every quiet second.
pub(super) const TIDY_SHARE: u64 = 4;

/// Compacting away removed sessions once the cache is quiet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tidy {
    /// Nothing removed since the last compaction of everything.
    #[default]
    Clean,
    /// Sessions were removed since.
    Removed,
    /// The memtables holding the removals were rotated at the last quiet
    /// sync; the next quiet one compacts.
    Flushing,
}

impl FjallStore {
    /// After a quiet sync interval, compacts away what removals left, or
    /// flushes the memtables that sealed journals still wait for (see "Disk
    /// use").
    pub(super) fn tidy_if_quiet(&self) -> Result<(), StoreError> {
        let mut w = self.writer();
        let quiet = !std::mem::take(&mut w.written_since_tidy);
        if !quiet {
            if w.tidy == Tidy::Flushing {
                w.tidy = Tidy::Removed;
            }
            return Ok(());
        }
        match w.tidy {
            Tidy::Removed => {
                w.tidy = Tidy::Flushing;
                self.rotate(&mut w, 0)?;
                return self.rotate(&mut w, 1);
            }
            Tidy::Flushing => {
                w.tidy = Tidy::Clean;
                w.removed_since_tidy = 0;
                drop(w);
                // Not under the writer lock: puts go on meanwhile.
                self.sessions.major_compact().map_err(|e| self.err(e))?;
                self.by_age.major_compact().map_err(|e| self.err(e))?;
                return Ok(());
            }
            Tidy::Clean => {}
        }
        if self.db.journal_count() < 2 {
            return Ok(());
        }
        self.rotate(&mut w, 0)?;
        self.rotate(&mut w, 1)
    }

    /// Takes `n` removed entries off the count, and counts them towards the
    /// next compaction: once the entries removed since the last one reach
    /// [`TIDY_SHARE`] of those left, the next quiet syncs compact them away
    /// (see "Disk use"). The caller holds the writer lock.
    pub(super) fn removed(&self, w: &mut Writer, n: u64) {
        // Only writers change the count, one at a time: load and store
        // cannot interleave with another change.
        let left = self.len.load(Ordering::Relaxed).saturating_sub(n);
        self.len.store(left, Ordering::Relaxed);
        w.removed_since_tidy = w.removed_since_tidy.saturating_add(n);
        if w.tidy == Tidy::Clean && w.removed_since_tidy.saturating_mul(TIDY_SHARE) >= left {
            w.tidy = Tidy::Removed;
        }
    }
}
