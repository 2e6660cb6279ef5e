//! Bad input over real sockets: raw bytes in, Postfix statuses or a closed
//! connection out, and the daemon keeps serving everyone else (spec §1.4).
#![allow(clippy::unwrap_used)]
use crate::common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tlsmgr::protocol::{Reply, Request, Status};

const FAIL_ONLY: &[u8] = b"status\x004294967294\x00\x00";

/// A raw connection that has consumed the announcement.
fn raw(d: &TestDaemon) -> UnixStream {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ann = [0u8; 26];
    s.read_exact(&mut ann).unwrap();
    assert_eq!(&ann, b"protocol\0tlsmgr_protocol\0\0");
    s
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn assert_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "expected close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

fn still_serving(d: &TestDaemon) {
    let mut c = d.client();
    assert_eq!(
        c.request(&Request::Seed { size: 8 }).unwrap().status(),
        Status::Ok
    );
}

#[test]
fn first_attribute_not_request_gets_fail() {
    let d = TestDaemon::start("");
    let mut s = raw(&d);
    s.write_all(b"cache_type\0smtpd\0\0").unwrap();
    assert_eq!(read_n(&mut s, FAIL_ONLY.len()), FAIL_ONLY);
    // The connection stays usable.
    s.write_all(b"request\0seed\0size\x0032\0\0").unwrap();
    assert_eq!(&read_n(&mut s, 9), b"status\x000\x00");
    assert!(d
        .log
        .text()
        .contains("unexpected attribute cache_type from tlsmgr socket (expecting: request)"));
}

#[test]
fn unknown_request_gets_fail_not_silence() {
    let d = TestDaemon::start("");
    let mut s = raw(&d);
    s.write_all(b"request\0frobnicate\0x\0y\0\0").unwrap();
    assert_eq!(read_n(&mut s, FAIL_ONLY.len()), FAIL_ONLY);
}

#[test]
fn bad_attributes_get_fail_in_the_request_shape() {
    let d = TestDaemon::start("");
    let mut s = raw(&d);
    // Non-numeric size: FAIL with an empty seed (25 bytes, spec §1.6).
    s.write_all(b"request\0seed\0size\0lots\0\0").unwrap();
    assert_eq!(
        read_n(&mut s, 25),
        b"status\x004294967294\x00seed\x00\x00\x00"
    );
    // Missing cache_id.
    s.write_all(b"request\0lookup\0cache_type\0smtpd\0\0")
        .unwrap();
    assert_eq!(
        read_n(&mut s, 28),
        b"status\x004294967294\x00session\x00\x00\x00"
    );
    // Wrong order.
    s.write_all(b"request\0policy\0timeout\x001\0\0").unwrap();
    assert_eq!(
        read_n(&mut s, 40),
        b"status\x004294967294\x00cachable\x000\x00timeout\x000\x00\x00"
    );
    // Bad base64 in update.
    s.write_all(b"request\0update\0cache_type\0smtpd\0cache_id\0k\0session\0!!!\0\0")
        .unwrap();
    assert_eq!(read_n(&mut s, FAIL_ONLY.len()), FAIL_ONLY);
    // An extra attribute.
    s.write_all(b"request\0delete\0cache_type\0smtpd\0cache_id\0k\0more\0x\0\0")
        .unwrap();
    assert_eq!(read_n(&mut s, FAIL_ONLY.len()), FAIL_ONLY);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let d = TestDaemon::start("");
    let mut s = raw(&d);
    let mut burst = Vec::new();
    for i in 0..60 {
        burst.extend_from_slice(
            format!("request\0update\0cache_type\0smtpd\0cache_id\0k{i}\0session\0QQ==\0\0")
                .as_bytes(),
        );
    }
    s.write_all(&burst).unwrap();
    // 60 replies of `status\0 0\0 \0` (stock answers 1, spec appendix C).
    assert_eq!(read_n(&mut s, 60 * 10), b"status\x000\x00\x00".repeat(60));
}

#[test]
fn master_wakeup_closes_without_reply() {
    let d = TestDaemon::start("");
    let mut s = raw(&d);
    s.write_all(b"W\0").unwrap();
    assert_closed(&mut s);
    still_serving(&d);
}

#[test]
fn oversized_name_closes_the_connection() {
    let d = TestDaemon::start("");
    let mut s = raw(&d);
    // No NUL at all: must be refused long before it grows without bound.
    let _ = s.write_all(&vec![b'a'; 100_000]);
    assert_closed(&mut s);
    still_serving(&d);
}

#[test]
fn oversized_value_closes_the_connection() {
    let d = TestDaemon::start("");
    let mut s = raw(&d);
    let mut req = b"request\0update\0cache_type\0smtpd\0cache_id\0k\0session\0".to_vec();
    req.extend(std::iter::repeat_n(b'A', 2 << 20));
    let _ = s.write_all(&req);
    assert_closed(&mut s);
    still_serving(&d);
}

#[test]
fn oversized_list_closes_the_connection() {
    let d = TestDaemon::start("");
    let mut s = raw(&d);
    // Every value under its cap, but 300 KB in all: cut off at the 256 KiB
    // list cap (it used to be buffered whole, up to 16 MiB).
    let mut req = b"request\0update\0".to_vec();
    for i in 0..3 {
        req.extend_from_slice(format!("x{i}\0").as_bytes());
        req.extend(std::iter::repeat_n(b'A', 100_000));
        req.push(0);
    }
    let _ = s.write_all(&req);
    assert_closed(&mut s);
    still_serving(&d);
    assert!(d
        .log
        .text()
        .contains("warning: attribute list longer than 262144 bytes -- closing connection"));
}

#[test]
fn peer_disconnecting_mid_request_loses_nothing_else() {
    let d = TestDaemon::start("");
    let mut c = d.client();
    update(&mut c, "smtpd", "keep", b"K");
    for cut in [3, 10, 30, 50] {
        let mut s = raw(&d);
        let req = b"request\0update\0cache_type\0smtpd\0cache_id\0half\0session\0QQ==\0\0";
        s.write_all(&req[..cut]).unwrap();
        drop(s);
    }
    // The half-sent update never happened, the earlier one is intact.
    assert_eq!(lookup(&mut c, "smtpd", "half"), miss());
    assert_eq!(lookup(&mut c, "smtpd", "keep"), hit(b"K"));
}

#[test]
fn a_stalled_client_stalls_only_itself() {
    let d = TestDaemon::start("ipc_timeout = 2s");
    let mut stalled = raw(&d);
    stalled.write_all(b"request\0seed\0si").unwrap();
    // Others are served meanwhile (stock would hang every client).
    for _ in 0..5 {
        still_serving(&d);
    }
    // The stalled one is dropped after ipc_timeout.
    assert_closed(&mut stalled);
    assert!(d
        .log
        .text()
        .contains("timeout while waiting for data from tlsmgr socket"));
}

/// What must not happen: `ipc_timeout` counts from the last reply, so a
/// client that keeps asking, more slowly than the timeout's sweep but
/// faster than the timeout, is never cut off, while a quiet one beside it
/// is, once, with one warning.
#[test]
fn a_client_that_keeps_asking_is_never_timed_out() {
    let d = TestDaemon::start("ipc_timeout = 1s");
    let mut busy = raw(&d);
    let mut quiet = raw(&d);
    let started = std::time::Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        std::thread::sleep(Duration::from_millis(400));
        busy.write_all(b"request\0seed\0size\x008\0\0").unwrap();
        let reply = read_n(&mut busy, 10);
        assert_eq!(
            &reply, b"status\x000\0s",
            "cut off after {answered} answers"
        );
        let mut rest = [0u8; 64];
        let _ = busy.read(&mut rest).unwrap();
        answered += 1;
    }
    assert!(answered >= 8, "{answered}");
    assert_closed(&mut quiet);
    let log = d.log.text();
    assert_eq!(
        log.matches("timeout while waiting for data from tlsmgr socket")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn garbage_never_stops_the_daemon() {
    let d = TestDaemon::start("");
    let mut seed = 0x1234_5678_u32;
    for _ in 0..50 {
        let mut s = raw(&d);
        let mut junk = Vec::new();
        for _ in 0..500 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            junk.push(if seed.is_multiple_of(7) {
                0
            } else {
                (seed >> 8) as u8
            });
        }
        let _ = s.write_all(&junk);
    }
    still_serving(&d);
    let mut c = d.client();
    assert_eq!(
        update(&mut c, "smtp", "after", b"ok"),
        Reply::Status(Status::Ok)
    );
}

/// Reads one reply as (name, value) pairs, up to its terminating empty name.
fn read_reply(s: &mut UnixStream) -> Vec<(String, Vec<u8>)> {
    let mut word = || {
        let mut w = Vec::new();
        loop {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            if b[0] == 0 {
                return w;
            }
            w.push(b[0]);
        }
    };
    let mut attrs = Vec::new();
    loop {
        let name = word();
        if name.is_empty() {
            return attrs;
        }
        attrs.push((String::from_utf8(name).unwrap(), word()));
    }
}

/// A FAIL reply never carries data from an earlier request on the same
/// connection (Postfix 3.7 to 3.11 may resend the last `seed`, `session`
/// or `keybuf`; 3.12 sends nothing). Every request that yields data, then
/// every way to get a FAIL in a reply with a data attribute.
#[test]
fn a_fail_carries_no_data_from_an_earlier_request() {
    let d = TestDaemon::start("");
    let mut s = raw(&d);
    s.write_all(b"request\0update\0cache_type\0smtpd\0cache_id\0k\0session\0c2Vzc2lvbg==\0\0")
        .unwrap();
    assert_eq!(read_reply(&mut s), [("status".into(), b"0".to_vec())]);
    let good: [(&[u8], &str); 3] = [
        (b"request\0seed\0size\x00255\0\0", "seed"),
        (
            b"request\0lookup\0cache_type\0smtpd\0cache_id\0k\0\0",
            "session",
        ),
        (b"request\0tktkey\0keyname\0\0\0", "keybuf"),
    ];
    let fails: [(&[u8], &str); 7] = [
        // Malformed: the attributes cannot be read.
        (b"request\0seed\0size\0lots\0\0", "seed"),
        (b"request\0lookup\0cache_type\0smtpd\0\0", "session"),
        (b"request\0tktkey\0keyname\0!!!\0\0", "keybuf"),
        // Read, but refused.
        (b"request\0seed\0size\x000\0\0", "seed"),
        (
            b"request\0lookup\0cache_type\0bogus\0cache_id\0k\0\0",
            "session",
        ),
        (
            b"request\0lookup\0cache_type\0lmtp\0cache_id\0k\0\0",
            "session",
        ),
        (b"request\0tktkey\0keyname\0QUJD\0\0", "keybuf"),
    ];
    for (request, data) in good {
        for (bad, fail_data) in fails {
            s.write_all(request).unwrap();
            let reply = read_reply(&mut s);
            assert_eq!(reply[0], ("status".into(), b"0".to_vec()), "{reply:?}");
            assert_eq!(reply[1].0, data);
            assert!(!reply[1].1.is_empty());
            s.write_all(bad).unwrap();
            assert_eq!(
                read_reply(&mut s),
                [
                    ("status".into(), b"4294967294".to_vec()),
                    (fail_data.into(), Vec::new())
                ],
                "after {:?}, {:?}",
                String::from_utf8_lossy(request),
                String::from_utf8_lossy(bad)
            );
        }
    }
}
