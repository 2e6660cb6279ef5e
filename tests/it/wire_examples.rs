//! The byte-exact examples of spec §1.6, each as a test: the hex dumps are
//! copied from the spec, our encoder must produce them, our decoder must
//! read them back to the same typed value, and (where the reply does not
//! depend on random bytes) a running daemon must answer the request with
//! exactly the dumped reply.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;

use bytes::{Bytes, BytesMut};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tlsmgr::protocol::attr::{decode_list, Limits};
use tlsmgr::protocol::codec::ServerCodec;
use tlsmgr::protocol::{Incoming, Malformed, Reply, Request, RequestKind, Status, ANNOUNCEMENT};
use tlsmgr::tickets::{TicketKey, TICKET_KEY_LEN};
use tokio_util::codec::Decoder;

/// Bytes of a spec hex dump: the hex columns between the offset and the
/// `|ascii|` part of each line.
fn dump(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let hex_part = line.split('|').next().unwrap();
        let mut words = hex_part.split_whitespace();
        words.next(); // offset
        for w in words {
            out.push(u8::from_str_radix(w, 16).unwrap());
        }
    }
    out
}

/// NUL-separated text, as the spec writes short replies (`status\0 0\0 \0`).
fn nul(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

fn encode_request(r: &Request) -> Vec<u8> {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    buf.to_vec()
}

fn encode_reply(r: &Reply) -> Vec<u8> {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    buf.to_vec()
}

/// What the server codec reads from exactly `bytes` (all of them consumed).
fn server_reads(bytes: &[u8]) -> Incoming {
    let mut buf = BytesMut::from(bytes);
    let got = ServerCodec::default().decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    got
}

/// What a client reading `bytes` as the reply to `kind` gets.
fn client_reads(kind: RequestKind, bytes: &[u8]) -> Reply {
    let (list, used) = decode_list(bytes, &Limits::default()).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    Reply::decode(kind, &list).unwrap()
}

/// Request and reply both ways: encode → dump, dump → decode.
fn check_request(r: Request, wire: &[u8]) {
    assert_eq!(encode_request(&r), wire, "encoding of {r:?}");
    assert_eq!(server_reads(wire), Incoming::Request(r));
}

fn check_reply(kind: RequestKind, r: Reply, wire: &[u8]) {
    assert_eq!(encode_reply(&r), wire, "encoding of {r:?}");
    assert_eq!(client_reads(kind, wire), r);
}

const ANNOUNCEMENT_DUMP: &str = "
    0000  70 72 6f 74 6f 63 6f 6c 00 74 6c 73 6d 67 72 5f  |protocol.tlsmgr_|
    0010  70 72 6f 74 6f 63 6f 6c 00 00                    |protocol..|";

const SEED_REQUEST: &str = "
    0000  72 65 71 75 65 73 74 00 73 65 65 64 00 73 69 7a  |request.seed.siz|
    0010  65 00 33 32 00 00                                |e.32..|";

const SEED_REPLY: &str = "
    0000  73 74 61 74 75 73 00 30 00 73 65 65 64 00 41 41  |status.0.seed.AA|
    0010  45 43 41 77 51 46 42 67 63 49 43 51 6f 4c 44 41  |ECAwQFBgcICQoLDA|
    0020  30 4f 44 78 41 52 45 68 4d 55 46 52 59 58 47 42  |0ODxAREhMUFRYXGB|
    0030  6b 61 47 78 77 64 48 68 38 3d 00 00              |kaGxwdHh8=..|";

const POLICY_REQUEST: &str = "
    0000  72 65 71 75 65 73 74 00 70 6f 6c 69 63 79 00 63  |request.policy.c|
    0010  61 63 68 65 5f 74 79 70 65 00 73 6d 74 70 64 00  |ache_type.smtpd.|
    0020  00                                               |.|";

const POLICY_REPLY_3600: &str = "
    0000  73 74 61 74 75 73 00 30 00 63 61 63 68 61 62 6c  |status.0.cachabl|
    0010  65 00 31 00 74 69 6d 65 6f 75 74 00 33 36 30 30  |e.1.timeout.3600|
    0020  00 00                                            |..|";

const POLICY_REPLY_UNKNOWN: &str = "
    0000  73 74 61 74 75 73 00 34 32 39 34 39 36 37 32 39  |status.429496729|
    0010  34 00 63 61 63 68 61 62 6c 65 00 30 00 74 69 6d  |4.cachable.0.tim|
    0020  65 6f 75 74 00 30 00 00                          |eout.0..|";

const LOOKUP_REQUEST: &str = "
    0000  72 65 71 75 65 73 74 00 6c 6f 6f 6b 75 70 00 63  |request.lookup.c|
    0010  61 63 68 65 5f 74 79 70 65 00 73 6d 74 70 00 63  |ache_type.smtp.c|
    0020  61 63 68 65 5f 69 64 00 73 6d 74 70 26 6d 78 2e  |ache_id.smtp&mx.|
    0030  65 78 61 6d 70 6c 65 2e 63 6f 6d 3a 32 35 26 00  |example.com:25&.|
    0040  00                                               |.|";

const LOOKUP_HIT: &str = "
    0000  73 74 61 74 75 73 00 30 00 73 65 73 73 69 6f 6e  |status.0.session|
    0010  00 4d 41 55 43 41 51 45 45 41 41 3d 3d 00 00     |.MAUCAQEEAA==..|";

const LOOKUP_MISS: &str = "
    0000  73 74 61 74 75 73 00 34 32 39 34 39 36 37 32 39  |status.429496729|
    0010  35 00 73 65 73 73 69 6f 6e 00 00 00              |5.session...|";

const UPDATE_REQUEST: &str = "
    0000  72 65 71 75 65 73 74 00 75 70 64 61 74 65 00 63  |request.update.c|
    0010  61 63 68 65 5f 74 79 70 65 00 73 6d 74 70 00 63  |ache_type.smtp.c|
    0020  61 63 68 65 5f 69 64 00 6b 31 00 73 65 73 73 69  |ache_id.k1.sessi|
    0030  6f 6e 00 4d 41 55 43 41 51 45 45 41 41 3d 3d 00  |on.MAUCAQEEAA==.|
    0040  00                                               |.|";

const DELETE_REQUEST: &str = "
    0000  72 65 71 75 65 73 74 00 64 65 6c 65 74 65 00 63  |request.delete.c|
    0010  61 63 68 65 5f 74 79 70 65 00 73 6d 74 70 00 63  |ache_type.smtp.c|
    0020  61 63 68 65 5f 69 64 00 6b 31 00 00              |ache_id.k1..|";

const DELETE_NOT_FOUND: &str = "
    0000  73 74 61 74 75 73 00 34 32 39 34 39 36 37 32 39  |status.429496729|
    0010  35 00 00                                         |5..|";

const TKTKEY_CURRENT: &str = "
    0000  72 65 71 75 65 73 74 00 74 6b 74 6b 65 79 00 6b  |request.tktkey.k|
    0010  65 79 6e 61 6d 65 00 00 00                       |eyname...|";

const TKTKEY_BY_NAME: &str = "
    0000  72 65 71 75 65 73 74 00 74 6b 74 6b 65 79 00 6b  |request.tktkey.k|
    0010  65 79 6e 61 6d 65 00 45 52 45 52 45 52 45 52 45  |eyname.ERERERERE|
    0020  52 45 52 45 52 45 52 45 52 45 52 45 51 3d 3d 00  |REREREREREREQ==.|
    0030  00                                               |.|";

const TKTKEY_REPLY: &str = "
    0000  73 74 61 74 75 73 00 30 00 6b 65 79 62 75 66 00  |status.0.keybuf.|
    0010  45 52 45 52 45 52 45 52 45 52 45 52 45 52 45 52  |ERERERERERERERER|
    0020  45 52 45 52 45 53 49 69 49 69 49 69 49 69 49 69  |ERERESIiIiIiIiIi|
    0030  49 69 49 69 49 69 49 69 49 69 49 69 49 69 49 69  |IiIiIiIiIiIiIiIi|
    0040  49 69 49 69 49 69 49 69 49 69 49 69 49 69 49 69  |IiIiIiIiIiIiIiIi|
    0050  4d 7a 4d 7a 4d 7a 4d 7a 4d 7a 4d 7a 4d 7a 4d 7a  |MzMzMzMzMzMzMzMz|
    0060  4d 7a 4d 7a 4d 7a 4d 7a 4d 7a 4d 7a 4d 7a 4d 7a  |MzMzMzMzMzMzMzMz|
    0070  4d 7a 4d 7a 4d 7a 4d 7a 4d 7a 4d 48 2b 46 4e 6c  |MzMzMzMzMzMH+FNl|
    0080  41 41 41 41 41 41 3d 3d 00 00                    |AAAAAA==..|";

/// The 7-byte session of the lookup and update examples.
const SESSION: &[u8] = &[0x30, 0x05, 0x02, 0x01, 0x01, 0x04, 0x00];
const LOOKUP_ID: &str = "smtp&mx.example.com:25&";

#[test]
fn dumps_have_the_lengths_the_spec_states() {
    for (text, len) in [
        (ANNOUNCEMENT_DUMP, 26),
        (SEED_REQUEST, 22),
        (SEED_REPLY, 60),
        (POLICY_REQUEST, 33),
        (POLICY_REPLY_3600, 34),
        (POLICY_REPLY_UNKNOWN, 40),
        (LOOKUP_REQUEST, 65),
        (LOOKUP_HIT, 31),
        (LOOKUP_MISS, 28),
        (UPDATE_REQUEST, 65),
        (DELETE_REQUEST, 44),
        (DELETE_NOT_FOUND, 19),
        (TKTKEY_CURRENT, 25),
        (TKTKEY_BY_NAME, 49),
        (TKTKEY_REPLY, 138),
    ] {
        assert_eq!(dump(text).len(), len, "{text}");
    }
}

#[test]
fn announcement() {
    assert_eq!(ANNOUNCEMENT, dump(ANNOUNCEMENT_DUMP));
}

#[test]
fn seed() {
    check_request(Request::Seed { size: 32 }, &dump(SEED_REQUEST));
    let bytes: Vec<u8> = (0u8..32).collect();
    check_reply(
        RequestKind::Seed,
        Reply::Seed {
            status: Status::Ok,
            seed: Bytes::from(bytes),
        },
        &dump(SEED_REPLY),
    );
    // Bad size: FAIL and an empty seed, 25 bytes.
    let bad = nul(&["status", "4294967294", "seed", "", ""]);
    assert_eq!(bad.len(), 25);
    check_reply(RequestKind::Seed, Reply::fail_for(RequestKind::Seed), &bad);
}

#[test]
fn policy() {
    check_request(
        Request::Policy {
            cache_type: b("smtpd"),
        },
        &dump(POLICY_REQUEST),
    );
    check_reply(
        RequestKind::Policy,
        Reply::Policy {
            status: Status::Ok,
            cachable: true,
            timeout: 3600,
        },
        &dump(POLICY_REPLY_3600),
    );
    check_reply(
        RequestKind::Policy,
        Reply::fail_for(RequestKind::Policy),
        &dump(POLICY_REPLY_UNKNOWN),
    );
}

#[test]
fn lookup() {
    check_request(
        Request::Lookup {
            cache_type: b("smtp"),
            cache_id: b(LOOKUP_ID),
        },
        &dump(LOOKUP_REQUEST),
    );
    check_reply(
        RequestKind::Lookup,
        Reply::Lookup {
            status: Status::Ok,
            session: Bytes::from_static(SESSION),
        },
        &dump(LOOKUP_HIT),
    );
    check_reply(
        RequestKind::Lookup,
        Reply::Lookup {
            status: Status::Err,
            session: Bytes::new(),
        },
        &dump(LOOKUP_MISS),
    );
}

#[test]
fn update() {
    check_request(
        Request::Update {
            cache_type: b("smtp"),
            cache_id: b("k1"),
            session: Bytes::from_static(SESSION),
        },
        &dump(UPDATE_REQUEST),
    );
    let ok = nul(&["status", "0", ""]);
    assert_eq!(ok, dump("0000  73 74 61 74 75 73 00 30 00 00"));
    check_reply(RequestKind::Update, Reply::Status(Status::Ok), &ok);
}

#[test]
fn delete() {
    check_request(
        Request::Delete {
            cache_type: b("smtp"),
            cache_id: b("k1"),
        },
        &dump(DELETE_REQUEST),
    );
    check_reply(
        RequestKind::Delete,
        Reply::Status(Status::Ok),
        &nul(&["status", "0", ""]),
    );
    check_reply(
        RequestKind::Delete,
        Reply::Status(Status::Err),
        &dump(DELETE_NOT_FOUND),
    );
}

/// The key of the spec's tktkey reply.
fn spec_key() -> TicketKey {
    TicketKey {
        name: [0x11; 16],
        bits: [0x22; 32],
        hmac: [0x33; 32],
        tout: 1_700_001_799,
    }
}

#[test]
fn tktkey() {
    check_request(
        Request::TktKey {
            keyname: Bytes::new(),
        },
        &dump(TKTKEY_CURRENT),
    );
    check_request(
        Request::TktKey {
            keyname: Bytes::from_static(&[0x11; 16]),
        },
        &dump(TKTKEY_BY_NAME),
    );
    assert_eq!(TICKET_KEY_LEN, 88);
    let keybuf = Bytes::copy_from_slice(&spec_key().to_bytes());
    check_reply(
        RequestKind::TktKey,
        Reply::TktKey {
            status: Status::Ok,
            keybuf: keybuf.clone(),
        },
        &dump(TKTKEY_REPLY),
    );
    assert_eq!(TicketKey::from_bytes(&keybuf), Some(spec_key()));
    let err = nul(&["status", "4294967295", "keybuf", "", ""]);
    assert_eq!(err.len(), 27);
    check_reply(
        RequestKind::TktKey,
        Reply::TktKey {
            status: Status::Err,
            keybuf: Bytes::new(),
        },
        &err,
    );
}

#[test]
fn protocol_error_reply() {
    let wire = nul(&["status", "4294967294", ""]);
    assert_eq!(wire.len(), 19);
    assert_eq!(encode_reply(&Reply::fail_status()), wire);
    // A list whose first attribute is not `request` gets exactly that reply.
    assert!(matches!(
        server_reads(&nul(&["cache_type", "smtpd", ""])),
        Incoming::Malformed(Malformed::NoRequestName { .. })
    ));
}

#[test]
fn master_wakeup() {
    assert_eq!(server_reads(&[0x57, 0x00]), Incoming::Wakeup);
}

// ---- the same bytes against a running daemon ----

struct Raw(UnixStream);

impl Raw {
    fn connect(d: &TestDaemon) -> (Raw, Vec<u8>) {
        let s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = Raw(s);
        let hello = raw.read_list();
        (raw, hello)
    }
    /// Reads one complete list (up to and including its empty name).
    fn read_list(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            self.0.read_exact(&mut byte).unwrap();
            got.push(byte[0]);
            // Byte at a time, so nothing past the list is consumed.
            if let Ok(Some((_, used))) = decode_list(&got, &Limits::default()) {
                assert_eq!(used, got.len());
                return got;
            }
        }
    }
    fn ask(&mut self, request: &[u8]) -> Vec<u8> {
        self.0.write_all(request).unwrap();
        self.read_list()
    }
}

#[test]
fn daemon_answers_with_the_spec_bytes() {
    // Stock defaults: smtpd and smtp timeouts 3600; lmtp has no database.
    let d = TestDaemon::start("");
    let (mut c, hello) = Raw::connect(&d);
    assert_eq!(hello, dump(ANNOUNCEMENT_DUMP));

    assert_eq!(c.ask(&dump(POLICY_REQUEST)), dump(POLICY_REPLY_3600));
    let unknown = nul(&["request", "policy", "cache_type", "imap", ""]);
    assert_eq!(c.ask(&unknown), dump(POLICY_REPLY_UNKNOWN));

    assert_eq!(c.ask(&dump(LOOKUP_REQUEST)), dump(LOOKUP_MISS));
    let store = nul(&[
        "request",
        "update",
        "cache_type",
        "smtp",
        "cache_id",
        LOOKUP_ID,
        "session",
        "MAUCAQEEAA==",
        "",
    ]);
    assert_eq!(c.ask(&store), nul(&["status", "0", ""]));
    assert_eq!(c.ask(&dump(LOOKUP_REQUEST)), dump(LOOKUP_HIT));

    assert_eq!(c.ask(&dump(UPDATE_REQUEST)), nul(&["status", "0", ""]));
    assert_eq!(c.ask(&dump(DELETE_REQUEST)), nul(&["status", "0", ""]));
    assert_eq!(c.ask(&dump(DELETE_REQUEST)), dump(DELETE_NOT_FOUND));

    let bad_seed = nul(&["request", "seed", "size", "256", ""]);
    assert_eq!(
        c.ask(&bad_seed),
        nul(&["status", "4294967294", "seed", "", ""])
    );

    // Random payloads: same frame shape as the spec, same lengths.
    let seed = c.ask(&dump(SEED_REQUEST));
    assert_eq!(seed.len(), 60);
    assert!(seed.starts_with(b"status\x000\x00seed\x00"));
    let key = c.ask(&dump(TKTKEY_CURRENT));
    assert_eq!(key.len(), 138);
    assert!(key.starts_with(b"status\x000\x00keybuf\x00"));

    let no_request_name = nul(&["cache_type", "smtpd", ""]);
    assert_eq!(c.ask(&no_request_name), nul(&["status", "4294967294", ""]));

    // The wakeup gets no reply: the daemon closes the connection.
    c.0.write_all(&[0x57, 0x00]).unwrap();
    let mut rest = Vec::new();
    c.0.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}
