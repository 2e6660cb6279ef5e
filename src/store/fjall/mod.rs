//! The default, on-disk backend: [`FjallStore`], one fjall database
//! directory per cache.
//!
//! # Layout
//!
//! Two keyspaces, always changed together in one atomic write batch:
//!
//! - `sessions`: key = `b's'` ++ cache id; value = `stored_at` as 8 bytes
//!   big-endian ++ the session bytes. The one-byte prefix exists because
//!   fjall keys must not be empty while the empty cache id is valid (Postfix
//!   accepts it). Records have no version field: the store as a whole names
//!   its record format in a file of its own (see [`crate::formats`]).
//!   A value shorter than 8 bytes is malformed.
//! - `by_age`: key = `stored_at` as 8 bytes big-endian ++ cache id; empty
//!   value. Big-endian makes byte order equal time order, so a forward scan
//!   yields the oldest entries first (ties by id) for
//!   [`Store::sweep_before`] and [`Store::evict_to`].
//!
//! Replacing an entry removes its old `by_age` key in the same batch. Index
//! keys that point nowhere (left by [`Store::clear`] interrupted between its
//! two keyspace clears, or by a record that was malformed when replaced or
//! deleted) are tolerated: scans drop them without counting them as entries.
//! The reverse (a session without an index key) cannot arise, which matters
//! because such an entry could never be expired or evicted (nor found after
//! a reopen that rebuilds the presence record, below, from the index keys).
//!
//! # Sweep cursor
//!
//! Removing a key leaves a tombstone in the LSM tree until compaction drops
//! it, and a scan from the start of `by_age` walks over every one of them:
//! sweeps would slow down with every entry earlier sweeps removed. So the
//! store remembers a lower bound, `scan_from`: no index key sorts before it.
//! Scans start there (a seek, which skips the tombstones before it), and
//! move it past the keys they removed. It is only an optimisation and never
//! hides a key: a `put` whose index key sorts before it (an entry stored
//! with an older time, e.g. after the clock was set back) lowers it to that
//! key, and it starts from nothing at open and after [`Store::clear`].
//!
//! # Malformed records
//!
//! [`Store::get`] of a malformed record returns [`StoreError::Malformed`] and
//! leaves the record in place; the caller logs it and calls
//! [`Store::delete`], which removes it (spec §3: malformed entries are
//! deleted and reported missing). Scans remove malformed records they meet.
//!
//! # Entry count
//!
//! fjall only has an approximate length, so the exact count is kept in
//! memory: computed at open by iterating over every key of `sessions` (a
//! start-up cost linear in the number of entries, paid only when the store is
//! kept across restarts: it is skipped when the store is emptied at start),
//! then updated on every change.
//!
//! # Presence
//!
//! A [`Presence`] record in memory holds a keyed hash of every id in
//! `sessions` (see `store::presence`), so a `get`, `put` or `delete` of an
//! id the store does not hold never searches the LSM tree: in the Postfix
//! mix that is half the lookups and every update's "is this id new?"
//! (BENCHMARKS.md, "Ninth pass"). It is built at open by the walk that
//! counts the entries, or, when a reopen after a failed write already
//! knows the count, from the age index's keys (small keys, no values). It
//! changes with every write: a hash is added before the batch that stores
//! its id is committed (and taken back if the commit fails), and removed
//! after the batch that removes the id, so a reader that takes no lock
//! never sees a held id as absent.
//!
//! # Threads
//!
//! The store is shared by every I/O thread. Reads (`get`) take no store
//! lock of ours, only a presence shard's read lock for one hash-table
//! probe: fjall's keyspaces are `Sync` and a batch commit is atomic for
//! readers. Every change (put, delete, sweep, eviction, clear) runs under
//! one writer mutex, because each is a read-modify-write of the two
//! keyspaces, the entry count and the sweep cursor: two unserialized puts of
//! one id could both see it absent, count it twice and leave an index key
//! behind. The lock is held for a lookup and one batch commit (a `write(2)`
//! to the journal), never across an fsync.
//!
//! # Memtable rotation
//!
//! fjall rotates a memtable (and queues its flush) when a commit finds it
//! over its size limit, by sending a message to its worker on a bounded
//! channel; every commit past the limit sends another until the worker has
//! rotated. Under a fast write load that floods the channel, and the worker,
//! which sends its own flush message on the same channel, then blocks on
//! it for good (fjall-rs/fjall#323): no memtable is flushed any more, and
//! memory and the journal grow without bound. So we rotate ourselves: the
//! writer counts the bytes it committed to each keyspace and, once past
//! [`OpenOptions::write_buffer_bytes`]'s share, asks the store's rotation
//! thread (`tlsmgr-rotate`) to rotate it, one request per memtable; fjall's
//! own limit is set far above ours as a backstop. The rotation runs off
//! the writer's thread because it can block for tens of milliseconds (see
//! `Rotator`); a failed one is reported by the next [`Store::flush`].
//!
//! # Disk use
//!
//! A compaction's input tables stay on disk as long as fjall's version
//! history holds the version before the compaction, and fjall only trims that
//! history when a memtable is rotated, i.e. at the next writes: a cache that
//! went quiet right after a burst kept both the inputs and the output: 1.49
//! to 1.52 bytes per session byte where the tables alone take 1.09 to 1.12
//! (BENCHMARKS.md, "Memory and disk, fourth pass"). Every [`Store::tidy`]
//! (after the flush at every `tlsmgr_session_cache_sync_interval`) asks the
//! vendored fjall to release the versions superseded before the previous
//! call (`Database::release_superseded_versions`, `vendor/README.md`), so
//! the inputs leave within two sync intervals of the compaction.
//!
//! A sealed journal is deleted once every memtable with data in it has been
//! flushed. The age index's memtable holds small items, so it fills about
//! three times slower than the sessions' and kept up to three sealed
//! journals (up to 28 MiB, 0.14 bytes per session byte, in the same bench)
//! waiting for it. So a tidy that finds nothing written since the previous
//! one, while sealed journals exist, rotates both memtables. That is at
//! most one extra rotation per journal sealed, i.e. per write buffer's worth
//! of writes, and none on a cache that keeps being written or was never
//! written enough to seal a journal.
//!
//! Removed entries (expired, evicted, deleted) leave tombstones, and their
//! old values stay in the tables until a compaction brings the two
//! together, which fjall's leveled compaction does only as new writes push
//! tables down. A cache whose sessions turn over and that then goes quiet
//! kept all of it: five generations of 30 000 sessions, each expired once
//! the next was in, left 2.26 bytes on disk per live session byte
//! (`tests/it/store.rs`). So once the entries removed since the last time reach
//! a `TIDY_SHARE`th of those left, the first quiet sync rotates both
//! memtables (their tombstones go to tables) and the next quiet one compacts
//! both keyspaces whole, on the caller's thread (the cache actor's) and
//! without the writer lock: the same test then ends at 1.06.
//!
//! # Durability
//!
//! Every committed batch is written to the journal file before the call
//! returns (fjall's default, `manual_journal_persist = false`), so an update
//! acknowledged to a client survives a crash or `kill -9` of the process. It
//! is not fsynced: a power loss or kernel crash can lose what was written
//! since the last [`Store::flush`], which the cache actor calls every
//! `tlsmgr_session_cache_sync_interval` and at shutdown. A lost session only
//! costs one full TLS handshake.
//!
//! # Where it lives
//!
//! - this file: [`FjallStore`], its opening and the [`Store`] operations;
//! - `record`: the keys and records of "Layout" above;
//! - `open`: the directory, the record format file and fjall's options;
//! - `scan`: the age-index walks of sweeps and eviction ("Sweep cursor");
//! - `rotation`: "Memtable rotation";
//! - `tidy`: what a quiet sync does ("Disk use");
//! - `errors`: fjall's errors as [`StoreError`]s.

mod errors;
mod open;
mod record;
mod rotation;
mod scan;
#[cfg(test)]
mod tests;
mod tidy;

pub use errors::classify_fjall;
use errors::map_err;
pub use open::MAX_OPEN_FILES;
use open::{check_format, keyspace_options, open_db_waiting, prepare_dir, write_format};
use record::{
    age_key, id_too_long, record_value, session_key, split_ts, MAX_SESSION_LEN, SESSION_KEY_TAG,
    TS_LEN,
};
pub use record::{decode_record, encode_record};
use rotation::{memtable_cost, Rotator};
use tidy::Tidy;

use super::presence::Presence;
use super::{Entry, OpenOptions, PutOutcome, Store, StoreError, StoreStats, SweepStep};
use fjall::{Database, Keyspace, PersistMode};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// fjall's memtable limit, as a multiple of ours.
const FJALL_ROTATION_BACKSTOP: u64 = 4;

/// A session cache in a fjall database directory.
pub struct FjallStore {
    /// The directory, as given to [`FjallStore::open`] (for error messages).
    path: PathBuf,
    db: Database,
    sessions: Keyspace,
    by_age: Keyspace,
    /// Exact number of records in `sessions`; changed only under `writer`.
    len: AtomicU64,
    /// The ids `sessions` holds (see "Presence" above); changed only under
    /// `writer`.
    presence: Presence,
    /// Serializes changes (see "Threads" above).
    writer: Mutex<Writer>,
    /// Rotates memtables off the caller's thread (see "Memtable rotation").
    rotator: Rotator,
}

/// The keyspaces by index: `sessions` is 0 and `by_age` 1, as in
/// [`Writer::unrotated`].
type Keyspaces = [Keyspace; 2];

/// What only a writer touches.
#[derive(Debug, Default)]
struct Writer {
    /// No `by_age` key sorts before this (see "Sweep cursor" above); empty:
    /// no bound known.
    scan_from: Vec<u8>,
    /// Bytes committed to `sessions` and `by_age` since their memtables
    /// were last rotated (see "Memtable rotation").
    unrotated: [u64; 2],
    /// When to rotate each.
    rotate_at: [u64; 2],
    /// Something was committed since the last [`Store::tidy`].
    written_since_tidy: bool,
    /// Where the store is in compacting away what removals left (see
    /// "Disk use").
    tidy: Tidy,
    /// Entries removed since the last such compaction.
    removed_since_tidy: u64,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Opens (creating if needed) the store in directory `dir`. See
    /// [`OpenOptions`] for clearing, lock waiting and sizes; a database still
    /// locked after `lock_wait` gives [`StoreError::Locked`].
    pub fn open(dir: &Path, opts: OpenOptions) -> Result<FjallStore, StoreError> {
        prepare_dir(dir)?;
        let unversioned = check_format(dir)?;
        let db = open_db_waiting(dir, &opts)?;
        let err = |e| map_err(dir, e);
        // Most of the write buffer goes to the sessions; the age index has
        // small keys and empty values.
        let sessions_memtable = (opts.write_buffer_bytes / 4 * 3).max(1024 * 1024);
        let by_age_memtable = (opts.write_buffer_bytes / 4).max(256 * 1024);
        // fjall's own rotation is only a backstop (see "Memtable rotation").
        let backstop = |ours: u64| ours.saturating_mul(FJALL_ROTATION_BACKSTOP);
        let sessions = db
            .keyspace("sessions", || keyspace_options(backstop(sessions_memtable)))
            .map_err(err)?;
        let by_age = db
            .keyspace("by_age", || keyspace_options(backstop(by_age_memtable)))
            .map_err(err)?;
        if unversioned {
            write_format(dir)?;
        }
        let rotator = Rotator::start([sessions.clone(), by_age.clone()]).map_err(|source| {
            StoreError::Io {
                path: dir.to_path_buf(),
                source,
            }
        })?;
        let store = FjallStore {
            path: dir.to_path_buf(),
            db,
            sessions,
            by_age,
            rotator,
            len: AtomicU64::new(0),
            presence: Presence::new(),
            writer: Mutex::new(Writer {
                rotate_at: [sessions_memtable, by_age_memtable],
                ..Writer::default()
            }),
        };
        if opts.empty_on_start {
            store.clear()?;
        } else {
            // A batch is all or nothing, even torn by a failed write, so
            // the count the closed store kept is still exact.
            let n = match opts.known_entries {
                Some(n) => {
                    store.load_presence()?;
                    n
                }
                None => store.load_sessions()?,
            };
            store.len.store(n, Ordering::Relaxed);
        }
        Ok(store)
    }

    /// The store's directory, as given to [`FjallStore::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes held in memtables, active and sealed (memory the store uses
    /// beyond its block cache; bounded by about twice
    /// [`OpenOptions::write_buffer_bytes`] while flushes keep up).
    pub fn memtable_bytes(&self) -> u64 {
        self.db.write_buffer_size()
    }

    fn err(&self, e: fjall::Error) -> StoreError {
        map_err(&self.path, e)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // The writer state is only a cursor, which is valid (if not tight)
        // whatever a panicking writer left behind.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records every id the age index names in [`FjallStore::presence`],
    /// when the entry count is known and `sessions` need not be walked:
    /// each session has an index key, so none is missed; a dangling key
    /// only adds a hash the store then answers for. The index holds small
    /// keys and no values, so this reads far less than [`Self::load_sessions`].
    fn load_presence(&self) -> Result<(), StoreError> {
        for guard in self.by_age.iter() {
            let akey = guard.key().map_err(|e| self.err(e))?;
            if let Some((_, id)) = split_ts(&akey) {
                self.presence.add(id);
            }
        }
        Ok(())
    }

    /// Walks every key of `sessions` once: records each id in
    /// [`FjallStore::presence`] and returns how many there are.
    fn load_sessions(&self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for guard in self.sessions.iter() {
            let skey = guard.key().map_err(|e| self.err(e))?;
            // Every key has the tag (fjall keys are never empty).
            if let Some(id) = skey.strip_prefix(&[SESSION_KEY_TAG]) {
                self.presence.add(id);
            }
            n += 1;
        }
        Ok(n)
    }

    fn raw_get(&self, key: &[u8]) -> Result<Option<fjall::Slice>, StoreError> {
        self.sessions.get(key).map_err(|e| self.err(e))
    }
}

impl Store for FjallStore {
    fn get(&self, id: &[u8]) -> Result<Option<Entry>, StoreError> {
        if id_too_long(id) {
            return Ok(None);
        }
        if !self.presence.may_hold(id) {
            return Ok(None);
        }
        match self.raw_get(&session_key(id))? {
            Some(record) => decode_record(&record).map(Some),
            None => Ok(None),
        }
    }

    fn put(&self, id: &[u8], entry: &Entry, max_entries: u64) -> Result<PutOutcome, StoreError> {
        if id_too_long(id) {
            return Err(StoreError::Backend {
                path: self.path.clone(),
                message: format!("cache id of {} bytes is too long to store", id.len()),
            });
        }
        if entry.session.len() > MAX_SESSION_LEN {
            return Err(StoreError::Backend {
                path: self.path.clone(),
                message: format!(
                    "session of {} bytes is too large to store",
                    entry.session.len()
                ),
            });
        }
        let skey = session_key(id);
        let mut w = self.writer();
        let old = match self.presence.may_hold(id) {
            true => self.raw_get(&skey)?,
            false => None,
        };
        let inserted = old.is_none();
        // Make room first, so the count never exceeds the bound. The entry
        // being replaced is not evicted: a replacement adds nothing.
        let evicted = match max_entries {
            0 => 0,
            max if inserted => self.evict_locked(&mut w, max - 1)?,
            max => self.evict_locked(&mut w, max)?,
        };
        // Eviction may have removed the old entry (it was among the oldest,
        // under a bound lowered since it was stored).
        let old = if evicted > 0 && !inserted {
            self.raw_get(&skey)?
        } else {
            old
        };
        // Then this put adds an entry after all, and needs room for it.
        let evicted_itself = !inserted && old.is_none();
        let evicted = match max_entries {
            max if max > 0 && evicted_itself => evicted + self.evict_locked(&mut w, max - 1)?,
            _ => evicted,
        };
        let mut batch = self.db.batch();
        let mut index_bytes = 0;
        if let Some((old_ts, _)) = old.as_deref().and_then(split_ts) {
            // Same timestamp: the insert below rewrites the same index key;
            // a remove of it in the same batch would race with that insert.
            if old_ts != entry.stored_at {
                let old_akey = age_key(old_ts, id);
                index_bytes += memtable_cost(old_akey.len(), 0);
                batch.remove(&self.by_age, old_akey);
            }
        }
        let akey = age_key(entry.stored_at, id);
        // An index key before the cursor (an older time than everything
        // swept): scans must start at it again.
        if akey < w.scan_from {
            w.scan_from.clone_from(&akey);
        }
        let record = record_value(entry);
        index_bytes += memtable_cost(akey.len(), 0);
        let session_bytes = memtable_cost(skey.len(), record.len());
        batch.insert(&self.sessions, skey, record);
        batch.insert(&self.by_age, akey, Vec::new());
        let adds = old.is_none();
        // Present before the commit makes it visible (see "Presence").
        if adds {
            self.presence.add(id);
        }
        if let Err(e) = batch.commit() {
            if adds {
                self.presence.remove(id);
            }
            return Err(self.err(e));
        }
        if adds {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        self.committed(&mut w, 0, session_bytes);
        self.committed(&mut w, 1, index_bytes);
        // Reported as the memory store does: a replacement, and the other
        // entries evicted (the one replaced is not among them).
        Ok(PutOutcome {
            inserted,
            evicted: evicted.saturating_sub(u64::from(evicted_itself)),
        })
    }

    fn delete(&self, id: &[u8]) -> Result<bool, StoreError> {
        if id_too_long(id) {
            return Ok(false);
        }
        let skey = session_key(id);
        let mut w = self.writer();
        if !self.presence.may_hold(id) {
            return Ok(false);
        }
        let Some(old) = self.raw_get(&skey)? else {
            return Ok(false);
        };
        let mut batch = self.db.batch();
        if let Some((old_ts, _)) = split_ts(&old) {
            batch.remove(&self.by_age, age_key(old_ts, id));
        }
        let skey_cost = memtable_cost(skey.len(), 0);
        batch.remove(&self.sessions, skey);
        batch.commit().map_err(|e| self.err(e))?;
        self.presence.remove(id);
        self.removed(&mut w, 1);
        // Tombstones fill memtables too.
        self.committed(&mut w, 0, skey_cost);
        self.committed(&mut w, 1, memtable_cost(TS_LEN + id.len(), 0));
        Ok(true)
    }

    fn sweep_before(&self, cutoff: u64, limit: usize) -> Result<SweepStep, StoreError> {
        // Every examined index key is removed, so bounding examined keys
        // bounds the work even if dangling keys pile up; without those (the
        // normal case) examined == removed.
        let mut w = self.writer();
        let (removed, more) =
            self.remove_oldest(&mut w, Some(cutoff.to_be_bytes()), |_, examined| {
                examined >= limit
            })?;
        Ok(SweepStep {
            removed: usize::try_from(removed).unwrap_or(usize::MAX),
            more,
        })
    }

    fn evict_to(&self, max_entries: u64) -> Result<u64, StoreError> {
        let mut w = self.writer();
        self.evict_locked(&mut w, max_entries)
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    fn stats(&self) -> StoreStats {
        let bytes = self
            .db
            .disk_space()
            .unwrap_or_else(|_| self.sessions.disk_space() + self.by_age.disk_space());
        StoreStats {
            entries: self.len(),
            bytes,
        }
    }

    fn clear(&self) -> Result<(), StoreError> {
        let mut w = self.writer();
        // `sessions` first: if we stop in between, only dangling index keys
        // remain, which scans tolerate; unindexed sessions would never expire.
        self.sessions.clear().map_err(|e| self.err(e))?;
        self.len.store(0, Ordering::Relaxed);
        self.presence.clear();
        self.by_age.clear().map_err(|e| self.err(e))?;
        w.scan_from.clear();
        w.removed_since_tidy = 0;
        w.tidy = Tidy::Clean;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        if let Some(e) = self.rotator.take_failure() {
            return Err(self.err(e));
        }
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.err(e))
    }

    fn for_each_entry(&self, f: &mut dyn FnMut(&[u8], Entry)) -> u64 {
        // A store whose directory was removed reads what its open files
        // hold; a table fjall must open again by name fails, item by item.
        // Many failures in a row mean the rest will not read either, and an
        // iterator that keeps failing must not keep the caller forever.
        const GIVE_UP_AFTER: u64 = 10_000;
        let (mut skipped, mut in_a_row) = (0u64, 0u64);
        for guard in self.sessions.iter() {
            let read = guard.into_inner().ok().and_then(|(k, v)| {
                let id = k.strip_prefix(&[SESSION_KEY_TAG])?.to_vec();
                Some((id, decode_record(&v).ok()?))
            });
            match read {
                Some((id, entry)) => {
                    in_a_row = 0;
                    f(&id, entry);
                }
                None => {
                    skipped += 1;
                    in_a_row += 1;
                    if in_a_row >= GIVE_UP_AFTER {
                        break;
                    }
                }
            }
        }
        skipped
    }

    fn tidy(&self) -> Result<(), StoreError> {
        // What only duplicates the tables, or what removals left, leaves
        // the disk (see "Disk use" above).
        self.tidy_if_quiet()?;
        self.db
            .release_superseded_versions()
            .map_err(|e| self.err(e))
    }
}
