//! The config-watcher actor: live reconfiguration from main.cf edits.
//!
//! It watches the configuration *directory* (editors, `sed -i` and
//! `postconf -e` replace main.cf by rename, which a watch on the file itself
//! would lose), plus the directory of main.cf's target when main.cf is a
//! symlink. Events for main.cf are debounced (`notify-debouncer-mini`): a
//! reload starts only after main.cf has been quiet for the debounce period,
//! so a burst of writes and renames ends in one reload of the final content.
//! SIGHUP forces a reload.
//!
//! A reload reads main.cf through the directory handle (works after a
//! chroot, see [`crate::config::dir`]), parses and validates all of it, and
//! then either logs a warning naming file, line and parameter and keeps the
//! current snapshot, or applies the new one ([`crate::daemon::reload`]) and
//! logs one line listing what changed. Content that changes nothing that
//! tlsmgr reads (comments, unrelated parameters, an identical rewrite) is
//! not a reload.
//!
//! Half-written files: an empty main.cf (a truncate before the write) is
//! never applied; a main.cf whose last line has no newline is re-read after
//! one more debounce period and applied only if it has not changed.

use crate::config::dir::ConfigDir;
use crate::config::{self, Config};
use crate::daemon::{reload, Services};
use actix::prelude::*;
use notify::RecursiveMode;
use notify_debouncer_mini::{new_debouncer, DebounceEventResult, DebouncedEventKind, Debouncer};
use slog::{debug, info, warn, Logger};
use std::path::PathBuf;
use std::time::Duration;

/// Default quiet period before a reload.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(250);

/// What the watcher needs.
pub struct WatchOptions {
    /// The configuration directory, opened before any chroot.
    pub dir: ConfigDir,
    /// `-o` overrides, re-applied at every reload.
    pub overrides: Vec<String>,
    /// Quiet period before a reload.
    pub debounce: Duration,
    /// Reload on SIGHUP (the standalone daemon; not in-process tests).
    pub sighup: bool,
    /// Applied to every configuration read, before it is used: under
    /// master(8), the path decisions of start-up (redirection, chroot).
    /// `Err` refuses the configuration with that reason.
    pub adjust: Option<ConfigAdjust>,
    /// Called with each configuration once it is in force (under master(8):
    /// logging follows `syslog_name` and `syslog_facility`).
    pub applied: Option<ConfigApplied>,
}

/// See [`WatchOptions::applied`].
pub type ConfigApplied = std::sync::Arc<dyn Fn(&Config) + Send + Sync>;

/// See [`WatchOptions::adjust`].
pub type ConfigAdjust = Box<dyn Fn(&mut Config) -> Result<(), String> + Send>;

impl WatchOptions {
    /// Options for `dir` with the default debounce and no SIGHUP handling.
    pub fn new(dir: ConfigDir, overrides: Vec<String>) -> Self {
        WatchOptions {
            dir,
            overrides,
            debounce: DEFAULT_DEBOUNCE,
            sighup: false,
            adjust: None,
            applied: None,
        }
    }
}

/// The actor.
pub struct WatcherActor {
    opts: WatchOptions,
    svc: Services,
    log: Logger,
    debouncer: Option<Debouncer<notify::RecommendedWatcher>>,
    /// Paths whose events matter: DIR/main.cf and, for a symlink, its target.
    interesting: Vec<PathBuf>,
    /// Directories currently watched.
    watched: Vec<PathBuf>,
}

/// main.cf (or its target) changed and has been quiet for the debounce.
#[derive(Message)]
#[rtype(result = "()")]
struct FsChanged(Vec<PathBuf>);

/// Reload now (SIGHUP, or a deferred re-check). `.0` is the text a deferred
/// check saw last time, to tell a finished file from one still being written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload(Option<Vec<u8>>);

impl Reload {
    /// A forced reload, as SIGHUP does.
    pub fn now() -> Self {
        Reload(None)
    }
}

impl WatcherActor {
    /// Starts a watcher applying edits to `svc`. The watches are in place
    /// when this returns, so no edit made afterwards is missed.
    pub fn launch(opts: WatchOptions, svc: Services) -> Addr<WatcherActor> {
        let ctx = Context::new();
        let addr = ctx.address();
        let log = svc.log.clone();
        let mut actor = WatcherActor {
            opts,
            svc,
            log,
            debouncer: None,
            interesting: Vec::new(),
            watched: Vec::new(),
        };
        actor.install(addr);
        ctx.run(actor)
    }

    fn install(&mut self, addr: Addr<WatcherActor>) {
        let log = self.log.clone();
        let handler = move |res: DebounceEventResult| match res {
            Ok(events) => {
                let paths: Vec<PathBuf> = events
                    .into_iter()
                    .filter(|e| e.kind == DebouncedEventKind::Any)
                    .map(|e| e.path)
                    .collect();
                if !paths.is_empty() {
                    addr.do_send(FsChanged(paths));
                }
            }
            Err(e) => warn!(log, "configuration watch: {}", e),
        };
        match new_debouncer(self.opts.debounce, handler) {
            Ok(d) => self.debouncer = Some(d),
            Err(e) => warn!(
                self.log,
                "cannot watch {}: {} -- live reload disabled (SIGHUP still reloads)",
                self.opts.dir.path().display(),
                e
            ),
        }
        self.update_watches();
    }

    fn main_cf(&self) -> PathBuf {
        self.opts.dir.path().join("main.cf")
    }

    /// Watches the directory and, if main.cf is a symlink, its target's
    /// directory (the target may be edited in place by a configuration tool).
    fn update_watches(&mut self) {
        let main_cf = self.main_cf();
        let mut interesting = vec![main_cf.clone()];
        let mut dirs = vec![self.opts.dir.path().to_path_buf()];
        let is_link = std::fs::symlink_metadata(&main_cf).is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            if let Ok(target) = std::fs::canonicalize(&main_cf) {
                if let Some(parent) = target.parent() {
                    dirs.push(parent.to_path_buf());
                }
                interesting.push(target);
            }
        }
        self.interesting = interesting;
        let Some(debouncer) = self.debouncer.as_mut() else {
            return;
        };
        for dir in &dirs {
            if !self.watched.contains(dir) {
                match debouncer.watcher().watch(dir, RecursiveMode::NonRecursive) {
                    Ok(()) => self.watched.push(dir.clone()),
                    Err(e) => warn!(self.log, "cannot watch {}: {}", dir.display(), e),
                }
            }
        }
        // Stop watching a former symlink target's directory.
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|d| !dirs.contains(d))
            .cloned()
            .collect();
        for dir in stale {
            let _ = debouncer.watcher().unwatch(&dir);
            self.watched.retain(|d| *d != dir);
        }
    }

    /// Reads and validates main.cf; on success applies it.
    fn reload(&mut self, previous: Option<Vec<u8>>, ctx: &mut Context<Self>) {
        self.update_watches();
        let path = self.main_cf();
        let text = match self.opts.dir.read("main.cf") {
            Ok(t) => t,
            Err(e) => {
                warn!(
                    self.log,
                    "open {}: {} -- keeping the current configuration",
                    path.display(),
                    e
                );
                return;
            }
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            warn!(
                self.log,
                "{} is empty -- keeping the current configuration",
                path.display()
            );
            return;
        }
        if !text.ends_with(b"\n") && previous.as_deref() != Some(text.as_slice()) {
            // Possibly still being written: look again after one more quiet
            // period; unchanged then means it is complete.
            debug!(
                self.log,
                "{}: no final newline yet, re-checking",
                path.display()
            );
            ctx.notify_later(Reload(Some(text)), self.opts.debounce);
            return;
        }
        let parsed =
            config::parse_raw(&text, &self.opts.dir, &self.opts.overrides).and_then(|raw| {
                let mut cfg = Config::from_source(&raw)?;
                cfg.warnings = raw.warnings;
                Ok(cfg)
            });
        let mut cfg = match parsed {
            Ok(cfg) => cfg,
            Err(e) => {
                warn!(self.log, "{} -- keeping the current configuration", e);
                return;
            }
        };
        if let Some(adjust) = &self.opts.adjust {
            if let Err(why) = adjust(&mut cfg) {
                warn!(
                    self.log,
                    "{}: {} -- keeping the current configuration",
                    path.display(),
                    why
                );
                return;
            }
        }
        let svc = self.svc.clone();
        let log = self.log.clone();
        let warnings = cfg.warnings.clone();
        let applied = self.opts.applied.clone();
        // ctx.wait: no other reload starts until this one is applied.
        ctx.wait(
            async move {
                let changes = reload::apply(&svc, cfg).await;
                if let Some(hook) = applied {
                    hook(&svc.config.load());
                }
                if changes.is_empty() {
                    debug!(log, "main.cf changed, but no parameter that tlsmgr uses");
                } else {
                    for w in warnings {
                        warn!(log, "{}", w);
                    }
                    info!(log, "reload: {}", changes.join(", "));
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for WatcherActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.opts.sighup {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    let addr = ctx.address();
                    actix_rt::spawn(async move {
                        while hup.recv().await.is_some() {
                            addr.do_send(Reload::now());
                        }
                    });
                }
                Err(e) => warn!(self.log, "cannot handle SIGHUP: {}", e),
            }
        }
    }
}

impl Handler<FsChanged> for WatcherActor {
    type Result = ();
    fn handle(&mut self, msg: FsChanged, ctx: &mut Context<Self>) {
        // Compare names, not whole paths: the watcher may report the
        // directory spelled differently from how it was given.
        let names: Vec<_> = self
            .interesting
            .iter()
            .filter_map(|p| p.file_name())
            .collect();
        if msg
            .0
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.contains(&n)))
        {
            self.reload(None, ctx);
        }
    }
}

impl Handler<Reload> for WatcherActor {
    type Result = ();
    fn handle(&mut self, msg: Reload, ctx: &mut Context<Self>) {
        if msg.0.is_none() {
            info!(self.log, "reload requested");
        }
        self.reload(msg.0, ctx);
    }
}
