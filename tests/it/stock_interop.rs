//! Differential interop: the same requests, byte for byte, to Debian's stock
//! Postfix tlsmgr and to ours; the replies must be identical attribute for
//! attribute (random payloads compared by status and length).
#![allow(clippy::unwrap_used)]
use crate::common;
use crate::common::child;
use crate::common::stock;

use bytes::Bytes;
use common::*;
use std::time::Duration;
use tlsmgr::client::Client;

type List = Vec<(Bytes, Bytes)>;

/// Requests whose replies are fully determined by the protocol.
fn deterministic_requests() -> Vec<Vec<u8>> {
    let r = |parts: &[&str]| {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p.as_bytes());
            v.push(0);
        }
        v.push(0);
        v
    };
    vec![
        r(&["request", "policy", "cache_type", "smtpd"]),
        r(&["request", "policy", "cache_type", "smtp"]),
        r(&["request", "policy", "cache_type", "lmtp"]),
        r(&["request", "policy", "cache_type", "bogus"]),
        r(&[
            "request",
            "update",
            "cache_type",
            "smtpd",
            "cache_id",
            "k1",
            "session",
            "MAUCAQEEAA==",
        ]),
        r(&["request", "lookup", "cache_type", "smtpd", "cache_id", "k1"]),
        r(&["request", "lookup", "cache_type", "smtp", "cache_id", "k1"]),
        r(&[
            "request",
            "update",
            "cache_type",
            "smtp",
            "cache_id",
            "",
            "session",
            "",
        ]),
        r(&["request", "lookup", "cache_type", "smtp", "cache_id", ""]),
        r(&["request", "delete", "cache_type", "smtpd", "cache_id", "k1"]),
        r(&["request", "delete", "cache_type", "smtpd", "cache_id", "k1"]),
        r(&["request", "lookup", "cache_type", "smtpd", "cache_id", "k1"]),
        r(&[
            "request",
            "update",
            "cache_type",
            "lmtp",
            "cache_id",
            "x",
            "session",
            "QQ==",
        ]),
        r(&["request", "lookup", "cache_type", "lmtp", "cache_id", "x"]),
        r(&["request", "delete", "cache_type", "lmtp", "cache_id", "x"]),
        r(&["request", "lookup", "cache_type", "imap", "cache_id", "x"]),
        r(&[
            "request",
            "update",
            "cache_type",
            "imap",
            "cache_id",
            "x",
            "session",
            "QQ==",
        ]),
        r(&["request", "delete", "cache_type", "imap", "cache_id", "x"]),
        r(&["request", "seed", "size", "0"]),
        r(&["request", "seed", "size", "256"]),
        r(&["request", "seed", "size", "4294967295"]),
        r(&["request", "tktkey", "keyname", "AAAA"]),
        r(&["request", "tktkey", "keyname", "EREREREREREREREREREREQ=="]),
        r(&["cache_type", "smtpd"]),
    ]
}

fn exchange(c: &mut Client, req: &[u8]) -> List {
    c.send_raw(req).unwrap();
    c.read_list().unwrap()
}

fn connect(path: &std::path::Path) -> Client {
    // Stock tlsmgr is started on demand by its first connection: allow time.
    for _ in 0..100 {
        if let Ok(c) = Client::connect(path, Duration::from_secs(10)) {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot connect to {}", path.display());
}

#[test]
fn replies_match_stock_tlsmgr() {
    if !stock::available() {
        return;
    }
    let mut stock = child::MasterChild::start(stock::STOCK_TLSMGR, &["-l", "-t", "unix", "-V"], "");
    let ours = TestDaemon::start("");
    let mut s = connect(&stock.socket);
    let mut o = ours.client();
    for req in deterministic_requests() {
        let (want, got) = (exchange(&mut s, &req), exchange(&mut o, &req));
        assert_eq!(got, want, "request {:?}", String::from_utf8_lossy(&req));
    }
    // Random payloads: same attributes, same status, same lengths.
    let seed = b"request\0seed\0size\x0032\0\0";
    let current_key = b"request\0tktkey\0keyname\0\0\0";
    for req in [&seed[..], &current_key[..]] {
        let (want, got) = (exchange(&mut s, req), exchange(&mut o, req));
        assert_eq!(want.len(), got.len());
        for ((wn, wv), (gn, gv)) in want.iter().zip(&got) {
            assert_eq!(wn, gn);
            if wn.as_ref() == b"status" {
                assert_eq!(wv, gv);
            } else {
                assert_eq!(wv.len(), gv.len(), "length of {wn:?}");
            }
        }
    }
    drop(s);
    let (status, log) = stock.close_status();
    assert!(status.success(), "stock tlsmgr exit {status:?}: {log}");
    assert!(!log.contains("fatal"), "{log}");
}
