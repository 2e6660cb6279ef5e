//! Every request and its error paths, over a real socket (spec §1.5).
#![allow(clippy::unwrap_used)]
use crate::common;

use bytes::Bytes;
use common::*;
use tlsmgr::protocol::{Reply, Request, Status};
use tlsmgr::tickets::TICKET_KEY_LEN;

#[test]
fn update_lookup_delete_roundtrip() {
    let d = TestDaemon::start("");
    let mut c = d.client();
    let session = [0x30, 0x05, 0x02, 0x01, 0x01, 0x04, 0x00];
    assert_eq!(
        update(&mut c, "smtp", "smtp&mx.example.com:25&", &session),
        Reply::Status(Status::Ok)
    );
    assert_eq!(
        lookup(&mut c, "smtp", "smtp&mx.example.com:25&"),
        hit(&session)
    );
    // Caches are separate.
    assert_eq!(lookup(&mut c, "smtpd", "smtp&mx.example.com:25&"), miss());
    assert_eq!(
        delete(&mut c, "smtp", "smtp&mx.example.com:25&"),
        Reply::Status(Status::Ok)
    );
    assert_eq!(lookup(&mut c, "smtp", "smtp&mx.example.com:25&"), miss());
    assert_eq!(
        delete(&mut c, "smtp", "smtp&mx.example.com:25&"),
        Reply::Status(Status::Err)
    );
}

#[test]
fn odd_ids_and_sessions_roundtrip() {
    let d = TestDaemon::start("");
    let mut c = d.client();
    let long_id = "x".repeat(10_000);
    for (id, session) in [
        ("", &b"empty id"[..]),
        (long_id.as_str(), b"long id"),
        ("\x01\x7f ctl", b""),
        ("k", &[0u8; 4096][..]),
    ] {
        assert_eq!(
            update(&mut c, "smtpd", id, session),
            Reply::Status(Status::Ok)
        );
        assert_eq!(
            lookup(&mut c, "smtpd", id),
            hit(session),
            "id of {} bytes",
            id.len()
        );
    }
    // A non-UTF-8 id is stored too (stock Postfix drops it silently).
    let raw_id = Bytes::from_static(b"\xff\xfe");
    let r = c
        .request(&Request::Update {
            cache_type: b("smtpd"),
            cache_id: raw_id.clone(),
            session: b("v"),
        })
        .unwrap();
    assert_eq!(r, Reply::Status(Status::Ok));
    let r = c
        .request(&Request::Lookup {
            cache_type: b("smtpd"),
            cache_id: raw_id,
        })
        .unwrap();
    assert_eq!(r, hit(b"v"));
}

#[test]
fn entries_expire_after_the_timeout() {
    let d = TestDaemon::start("smtpd_tls_session_cache_timeout = 300s");
    let mut c = d.client();
    update(&mut c, "smtpd", "a", b"A");
    // Stale iff stored_at + timeout < now: exactly at the timeout it still hits.
    d.clock.advance(300);
    assert_eq!(lookup(&mut c, "smtpd", "a"), hit(b"A"));
    d.clock.advance(1);
    assert_eq!(lookup(&mut c, "smtpd", "a"), miss());
    // The stale entry was deleted by the lookup.
    assert_eq!(delete(&mut c, "smtpd", "a"), Reply::Status(Status::Err));
}

#[test]
fn expiry_sweep_removes_only_stale_entries() {
    let d = TestDaemon::start("smtpd_tls_session_cache_timeout = 120s");
    let mut c = d.client();
    for i in 0..300 {
        update(&mut c, "smtpd", &format!("old{i}"), b"o");
    }
    d.clock.advance(100);
    update(&mut c, "smtpd", "young", b"y");
    d.clock.advance(21); // old entries: 121 s > 120 s; young: 21 s
    let svc = d.services();
    let addr = svc
        .caches
        .load()
        .get(tlsmgr::protocol::CacheType::Smtpd)
        .unwrap()
        .addr
        .clone();
    let removed = futures::executor::block_on(addr.send(tlsmgr::actors::cache::SweepNow)).unwrap();
    assert_eq!(removed, 300);
    assert_eq!(lookup(&mut c, "smtpd", "young"), hit(b"y"));
}

#[test]
fn policy_of_each_type() {
    let d = TestDaemon::start(
        "smtpd_tls_session_cache_timeout = 30\nlmtp_tls_session_cache_timeout = 0",
    );
    let mut c = d.client();
    let policy = |c: &mut tlsmgr::client::Client, t: &str| {
        c.request(&Request::Policy { cache_type: b(t) }).unwrap()
    };
    // smtpd: database set, 30 s sanitized to 120.
    assert_eq!(
        policy(&mut c, "smtpd"),
        Reply::Policy {
            status: Status::Ok,
            cachable: true,
            timeout: 120
        }
    );
    assert_eq!(
        policy(&mut c, "smtp"),
        Reply::Policy {
            status: Status::Ok,
            cachable: true,
            timeout: 3600
        }
    );
    // lmtp: no database and timeout 0.
    assert_eq!(
        policy(&mut c, "lmtp"),
        Reply::Policy {
            status: Status::Ok,
            cachable: false,
            timeout: 0
        }
    );
    assert_eq!(
        policy(&mut c, "SMTPD"),
        Reply::Policy {
            status: Status::Fail,
            cachable: false,
            timeout: 0
        }
    );
    assert!(d
        .log
        .text()
        .contains("warning: bogus cache type \"SMTPD\" in \"policy\" request"));
}

#[test]
fn disabled_and_unknown_caches_fail() {
    let d = TestDaemon::start("");
    let mut c = d.client();
    // lmtp has no database: FAIL for every cache request.
    assert_eq!(
        lookup(&mut c, "lmtp", "x"),
        Reply::Lookup {
            status: Status::Fail,
            session: Bytes::new()
        }
    );
    assert_eq!(
        update(&mut c, "lmtp", "x", b"s"),
        Reply::Status(Status::Fail)
    );
    assert_eq!(delete(&mut c, "lmtp", "x"), Reply::Status(Status::Fail));
    assert_eq!(
        lookup(&mut c, "bogus", "x"),
        Reply::Lookup {
            status: Status::Fail,
            session: Bytes::new()
        }
    );
    assert_eq!(
        update(&mut c, "bogus", "x", b"s"),
        Reply::Status(Status::Fail)
    );
    assert_eq!(delete(&mut c, "bogus", "x"), Reply::Status(Status::Fail));
    let log = d.log.text();
    for req in ["lookup", "update", "delete"] {
        assert!(
            log.contains(&format!("bogus cache type \"bogus\" in \"{req}\" request")),
            "{log}"
        );
    }
}

#[test]
fn seed_sizes() {
    let d = TestDaemon::start("");
    let mut c = d.client();
    let mut seen = Vec::new();
    for size in [1, 32, 255] {
        match c.request(&Request::Seed { size }).unwrap() {
            Reply::Seed {
                status: Status::Ok,
                seed,
            } => {
                assert_eq!(seed.len(), size as usize);
                seen.push(seed);
            }
            other => panic!("seed {size}: {other:?}"),
        }
    }
    let again = c.request(&Request::Seed { size: 32 }).unwrap();
    assert_ne!(
        Some(&again),
        Some(&Reply::Seed {
            status: Status::Ok,
            seed: seen[1].clone()
        })
    );
    for size in [0, 256, -1] {
        assert_eq!(
            c.request(&Request::Seed { size }).unwrap(),
            Reply::Seed {
                status: Status::Fail,
                seed: Bytes::new()
            }
        );
    }
    assert!(d
        .log
        .text()
        .contains("warning: bogus seed length \"256\" in \"seed\" request"));
}

#[test]
fn tktkey_current_and_by_name() {
    let d = TestDaemon::start("");
    let mut c = d.client();
    let Reply::TktKey {
        status: Status::Ok,
        keybuf,
    } = c
        .request(&Request::TktKey {
            keyname: Bytes::new(),
        })
        .unwrap()
    else {
        panic!("no current key")
    };
    assert_eq!(keybuf.len(), TICKET_KEY_LEN);
    assert_eq!(TICKET_KEY_LEN, 88);
    let key = tlsmgr::tickets::TicketKey::from_bytes(&keybuf).unwrap();
    assert_eq!(
        key.tout as u64,
        T0 + 1799,
        "tout = now + T/2 - 1 with T = 3600"
    );
    // Same key while it encrypts; the same bytes when asked by name.
    assert_eq!(
        c.request(&Request::TktKey {
            keyname: Bytes::new()
        })
        .unwrap(),
        Reply::TktKey {
            status: Status::Ok,
            keybuf: keybuf.clone()
        }
    );
    let by_name = c
        .request(&Request::TktKey {
            keyname: Bytes::copy_from_slice(&keybuf[..16]),
        })
        .unwrap();
    assert_eq!(
        by_name,
        Reply::TktKey {
            status: Status::Ok,
            keybuf: keybuf.clone()
        }
    );
    // Rotation: after T/2 a new key encrypts, the old one still decrypts.
    d.clock.advance(1799);
    let Reply::TktKey {
        status: Status::Ok,
        keybuf: newer,
    } = c
        .request(&Request::TktKey {
            keyname: Bytes::new(),
        })
        .unwrap()
    else {
        panic!()
    };
    assert_ne!(newer[..16], keybuf[..16]);
    assert_eq!(
        c.request(&Request::TktKey {
            keyname: Bytes::copy_from_slice(&keybuf[..16])
        })
        .unwrap()
        .status(),
        Status::Ok
    );
    d.clock.advance(1800);
    // Unknown or expired names: ERR, echoing the name as stock does.
    let name = Bytes::copy_from_slice(&keybuf[..16]);
    assert_eq!(
        c.request(&Request::TktKey {
            keyname: name.clone()
        })
        .unwrap(),
        Reply::TktKey {
            status: Status::Err,
            keybuf: name
        }
    );
    // Bad name length: FAIL.
    assert_eq!(
        c.request(&Request::TktKey {
            keyname: b("short")
        })
        .unwrap(),
        Reply::TktKey {
            status: Status::Fail,
            keybuf: Bytes::new()
        }
    );
    assert!(d
        .log
        .text()
        .contains("warning: invalid session ticket key name length: 5"));
}

#[test]
fn tktkey_disabled_with_zero_smtpd_timeout() {
    let d = TestDaemon::start("smtpd_tls_session_cache_timeout = 0");
    let mut c = d.client();
    assert_eq!(
        c.request(&Request::TktKey {
            keyname: Bytes::new()
        })
        .unwrap(),
        Reply::TktKey {
            status: Status::Err,
            keybuf: Bytes::new()
        }
    );
}

/// A cache configured as Postfix 3.11 documents it,
/// `$default_cache_db_type:PATH`, is enabled and kept at `PATH`, like
/// `btree:PATH`.
#[test]
fn cache_named_with_default_cache_db_type_works() {
    let d = TestDaemon::start(
        "smtpd_tls_session_cache_database = $default_cache_db_type:${data_directory}/smtpd_scache",
    );
    let mut c = d.client();
    assert_eq!(
        c.request(&Request::Policy {
            cache_type: b("smtpd")
        })
        .unwrap(),
        Reply::Policy {
            status: Status::Ok,
            cachable: true,
            timeout: 3600
        }
    );
    let session = [0x30, 0x03, 0x02, 0x01, 0x07];
    assert_eq!(
        update(&mut c, "smtpd", "id-1", &session),
        Reply::Status(Status::Ok)
    );
    assert_eq!(lookup(&mut c, "smtpd", "id-1"), hit(&session));
    assert!(d.dir.join("data/smtpd_scache.fjall").is_dir());
}
