//! The expiry actor: sweeps each enabled cache once at start and then every
//! `timeout` seconds (spec §2.4), in small steps so requests are never held
//! up: each step is one [`SweepStale`] message of [`STEP`] entries, and the
//! cache actor serves queued requests between steps.

use super::cache::{CacheActor, SweepStale};
use super::CacheSet;
use crate::protocol::CacheType;
use actix::prelude::*;
use arc_swap::ArcSwap;
use slog::{debug, Logger};
use std::sync::Arc;
use std::time::Duration;

/// Entries removed per step.
pub const STEP: usize = 64;

/// The actor.
pub struct ExpiryActor {
    caches: Arc<ArcSwap<CacheSet>>,
    log: Logger,
    timers: Vec<SpawnHandle>,
}

impl ExpiryActor {
    /// An actor sweeping the caches of `caches` (read at each run, so a
    /// reload that adds or removes a cache is followed).
    pub fn new(caches: Arc<ArcSwap<CacheSet>>, log: Logger) -> Self {
        ExpiryActor {
            caches,
            log,
            timers: Vec::new(),
        }
    }

    /// (Re)starts one timer per enabled cache, every `timeout` seconds, and
    /// sweeps each cache once now.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        for timer in self.timers.drain(..) {
            ctx.cancel_future(timer);
        }
        let set = self.caches.load();
        for ct in CacheType::ALL {
            let Some(cache) = set.get(ct) else { continue };
            let period = Duration::from_secs(u64::from(cache.timeout.max(1)));
            ctx.notify(SweepNow(ct));
            self.timers
                .push(ctx.run_interval(period, move |_, ctx| ctx.notify(SweepNow(ct))));
        }
    }
}

/// Sweeps one cache to the end; returns how many entries were removed.
async fn sweep(addr: Addr<CacheActor>) -> usize {
    let mut total = 0;
    loop {
        match addr.send(SweepStale(STEP)).await {
            Ok(Ok(step)) => {
                total += step.removed;
                if !step.more {
                    return total;
                }
            }
            _ => return total,
        }
    }
}

impl Actor for ExpiryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Once now, as Postfix does in post_init, then every `timeout`.
        self.schedule(ctx);
    }
}

/// The caches or their timeouts changed (live reload): restart the timers.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reschedule;

impl Handler<Reschedule> for ExpiryActor {
    type Result = ();
    fn handle(&mut self, _: Reschedule, ctx: &mut Context<Self>) {
        self.schedule(ctx);
    }
}

/// Sweep one cache now; resolves to the number of entries removed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SweepNow(pub CacheType);

impl Handler<SweepNow> for ExpiryActor {
    type Result = ResponseFuture<usize>;
    fn handle(&mut self, msg: SweepNow, _ctx: &mut Context<Self>) -> Self::Result {
        let addr = self.caches.load().get(msg.0).map(|c| c.addr.clone());
        let log = self.log.clone();
        Box::pin(async move {
            let Some(addr) = addr else { return 0 };
            let removed = sweep(addr).await;
            debug!(
                log,
                "{} TLS cache cleanup: {} expired entries removed", msg.0, removed
            );
            removed
        })
    }
}
