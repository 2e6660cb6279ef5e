//! Reload latency: time from a saved main.cf edit (new file + rename, as
//! `postconf -e` does) to the new snapshot in use, observed the way a client
//! observes it: a `policy` reply carrying the new timeout.
//!
//! Two daemons run side by side, one with the default debounce and one with
//! a short one, and their edits are interleaved, so the share of the
//! debounce in the total shows up within one run on the same (noisy)
//! machine. Prints min / median / max per daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tlsmgr::actors::watcher::{WatchOptions, DEFAULT_DEBOUNCE};
use tlsmgr::client::Client;
use tlsmgr::config::dir::ConfigDir;
use tlsmgr::config::Config;
use tlsmgr::daemon::{self, DaemonHandle, Options};
use tlsmgr::protocol::{Reply, Request, Status};

const ROUNDS: usize = 15;

struct Bench {
    dir: PathBuf,
    socket: PathBuf,
    _handle: DaemonHandle,
    _tmp: tempfile::TempDir,
    debounce: Duration,
    samples: Vec<Duration>,
}

fn main_cf(dir: &Path, timeout: u32) -> String {
    format!(
        "queue_directory = {d}\ndata_directory = {d}/data\n\
         smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
         smtpd_tls_session_cache_timeout = {timeout}\n",
        d = dir.display()
    )
}

impl Bench {
    fn start(debounce: Duration) -> Bench {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("main.cf"), main_cf(&dir, 3600)).unwrap();
        let socket = dir.join("tlsmgr.sock");
        let mut watch = WatchOptions::new(ConfigDir::open(&dir).unwrap(), Vec::new());
        watch.debounce = debounce;
        let handle = daemon::spawn(Options {
            config: Config::load(&dir, &[]).unwrap(),
            listener: std::os::unix::net::UnixListener::bind(&socket).unwrap(),
            clock: tlsmgr::clock::system(),
            log: slog::Logger::root(slog::Discard, slog::o!()),
            fault_injection: None,
            watch: Some(watch),
            admin: None,
            prng_preopened: None,
        })
        .unwrap();
        Bench {
            dir,
            socket,
            _handle: handle,
            _tmp: tmp,
            debounce,
            samples: Vec::new(),
        }
    }

    fn timeout(c: &mut Client) -> u32 {
        match c
            .request(&Request::Policy {
                cache_type: Bytes::from_static(b"smtpd"),
            })
            .unwrap()
        {
            Reply::Policy {
                status: Status::Ok,
                timeout,
                ..
            } => timeout,
            other => panic!("policy: {other:?}"),
        }
    }

    /// One edit; returns when a client sees the new value.
    fn round(&mut self, timeout: u32) {
        let mut c = Client::connect(&self.socket, Duration::from_secs(10)).unwrap();
        let tmp = self.dir.join("main.cf.tmp");
        std::fs::write(&tmp, main_cf(&self.dir, timeout)).unwrap();
        let t0 = Instant::now();
        std::fs::rename(&tmp, self.dir.join("main.cf")).unwrap();
        while Self::timeout(&mut c) != timeout {
            assert!(t0.elapsed() < Duration::from_secs(30), "reload never seen");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.samples.push(t0.elapsed());
    }

    fn report(&mut self) {
        self.samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "reload latency, debounce {:>3} ms: min {:7.1} ms  median {:7.1} ms  max {:7.1} ms  ({} edits)",
            self.debounce.as_millis(),
            ms(self.samples[0]),
            ms(self.samples[self.samples.len() / 2]),
            ms(self.samples[self.samples.len() - 1]),
            self.samples.len()
        );
    }
}

fn main() {
    // `cargo test --benches` runs benches once as tests: keep that quick.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        ROUNDS
    } else {
        2
    };
    let mut benches = [
        Bench::start(DEFAULT_DEBOUNCE),
        Bench::start(Duration::from_millis(20)),
    ];
    for i in 0..rounds {
        let timeout = 3600 + 60 * (i as u32 + 1);
        for b in benches.iter_mut() {
            b.round(timeout);
        }
    }
    for b in benches.iter_mut() {
        b.report();
    }
}
