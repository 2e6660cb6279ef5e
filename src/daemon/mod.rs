//! The daemon: wires the actors (control plane) to the shared handles the
//! data path reads, accepts connections, applies reloads, shuts down cleanly.
//!
//! - [`connection`]: the per-connection request loop.
//! - `requests`: what each request does, on the thread that read it.
//! - `io`: the threads connections are served on (`tlsmgr_io_threads`).
//! - `reload`: applying a new configuration snapshot to the running actors.
//! - `http`: the Prometheus endpoint and status page (`tlsmgr_metrics_listen`).
//! - [`admin`]: the admin socket (`tlsmgr stats`, `keys`, `cache`).
//! - `stats`: snapshots of every figure, the periodic `statistics:` log.
//!
//! [`run`] drives everything from the calling thread (an actix System: the
//! actors, the accept loops and reloads run there; the caches and the I/O
//! threads are arbiters it starts) until its `shutdown` future resolves;
//! then the I/O threads stop, every cache is flushed and every store closed
//! before it returns, so a restarted daemon finds its sessions.
//! [`spawn`] runs the same on a background thread for in-process tests.

pub mod admin;
pub mod connection;
mod http;
mod idle;
mod io;
pub(crate) mod limits;
pub(crate) mod private_socket;
mod reload;
mod requests;
mod sharing;
mod stats;

use crate::actors::cache::Flush;
use crate::actors::prng::{PrngActor, SaveExchange};
use crate::actors::ticket::{SharedRing, TicketActor};
use crate::actors::watcher::{WatchOptions, WatcherActor};
use crate::actors::CacheSet;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::error::Error;
use crate::prng::SeedPool;
use crate::protocol::CacheType;
use crate::tickets::KeyRing;
use actix::prelude::*;
use arc_swap::ArcSwap;
use reload::CacheRuntime;
use slog::{debug, error, info, Logger};
use std::future::Future;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

/// Test hook: per-cache flags that make store calls fail.
#[cfg(feature = "test-hooks")]
pub type FaultFlags = [Arc<std::sync::atomic::AtomicBool>; 3];

/// Everything a connection needs to serve requests. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    /// The live configuration snapshot.
    pub config: Arc<ArcSwap<Config>>,
    /// The running caches.
    pub caches: Arc<ArcSwap<CacheSet>>,
    /// The ticket keys in force, published by the ticket actor.
    pub ticket_keys: SharedRing,
    /// The ticket-key actor.
    pub tickets: Addr<TicketActor>,
    /// The central seed pool, fed by the PRNG actor.
    pub seeds: Arc<SeedPool>,
    /// The PRNG actor.
    pub prng: Addr<PrngActor>,
    /// The clock.
    pub clock: SharedClock,
    /// The logger.
    pub log: Logger,
    /// What starting and stopping caches needs (live reconfiguration).
    pub runtime: Arc<CacheRuntime>,
    /// Told when a request starts and ends (master(8)'s status channel).
    pub observer: Option<Arc<dyn RequestObserver>>,
    /// The counters (`tlsmgr stats`, `/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The link to the shared store, if sharing is on.
    pub shared: sharing::SharedSlot,
    /// Shared sessions this host removed (kept across relinks).
    pub tombstones: Arc<crate::shared::tombstones::Tombstones>,
}

impl crate::actors::watcher::ConfigSink for Services {
    fn apply(
        &self,
        new: Config,
    ) -> futures::future::LocalBoxFuture<'static, (Vec<String>, Arc<Config>)> {
        let svc = self.clone();
        Box::pin(async move {
            let changes = reload::apply(&svc, new).await;
            if !changes.is_empty() {
                svc.metrics
                    .reload(crate::metrics::ReloadResult::Applied, svc.clock.now());
            }
            (changes, svc.config.load_full())
        })
    }

    fn rejected(&self) {
        self.metrics
            .reload(crate::metrics::ReloadResult::Rejected, self.clock.now());
    }

    fn hangup(&self) {
        self.tickets.do_send(crate::actors::ticket::KeyFileCheck);
    }
}

/// Watches requests come and go: the master(8) child interface reports
/// TAKEN/AVAIL around each one and its watchdog times them.
pub trait RequestObserver: Send + Sync {
    /// A request was read and is about to be served.
    fn request_started(&self);
    /// Its reply was written (or the connection gave up).
    fn request_finished(&self);
    /// An I/O thread starts: what it must call, and how often, to show it
    /// makes progress (the watchdog). `None`: nothing.
    fn io_thread_beat(&self) -> Option<(Duration, ThreadBeat)> {
        None
    }
}

/// See [`RequestObserver::io_thread_beat`].
pub type ThreadBeat = Box<dyn Fn() + Send>;

/// See [`RunExtras::after_start`].
pub type AfterStart =
    Box<dyn FnOnce(Services) -> futures::future::LocalBoxFuture<'static, Result<(), Error>>>;

/// What [`run_with`] adds to [`Options`] for a master(8) child.
#[derive(Default)]
pub struct RunExtras {
    /// More listening sockets (master passes `-s N` sockets on fds 6..).
    pub more_listeners: Vec<std::os::unix::net::UnixListener>,
    /// Told about every request.
    pub observer: Option<Arc<dyn RequestObserver>>,
    /// Run on the daemon thread after the PRNG actor and the config
    /// watcher started (the exchange file and main.cf's watches are in
    /// place) and before any store or the ticket key file is opened: the
    /// master(8) child chroots and drops privileges here.
    pub before_start: Option<BeforeStart>,
    /// Run on the daemon thread once the actors are started, before the
    /// first connection is accepted (the master(8) child's watchdog).
    pub after_start: Option<AfterStart>,
}

/// See [`RunExtras::before_start`].
pub type BeforeStart = Box<dyn FnOnce() -> Result<(), Error>>;

/// What [`run`] needs.
pub struct Options {
    /// The configuration to start with.
    pub config: Config,
    /// A bound, listening socket.
    pub listener: std::os::unix::net::UnixListener,
    /// The clock (the system clock, or a manual one in tests).
    pub clock: SharedClock,
    /// Where log lines go.
    pub log: Logger,
    /// Test hook: per-cache flags that make store calls fail (see
    /// [`crate::cache::Cache::with_fault_injection`]).
    #[cfg(feature = "test-hooks")]
    pub fault_injection: Option<FaultFlags>,
    /// Watch main.cf and apply edits live (`None`: configuration fixed).
    pub watch: Option<WatchOptions>,
    /// The admin socket, bound (see [`admin::bind`]); `None`: no admin socket.
    pub admin: Option<std::os::unix::net::UnixListener>,
    /// The entropy source and exchange file opened before a chroot
    /// ([`crate::prng::preopen`]), for the PRNG actor to adopt.
    pub prng_preopened: Option<crate::prng::Preopened>,
}

async fn start_caches(cfg: &Config, runtime: &CacheRuntime) -> CacheSet {
    let mut set = CacheSet::default();
    for ct in CacheType::ALL {
        set.0[ct.index()] = runtime.start_cache(ct, cfg).await;
    }
    set
}

/// Runs the daemon on this thread until `shutdown` resolves. `ready` is
/// called once the actors are started and the socket is being served.
pub fn run(
    opts: Options,
    shutdown: impl Future<Output = ()> + 'static,
    ready: impl FnOnce(Services) + 'static,
) -> Result<(), Error> {
    run_with(opts, RunExtras::default(), shutdown, ready)
}

/// [`run`] with more listeners, a request observer and a start hook.
pub fn run_with(
    opts: Options,
    extras: RunExtras,
    shutdown: impl Future<Output = ()> + 'static,
    ready: impl FnOnce(Services) + 'static,
) -> Result<(), Error> {
    let mut opts = opts;
    // Before the chroot and the privilege drop (`before_start`): the
    // secret file is root's. A bad one is fatal at start.
    opts.config.load_shared_secret()?;
    // Keyed before anything starts: a system that refuses its random
    // source cannot serve seeds or make ticket keys, so the start fails
    // with `fatal:` rather than with a panic in an actor.
    let os_rng = |e| Error::io("read the system's random source (getrandom)", e);
    let seeds = SeedPool::try_from_os().map_err(os_rng)?;
    let ticket_pool = crate::prng::Pool::try_from_os().map_err(os_rng)?;
    let system = actix_rt::System::new();
    let log = opts.log.clone();
    let result = system.block_on(async move {
        // Polled once now, so that a shutdown future that installs signal
        // handlers (SIGTERM) has them in place from the start: a signal
        // during start-up then stops the daemon cleanly, not by default.
        let mut shutdown = Box::pin(shutdown);
        let stopped_early = futures::poll!(&mut shutdown).is_ready();
        let config = Arc::new(ArcSwap::from_pointee(opts.config.clone()));
        let metrics = Arc::new(crate::metrics::Metrics::new(opts.clock.now()));
        #[allow(unused_mut)]
        let mut runtime = CacheRuntime::new(opts.clock.clone(), opts.log.clone(), metrics.clone());
        #[cfg(feature = "test-hooks")]
        {
            runtime = runtime.with_faults(opts.fault_injection.clone());
        }
        let runtime = Arc::new(runtime);
        let ticket_keys: SharedRing = Arc::new(ArcSwap::from_pointee(KeyRing::new()));
        // The ticket actor's address now, the actor itself once its key
        // file can be opened (after `before_start`).
        let ticket_ctx = actix::Context::<TicketActor>::new();
        let prng = PrngActor::managed(seeds, config.clone(), opts.clock.clone(), opts.log.clone())
            .with_preopened(opts.prng_preopened.take());
        let svc = Services {
            ticket_keys: ticket_keys.clone(),
            tickets: ticket_ctx.address(),
            seeds: prng.seed_pool(),
            prng: prng.start(),
            clock: opts.clock.clone(),
            config: config.clone(),
            caches: Arc::new(ArcSwap::from_pointee(CacheSet::default())),
            log: opts.log.clone(),
            runtime: runtime.clone(),
            observer: extras.observer,
            metrics: metrics.clone(),
            shared: Default::default(),
            tombstones: Default::default(),
        };
        // The exchange file is updated once before serving, as stock does.
        let _ = svc.prng.send(crate::actors::prng::GetStatus).await;
        // Kept alive until shutdown: dropping the watcher's address stops it.
        // Launched before `before_start`, so its watches exist before a
        // chroot. (A reload can only start after the debounce period, long
        // after the caches below are in place.)
        let _watcher = opts
            .watch
            .map(|w| WatcherActor::launch(w, std::rc::Rc::new(svc.clone()), opts.log.clone()));
        // Before a chroot hides /etc/passwd.
        let admin_uids = admin::allowed_uids(&opts.config.mail_owner);
        if let Some(hook) = extras.before_start {
            hook()?;
        }
        // Its thread starts after the chroot, as the I/O threads do.
        svc.shared
            .store(sharing::start_link(&opts.config, &opts.log));
        // Everything that opens files by path, from where they are now.
        svc.caches
            .store(Arc::new(start_caches(&opts.config, &runtime).await));
        ticket_ctx.run(
            TicketActor::new(
                ticket_pool,
                config,
                ticket_keys,
                svc.shared.clone(),
                opts.clock.clone(),
                opts.log.clone(),
            )
            .with_metrics(metrics.clone()),
        );
        if let Some(hook) = extras.after_start {
            hook(svc.clone()).await?;
        }
        // Started after the hook: no thread of ours predates the chroot
        // that is not needed before it.
        let io = std::rc::Rc::new(io::IoThreads::start(
            opts.config.io_threads,
            svc.observer.as_deref(),
        ));
        {
            let config = svc.config.clone();
            actix_rt::spawn(idle::sweep(
                io.connections().clone(),
                move || config.load().ipc_timeout,
                svc.log.clone(),
            ));
        }
        let mut accepts = Vec::new();
        for std_listener in std::iter::once(opts.listener).chain(extras.more_listeners) {
            std_listener
                .set_nonblocking(true)
                .map_err(|e| Error::io("set listening socket non-blocking", e))?;
            let listener = tokio::net::UnixListener::from_std(std_listener)
                .map_err(|e| Error::io("register listening socket", e))?;
            accepts.push(accept_loop(listener, svc.clone(), io.clone()));
        }
        if let Some(std_listener) = opts.admin {
            std_listener
                .set_nonblocking(true)
                .map_err(|e| Error::io("set admin socket non-blocking", e))?;
            let listener = tokio::net::UnixListener::from_std(std_listener)
                .map_err(|e| Error::io("register admin socket", e))?;
            actix_rt::spawn(admin::serve(listener, svc.clone(), admin_uids));
        }
        actix_rt::spawn(stats::log_periodically(svc.clone()));
        actix_rt::spawn(http::supervise(svc.clone()));
        actix_rt::spawn(sharing::apply_told(svc.clone()));
        ready(svc.clone());
        if !stopped_early {
            tokio::select! {
                _ = futures::future::join_all(accepts) => {}
                _ = &mut shutdown => {}
            }
        }
        // Stop serving before the stores are flushed.
        let io_arbiters = io.stop();
        // Sync every store before the arbiters go away (their actors then
        // close the stores).
        for rc in svc.caches.load().0.iter().flatten() {
            let _ = rc.addr.send(Flush).await;
        }
        // Stock tlsmgr's exit hook: leave fresh bytes in the exchange file.
        let _ = svc.prng.send(SaveExchange).await;
        Ok::<_, Error>((io_arbiters, svc.runtime.take_arbiters()))
    });
    let (io_arbiters, arbiters) = result?;
    for arbiter in io_arbiters {
        let _ = arbiter.join();
    }
    // Stopping an arbiter drops its actor and so closes its store; joining
    // makes sure the store lock is released before we return.
    for arbiter in arbiters {
        arbiter.stop();
        let _ = arbiter.join();
    }
    info!(log, "stopped");
    Ok(())
}

/// Accepts clients on `listener` and hands them to the I/O threads. Out of
/// descriptors, a waiting client takes the place of the longest-idle
/// connection, or is closed at once when none is idle, rather than left
/// hanging; the shortage is logged once a minute, not per failure
/// ([`limits`], [`idle`]).
async fn accept_loop(
    listener: tokio::net::UnixListener,
    svc: Services,
    io: std::rc::Rc<io::IoThreads>,
) {
    use limits::ShortageOutcome;
    /// How long to wait for a connection shut down to make room to close
    /// its descriptor (it only has to wake up and return).
    const CLOSE_WAIT: Duration = Duration::from_millis(100);
    let mut spare = limits::Spare::new();
    let mut shortage = limits::Exhaustion::default();
    // Measured before any client of this listener: what is open now is the
    // daemon's own.
    let budget = limits::ConnectionBudget::of_this_process(listener.as_fd());
    debug!(
        svc.log,
        "client connections: at most {:?} before the longest-idle one makes room",
        budget.max()
    );
    loop {
        match listener.accept().await {
            Ok((stream, _)) if budget.is_spent(io.open_connections()) => {
                // Accepted, but into a descriptor the daemon's own files
                // need: as at EMFILE, the newcomer takes an idle
                // connection's place or is closed.
                let now = std::time::Instant::now();
                io.connections().tick(now);
                let outcome = make_room(stream, &svc, &io);
                if outcome == ShortageOutcome::Replaced {
                    io.connections().wait_closed(CLOSE_WAIT).await;
                }
                let e = std::io::Error::from_raw_os_error(libc::EMFILE);
                if let Some(line) = shortage.failed(now, &e, outcome) {
                    error!(svc.log, "{}", line);
                }
            }
            Ok((stream, _)) => {
                let now = std::time::Instant::now();
                io.connections().tick(now);
                if let Some(line) = shortage.accepted(now) {
                    info!(svc.log, "{}", line);
                }
                io.serve(stream, svc.clone())
            }
            Err(e) if limits::out_of_descriptors(&e) => {
                let now = std::time::Instant::now();
                io.connections().tick(now);
                // Linux fails accept(2) with EMFILE before it looks at the
                // queue, so this may be a client waiting or nobody. The
                // reserve descriptor's slot takes the waiting client.
                // Polled once with a no-op waker, so nothing blocks here
                // with the reserve let go; Pending means nobody was
                // waiting, and the next accept waits for the next client.
                spare.release();
                let polled = listener
                    .poll_accept(&mut std::task::Context::from_waker(std::task::Waker::noop()));
                let outcome = match polled {
                    // Closed when nobody is idle before the reserve is
                    // taken back, since its slot is the one the reserve
                    // needs.
                    std::task::Poll::Ready(Ok((stream, _))) => make_room(stream, &svc, &io),
                    std::task::Poll::Ready(Err(_)) => ShortageOutcome::Nothing,
                    std::task::Poll::Pending => {
                        spare.restore();
                        continue;
                    }
                };
                if outcome == ShortageOutcome::Replaced {
                    // The reserve's slot went to the newcomer; the one the
                    // closed connection frees becomes the reserve.
                    io.connections().wait_closed(CLOSE_WAIT).await;
                }
                let restored = spare.restore();
                if let Some(line) = shortage.failed(now, &e, outcome) {
                    error!(svc.log, "{}", line);
                }
                if outcome == ShortageOutcome::Nothing || !restored {
                    // A client waits and could not be taken (no reserve):
                    // back off rather than spin on a listener that stays
                    // readable.
                    actix_rt::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Err(e) => {
                error!(svc.log, "accept connection: {}", e);
                // Back off instead of spinning.
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Out of descriptors for clients: `stream` is served in place of the
/// longest-idle connection, which is shut down, or closed at once when
/// none is idle (end of file before the announcement: a Postfix client
/// retries, as after any failed request).
fn make_room(
    stream: tokio::net::UnixStream,
    svc: &Services,
    io: &io::IoThreads,
) -> limits::ShortageOutcome {
    if io.connections().close_longest_idle() {
        io.serve(stream, svc.clone());
        limits::ShortageOutcome::Replaced
    } else {
        drop(stream);
        limits::ShortageOutcome::ClosedNew
    }
}

/// A daemon running on a background thread (tests, benches).
pub struct DaemonHandle {
    stop: Option<futures::channel::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), Error>>>,
    /// The daemon's services, to reach its actors from the test.
    pub services: Services,
}

/// Starts [`run`] on a new thread and waits until it serves.
pub fn spawn(opts: Options) -> Result<DaemonHandle, Error> {
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("tlsmgr-daemon".into())
        .spawn(move || {
            run(
                opts,
                async move {
                    let _ = stop_rx.await;
                },
                move |svc| {
                    let _ = ready_tx.send(svc);
                },
            )
        })
        .map_err(|e| Error::io("spawn daemon thread", e))?;
    match ready_rx.recv() {
        Ok(services) => Ok(DaemonHandle {
            stop: Some(stop_tx),
            thread: Some(thread),
            services,
        }),
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(Error::io(
                "start daemon",
                std::io::Error::other("daemon thread exited before serving"),
            )),
        },
    }
}

impl DaemonHandle {
    /// Stops the daemon, flushing and closing every store, and waits for it.
    pub fn stop(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::io(
                "stop daemon",
                std::io::Error::other("daemon thread panicked"),
            )),
            None => Ok(()),
        }
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
