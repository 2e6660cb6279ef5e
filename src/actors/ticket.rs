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
//! When the save fails (a full disk, a read-only file system), the keys
//! that are not on disk are held back: requests get the ring with only the
//! keys the file holds, so the current key stays current while it still
//! encrypts, and the save is retried with backoff ([`RETRY_MAX`]), with one
//! warning per cause. `tlsmgr keys rotate` is undone and reports the
//! failure. If the saved keys stop encrypting while saves still fail, the
//! unsaved key is handed out anyway, with one warning: a ticket issued
//! under it is lost only if tlsmgr restarts before a save succeeds, while
//! handing out no key would disable tickets for every client at once (see
//! `TicketActor::safe_ring`). After SIGHUP ([`KeyFileCheck`]) a key file
//! found replaced or removed is written again from memory.
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
use crate::tickets::file::FileStamp;
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
/// Longest wait between two attempts to save the key file after a failure
/// (seconds); the waits double from one second up to this.
pub const RETRY_MAX: u64 = 30;

/// The key file as this process knows it.
#[derive(Default)]
struct Saving {
    /// The keys last written to (or read from) the file: what a restart
    /// would load.
    on_disk: KeyRing,
    /// The file that holds them.
    stamp: Option<FileStamp>,
    /// The ring in memory has keys the file lacks (a save failed).
    behind: bool,
    /// Failed attempts in a row.
    failures: u32,
    /// No attempt before this time (seconds).
    retry_at: u64,
    /// The cause last warned about; `None` once a save succeeds.
    warned: Option<String>,
    /// The saved keys ran out and an unsaved one was handed out (warned).
    unsaved_in_use: bool,
}

fn same_slots(a: &KeyRing, b: &KeyRing) -> bool {
    a.previous == b.previous && a.current == b.current && a.next == b.next
}

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
    saving: Saving,
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
        pool: Pool,
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
        let mut saving = Saving::default();
        if let Some(path) = &file {
            match file::load(path) {
                Ok(file::Loaded::Keys(loaded, stamp)) => {
                    ring = *loaded;
                    saving.on_disk = ring.clone();
                    saving.stamp = Some(stamp);
                    info!(log, "loaded session ticket keys from {}", path.display());
                }
                Ok(file::Loaded::Missing) => {}
                Ok(file::Loaded::Refused(what)) => warn!(
                    log,
                    "session ticket key file {}: {} -- not reading it; starting with new keys",
                    path.display(),
                    what
                ),
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
            pool,
            file,
            saving,
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
        // Failed saves at start were counted before the daemon's counters
        // were handed over.
        for _ in 0..self.metrics.ticket_key_save_failures() {
            metrics.ticket_key_save_failed();
        }
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

    /// Writes `ring` to the key file (nothing to do without one). A
    /// failure is counted, warned about once per cause, and schedules the
    /// next attempt; the error names the file.
    fn try_save(&mut self, ring: &KeyRing, now: u64) -> Result<(), String> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let sv = &mut self.saving;
        match file::save(ring, path) {
            Ok(stamp) => {
                sv.on_disk = ring.clone();
                sv.stamp = Some(stamp);
                sv.failures = 0;
                sv.unsaved_in_use = false;
                if sv.warned.take().is_some() {
                    info!(
                        self.log,
                        "saved session ticket keys to {} again",
                        path.display()
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.ticket_key_save_failed();
                sv.failures = sv.failures.saturating_add(1);
                let wait = 1u64
                    .checked_shl(sv.failures.saturating_sub(1))
                    .unwrap_or(RETRY_MAX)
                    .min(RETRY_MAX);
                sv.retry_at = now.saturating_add(wait);
                let why = format!(
                    "cannot save session ticket keys to {}: {}",
                    path.display(),
                    e
                );
                let cause = e.to_string();
                if sv.warned.as_deref() != Some(cause.as_str()) {
                    warn!(
                        self.log,
                        "{} -- no new key is handed out until it is saved; retrying", why
                    );
                    sv.warned = Some(cause);
                }
                Err(why)
            }
        }
    }

    /// What requests may use: the whole ring once it is on disk; while it
    /// is not, the ring with only the keys the file holds, so that no key
    /// a restart would lose encrypts a ticket.
    ///
    /// When even those keys no longer encrypt (saves kept failing past the
    /// current key's expiry), the unsaved ring is handed out, with one
    /// warning. Of the two ways to lose tickets this loses fewer: a ticket
    /// under an unsaved key is lost only if tlsmgr restarts (or crashes)
    /// before a save succeeds, and the save is still retried; handing out
    /// no key would disable tickets for every client now, each of them
    /// falling back to a full handshake until the disk has room again.
    fn safe_ring(&mut self, now: u64, timeout: u32) -> KeyRing {
        if !self.saving.behind {
            return self.ring.clone();
        }
        let disk = &self.saving.on_disk;
        let on_disk = |k: &Option<TicketKey>| {
            k.filter(|k| [disk.previous, disk.current, disk.next].contains(&Some(*k)))
        };
        let saved = KeyRing {
            previous: on_disk(&self.ring.previous),
            current: on_disk(&self.ring.current),
            next: on_disk(&self.ring.next),
            extra: self.ring.extra.clone(),
        };
        if timeout == 0 || saved.encrypt_at(now, timeout).is_ok() {
            return saved;
        }
        if !self.saving.unsaved_in_use {
            self.saving.unsaved_in_use = true;
            warn!(
                self.log,
                "the saved session ticket keys have expired and {} still cannot be written -- \
                 handing out an unsaved key (its tickets will not resume after a restart before a save succeeds)",
                self.file.as_deref().unwrap_or(std::path::Path::new("")).display()
            );
        }
        self.ring.clone()
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
                self.save_shared(&ring);
            }
            self.published.store(Arc::new(ring));
        } else if self.saving.behind && self.clock.now() >= self.saving.retry_at {
            self.save_shared(&ring);
        }
    }

    /// With a shared store the keys are in the store too: a failed save is
    /// retried and counted, but does not hold keys back.
    fn save_shared(&mut self, ring: &KeyRing) {
        let now = self.clock.now();
        self.saving.behind = self.try_save(ring, now).is_err();
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
        if changed || (self.saving.behind && now >= self.saving.retry_at) {
            self.save_ring(now);
        }
        self.publish(now, timeout, changed || force);
    }

    /// Saves the ring in memory; remembers whether the file is behind it.
    fn save_ring(&mut self, now: u64) {
        let ring = self.ring.clone();
        let saved = self.try_save(&ring, now).is_ok();
        self.saving.behind = !saved && !same_slots(&self.ring, &self.saving.on_disk);
    }

    /// Publishes what requests may use ([`TicketActor::safe_ring`]) if it
    /// differs from what they have (`force`: anyway).
    fn publish(&mut self, now: u64, timeout: u32, force: bool) {
        let ring = self.safe_ring(now, timeout);
        if force || **self.published.load() != ring {
            self.published.store(Arc::new(ring));
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
/// A rotation whose save fails is undone: the keys in force stay (and the
/// reason is returned).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct RotateNow;

impl Handler<RotateNow> for TicketActor {
    type Result = Result<(), String>;
    fn handle(&mut self, _: RotateNow, _ctx: &mut Context<Self>) -> Self::Result {
        if self.shared.is_some() {
            return Err(
                "session ticket keys are shared through tlsmgr_shared_store: \
                 change tlsmgr_shared_secret_file on every host to replace them"
                    .to_string(),
            );
        }
        let timeout = self.config.load().ticket_timeout();
        let now = self.clock.now();
        self.pool.mix_time_of_day();
        let pool = &mut self.pool;
        let before = self.ring.clone();
        if !self.ring.rotate_now(now, timeout, &mut |b| pool.fill(b)) {
            return Err(
                "session tickets are disabled (smtpd_tls_session_cache_timeout = 0)".to_string(),
            );
        }
        let ring = self.ring.clone();
        if let Err(why) = self.try_save(&ring, now) {
            // Not on disk: the new keys are never handed out.
            self.ring = before;
            self.saving.behind = !same_slots(&self.ring, &self.saving.on_disk);
            return Err(format!("{why} -- the current key stays in use"));
        }
        self.saving.behind = false;
        self.metrics.ticket_rotated();
        self.publish(now, timeout, true);
        Ok(())
    }
}

/// SIGHUP: if the key file is not the one last written (replaced by
/// another, or removed), write the keys in memory to it again, so that a
/// restart still finds every key handed out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct KeyFileCheck;

impl Handler<KeyFileCheck> for TicketActor {
    type Result = ();
    fn handle(&mut self, _: KeyFileCheck, _ctx: &mut Context<Self>) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let found = FileStamp::at(&path);
        if found.is_some() && found == self.saving.stamp {
            return;
        }
        info!(
            self.log,
            "{} was replaced or removed -- saving the session ticket keys again",
            path.display()
        );
        // Whatever is there now is not known to hold our keys.
        self.saving.on_disk = KeyRing::new();
        self.saving.stamp = None;
        let now = self.clock.now();
        let timeout = self.config.load().ticket_timeout();
        match &self.shared {
            Some(st) => {
                let ring = st.keys.ring(now);
                self.save_shared(&ring);
            }
            None => {
                self.save_ring(now);
                self.publish(now, timeout, false);
            }
        }
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
