//! The PRNG actor: manages what feeds the central [`SeedPool`] (spec §2.5):
//! the `tls_random_source` reseeds and the exchange file. Seeds themselves
//! are served on each request's thread from the pool
//! ([`SeedPool::seed`], see `prng::threads`); the [`Seed`]
//! message does the same from the actor, for tests and benches.
//!
//! Timing comes from `prng::schedule::Schedule` with `now` from the injected clock; a
//! one-second timer (and the [`Tick`] message, for tests) asks it what is
//! due. Source reads and exchange-file updates run off the actor (async
//! socket I/O, or tokio's blocking pool), so a stalled EGD server or a slow
//! disk never delays a seed: until a source answers, seeds come from the
//! OS-keyed pool. A source that fails is logged with Postfix's words and
//! reopened in place with backoff, where stock tlsmgr exits to reopen it.
//! [`SaveExchange`] writes the exchange file once more; the server's
//! shutdown path sends it.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::prng::exchange::ExchangeFile;
use crate::prng::schedule::{Job, Schedule};
use crate::prng::source::{self, Entropy, Failure, Handle, RandomSource, IO_TIMEOUT};
use crate::prng::{SeedPool, MAX_SEED};
use actix::prelude::*;
use arc_swap::ArcSwap;
use slog::{debug, info, warn, Level, Logger};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the actor asks the schedule what is due.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// What the actor is wired to when it manages sources.
struct Managed {
    config: Arc<ArcSwap<Config>>,
    clock: SharedClock,
    log: Logger,
}

/// Counters and state, for tests and `tlsmgr check`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrngStatus {
    /// The source in use.
    pub source: String,
    /// Whether it is open now.
    pub source_open: bool,
    /// Successful source reads.
    pub reseeds: u64,
    /// Bytes those reads delivered.
    pub source_bytes: u64,
    /// Failed opens and reads.
    pub source_failures: u64,
    /// Whether the plain-file source has been read (it is read once).
    pub source_spent: bool,
    /// Successful exchange-file updates.
    pub exchange_updates: u64,
    /// Failed ones.
    pub exchange_failures: u64,
    /// Bytes read from the exchange file and mixed in, in total.
    pub exchange_bytes_mixed: u64,
    /// Seeds served.
    pub seeds: u64,
    /// When the next reseed is due (clock seconds), if scheduled.
    pub next_reseed: Option<u64>,
    /// When the next exchange update is due, if scheduled.
    pub next_exchange: Option<u64>,
}

/// The actor.
pub struct PrngActor {
    pool: Arc<SeedPool>,
    managed: Option<Managed>,
    schedule: Schedule,
    source: RandomSource,
    /// Bumped when the configured source changes, so a read started for the
    /// old source is discarded.
    source_generation: u64,
    handle: Option<Handle>,
    exchange: Option<(PathBuf, PathBuf, Arc<Mutex<ExchangeFile>>)>,
    /// Whether [`PrngActor::reconcile`] has applied a configuration yet.
    configured: bool,
    /// What was opened before a chroot ([`crate::prng::preopen`]), adopted
    /// by the first reconcile.
    preopened: Option<crate::prng::Preopened>,
    status: PrngStatus,
}

impl std::fmt::Debug for PrngActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrngActor")
            .field("source", &self.source)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl PrngActor {
    /// A bare pool keyed from the operating system: no sources, no
    /// exchange file (benches, unit tests).
    pub fn new() -> Self {
        Self::feeding(SeedPool::from_os())
    }

    /// A bare actor feeding `pool`.
    fn feeding(pool: SeedPool) -> Self {
        PrngActor {
            pool: Arc::new(pool),
            managed: None,
            schedule: Schedule::default(),
            source: RandomSource::None,
            source_generation: 0,
            handle: None,
            exchange: None,
            configured: false,
            preopened: None,
            status: PrngStatus::default(),
        }
    }

    /// The central pool this actor feeds, for the data path.
    pub fn seed_pool(&self) -> Arc<SeedPool> {
        self.pool.clone()
    }

    /// The daemon's PRNG manager feeding `pool`: sources and exchange
    /// file as `config` says (read again at every tick, so a reload takes
    /// effect), time from `clock`.
    pub fn managed(
        pool: SeedPool,
        config: Arc<ArcSwap<Config>>,
        clock: SharedClock,
        log: Logger,
    ) -> Self {
        PrngActor {
            managed: Some(Managed { config, clock, log }),
            ..Self::feeding(pool)
        }
    }

    /// Adopts the source and exchange file opened before a chroot, when
    /// the configuration still names them.
    pub fn with_preopened(mut self, preopened: Option<crate::prng::Preopened>) -> Self {
        self.preopened = preopened;
        self
    }

    fn log_at(log: &Logger, level: Level, msg: &str) {
        match level {
            Level::Critical | Level::Error | Level::Warning => warn!(log, "{}", msg),
            Level::Info => info!(log, "{}", msg),
            Level::Debug | Level::Trace => debug!(log, "{}", msg),
        }
    }

    /// Picks up configuration changes (and the initial configuration).
    fn reconcile(&mut self, now: u64) {
        let Some(m) = &self.managed else { return };
        let cfg = m.config.load();
        let want = cfg.random_source();
        let first = !self.configured;
        self.configured = true;
        let mut pre = if first { self.preopened.take() } else { None };
        if first || want != self.source {
            self.source_generation += 1;
            self.handle = None;
            self.status.source = want.to_string();
            self.status.source_open = false;
            self.status.source_spent = false;
            if want == RandomSource::None {
                warn!(
                    m.log,
                    "no entropy source specified with parameter tls_random_source"
                );
                warn!(m.log, "encryption keys etc. may be predictable");
                self.schedule.disable(Job::Reseed);
            } else {
                self.schedule.arm_now(Job::Reseed, now);
            }
            if let Some((src, h)) = pre.as_mut().and_then(|p| p.source.take()) {
                if src == want {
                    match h.into_handle() {
                        Ok(h) => self.handle = Some(h),
                        Err(e) => {
                            warn!(m.log, "cannot use the pre-opened {}: {}", src.describe(), e)
                        }
                    }
                }
            }
            self.source = want;
        }
        let want_exchange = cfg
            .tls_random_exchange_name
            .clone()
            .map(|p| (p, cfg.data_directory.clone()));
        let have = self
            .exchange
            .as_ref()
            .map(|(p, d, _)| (p.clone(), d.clone()));
        if first || want_exchange != have {
            match want_exchange {
                Some((p, d)) => {
                    let adopted = pre
                        .as_mut()
                        .and_then(|x| x.exchange.take())
                        .filter(|f| f.path() == p && f.data_directory() == d);
                    let file = adopted.unwrap_or_else(|| ExchangeFile::new(p.clone(), d.clone()));
                    self.exchange = Some((p, d, Arc::new(Mutex::new(file))));
                    self.schedule.arm_now(Job::Exchange, now);
                }
                None => {
                    self.exchange = None;
                    self.schedule.disable(Job::Exchange);
                }
            }
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(m) = &self.managed else { return };
        let now = m.clock.now();
        self.reconcile(now);
        for job in self.schedule.due(now) {
            match job {
                Job::Reseed => self.start_reseed(ctx),
                Job::Exchange => self.start_exchange(ctx),
            }
        }
        self.status.next_reseed = self.schedule.reseed.at;
        self.status.next_exchange = self.schedule.exchange.at;
    }

    fn start_reseed(&mut self, ctx: &mut Context<Self>) {
        let Some(m) = &self.managed else { return };
        let bytes = m.config.load().tls_random_bytes;
        let src = self.source.clone();
        let generation = self.source_generation;
        let handle = self.handle.take();
        let fut = async move {
            let (handle, opened) = match handle {
                Some(h) => (h, false),
                None => match source::open(&src, IO_TIMEOUT).await {
                    Ok(Some(h)) => (h, true),
                    Ok(None) => return ReseedOutcome::NoSource,
                    Err(f) => return ReseedOutcome::OpenFailed(f),
                },
            };
            let (handle, result) = source::read(handle, bytes, IO_TIMEOUT).await;
            ReseedOutcome::Read {
                handle,
                result,
                opened,
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |outcome, act, _ctx| {
            if act.source_generation == generation {
                act.reseed_done(outcome);
            }
        }));
    }

    fn reseed_done(&mut self, outcome: ReseedOutcome) {
        let Some(m) = &self.managed else { return };
        let log = m.log.clone();
        let now = m.clock.now();
        let period = m.config.load().tls_random_reseed_period;
        let what = self.source.describe();
        let failures_before = self.schedule.reseed.failures;
        let failure = match outcome {
            ReseedOutcome::NoSource => {
                self.schedule.disable(Job::Reseed);
                return;
            }
            ReseedOutcome::OpenFailed(f) => f,
            ReseedOutcome::Read {
                handle,
                result: Ok(entropy),
                opened,
            } => {
                self.reseeded(&log, &what, &entropy, opened, failures_before);
                if matches!(self.source, RandomSource::File(_)) {
                    // Postfix reads a plain file once and then forgets it.
                    self.status.source_spent = true;
                    self.status.source_open = false;
                    self.schedule.disable(Job::Reseed);
                } else {
                    self.handle = handle;
                    self.status.source_open = self.handle.is_some();
                    let b = self.pool.with(|p| p.byte());
                    self.schedule.succeeded(Job::Reseed, now, period, b);
                }
                return;
            }
            ReseedOutcome::Read { result: Err(f), .. } => f,
        };
        // Failure: drop the handle, log Postfix's line, then ours.
        self.handle = None;
        self.status.source_open = false;
        self.status.source_failures += 1;
        Self::log_at(&log, failure.level, &failure.message);
        let delay = self.schedule.failed(Job::Reseed, now, period);
        let retry = match &self.source {
            RandomSource::Egd(p) => format!(
                "lost connection to EGD server {} -- reconnecting in {delay}s",
                p.display()
            ),
            src => format!("reopening external entropy source {src} in {delay}s"),
        };
        info!(log, "{}; seeds keep coming from the pool", retry);
    }

    fn reseeded(
        &mut self,
        log: &Logger,
        what: &str,
        entropy: &Entropy,
        opened: bool,
        failures_before: u32,
    ) {
        self.pool.reseed(&entropy.material);
        self.status.reseeds += 1;
        self.status.source_bytes += entropy.count as u64;
        if failures_before > 0 {
            info!(
                log,
                "{what} is back after {failures_before} failed attempt(s)"
            );
        } else if opened {
            debug!(log, "opened {what}");
        }
        if entropy.count == 0 {
            warn!(log, "{what} is empty: nothing to mix in");
        } else if entropy.count < entropy.requested && !matches!(self.source, RandomSource::File(_))
        {
            info!(
                log,
                "{what} returned {} of {} bytes (short read)", entropy.count, entropy.requested
            );
        }
        debug!(log, "read {} bytes from {what}", entropy.count);
    }

    fn exchange_job(
        &mut self,
    ) -> Option<impl std::future::Future<Output = Result<crate::prng::exchange::Report, Failure>>>
    {
        let (_, _, file) = self.exchange.as_ref()?;
        let file = file.clone();
        let child = self.pool.with(|p| p.fork());
        Some(async move {
            tokio::task::spawn_blocking(move || {
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                f.update(child)
            })
            .await
            .unwrap_or_else(|e| {
                Err(Failure {
                    level: Level::Warning,
                    message: format!("PRNG exchange file update failed: {e}"),
                })
            })
        })
    }

    fn start_exchange(&mut self, ctx: &mut Context<Self>) {
        let Some(job) = self.exchange_job() else {
            return;
        };
        let job = job.into_actor(self).map(|r, act, _ctx| {
            act.exchange_done(r, true);
        });
        if self.status.exchange_updates + self.status.exchange_failures == 0 {
            // The update at start, as stock does it before serving: the
            // actor answers nothing (the daemon's start-up GetStatus
            // included) until it is done.
            ctx.wait(job);
        } else {
            ctx.spawn(job);
        }
    }

    fn exchange_done(
        &mut self,
        r: Result<crate::prng::exchange::Report, Failure>,
        reschedule: bool,
    ) {
        let Some(m) = &self.managed else { return };
        let log = m.log.clone();
        let now = m.clock.now();
        let period = m.config.load().tls_random_prng_update_period;
        match r {
            Ok(report) => {
                self.pool.reseed(&report.read);
                self.status.exchange_updates += 1;
                self.status.exchange_bytes_mixed += report.read.len() as u64;
                for (level, note) in &report.notes {
                    Self::log_at(&log, *level, note);
                }
                if reschedule {
                    let b = self.pool.with(|p| p.byte());
                    self.schedule.succeeded(Job::Exchange, now, period, b);
                }
            }
            Err(f) => {
                self.status.exchange_failures += 1;
                Self::log_at(&log, f.level, &f.message);
                if reschedule {
                    let delay = self.schedule.failed(Job::Exchange, now, period);
                    info!(
                        log,
                        "retrying the PRNG exchange file in {delay}s; seeds keep coming from the pool"
                    );
                }
            }
        }
    }
}

enum ReseedOutcome {
    NoSource,
    OpenFailed(Failure),
    Read {
        handle: Option<Handle>,
        result: Result<Entropy, Failure>,
        opened: bool,
    },
}

impl Default for PrngActor {
    fn default() -> Self {
        Self::new()
    }
}

impl Actor for PrngActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.managed.is_some() {
            self.tick(ctx);
            ctx.run_interval(TICK_INTERVAL, |act, ctx| act.tick(ctx));
        }
    }
}

/// `size` bytes of seed (1..=255; the server checks the range first).
#[derive(Message)]
#[rtype(result = "Vec<u8>")]
pub struct Seed(pub usize);

impl Handler<Seed> for PrngActor {
    type Result = MessageResult<Seed>;
    fn handle(&mut self, msg: Seed, _ctx: &mut Context<Self>) -> Self::Result {
        let mut out = vec![0u8; msg.0.min(MAX_SEED)];
        self.pool.seed(&mut out);
        MessageResult(out)
    }
}

/// Asks the schedule what is due now (the timer does this every second;
/// tests send it after stepping the clock).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Tick;

impl Handler<Tick> for PrngActor {
    type Result = ();
    fn handle(&mut self, _msg: Tick, ctx: &mut Context<Self>) {
        self.tick(ctx);
    }
}

/// The counters and schedule.
#[derive(Message)]
#[rtype(result = "PrngStatus")]
pub struct GetStatus;

impl Handler<GetStatus> for PrngActor {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let mut s = self.status.clone();
        s.seeds = self.pool.seeds_served();
        s.next_reseed = self.schedule.reseed.at;
        s.next_exchange = self.schedule.exchange.at;
        MessageResult(s)
    }
}

/// Updates the exchange file now and answers when it is written (the exit
/// path: stock tlsmgr does this in its exit hook). Does nothing without an
/// exchange file.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SaveExchange;

impl Handler<SaveExchange> for PrngActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _msg: SaveExchange, _ctx: &mut Context<Self>) -> Self::Result {
        match self.exchange_job() {
            Some(job) => Box::pin(job.into_actor(self).map(|r, act, _ctx| {
                act.exchange_done(r, false);
            })),
            None => Box::pin(fut::ready(())),
        }
    }
}

/// Live reload: the new configuration is already in the shared snapshot;
/// reconcile with it now rather than at the next one-second tick.
impl Handler<super::ConfigChanged> for PrngActor {
    type Result = ();
    fn handle(&mut self, _msg: super::ConfigChanged, ctx: &mut Context<Self>) {
        self.tick(ctx);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::logging::MemoryLog;
    use crate::prng::exchange::Report;
    use std::collections::HashMap;

    /// A managed actor on a fixed key (predictable on purpose), no I/O.
    fn actor() -> PrngActor {
        let map: HashMap<String, String> =
            [("tls_random_source", ""), ("tls_random_exchange_name", "")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let cfg = Config::from_source(&map).unwrap();
        PrngActor::managed(
            SeedPool::new(crate::prng::Pool::from_key([3; 32])),
            Arc::new(ArcSwap::from_pointee(cfg)),
            ManualClock::new(1000),
            MemoryLog::default().logger("postfix/tlsmgr"),
        )
    }

    fn output(a: &mut PrngActor) -> [u8; 32] {
        let mut out = [0u8; 32];
        a.pool.with(|p| p.fill(&mut out));
        out
    }

    fn reseed(a: &mut PrngActor, bytes: &[u8]) {
        a.reseed_done(ReseedOutcome::Read {
            handle: None,
            result: Ok(Entropy {
                material: bytes.to_vec(),
                count: bytes.len(),
                requested: 32,
            }),
            opened: false,
        });
    }

    fn exchange(a: &mut PrngActor, bytes: &[u8]) {
        a.exchange_done(
            Ok(Report {
                read: bytes.to_vec(),
                old_size: bytes.len() as u64,
                opened: false,
                notes: Vec::new(),
            }),
            false,
        );
    }

    #[test]
    fn source_bytes_are_mixed_into_the_pool() {
        let (mut x, mut y, mut none) = (actor(), actor(), actor());
        reseed(&mut x, b"entropy x");
        reseed(&mut y, b"entropy y");
        let (ox, oy, on) = (output(&mut x), output(&mut y), output(&mut none));
        assert_ne!(ox, oy, "the input decides the new key");
        assert_ne!(ox, on);
        assert_eq!(x.status.reseeds, 1);
        assert_eq!(x.status.source_bytes, 9);
    }

    #[test]
    fn exchange_bytes_are_mixed_into_the_pool() {
        let (mut x, mut y) = (actor(), actor());
        exchange(&mut x, &[1; 1024]);
        exchange(&mut y, &[2; 1024]);
        assert_ne!(output(&mut x), output(&mut y));
        assert_eq!(x.status.exchange_bytes_mixed, 1024);
    }

    #[test]
    fn a_failed_read_mixes_nothing_and_schedules_a_retry() {
        let (mut x, mut same) = (actor(), actor());
        x.reseed_done(ReseedOutcome::Read {
            handle: None,
            result: Err(Failure {
                level: Level::Info,
                message: "cannot read from entropy device /x: end of file".into(),
            }),
            opened: false,
        });
        assert_eq!(x.status.source_failures, 1);
        assert_eq!(x.schedule.reseed.at, Some(1001));
        assert_eq!(output(&mut x), output(&mut same));
    }
}
