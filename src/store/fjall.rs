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

use super::error::{classify_io, Lasting, OpenFailure, Transient};
use super::location::FJALL_DIR_SUFFIX;
use super::presence::Presence;
use super::{Entry, OpenOptions, PutOutcome, Store, StoreError, StoreStats, SweepStep};
use crate::formats;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::collections::HashSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long to sleep between attempts to take a locked database.
const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// The prefix of every `sessions` key (see the module documentation).
const SESSION_KEY_TAG: u8 = b's';

/// Bytes of the big-endian timestamp at the start of a record and an index key.
const TS_LEN: usize = 8;

/// fjall's key size limit; an index key adds the timestamp to the id.
const MAX_KEY_LEN: usize = u16::MAX as usize;

/// fjall's value size limit is `u32::MAX` bytes; the record adds the timestamp.
const MAX_SESSION_LEN: usize = u32::MAX as usize - TS_LEN;

// fjall configuration for a small cache: one database per cache type, three
// at most per process, each holding at most some tens of MiB. The block
// cache and the write buffer are parameters (`OpenOptions`).
/// Background flush/compaction threads per database (default: up to 4).
const WORKER_THREADS: usize = 1;
/// Open table files kept per database (default 900, too many for three
/// databases under a 1024 descriptor limit).
const MAX_CACHED_FILES: usize = 64;
/// The most descriptors one open store holds at once: its table file
/// cache, and its journals, version and lock files and directory (the
/// daemon keeps these free of clients, `daemon::limits`).
pub const MAX_OPEN_FILES: u64 = MAX_CACHED_FILES as u64 + 16;
/// Journal size bound; fjall's minimum (default 512 MiB).
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// Flushed memtables (level-0 tables) a keyspace gathers before they are
/// merged into level 1 (fjall's default: 4). Session ids are random, so
/// every merge rewrites all of level 1, which holds nearly the whole cache:
/// gathering 16 rewrites it a quarter as often. A read checks each level-0
/// table's bloom filter, which fjall keeps in memory. In the load bench at
/// 64 connections (BENCHMARKS.md, "Eighth pass") it gave 0.54 of the
/// ceiling against 0.49-0.51 with 4, and p99.9 11 against 15 ms; 8 and 32
/// did no better.
const L0_TABLES_BEFORE_COMPACTION: u8 = 16;

/// fjall's memtable limit, as a multiple of ours.
const FJALL_ROTATION_BACKSTOP: u64 = 4;

/// What fjall adds to a memtable item's key and value when it sizes the
/// memtable (lsm-tree counts `size_of::<InternalValue>()`, about 60 bytes
/// in lsm-tree 3.1), rounded up. Counting it is what keeps our rotation
/// ahead of fjall's own: an index item has a key of 16 bytes or so and no
/// value, and counted without its overhead it filled fjall's memtable more
/// than 4 times faster than we counted, so fjall's backstop fired on every
/// commit and flooded its worker's channel after all (a CI run hung so in
/// tests/it/store.rs). Overcounting is harmless: we only rotate a bit early.
const MEMTABLE_ITEM_OVERHEAD: u64 = 128;

/// The memtable bytes one item (insert or tombstone) costs, by fjall's
/// measure or more.
fn memtable_cost(key_len: usize, value_len: usize) -> u64 {
    (key_len as u64)
        .saturating_add(value_len as u64)
        .saturating_add(MEMTABLE_ITEM_OVERHEAD)
}

/// A quiet cache is compacted whole once the entries removed since the
/// last time reach one in this many of those left: each compaction rewrites
/// the live entries, so this bounds that cost to this many times the bytes
/// removed, while a cache that only ever loses a few entries to expiry is
/// not rewritten at every quiet second.
const TIDY_SHARE: u64 = 4;

/// fjall's marker files and ours; a non-empty directory with none of them
/// is not a store.
const FJALL_MARKERS: [&str; 3] = ["version", "lock", crate::formats::STORE_FORMAT_FILE];

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

/// A thread that rotates memtables when a writer asks it to. Rotating
/// takes fjall's journal and version locks and trims the version history,
/// which deletes and closes the files of tables a compaction replaced: a
/// `close(2)` that frees a table's blocks took 3 to 13 ms on ext4 under
/// load, five in a row at times. Done inline it stalled the I/O thread that
/// happened to cross the limit, and every connection it serves. The writer
/// only sends a request (one per memtable, since it restarts its count when
/// it asks), so a put never waits for a rotation.
struct Rotator {
    /// Requests: which keyspace to rotate. `None` once the store is dropped.
    requests: Option<std::sync::mpsc::Sender<usize>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The first rotation that failed, reported by the next [`Store::flush`].
    failed: std::sync::Arc<Mutex<Option<fjall::Error>>>,
}

impl Rotator {
    fn start(keyspaces: Keyspaces) -> std::io::Result<Rotator> {
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let failed = std::sync::Arc::new(Mutex::new(None));
        let report = std::sync::Arc::clone(&failed);
        let thread = std::thread::Builder::new()
            .name("tlsmgr-rotate".into())
            .spawn(move || {
                for which in rx {
                    if let Err(e) = keyspaces[which].rotate_memtable() {
                        let mut slot = report
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        slot.get_or_insert(e);
                    }
                }
            })?;
        Ok(Rotator {
            requests: Some(tx),
            thread: Some(thread),
            failed,
        })
    }

    /// Asks for a rotation of keyspace `which`; returns at once.
    fn request(&self, which: usize) {
        if let Some(tx) = &self.requests {
            // The thread only ends once `requests` is gone.
            let _ = tx.send(which);
        }
    }

    /// The first rotation error since the last call, if any.
    fn take_failure(&self) -> Option<fjall::Error> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl Drop for Rotator {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the requests already
        // sent; joining it releases its handles on the database before the
        // store is gone, so the directory can be opened again at once.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

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

/// Compacting away removed sessions once the cache is quiet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Tidy {
    /// Nothing removed since the last compaction of everything.
    #[default]
    Clean,
    /// Sessions were removed since.
    Removed,
    /// The memtables holding the removals were rotated at the last quiet
    /// sync; the next quiet one compacts.
    Flushing,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// What an age-index key points at.
enum IndexTarget {
    /// A record whose entry is indexed by this key (or a malformed record):
    /// removing it removes an entry.
    Entry(Vec<u8>),
    /// Nothing, or a record indexed elsewhere: only the index key goes.
    Dangling,
}

fn session_key(id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(SESSION_KEY_TAG);
    k.extend_from_slice(id);
    k
}

fn age_key(stored_at: u64, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(TS_LEN + id.len());
    k.extend_from_slice(&stored_at.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// The record of `entry`: 8-byte big-endian `stored_at` ++ session.
pub fn encode_record(entry: &Entry) -> Vec<u8> {
    let mut v = Vec::with_capacity(TS_LEN + entry.session.len());
    v.extend_from_slice(&entry.stored_at.to_be_bytes());
    v.extend_from_slice(&entry.session);
    v
}

/// The leading big-endian timestamp of a record or index key.
fn split_ts(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (ts, rest) = bytes.split_first_chunk::<TS_LEN>()?;
    Some((u64::from_be_bytes(*ts), rest))
}

/// [`encode_record`] built straight into the value fjall keeps: one
/// allocation and one copy of the session, where a `Vec` handed to fjall
/// is copied again into its own buffer.
fn record_value(entry: &Entry) -> fjall::Slice {
    use std::io::Read;
    let ts = entry.stored_at.to_be_bytes();
    let mut parts = ts.as_slice().chain(&entry.session[..]);
    let len = TS_LEN + entry.session.len();
    // Reading two in-memory slices of exactly `len` bytes cannot fail;
    // were it to, the copy through a Vec is the same record.
    fjall::Slice::from_reader(&mut parts, len)
        .unwrap_or_else(|_| fjall::Slice::from(encode_record(entry)))
}

/// Reads a stored record back ([`encode_record`]); a record shorter than
/// its timestamp is [`StoreError::Malformed`] (the cache then drops it).
/// Public for the `store_value` fuzz target.
pub fn decode_record(bytes: &[u8]) -> Result<Entry, StoreError> {
    let (stored_at, session) = split_ts(bytes).ok_or_else(|| {
        StoreError::Malformed(format!(
            "record of {} bytes is shorter than its {TS_LEN}-byte timestamp",
            bytes.len()
        ))
    })?;
    Ok(Entry {
        stored_at,
        session: bytes::Bytes::copy_from_slice(session),
    })
}

/// Creates `dir` (mode 0700, parent must exist) or checks that an existing
/// one is a fjall database or empty, so that a mistyped `fjall:` path such
/// as the data directory itself is not filled with fjall's files.
fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    if !dir.is_dir() {
        return Err(not_a_store(dir, "exists and is not a directory"));
    }
    let mut entries = std::fs::read_dir(dir).map_err(io)?;
    let is_empty = entries.next().is_none();
    if !is_empty && !FJALL_MARKERS.iter().any(|m| dir.join(m).exists()) {
        return Err(not_a_store(
            dir,
            "directory is not empty and holds no fjall database; refusing to use it",
        ));
    }
    Ok(())
}

/// The error for a path that is not a store. Only a path named as ours
/// (`PATH.fjall`, see `store::location`) is [`Lasting::NotAStore`], and
/// so set aside: a `fjall:` path typed by hand may name anything (the data
/// directory itself), which is refused and left where it is.
fn not_a_store(dir: &Path, message: &str) -> StoreError {
    let ours = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() > FJALL_DIR_SUFFIX.len() && n.ends_with(FJALL_DIR_SUFFIX));
    if ours {
        StoreError::Unreadable {
            path: dir.to_path_buf(),
            reason: Lasting::NotAStore,
            message: message.into(),
        }
    } else {
        StoreError::Backend {
            path: dir.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Checks the record format a store names ([`formats::STORE_FORMAT_FILE`]).
/// Returns whether the file is missing: a new store, or one written before
/// the file existed (whose records are format 1), which gets it once open.
fn check_format(dir: &Path) -> Result<bool, StoreError> {
    let file = dir.join(formats::STORE_FORMAT_FILE);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(source) => {
            return Err(match classify_io(&source) {
                OpenFailure::Lasting(reason) => StoreError::Unreadable {
                    path: dir.to_path_buf(),
                    reason,
                    message: format!("{}: {source}", file.display()),
                },
                OpenFailure::Transient(_) => StoreError::Io {
                    path: dir.to_path_buf(),
                    source,
                },
            })
        }
    };
    let found = std::str::from_utf8(&bytes)
        .ok()
        .and_then(formats::parse_store_format);
    match found {
        Some(formats::STORE_FORMAT) => Ok(false),
        Some(v) => Err(StoreError::Unreadable {
            path: dir.to_path_buf(),
            reason: Lasting::Version,
            message: format!(
                "record format {} {v}, this tlsmgr reads {}",
                formats::STORE_FORMAT_NAME,
                formats::STORE_FORMAT
            ),
        }),
        None => Err(StoreError::Unreadable {
            path: dir.to_path_buf(),
            reason: Lasting::Version,
            message: format!("{} names no record format", file.display()),
        }),
    }
}

/// Writes the format file of a store ([`check_format`]): a temporary
/// file, fsynced, renamed into place, so a crash leaves either no file
/// (taken as format 1 again) or a whole one.
fn write_format(dir: &Path) -> Result<(), StoreError> {
    use std::io::Write;
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let tmp = dir.join(format!("{}.tmp", formats::STORE_FORMAT_FILE));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(formats::store_format_line(formats::STORE_FORMAT).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, dir.join(formats::STORE_FORMAT_FILE)).map_err(io)?;
    Ok(())
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

    /// Classifies index key `akey` (see [`IndexTarget`]).
    fn target_of(&self, akey: &[u8]) -> Result<IndexTarget, StoreError> {
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
    fn remove_oldest(
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
    fn evict_locked(&self, w: &mut Writer, max_entries: u64) -> Result<u64, StoreError> {
        let excess = self.len().saturating_sub(max_entries);
        if excess == 0 {
            return Ok(0);
        }
        let (removed, _) = self.remove_oldest(w, None, |removed, _| removed >= excess)?;
        Ok(removed)
    }

    /// Counts `bytes` committed to `sessions` (`which` 0) or `by_age` (1)
    /// and asks for a rotation of its memtable once past the limit. The
    /// caller holds the writer lock, so one rotation is asked per memtable.
    fn committed(&self, w: &mut Writer, which: usize, bytes: u64) {
        w.written_since_tidy = true;
        w.unrotated[which] = w.unrotated[which].saturating_add(bytes);
        if w.unrotated[which] >= w.rotate_at[which] {
            w.unrotated[which] = 0;
            self.rotator.request(which);
        }
    }

    /// Rotates the memtable of `sessions` (`which` 0) or `by_age` (1). The
    /// caller holds the writer lock.
    fn rotate(&self, w: &mut Writer, which: usize) -> Result<(), StoreError> {
        w.unrotated[which] = 0;
        let keyspace = if which == 0 {
            &self.sessions
        } else {
            &self.by_age
        };
        keyspace
            .rotate_memtable()
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// After a quiet sync interval, compacts away what removals left, or
    /// flushes the memtables that sealed journals still wait for (see "Disk
    /// use").
    fn tidy_if_quiet(&self) -> Result<(), StoreError> {
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
    fn removed(&self, w: &mut Writer, n: u64) {
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

impl Writer {
    /// Moves the cursor forward to `to` (never back: see "Sweep cursor").
    fn advance_cursor(&mut self, to: Vec<u8>) {
        if to > self.scan_from {
            self.scan_from = to;
        }
    }
}

/// The smallest byte string after `key`: `key` ++ 0.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// How a new keyspace is made: fjall's defaults, with our memtable limit
/// and [`L0_TABLES_BEFORE_COMPACTION`]. fjall records both in the
/// database, so a store made by an earlier version keeps its own.
fn keyspace_options(max_memtable: u64) -> KeyspaceCreateOptions {
    let compaction =
        fjall::compaction::Leveled::default().with_l0_threshold(L0_TABLES_BEFORE_COMPACTION);
    KeyspaceCreateOptions::default()
        .max_memtable_size(max_memtable)
        .compaction_strategy(std::sync::Arc::new(compaction))
}

/// Opens the database, retrying every [`LOCK_RETRY_INTERVAL`] while another
/// process holds its lock, until `opts.lock_wait` has passed.
fn open_db_waiting(dir: &Path, opts: &OpenOptions) -> Result<Database, StoreError> {
    let start = Instant::now();
    loop {
        let result = Database::builder(dir)
            .cache_size(opts.block_cache_bytes)
            .worker_threads(WORKER_THREADS)
            .max_cached_files(Some(MAX_CACHED_FILES))
            .max_journaling_size(MAX_JOURNAL_BYTES)
            // The active journal is never deleted: sealing it once it holds
            // a write buffer's worth bounds the flushed bytes it keeps on
            // disk (64 MB by fjall's default, a third of a 100 000-session
            // cache; vendor/README.md).
            .journal_rotation_size(opts.write_buffer_bytes)
            .open();
        match result {
            Ok(db) => return Ok(db),
            Err(fjall::Error::Locked) => {
                let waited = start.elapsed();
                if waited >= opts.lock_wait {
                    return Err(StoreError::Locked {
                        path: dir.to_path_buf(),
                    });
                }
                std::thread::sleep(LOCK_RETRY_INTERVAL.min(opts.lock_wait - waited));
            }
            Err(e) => return Err(map_err(dir, e)),
        }
    }
}

/// Turns a fjall error into a [`StoreError`] (no fjall type leaves this
/// module). Errors that say the files cannot be read, whatever we wait for,
/// become [`StoreError::Unreadable`] (see [`classify_fjall`]).
fn map_err(path: &Path, e: fjall::Error) -> StoreError {
    let lasting = match classify_fjall(&e) {
        OpenFailure::Lasting(reason) => Some(reason),
        OpenFailure::Transient(_) => None,
    };
    match (e, lasting) {
        (fjall::Error::Locked, _) => StoreError::Locked {
            path: path.to_path_buf(),
        },
        (fjall::Error::Poisoned, _) => StoreError::Poisoned {
            path: path.to_path_buf(),
        },
        // lsm-tree's I/O errors too: a full disk met by a table write is
        // the same full disk.
        (fjall::Error::Io(source), None)
        | (fjall::Error::Storage(fjall::LsmError::Io(source)), None) => StoreError::Io {
            path: path.to_path_buf(),
            source,
        },
        (other, Some(reason)) => StoreError::Unreadable {
            path: path.to_path_buf(),
            reason,
            message: other.to_string(),
        },
        (other, None) => StoreError::Backend {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// Lasting or transient, for a fjall error (fjall 3's `Error` and
/// lsm-tree 3's, `vendor/fjall/src/error.rs`, `vendor/lsm-tree/src/error.rs`).
///
/// Lasting: whatever says the bytes on disk are not what fjall wrote or
/// can read: an unparsable or foreign `version` file (`InvalidVersion`),
/// failed decompression, checksums, trailers, headers and tags, a journal
/// that does not recover, invalid UTF-8 in a name, and `Unrecoverable`
/// (required files missing, or an unreadable archive header). I/O errors
/// are classified by [`classify_io`]: a table cut short reads as
/// `UnexpectedEof`. Transient: the lock (a previous process exiting), a
/// poisoned store (a failed write, so likely space), and anything fjall may
/// add later (its enums are non-exhaustive): an error we do not know is not
/// a reason to move a store away.
pub fn classify_fjall(e: &fjall::Error) -> OpenFailure {
    use fjall::Error as F;
    use fjall::LsmError as L;
    let corrupt = OpenFailure::Lasting(Lasting::Corrupt);
    match e {
        F::Io(io) => classify_io(io),
        F::Locked => OpenFailure::Transient(Transient::Locked),
        F::Poisoned => OpenFailure::Transient(Transient::NoSpace),
        F::InvalidVersion(_) => OpenFailure::Lasting(Lasting::Format),
        F::JournalRecovery(_)
        | F::Decompress(_)
        | F::InvalidTrailer
        | F::InvalidTag(_)
        | F::Unrecoverable => corrupt,
        F::Storage(lsm) => match lsm {
            L::Io(io) => classify_io(io),
            L::InvalidVersion(_) => OpenFailure::Lasting(Lasting::Format),
            L::Decompress(_)
            | L::Unrecoverable
            | L::ChecksumMismatch { .. }
            | L::InvalidTag(_)
            | L::InvalidTrailer
            | L::InvalidHeader(_)
            | L::Utf8(_) => corrupt,
            _ => OpenFailure::Transient(Transient::Other),
        },
        // Not at open (a keyspace deleted under us), or added later.
        _ => OpenFailure::Transient(Transient::Other),
    }
}

/// True when `id` is too long for fjall's keys (the cache's own, much lower
/// limit normally keeps such ids away).
fn id_too_long(id: &[u8]) -> bool {
    TS_LEN + id.len() > MAX_KEY_LEN
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(stored_at: u64, session: &[u8]) -> Entry {
        Entry {
            stored_at,
            session: bytes::Bytes::copy_from_slice(session),
        }
    }

    fn keep() -> OpenOptions {
        OpenOptions {
            empty_on_start: false,
            ..OpenOptions::default()
        }
    }

    fn open_in(tmp: &tempfile::TempDir) -> FjallStore {
        FjallStore::open(&tmp.path().join("c.fjall"), keep()).unwrap()
    }

    /// What we count towards a rotation is at least what fjall adds to its
    /// memtables, item by item, for every kind of write: otherwise fjall's
    /// own rotation fires first and floods its worker (fjall-rs/fjall#323).
    /// A flush finishing between the two readings only makes fjall's
    /// figure smaller.
    #[test]
    fn rotation_counts_at_least_what_fjall_puts_in_its_memtables() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open_in(&tmp);
        let counted = |s: &FjallStore| {
            let w = s.writer();
            w.unrotated[0] + w.unrotated[1]
        };
        let check = |what: &str, op: &dyn Fn(&FjallStore)| {
            let (ours0, theirs0) = (counted(&store), store.memtable_bytes());
            op(&store);
            let (ours1, theirs1) = (counted(&store), store.memtable_bytes());
            // A rotation in between resets our count: skip that sample.
            if ours1 >= ours0 {
                assert!(
                    ours1 - ours0 >= theirs1.saturating_sub(theirs0),
                    "{what}: we counted {} bytes, fjall {}",
                    ours1 - ours0,
                    theirs1.saturating_sub(theirs0)
                );
            }
        };
        for i in 0..200u64 {
            let id = format!("i{i}");
            check("insert, tiny", &|s| {
                s.put(id.as_bytes(), &entry(i, b"x"), 0).unwrap();
            });
            check("replace, newer", &|s| {
                s.put(id.as_bytes(), &entry(i + 1000, &[7; 3000]), 0)
                    .unwrap();
            });
            check("delete", &|s| {
                s.delete(id.as_bytes()).unwrap();
            });
        }
    }

    #[test]
    fn the_value_given_to_fjall_is_the_record() {
        for session in [&b""[..], b"x", &[9u8; 5000]] {
            let e = entry(0x0102_0304_0506_0708, session);
            assert_eq!(&record_value(&e)[..], &encode_record(&e)[..]);
        }
    }

    #[test]
    fn record_round_trip_and_layout() {
        let e = entry(0x0102_0304_0506_0708, b"abc");
        let rec = encode_record(&e);
        assert_eq!(rec, b"\x01\x02\x03\x04\x05\x06\x07\x08abc");
        assert_eq!(decode_record(&rec).unwrap(), e);
        assert_eq!(decode_record(&[0; 8]).unwrap(), entry(0, b""));
        assert_eq!(age_key(1, b"id"), b"\0\0\0\0\0\0\0\x01id");
        assert_eq!(session_key(b""), b"s");
    }

    #[test]
    fn short_record_is_malformed() {
        for len in 0..TS_LEN {
            let err = decode_record(&vec![0; len]).unwrap_err();
            assert!(matches!(err, StoreError::Malformed(_)), "{err}");
        }
    }

    #[test]
    fn malformed_record_is_reported_then_deleted_by_the_caller() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open_in(&tmp);
        s.put(b"ok", &entry(1, b"x"), 0).unwrap();
        s.sessions
            .insert(session_key(b"bad"), b"short".to_vec())
            .unwrap();
        // As counted and recorded at open.
        s.len.fetch_add(1, Ordering::Relaxed);
        s.presence.add(b"bad");
        assert!(matches!(s.get(b"bad"), Err(StoreError::Malformed(_))));
        assert!(s.delete(b"bad").unwrap());
        assert_eq!(s.get(b"bad").unwrap(), None);
        assert_eq!(s.len(), 1);
        assert_eq!(s.get(b"ok").unwrap(), Some(entry(1, b"x")));
    }

    #[test]
    fn every_change_keeps_one_index_key_per_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open_in(&tmp);
        let check = |s: &FjallStore| {
            assert_eq!(s.by_age.iter().count() as u64, s.len());
            assert_eq!(s.sessions.iter().count() as u64, s.len());
        };
        s.put(b"a", &entry(1, b"1"), 0).unwrap();
        s.put(b"a", &entry(2, b"2"), 0).unwrap();
        check(&s);
        s.put(b"a", &entry(2, b"3"), 0).unwrap();
        s.put(b"b", &entry(1, b""), 0).unwrap();
        check(&s);
        s.delete(b"a").unwrap();
        check(&s);
        s.put(b"c", &entry(0, b""), 0).unwrap();
        s.sweep_before(1, 1).unwrap();
        check(&s);
        s.evict_to(s.len() - 1).unwrap();
        check(&s);
        assert!(s.is_empty());
    }

    /// The presence record never calls absent an id the store holds, and
    /// after every kind of change holds exactly the ids the store holds:
    /// puts, replacements, deletes, sweeps, evictions under the bound, a
    /// clear, and both ways a kept store is reopened.
    #[test]
    fn presence_follows_every_change_and_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let held = |s: &FjallStore| -> Vec<Vec<u8>> {
            s.sessions
                .iter()
                .map(|g| g.key().unwrap()[1..].to_vec())
                .collect()
        };
        let check = |s: &FjallStore, probes: u32| {
            let ids = held(s);
            assert_eq!(s.presence.hashes(), ids.len(), "one hash per held id");
            for id in &ids {
                assert!(s.presence.may_hold(id), "held id {id:?} called absent");
                assert!(s.get(id).unwrap().is_some());
            }
            for i in 0..probes {
                let id = format!("id{i}").into_bytes();
                assert_eq!(s.presence.may_hold(&id), ids.contains(&id), "{i}");
            }
        };
        let s = open_in(&tmp);
        // 100 ids, each stored three times: two thirds are replacements.
        for i in 0..300u32 {
            let id = format!("id{}", i % 100);
            let put = s
                .put(id.as_bytes(), &entry(u64::from(i), b"s"), 150)
                .unwrap();
            assert_eq!(put.inserted, i < 100, "{i}");
        }
        assert_eq!(s.len(), 100);
        check(&s, 200);
        // 100 new ids under a bound of 150: the puts evict the oldest.
        for i in 100..200u32 {
            let id = format!("id{i}");
            s.put(id.as_bytes(), &entry(u64::from(i + 300), b"s"), 150)
                .unwrap();
        }
        assert_eq!(s.len(), 150);
        check(&s, 200);
        // A replacement of the oldest entry under a lowered bound: the put
        // evicts the very entry it replaces, then stores it anew.
        let oldest = s.by_age.first_key_value().unwrap().key().unwrap();
        let oldest_id = oldest[TS_LEN..].to_vec();
        let put = s.put(&oldest_id, &entry(1_000, b"t"), 120).unwrap();
        assert!(put.evicted > 0 && !put.inserted, "{put:?}");
        assert_eq!(s.len(), 120);
        check(&s, 200);
        for i in (0..200u32).step_by(7) {
            s.delete(format!("id{i}").as_bytes()).unwrap();
        }
        check(&s, 200);
        s.sweep_before(200, 40).unwrap();
        check(&s, 200);
        s.evict_to(50).unwrap();
        check(&s, 200);
        drop(s);
        // Rebuilt by the walk that counts the entries...
        let s = open_in(&tmp);
        assert_eq!(s.len(), 50);
        check(&s, 200);
        drop(s);
        // ... or from the age index when the count is known.
        let known = OpenOptions {
            known_entries: Some(50),
            ..keep()
        };
        let s = FjallStore::open(&tmp.path().join("c.fjall"), known).unwrap();
        check(&s, 200);
        s.clear().unwrap();
        check(&s, 200);
        s.put(b"id3", &entry(1, b"s"), 0).unwrap();
        check(&s, 200);
    }

    #[test]
    fn dangling_index_keys_are_dropped_without_counting() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open_in(&tmp);
        // Index keys with no record, with a record of another time, and too
        // short to hold a timestamp.
        s.by_age.insert(age_key(1, b"ghost"), Vec::new()).unwrap();
        s.put(b"moved", &entry(50, b"m"), 0).unwrap();
        s.by_age.insert(age_key(2, b"moved"), Vec::new()).unwrap();
        s.by_age.insert(b"\0".to_vec(), Vec::new()).unwrap();
        s.put(b"a", &entry(10, b"a"), 0).unwrap();
        s.put(b"b", &entry(20, b"b"), 0).unwrap();
        assert_eq!(s.len(), 3);
        // The three dangling keys sort first; eviction skips them.
        assert_eq!(s.evict_to(s.len() - 1).unwrap(), 1);
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.len(), 2);
        assert_eq!(s.by_age.iter().count(), 2);
        assert_eq!(s.get(b"moved").unwrap(), Some(entry(50, b"m")));
    }

    #[test]
    fn malformed_record_met_by_a_scan_is_removed_once() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open_in(&tmp);
        s.sessions.insert(session_key(b"bad"), vec![1, 2]).unwrap();
        s.by_age.insert(age_key(1, b"bad"), Vec::new()).unwrap();
        s.by_age.insert(age_key(2, b"bad"), Vec::new()).unwrap();
        s.len.fetch_add(1, Ordering::Relaxed); // as counted at open
        s.put(b"good", &entry(3, b""), 0).unwrap();
        let step = s.sweep_before(10, 10).unwrap();
        assert_eq!(
            step,
            SweepStep {
                removed: 2,
                more: false
            }
        );
        assert!(s.is_empty());
        assert_eq!(s.sessions.iter().count(), 0);
    }

    #[test]
    fn sweep_work_is_bounded_by_dangling_keys_too() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open_in(&tmp);
        for i in 0..5u8 {
            s.by_age.insert(age_key(1, &[i]), Vec::new()).unwrap();
        }
        s.put(b"real", &entry(2, b""), 0).unwrap();
        let step = s.sweep_before(10, 3).unwrap();
        assert_eq!(
            step,
            SweepStep {
                removed: 0,
                more: true
            }
        );
        let step = s.sweep_before(10, 3).unwrap();
        assert_eq!(
            step,
            SweepStep {
                removed: 1,
                more: false
            }
        );
        assert!(s.is_empty());
        assert_eq!(s.by_age.iter().count(), 0);
    }

    #[test]
    fn creates_the_directory_with_mode_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new.fjall");
        let s = FjallStore::open(&dir, keep()).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(s.path(), dir);
    }

    #[test]
    fn missing_parent_is_an_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("no/such/parent.fjall");
        let err = FjallStore::open(&dir, keep()).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
    }

    #[test]
    fn refuses_a_foreign_directory_and_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("smtpd_scache.db"), b"x").unwrap();
        let err = FjallStore::open(tmp.path(), keep()).unwrap_err();
        assert!(err.to_string().contains("holds no fjall database"), "{err}");
        assert!(!tmp.path().join("version").exists());
        let file = tmp.path().join("smtpd_scache.db");
        let err = FjallStore::open(&file, keep()).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn an_existing_empty_directory_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let s = FjallStore::open(tmp.path(), keep()).unwrap();
        s.put(b"a", &entry(1, b""), 0).unwrap();
        drop(s);
        let s = FjallStore::open(tmp.path(), keep()).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn flush_and_stats() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open_in(&tmp);
        s.put(b"a", &entry(1, &[7; 1000]), 0).unwrap();
        s.flush().unwrap();
        let st = s.stats();
        assert_eq!(st.entries, 1);
        assert!(st.bytes > 0, "{st:?}");
    }

    #[test]
    fn error_mapping_keeps_io_and_lock_apart() {
        let p = Path::new("/x");
        let io = map_err(p, fjall::Error::Io(std::io::Error::other("disk")));
        assert!(matches!(io, StoreError::Io { .. }));
        assert!(matches!(
            map_err(p, fjall::Error::Locked),
            StoreError::Locked { .. }
        ));
        let poisoned = map_err(p, fjall::Error::Poisoned);
        assert!(matches!(poisoned, StoreError::Poisoned { .. }));
    }

    #[test]
    fn fjall_errors_are_classified() {
        use crate::store::error::{Lasting, OpenFailure, Transient};
        use std::io::{Error as IoError, ErrorKind};
        let lasting = |r| OpenFailure::Lasting(r);
        let transient = |t| OpenFailure::Transient(t);
        let cases: Vec<(fjall::Error, OpenFailure)> = vec![
            (fjall::Error::InvalidVersion(None), lasting(Lasting::Format)),
            (fjall::Error::Unrecoverable, lasting(Lasting::Corrupt)),
            (fjall::Error::InvalidTrailer, lasting(Lasting::Corrupt)),
            (
                fjall::Error::JournalRecovery(fjall::JournalRecoveryError::ChecksumMismatch),
                lasting(Lasting::Corrupt),
            ),
            (
                fjall::Error::Storage(fjall::LsmError::InvalidHeader("Trailer")),
                lasting(Lasting::Corrupt),
            ),
            (
                fjall::Error::Storage(fjall::LsmError::InvalidVersion(9)),
                lasting(Lasting::Format),
            ),
            (
                fjall::Error::Storage(fjall::LsmError::Unrecoverable),
                lasting(Lasting::Corrupt),
            ),
            (
                fjall::Error::Storage(fjall::LsmError::Io(IoError::from(ErrorKind::UnexpectedEof))),
                lasting(Lasting::Corrupt),
            ),
            (
                fjall::Error::Io(IoError::from_raw_os_error(libc::ENOTDIR)),
                lasting(Lasting::NotAStore),
            ),
            (fjall::Error::Locked, transient(Transient::Locked)),
            (fjall::Error::Poisoned, transient(Transient::NoSpace)),
            (
                fjall::Error::Io(IoError::from_raw_os_error(libc::EACCES)),
                transient(Transient::Permission),
            ),
            (
                fjall::Error::Storage(fjall::LsmError::Io(IoError::from_raw_os_error(
                    libc::ENOSPC,
                ))),
                transient(Transient::NoSpace),
            ),
            (
                fjall::Error::Io(IoError::from_raw_os_error(libc::EMFILE)),
                transient(Transient::Descriptors),
            ),
            (
                fjall::Error::Io(IoError::from_raw_os_error(libc::EIO)),
                transient(Transient::Other),
            ),
            (fjall::Error::KeyspaceDeleted, transient(Transient::Other)),
        ];
        for (e, want) in cases {
            let shown = format!("{e:?}");
            assert_eq!(classify_fjall(&e), want, "{shown}");
            // The store error it becomes classifies the same.
            assert_eq!(map_err(Path::new("/x"), e).open_failure(), want, "{shown}");
        }
    }

    #[test]
    fn a_store_of_another_format_is_unreadable_and_an_old_one_is_adopted() {
        use crate::store::error::{Lasting, OpenFailure};
        let tmp = tempfile::tempdir().unwrap();
        let s = FjallStore::open(tmp.path(), keep()).unwrap();
        s.put(b"a", &entry(1, b"x"), 0).unwrap();
        drop(s);
        let format = tmp.path().join(formats::STORE_FORMAT_FILE);
        assert_eq!(
            std::fs::read_to_string(&format).unwrap(),
            "tlsmgr-store 1\n"
        );
        // Written before the file existed: adopted, data kept.
        std::fs::remove_file(&format).unwrap();
        let s = FjallStore::open(tmp.path(), keep()).unwrap();
        assert_eq!(s.len(), 1);
        drop(s);
        assert!(format.exists());
        for text in ["tlsmgr-store 2\n", "garbage"] {
            std::fs::write(&format, text).unwrap();
            let e = FjallStore::open(tmp.path(), keep()).unwrap_err();
            assert_eq!(
                e.open_failure(),
                OpenFailure::Lasting(Lasting::Version),
                "{e}"
            );
        }
    }

    #[test]
    fn only_paths_named_as_ours_are_not_stores() {
        use crate::store::error::{Lasting, OpenFailure, Transient};
        let tmp = tempfile::tempdir().unwrap();
        for (name, want) in [
            ("s.fjall", OpenFailure::Lasting(Lasting::NotAStore)),
            ("data", OpenFailure::Transient(Transient::Other)),
        ] {
            let p = tmp.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            let e = FjallStore::open(&p, keep()).unwrap_err();
            assert_eq!(e.open_failure(), want, "{name}: {e}");
        }
    }
}
