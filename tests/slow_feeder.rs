//! Slow feeders over real sockets: a peer that sends a huge request a byte
//! at a time must cost neither unbounded memory nor CPU that other clients
//! pay for in latency.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tlsmgr::protocol::{Request, Status};

/// A raw connection that has consumed the announcement.
fn raw(d: &TestDaemon) -> UnixStream {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ann = [0u8; 26];
    s.read_exact(&mut ann).unwrap();
    s
}

/// Sends `head` (errors ignored: the daemon may close mid-way), then one
/// byte a millisecond until `stop` or a write fails; returns whether the
/// daemon closed the connection (a write failed).
fn drip(mut s: UnixStream, head: Vec<u8>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        if s.write_all(&head).is_err() {
            return true;
        }
        while !stop.load(Ordering::Relaxed) {
            if s.write_all(b"Q").is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    })
}

/// Seed requests for `time`; their latencies, sorted.
fn latencies(d: &TestDaemon, time: Duration) -> Vec<Duration> {
    let mut c = d.client();
    let mut out = Vec::new();
    let start = Instant::now();
    while start.elapsed() < time {
        let t = Instant::now();
        let r = c.request(&Request::Seed { size: 32 }).unwrap();
        out.push(t.elapsed());
        assert_eq!(r.status(), Status::Ok);
    }
    out.sort();
    out
}

fn pct(v: &[Duration], p: usize) -> Duration {
    v[(v.len() - 1) * p / 100]
}

fn show(label: &str, v: &[Duration]) {
    println!(
        "{label}: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        v.len(),
        pct(v, 50),
        pct(v, 99),
        v[v.len() - 1]
    );
}

/// Two slow feeders on the one I/O thread the well-behaved client uses:
///
/// - the attack as first reported: 15 attributes of about 1 MiB, a 16th
///   left open, then a byte a millisecond (each read used to rescan all
///   15 MiB, a full core for one connection at ~1 KB/s). It must be cut
///   off at a limit, long before 15 MiB are buffered;
/// - the largest unfinished request the limits allow, dripped the same way
///   for the whole measurement: its bytes are searched once each, so it
///   costs the others nothing measurable.
///
/// The well-behaved client's latencies are printed before and during.
#[test]
fn a_drip_fed_connection_does_not_delay_a_well_behaved_client() {
    let d = TestDaemon::start("tlsmgr_io_threads = 1");
    let baseline = latencies(&d, Duration::from_millis(1500));
    show("baseline", &baseline);

    let stop = Arc::new(AtomicBool::new(false));
    let mut huge = b"request\0update\0".to_vec();
    for i in 0..14 {
        huge.extend_from_slice(format!("x{i}\0").as_bytes());
        huge.extend(std::iter::repeat_n(b'Q', 1_000_000));
        huge.push(0);
    }
    huge.extend_from_slice(b"open\0");
    let reported = drip(raw(&d), huge, stop.clone());

    // Just under the 256 KiB list cap, with each value under its cap.
    let mut max_legal = b"request\0update\0cache_type\0smtpd\0cache_id\0".to_vec();
    max_legal.extend(std::iter::repeat_n(b'i', 60_000));
    max_legal.extend_from_slice(b"\0session\0");
    max_legal.extend(std::iter::repeat_n(b'Q', 190_000));
    let legal = drip(raw(&d), max_legal, stop.clone());

    let during = latencies(&d, Duration::from_millis(2500));
    show("during the drip", &during);
    stop.store(true, Ordering::Relaxed);
    assert!(
        reported.join().unwrap(),
        "the 15 MiB request was not refused"
    );
    assert!(!legal.join().unwrap(), "the legal slow request was refused");
    let log = d.log.text();
    assert!(
        log.contains(
            "warning: value of attribute x0 longer than 196608 bytes -- closing connection"
        ),
        "{log}"
    );
    // Generous: a shared 2-core machine. With the rescanning codec the
    // median went from 137 µs to 57 ms here (debug build), 55 requests
    // in 2.5 s; with the resumed scan it stays at about 140 µs.
    let bound = (pct(&baseline, 50) * 5).max(Duration::from_millis(5));
    assert!(
        pct(&during, 50) <= bound,
        "median {:?} > {:?}",
        pct(&during, 50),
        bound
    );
}
