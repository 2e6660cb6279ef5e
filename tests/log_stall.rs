//! A log reader that stops reading does not stop the daemon. syslogd or
//! postlogd can stall (a full disk, a hung process); a datagram socket then
//! queues a few lines and refuses the rest. Our tlsmgr, run as master(8)
//! runs it, keeps answering every request; lines that do not fit are
//! dropped, and one warning gives their count once the reader reads again.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::{child, stock};

use child::{MasterChild, OURS};
use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request the daemon answers with FAIL and a warning in the log.
const WARNS: &[u8] = b"request\0no-such-request\0\0";
const FAIL_ONLY: &[u8] = b"status\x004294967294\x00\x00";
/// A seed request of 32 bytes, answered OK.
const SEED: &[u8] = b"request\0seed\0size\x0032\0\0";

fn connect(socket: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    // Far above any answer's time, far below a stall's (for ever).
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut announcement = [0u8; 26];
    s.read_exact(&mut announcement).unwrap();
    s
}

#[test]
fn a_log_reader_that_stops_reading_does_not_stop_requests() {
    if !stock::available() {
        return;
    }
    let logdir = tempfile::tempdir().unwrap();
    let sock_path = logdir.path().join("log");
    // Bound, never read until the end: a syslogd that stopped.
    let reader = UnixDatagram::bind(&sock_path).unwrap();
    let env = [("TLSMGR_TEST_SYSLOG_PATH", sock_path.to_str().unwrap())];
    let mut d = MasterChild::start_env(OURS, &["-l", "-t", "unix"], "", &env);
    d.drain_status();

    let mut warns = connect(&d.socket);
    let mut seeds = connect(&d.socket);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        let t = Instant::now();
        warns.write_all(WARNS).unwrap();
        let mut reply = vec![0u8; FAIL_ONLY.len()];
        warns
            .read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("request {i} that logs a warning: no answer: {e}"));
        assert_eq!(reply, FAIL_ONLY);
        seeds.write_all(SEED).unwrap();
        let mut head = [0u8; 9];
        seeds
            .read_exact(&mut head)
            .unwrap_or_else(|e| panic!("seed {i}: no answer: {e}"));
        assert_eq!(&head, b"status\x000\x00");
        // `seed`, NUL, 32 bytes in base64, NUL, and the end of the reply.
        let mut rest = [0u8; 5 + 44 + 2];
        seeds.read_exact(&mut rest).unwrap();
        assert!(rest.starts_with(b"seed\0") && rest.ends_with(b"\0\0"));
        slowest = slowest.max(t.elapsed());
    }
    eprintln!(
        "300 warnings and 300 seeds with the log socket full: {:?} in all, slowest pair {:?}",
        started.elapsed(),
        slowest
    );

    // The reader reads again: what was queued, then a report and the line
    // that follows it.
    reader.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let mut queued = 0;
    while reader.recv(&mut buf).is_ok() {
        queued += 1;
    }
    assert!(
        queued < 300,
        "{queued} lines queued: the socket was never full"
    );
    warns.write_all(WARNS).unwrap();
    let mut reply = vec![0u8; FAIL_ONLY.len()];
    warns.read_exact(&mut reply).unwrap();
    reader.set_nonblocking(false).unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let n = reader.recv(&mut buf).expect("the log resumes");
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let dropped = 300 - queued;
    assert!(
        lines[0].ends_with(&format!(
            "warning: {dropped} log lines were dropped: the log socket was not reading"
        )),
        "{lines:#?}"
    );
    assert!(lines[1].contains("no-such-request"), "{lines:#?}");
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
}

/// One round: 64 connections, each with 40 requests, every other one a
/// request that logs a warning. The latency of every request.
fn round(socket: &std::path::Path) -> Vec<Duration> {
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || {
                let mut s = connect(&socket);
                let mut times = Vec::new();
                for i in 0..40 {
                    let t = Instant::now();
                    if i % 2 == 0 {
                        s.write_all(WARNS).unwrap();
                        let mut reply = vec![0u8; FAIL_ONLY.len()];
                        s.read_exact(&mut reply).unwrap();
                    } else {
                        s.write_all(SEED).unwrap();
                        let mut reply = [0u8; 9 + 5 + 44 + 2];
                        s.read_exact(&mut reply).unwrap();
                    }
                    times.push(t.elapsed());
                }
                times
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() * 99 / 100]
}

#[test]
fn sixty_four_connections_keep_their_pace_when_the_log_stops() {
    if !stock::available() {
        return;
    }
    let logdir = tempfile::tempdir().unwrap();
    let sock_path = logdir.path().join("log");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    // A syslogd that reads while `reading` is set, as a real one does
    // until it hangs.
    let reading = Arc::new(AtomicBool::new(true));
    let lines = Arc::new(Mutex::new(Vec::new()));
    {
        let (reading, lines) = (reading.clone(), lines.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                if !reading.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                if let Ok(n) = sock.recv(&mut buf) {
                    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                    lines.lock().unwrap().push(line);
                }
            }
        });
    }
    let env = [("TLSMGR_TEST_SYSLOG_PATH", sock_path.to_str().unwrap())];
    let mut d = MasterChild::start_env(OURS, &["-l", "-t", "unix"], "", &env);
    d.drain_status();

    let before = p99(round(&d.socket));
    reading.store(false, Ordering::SeqCst);
    // The outage begins: the queue fills, and the requests logging at that
    // moment wait once, up to SEND_WAIT (20 ms), for room. From then on
    // lines are dropped without waiting: that is the pace measured.
    let mut s = connect(&d.socket);
    let warn = |s: &mut UnixStream| {
        s.write_all(WARNS).unwrap();
        let mut reply = vec![0u8; FAIL_ONLY.len()];
        s.read_exact(&mut reply).unwrap();
    };
    for _ in 0..20 {
        warn(&mut s);
    }
    let stalled = p99(round(&d.socket));
    eprintln!("64 connections, p99 with the log read: {before:?}; with it not read: {stalled:?}");
    assert!(
        stalled <= before * 2 + Duration::from_millis(5),
        "p99 {stalled:?} with the log not read, {before:?} before"
    );

    // The reader reads again: the next line that goes through is preceded
    // by the count.
    reading.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        warn(&mut s);
        let found = lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("log lines were dropped"))
            .cloned();
        if let Some(l) = found {
            break l;
        }
        assert!(Instant::now() < deadline, "no report of the dropped lines");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("{report}");
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
}
