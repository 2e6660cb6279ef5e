//! The ticket-key actor: *when* the [`KeyRing`] rotates, and its file. What
//! a request gets is [`KeyRing::encrypt_at`] / [`KeyRing::decrypt_at`] on
//! the snapshot this actor publishes, read on the request's own thread.
//!
//! At start the actor loads `tlsmgr_ticket_key_file` (with
//! `tlsmgr_persistent_state = yes`), brings the ring up to now, saves and
//! publishes it. Then, every second ([`TICK_INTERVAL`]; the [`Tick`] message
//! in tests) and after each reload, it rotates when the clock says so. A
//! ring that changed is saved (fsync) *before* it is published, so no key
//! is handed out that a crash could lose. T is the smtpd cache timeout of
//! the live configuration.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::prng::Pool;
use crate::tickets::{file, KeyRing};
use actix::prelude::*;
use arc_swap::ArcSwap;
use slog::{info, warn, Logger};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the actor looks at the clock.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// The published ring, read by every I/O thread.
pub type SharedRing = Arc<ArcSwap<KeyRing>>;

/// The actor.
pub struct TicketActor {
    ring: KeyRing,
    published: SharedRing,
    pool: Pool,
    file: Option<PathBuf>,
    config: Arc<ArcSwap<Config>>,
    clock: SharedClock,
    log: Logger,
    metrics: Arc<crate::metrics::Metrics>,
}

impl TicketActor {
    /// Creates the actor: loads saved keys when the configuration asks for
    /// it, rotates them up to now, and publishes the ring in `published`
    /// before returning, so the first request finds a key.
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        published: SharedRing,
        clock: SharedClock,
        log: Logger,
    ) -> Self {
        let cfg = config.load();
        let file = if cfg.persistent_state {
            cfg.ticket_key_file.clone()
        } else {
            None
        };
        let mut ring = KeyRing::new();
        if let Some(path) = &file {
            match file::load(path) {
                Ok(file::Loaded::Keys(loaded)) => {
                    ring = *loaded;
                    info!(log, "loaded session ticket keys from {}", path.display());
                }
                Ok(file::Loaded::Missing) => {}
                Ok(file::Loaded::Malformed) => warn!(
                    log,
                    "{} is not a session ticket key file -- starting with new keys",
                    path.display()
                ),
                Err(e) => warn!(
                    log,
                    "cannot read session ticket keys from {}: {}",
                    path.display(),
                    e
                ),
            }
        }
        let mut actor = TicketActor {
            ring,
            published,
            pool: Pool::from_os(),
            file,
            config,
            clock,
            log,
            metrics: Arc::new(crate::metrics::Metrics::default()),
        };
        // Loaded keys may be stale or from a clock that went back: publish
        // only what the clock allows now.
        actor.published.store(Arc::new(KeyRing::new()));
        actor.rotate(true);
        actor
    }

    /// Counts rotations into `metrics` (the daemon's). The keys made at
    /// start are not a rotation.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Rotates if due; saves then publishes a changed ring (`force`:
    /// publish even if unchanged).
    fn rotate(&mut self, force: bool) {
        let timeout = self.config.load().ticket_timeout();
        let now = self.clock.now();
        self.pool.mix_time_of_day();
        let pool = &mut self.pool;
        let before = self.ring.current.map(|k| k.name);
        let changed = self.ring.rotate(now, timeout, &mut |b| pool.fill(b));
        if before.is_some() && self.ring.current.map(|k| k.name) != before {
            self.metrics.ticket_rotated();
        }
        self.save_and_publish(changed, changed || force);
    }

    /// Saves the ring if `changed`, then publishes it if `publish`.
    fn save_and_publish(&mut self, changed: bool, publish: bool) {
        if changed {
            if let Some(path) = &self.file {
                if let Err(e) = file::save(&self.ring, path) {
                    warn!(
                        self.log,
                        "cannot save session ticket keys to {}: {}",
                        path.display(),
                        e
                    );
                }
            }
        }
        if publish {
            self.published.store(Arc::new(self.ring.clone()));
        }
    }
}

impl Actor for TicketActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK_INTERVAL, |act, _| act.rotate(false));
    }
}

/// Rotate now if due (tests; and a request that found no key, after the
/// clock ran past the whole ring).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick;

impl Handler<Tick> for TicketActor {
    type Result = ();
    fn handle(&mut self, _: Tick, _ctx: &mut Context<Self>) {
        self.rotate(false);
    }
}

impl Handler<super::ConfigChanged> for TicketActor {
    type Result = ();
    fn handle(&mut self, _: super::ConfigChanged, _ctx: &mut Context<Self>) {
        // A new timeout can make keys too long-lived for it, or enable
        // tickets that were disabled.
        self.rotate(false);
    }
}

/// `tlsmgr keys rotate`: a new current key at once (see
/// [`KeyRing::rotate_now`]), saved and published before the reply.
/// Resolves to false when tickets are disabled.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct RotateNow;

impl Handler<RotateNow> for TicketActor {
    type Result = bool;
    fn handle(&mut self, _: RotateNow, _ctx: &mut Context<Self>) -> bool {
        let timeout = self.config.load().ticket_timeout();
        let now = self.clock.now();
        self.pool.mix_time_of_day();
        let pool = &mut self.pool;
        if !self.ring.rotate_now(now, timeout, &mut |b| pool.fill(b)) {
            return false;
        }
        self.metrics.ticket_rotated();
        self.save_and_publish(true, true);
        true
    }
}
