//! Applying a new configuration snapshot to the running daemon.
//!
//! [`apply`] swaps the [`Config`] snapshot and the [`CacheSet`] together, on
//! the daemon thread, so a request there sees either the old configuration
//! and caches or the new ones, never a mix; requests on the other I/O
//! threads (`tlsmgr_io_threads`) see one cache set or the other, and
//! `policy` answers from the cache set alone. Then, per cache:
//!
//! - same database: the actor stays; new limits (timeout, maximum entries,
//!   cache logging) are sent with [`SetLimits`] and apply from the next
//!   request (a lower bound evicts at once);
//! - database changed, enabled or disabled: the new store is opened by a new
//!   actor on its own arbiter *before* the old one is closed; the old actor
//!   first answers everything already queued for it ([`Flush`] is queued
//!   behind those requests), then its arbiter stops, which closes the store.
//!
//! The expiry actor is rescheduled with the new timeouts, and the PRNG actor
//! is handed the new snapshot ([`ConfigChanged`]) to apply its own settings.

use crate::actors::cache::{CacheActor, CacheLimits, Flush, SetLimits};
use crate::actors::expiry::Reschedule;
use crate::actors::{CacheSet, ConfigChanged, RunningCache};
use crate::clock::SharedClock;
use crate::config::{CacheConfig, Config};
use crate::protocol::CacheType;
use crate::store::fjall::OpenOptions;
use actix::prelude::*;
use slog::{info, Logger};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Services;

/// What starting a cache actor needs, and the arbiters of the running ones.
pub struct CacheRuntime {
    clock: SharedClock,
    log: Logger,
    faults: Option<[Arc<AtomicBool>; 3]>,
    arbiters: Mutex<[Option<Arbiter>; 3]>,
}

fn limits_of(cc: &CacheConfig, cfg: &Config) -> CacheLimits {
    CacheLimits {
        timeout: cc.timeout,
        max_entries: cfg.max_entries,
        log_cache: cc.log_cache(),
    }
}

impl CacheRuntime {
    /// A runtime with no caches started.
    pub fn new(clock: SharedClock, log: Logger, faults: Option<[Arc<AtomicBool>; 3]>) -> Self {
        CacheRuntime {
            clock,
            log,
            faults,
            arbiters: Mutex::new(Default::default()),
        }
    }

    fn arbiters(&self) -> MutexGuard<'_, [Option<Arbiter>; 3]> {
        // A poisoned lock only means a panic elsewhere; the slots are intact.
        self.arbiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the cache `ct` as configured in `cfg` on a new arbiter
    /// (store I/O blocks), replacing the arbiter slot; `None` when disabled.
    /// The caller stops any previous arbiter it took out of the slot.
    pub fn start_cache(&self, ct: CacheType, cfg: &Config) -> Option<RunningCache> {
        let cc = cfg.cache(ct);
        let location = cc.location.clone()?;
        let open = OpenOptions {
            empty_on_start: !cfg.persistent_state,
            lock_wait: cfg.store_lock_wait,
        };
        let mut actor = CacheActor::new(
            ct,
            location,
            open,
            limits_of(cc, cfg),
            self.clock.clone(),
            self.log.clone(),
        );
        if let Some(flags) = &self.faults {
            actor = actor.with_fault_injection(flags[ct.index()].clone());
        }
        let arbiter = Arbiter::new();
        let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |_| actor);
        self.arbiters()[ct.index()] = Some(arbiter);
        Some(RunningCache {
            addr,
            timeout: cc.timeout,
        })
    }

    /// Takes every arbiter out (at shutdown, to stop and join them).
    pub fn take_arbiters(&self) -> Vec<Arbiter> {
        self.arbiters()
            .iter_mut()
            .filter_map(Option::take)
            .collect()
    }
}

/// Closes a replaced cache: lets it answer what is queued, flushes, then
/// stops its arbiter (dropping the actor closes the store) and waits for the
/// thread, off the serving thread.
async fn retire(cache: RunningCache, arbiter: Option<Arbiter>) {
    let _ = cache.addr.send(Flush).await;
    drop(cache);
    if let Some(arbiter) = arbiter {
        let _ = actix_rt::task::spawn_blocking(move || {
            arbiter.stop();
            let _ = arbiter.join();
        })
        .await;
    }
}

/// Applies `new` (already validated) to the running services. Returns the
/// changed parameters as `name old -> new` items (empty: nothing to do).
pub async fn apply(svc: &Services, new: Config) -> Vec<String> {
    let old = svc.config.load_full();
    let changes = new.changes_from(&old);
    if changes.is_empty() {
        return changes;
    }
    let current = svc.caches.load_full();
    let mut next = CacheSet::default();
    let mut retired = Vec::new();
    let mut relimit = Vec::new();
    for ct in CacheType::ALL {
        let (was, now) = (old.cache(ct), new.cache(ct));
        let running = current.get(ct).cloned();
        let slot = &mut next.0[ct.index()];
        match running {
            Some(rc) if now.location.is_some() && now.location == was.location => {
                if limits_of(now, &new) != limits_of(was, &old) {
                    relimit.push((rc.addr.clone(), limits_of(now, &new)));
                }
                *slot = Some(RunningCache {
                    addr: rc.addr,
                    timeout: now.timeout,
                });
            }
            running => {
                // Take the old arbiter out before start_cache fills the slot.
                let old_arbiter = svc.runtime.arbiters()[ct.index()].take();
                *slot = svc.runtime.start_cache(ct, &new);
                if let Some(rc) = running {
                    retired.push((rc, old_arbiter));
                }
                match (&was.location, &now.location) {
                    (_, Some(loc)) => info!(svc.log, "{} TLS cache: now {}", ct, loc),
                    (Some(_), None) => info!(svc.log, "{} TLS cache: disabled", ct),
                    (None, None) => {}
                }
            }
        }
    }
    // One synchronous step: requests on this thread see old or new. A
    // request on another I/O thread can fall between the two stores; what
    // it reads of the caches (running cache and its timeout) is still
    // one set or the other.
    let new = Arc::new(new);
    svc.config.store(new.clone());
    svc.caches.store(Arc::new(next));
    for (addr, limits) in relimit {
        addr.do_send(SetLimits(limits));
    }
    svc.expiry.do_send(Reschedule);
    svc.prng.do_send(ConfigChanged(new));
    for (rc, arbiter) in retired {
        retire(rc, arbiter).await;
    }
    changes
}
