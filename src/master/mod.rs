//! Running as a child of Postfix's master(8) (spec §4): what `tlsmgr -l -t
//! unix -u -c` does when master.cf starts it.
//!
//! - [`args`]: the generic daemon options.
//! - [`status`]: the fd-5 status channel (TAKEN/AVAIL records, EOF = exit).
//! - [`privileges`]: mail_owner file creation, chroot, privilege drop, the
//!   data_directory redirection.
//! - [`watchdog`]: `fatal: watchdog timeout` after `daemon_timeout` without progress.
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
mod log;
mod paths;
pub mod privileges;
pub mod status;
pub mod watchdog;

use crate::actors::watcher::WatchOptions;
use crate::config::dir::ConfigDir;
use crate::config::Config;
use crate::daemon::{Options, RequestObserver, RunExtras, Services};
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

/// Entry point when master(8) runs us: `argv0` and the arguments after it.
pub fn main(argv0: &str, argv: &[String]) -> ExitCode {
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
    let mut args = match MasterArgs::parse(argv) {
        Ok(a) => a,
        Err(e) => return fatal(&early_log, e),
    };
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
    let dir = match ConfigDir::open(&config_dir) {
        Ok(d) => d,
        Err(e) => return fatal(&early_log, format!("open {}: {e}", config_dir.display())),
    };
    let mut cfg = match Config::load_from(&dir, &overrides) {
        Ok(c) => c,
        Err(e) => return fatal(&early_log, e),
    };
    let (log, log_switch) =
        match log::daemon_logger(&cfg, &config_dir, &args, &process_name, &early_log) {
            Ok(l) => l,
            Err(text) => return fatal(&early_log, text),
        };
    let log_follower = log::LogFollower::new(
        log_switch,
        log.clone(),
        &cfg,
        &config_dir,
        &args,
        &process_name,
    );
    if let Err(e) = args.validate() {
        return fatal(&log, e);
    }
    if args.debugger {
        info!(log, "-D: debugger_command is not supported; continuing");
    }
    if !args.debug_no_detach && nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        return fatal(&log, "do not run this command by hand");
    }
    for w in &cfg.warnings {
        warn!(log, "{}", w);
    }
    let generation = status::generation_from_env(std::env::var("GENERATION").ok().as_deref());
    if let Err(e) = std::env::set_current_dir(&cfg.queue_directory) {
        return fatal(
            &log,
            format!("chdir(\"{}\"): {e}", cfg.queue_directory.display()),
        );
    }

    // Descriptors from master: 5 = status, 6.. = listeners. 3/4 (flow
    // control) stay open and unused, as in stock.
    let Some(status_fd) = inherited_fd(status::STATUS_FD, false) else {
        return fatal(
            &log,
            "no status channel on file descriptor 5 (not started by master?)",
        );
    };
    set_cloexec(&status_fd);
    let mut listeners = Vec::new();
    for i in 0..args.socket_count {
        let fd = status::LISTEN_FD + i as i32;
        match inherited_fd(fd, true) {
            Some(fd) => {
                set_cloexec(&fd);
                listeners.push(UnixListener::from(fd));
            }
            None => {
                return fatal(
                    &log,
                    format!("no listening socket on file descriptor {fd} (not started by master?)"),
                )
            }
        }
    }
    let status_stream = UnixStream::from(status_fd);
    let status_reader = match status_stream.try_clone() {
        Ok(s) => s,
        Err(e) => return fatal(&log, format!("dup status channel: {e}")),
    };

    // pre_init: as root, with mail_owner's effective ids for file creation.
    let root = privileges::is_root();
    let owner = match MailOwner::lookup(&cfg.mail_owner) {
        Ok(o) => Some(o),
        Err(e) if root => return fatal(&log, e),
        Err(_) => None,
    };
    if root {
        if let Some(o) = &owner {
            if let Err(e) = privileges::set_effective(o) {
                return fatal(&log, e);
            }
            debug!(log, "set_eugid: euid {} egid {}", o.uid, o.gid);
        }
    }
    let (policy, jailed) = match PathPolicy::at_start(&mut cfg, owner.clone(), args.chroot, &log) {
        Ok(p) => p,
        Err(e) => return fatal(&log, e),
    };
    let chroot_dir = args.chroot.then(|| cfg.queue_directory.clone());
    // stock pre_init: the entropy source and the exchange file are opened
    // now, as root with mail_owner's effective ids; the PRNG actor adopts
    // them. What fails is retried by the actor (stock exits instead).
    for failure in crate::prng::preopen(&cfg) {
        warn!(log, "{}", failure.message);
    }

    let watchdog = Watchdog::new(cfg.daemon_timeout);
    let lost_master = Arc::new(tokio::sync::Notify::new());
    let observer = Arc::new(MasterObserver {
        status: StatusChannel::new(status_stream, generation),
        watchdog: watchdog.clone(),
        lost_master: lost_master.clone(),
    });
    let drop_to = if args.unprivileged {
        owner.clone()
    } else {
        None
    };
    let hook_log = log.clone();
    let jail_owner = owner.clone();
    // post_init, part 1: as root again, make the directories that hold the
    // state inside the jail, chroot, drop privileges. The stores and the
    // ticket key file are opened after this, by their inside paths.
    let before_start: crate::daemon::BeforeStart = Box::new(move || {
        if root {
            privileges::restore_root().map_err(startup_error)?;
        }
        if let Some(dir) = &chroot_dir {
            let first_start = jailed.iter().any(|jp| !jp.on_disk.exists());
            paths::prepare_jail(dir, &jailed, jail_owner.as_ref()).map_err(startup_error)?;
            if first_start && !jailed.is_empty() {
                let list: Vec<String> = jailed
                    .iter()
                    .map(|jp| jp.on_disk.display().to_string())
                    .collect();
                info!(
                    hook_log,
                    "chroot {}: session caches and ticket keys are kept at {}",
                    dir.display(),
                    list.join(", ")
                );
            }
        }
        privileges::chroot_and_drop(chroot_dir.as_deref(), drop_to.as_ref())
            .map_err(startup_error)?;
        if let Some(dir) = &chroot_dir {
            debug!(hook_log, "chroot {}", dir.display());
        }
        // Still root (no -u): the stores and key file are created with
        // mail_owner's effective ids, as stock creates its cache files;
        // root's come back in after_start, once they are open.
        if root && drop_to.is_none() {
            if let Some(o) = &jail_owner {
                privileges::set_effective(o).map_err(startup_error)?;
            }
        }
        Ok(())
    });
    let hook_log = log.clone();
    let hook_watchdog = watchdog.clone();
    // post_init, part 2: once the actors run, the watchdog.
    let still_root = root && !args.unprivileged;
    let after_start: crate::daemon::AfterStart = Box::new(move |svc: Services| {
        Box::pin(async move {
            if still_root {
                privileges::restore_root().map_err(startup_error)?;
            }
            // The heartbeat proves the main event loop runs; the ping sent
            // to each cache actor proves its thread answers (a store stuck
            // in I/O blocks that thread, so the ping waits too). The I/O
            // threads beat on their own (RequestObserver::io_thread_beat).
            let beat = hook_watchdog.clone();
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
            hook_watchdog
                .start_thread(hook_log.clone())
                .map_err(|e| crate::Error::io("start watchdog", e))?;
            Ok(())
        })
    });
    let (eof_tx, eof_rx) = futures::channel::oneshot::channel::<()>();
    let eof_log = log.clone();
    let spawned = std::thread::Builder::new()
        .name("tlsmgr-master-status".into())
        .spawn(move || {
            use std::io::Read;
            let mut r = status_reader;
            let mut b = [0u8; 1];
            // Anything readable on fd 5, EOF above all, means: exit now.
            let _ = r.read(&mut b);
            debug!(eof_log, "master disconnect -- exiting");
            let _ = eof_tx.send(());
        });
    if let Err(e) = spawned {
        return fatal(&log, format!("start status reader: {e}"));
    }
    let term_log = log.clone();
    let shutdown = async move {
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
    };
    let mut listeners = listeners.into_iter();
    let Some(first) = listeners.next() else {
        return fatal(&log, "no listening socket");
    };
    let opts = Options {
        config: cfg,
        listener: first,
        clock: crate::clock::system(),
        log: log.clone(),
        #[cfg(feature = "test-hooks")]
        fault_injection: None,
        watch: Some(WatchOptions {
            sighup: true,
            adjust: Some(Box::new(move |c: &mut Config| policy.adjust(c))),
            applied: Some(Arc::new(move |c: &Config| log_follower.follow(c))),
            ..WatchOptions::new(dir, overrides)
        }),
    };
    let extras = RunExtras {
        more_listeners: listeners.collect(),
        observer: Some(observer),
        before_start: Some(before_start),
        after_start: Some(after_start),
    };
    // The exit hook (tlsmgr_before_exit, saving the exchange file) runs in
    // the server's shutdown path, for fd 5 EOF and SIGTERM alike.
    let result = crate::daemon::run_with(opts, extras, shutdown, |_| {});
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(&log, e),
    }
}

fn startup_error(msg: String) -> crate::Error {
    crate::Error::io("start", std::io::Error::other(msg))
}
