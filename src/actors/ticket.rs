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
//!
//! With a shared store (`tlsmgr_shared_store`) the keys go by epoch
//! ([`crate::tickets::epoch`]): at each tick the actor brings its
//! [`EpochKeys`] up to now and publishes the ring at once (requests never
//! wait for the store), then, off the request path and bounded by the
//! link's timeouts, offers or fetches the keys that are due with
//! `SET <prefix>:tkt:e:<E>:<epoch> <sealed> NX GET EX <ttl>`, publishes by
//! name every key that encrypted here, rechecks the current epoch every
//! [`RECHECK_INTERVAL`] (a store restarted empty gets our key back; a key
//! another host wrote is adopted), and compares the clock with the store's
//! `TIME` every [`SKEW_CHECK_INTERVAL`]. When the store is away the local
//! candidates simply go on encrypting.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::prng::Pool;
use crate::shared::{seal, Shared};
use crate::tickets::epoch::{self, EpochKeys};
use crate::tickets::{file, KeyRing, TicketKey};
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

/// The link to the shared store, as the daemon holds it.
pub type SharedLink = Arc<arc_swap::ArcSwapOption<Shared>>;

/// How often the current epoch's key is checked against the store again.
pub const RECHECK_INTERVAL: u64 = 10;
/// How often the clock is compared with the store's `TIME`.
pub const SKEW_CHECK_INTERVAL: u64 = 300;
/// Clock skew against the store above this is warned about (seconds).
pub const MAX_SKEW: i64 = 5;

/// Shared-mode state.
struct SharedState {
    keys: EpochKeys,
    /// The link these keys were checked against (`Arc` address).
    link: usize,
    /// The site prefix and secret of that link: keys of one site are never
    /// offered to another.
    identity: (String, Arc<crate::config::secret::Secret>),
    last_recheck: u64,
    last_skew_check: Option<u64>,
    skew_warned: bool,
    foreign_warned: bool,
}

/// What the store said in one cycle.
#[derive(Default)]
struct Answers {
    /// (epoch, our candidate, the key the store holds: None = ours).
    settled: Vec<(u64, TicketKey, Option<TicketKey>)>,
    /// Epochs whose stored key does not open with our secret.
    foreign: Vec<u64>,
    /// Names now in the store.
    published: Vec<[u8; 16]>,
    /// Store time minus our clock, seconds.
    skew: Option<i64>,
}

/// The actor.
pub struct TicketActor {
    ring: KeyRing,
    shared: Option<SharedState>,
    link: SharedLink,
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
        link: SharedLink,
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
            shared: None,
            link,
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
        // With a shared store, keys by epoch from the first request on (the
        // store itself is asked at the first cycle, in `started`).
        let _ = actor.follow_link();
        let timeout = actor.config.load().ticket_timeout();
        if actor.shared.is_some() && timeout > 0 {
            actor.advance_shared(actor.clock.now(), timeout);
            actor.publish_shared(true);
        } else {
            actor.rotate(true);
        }
        actor
    }

    /// Counts rotations into `metrics` (the daemon's). The keys made at
    /// start are not a rotation.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Follows the link: shared mode while there is one (a new link, say a
    /// new site or secret, has every key checked again); local mode, from
    /// the shared keys in force, when it goes.
    fn follow_link(&mut self) -> Option<Arc<Shared>> {
        let link = self.link.load_full();
        let id = link.as_ref().map_or(0, |l| Arc::as_ptr(l) as usize);
        match (&mut self.shared, &link) {
            (Some(st), Some(_)) if st.link == id => {}
            (Some(st), Some(l)) => {
                let identity = (l.settings().prefix.clone(), l.settings().secret.clone());
                if identity == st.identity {
                    st.keys.recheck();
                } else {
                    // Another site or secret: what we hold only decrypts.
                    st.keys.forget_epochs();
                    st.identity = identity;
                    st.foreign_warned = false;
                }
                st.link = id;
                st.last_skew_check = None;
            }
            (None, Some(l)) => {
                self.shared = Some(SharedState {
                    identity: (l.settings().prefix.clone(), l.settings().secret.clone()),
                    keys: EpochKeys::from_ring(&self.ring, self.config.load().ticket_timeout()),
                    link: id,
                    last_recheck: self.clock.now(),
                    last_skew_check: None,
                    skew_warned: false,
                    foreign_warned: false,
                });
            }
            (Some(st), None) => {
                let now = self.clock.now();
                self.ring = st.keys.ring(now);
                self.ring.extra.clear();
                self.shared = None;
            }
            (None, None) => {}
        }
        link
    }

    fn save(&self, ring: &KeyRing) {
        if let Some(path) = &self.file {
            if let Err(e) = file::save(ring, path) {
                warn!(
                    self.log,
                    "cannot save session ticket keys to {}: {}",
                    path.display(),
                    e
                );
            }
        }
    }

    /// Saves (when changed) then publishes the shared-mode ring.
    fn publish_shared(&mut self, force: bool) {
        let Some(st) = &self.shared else {
            return;
        };
        let ring = st.keys.ring(self.clock.now());
        let old = self.published.load();
        if force || **old != ring {
            if old.previous != ring.previous || old.current != ring.current || old.next != ring.next
            {
                self.save(&ring);
            }
            self.published.store(Arc::new(ring));
        }
    }

    /// One cycle: rotation now (local or by epoch), then, in shared mode,
    /// the store's part, off the request path.
    fn cycle(
        &mut self,
        force: bool,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = Answers>>>> {
        let link = self.follow_link();
        let timeout = self.config.load().ticket_timeout();
        let (Some(link), Some(_)) = (link, self.shared.as_ref()) else {
            self.rotate(force);
            return None;
        };
        if timeout == 0 {
            return None;
        }
        let now = self.clock.now();
        self.pool.mix_time_of_day();
        self.advance_shared(now, timeout);
        self.publish_shared(force);
        if !link.available() {
            return None;
        }
        let st = self.shared.as_mut()?;
        if now >= st.last_recheck + RECHECK_INTERVAL {
            st.keys.recheck();
            st.last_recheck = now;
        }
        let due = st.keys.due(now);
        let unpublished: Vec<TicketKey> = st.keys.unpublished().to_vec();
        let skew_due = st
            .last_skew_check
            .is_none_or(|t| now >= t + SKEW_CHECK_INTERVAL);
        if skew_due {
            st.last_skew_check = Some(now);
        }
        if due.is_empty() && unpublished.is_empty() && !skew_due {
            return None;
        }
        let len = st.keys.epoch_len();
        let clock = self.clock.clone();
        Some(Box::pin(async move {
            store_cycle(&link, due, unpublished, skew_due, len, timeout, now, clock).await
        }))
    }

    fn advance_shared(&mut self, now: u64, timeout: u32) {
        let Some(st) = self.shared.as_mut() else {
            return;
        };
        let pool = &mut self.pool;
        let mut bytes = vec![0u8; 2 * 80 + 2 * 8];
        // Enough random bytes for two candidates and two fetch moments.
        pool.fill(&mut bytes);
        let (key_bytes, frac_bytes) = bytes.split_at(160);
        let mut kpos = 0usize;
        let mut fill = |b: &mut [u8]| {
            for x in b.iter_mut() {
                *x = key_bytes[kpos % key_bytes.len()];
                kpos += 1;
            }
        };
        let mut fpos = 0usize;
        let mut frac = || {
            let mut w = [0u8; 8];
            w.copy_from_slice(&frac_bytes[(fpos % 2) * 8..(fpos % 2) * 8 + 8]);
            fpos += 1;
            (u64::from_le_bytes(w) >> 11) as f64 / (1u64 << 53) as f64
        };
        st.keys.advance(now, timeout, &mut fill, &mut frac);
    }

    /// Applies what the store said, then saves and publishes.
    fn apply_answers(&mut self, answers: Answers) {
        let now = self.clock.now();
        let Some(st) = self.shared.as_mut() else {
            return;
        };
        for (e, ours, winner) in answers.settled {
            st.keys.settle(e, &ours, winner, now);
        }
        for name in answers.published {
            st.keys.published(&name);
        }
        if !answers.foreign.is_empty() && !st.foreign_warned {
            st.foreign_warned = true;
            warn!(
                self.log,
                "shared store: the session ticket key stored for epoch {} does not open with this host's secret (another secret on the same site?) -- using a local key",
                answers.foreign[0]
            );
        }
        if let Some(skew) = answers.skew {
            if skew.abs() > MAX_SKEW {
                if !st.skew_warned {
                    st.skew_warned = true;
                    warn!(
                        self.log,
                        "shared store: this host's clock is {} s {} the store's -- ticket key epochs may not agree across hosts",
                        skew.abs(),
                        if skew > 0 { "behind" } else { "ahead of" }
                    );
                }
            } else if st.skew_warned {
                st.skew_warned = false;
                info!(
                    self.log,
                    "shared store: clock skew back within {} s", MAX_SKEW
                );
            }
        }
        self.publish_shared(false);
    }

    /// Runs a cycle with the store's part awaited by the actor (no other
    /// message in between), as an actix future.
    fn cycle_future(&mut self, force: bool) -> actix::AtomicResponse<Self, ()> {
        let work = self.cycle(force);
        actix::AtomicResponse::new(Box::pin(
            async move {
                match work {
                    Some(w) => Some(w.await),
                    None => None,
                }
            }
            .into_actor(self)
            .map(|answers, act: &mut TicketActor, _| {
                if let Some(a) = answers {
                    act.apply_answers(a);
                }
            }),
        ))
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
        ctx.run_interval(TICK_INTERVAL, |act, ctx| act.tick_in(ctx));
        self.tick_in(ctx);
    }
}

/// Rotate now if due (tests; and a request that found no key, after the
/// clock ran past the whole ring).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick;

impl TicketActor {
    /// A cycle from a timer: the store's part, if any, is awaited by the
    /// actor before its next message.
    fn tick_in(&mut self, ctx: &mut Context<Self>) {
        if let Some(work) = self.cycle(false) {
            ctx.wait(
                work.into_actor(self)
                    .map(|a, act: &mut TicketActor, _| act.apply_answers(a)),
            );
        }
    }
}

impl Handler<Tick> for TicketActor {
    type Result = actix::AtomicResponse<Self, ()>;
    fn handle(&mut self, _: Tick, _ctx: &mut Context<Self>) -> Self::Result {
        self.cycle_future(false)
    }
}

impl Handler<super::ConfigChanged> for TicketActor {
    type Result = ();
    fn handle(&mut self, _: super::ConfigChanged, ctx: &mut Context<Self>) {
        // A new timeout can make keys too long-lived for it, or enable
        // tickets that were disabled; a new link has its keys checked.
        self.tick_in(ctx);
    }
}

/// `tlsmgr keys rotate`: a new current key at once (see
/// [`KeyRing::rotate_now`]), saved and published before the reply.
/// Refused (with the reason) when tickets are disabled, and while keys
/// are shared by epoch (`tlsmgr_shared_store`): a key of one host alone
/// would not decrypt on the others.
#[derive(Message)]
#[rtype(result = "Result<(), &'static str>")]
pub struct RotateNow;

impl Handler<RotateNow> for TicketActor {
    type Result = Result<(), &'static str>;
    fn handle(&mut self, _: RotateNow, _ctx: &mut Context<Self>) -> Self::Result {
        if self.shared.is_some() {
            return Err(
                "session ticket keys are shared through tlsmgr_shared_store: \
                 change tlsmgr_shared_secret_file on every host to replace them",
            );
        }
        let timeout = self.config.load().ticket_timeout();
        let now = self.clock.now();
        self.pool.mix_time_of_day();
        let pool = &mut self.pool;
        if !self.ring.rotate_now(now, timeout, &mut |b| pool.fill(b)) {
            return Err("session tickets are disabled (smtpd_tls_session_cache_timeout = 0)");
        }
        self.metrics.ticket_rotated();
        self.save_and_publish(true, true);
        Ok(())
    }
}

/// A key fetched by name from the shared store (by a request): it
/// decrypts from now on without another lookup.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AdoptKey(pub TicketKey);

impl Handler<AdoptKey> for TicketActor {
    type Result = ();
    fn handle(&mut self, msg: AdoptKey, _ctx: &mut Context<Self>) {
        if let Some(st) = self.shared.as_mut() {
            if st.keys.adopt(msg.0) {
                self.publish_shared(false);
            }
        }
    }
}

/// The store's part of a cycle: offer or fetch the keys that are due,
/// publish keys by name, read the store's clock. Every call is bounded by
/// the link; a failure leaves the key unconfirmed for the next cycle.
#[allow(clippy::too_many_arguments)]
async fn store_cycle(
    link: &Shared,
    due: Vec<(u64, TicketKey)>,
    unpublished: Vec<TicketKey>,
    skew_due: bool,
    len: u64,
    timeout: u32,
    now: u64,
    clock: SharedClock,
) -> Answers {
    let st = link.settings();
    let mut answers = Answers::default();
    for (e, ours) in due {
        let name = seal::epoch_name(&st.prefix, len, e);
        let sealed = seal::seal_key(&st.secret, &name, &ours);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&name)
            .arg(sealed)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(epoch::ttl(e, len, timeout, now));
        match link.call(cmd).await {
            Ok(redis::Value::Nil) => answers.settled.push((e, ours, None)),
            Ok(redis::Value::BulkString(b)) => match seal::open_key(&st.secret, &name, &b) {
                Some(w) => answers.settled.push((e, ours, Some(w))),
                None => answers.foreign.push(e),
            },
            // Another reply type is no key: try again next time.
            Ok(_) | Err(_) => {}
        }
    }
    for key in unpublished {
        let name = seal::key_name(&st.prefix, &key.name);
        let epoch_of_key = u64::try_from(key.tout_secs()).unwrap_or(0) / len.max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&name)
            .arg(seal::seal_key(&st.secret, &name, &key))
            .arg("NX")
            .arg("EX")
            .arg(epoch::ttl(
                epoch_of_key.saturating_sub(1),
                len,
                timeout,
                now,
            ));
        if link.call(cmd).await.is_ok() {
            answers.published.push(key.name);
        }
    }
    if skew_due {
        if let Ok(redis::Value::Array(parts)) = link.call(redis::cmd("TIME")).await {
            let secs = parts.first().and_then(|v| match v {
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<i64>().ok(),
                redis::Value::Int(i) => Some(*i),
                _ => None,
            });
            if let Some(secs) = secs {
                answers.skew = Some(secs - clock.now() as i64);
            }
        }
    }
    answers
}
