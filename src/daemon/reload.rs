//! Applying a new configuration snapshot to the running daemon.
//!
//! [`apply`] swaps the [`Config`] snapshot and the [`CacheSet`] together, on
//! the daemon thread, so a request there sees either the old configuration
//! and caches or the new ones, never a mix; requests on the other I/O
//! threads (`tlsmgr_io_threads`) see one cache set or the other, and
//! `policy` answers from the cache set alone. Then, per cache:
//!
//! - same database: the cache stays; its new limits (timeout, maximum
//!   entries, cache logging) go in force with the swap, and they and the
//!   sync interval go to its actor ([`Reconfigure`]), which evicts down to
//!   a lower bound at once and restarts its timers;
//! - database changed, enabled or disabled: the new store is opened by a new
//!   actor on its own arbiter, and the new cache is in the set only once it
//!   has been tried ([`Ping`]), *before* the old one is closed; requests on
//!   another thread may still be using the old store for a moment, so the
//!   old actor's arbiter is stopped (flush and close, in its `stopped`)
//!   after the swap.
//!
//! The ticket and PRNG actors are handed the new snapshot
//! ([`ConfigChanged`]) to apply their own settings.

use crate::actors::cache::{CacheActor, Ping, Reconfigure};
use crate::actors::{CacheSet, ConfigChanged, RunningCache};
use crate::cache::{Cache, CacheLimits};
use crate::clock::SharedClock;
use crate::config::{CacheConfig, Config};
use crate::protocol::CacheType;
use actix::prelude::*;
use slog::{info, Logger};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Services;

/// What starting a cache actor needs, and the arbiters of the running ones.
pub struct CacheRuntime {
    clock: SharedClock,
    log: Logger,
    metrics: Arc<crate::metrics::Metrics>,
    #[cfg(feature = "test-hooks")]
    faults: Option<super::FaultFlags>,
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
    /// A runtime with no caches started; its caches count into `metrics`.
    pub fn new(clock: SharedClock, log: Logger, metrics: Arc<crate::metrics::Metrics>) -> Self {
        CacheRuntime {
            clock,
            log,
            metrics,
            #[cfg(feature = "test-hooks")]
            faults: None,
            arbiters: Mutex::new(Default::default()),
        }
    }

    /// Test hook: the caches started from now on fail while their flag is set.
    #[cfg(feature = "test-hooks")]
    pub fn with_faults(mut self, faults: Option<super::FaultFlags>) -> Self {
        self.faults = faults;
        self
    }

    fn arbiters(&self) -> MutexGuard<'_, [Option<Arbiter>; 3]> {
        // A poisoned lock only means a panic elsewhere; the slots are intact.
        self.arbiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the cache `ct` as configured in `cfg` on a new arbiter
    /// (store I/O blocks), replacing the arbiter slot, and waits until its
    /// first open was tried; `None` when disabled. The caller stops any
    /// previous arbiter it took out of the slot.
    pub async fn start_cache(&self, ct: CacheType, cfg: &Config) -> Option<RunningCache> {
        let cc = cfg.cache(ct);
        let location = cc.location.clone()?;
        #[allow(unused_mut)]
        let mut cache = Cache::new(
            ct,
            location,
            limits_of(cc, cfg),
            self.clock.clone(),
            self.log.clone(),
        )
        .with_metrics(self.metrics.clone());
        #[cfg(feature = "test-hooks")]
        if let Some(flags) = &self.faults {
            cache = cache.with_fault_injection(flags[ct.index()].clone());
        }
        let cache = Arc::new(cache);
        let actor = CacheActor::new(
            cache.clone(),
            cfg.open_options(),
            cfg.sync_interval,
            self.log.clone(),
        );
        let arbiter = Arbiter::new();
        let addr = CacheActor::start_in_arbiter(&arbiter.handle(), move |_| actor);
        self.arbiters()[ct.index()] = Some(arbiter);
        // The first open runs in the actor's `started`, before any message.
        let _ = addr.send(Ping).await;
        Some(RunningCache { cache, addr })
    }

    /// Takes every arbiter out (at shutdown, to stop and join them).
    pub fn take_arbiters(&self) -> Vec<Arbiter> {
        self.arbiters()
            .iter_mut()
            .filter_map(Option::take)
            .collect()
    }
}

/// Closes a replaced cache: stops its arbiter (the actor's `stopped` takes
/// the store out of service, flushes and closes it) and waits for the
/// thread, off the serving thread.
async fn retire(arbiter: Option<Arbiter>) {
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
    let mut reconfigure = Vec::new();
    for ct in CacheType::ALL {
        let (was, now) = (old.cache(ct), new.cache(ct));
        let running = current.get(ct).cloned();
        let slot = &mut next.0[ct.index()];
        match running {
            Some(rc) if now.location.is_some() && now.location == was.location => {
                if limits_of(now, &new) != limits_of(was, &old)
                    || new.sync_interval != old.sync_interval
                {
                    reconfigure.push((
                        rc.clone(),
                        Reconfigure {
                            previous: limits_of(was, &old),
                            limits: limits_of(now, &new),
                            sync_interval: new.sync_interval,
                        },
                    ));
                }
                *slot = Some(rc);
            }
            running => {
                // Take the old arbiter out before start_cache fills the slot.
                let old_arbiter = svc.runtime.arbiters()[ct.index()].take();
                *slot = svc.runtime.start_cache(ct, &new).await;
                if running.is_some() {
                    retired.push(old_arbiter);
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
    // it reads of the caches (running cache and its timeout, which the
    // cache holds) is still one set or the other.
    let new = Arc::new(new);
    for (rc, msg) in &reconfigure {
        rc.cache.set_limits(msg.limits);
    }
    svc.config.store(new.clone());
    svc.caches.store(Arc::new(next));
    super::sharing::relink(&svc.shared, &new, &svc.log);
    for (rc, msg) in reconfigure {
        rc.addr.do_send(msg);
    }
    svc.tickets.do_send(ConfigChanged(new.clone()));
    svc.prng.do_send(ConfigChanged(new));
    for arbiter in retired {
        retire(arbiter).await;
    }
    changes
}
