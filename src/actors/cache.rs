//! The cache actor: *when* things happen to one session cache. What they do
//! is `cache::Cache`'s, which the I/O threads call directly.
//!
//! Each enabled cache gets its own actor on its own arbiter thread, because
//! everything it does blocks on disk I/O: opening the store (and waiting for
//! a previous process's lock), reopening it after a failure, the periodic
//! sync (`tlsmgr_session_cache_sync_interval`), the expiry sweep (at start
//! and every `timeout`, spec §2.4, in steps of [`SWEEP_STEP`] entries so the
//! store's writer lock is never held long), eviction down to a lowered bound,
//! and the final flush and close.
//!
//! Failure handling: when a request finds the store failing, the cache takes
//! it out of service and nudges this actor ([`Reopen`]); requests get ERR at
//! once meanwhile. The actor reopens the store at once and then, while it
//! fails, after [`REOPEN_FIRST`] doubling to [`REOPEN_MAX`]: a store that
//! comes back soon serves again soon, one that stays away costs little. A
//! failed open is logged once per cause, not at every retry.
//!
//! A store whose directory is removed or replaced under the running daemon
//! (`rm -rf`, a restore from backup) keeps answering from its open files,
//! unlinked, until fjall needs a new file, and all of it is gone at the
//! next start. So every sync tick compares the directory at the store's
//! path with the one opened (device and inode, taken at open). When they
//! differ, the store is taken out of service, a new one is opened at the
//! path (through the same steps as any open: a path that is now not a store
//! is set aside), the entries the old handle still reads are carried over
//! into it (entries written to the new store meanwhile win), and the old
//! handle is closed, with one warning and a `removed` store reset. A
//! store that failed before the tick noticed is checked the same way
//! before it is reopened.
//!
//! A store that cannot be read for a lasting reason (corrupt files, an
//! unknown or other format, a path that is not a store: see
//! `store::error::Lasting`) is not retried: it is set aside
//! (`store::recovery`) and a fresh store serves at once, with one warning.
//! A session cache only saves full handshakes, and stock Postfix empties
//! its caches at every start anyway.
//!
//! A full disk ([`DiskFull`], see `cache`'s module doc) is retried with a
//! backoff instead, from [`FULL_RETRY_FIRST`] doubling to
//! [`FULL_RETRY_MAX`]: once the file system has [`FULL_RETRY_MIN_FREE`]
//! bytes free, the store is reopened with the count it had (no recount),
//! and writes are let through again. Nothing is logged per retry.

use crate::cache::{Cache, CacheLimits, SharedStore};
use crate::store::error::{Lasting, OpenFailure};
use crate::store::{recovery, OpenOptions, Store, StoreLocation, StoreStats};
use actix::prelude::*;
use slog::{debug, info, warn, Logger};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// First wait before a down store is tried again.
pub const REOPEN_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a down store.
pub const REOPEN_MAX: Duration = Duration::from_secs(30);

/// How long carrying entries over waits for requests still using the old
/// store: their writes must be in it before it is read.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

/// First wait before a full disk is looked at again.
pub const FULL_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two looks at a full disk.
pub const FULL_RETRY_MAX: Duration = Duration::from_secs(30);
/// Free bytes the store's file system needs before writes are tried again
/// (a journal record and a table flush must fit).
pub const FULL_RETRY_MIN_FREE: u64 = crate::store::error::LOW_SPACE;

/// Entries removed per expiry step.
pub const SWEEP_STEP: usize = 64;

/// The actor.
pub struct CacheActor {
    cache: Arc<Cache>,
    open_options: OpenOptions,
    sync_interval: Duration,
    log: Logger,
    opened_once: bool,
    timers: Vec<SpawnHandle>,
    /// The next wait of a full-disk retry; `None` when none is scheduled.
    full_retry: Option<Duration>,
    /// The entry count of the store closed for a full-disk retry, for the
    /// reopen (no recount).
    full_count: Option<u64>,
    /// The cause of the last failed open, logged once until it changes or
    /// an open succeeds.
    last_failure: Option<OpenFailure>,
    /// A store set aside was replaced by a fresh one that could not be
    /// read either: lasting causes are then retried like transient ones
    /// until an open succeeds, rather than setting a store aside at every
    /// retry.
    fresh_failed: bool,
    /// The next wait between two tries of a down store.
    reopen_wait: Duration,
    /// Reopen ticks ([`REOPEN_FIRST`] each) left before the next try.
    reopen_in: u32,
    /// Device and inode of the store's directory, taken when it opened.
    identity: Option<(u64, u64)>,
    /// A handle on the store in service, so that one which failed because
    /// its directory went away can still be read; dropped before any
    /// reopen otherwise (its lock must be released).
    serving: Option<SharedStore>,
    /// A store whose directory went away, waiting for a new store to take
    /// its entries.
    orphan: Option<(SharedStore, Gone)>,
}

/// What happened to a store's directory under the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// Nothing is at the path.
    Removed,
    /// Something else is.
    Replaced,
}

impl Gone {
    fn as_str(self) -> &'static str {
        match self {
            Gone::Removed => "removed",
            Gone::Replaced => "replaced",
        }
    }
}

/// Device and inode of what is at `path` (not following a symlink).
fn identity_of(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))
}

/// A failed open, classified.
struct FailedOpen {
    kind: OpenFailure,
    message: String,
}

impl CacheActor {
    /// A new actor for `cache`; the store is opened when the actor starts.
    /// The first open waits up to `open_options.lock_wait` for a store still
    /// held by an exiting process; later reopens do not wait.
    pub fn new(
        cache: Arc<Cache>,
        open_options: OpenOptions,
        sync_interval: Duration,
        log: Logger,
    ) -> Self {
        CacheActor {
            cache,
            open_options,
            sync_interval,
            log,
            opened_once: false,
            timers: Vec::new(),
            full_retry: None,
            full_count: None,
            last_failure: None,
            fresh_failed: false,
            reopen_wait: REOPEN_FIRST,
            reopen_in: 0,
            identity: None,
            serving: None,
            orphan: None,
        }
    }

    /// Whether the store's directory is still the one opened; `None` when
    /// there is nothing to compare or the path cannot be looked at now.
    fn gone(&self) -> Option<Gone> {
        let (Some(opened), Some(path)) = (self.identity, self.cache.location().path()) else {
            return None;
        };
        match identity_of(path) {
            Ok(now) if now == opened => None,
            Ok(_) => Some(Gone::Replaced),
            // ENOTDIR: a parent directory was replaced by a file.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
            {
                Some(Gone::Removed)
            }
            Err(_) => None,
        }
    }

    /// The sync tick's check: a store in service whose directory went away
    /// is replaced by a new one at its path, with its entries.
    fn check_store_path(&mut self) {
        if !self.cache.is_up() || self.cache.writes_refused() {
            return;
        }
        let Some(gone) = self.gone() else {
            return;
        };
        let Some(old) = self.cache.take() else {
            return;
        };
        self.serving = None;
        self.identity = None;
        self.orphan = Some((old, gone));
        self.cache
            .metrics()
            .store_reset(self.cache.cache_type(), Lasting::Removed);
        self.open_store();
        if let Some((_, gone)) = &self.orphan {
            warn!(
                self.log,
                "{} TLS cache: store {} ({}) was {} under the daemon; no new store could be opened yet, its entries are kept until one opens",
                self.cache.cache_type(),
                self.cache.location(),
                self.cache
                    .location()
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                gone.as_str()
            );
        }
    }

    /// Copies what the orphaned store still reads into the store now in
    /// service, then closes the orphan, with one warning.
    fn carry_over(&mut self) {
        let Some((old, gone)) = self.orphan.take() else {
            return;
        };
        let Some(new) = self.cache.store() else {
            self.orphan = Some((old, gone));
            return;
        };
        // Requests that took the old store before it left service may
        // still be writing to it: an update they acknowledge must be read.
        let deadline = std::time::Instant::now() + IN_FLIGHT_WAIT;
        while std::sync::Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (mut carried, mut newer, mut stale, mut failed) = (0u64, 0u64, 0u64, 0u64);
        let cache = &self.cache;
        let unreadable = old.for_each_entry(&mut |id, entry| {
            if !cache.fresh(entry.stored_at) {
                stale += 1;
            } else if matches!(new.get(id), Ok(Some(_))) {
                // Written to the new store since it opened: newer.
                newer += 1;
            } else if cache.fill(id, entry.stored_at, &entry.session).is_ok() {
                carried += 1;
            } else {
                failed += 1;
            }
        });
        drop(new);
        // The last handle: closes the old store's files.
        drop(old);
        let path = self
            .cache
            .location()
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        warn!(
            self.log,
            "{} TLS cache: store {} ({}) was {} under the daemon; started a new store there and carried over {} entries ({} unreadable, {} not written, {} expired, {} newer in the new store)",
            self.cache.cache_type(),
            self.cache.location(),
            path,
            gone.as_str(),
            carried,
            unreadable,
            failed,
            stale,
            newer
        );
    }

    fn open_store(&mut self) {
        if self.cache.is_up() {
            return;
        }
        // The store that failed, if its directory went away meanwhile, is
        // read once a new one opens; otherwise it is closed before the
        // open, which needs its lock.
        if let Some(prev) = self.serving.take() {
            if self.orphan.is_none() {
                if let Some(gone) = self.gone() {
                    self.orphan = Some((prev, gone));
                    self.cache
                        .metrics()
                        .store_reset(self.cache.cache_type(), Lasting::Removed);
                }
            }
        }
        self.identity = None;
        let mut opts = self.open_options.clone();
        if self.opened_once {
            // Only the first open clears (empty-on-start) and waits for a
            // previous process; a reopen after a failure must not lose data
            // or hold up requests.
            opts.empty_on_start = false;
            opts.lock_wait = Duration::ZERO;
        }
        // During a full-disk episode: no recount, and no line per retry.
        let quiet = self.cache.writes_refused();
        if quiet {
            opts.known_entries = self.full_count;
        }
        let ct = self.cache.cache_type();
        let location = self.cache.location().clone();
        let failure = match Self::try_open(&location, opts.clone()) {
            Ok(store) => {
                self.full_count = None;
                if !quiet && (self.cache.limits().log_cache || self.opened_once) {
                    info!(self.log, "open {} TLS cache {}", ct, location);
                }
                self.serve(store);
                return;
            }
            Err(_) if quiet => return,
            Err(failure) => failure,
        };
        match failure.kind {
            OpenFailure::Lasting(reason) if !self.fresh_failed => {
                self.replace_store(reason, &failure.message, opts);
            }
            kind => self.report_failure(kind, &failure.message),
        }
    }

    /// Opens the store at `location`; a panic in the backend is taken as
    /// corrupt files (fjall asserts on some of what it reads), and kept
    /// from ending the actor.
    fn try_open(location: &StoreLocation, opts: OpenOptions) -> Result<Box<dyn Store>, FailedOpen> {
        match catch_unwind(AssertUnwindSafe(|| location.open(opts))) {
            Ok(Ok(store)) => Ok(store),
            Ok(Err(e)) => Err(FailedOpen {
                kind: e.open_failure(),
                message: e.to_string(),
            }),
            Err(_) => Err(FailedOpen {
                kind: OpenFailure::Lasting(Lasting::Corrupt),
                message: "the store panicked while opening".into(),
            }),
        }
    }

    /// Puts a freshly opened store in service.
    fn serve(&mut self, store: Box<dyn Store>) {
        self.last_failure = None;
        self.fresh_failed = false;
        self.opened_once = true;
        self.reopen_wait = REOPEN_FIRST;
        self.reopen_in = 0;
        // Taken after the open: a directory replaced in between is seen as
        // the store's own, which only delays noticing a later removal.
        self.identity = self
            .cache
            .location()
            .path()
            .and_then(|p| identity_of(p).ok());
        self.cache.put_up(store);
        self.serving = self.cache.store();
        self.carry_over();
        self.evict_to_bound();
    }

    /// A failed open: the next try waits longer, up to [`REOPEN_MAX`].
    fn back_off(&mut self) {
        let ticks = (self.reopen_wait.as_secs() / REOPEN_FIRST.as_secs().max(1)).max(1);
        self.reopen_in = u32::try_from(ticks).unwrap_or(u32::MAX).saturating_sub(1);
        self.reopen_wait = (self.reopen_wait * 2).min(REOPEN_MAX);
    }

    /// Logs a failed open that is retried, once per cause: the line is
    /// not repeated at every retry, only when the cause changes.
    fn report_failure(&mut self, kind: OpenFailure, message: &str) {
        self.back_off();
        if self.last_failure == Some(kind) {
            return;
        }
        self.last_failure = Some(kind);
        warn!(
            self.log,
            "{} TLS cache: cannot open {}: {} -- retrying after {}s to {}s",
            self.cache.cache_type(),
            self.cache.location(),
            message,
            REOPEN_FIRST.as_secs(),
            REOPEN_MAX.as_secs()
        );
    }

    /// The store cannot be read for a lasting `reason`: sets it aside
    /// (`store::recovery`) and serves a fresh one at its path, with one
    /// warning that says what and where.
    fn replace_store(&mut self, reason: Lasting, message: &str, opts: OpenOptions) {
        let ct = self.cache.cache_type();
        let location = self.cache.location().clone();
        let Some(path) = location.path() else {
            return self.report_failure(OpenFailure::Lasting(reason), message);
        };
        let aside = match recovery::set_aside(path, self.cache.now()) {
            Ok(aside) => aside,
            Err(e) => {
                return self.report_failure(
                    OpenFailure::Lasting(reason),
                    &format!("{message}; cannot set it aside: {e}"),
                );
            }
        };
        self.cache.metrics().store_reset(ct, reason);
        let mut pruned = String::new();
        for (p, why) in &aside.not_pruned {
            pruned += &format!("; cannot remove the older copy {}: {why}", p.display());
        }
        match Self::try_open(&location, opts) {
            Ok(store) => {
                warn!(
                    self.log,
                    "{} TLS cache: cannot read {} ({}): {}: {}; moved it to {} and started a fresh store{}",
                    ct,
                    location,
                    path.display(),
                    reason.as_str(),
                    message,
                    aside.to.display(),
                    pruned
                );
                self.serve(store);
            }
            Err(fresh) => {
                // A fresh store that cannot be read either: the cause is
                // not the old store's files, so do not set another aside.
                self.fresh_failed = matches!(fresh.kind, OpenFailure::Lasting(_));
                self.last_failure = Some(fresh.kind);
                self.back_off();
                warn!(
                    self.log,
                    "{} TLS cache: cannot read {} ({}): {}: {}; moved it to {}{}, but a fresh store fails too: {} -- retrying after {}s to {}s",
                    ct,
                    location,
                    path.display(),
                    reason.as_str(),
                    message,
                    aside.to.display(),
                    pruned,
                    fresh.message,
                    REOPEN_FIRST.as_secs(),
                    REOPEN_MAX.as_secs()
                );
            }
        }
    }

    /// A full-disk retry: with room on the file system, reopens the store
    /// with the count it had and lets writes through; else waits longer.
    fn retry_full(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        if !self.cache.writes_refused() {
            self.full_retry = None;
            return;
        }
        let room = self
            .cache
            .location()
            .path()
            .and_then(crate::store::error::free_bytes)
            .is_none_or(|free| free >= FULL_RETRY_MIN_FREE);
        if room {
            if let Some(old) = self.cache.take() {
                self.full_count = Some(old.len());
                // The last handle closes it; requests in flight finish first.
                drop(old);
            }
            self.open_store();
            if self.cache.is_up() {
                self.cache.reopen_after_full_done();
                self.full_retry = None;
                return;
            }
        }
        let next = (wait * 2).min(FULL_RETRY_MAX);
        self.full_retry = Some(next);
        ctx.run_later(wait, move |act, ctx| act.retry_full(next, ctx));
    }

    fn evict_to_bound(&self) {
        match self.cache.evict_to_bound() {
            Ok(0) | Err(_) => {}
            Ok(n) => debug!(
                self.log,
                "{} TLS cache: {} entries evicted to the bound",
                self.cache.cache_type(),
                n
            ),
        }
    }

    /// Removes every stale entry, step by step; returns how many went.
    fn sweep(&self) -> usize {
        let mut total = 0;
        while let Ok(step) = self.cache.sweep_step(SWEEP_STEP) {
            total += step.removed;
            if !step.more {
                break;
            }
        }
        debug!(
            self.log,
            "{} TLS cache cleanup: {} expired entries removed",
            self.cache.cache_type(),
            total
        );
        total
    }

    /// (Re)starts the timers: expiry every `timeout` (and once now, as
    /// Postfix does in post_init), the sync, and the reopen retry.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        for t in self.timers.drain(..) {
            ctx.cancel_future(t);
        }
        let period = Duration::from_secs(u64::from(self.cache.limits().timeout.max(1)));
        ctx.notify(SweepNow);
        self.timers
            .push(ctx.run_interval(period, |_, ctx| ctx.notify(SweepNow)));
        if !self.sync_interval.is_zero() {
            self.timers
                .push(ctx.run_interval(self.sync_interval, |act, _| {
                    act.check_store_path();
                    let _ = act.cache.sync();
                }));
        }
        self.timers.push(ctx.run_interval(REOPEN_FIRST, |act, _| {
            if act.cache.is_up() {
                return;
            }
            if act.reopen_in > 0 {
                act.reopen_in -= 1;
                return;
            }
            act.open_store();
        }));
    }
}

impl Actor for CacheActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        self.cache.on_down(Box::new(move || addr.do_send(Reopen)));
        let addr = ctx.address();
        self.cache.on_full(Box::new(move || addr.do_send(DiskFull)));
        self.open_store();
        self.schedule(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.serving = None;
        // A new store never opened: what the orphan holds is lost with the
        // process, as it would be at the next start.
        self.orphan = None;
        // Out of service first, so no request writes after the flush.
        if let Some(store) = self.cache.take() {
            if let Err(e) = store.flush() {
                warn!(
                    self.log,
                    "{} TLS cache: flush at exit failed: {}",
                    self.cache.cache_type(),
                    e
                );
            }
        }
    }
}

/// The store was taken out of service after a failure: reopen it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reopen;

impl Handler<Reopen> for CacheActor {
    type Result = ();
    fn handle(&mut self, _: Reopen, _ctx: &mut Context<Self>) {
        info!(
            self.log,
            "{} TLS cache: restarting after a store failure",
            self.cache.cache_type()
        );
        self.open_store();
    }
}

/// A write found the disk full: retry later, with a backoff.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DiskFull;

impl Handler<DiskFull> for CacheActor {
    type Result = ();
    fn handle(&mut self, _: DiskFull, ctx: &mut Context<Self>) {
        if self.full_retry.is_some() {
            return; // one retry at a time
        }
        self.full_retry = Some(FULL_RETRY_FIRST);
        ctx.run_later(FULL_RETRY_FIRST, |act, ctx| {
            act.retry_full(FULL_RETRY_FIRST * 2, ctx)
        });
    }
}

/// Sweep now; resolves to the number of entries removed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SweepNow;

impl Handler<SweepNow> for CacheActor {
    type Result = usize;
    fn handle(&mut self, _: SweepNow, _ctx: &mut Context<Self>) -> usize {
        self.sweep()
    }
}

/// Entry count and bytes; `None` while the store is down.
#[derive(Message)]
#[rtype(result = "Option<StoreStats>")]
pub struct Stats;

impl Handler<Stats> for CacheActor {
    type Result = Option<StoreStats>;
    fn handle(&mut self, _: Stats, _ctx: &mut Context<Self>) -> Self::Result {
        self.cache.store().map(|s| s.stats())
    }
}

/// Answered as soon as the actor's thread gets to it, with no store work:
/// the watchdog's proof that the thread is not stuck, and (the first
/// answer) the sign that the first open has been tried. Resolves to whether
/// the store is in service.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Ping;

impl Handler<Ping> for CacheActor {
    type Result = bool;
    fn handle(&mut self, _: Ping, _ctx: &mut Context<Self>) -> bool {
        self.cache.is_up()
    }
}

/// Make completed writes durable (an fsync).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for CacheActor {
    type Result = ();
    fn handle(&mut self, _: Flush, _ctx: &mut Context<Self>) {
        let _ = self.cache.sync();
    }
}

/// New limits and sync interval (live reconfiguration): the limits, already
/// in force (the reload sets them when it swaps the configuration, so that
/// `policy` and staleness follow the new timeout from that instant), are
/// compared with `previous`: a lower bound evicts at once, a new timeout or
/// sync interval restarts the timers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconfigure {
    /// The limits before the reload.
    pub previous: CacheLimits,
    /// The new limits.
    pub limits: CacheLimits,
    /// The new `tlsmgr_session_cache_sync_interval`.
    pub sync_interval: Duration,
}

impl Handler<Reconfigure> for CacheActor {
    type Result = ();
    fn handle(&mut self, msg: Reconfigure, ctx: &mut Context<Self>) {
        let old = msg.previous;
        self.cache.set_limits(msg.limits);
        if msg.limits.max_entries != old.max_entries {
            self.evict_to_bound();
        }
        if msg.limits.timeout != old.timeout || msg.sync_interval != self.sync_interval {
            self.sync_interval = msg.sync_interval;
            self.schedule(ctx);
        }
    }
}
