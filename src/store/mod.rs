//! Session-cache storage: the [`Store`] trait and its backends.
//!
//! - [`memory`]: in-process, for `memory:` databases and tests.
//! - [`fjall`](mod@self::fjall): the default, on-disk backend (fjall LSM tree).
//! - [`location`]: how a main.cf database string (`btree:/path`) becomes a
//!   backend and a path, and why it never collides with stock Postfix files.
//! - [`error`]: what a store fails with ([`StoreError`]).
//! - [`presence`]: which ids a store holds, in memory, so misses skip the disk.
//! - [`recovery`]: setting aside a store that cannot be read.
//!
//! A store keeps, per cache id, the time the entry was stored and the session
//! bytes. It is shared: every I/O thread calls it directly through `&self`
//! (the data path never waits on a mailbox), so each backend makes its own
//! operations atomic. It is bounded: [`Store::put`] takes the maximum entry
//! count and evicts oldest-first *before* inserting, under the backend's
//! write lock, so the count never exceeds the bound, whatever the number of
//! writers. Expiry is the caller's rule (spec §3: stale iff
//! `stored_at + timeout < now`, see `cache`); the store only offers
//! "remove entries stored before `cutoff`" in bounded steps.
//!
//! What a store does *not* check is the caller's: the cache-id length limit
//! ([`MAX_CACHE_ID_LEN`]) is enforced once, in `cache`.

pub mod error;
pub mod fjall;
pub mod location;
pub mod memory;
pub mod presence;
pub mod recovery;

pub use error::StoreError;
pub use location::{Backend, StoreLocation};

use std::time::Duration;

/// The longest cache id a cache accepts, in bytes. Postfix's ids are well
/// under 1 KiB (a hex session id plus service name and version, or a
/// next-hop description plus a SHA-256 hex digest); the bound keeps fjall
/// keys (`8 + id` bytes in the age index) far below fjall's 64 KiB key limit.
pub const MAX_CACHE_ID_LEN: usize = 16 * 1024;

/// One cached session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the entry was stored, seconds since the epoch.
    pub stored_at: u64,
    /// The session bytes, as the client sent them (DER `SSL_SESSION`): a
    /// handle on the decoded request's buffer, so storing copies it only
    /// into the store itself.
    pub session: bytes::Bytes,
}

/// The result of one bounded expiry step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepStep {
    /// Entries removed in this step.
    pub removed: usize,
    /// True when the step stopped at its limit and more stale entries may remain.
    pub more: bool,
}

/// What a [`Store::put`] did besides storing the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PutOutcome {
    /// True when the id was new (not a replacement).
    pub inserted: bool,
    /// Entries evicted to make room under the bound.
    pub evicted: u64,
}

/// Size figures of a store, for statistics and benches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Number of entries.
    pub entries: u64,
    /// Bytes used: on disk for file stores, key + value bytes for memory.
    pub bytes: u64,
}

/// How to open a store. Memory stores ignore everything but nothing is
/// kept for them anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOptions {
    /// Remove every entry after opening, as Postfix does with every cache at
    /// every start.
    pub empty_on_start: bool,
    /// How long to wait for a database still locked by another process (a
    /// previous tlsmgr finishing its exit during a restart). Zero means one
    /// attempt; fjall itself retries a lock for about 200 ms per attempt.
    pub lock_wait: Duration,
    /// fjall's block cache, bytes (`tlsmgr_store_block_cache_size`).
    pub block_cache_bytes: u64,
    /// Memtable bytes, both keyspaces together, before they are written out
    /// as tables (`tlsmgr_store_write_buffer_size`).
    pub write_buffer_bytes: u64,
    /// The entry count, when this process knows it: a reopen after a
    /// failed write (a full disk) passes the count the closed store had, so
    /// that the store is not counted again, entry by entry, at every retry.
    /// `None` counts at open.
    pub known_entries: Option<u64>,
}

/// Default of [`OpenOptions::block_cache_bytes`]: enough for the index and
/// filter blocks of a 100 000-entry cache; sessions themselves are read
/// once per resumption, so caching them buys little.
pub const DEFAULT_BLOCK_CACHE_BYTES: u64 = 2 * 1024 * 1024;

/// Default of [`OpenOptions::write_buffer_bytes`]: memtables are written out
/// as tables when they reach this size together.
pub const DEFAULT_WRITE_BUFFER_BYTES: u64 = 8 * 1024 * 1024;

impl Default for OpenOptions {
    /// Postfix's behaviour: empty at start, no waiting for a lock.
    fn default() -> Self {
        OpenOptions {
            empty_on_start: true,
            lock_wait: Duration::ZERO,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            known_entries: None,
        }
    }
}

/// A session-cache store, shared by every thread that serves requests.
/// Calls may block on disk I/O for as long as a write to the OS takes;
/// [`Store::flush`] (an fsync) and [`Store::sweep_before`] loops belong on
/// the cache actor's thread, not on an I/O thread.
pub trait Store: Send + Sync {
    /// The entry for `id`, if any (stale or not: expiry is the caller's rule).
    fn get(&self, id: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// Stores or replaces the entry for `id`. When `id` is new and the store
    /// already holds `max_entries` entries (0 = no bound), the oldest are
    /// evicted first, atomically with the insert as seen by other callers.
    fn put(&self, id: &[u8], entry: &Entry, max_entries: u64) -> Result<PutOutcome, StoreError>;
    /// Removes the entry for `id`; true if there was one.
    fn delete(&self, id: &[u8]) -> Result<bool, StoreError>;
    /// Removes up to `limit` entries with `stored_at < cutoff`, oldest first.
    fn sweep_before(&self, cutoff: u64, limit: usize) -> Result<SweepStep, StoreError>;
    /// Removes oldest entries until at most `max_entries` remain; returns how
    /// many went.
    fn evict_to(&self, max_entries: u64) -> Result<u64, StoreError>;
    /// Number of entries (exact).
    fn len(&self) -> u64;
    /// True when the store holds no entry.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entry count and bytes used.
    fn stats(&self) -> StoreStats;
    /// Removes every entry.
    fn clear(&self) -> Result<(), StoreError>;
    /// Makes every completed write durable against a power loss (fsync).
    /// Completed writes already survive a crash of the process.
    fn flush(&self) -> Result<(), StoreError>;
    /// Upkeep at every periodic sync, after [`Store::flush`]: gives back
    /// disk space the backend no longer needs. Not called at shutdown, where
    /// it would only delay the exit. Nothing to do by default.
    fn tidy(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Calls `f` with every entry the store can still read, to carry them
    /// over into another store: the cache actor does it when the store's
    /// directory was removed under the daemon, whose open files still
    /// read. Returns how many entries could not be read and were skipped.
    fn for_each_entry(&self, f: &mut dyn FnMut(&[u8], Entry)) -> u64;
}
