//! Several hosts, one TLS memory (issue 13): daemons sharing one real
//! `redis-server` find each other's sessions and ticket keys; an epoch
//! boundary leaves them on one key; another secret or site sees nothing
//! and does not crash; nothing in Redis is in clear; bad secret files are
//! refused at start and at reload, naming the file.
#![allow(clippy::unwrap_used)]
use crate::common;
use crate::common::redis_server;

use bytes::Bytes;
use common::*;
use redis_server::{real_now, write_secret, RedisServer};
use std::time::Duration;
use tlsmgr::actors::ticket::Tick;
use tlsmgr::protocol::{Reply, Request, Status};
use tlsmgr::tickets::epoch::epoch_len;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-site-secret";

fn shared_cf(url: &str, site: &str) -> String {
    format!(
        "tlsmgr_shared_store = {url}\ntlsmgr_shared_site = {site}\n\
         tlsmgr_shared_secret_file = ${{queue_directory}}/shared.key\n\
         tlsmgr_shared_caches = smtpd smtp\n\
         tlsmgr_shared_lookup_deadline = 200ms\n"
    )
}

/// A daemon on `url`, site `site`, secret `secret`, its clock at `t0`.
fn host(url: &str, site: &str, secret: &[u8], t0: u64) -> TestDaemon {
    TestDaemon::start_at(&shared_cf(url, site), t0, false, |dir| {
        write_secret(&dir.join("shared.key"), secret)
    })
}

fn tick(d: &TestDaemon) {
    futures::executor::block_on(d.services().tickets.send(Tick)).unwrap();
}

fn tktkey(d: &TestDaemon, name: &[u8]) -> Reply {
    d.client()
        .request(&Request::TktKey {
            keyname: Bytes::copy_from_slice(name),
        })
        .unwrap()
}

fn current_key(d: &TestDaemon) -> Bytes {
    match tktkey(d, b"") {
        Reply::TktKey {
            status: Status::Ok,
            keybuf,
        } => keybuf,
        other => panic!("{other:?}"),
    }
}

/// Waits until every host answers with the same current key (the first
/// cycle of each runs at start, off the request path).
fn agree(hosts: &[&TestDaemon]) -> Bytes {
    let mut key = Bytes::new();
    let ok = eventually(|| {
        for h in hosts {
            tick(h);
        }
        let keys: Vec<Bytes> = hosts.iter().map(|h| current_key(h)).collect();
        key = keys[0].clone();
        keys.iter().all(|k| *k == keys[0])
    });
    assert!(ok, "hosts never agreed on a key");
    key
}

/// The `shared` member of `tlsmgr stats --json` from `d`'s admin socket.
fn shared_stats(d: &TestDaemon) -> serde_json::Value {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_tlsmgr"))
        .args(["stats", "--json", "--socket"])
        .arg(&d.admin_socket)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["shared"].clone()
}

#[test]
fn sessions_and_ticket_keys_cross_hosts() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let t0 = real_now();
    let a = host(&redis.url(), "mx", SECRET, t0);
    let b = host(&redis.url(), "mx", SECRET, t0);
    let c = host(&redis.url(), "mx", SECRET, t0);
    // A session stored through A is found through B and C.
    assert_eq!(
        update(&mut a.client(), "smtpd", "sess-1", b"DER-one"),
        Reply::Status(Status::Ok)
    );
    assert!(eventually(
        || lookup(&mut b.client(), "smtpd", "sess-1") == hit(b"DER-one")
    ));
    assert_eq!(lookup(&mut c.client(), "smtpd", "sess-1"), hit(b"DER-one"));
    // C's counters (issue 12's stats): exactly that one read-through, a hit.
    let stats = shared_stats(&c);
    assert_eq!(stats["enabled"], true, "{stats}");
    assert_eq!(stats["lookups"]["hit"], 1, "{stats}");
    assert_eq!(stats["lookups"]["miss"], 0, "{stats}");
    assert_eq!(stats["breaker_opened"], 0, "{stats}");
    // The hit filled B's own store: found with Redis gone too (below).
    // smtp is shared in this configuration, lmtp is not.
    update(&mut b.client(), "smtp", "client-1", b"C1");
    assert!(eventually(
        || lookup(&mut a.client(), "smtp", "client-1") == hit(b"C1")
    ));
    // A delete through A reaches Redis: C, which never read it, misses.
    update(&mut a.client(), "smtpd", "sess-2", b"DER-two");
    assert!(eventually(
        || lookup(&mut c.client(), "smtpd", "sess-2") == hit(b"DER-two")
    ));
    update(&mut a.client(), "smtpd", "sess-3", b"DER-three");
    std::thread::sleep(Duration::from_millis(300));
    delete(&mut a.client(), "smtpd", "sess-3");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lookup(&mut c.client(), "smtpd", "sess-3"), miss());

    // Every host encrypts with one key.
    let key = agree(&[&a, &b, &c]);
    // A key made on A, unknown to B, is returned by name on B: remove the
    // epoch key from Redis so that a new host D wins with its own, then
    // ask the others for D's key by name.
    let mut conn = redis.conn();
    let epochs: Vec<String> = redis::cmd("KEYS")
        .arg("tlsmgr:mx:tkt:e:*")
        .query(&mut conn)
        .unwrap();
    assert!(!epochs.is_empty());
    let _: () = redis::cmd("DEL").arg(&epochs).query(&mut conn).unwrap();
    let d = host(&redis.url(), "mx", SECRET, t0);
    assert!(eventually(|| {
        tick(&d);
        let k = current_key(&d);
        k != key
            && redis
                .dump()
                .iter()
                .any(|(n, _)| n.contains(&hex::encode(&k[..16])))
    }));
    let d_key = current_key(&d);
    assert_ne!(d_key, key);
    for h in [&a, &b] {
        assert_eq!(
            tktkey(h, &d_key[..16]),
            Reply::TktKey {
                status: Status::Ok,
                keybuf: d_key.clone()
            },
            "by name"
        );
    }
    // A name nobody made is still ERR with the name echoed.
    assert_eq!(
        tktkey(&a, &[0x5a; 16]),
        Reply::TktKey {
            status: Status::Err,
            keybuf: Bytes::from_static(&[0x5a; 16])
        }
    );
    // With Redis gone, what each host holds still answers, with no error.
    drop(redis);
    assert_eq!(lookup(&mut b.client(), "smtpd", "sess-1"), hit(b"DER-one"));
    assert_eq!(
        tktkey(&b, &d_key[..16]),
        Reply::TktKey {
            status: Status::Ok,
            keybuf: d_key.clone()
        }
    );
    assert_eq!(lookup(&mut b.client(), "smtpd", "never-stored"), miss());
    for h in [&a, &b, &c, &d] {
        assert!(!h.log.text().contains("panic"));
    }
}

#[test]
fn an_epoch_boundary_leaves_every_host_on_the_same_key() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let e = epoch_len(3600);
    // Mid-epoch, real time (TIME agrees).
    let n = real_now() / e;
    let t0 = n * e + e / 4;
    let hosts: Vec<TestDaemon> = (0..3)
        .map(|_| host(&redis.url(), "mx", SECRET, t0))
        .collect();
    let refs: Vec<&TestDaemon> = hosts.iter().collect();
    let first = agree(&refs);
    // The last second of the epoch: every host fetched the next key.
    for h in &hosts {
        h.clock.set((n + 1) * e - 1);
        tick(h);
    }
    // The boundary: the next key encrypts on every host, from its snapshot.
    for h in &hosts {
        h.clock.set((n + 1) * e);
    }
    let keys: Vec<Bytes> = hosts.iter().map(current_key).collect();
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "same key right at the boundary"
    );
    assert_ne!(keys[0], first);
    let tout = i64::from_ne_bytes(keys[0][80..88].try_into().unwrap());
    assert_eq!(tout as u64, (n + 2) * e);
    // The old key still decrypts everywhere.
    for h in &hosts {
        tick(h);
        assert_eq!(
            tktkey(h, &first[..16]),
            Reply::TktKey {
                status: Status::Ok,
                keybuf: first.clone()
            }
        );
    }
    // Several epochs later, still one key.
    for h in &hosts {
        h.clock.set((n + 5) * e + 7);
    }
    agree(&refs);
    // The test clocks stand minutes off Redis's TIME: each host says so
    // once (checked at start), and warns about nothing else.
    for h in &hosts {
        let w = h.warnings();
        let skew = w
            .iter()
            .filter(|l| l.contains("clock is") && l.contains("the store's"))
            .count();
        assert!(skew <= 1 && w.len() == skew, "{w:?}");
        // (Near the 5 s threshold either answer is right.)
        let off = real_now().abs_diff(t0);
        if !(3..=8).contains(&off) {
            assert_eq!(skew, usize::from(off > 5), "{w:?}");
        }
    }
}

#[test]
fn another_secret_or_site_sees_nothing_and_nothing_is_in_clear() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let t0 = real_now();
    let a = host(&redis.url(), "mx", SECRET, t0);
    let other_secret = host(
        &redis.url(),
        "mx",
        b"another secret, 32 bytes or more!!",
        t0,
    );
    let other_site = host(&redis.url(), "elsewhere", SECRET, t0);
    let session = b"SESSION-BYTES-IN-CLEAR-WOULD-SHOW";
    update(&mut a.client(), "smtpd", "peer.example.org:25", session);
    let key = current_key(&a);
    assert!(eventually(|| redis
        .dump()
        .iter()
        .any(|(n, _)| n.contains(":sc:smtpd:"))));
    std::thread::sleep(Duration::from_millis(300));
    for h in [&other_secret, &other_site] {
        assert_eq!(
            lookup(&mut h.client(), "smtpd", "peer.example.org:25"),
            miss()
        );
        assert_eq!(
            tktkey(h, &key[..16]),
            Reply::TktKey {
                status: Status::Err,
                keybuf: key.slice(..16)
            }
        );
        tick(h);
        assert_ne!(current_key(h), key);
    }
    // The other secret on the same site found A's epoch key, could not open
    // it, and said so once; it keeps a key of its own.
    for _ in 0..3 {
        tick(&other_secret);
    }
    let w = other_secret.warnings();
    assert_eq!(
        w.iter()
            .filter(|l| l.contains("does not open with this host's secret"))
            .count(),
        1,
        "{w:?}"
    );
    // Scan Redis: names and values hide ids, sessions and keys.
    let dump = redis.dump();
    assert!(dump.len() >= 4, "{dump:?}");
    let needles: Vec<&[u8]> = vec![
        session,
        b"peer.example.org",
        &key[..16],
        &key[16..48],
        &key[48..80],
    ];
    for (name, value) in &dump {
        assert!(
            name.starts_with("tlsmgr:mx:") || name.starts_with("tlsmgr:elsewhere:"),
            "{name}"
        );
        for needle in &needles {
            assert!(!contains(name.as_bytes(), needle), "{name}");
            assert!(!contains(value, needle), "clear bytes under {name}");
        }
        // Every value is sealed (version byte, nonce, tag).
        assert_eq!(value[0], 1, "{name}");
        assert!(value.len() > 41, "{name}");
    }
    // Planted and corrupted values are misses, never a crash or a key.
    let mut conn = redis.conn();
    for (name, value) in &dump {
        let mut bad = value.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let _: () = redis::cmd("SET")
            .arg(name)
            .arg(bad)
            .query(&mut conn)
            .unwrap();
    }
    let b = host(&redis.url(), "mx", SECRET, t0);
    assert_eq!(
        lookup(&mut b.client(), "smtpd", "peer.example.org:25"),
        miss()
    );
    assert_eq!(
        tktkey(&b, &key[..16]),
        Reply::TktKey {
            status: Status::Err,
            keybuf: key.slice(..16)
        }
    );
    tick(&b);
    assert_ne!(current_key(&b), key);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_bad_secret_file_is_refused_at_start_and_at_reload() {
    use std::os::unix::fs::PermissionsExt;
    // No Redis needed: the file is checked before anything connects.
    let url = "redis://127.0.0.1:1/0";
    for (what, bytes, mode, expect) in [
        ("short", &b"too short"[..], 0o600, "holds 9 bytes"),
        (
            "world-readable",
            SECRET,
            0o644,
            "readable by group or others",
        ),
        ("missing", SECRET, 0, "cannot read shared secret file"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let key = dir.join("shared.key");
        if mode != 0 {
            std::fs::write(&key, bytes).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::write(dir.join("main.cf"), main_cf(dir, &shared_cf(url, "mx"))).unwrap();
        let cfg = tlsmgr::config::Config::load(dir, &[]).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.join("s")).unwrap();
        let err = tlsmgr::daemon::spawn(tlsmgr::daemon::Options {
            config: cfg,
            listener,
            clock: tlsmgr::clock::system(),
            log: tlsmgr::logging::MemoryLog::default().logger("t"),
            fault_injection: None,
            watch: None,
            admin: None,
            prng_preopened: None,
        })
        .err()
        .unwrap_or_else(|| panic!("{what}: started"));
        let text = err.to_string();
        assert!(
            text.contains(expect) && text.contains(&key.display().to_string()),
            "{what}: {text}"
        );
    }
    // At reload: a warning naming the file; the running configuration stays.
    let d = TestDaemon::start_watched("");
    write_secret(&d.dir.join("shared.key"), b"short");
    std::fs::write(d.dir.join("main.cf"), d.main_cf_with(&shared_cf(url, "mx"))).unwrap();
    let key = d.dir.join("shared.key").display().to_string();
    assert!(eventually(|| d
        .log
        .text()
        .contains("keeping the current configuration")));
    let text = d.log.text();
    let line = text
        .lines()
        .find(|l| l.contains("keeping the current configuration"))
        .unwrap();
    assert!(
        line.contains("warning:") && line.contains(&key) && line.contains("holds 5 bytes"),
        "{line}"
    );
    assert!(!d.services().config.load().shared.enabled());
    assert!(d.services().shared.load().is_none());
}

#[test]
fn an_acl_user_limited_to_the_prefix_is_enough() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // The README's ACL line, for site "mx".
    let mut conn = redis.conn();
    let acl: Vec<&str> = "SETUSER tlsmgr on >pw-not-in-logs resetkeys ~tlsmgr:mx:* resetchannels &tlsmgr:mx:inval -@all +get +set +del +unlink +scan +ping +time +subscribe +publish"
        .split(' ')
        .collect();
    let _: () = redis::cmd("ACL").arg(&acl).query(&mut conn).unwrap();
    let url = format!("redis://tlsmgr:pw-not-in-logs@127.0.0.1:{}/0", redis.port);
    let t0 = real_now();
    let a = host(&url, "mx", SECRET, t0);
    let b = host(&url, "mx", SECRET, t0);
    update(&mut a.client(), "smtpd", "acl-1", b"S");
    assert!(eventually(
        || lookup(&mut b.client(), "smtpd", "acl-1") == hit(b"S")
    ));
    // Both listen for the removals of the other hosts.
    assert!(eventually(|| {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("tlsmgr:mx:inval")
            .query(&mut redis.conn())
            .unwrap();
        n == 2
    }));
    let key = agree(&[&a, &b]);
    assert_eq!(
        tktkey(&b, &key[..16]),
        Reply::TktKey {
            status: Status::Ok,
            keybuf: key.clone()
        }
    );
    for h in [&a, &b] {
        let text = h.log.text();
        assert!(!text.contains("pw-not-in-logs"), "password logged: {text}");
        assert!(text.contains("redis://tlsmgr:***@127.0.0.1"), "{text}");
        assert!(h.warnings().is_empty(), "{:?}", h.warnings());
    }
    // Outside the prefix: refused by Redis.
    let mut limited = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    assert!(redis::cmd("SET")
        .arg("other:key")
        .arg("x")
        .query::<()>(&mut limited)
        .is_err());
}

#[test]
fn sharing_is_turned_on_moved_and_off_by_a_main_cf_edit() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let t0 = real_now();
    let a = host(&redis.url(), "mx", SECRET, t0);
    // B starts without sharing, and watches its main.cf.
    let b = TestDaemon::start_at("", t0, true, |dir| {
        write_secret(&dir.join("shared.key"), SECRET)
    });
    update(&mut a.client(), "smtpd", "r-1", b"R1");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lookup(&mut b.client(), "smtpd", "r-1"), miss());
    // On.
    std::fs::write(
        b.dir.join("main.cf"),
        b.main_cf_with(&shared_cf(&redis.url(), "mx")),
    )
    .unwrap();
    assert!(eventually(
        || lookup(&mut b.client(), "smtpd", "r-1") == hit(b"R1")
    ));
    let reload = reload_lines(&b).join("\n");
    assert!(
        reload.contains("tlsmgr_shared_store  -> redis://127.0.0.1"),
        "{reload}"
    );
    // The ticket key follows: B adopts the site's.
    let key = agree(&[&a, &b]);
    // Another site: A's state is out of reach.
    std::fs::write(
        b.dir.join("main.cf"),
        b.main_cf_with(&shared_cf(&redis.url(), "other")),
    )
    .unwrap();
    assert!(eventually(|| reload_lines(&b).len() == 2));
    update(&mut a.client(), "smtpd", "r-2", b"R2");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lookup(&mut b.client(), "smtpd", "r-2"), miss());
    tick(&b);
    assert_ne!(current_key(&b), key);
    // The key B used under site mx still decrypts.
    assert_eq!(
        tktkey(&b, &key[..16]),
        Reply::TktKey {
            status: Status::Ok,
            keybuf: key.clone()
        }
    );
    // Off: no more Redis traffic from B.
    std::fs::write(b.dir.join("main.cf"), b.main_cf_with("")).unwrap();
    assert!(eventually(|| reload_lines(&b).len() == 3));
    assert!(b.services().shared.load().is_none());
    let before = redis.dump().len();
    update(&mut b.client(), "smtpd", "r-3", b"R3");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(redis.dump().len(), before, "no write from B once off");
    assert_eq!(lookup(&mut a.client(), "smtpd", "r-3"), miss());
    assert!(b.warnings().is_empty(), "{:?}", b.warnings());
}

/// `GET`s Redis has served (`INFO commandstats`).
fn redis_gets(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|v| v.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn a_ticket_key_name_the_store_lacks_is_asked_for_once_per_period() {
    use tlsmgr::shared::unknown_names::FORGET_AFTER;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = host(&redis.url(), "mx", SECRET, real_now());
    let _ = agree(&[&a]);
    let err = |name: [u8; 16]| Reply::TktKey {
        status: Status::Err,
        keybuf: Bytes::copy_from_slice(&name),
    };
    // Many clients bringing tickets under one unknown name (a key retired
    // long ago, another site's): one GET, then none for FORGET_AFTER.
    let gets0 = redis_gets(&redis);
    for _ in 0..50 {
        assert_eq!(tktkey(&a, &[0x5a; 16]), err([0x5a; 16]));
    }
    assert_eq!(redis_gets(&redis) - gets0, 1, "one lookup for 50 asks");
    // Another name is its own lookup.
    assert_eq!(tktkey(&a, &[0x6b; 16]), err([0x6b; 16]));
    assert_eq!(redis_gets(&redis) - gets0, 2);
    assert_eq!(shared_stats(&a)["lookups"]["known_missing"], 49);
    // A second before the period ends it is still known; then it is asked
    // for again (a key published meanwhile would be found).
    a.clock.advance(FORGET_AFTER - 1);
    assert_eq!(tktkey(&a, &[0x5a; 16]), err([0x5a; 16]));
    assert_eq!(redis_gets(&redis) - gets0, 2);
    a.clock.advance(1);
    assert_eq!(tktkey(&a, &[0x5a; 16]), err([0x5a; 16]));
    assert_eq!(redis_gets(&redis) - gets0, 3);
    assert!(a.warnings().is_empty(), "{:?}", a.warnings());
}
