//! Shared harness: a daemon started in-process on a real UNIX socket in a
//! temporary directory, with a manual clock and a captured log.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod child;
pub mod disk;
pub mod keys;
pub mod postfix;
#[path = "prng.rs"]
pub mod prng_util;
#[path = "redis.rs"]
pub mod redis_server;
pub mod serve;
pub mod stock;
pub mod syslog;
pub mod tmpfs;

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tlsmgr::client::Client;
use tlsmgr::clock::ManualClock;
use tlsmgr::config::Config;
use tlsmgr::daemon::{self, DaemonHandle, Options};
use tlsmgr::logging::MemoryLog;
use tlsmgr::protocol::{Reply, Request, Status};

/// A clock start well past the epoch, so `now - timeout` never saturates.
pub const T0: u64 = 1_700_000_000;

pub struct TestDaemon {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub socket: PathBuf,
    /// The admin socket (`tlsmgr stats`, `keys`, `cache`).
    pub admin_socket: PathBuf,
    pub clock: Arc<ManualClock>,
    pub log: MemoryLog,
    pub faults: [Arc<AtomicBool>; 3],
    pub handle: Option<DaemonHandle>,
    extra: String,
    /// Watch main.cf and apply edits live.
    pub watch: bool,
    /// The watcher's quiet period, when not the default.
    debounce: Option<Duration>,
    /// What the next start hands the PRNG actor (`prng::preopen`).
    preopened: Option<tlsmgr::prng::Preopened>,
}

/// main.cf for a test directory: both server and client caches on fjall.
pub fn main_cf(dir: &Path, extra: &str) -> String {
    format!(
        "queue_directory = {d}\ndata_directory = {d}/data\n\
         smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
         smtp_tls_session_cache_database = btree:${{data_directory}}/smtp_scache\n\
         tlsmgr_store_lock_wait = 2s\n{extra}\n",
        d = dir.display()
    )
}

impl TestDaemon {
    /// The `warning:` lines of its log so far.
    pub fn warnings(&self) -> Vec<String> {
        self.log
            .text()
            .lines()
            .filter(|l| l.contains("warning:"))
            .map(str::to_string)
            .collect()
    }

    pub fn start(extra: &str) -> TestDaemon {
        Self::start_opts(extra, false, |_| {})
    }

    /// Like [`TestDaemon::start`], but `setup` runs on the fresh directory
    /// (its `data` subdirectory already made) before the daemon starts.
    pub fn start_with(extra: &str, setup: impl FnOnce(&Path)) -> TestDaemon {
        Self::start_opts(extra, false, setup)
    }

    /// A daemon that watches its main.cf (live reload).
    pub fn start_watched(extra: &str) -> TestDaemon {
        Self::start_opts(extra, true, |_| {})
    }

    /// A watched daemon with a shorter (or longer) quiet period before a
    /// reload, for tests that make many edits.
    pub fn start_watched_debounce(extra: &str, debounce: Duration) -> TestDaemon {
        Self::start_full(extra, true, Some(debounce), |_| {})
    }

    fn start_opts(extra: &str, watch: bool, setup: impl FnOnce(&Path)) -> TestDaemon {
        Self::start_full(extra, watch, None, setup)
    }

    /// Like [`TestDaemon::start_with`], with the clock at `t0` (tests that
    /// compare it with another process's clock, such as Redis's).
    pub fn start_at(extra: &str, t0: u64, watch: bool, setup: impl FnOnce(&Path)) -> TestDaemon {
        Self::start_clocked(extra, watch, None, t0, |dir| {
            setup(dir);
            None
        })
    }

    /// Like [`TestDaemon::start_with`], `setup` returning what it opened
    /// with `prng::preopen`, which the daemon adopts (as under master(8)).
    pub fn start_preopened(
        extra: &str,
        setup: impl FnOnce(&Path) -> tlsmgr::prng::Preopened,
    ) -> TestDaemon {
        Self::start_clocked(extra, false, None, T0, |dir| Some(setup(dir)))
    }

    fn start_full(
        extra: &str,
        watch: bool,
        debounce: Option<Duration>,
        setup: impl FnOnce(&Path),
    ) -> TestDaemon {
        Self::start_clocked(extra, watch, debounce, T0, |dir| {
            setup(dir);
            None
        })
    }

    fn start_clocked(
        extra: &str,
        watch: bool,
        debounce: Option<Duration>,
        t0: u64,
        setup: impl FnOnce(&Path) -> Option<tlsmgr::prng::Preopened>,
    ) -> TestDaemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let preopened = setup(&dir);
        let mut d = TestDaemon {
            socket: dir.join("tlsmgr.sock"),
            admin_socket: dir.join("tlsmgr.admin"),
            dir,
            _tmp: Some(tmp),
            clock: ManualClock::new(t0),
            log: MemoryLog::default(),
            faults: Default::default(),
            handle: None,
            extra: extra.to_string(),
            watch,
            debounce,
            preopened,
        };
        d.boot();
        d
    }

    pub fn config(&self) -> Config {
        std::fs::write(self.dir.join("main.cf"), main_cf(&self.dir, &self.extra)).unwrap();
        std::fs::create_dir_all(self.dir.join("data")).unwrap();
        Config::load(&self.dir, &[]).unwrap()
    }

    fn boot(&mut self) {
        let config = self.config();
        let _ = std::fs::remove_file(&self.socket);
        let listener = std::os::unix::net::UnixListener::bind(&self.socket).unwrap();
        let admin = tlsmgr::daemon::admin::bind(&self.admin_socket).unwrap();
        let handle = daemon::spawn(Options {
            config,
            listener,
            clock: self.clock.clone(),
            log: self.log.logger("postfix/tlsmgr"),
            fault_injection: Some(self.faults.clone()),
            watch: self.watch.then(|| {
                let dir = tlsmgr::config::dir::ConfigDir::open(&self.dir).unwrap();
                let mut w = tlsmgr::actors::watcher::WatchOptions::new(dir, Vec::new());
                if let Some(d) = self.debounce {
                    w.debounce = d;
                }
                w
            }),
            admin: Some(admin),
            prng_preopened: self.preopened.take(),
        })
        .unwrap();
        self.handle = Some(handle);
    }

    /// Stops the daemon (flushing its stores) and starts a new one on the
    /// same directory, configuration and clock.
    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    pub fn restart_with(&mut self, extra: &str) {
        self.stop();
        self.extra = extra.to_string();
        self.boot();
    }

    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop().unwrap();
        }
    }

    /// The main.cf text this daemon was started with plus `extra`.
    pub fn main_cf_with(&self, extra: &str) -> String {
        main_cf(&self.dir, extra)
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket, Duration::from_secs(10)).unwrap()
    }

    pub fn services(&self) -> &tlsmgr::daemon::Services {
        &self.handle.as_ref().unwrap().services
    }
}

/// The `reload: ...` lines the daemon has logged.
pub fn reload_lines(d: &TestDaemon) -> Vec<String> {
    d.log
        .text()
        .lines()
        .filter(|l| l.contains("]: reload: "))
        .map(str::to_string)
        .collect()
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn update(c: &mut Client, ct: &str, id: &str, session: &[u8]) -> Reply {
    c.request(&Request::Update {
        cache_type: b(ct),
        cache_id: b(id),
        session: Bytes::copy_from_slice(session),
    })
    .unwrap()
}

pub fn lookup(c: &mut Client, ct: &str, id: &str) -> Reply {
    c.request(&Request::Lookup {
        cache_type: b(ct),
        cache_id: b(id),
    })
    .unwrap()
}

pub fn delete(c: &mut Client, ct: &str, id: &str) -> Reply {
    c.request(&Request::Delete {
        cache_type: b(ct),
        cache_id: b(id),
    })
    .unwrap()
}

pub fn hit(session: &[u8]) -> Reply {
    Reply::Lookup {
        status: Status::Ok,
        session: Bytes::copy_from_slice(session),
    }
}

pub fn miss() -> Reply {
    Reply::Lookup {
        status: Status::Err,
        session: Bytes::new(),
    }
}

/// Waits up to 10 s for `cond`.
/// [`eventually`] with a bound of its own, for work that takes seconds in
/// a debug build on a loaded machine (parsing a 47 MB main.cf).
pub fn eventually_within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
