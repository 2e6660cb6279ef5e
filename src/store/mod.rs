//! Session-cache storage: the [`Store`] trait and its backends.
//!
//! - [`memory`]: in-process, for `memory:` databases and tests.
//! - [`fjall`](mod@self::fjall): the default, on-disk backend (fjall LSM tree).
//! - [`location`]: how a main.cf database string (`btree:/path`) becomes a
//!   backend and a path, and why it never collides with stock Postfix files.
//!
//! A store keeps, per cache id, the time the entry was stored and the session
//! bytes. It is bounded: [`Store::evict_oldest`] removes entries oldest-first,
//! which the cache actor uses to hold the count at `max_entries`. Expiry is the
//! caller's rule (spec §3: stale iff `stored_at + timeout < now`); the store
//! only offers "remove entries stored before `cutoff`" in bounded steps.

pub mod fjall;
pub mod location;
pub mod memory;

pub use crate::error::StoreError;
pub use location::{Backend, StoreLocation};

/// One cached session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the entry was stored, seconds since the epoch.
    pub stored_at: u64,
    /// The session bytes, as the client sent them (DER `SSL_SESSION`).
    pub session: Vec<u8>,
}

/// The result of one bounded expiry step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepStep {
    /// Entries removed in this step.
    pub removed: usize,
    /// True when the step stopped at its limit and more stale entries may remain.
    pub more: bool,
}

/// Size figures of a store, for statistics and benches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Number of entries.
    pub entries: u64,
    /// Bytes used: on disk for file stores, key + value bytes for memory.
    pub bytes: u64,
}

/// A session-cache store. Implementations are used from one thread at a
/// time (the cache actor's); calls may block on disk I/O.
pub trait Store: Send {
    /// The entry for `id`, if any (stale or not: expiry is the caller's rule).
    fn get(&mut self, id: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// Stores or replaces the entry for `id`.
    fn put(&mut self, id: &[u8], entry: &Entry) -> Result<(), StoreError>;
    /// Removes the entry for `id`; true if there was one.
    fn delete(&mut self, id: &[u8]) -> Result<bool, StoreError>;
    /// Removes up to `limit` entries with `stored_at < cutoff`, oldest first.
    fn sweep_before(&mut self, cutoff: u64, limit: usize) -> Result<SweepStep, StoreError>;
    /// Removes the `n` oldest entries (by `stored_at`, ties by id); returns how many.
    fn evict_oldest(&mut self, n: u64) -> Result<u64, StoreError>;
    /// Number of entries (exact).
    fn len(&self) -> u64;
    /// True when the store holds no entry.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entry count and bytes used.
    fn stats(&self) -> StoreStats;
    /// Removes every entry.
    fn clear(&mut self) -> Result<(), StoreError>;
    /// Makes every completed write durable (called at shutdown and periodically).
    fn flush(&mut self) -> Result<(), StoreError>;
}
