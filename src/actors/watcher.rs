//! The config-watcher actor: live reconfiguration from edits of main.cf and
//! of tlsmgr.cf (our own parameters, beside it; see [`crate::config`]).
//! Both are watched, read and applied alike and together: "main.cf" below
//! stands for either, except where tlsmgr.cf is named. tlsmgr.cf may appear
//! and disappear while running: absent, it defines nothing.
//!
//! It watches the configuration *directory* (editors, `sed -i` and
//! `postconf -e` replace main.cf by rename, which a watch on the file itself
//! would lose), plus the directory of main.cf's target when main.cf is a
//! symlink. Only events that can change main.cf count: creation, removal,
//! renames, writes, metadata; opens, reads and closes after reading do not
//! (inotify reports them, and the watcher's own read of main.cf used to
//! start the next reload, forever). The edits are debounced here: a reload
//! starts only after main.cf has been quiet for the debounce period (or,
//! for a file written without pause, [`MAX_BURST`] debounce periods after
//! the first write), so a burst of writes and renames ends in one reload of
//! the final content. SIGHUP forces a reload.
//!
//! A reload reads main.cf through the directory handle (works after a
//! chroot, see [`crate::config::dir`]), and, unless forced, stops there when
//! the bytes and the file's identity (device, inode, size, mtime) are those
//! of the last read: a `touch` of another file or an attribute change is not
//! an edit, and an invalid main.cf is warned about once per edit. Otherwise
//! it parses and validates all of it on a blocking thread (a pathological
//! main.cf must not hold up the daemon thread, which answers requests), and
//! then either logs a warning naming file, line and parameter and keeps the
//! current snapshot, or applies the new one ([`the daemon (a [`ConfigSink`])`]) and
//! logs one line listing what changed. Content that changes nothing that
//! tlsmgr reads (comments, unrelated parameters, an identical rewrite) is
//! not a reload. No reload starts before the previous one is applied.
//!
//! Half-written files: an empty main.cf (a truncate before the write) is
//! never applied; a main.cf whose last line has no newline is re-read after
//! one more debounce period and applied only if it has not changed. An
//! empty tlsmgr.cf is valid (nothing defined), but one that was not empty
//! at the last read is treated like a last line without newline.

use crate::config::dir::{ConfigDir, FileStamp};
use crate::config::{self, Config, ConfigError};
use actix::prelude::*;
use futures::future::LocalBoxFuture;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use slog::{debug, info, warn, Logger};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// See [`WatchOptions::adjust`]; the error says why the configuration is
/// refused (the watcher logs it and keeps the configuration in force).
pub type ConfigAdjust = Box<dyn Fn(&mut Config) -> Result<(), AdjustError> + Send>;

/// Why an adjust hook refused a configuration (its type is the hook's).
pub type AdjustError = Box<dyn std::error::Error + Send + Sync>;

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

/// A main.cf written without a pause of one debounce period is reloaded
/// anyway this many periods after its first write.
pub const MAX_BURST: u32 = 8;

/// The actor.
pub struct WatcherActor {
    /// Shared with the blocking thread that reads and parses main.cf.
    dir: Arc<ConfigDir>,
    overrides: Arc<[String]>,
    debounce: Duration,
    sighup: bool,
    adjust: Option<ConfigAdjust>,
    applied: Option<ConfigApplied>,
    sink: Rc<dyn ConfigSink>,
    log: Logger,
    watcher: Option<notify::RecommendedWatcher>,
    /// Paths whose events matter: DIR/main.cf, DIR/tlsmgr.cf and, for a
    /// symlink, its target.
    interesting: Vec<PathBuf>,
    /// Directories currently watched.
    watched: Vec<PathBuf>,
    /// What the last read saw; `None` before the first (the start-up read
    /// is not known here, so the first edit is always parsed).
    last: Option<Seen>,
    /// The debounced reload waiting for main.cf to be quiet.
    pending: Option<SpawnHandle>,
    /// When the first event of the current burst arrived.
    burst_start: Option<Instant>,
}

/// main.cf and tlsmgr.cf as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    main: FileRead,
    /// `None`: there was no tlsmgr.cf.
    ours: Option<FileRead>,
}

/// One file as read: its identity and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileRead {
    stamp: FileStamp,
    text: Vec<u8>,
}

/// The bytes of main.cf and of tlsmgr.cf (`None`: absent), to tell a
/// finished edit from one still being written.
pub type Texts = (Vec<u8>, Option<Vec<u8>>);

impl Seen {
    fn texts(&self) -> Texts {
        (
            self.main.text.clone(),
            self.ours.as_ref().map(|o| o.text.clone()),
        )
    }
}

/// Something may have changed main.cf (or its target): these paths.
#[derive(Message)]
#[rtype(result = "()")]
struct FsChanged(Vec<PathBuf>);

/// Reload now (SIGHUP, or a deferred re-check). `.0` is the text a deferred
/// check saw last time, to tell a finished file from one still being written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload(Option<Texts>);

impl Reload {
    /// A forced reload, as SIGHUP does.
    pub fn now() -> Self {
        Reload(None)
    }
}

/// Why a reload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// An edit event, debounced: nothing to do if main.cf is as last read.
    Edit,
    /// SIGHUP, or a re-check of a file that had no final newline: always
    /// parsed.
    Forced,
}

/// What the blocking part of a reload found.
enum Outcome {
    /// Same bytes, same file as the last read.
    Unchanged,
    /// main.cf (or an existing tlsmgr.cf) could not be read: which, why.
    Unreadable(PathBuf, std::io::Error),
    /// Empty or blank (a truncate before the write).
    Empty,
    /// No final newline (or a tlsmgr.cf just emptied) and not the text seen
    /// last time: maybe still being written; look again with these texts.
    Unfinished(Texts),
    /// Parsed and validated, or why not.
    Parsed(Box<Result<Config, ConfigError>>),
}

/// The kinds of event that can change main.cf's content or identity.
/// Opens, reads and closes without writing cannot, and are what a read
/// (ours included) produces.
fn is_edit(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Reads main.cf and, unless it is as last read (`last`, for an edit),
/// parses and validates it. Runs on a blocking thread: this is where a
/// large or pathological main.cf costs time. Returns the outcome and what
/// was read, if anything.
fn read_and_parse(
    dir: &ConfigDir,
    overrides: &[String],
    trigger: Trigger,
    last: Option<Seen>,
    previous: Option<Texts>,
) -> (Outcome, Option<Seen>) {
    let unreadable = |name: &str, e| Outcome::Unreadable(dir.display_path(name), e);
    let main = match dir.read_stamped(config::MAIN_CF) {
        Ok((text, stamp)) => FileRead { stamp, text },
        Err(e) => return (unreadable(config::MAIN_CF, e), None),
    };
    let ours = match dir.read_stamped(config::TLSMGR_CF) {
        Ok((text, stamp)) => Some(FileRead { stamp, text }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return (unreadable(config::TLSMGR_CF, e), None),
    };
    let seen = Seen { main, ours };
    if trigger == Trigger::Edit && last.as_ref() == Some(&seen) {
        return (Outcome::Unchanged, last);
    }
    let blank = |t: &[u8]| t.iter().all(u8::is_ascii_whitespace);
    let text = &seen.main.text;
    let ours = seen.ours.as_ref().map(|o| o.text.as_slice());
    let ours_unfinished = match ours {
        Some(t) if blank(t) => last
            .as_ref()
            .and_then(|l| l.ours.as_ref())
            .is_some_and(|o| !blank(&o.text)),
        Some(t) => !t.ends_with(b"\n"),
        None => false,
    };
    let outcome = if blank(text) {
        Outcome::Empty
    } else if (!text.ends_with(b"\n") || ours_unfinished)
        && previous.as_ref() != Some(&seen.texts())
    {
        Outcome::Unfinished(seen.texts())
    } else {
        Outcome::Parsed(Box::new(Config::from_text(text, ours, dir, overrides)))
    };
    (outcome, Some(seen))
}

/// Where the watcher sends each validated configuration: the daemon, which
/// puts it in force. The watcher knows nothing else of the daemon.
pub trait ConfigSink {
    /// Puts `new` in force; resolves to the changed parameters (`name old
    /// -> new` items, empty when nothing tlsmgr reads changed) and the
    /// configuration now in force.
    fn apply(&self, new: Config) -> LocalBoxFuture<'static, (Vec<String>, Arc<Config>)>;

    /// An edit of main.cf or tlsmgr.cf was refused (invalid, unreadable, empty, or
    /// refused by the adjustment); the configuration in force stays.
    fn rejected(&self) {}

    /// SIGHUP (or another forced reload) arrived: besides main.cf, state
    /// files may have been replaced under the daemon.
    fn hangup(&self) {}
}

impl WatcherActor {
    /// Starts a watcher that sends every validated edit to `sink`. The
    /// watches are in place when this returns, so no edit made afterwards
    /// is missed.
    pub fn launch(opts: WatchOptions, sink: Rc<dyn ConfigSink>, log: Logger) -> Addr<WatcherActor> {
        let ctx = Context::new();
        let addr = ctx.address();
        let WatchOptions {
            dir,
            overrides,
            debounce,
            sighup,
            adjust,
            applied,
        } = opts;
        let mut actor = WatcherActor {
            dir: Arc::new(dir),
            overrides: overrides.into(),
            debounce,
            sighup,
            adjust,
            applied,
            sink,
            log,
            watcher: None,
            interesting: Vec::new(),
            watched: Vec::new(),
            last: None,
            pending: None,
            burst_start: None,
        };
        actor.install(addr);
        ctx.run(actor)
    }

    fn install(&mut self, addr: Addr<WatcherActor>) {
        let log = self.log.clone();
        // Runs on notify's thread: filter there, so reads of main.cf (ours,
        // `cat`, editors opening it) never reach the actor.
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(event) if is_edit(&event.kind) => addr.do_send(FsChanged(event.paths)),
            Ok(_) => {}
            Err(e) => warn!(log, "configuration watch: {}", e),
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => warn!(
                self.log,
                "cannot watch {}: {} -- live reload disabled (SIGHUP still reloads)",
                self.dir.path().display(),
                e
            ),
        }
        self.update_watches();
    }

    fn main_cf(&self) -> PathBuf {
        self.dir.path().join(config::MAIN_CF)
    }

    /// Watches the directory and, if main.cf or tlsmgr.cf is a symlink, its
    /// target's directory (the target may be edited in place by a
    /// configuration tool).
    fn update_watches(&mut self) {
        let mut interesting = Vec::new();
        let mut dirs = vec![self.dir.path().to_path_buf()];
        for name in [config::MAIN_CF, config::TLSMGR_CF] {
            let file = self.dir.path().join(name);
            interesting.push(file.clone());
            let is_link =
                std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                if let Ok(target) = std::fs::canonicalize(&file) {
                    if let Some(parent) = target.parent() {
                        if !dirs.iter().any(|d| d == parent) {
                            dirs.push(parent.to_path_buf());
                        }
                    }
                    interesting.push(target);
                }
            }
        }
        self.interesting = interesting;
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for dir in &dirs {
            if !self.watched.contains(dir) {
                match watcher.watch(dir, RecursiveMode::NonRecursive) {
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
            let _ = watcher.unwatch(&dir);
            self.watched.retain(|d| *d != dir);
        }
    }

    /// (Re)starts the quiet-period timer after an edit event.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let start = *self.burst_start.get_or_insert(now);
        if let Some(handle) = self.pending.take() {
            if now.duration_since(start) >= self.debounce * MAX_BURST {
                // Written without pause: keep the timer already running.
                self.pending = Some(handle);
                return;
            }
            ctx.cancel_future(handle);
        }
        self.pending = Some(ctx.run_later(self.debounce, |act, ctx| {
            act.pending = None;
            act.burst_start = None;
            act.reload(Trigger::Edit, None, ctx);
        }));
    }

    /// Reads main.cf and validates it off the daemon thread; on success
    /// applies it. The actor waits for all of it (`ctx.wait`): no other
    /// reload starts until this one is applied.
    fn reload(&mut self, trigger: Trigger, previous: Option<Texts>, ctx: &mut Context<Self>) {
        self.update_watches();
        debug!(self.log, "reading main.cf and tlsmgr.cf ({:?})", trigger);
        let dir = self.dir.clone();
        let overrides = self.overrides.clone();
        let last = self.last.take();
        let blocking = actix_rt::task::spawn_blocking(move || {
            read_and_parse(&dir, &overrides, trigger, last, previous)
        });
        ctx.wait(blocking.into_actor(self).then(|joined, act, ctx| {
            let cfg = match joined {
                Ok((outcome, seen)) => {
                    act.last = seen;
                    act.accept(outcome, ctx)
                }
                Err(e) => {
                    // A panic while parsing: keep running on the old snapshot.
                    act.sink.rejected();
                    warn!(
                        act.log,
                        "{}: {} -- keeping the current configuration",
                        act.main_cf().display(),
                        e
                    );
                    None
                }
            };
            let sink = act.sink.clone();
            let log = act.log.clone();
            let applied = act.applied.clone();
            async move {
                let Some(cfg) = cfg else {
                    return;
                };
                let warnings = cfg.warnings.clone();
                let notes = cfg.notes.clone();
                let (changes, in_force) = sink.apply(cfg).await;
                if let Some(hook) = applied {
                    hook(&in_force);
                }
                if changes.is_empty() {
                    debug!(
                        log,
                        "main.cf or tlsmgr.cf changed, but no parameter that tlsmgr uses"
                    );
                } else {
                    for w in warnings {
                        warn!(log, "{}", w);
                    }
                    for n in notes {
                        info!(log, "{}", n);
                    }
                    info!(log, "reload: {}", changes.join(", "));
                }
            }
            .into_actor(act)
        }));
    }

    /// Logs what a read found; returns the configuration to apply, if any.
    fn accept(&mut self, outcome: Outcome, ctx: &mut Context<Self>) -> Option<Config> {
        let path = self.main_cf();
        let mut cfg = match outcome {
            Outcome::Unchanged => {
                debug!(
                    self.log,
                    "main.cf and tlsmgr.cf unchanged since the last read"
                );
                return None;
            }
            Outcome::Unreadable(file, e) => {
                self.sink.rejected();
                warn!(
                    self.log,
                    "open {}: {} -- keeping the current configuration",
                    file.display(),
                    e
                );
                return None;
            }
            Outcome::Empty => {
                self.sink.rejected();
                warn!(
                    self.log,
                    "{} is empty -- keeping the current configuration",
                    path.display()
                );
                return None;
            }
            Outcome::Unfinished(texts) => {
                // Possibly still being written: look again after one more
                // quiet period; unchanged then means it is complete.
                debug!(
                    self.log,
                    "{}: no final newline yet (or tlsmgr.cf just emptied), re-checking",
                    self.dir.path().display()
                );
                ctx.notify_later(Reload(Some(texts)), self.debounce);
                return None;
            }
            Outcome::Parsed(parsed) => match *parsed {
                Ok(cfg) => cfg,
                Err(e) => {
                    self.sink.rejected();
                    warn!(self.log, "{} -- keeping the current configuration", e);
                    return None;
                }
            },
        };
        if let Some(adjust) = &self.adjust {
            if let Err(why) = adjust(&mut cfg) {
                self.sink.rejected();
                warn!(
                    self.log,
                    "{}: {} -- keeping the current configuration",
                    path.display(),
                    why
                );
                return None;
            }
        }
        // After `adjust`, which under master(8) hands over the secret read
        // at start (the file is out of reach after the chroot and the drop).
        if let Err(e) = cfg.load_shared_secret() {
            warn!(
                self.log,
                "{}: {} -- keeping the current configuration",
                path.display(),
                e
            );
            return None;
        }
        Some(cfg)
    }
}

impl Actor for WatcherActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.sighup {
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
            self.schedule(ctx);
        }
    }
}

impl Handler<Reload> for WatcherActor {
    type Result = ();
    fn handle(&mut self, msg: Reload, ctx: &mut Context<Self>) {
        if msg.0.is_none() {
            info!(self.log, "reload requested");
            self.sink.hangup();
        }
        self.reload(Trigger::Forced, msg.0, ctx);
    }
}
