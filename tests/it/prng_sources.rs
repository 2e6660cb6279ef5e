//! Entropy sources (spec §2.2, §2.5): `dev:`, `egd:`, a plain file, none.
//! A daemon on a real socket with a manual clock; fake devices are files in
//! a temporary directory, the fake EGD server is a real UNIX socket served by
//! the test. Every failure must be logged with Postfix's words, reopened in
//! place with backoff, and never stop seeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;
use crate::common::prng_util;

use common::*;
use prng_util::*;
use std::time::{Duration, Instant};
use tlsmgr::clock::Clock;

fn source_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn device_reseeds_at_start_then_at_drawn_times_within_the_period() {
    let d = TestDaemon::start(
        "tls_random_source = dev:/dev/urandom\ntls_random_bytes = 1000\n\
         tls_random_reseed_period = 3600s",
    );
    let s = wait_status(&d, |s| s.reseeds == 1);
    assert_eq!(s.source_bytes, 255, "device reads are capped at 255 bytes");
    assert!(s.source_open, "the device stays open between reseeds");
    let at = s.next_reseed.unwrap();
    assert!((T0..=T0 + 3600).contains(&at), "next reseed {at}");
    if at > T0 {
        d.clock.set(at - 1);
        tick(&d);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(status(&d).reseeds, 1, "no reseed before its time");
    }
    // Step through many reseeds: each delay is period * b / 255 for a
    // fresh pool byte b, so within [0, 3600] and not constant.
    let mut delays = Vec::new();
    for i in 2..=25u64 {
        let before = status(&d);
        let s = step_to_reseed(&d);
        assert_eq!(s.reseeds, i, "{s:?}");
        assert_eq!(s.source_bytes, 255 * i);
        let now = d.clock.now();
        let next = s.next_reseed.unwrap();
        assert!(next >= now && next - now <= 3600, "delay {}", next - now);
        delays.push(next - now);
        assert!(before.next_reseed.unwrap() <= now);
    }
    delays.sort_unstable();
    delays.dedup();
    assert!(delays.len() > 5, "delays look fixed: {delays:?}");
    let mut c = d.client();
    assert_ne!(seed(&mut c, 32), seed(&mut c, 32));
}

#[test]
fn device_short_read_and_eof_are_logged_and_the_device_reopened() {
    let src = source_dir();
    let dev = src.path().join("fakedev");
    std::fs::write(&dev, b"12345").unwrap();
    let p = dev.display().to_string();
    let d = TestDaemon::start(&format!("tls_random_source = dev:{p}"));
    let s = wait_status(&d, |s| s.reseeds == 1);
    assert_eq!(s.source_bytes, 5);
    wait_log(
        &d,
        &format!(
            "tlsmgr[{}]: entropy device {p} returned 5 of 32 bytes (short read)",
            std::process::id()
        ),
    );

    // The next read hits end of file: Postfix's line, then ours.
    let s = step_to_reseed(&d);
    assert_eq!((s.reseeds, s.source_failures), (1, 1));
    wait_log(
        &d,
        &format!("cannot read from entropy device {p}: end of file"),
    );
    wait_log(
        &d,
        &format!(
            "reopening external entropy source dev:{p} in 1s; seeds keep coming from the pool"
        ),
    );
    assert!(!d.log.text().contains("exiting"), "we never exit to reopen");
    let mut c = d.client();
    assert_eq!(seed(&mut c, 255).len(), 255);

    // After the backoff the device is reopened and read from the start.
    let s = step_to_reseed(&d);
    assert_eq!((s.reseeds, s.source_bytes), (2, 10));
    wait_log(
        &d,
        &format!("entropy device {p} is back after 1 failed attempt(s)"),
    );
}

#[test]
fn missing_device_is_retried_with_growing_backoff_until_it_appears() {
    let src = source_dir();
    let dev = src.path().join("nodev");
    let p = dev.display().to_string();
    let d = TestDaemon::start(&format!("tls_random_source = dev:{p}"));
    let s = wait_status(&d, |s| s.source_failures == 1);
    wait_log(
        &d,
        &format!("warning: cannot open entropy device {p}: No such file or directory"),
    );
    let mut now = d.clock.now();
    assert_eq!(s.next_reseed, Some(now + 1));
    for (failures, backoff) in [(2, 2), (3, 4), (4, 8)] {
        let s = step_to_reseed(&d);
        now = d.clock.now();
        assert_eq!(s.source_failures, failures);
        assert_eq!(s.next_reseed, Some(now + backoff), "{s:?}");
    }
    let mut c = d.client();
    seed(&mut c, 32);
    std::fs::write(&dev, [7u8; 64]).unwrap();
    let s = step_to_reseed(&d);
    assert_eq!((s.reseeds, s.source_bytes), (1, 32));
    wait_log(
        &d,
        &format!("entropy device {p} is back after 4 failed attempt(s)"),
    );
}

#[test]
fn egd_exchange_asks_for_at_most_255_bytes_on_one_connection() {
    let src = source_dir();
    let sock = src.path().join("egd.sock");
    let egd = FakeEgd::start(&sock, Egd::Good);
    let d = TestDaemon::start(&format!(
        "tls_random_source = egd:{}\ntls_random_bytes = 300",
        sock.display()
    ));
    let s = wait_status(&d, |s| s.reseeds == 1);
    assert_eq!(s.source_bytes, 255);
    let s = step_to_reseed(&d);
    assert_eq!((s.reseeds, s.source_failures), (2, 0));
    assert!(s.source_open);
    assert_eq!(
        *egd.requests.lock().unwrap(),
        vec![vec![0x01, 255], vec![0x01, 255]],
        "EGD command 1 with a count byte"
    );
}

#[test]
fn egd_zero_oversized_short_and_banner_answers_are_logged_then_it_recovers() {
    let src = source_dir();
    let sock = src.path().join("egd.sock");
    let p = sock.display().to_string();
    let egd = FakeEgd::start(&sock, Egd::Zero);
    let d = TestDaemon::start(&format!("tls_random_source = egd:{p}"));
    let mut c = d.client();
    wait_status(&d, |s| s.source_failures == 1);
    wait_log(&d, &format!("EGD server {p} reports zero bytes available"));
    wait_log(
        &d,
        &format!("lost connection to EGD server {p} -- reconnecting in 1s; seeds keep coming from the pool"),
    );
    seed(&mut c, 32);

    egd.set(Egd::Oversized);
    assert_eq!(step_to_reseed(&d).source_failures, 2);
    wait_log(
        &d,
        &format!("warning: EGD server {p} announced 132 bytes, more than the 32 requested"),
    );
    seed(&mut c, 32);

    egd.set(Egd::Short);
    assert_eq!(step_to_reseed(&d).source_failures, 3);
    wait_log(&d, &format!("cannot read 32 bytes from EGD server {p}: "));
    seed(&mut c, 32);

    egd.set(Egd::Banner);
    assert_eq!(step_to_reseed(&d).source_failures, 4);
    wait_log(&d, &format!("EGD server {p} announced 72 bytes")); // 'H'
    seed(&mut c, 32);

    egd.set(Egd::Good);
    let s = step_to_reseed(&d);
    assert_eq!((s.reseeds, s.source_bytes, s.source_failures), (1, 32, 4));
    wait_log(
        &d,
        &format!("EGD server {p} is back after 4 failed attempt(s)"),
    );
    assert_eq!(status(&d).reseeds, 1);
}

#[test]
fn stalled_egd_server_times_out_after_10s_while_seeds_keep_flowing() {
    let src = source_dir();
    let sock = src.path().join("egd.sock");
    let p = sock.display().to_string();
    let _egd = FakeEgd::start(&sock, Egd::Stall);
    let started = Instant::now();
    let d = TestDaemon::start(&format!("tls_random_source = egd:{p}"));
    let mut c = d.client();
    // While the reseed hangs, seeds are answered at once.
    while started.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        seed(&mut c, 64);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "seed took {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = status(&d);
    assert_eq!(
        (s.reseeds, s.source_failures),
        (0, 0),
        "still waiting: {s:?}"
    );
    let needle = format!("cannot read from EGD server {p}: Connection timed out");
    wait_for_io_timeout(&d, &needle, started);
    wait_log(
        &d,
        &format!("lost connection to EGD server {p} -- reconnecting in 1s"),
    );
    assert_eq!(status(&d).source_failures, 1);
    seed(&mut c, 255);
}

#[test]
fn egd_server_not_running_is_retried() {
    let src = source_dir();
    let sock = src.path().join("egd.sock");
    let p = sock.display().to_string();
    let d = TestDaemon::start(&format!("tls_random_source = egd:{p}"));
    wait_status(&d, |s| s.source_failures == 1);
    wait_log(
        &d,
        &format!("warning: cannot connect to EGD server {p}: No such file or directory"),
    );
    let _egd = FakeEgd::start(&sock, Egd::Good);
    let s = step_to_reseed(&d);
    assert_eq!(s.reseeds, 1);
}

#[test]
fn empty_source_gives_postfix_two_warnings_and_seeds_still_work() {
    let d = TestDaemon::start("tls_random_source =");
    wait_log(
        &d,
        "warning: no entropy source specified with parameter tls_random_source",
    );
    wait_log(&d, "warning: encryption keys etc. may be predictable");
    d.clock.advance(100_000);
    tick(&d);
    let s = status(&d);
    assert_eq!((s.reseeds, s.source_failures, s.next_reseed), (0, 0, None));
    let mut c = d.client();
    assert_ne!(seed(&mut c, 32), seed(&mut c, 32));
}

#[test]
fn plain_file_is_read_once_up_to_tls_random_bytes_without_the_255_cap() {
    let src = source_dir();
    let file = src.path().join("seedfile");
    std::fs::write(&file, vec![0xa5u8; 20_000]).unwrap();
    let d = TestDaemon::start(&format!(
        "tls_random_source = {}\ntls_random_bytes = 9000\ntls_random_reseed_period = 10s",
        file.display()
    ));
    let s = wait_status(&d, |s| s.reseeds == 1);
    assert_eq!(s.source_bytes, 9000);
    assert!(s.source_spent && !s.source_open);
    assert_eq!(s.next_reseed, None);
    for _ in 0..5 {
        d.clock.advance(11);
        tick(&d);
    }
    std::thread::sleep(Duration::from_millis(200));
    let s = status(&d);
    assert_eq!((s.reseeds, s.source_bytes), (1, 9000), "read once only");
}

#[test]
fn silent_device_times_out_after_10s_without_holding_up_seeds() {
    // A FIFO whose writer never writes: the read must give up after
    // Postfix's 10 s, not hang (nor hang the open, which has no writer yet).
    let src = source_dir();
    let fifo = src.path().join("silent");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let p = fifo.display().to_string();
    let started = Instant::now();
    let d = TestDaemon::start(&format!("tls_random_source = dev:{p}"));
    // Open the writer end only once the daemon holds the read end.
    std::thread::sleep(Duration::from_millis(300));
    let _writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let mut c = d.client();
    let t = Instant::now();
    seed(&mut c, 32);
    assert!(t.elapsed() < Duration::from_secs(1));
    let needle = format!("cannot read from entropy device {p}: Connection timed out");
    wait_for_io_timeout(&d, &needle, started);
    wait_log(
        &d,
        &format!("reopening external entropy source dev:{p} in 1s"),
    );
    seed(&mut c, 32);
}
