//! The cache actor: owns one session cache's store (spec §3).
//!
//! Each enabled cache gets its own actor on its own arbiter thread, because
//! store calls block on disk I/O and must stay off the socket thread. The
//! actor applies Postfix's rules: an entry is stale when
//! `stored_at + timeout < now` (a stale hit is deleted and reported missing),
//! and ours: the number of entries never exceeds `max_entries` (oldest-first
//! eviction after each insert).
//!
//! Failure handling: a store error (or a panic inside the store) marks the
//! store down and stops the actor; its [`actix::Supervisor`] restarts it, and
//! [`actix::Supervised::restarting`] reopens the store. While the store is down
//! every request is answered at once with [`CacheDown`] (the server replies
//! ERR), and a timer retries the open.

use crate::clock::SharedClock;
use crate::protocol::CacheType;
use crate::store::fjall::OpenOptions;
use crate::store::location::MAX_CACHE_ID_LEN;
use crate::store::{Entry, Store, StoreError, StoreLocation, StoreStats, SweepStep};
use actix::prelude::*;
use bytes::Bytes;
use slog::{info, warn, Logger};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// How often a down store is retried.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(5);

/// The cache's store is not available; the request was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheDown;

/// Settings that can change while the actor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Sanitized timeout in seconds (> 0 for an enabled cache).
    pub timeout: u32,
    /// Maximum entries; 0 = unlimited.
    pub max_entries: u64,
    /// Log cache activity (`TLS_LOG_CACHE`).
    pub log_cache: bool,
}

/// The actor.
pub struct CacheActor {
    cache_type: CacheType,
    location: StoreLocation,
    open_options: OpenOptions,
    store: Option<Box<dyn Store>>,
    limits: CacheLimits,
    clock: SharedClock,
    log: Logger,
    opened_once: bool,
    fault_injection: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl CacheActor {
    /// A new actor; the store is opened when the actor starts. The first
    /// open waits up to `open_options.lock_wait` for a store still held by an
    /// exiting process; later reopens do not wait.
    pub fn new(
        cache_type: CacheType,
        location: StoreLocation,
        open_options: OpenOptions,
        limits: CacheLimits,
        clock: SharedClock,
        log: Logger,
    ) -> Self {
        CacheActor {
            cache_type,
            location,
            open_options,
            store: None,
            limits,
            clock,
            log,
            opened_once: false,
            fault_injection: None,
        }
    }

    /// Test hook: while the flag is set, every store call fails as if the
    /// disk had gone away, exercising the supervisor path.
    pub fn with_fault_injection(
        mut self,
        flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        self.fault_injection = Some(flag);
        self
    }

    fn open_store(&mut self) {
        if self.store.is_some() {
            return;
        }
        let mut opts = self.open_options.clone();
        if self.opened_once {
            // Only the first open clears (empty-on-start) and waits for a
            // previous process; a reopen after a failure must not lose data
            // or hold up requests.
            opts.empty_on_start = false;
            opts.lock_wait = Duration::ZERO;
        }
        match catch_unwind(AssertUnwindSafe(|| self.location.open(opts))) {
            Ok(Ok(store)) => {
                if self.limits.log_cache || self.opened_once {
                    info!(
                        self.log,
                        "open {} TLS cache {}", self.cache_type, self.location
                    );
                }
                self.opened_once = true;
                self.store = Some(store);
                self.enforce_bound();
            }
            Ok(Err(e)) => {
                warn!(
                    self.log,
                    "{} TLS cache: cannot open {}: {} -- retrying every {}s",
                    self.cache_type,
                    self.location,
                    e,
                    REOPEN_INTERVAL.as_secs()
                );
            }
            Err(_) => {
                warn!(
                    self.log,
                    "{} TLS cache: panic while opening {}", self.cache_type, self.location
                );
            }
        }
    }

    /// Runs `op` on the store. A store error or panic marks the store down
    /// and stops the actor so that the supervisor restarts it.
    fn with_store<T>(
        &mut self,
        ctx: &mut Context<Self>,
        what: &str,
        op: impl FnOnce(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, CacheDown> {
        let injected = self
            .fault_injection
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
        let store = self.store.as_mut().ok_or(CacheDown)?;
        let result = if injected {
            Ok(Err(StoreError::Backend {
                path: Default::default(),
                message: "injected fault".into(),
            }))
        } else {
            catch_unwind(AssertUnwindSafe(|| op(store.as_mut())))
        };
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                warn!(
                    self.log,
                    "{} TLS cache: {} failed: {} -- restarting the cache", self.cache_type, what, e
                );
                self.fail(ctx)
            }
            Err(_) => {
                warn!(
                    self.log,
                    "{} TLS cache: panic during {} -- restarting the cache", self.cache_type, what
                );
                self.fail(ctx)
            }
        }
    }

    fn fail<T>(&mut self, ctx: &mut Context<Self>) -> Result<T, CacheDown> {
        self.store = None;
        ctx.stop();
        Err(CacheDown)
    }

    fn enforce_bound(&mut self) {
        let max = self.limits.max_entries;
        if max == 0 {
            return;
        }
        if let Some(store) = self.store.as_mut() {
            let len = store.len();
            if len > max {
                if let Err(e) = store.evict_oldest(len - max) {
                    warn!(
                        self.log,
                        "{} TLS cache: eviction failed: {}", self.cache_type, e
                    );
                }
            }
        }
    }

    fn is_stale(&self, e: &Entry, now: u64) -> bool {
        e.stored_at.saturating_add(u64::from(self.limits.timeout)) < now
    }
}

impl Actor for CacheActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.open_store();
        ctx.run_interval(REOPEN_INTERVAL, |act, _| {
            if act.store.is_none() {
                act.open_store();
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(store) = self.store.as_mut() {
            if let Err(e) = store.flush() {
                warn!(
                    self.log,
                    "{} TLS cache: flush at exit failed: {}", self.cache_type, e
                );
            }
        }
    }
}

impl actix::Supervised for CacheActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        info!(
            self.log,
            "{} TLS cache: restarting after a store failure", self.cache_type
        );
    }
}

/// Look up a session: `Some(bytes)` on a fresh hit.
#[derive(Message)]
#[rtype(result = "Result<Option<Bytes>, CacheDown>")]
pub struct Lookup(pub Bytes);

/// Store or replace a session.
#[derive(Message)]
#[rtype(result = "Result<(), CacheDown>")]
pub struct Update(pub Bytes, pub Bytes);

/// Delete a session: true if it existed.
#[derive(Message)]
#[rtype(result = "Result<bool, CacheDown>")]
pub struct Delete(pub Bytes);

/// One bounded expiry step: remove up to `.0` stale entries.
#[derive(Message)]
#[rtype(result = "Result<SweepStep, CacheDown>")]
pub struct SweepStale(pub usize);

/// Entry count and bytes.
#[derive(Message)]
#[rtype(result = "Result<StoreStats, CacheDown>")]
pub struct Stats;

/// Answered as soon as the actor's thread gets to it, with no store work:
/// the watchdog's proof that the thread is not stuck.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

/// Make completed writes durable.
#[derive(Message)]
#[rtype(result = "Result<(), CacheDown>")]
pub struct Flush;

/// Apply new limits (live reconfiguration); evicts down to a lower bound.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLimits(pub CacheLimits);

fn show_id(id: &[u8]) -> String {
    String::from_utf8_lossy(id).into_owned()
}

impl Handler<Lookup> for CacheActor {
    type Result = Result<Option<Bytes>, CacheDown>;
    fn handle(&mut self, msg: Lookup, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.0;
        if self.limits.log_cache {
            info!(
                self.log,
                "lookup {} session id={}",
                self.cache_type,
                show_id(&id)
            );
        }
        if id.len() > MAX_CACHE_ID_LEN {
            return Ok(None);
        }
        let entry = self.with_store(ctx, "lookup", |s| match s.get(&id) {
            Err(StoreError::Malformed(_)) => {
                s.delete(&id)?;
                Ok(None)
            }
            other => other,
        })?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let now = self.clock.now();
        if self.limits.log_cache {
            info!(
                self.log,
                "read {} TLS cache entry {}: time={} [data {} bytes]",
                self.cache_type,
                show_id(&id),
                entry.stored_at,
                entry.session.len()
            );
        }
        if self.is_stale(&entry, now) {
            self.with_store(ctx, "delete", |s| s.delete(&id))?;
            return Ok(None);
        }
        Ok(Some(Bytes::from(entry.session)))
    }
}

impl Handler<Update> for CacheActor {
    type Result = Result<(), CacheDown>;
    fn handle(&mut self, msg: Update, ctx: &mut Context<Self>) -> Self::Result {
        let Update(id, session) = msg;
        let now = self.clock.now();
        if self.limits.log_cache {
            info!(
                self.log,
                "put {} session id={} [data {} bytes]",
                self.cache_type,
                show_id(&id),
                session.len()
            );
            info!(
                self.log,
                "write {} TLS cache entry {}: time={} [data {} bytes]",
                self.cache_type,
                show_id(&id),
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
            session: session.to_vec(),
        };
        let max = self.limits.max_entries;
        self.with_store(ctx, "update", |s| {
            s.put(&id, &entry)?;
            if max > 0 && s.len() > max {
                s.evict_oldest(s.len() - max)?;
            }
            Ok(())
        })
    }
}

impl Handler<Delete> for CacheActor {
    type Result = Result<bool, CacheDown>;
    fn handle(&mut self, msg: Delete, ctx: &mut Context<Self>) -> Self::Result {
        if self.limits.log_cache {
            info!(
                self.log,
                "delete {} session id={}",
                self.cache_type,
                show_id(&msg.0)
            );
        }
        if msg.0.len() > MAX_CACHE_ID_LEN {
            return Ok(false);
        }
        self.with_store(ctx, "delete", |s| s.delete(&msg.0))
    }
}

impl Handler<SweepStale> for CacheActor {
    type Result = Result<SweepStep, CacheDown>;
    fn handle(&mut self, msg: SweepStale, ctx: &mut Context<Self>) -> Self::Result {
        // stale iff stored_at + timeout < now, i.e. stored_at < now - timeout.
        let cutoff = self
            .clock
            .now()
            .saturating_sub(u64::from(self.limits.timeout));
        self.with_store(ctx, "expiry scan", |s| s.sweep_before(cutoff, msg.0))
    }
}

impl Handler<Stats> for CacheActor {
    type Result = Result<StoreStats, CacheDown>;
    fn handle(&mut self, _: Stats, _ctx: &mut Context<Self>) -> Self::Result {
        self.store.as_ref().map(|s| s.stats()).ok_or(CacheDown)
    }
}

impl Handler<Ping> for CacheActor {
    type Result = ();
    fn handle(&mut self, _: Ping, _ctx: &mut Context<Self>) {}
}

impl Handler<Flush> for CacheActor {
    type Result = Result<(), CacheDown>;
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        self.with_store(ctx, "flush", |s| s.flush())
    }
}

impl Handler<SetLimits> for CacheActor {
    type Result = ();
    fn handle(&mut self, msg: SetLimits, _ctx: &mut Context<Self>) {
        self.limits = msg.0;
        self.enforce_bound();
    }
}
