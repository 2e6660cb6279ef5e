//! A session cache's rules (spec §3), applied on the thread that read the
//! request: [`Cache`] is shared by every I/O thread and by its cache actor.
//!
//! - An entry is stale when `stored_at + timeout < now`; a stale hit is
//!   deleted and reported missing, and so is a malformed one.
//! - The number of entries never exceeds `tlsmgr_session_cache_max_entries`:
//!   the store evicts oldest-first before it inserts ([`Store::put`]).
//! - A cache id longer than [`MAX_CACHE_ID_LEN`] is never stored or looked
//!   up (checked here, and only here).
//! - With `*_tls_loglevel` at `TLS_LOG_CACHE` or more, each operation logs
//!   Postfix's cache lines.
//!
//! What the cache does *when* (open, reopen after a failure, periodic sync,
//! expiry sweeps, eviction to a lowered bound, close) is its actor's:
//! `actors::cache`. A failing store is taken out of service here
//! ([`Cache::take_down`]): every request then gets [`CacheDown`] at once (the
//! client sees ERR) until the actor has reopened the store and put it back
//! ([`Cache::put_up`]).
//!
//! A full disk is not a failure of the store: a write that finds no space
//! (`ENOSPC`, `EDQUOT`, `EFBIG`) starts a *full-disk episode*. The store
//! stays in service for lookups; updates and deletes get ERR at once,
//! without touching the store, until the actor has found room and reopened
//! it (fjall refuses writes after a failed one) without counting it again.
//! The episode is logged twice: one warning when it starts, one line when a
//! write succeeds again, with the number of writes refused meanwhile.

use crate::clock::SharedClock;
use crate::metrics::{LookupResult, Metrics, Removal};
use crate::protocol::CacheType;
use crate::store::{Entry, Store, StoreError, StoreLocation, SweepStep, MAX_CACHE_ID_LEN};
use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use slog::{info, warn, Logger};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The cache's store is not available; the request was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheDown;

/// Settings that a reload can change while the cache runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Sanitized timeout in seconds (> 0 for an enabled cache).
    pub timeout: u32,
    /// Maximum entries; 0 = unlimited.
    pub max_entries: u64,
    /// Log cache activity (`TLS_LOG_CACHE`).
    pub log_cache: bool,
}

/// A store in service.
pub type SharedStore = Arc<Box<dyn Store>>;

/// Called when a store is taken out of service, so that its owner reopens it.
pub type DownHook = Box<dyn Fn() + Send + Sync>;

/// State of a full-disk episode (see the module doc).
#[derive(Debug, Default)]
struct FullDisk {
    /// From the first write that found no space to the first that succeeds.
    on: AtomicBool,
    /// Writes get ERR without trying, until the store has been reopened.
    refusing: AtomicBool,
    /// Updates and deletes refused in this episode.
    refused: AtomicU64,
    /// When it began (the cache's clock, seconds).
    since: AtomicU64,
}

/// One session cache.
pub struct Cache {
    cache_type: CacheType,
    location: StoreLocation,
    store: ArcSwapOption<Box<dyn Store>>,
    limits: ArcSwap<CacheLimits>,
    clock: SharedClock,
    log: Logger,
    on_down: std::sync::OnceLock<DownHook>,
    /// Where lookups, updates, deletes and removals are counted.
    metrics: Arc<Metrics>,
    full: FullDisk,
    on_full: std::sync::OnceLock<DownHook>,
    #[cfg(feature = "test-hooks")]
    fault: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("cache_type", &self.cache_type)
            .field("location", &self.location)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

fn show_id(id: &[u8]) -> String {
    String::from_utf8_lossy(id).into_owned()
}

impl Cache {
    /// A cache with no store in service yet.
    pub fn new(
        cache_type: CacheType,
        location: StoreLocation,
        limits: CacheLimits,
        clock: SharedClock,
        log: Logger,
    ) -> Self {
        Cache {
            cache_type,
            location,
            store: ArcSwapOption::empty(),
            limits: ArcSwap::from_pointee(limits),
            clock,
            log,
            on_down: std::sync::OnceLock::new(),
            metrics: Arc::new(Metrics::default()),
            full: FullDisk::default(),
            on_full: std::sync::OnceLock::new(),
            #[cfg(feature = "test-hooks")]
            fault: None,
        }
    }

    /// The cache's clock, seconds since the epoch.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The counters this cache counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts into `metrics` (the daemon's) instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Test hook: while the flag is set, every store call fails as if the
    /// disk had gone away.
    #[cfg(feature = "test-hooks")]
    pub fn with_fault_injection(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.fault = Some(flag);
        self
    }

    /// Which cache this is.
    pub fn cache_type(&self) -> CacheType {
        self.cache_type
    }

    /// Where it is stored.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// The limits in force.
    pub fn limits(&self) -> CacheLimits {
        **self.limits.load()
    }

    /// New limits, in force from the next request. Eviction down to a
    /// lowered bound is the actor's job ([`Cache::evict_to_bound`]).
    pub fn set_limits(&self, limits: CacheLimits) {
        self.limits.store(Arc::new(limits));
    }

    /// Sets what is called when a store is taken out of service (once).
    pub fn on_down(&self, hook: DownHook) {
        let _ = self.on_down.set(hook);
    }

    /// Sets what is called at each write that finds the disk full (once),
    /// so that the owner retries later ([`Cache::reopen_after_full_done`]).
    pub fn on_full(&self, hook: DownHook) {
        let _ = self.on_full.set(hook);
    }

    /// True while writes are refused for a full disk.
    pub fn writes_refused(&self) -> bool {
        self.full.refusing.load(Ordering::Relaxed)
    }

    /// Ends the refusal of writes after a full disk: the owner found room
    /// and reopened the store (with the count the old one had). The
    /// episode itself ends with the first write that succeeds.
    pub fn reopen_after_full_done(&self) {
        self.full.refusing.store(false, Ordering::Relaxed);
    }

    /// A write found no space: refuse writes from now on, log the start of
    /// the episode once, and have the owner retry.
    fn out_of_space(&self, what: &str, why: &StoreError) {
        self.full.refusing.store(true, Ordering::Relaxed);
        if !self.full.on.swap(true, Ordering::Relaxed) {
            self.full.refused.store(0, Ordering::Relaxed);
            self.full.since.store(self.clock.now(), Ordering::Relaxed);
            warn!(
                self.log,
                "{} TLS cache: {} failed: {} -- updates get ERR until there is room, lookups go on",
                self.cache_type,
                what,
                why
            );
        }
        if let Some(hook) = self.on_full.get() {
            hook();
        }
    }

    /// Refuses a write during a full-disk episode (counted).
    fn refuse_write(&self) -> Result<(), CacheDown> {
        if self.full.refusing.load(Ordering::Relaxed) {
            self.full.refused.fetch_add(1, Ordering::Relaxed);
            return Err(CacheDown);
        }
        Ok(())
    }

    /// A write succeeded: a full-disk episode, if one was on, is over.
    fn wrote(&self) {
        if self.full.on.load(Ordering::Relaxed) && self.full.on.swap(false, Ordering::Relaxed) {
            let secs = self
                .clock
                .now()
                .saturating_sub(self.full.since.load(Ordering::Relaxed));
            info!(
                self.log,
                "{} TLS cache: there is room again: {} updates refused in {}s",
                self.cache_type,
                self.full.refused.load(Ordering::Relaxed),
                secs
            );
        }
    }

    /// True while a store is in service.
    pub fn is_up(&self) -> bool {
        self.store.load().is_some()
    }

    /// The store in service, if any.
    pub fn store(&self) -> Option<SharedStore> {
        self.store.load_full()
    }

    /// Puts a freshly opened store in service.
    pub fn put_up(&self, store: Box<dyn Store>) {
        self.store.store(Some(Arc::new(store)));
    }

    /// Takes `failed` out of service (if it still is) after `what` failed
    /// with `why`: one warning, and the owner is told to reopen. A store
    /// that another thread already took down, or that was replaced since,
    /// is left alone, so a burst of failures logs one line.
    pub fn take_down(&self, failed: &SharedStore, what: &str, why: &str) {
        let prev = self.store.compare_and_swap(failed, None);
        let was_current = prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, failed));
        if was_current {
            warn!(
                self.log,
                "{} TLS cache: {} failed: {} -- restarting the cache", self.cache_type, what, why
            );
            if let Some(hook) = self.on_down.get() {
                hook();
            }
        }
    }

    /// Takes the store out of service for a close (reload, shutdown) and
    /// returns it; requests get [`CacheDown`] from now on.
    pub fn take(&self) -> Option<SharedStore> {
        self.store.swap(None)
    }

    /// Runs `op` on the store in service. A store error (or a panic inside
    /// the store) takes it out of service.
    fn with_store<T>(
        &self,
        what: &str,
        op: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, CacheDown> {
        let store = self.store.load_full().ok_or(CacheDown)?;
        #[cfg(feature = "test-hooks")]
        if self
            .fault
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
        {
            self.take_down(&store, what, "injected fault");
            return Err(CacheDown);
        }
        match catch_unwind(AssertUnwindSafe(|| op(store.as_ref().as_ref()))) {
            Ok(Ok(v)) => Ok(v),
            // During a full-disk episode a write that raced with the first
            // failure finds fjall refusing writes: part of the episode too.
            Ok(Err(e)) if e.is_out_of_space() || self.full.on.load(Ordering::Relaxed) => {
                self.out_of_space(what, &e);
                Err(CacheDown)
            }
            Ok(Err(e)) => {
                self.take_down(&store, what, &e.to_string());
                Err(CacheDown)
            }
            Err(_) => {
                self.take_down(&store, what, "panic in the store");
                Err(CacheDown)
            }
        }
    }

    fn is_stale(timeout: u32, e: &Entry, now: u64) -> bool {
        e.stored_at.saturating_add(u64::from(timeout)) < now
    }

    /// `lookup`: the session for `id` if it is there and fresh.
    pub fn lookup(&self, id: &[u8]) -> Result<Option<Bytes>, CacheDown> {
        let limits = self.limits();
        if limits.log_cache {
            info!(
                self.log,
                "lookup {} session id={}",
                self.cache_type,
                show_id(id)
            );
        }
        if id.len() > MAX_CACHE_ID_LEN {
            self.metrics
                .cache_lookup(self.cache_type, LookupResult::Miss);
            return Ok(None);
        }
        let refusing = self.writes_refused();
        let entry = self.with_store("lookup", |s| match s.get(id) {
            Err(StoreError::Malformed(_)) => {
                if !refusing {
                    s.delete(id)?;
                }
                Ok(None)
            }
            other => other,
        })?;
        let Some(entry) = entry else {
            self.metrics
                .cache_lookup(self.cache_type, LookupResult::Miss);
            return Ok(None);
        };
        if limits.log_cache {
            info!(
                self.log,
                "read {} TLS cache entry {}: time={} [data {} bytes]",
                self.cache_type,
                show_id(id),
                entry.stored_at,
                entry.session.len()
            );
        }
        if Self::is_stale(limits.timeout, &entry, self.clock.now()) {
            // On a full disk the stale entry stays until the sweep after.
            if !self.writes_refused() {
                self.with_store("delete", |s| s.delete(id))?;
                self.metrics
                    .cache_removed(self.cache_type, Removal::Expired, 1);
            }
            self.metrics
                .cache_lookup(self.cache_type, LookupResult::Expired);
            return Ok(None);
        }
        self.metrics
            .cache_lookup(self.cache_type, LookupResult::Hit);
        Ok(Some(entry.session))
    }

    /// `update`: stores `session` under `id`, evicting the oldest entries
    /// first when the cache is full.
    pub fn update(&self, id: &[u8], session: &bytes::Bytes) -> Result<(), CacheDown> {
        let limits = self.limits();
        let now = self.clock.now();
        if limits.log_cache {
            info!(
                self.log,
                "put {} session id={} [data {} bytes]",
                self.cache_type,
                show_id(id),
                session.len()
            );
            info!(
                self.log,
                "write {} TLS cache entry {}: time={} [data {} bytes]",
                self.cache_type,
                show_id(id),
                now,
                session.len()
            );
        }
        if id.len() > MAX_CACHE_ID_LEN {
            warn!(
                self.log,
                "{} TLS cache: cache id of {} bytes is longer than {} -- not stored",
                self.cache_type,
                id.len(),
                MAX_CACHE_ID_LEN
            );
            return Err(CacheDown);
        }
        let entry = Entry {
            stored_at: now,
            session: session.clone(),
        };
        self.refuse_write()?;
        let put = self.with_store("update", |s| s.put(id, &entry, limits.max_entries))?;
        self.wrote();
        // A replaced entry is a write too.
        self.metrics.cache_update(self.cache_type);
        self.metrics
            .cache_removed(self.cache_type, Removal::Evicted, put.evicted);
        Ok(())
    }

    /// Stores a session found in the shared store, with the time it was
    /// first stored there, so that it expires here when it does there.
    pub fn fill(&self, id: &[u8], stored_at: u64, session: &[u8]) -> Result<(), CacheDown> {
        if id.len() > MAX_CACHE_ID_LEN {
            return Err(CacheDown);
        }
        let limits = self.limits();
        let entry = Entry {
            stored_at,
            session: bytes::Bytes::copy_from_slice(session),
        };
        self.with_store("update", |s| s.put(id, &entry, limits.max_entries))
            .map(|_| ())
    }

    /// Whether an entry stored at `stored_at` is still fresh now.
    pub fn fresh(&self, stored_at: u64) -> bool {
        stored_at.saturating_add(u64::from(self.limits().timeout)) >= self.clock.now()
    }

    /// `delete`: true if there was an entry for `id`.
    pub fn delete(&self, id: &[u8]) -> Result<bool, CacheDown> {
        if self.limits().log_cache {
            info!(
                self.log,
                "delete {} session id={}",
                self.cache_type,
                show_id(id)
            );
        }
        if id.len() > MAX_CACHE_ID_LEN {
            return Ok(false);
        }
        self.refuse_write()?;
        let found = self.with_store("delete", |s| s.delete(id))?;
        self.wrote();
        if found {
            self.metrics.cache_delete(self.cache_type);
        }
        Ok(found)
    }

    /// One bounded expiry step: removes up to `limit` stale entries.
    pub fn sweep_step(&self, limit: usize) -> Result<SweepStep, CacheDown> {
        // stale iff stored_at + timeout < now, i.e. stored_at < now - timeout.
        let cutoff = self
            .clock
            .now()
            .saturating_sub(u64::from(self.limits().timeout));
        if self.writes_refused() {
            return Err(CacheDown);
        }
        let step = self.with_store("expiry scan", |s| s.sweep_before(cutoff, limit))?;
        self.metrics
            .cache_removed(self.cache_type, Removal::Expired, step.removed as u64);
        Ok(step)
    }

    /// Evicts down to the bound in force (after it was lowered).
    pub fn evict_to_bound(&self) -> Result<u64, CacheDown> {
        match self.limits().max_entries {
            0 => Ok(0),
            _ if self.writes_refused() => Err(CacheDown),
            max => {
                let n = self.with_store("eviction", |s| s.evict_to(max))?;
                self.metrics
                    .cache_removed(self.cache_type, Removal::Evicted, n);
                Ok(n)
            }
        }
    }

    /// Empties the cache (`tlsmgr cache purge`); returns how many entries
    /// there were.
    pub fn purge(&self) -> Result<u64, CacheDown> {
        self.refuse_write()?;
        let n = self.with_store("purge", |s| {
            let n = s.len();
            s.clear()?;
            Ok(n)
        })?;
        self.wrote();
        Ok(n)
    }

    /// Makes completed writes durable against a power loss, then lets the
    /// store tidy its disk ([`Store::tidy`]).
    pub fn sync(&self) -> Result<(), CacheDown> {
        if self.writes_refused() {
            return Err(CacheDown);
        }
        self.with_store("sync", |s| {
            s.flush()?;
            s.tidy()
        })
    }

    /// Entry count, or [`CacheDown`].
    pub fn entries(&self) -> Result<u64, CacheDown> {
        self.store.load().as_ref().map(|s| s.len()).ok_or(CacheDown)
    }
}
