//! PRNG test helpers: seed requests, the PRNG actor's status, clock steps
//! that make the actor look at its schedule, and a fake EGD server on a
//! real UNIX socket whose behaviour the test switches at will.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use super::{eventually, TestDaemon};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tlsmgr::actors::prng::{GetStatus, PrngStatus, Tick};
use tlsmgr::client::Client;
use tlsmgr::clock::Clock;
use tlsmgr::protocol::{Reply, Request, Status as WireStatus};

/// One `seed` request that must succeed with `n` bytes.
pub fn seed(c: &mut Client, n: i32) -> Vec<u8> {
    match c.request(&Request::Seed { size: n }).unwrap() {
        Reply::Seed {
            status: WireStatus::Ok,
            seed,
        } => {
            assert_eq!(seed.len(), n as usize);
            seed.to_vec()
        }
        other => panic!("seed {n}: {other:?}"),
    }
}

/// The PRNG actor's counters and schedule.
pub fn status(d: &TestDaemon) -> PrngStatus {
    futures::executor::block_on(d.services().prng.send(GetStatus)).unwrap()
}

/// Makes the actor consult its schedule now (instead of at its next
/// one-second timer).
pub fn tick(d: &TestDaemon) {
    futures::executor::block_on(d.services().prng.send(Tick)).unwrap();
}

/// Ticks until `cond` holds on the status (up to 10 s of real time, for
/// I/O running off the actor).
pub fn wait_status(d: &TestDaemon, mut cond: impl FnMut(&PrngStatus) -> bool) -> PrngStatus {
    let mut last = None;
    let ok = eventually(|| {
        tick(d);
        let s = status(d);
        let ok = cond(&s);
        last = Some(s);
        ok
    });
    let last = last.unwrap();
    assert!(ok, "status never matched: {last:?}\nlog:\n{}", d.log.text());
    last
}

/// Waits (up to 15 s) for the log line `needle` of a source I/O that timed
/// out, and checks that it took the full 10-second timeout from `started`.
pub fn wait_for_io_timeout(d: &TestDaemon, needle: &str, started: std::time::Instant) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !d.log.text().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no timeout; log:\n{}",
            d.log.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "timed out early"
    );
}

/// Waits until the log contains `needle`.
pub fn wait_log(d: &TestDaemon, needle: &str) {
    assert!(
        eventually(|| d.log.text().contains(needle)),
        "log never said {needle:?}; log:\n{}",
        d.log.text()
    );
}

/// Moves the clock to the next reseed time and waits for that reseed's
/// outcome (a success or a failure counter moving).
pub fn step_to_reseed(d: &TestDaemon) -> PrngStatus {
    let before = status(d);
    let at = before.next_reseed.expect("a reseed is scheduled");
    d.clock.set(at.max(d.clock.now()));
    wait_status(d, |s| {
        s.reseeds > before.reseeds || s.source_failures > before.source_failures
    })
}

/// How the fake EGD server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egd {
    /// As EGD does: the count asked for, then that many bytes.
    Good,
    /// Count 0 ("no entropy available").
    Zero,
    /// A count larger than asked for.
    Oversized,
    /// The full count, then 3 bytes, then hangs up.
    Short,
    /// Reads the request and never answers.
    Stall,
    /// Not an EGD server at all: a text banner.
    Banner,
}

/// A fake EGD server, one thread per connection.
pub struct FakeEgd {
    pub path: PathBuf,
    pub behaviour: Arc<Mutex<Egd>>,
    /// Every request received (the 2-byte commands).
    pub requests: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeEgd {
    pub fn start(path: &Path, behaviour: Egd) -> FakeEgd {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, r, s) = (behaviour.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (b, r, s) = (b.clone(), r.clone(), s.clone());
                        std::thread::spawn(move || serve(conn, b, r, s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeEgd {
            path: path.to_path_buf(),
            behaviour,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set(&self, b: Egd) {
        *self.behaviour.lock().unwrap() = b;
    }
}

fn serve(
    mut conn: UnixStream,
    behaviour: Arc<Mutex<Egd>>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
) {
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    loop {
        let mut cmd = [0u8; 2];
        let mut got = 0;
        while got < 2 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match conn.read(&mut cmd[got..]) {
                Ok(0) => return,
                Ok(n) => got += n,
                Err(_) => {}
            }
        }
        requests.lock().unwrap().push(cmd.to_vec());
        let n = cmd[1];
        let b = *behaviour.lock().unwrap();
        let answer: Vec<u8> = match b {
            Egd::Good => std::iter::once(n)
                .chain((0..n).map(|i| i.wrapping_mul(37) ^ 0x5a))
                .collect(),
            Egd::Zero => vec![0],
            Egd::Oversized => vec![n.saturating_add(100), 1, 2, 3],
            Egd::Short => vec![n, 1, 2, 3],
            Egd::Banner => b"HTTP/1.0 400 Bad Request\r\n\r\n".to_vec(),
            Egd::Stall => {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
        };
        if conn.write_all(&answer).is_err() {
            return;
        }
        if b == Egd::Short {
            return; // hang up mid-answer
        }
    }
}

impl Drop for FakeEgd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
