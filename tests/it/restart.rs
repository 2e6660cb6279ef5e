//! State across restarts: sessions and ticket keys survive until they
//! expire (stock Postfix loses both); `tlsmgr_persistent_state = no` restores
//! Postfix's empty-on-start; a store still held by an exiting process is
//! waited for.
#![allow(clippy::unwrap_used)]
use crate::common;
use crate::common::keys;

use common::*;
use keys::current_key;
use tlsmgr::protocol::{Reply, Request, Status};

#[test]
fn sessions_and_ticket_keys_survive_a_restart() {
    let mut d = TestDaemon::start("smtp_tls_session_cache_timeout = 600s");
    let mut c = d.client();
    update(&mut c, "smtpd", "server-side", b"S1");
    update(&mut c, "smtp", "client-side", b"C1");
    update(&mut c, "smtp", "short-lived", b"C2");
    let key = current_key(&mut c);
    drop(c);
    d.clock.advance(300);
    d.restart();
    let mut c = d.client();
    assert_eq!(lookup(&mut c, "smtpd", "server-side"), hit(b"S1"));
    assert_eq!(lookup(&mut c, "smtp", "client-side"), hit(b"C1"));
    // The same key still encrypts and decrypts after the restart.
    assert_eq!(current_key(&mut c), key);
    let by_name = c
        .request(&Request::TktKey {
            keyname: key.slice(..16),
        })
        .unwrap();
    assert_eq!(
        by_name,
        Reply::TktKey {
            status: Status::Ok,
            keybuf: key.clone()
        }
    );
    // Expiry still applies to what was restored.
    drop(c);
    d.clock.advance(301);
    d.restart();
    let mut c = d.client();
    assert_eq!(lookup(&mut c, "smtp", "short-lived"), miss());
    assert_eq!(lookup(&mut c, "smtpd", "server-side"), hit(b"S1"));
}

#[test]
fn persistent_state_no_empties_on_start() {
    let mut d = TestDaemon::start("tlsmgr_persistent_state = no");
    let mut c = d.client();
    update(&mut c, "smtpd", "a", b"A");
    let key = current_key(&mut c);
    drop(c);
    d.restart();
    let mut c = d.client();
    assert_eq!(lookup(&mut c, "smtpd", "a"), miss());
    assert_ne!(current_key(&mut c)[..16], key[..16]);
}

#[test]
fn a_locked_store_is_waited_for() {
    let mut d = TestDaemon::start("");
    let mut c = d.client();
    update(&mut c, "smtpd", "a", b"A");
    drop(c);
    d.stop();
    // Another process (here: another handle) holds the store, as an exiting
    // tlsmgr does during a restart handover; it lets go after 500 ms.
    let store_dir = d.dir.join("data/smtpd_scache.fjall");
    let opts = tlsmgr::store::OpenOptions {
        empty_on_start: false,
        ..Default::default()
    };
    let held = tlsmgr::store::fjall::FjallStore::open(&store_dir, opts).unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(held);
    });
    d.restart();
    let mut c = d.client();
    // The request waits for the handover instead of failing.
    assert_eq!(lookup(&mut c, "smtpd", "a"), hit(b"A"));
    releaser.join().unwrap();
}

/// Fuzz crash `ticket_key_file` aa09d668 (issue 14): a key file whose
/// current key lies more than t ahead of the clock, and whose next key more
/// than 2t. Loaded and rotated, no key may encrypt beyond what a key made
/// now could: current at most now + t, next at most now + 2t.
#[test]
fn a_key_file_from_a_fast_clock_keeps_no_key_beyond_its_lifetime() {
    let raw = std::fs::read("tests/data/fuzz/ticket_key_file-crash-aa09d668").unwrap();
    // The fuzz input: now (u64 LE), timeout (u32 LE, mapped as the target
    // maps it), then the file's bytes.
    let now = u64::from_le_bytes(raw[..8].try_into().unwrap()) % (1 << 40);
    let timeout = 120 + u32::from_le_bytes(raw[8..12].try_into().unwrap()) % 8_640_000;
    let mut ring = tlsmgr::tickets::file::from_bytes(&raw[12..]).expect("a key file");
    let mut n = 0u8;
    ring.rotate(now, timeout, &mut |b| {
        for x in b.iter_mut() {
            n = n.wrapping_add(1);
            *x = n;
        }
    });
    let t = i64::from(timeout / 2);
    let now = now as i64;
    println!("{ring:?}");
    for (slot, k, latest) in [
        ("previous", ring.previous, now + t),
        ("current", ring.current, now + t),
        ("next", ring.next, now + 2 * t),
    ] {
        if let Some(k) = k {
            assert!(
                k.tout_secs() <= latest,
                "{slot} key expires at now + {}",
                k.tout_secs() - now
            );
        }
    }
}

/// Fuzz crash `ticket_key_file` 9a4cc393 (issue 14, found by the CI fuzz
/// run): a key file with a key whose expiry is near the end of time made
/// the lifetime check overflow. Loaded and rotated, it is dropped.
#[test]
fn a_key_file_with_an_expiry_at_the_end_of_time_is_dropped() {
    let raw = std::fs::read("tests/data/fuzz/ticket_key_file-crash-9a4cc393").unwrap();
    let now = u64::from_le_bytes(raw[..8].try_into().unwrap()) % (1 << 40);
    let timeout = 120 + u32::from_le_bytes(raw[8..12].try_into().unwrap()) % 8_640_000;
    let Some(mut ring) = tlsmgr::tickets::file::from_bytes(&raw[12..]) else {
        return; // not a key file: nothing to rotate
    };
    ring.rotate(now, timeout, &mut |b| b.fill(7));
    let t = i64::from(timeout / 2);
    for k in [ring.previous, ring.current, ring.next]
        .into_iter()
        .flatten()
    {
        assert!(k.tout_secs() <= now as i64 + 2 * t);
    }
}
