//! Running as a child of Postfix's master(8) (spec §4): what `tlsmgr -l -t
//! unix -u -c` does when master.cf starts it.
//!
//! - [`args`]: the generic daemon options.
//! - `status`: the fd-5 status channel (TAKEN/AVAIL records, EOF = exit).
//! - `privileges`: mail_owner file creation, chroot, privilege drop, the
//!   data_directory redirection.
//! - `watchdog`: `fatal: watchdog timeout` after `daemon_timeout` without progress.
//! - `descriptors`: taking over fds 5 and 6.. from master.
//! - `log`: the loggers before and after main.cf is read.
//! - `paths`: the §2.9 redirection for stores and the exchange file, and
//!   paths inside the chroot, re-applied at each live reload.
//!
//! The PRNG side (entropy source, exchange file) is [`crate::prng`]'s,
//! opened here by [`crate::prng::preopen`]; live reload is the config
//! watcher's ([`crate::actors::watcher`]), reading main.cf through a
//! [`ConfigDir`] handle opened before the chroot.
//!
//! Order of start-up (multi_server's, spec §2.1): parse options, read main.cf
//! (`$MAIL_CONFIG`) with `-o` overrides and the read-only `process_id`,
//! `process_name`, `service_name`, open the log (syslog or postlogd, `-V`
//! adds stderr), refuse a terminal on stdin, chdir to `queue_directory`; as
//! root with mail_owner's effective ids open the exchange file and the
//! stores; then chroot (`-c`) and drop to mail_owner (`-u`); then serve the
//! listening sockets on fds 6.. until fd 5 reports end of file (reload or
//! master exit) or SIGTERM (`postfix stop`). Either way the exchange file is
//! saved and the stores are flushed and closed before exit 0 (stock tlsmgr
//! loses its state on SIGTERM). We never fork and never call setsid(): the
//! pid must stay master's child and `postfix stop` signals our process group.

pub mod args;
mod descriptors;
mod error;
use error::MasterError;
mod log;
pub mod mastercf;
pub mod paths;
mod privileges;
mod status;
mod watchdog;

use crate::actors::watcher::WatchOptions;
use crate::config::dir::ConfigDir;
use crate::config::Config;
use crate::daemon::{AfterStart, Options, RequestObserver, RunExtras, Services};
use args::MasterArgs;
use descriptors::{inherited_fd, set_cloexec};
use paths::PathPolicy;
use privileges::MailOwner;
use slog::{crit, debug, info, warn, Logger};
use status::StatusChannel;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use watchdog::Watchdog;

fn basename(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tlsmgr".to_string())
}

/// Dies the Postfix way: `fatal: TEXT` and exit status 1.
fn fatal(log: &Logger, text: impl std::fmt::Display) -> ExitCode {
    crit!(log, "{}", text);
    ExitCode::from(1)
}

struct MasterObserver {
    status: StatusChannel,
    watchdog: Arc<Watchdog>,
    lost_master: Arc<tokio::sync::Notify>,
}

impl RequestObserver for MasterObserver {
    fn request_started(&self) {
        self.watchdog.request_started();
        if self.status.taken().is_err() {
            self.lost_master.notify_one();
        }
    }
    fn request_finished(&self) {
        self.watchdog.request_finished();
        // multi_server: failing to report AVAIL is treated like master death.
        if self.status.avail().is_err() {
            self.lost_master.notify_one();
        }
    }
    fn io_thread_beat(&self) -> Option<(std::time::Duration, crate::daemon::ThreadBeat)> {
        let index = self.watchdog.register_thread();
        let dog = self.watchdog.clone();
        Some((
            self.watchdog.beat_interval(),
            Box::new(move || dog.thread_beat(index)),
        ))
    }
}

/// A phase of start-up that could not be completed: already logged the
/// Postfix way (`fatal: ...`), exit with this code.
type Fatal = ExitCode;

/// Entry point when master(8) runs us: `argv0` and the arguments after it.
/// The phases follow multi_server's (spec §2.1).
pub fn main(argv0: &str, argv: &[String]) -> ExitCode {
    let run = || -> Result<(), Fatal> {
        let mut started = startup(argv0, argv)?;
        let fds = take_descriptors(&started)?;
        let pre = pre_init(&mut started)?;
        serve(started, fds, pre)
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// What start-up read: options, main.cf (through a handle that outlives a
/// chroot), the loggers.
struct Startup {
    args: MasterArgs,
    overrides: Vec<String>,
    dir: ConfigDir,
    cfg: Config,
    log: Logger,
    log_follower: log::LogFollower,
    generation: u32,
}

/// Options, main.cf with `-o` overrides and the read-only `process_id`,
/// `process_name`, `service_name`, the log (syslog or postlogd, `-V` adds
/// stderr), the refusals (bad options, a terminal on stdin), and the chdir
/// to `queue_directory`.
fn startup(argv0: &str, argv: &[String]) -> Result<Startup, Fatal> {
    let process_name = basename(argv0);
    // SIGPIPE is already ignored by the Rust runtime; SIGXFSZ as Postfix does.
    // SAFETY: installing SIG_IGN runs no handler code.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGXFSZ,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    let early_log = log::early_logger(&process_name);
    let mut args = MasterArgs::parse(argv).map_err(|e| fatal(&early_log, e))?;
    if std::env::var_os("MAIL_VERBOSE").is_some() {
        args.verbose += 1;
    }
    let service_name = args
        .service_name
        .clone()
        .unwrap_or_else(|| process_name.clone());
    let config_dir = crate::config::config_directory(None);
    let mut overrides = args.overrides.clone();
    // Read-only parameters: set by the process, ours win over `-o`.
    overrides.push(format!("process_id={}", std::process::id()));
    overrides.push(format!("process_name={process_name}"));
    overrides.push(format!("service_name={service_name}"));
    // Opened before the chroot: live reload reads main.cf through it.
    let dir = ConfigDir::open(&config_dir)
        .map_err(|e| fatal(&early_log, format!("open {}: {e}", config_dir.display())))?;
    let mut cfg = Config::load_from(&dir, &overrides).map_err(|e| fatal(&early_log, e))?;
    // Still root, before the chroot: the secret file is root's.
    cfg.load_shared_secret().map_err(|e| fatal(&early_log, e))?;
    let (log, log_switch) = log::daemon_logger(&cfg, &config_dir, &args, &process_name, &early_log)
        .map_err(|text| fatal(&early_log, text))?;
    let log_follower = log::LogFollower::new(
        log_switch,
        log.clone(),
        &cfg,
        &config_dir,
        &args,
        &process_name,
    );
    args.validate().map_err(|e| fatal(&log, e))?;
    if args.debugger {
        info!(log, "-D: debugger_command is not supported; continuing");
    }
    if !args.debug_no_detach && nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        return Err(fatal(&log, "do not run this command by hand"));
    }
    for w in &cfg.warnings {
        warn!(log, "{}", w);
    }
    for n in &cfg.notes {
        info!(log, "{}", n);
    }
    // Every smtpd, smtp and lmtp process holds a connection: the soft limit
    // (often 1024) would run out long before the hard one.
    crate::daemon::limits::raise_nofile_limit(&log);
    let generation = status::generation_from_env(std::env::var("GENERATION").ok().as_deref());
    std::env::set_current_dir(&cfg.queue_directory).map_err(|e| {
        fatal(
            &log,
            format!("chdir(\"{}\"): {e}", cfg.queue_directory.display()),
        )
    })?;
    Ok(Startup {
        args,
        overrides,
        dir,
        cfg,
        log,
        log_follower,
        generation,
    })
}

/// The descriptors master passed.
struct Descriptors {
    status: UnixStream,
    status_reader: UnixStream,
    listeners: Vec<UnixListener>,
}

/// Descriptors from master: 5 = status, 6.. = listeners. 3/4 (flow
/// control) stay open and unused, as in stock.
fn take_descriptors(st: &Startup) -> Result<Descriptors, Fatal> {
    let log = &st.log;
    let status_fd = inherited_fd(status::STATUS_FD, false).ok_or_else(|| {
        fatal(
            log,
            "no status channel on file descriptor 5 (not started by master?)",
        )
    })?;
    set_cloexec(&status_fd);
    let mut listeners = Vec::new();
    for i in 0..st.args.socket_count {
        let fd = status::LISTEN_FD + i as i32;
        let owned = inherited_fd(fd, true).ok_or_else(|| {
            fatal(
                log,
                format!("no listening socket on file descriptor {fd} (not started by master?)"),
            )
        })?;
        set_cloexec(&owned);
        listeners.push(UnixListener::from(owned));
    }
    let status = UnixStream::from(status_fd);
    let status_reader = status
        .try_clone()
        .map_err(|e| fatal(log, format!("dup status channel: {e}")))?;
    Ok(Descriptors {
        status,
        status_reader,
        listeners,
    })
}

/// What pre_init decided.
struct PreInit {
    /// The admin socket, bound before the chroot.
    admin: Option<UnixListener>,
    root: bool,
    owner: Option<MailOwner>,
    policy: PathPolicy,
    jailed: Vec<paths::JailPath>,
    /// The entropy source and exchange file, for the PRNG actor.
    preopened: crate::prng::Preopened,
}

/// pre_init: as root, with mail_owner's effective ids for file creation:
/// the §2.9 redirection and the chroot paths, then the entropy source and
/// the exchange file, opened now as stock does (the PRNG actor adopts them;
/// what fails is retried by the actor, where stock exits).
fn pre_init(st: &mut Startup) -> Result<PreInit, Fatal> {
    let log = &st.log;
    let root = privileges::is_root();
    let owner = match MailOwner::lookup(&st.cfg.mail_owner) {
        Ok(o) => Some(o),
        Err(e) if root => return Err(fatal(log, e)),
        Err(_) => None,
    };
    // Bound first, as whoever started us (root: master's private/ may be
    // root's), outside any chroot; then given to mail_owner, so the 0600
    // socket is root's and mail_owner's alone. A failure is not fatal:
    // Postfix's clients do not need it.
    let admin = match &st.cfg.admin_socket {
        Some(path) => match crate::daemon::admin::bind(path) {
            Ok(l) => {
                let given = match (&owner, root) {
                    (Some(o), true) => nix::unistd::chown(path.as_path(), Some(o.uid), Some(o.gid))
                        .map_err(|e| format!("chown {}: {e}", path.display())),
                    _ => Ok(()),
                };
                match given {
                    Ok(()) => Some(l),
                    Err(e) => {
                        warn!(log, "{} -- no admin socket", e);
                        None
                    }
                }
            }
            Err(e) => {
                warn!(log, "{} -- no admin socket", e);
                None
            }
        },
        None => None,
    };
    if root {
        if let Some(o) = &owner {
            privileges::set_effective(o).map_err(|e| fatal(log, e))?;
            debug!(log, "set_eugid: euid {} egid {}", o.uid, o.gid);
        }
    }
    let (policy, jailed) = PathPolicy::at_start(&mut st.cfg, owner.clone(), st.args.chroot, log)
        .map_err(|e| fatal(log, e))?;
    let (preopened, failures) = crate::prng::preopen(&st.cfg);
    for failure in failures {
        warn!(log, "{}", failure.message);
    }
    Ok(PreInit {
        admin,
        root,
        owner,
        policy,
        jailed,
        preopened,
    })
}

/// post_init, part 1 (runs inside the daemon before any store or key file
/// is opened): as root again, make the directories that hold the state
/// inside the jail, chroot, drop privileges. The stores and the ticket key
/// file are then opened by their inside paths.
fn before_start(st: &Startup, pre: &PreInit) -> crate::daemon::BeforeStart {
    let log = st.log.clone();
    let root = pre.root;
    let chroot_dir = st.args.chroot.then(|| st.cfg.queue_directory.clone());
    let jailed = pre.jailed.clone();
    let owner = pre.owner.clone();
    let drop_to = if st.args.unprivileged {
        owner.clone()
    } else {
        None
    };
    Box::new(move || {
        if root {
            privileges::restore_root().map_err(startup_error)?;
        }
        if let Some(dir) = &chroot_dir {
            let first_start = jailed.iter().any(|jp| !jp.on_disk.exists());
            paths::prepare_jail(dir, &jailed, owner.as_ref()).map_err(startup_error)?;
            if first_start && !jailed.is_empty() {
                let list: Vec<String> = jailed
                    .iter()
                    .map(|jp| jp.on_disk.display().to_string())
                    .collect();
                info!(
                    log,
                    "chroot {}: session caches and ticket keys are kept at {}",
                    dir.display(),
                    list.join(", ")
                );
            }
        }
        privileges::chroot_and_drop(chroot_dir.as_deref(), drop_to.as_ref())
            .map_err(startup_error)?;
        if let Some(dir) = &chroot_dir {
            debug!(log, "chroot {}", dir.display());
        }
        // Still root (no -u): the stores and key file are created with
        // mail_owner's effective ids, as stock creates its cache files;
        // root's come back in after_start, once they are open.
        if root && drop_to.is_none() {
            if let Some(o) = &owner {
                privileges::set_effective(o).map_err(startup_error)?;
            }
        }
        Ok(())
    })
}

/// post_init, part 2 (once the actors run): root's effective ids back
/// where they were kept, and the watchdog. The heartbeat proves the main
/// event loop runs; the ping sent to each cache actor proves its thread
/// answers (a store stuck in I/O blocks that thread, so the ping waits
/// too). The I/O threads beat on their own (RequestObserver::io_thread_beat).
fn after_start(st: &Startup, pre: &PreInit, watchdog: Arc<Watchdog>) -> AfterStart {
    let log = st.log.clone();
    let still_root = pre.root && !st.args.unprivileged;
    Box::new(move |svc: Services| {
        Box::pin(async move {
            if still_root {
                privileges::restore_root().map_err(startup_error)?;
            }
            let beat = watchdog.clone();
            let caches = svc.caches.clone();
            actix_rt::spawn(async move {
                let mut tick = tokio::time::interval(beat.beat_interval());
                loop {
                    tick.tick().await;
                    beat.beat();
                    for rc in caches.load().0.iter().flatten() {
                        let addr = rc.addr.clone();
                        let w = beat.clone();
                        let probe = w.probe_started();
                        actix_rt::spawn(async move {
                            let _ = addr.send(crate::actors::cache::Ping).await;
                            w.probe_finished(probe);
                        });
                    }
                }
            });
            watchdog
                .start_thread(log.clone())
                .map_err(|e| crate::Error::io("start watchdog", e))?;
            Ok(())
        })
    })
}

/// When to stop: anything readable on fd 5 (EOF above all: `postfix
/// reload`, master exit), a failed status report, or SIGTERM (`postfix
/// stop`). Either way the daemon saves the exchange file and flushes and
/// closes the stores before it returns.
fn shutdown_signal(
    status_reader: UnixStream,
    lost_master: Arc<tokio::sync::Notify>,
    log: &Logger,
) -> Result<impl std::future::Future<Output = ()>, Fatal> {
    let (eof_tx, eof_rx) = futures::channel::oneshot::channel::<()>();
    let eof_log = log.clone();
    std::thread::Builder::new()
        .name("tlsmgr-master-status".into())
        .spawn(move || {
            use std::io::Read;
            let mut r = status_reader;
            let mut b = [0u8; 1];
            let _ = r.read(&mut b);
            debug!(eof_log, "master disconnect -- exiting");
            let _ = eof_tx.send(());
        })
        .map_err(|e| fatal(log, format!("start status reader: {e}")))?;
    let term_log = log.clone();
    Ok(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = eof_rx => {}
            _ = lost_master.notified() => {
                debug!(term_log, "cannot report to master -- exiting");
            }
            _ = sigterm => {
                info!(term_log, "terminating on signal 15, saving state");
            }
        }
    })
}

/// Serves the listening sockets until master lets go, with live reload
/// (main.cf read through the handle, the path decisions of pre_init
/// re-applied) and logging that follows `syslog_name` and friends.
fn serve(st: Startup, fds: Descriptors, pre: PreInit) -> Result<(), Fatal> {
    let watchdog = Watchdog::new(st.cfg.daemon_timeout);
    let lost_master = Arc::new(tokio::sync::Notify::new());
    let observer = Arc::new(MasterObserver {
        status: StatusChannel::new(fds.status, st.generation),
        watchdog: watchdog.clone(),
        lost_master: lost_master.clone(),
    });
    let before = before_start(&st, &pre);
    let after = after_start(&st, &pre, watchdog);
    let shutdown = shutdown_signal(fds.status_reader, lost_master, &st.log)?;
    let mut listeners = fds.listeners.into_iter();
    let first = listeners
        .next()
        .ok_or_else(|| fatal(&st.log, "no listening socket"))?;
    let Startup {
        overrides,
        dir,
        cfg,
        log,
        log_follower,
        ..
    } = st;
    let policy = pre.policy;
    // After the privilege drop and chroot the secret file cannot be read
    // again: a reload that keeps its path keeps the secret read at start.
    let start_secret = cfg.shared.secret.clone();
    let start_shared = cfg.shared.clone();
    let opts = Options {
        config: cfg,
        listener: first,
        clock: crate::clock::system(),
        log: log.clone(),
        #[cfg(feature = "test-hooks")]
        fault_injection: None,
        admin: pre.admin,
        prng_preopened: Some(pre.preopened),
        watch: Some(WatchOptions {
            sighup: true,
            adjust: Some(Box::new(move |c: &mut Config| {
                if let Some(s) = start_secret.as_ref().filter(|s| {
                    c.shared.store.is_some() && c.shared.secret_file.as_ref() == Some(&s.path)
                }) {
                    c.shared.secret = Some(s.clone());
                }
                c.shared.keep_tls_files_read(&start_shared);
                Ok(policy.adjust(c)?)
            })),
            applied: Some(Arc::new(move |c: &Config| log_follower.follow(c))),
            ..WatchOptions::new(dir, overrides)
        }),
    };
    let extras = RunExtras {
        more_listeners: listeners.collect(),
        observer: Some(observer),
        before_start: Some(before),
        after_start: Some(after),
    };
    // The exit hook (tlsmgr_before_exit, saving the exchange file) runs in
    // the daemon's shutdown path, for fd 5 EOF and SIGTERM alike.
    crate::daemon::run_with(opts, extras, shutdown, |_| {}).map_err(|e| fatal(&log, e))
}

fn startup_error(e: MasterError) -> crate::Error {
    crate::Error::Hook(Box::new(e))
}
