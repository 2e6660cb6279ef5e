//! `tlsmgr cache delete` and `tlsmgr cache purge` on a shared cache, end
//! to end: two `tlsmgr serve` processes sharing one real `redis-server` as
//! two hosts of a site. The command removes the entry (or the type's
//! entries) from Redis as well as locally, so neither host reads it back;
//! the answer says how many went where; the other host, told on the
//! site's channel, removes its own copies too (a protocol delete is not
//! told); with Redis down the local part is done and the command exits
//! non-zero saying that the store was not reached.
#![allow(clippy::unwrap_used)]
use crate::common::redis_server;
use crate::common::serve;

use bytes::Bytes;
use redis_server::{write_secret, RedisServer};
use serve::ServeProcess;
use std::process::Output;
use std::time::Duration;
use tlsmgr::protocol::{Reply, Request, Status};

const BIN: &str = env!("CARGO_BIN_EXE_tlsmgr");
const SECRET: &[u8] = b"admin-shared test secret, thirty-two bytes at least";

struct Host {
    dir: tempfile::TempDir,
    daemon: ServeProcess,
}

/// A `tlsmgr serve` on `url`, site `mx`, smtpd and smtp shared.
fn host(url: &str) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("main.cf"),
        format!(
            "queue_directory = {q}\ndata_directory = {q}/data\n\
             smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
             smtp_tls_session_cache_database = btree:${{data_directory}}/smtp_scache\n\
             tlsmgr_shared_store = {url}\ntlsmgr_shared_site = mx\n\
             tlsmgr_shared_secret_file = ${{queue_directory}}/shared.key\n\
             tlsmgr_shared_caches = smtpd smtp\n\
             tlsmgr_shared_lookup_deadline = 500ms\n",
            q = d.display()
        ),
    )
    .unwrap();
    write_secret(&d.join("shared.key"), SECRET);
    let daemon = ServeProcess::start(d, ServeProcess::NO_ENV);
    Host { dir, daemon }
}

impl Host {
    fn update(&self, ct: &str, id: &str, session: &[u8]) {
        let r = self
            .daemon
            .client()
            .request(&Request::Update {
                cache_type: Bytes::copy_from_slice(ct.as_bytes()),
                cache_id: Bytes::copy_from_slice(id.as_bytes()),
                session: Bytes::copy_from_slice(session),
            })
            .unwrap();
        assert_eq!(r, Reply::Status(Status::Ok));
    }

    /// The session a lookup returns, `None` for a miss.
    fn lookup(&self, ct: &str, id: &str) -> Option<Bytes> {
        match self
            .daemon
            .client()
            .request(&Request::Lookup {
                cache_type: Bytes::copy_from_slice(ct.as_bytes()),
                cache_id: Bytes::copy_from_slice(id.as_bytes()),
            })
            .unwrap()
        {
            Reply::Lookup {
                status: Status::Ok,
                session,
            } => Some(session),
            _ => None,
        }
    }

    /// `tlsmgr ARGS[0] -c DIR ARGS[1..]`.
    fn tlsmgr(&self, args: &[&str]) -> Output {
        std::process::Command::new(BIN)
            .args(&args[..1])
            .arg("-c")
            .arg(self.dir.path())
            .args(&args[1..])
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        self.daemon.log_text()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The session keys of type `ct` in Redis.
fn keys(redis: &RedisServer, ct: &str) -> Vec<String> {
    let mut c = redis.conn();
    redis::cmd("KEYS")
        .arg(format!("tlsmgr:mx:sc:{ct}:*"))
        .query(&mut c)
        .unwrap()
}

/// Waits until Redis holds `n` session keys of `ct` (writes are queued).
fn wait_for_keys(redis: &RedisServer, ct: &str, n: usize) {
    for _ in 0..200 {
        if keys(redis, ct).len() == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("Redis never held {n} {ct} keys: {:?}", keys(redis, ct));
}

#[test]
fn cache_delete_removes_the_shared_copy() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = host(&redis.url());
    let b = host(&redis.url());
    a.update("smtpd", "leaked", b"DER-leaked");
    a.update("smtpd", "kept", b"DER-kept");
    wait_for_keys(&redis, "smtpd", 2);

    let o = a.tlsmgr(&["cache", "delete", "smtpd", "leaked"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Neither this host nor another one reads it back from Redis.
    assert_eq!(a.lookup("smtpd", "leaked"), None, "read back on this host");
    assert_eq!(b.lookup("smtpd", "leaked"), None, "served by another host");
    assert_eq!(stdout(&o), "deleted smtpd leaked: local 1, shared 1\n");
    assert_eq!(keys(&redis, "smtpd").len(), 1);
    // The other entry is untouched, here and there.
    assert_eq!(b.lookup("smtpd", "kept").as_deref(), Some(&b"DER-kept"[..]));
    assert_eq!(a.lookup("smtpd", "kept").as_deref(), Some(&b"DER-kept"[..]));

    // An id nobody holds: nothing anywhere, and still exit 0.
    let o = a.tlsmgr(&["cache", "delete", "smtpd", "never"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "deleted smtpd never: local 0, shared 0\n");
    // On the host that read it through: its local copy and Redis's.
    assert_eq!(b.lookup("smtpd", "kept").as_deref(), Some(&b"DER-kept"[..]));
    let o = b.tlsmgr(&["cache", "delete", "smtpd", "kept"]);
    assert_eq!(stdout(&o), "deleted smtpd kept: local 1, shared 1\n");
    assert_eq!(keys(&redis, "smtpd").len(), 0);
    // lmtp is not shared here and has no cache: refused as before.
    let o = a.tlsmgr(&["cache", "delete", "lmtp", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(a
        .log()
        .contains("admin: deleted smtpd leaked: local 1, shared 1"));
}

#[test]
fn cache_purge_removes_the_sites_shared_entries_of_that_type() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = host(&redis.url());
    let b = host(&redis.url());
    for i in 0..3 {
        a.update("smtpd", &format!("a-{i}"), b"DER-a");
    }
    b.update("smtpd", "b-0", b"DER-b");
    a.update("smtp", "client-0", b"DER-client");
    wait_for_keys(&redis, "smtpd", 4);
    wait_for_keys(&redis, "smtp", 1);
    wait_for_subscribers(&redis, 2);
    // More keys than one SCAN step covers, so the purge takes several
    // (their values are not sealed; only the names matter here), and keys
    // of another site and of ticket keys, which stay.
    let mut c = redis.conn();
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        pipe.cmd("SET")
            .arg(format!("tlsmgr:mx:sc:smtpd:filler{i:05}"))
            .arg("x")
            .ignore();
    }
    pipe.cmd("SET")
        .arg("tlsmgr:other:sc:smtpd:00")
        .arg("x")
        .ignore();
    let _: () = pipe.query(&mut c).unwrap();
    let tkt_before: Vec<String> = redis::cmd("KEYS")
        .arg("tlsmgr:mx:tkt:*")
        .query(&mut c)
        .unwrap();

    let o = a.tlsmgr(&["cache", "purge", "smtpd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(keys(&redis, "smtpd").len(), 0, "left in Redis");
    assert_eq!(stdout(&o), "purged smtpd: local 3, shared 2504\n");
    // Other types, other sites and ticket keys stay.
    assert_eq!(keys(&redis, "smtp").len(), 1);
    let other: Vec<String> = redis::cmd("KEYS")
        .arg("tlsmgr:other:*")
        .query(&mut c)
        .unwrap();
    assert_eq!(other.len(), 1);
    let tkt_after: Vec<String> = redis::cmd("KEYS")
        .arg("tlsmgr:mx:tkt:*")
        .query(&mut c)
        .unwrap();
    // KEYS has no order, and the table's may change as keys go.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(tkt_after), sorted(tkt_before));
    // Nothing of A's comes back, here or on B.
    for i in 0..3 {
        let id = format!("a-{i}");
        assert_eq!(a.lookup("smtpd", &id), None, "{id} read back on A");
        assert_eq!(b.lookup("smtpd", &id), None, "{id} served by B");
    }
    assert_eq!(a.lookup("smtpd", "b-0"), None, "B's entry read back on A");
    assert_eq!(
        a.lookup("smtp", "client-0").as_deref(),
        Some(&b"DER-client"[..])
    );
    // What B wrote itself, in B's own store, went too: B was told.
    assert!(within_5s(|| b
        .log()
        .contains("purged smtpd as another host did: local 1")));
    assert_eq!(b.lookup("smtpd", "b-0"), None);
    let o = b.tlsmgr(&["cache", "purge", "smtpd"]);
    assert_eq!(stdout(&o), "purged smtpd: local 0, shared 0\n");
}

#[test]
fn redis_down_the_local_part_is_done_and_the_command_fails() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = host(&redis.url());
    a.update("smtpd", "one", b"DER-one");
    a.update("smtpd", "two", b"DER-two");
    a.update("smtpd", "three", b"DER-three");
    wait_for_keys(&redis, "smtpd", 3);
    redis.kill();

    let o = a.tlsmgr(&["cache", "delete", "smtpd", "one"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with("tlsmgr cache: fatal: deleted smtpd one: local 1, shared not done: shared store redis://127.0.0.1:"),
        "{err}"
    );
    assert!(
        err.contains("other hosts may still read the entry"),
        "{err}"
    );
    assert_eq!(a.lookup("smtpd", "one"), None);

    let o = a.tlsmgr(&["cache", "purge", "smtpd"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with(
            "tlsmgr cache: fatal: purged smtpd: local 2, shared not done: shared store redis://"
        ),
        "{err}"
    );
    assert_eq!(a.lookup("smtpd", "two"), None);
    assert!(a.log().contains("warning: admin: deleted smtpd one"));
}

/// The value Redis holds under `key`.
fn get(redis: &RedisServer, key: &str) -> Vec<u8> {
    redis::cmd("GET").arg(key).query(&mut redis.conn()).unwrap()
}

fn put_back(redis: &RedisServer, key: &str, value: &[u8]) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("EX")
        .arg(3600)
        .query(&mut redis.conn())
        .unwrap();
}

#[test]
fn a_removed_session_put_back_in_redis_is_refused_by_the_host_that_removed_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = host(&redis.url());
    let b = host(&redis.url());
    // Three sessions, each removed one way, their sealed values kept.
    a.update("smtpd", "by-admin", b"DER-1");
    a.update("smtpd", "by-protocol", b"DER-2");
    a.update("smtpd", "by-purge", b"DER-3");
    wait_for_keys(&redis, "smtpd", 3);
    wait_for_subscribers(&redis, 2);
    let saved: Vec<(String, Vec<u8>)> = keys(&redis, "smtpd")
        .into_iter()
        .map(|k| {
            let v = get(&redis, &k);
            (k, v)
        })
        .collect();

    let o = a.tlsmgr(&["cache", "delete", "smtpd", "by-admin"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = a
        .daemon
        .client()
        .request(&Request::Delete {
            cache_type: Bytes::from_static(b"smtpd"),
            cache_id: Bytes::from_static(b"by-protocol"),
        })
        .unwrap();
    assert_eq!(r, Reply::Status(Status::Ok));
    wait_for_keys(&redis, "smtpd", 1);
    let o = a.tlsmgr(&["cache", "purge", "smtpd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "purged smtpd: local 1, shared 1\n");

    // Someone puts every old value back (a replay, a restored dump, a
    // failover to a replica that missed the deletes).
    for (k, v) in &saved {
        put_back(&redis, k, v);
    }
    for id in ["by-admin", "by-protocol", "by-purge"] {
        assert_eq!(a.lookup("smtpd", id), None, "{id} resurrected on A");
    }
    // B was told of the admin removals and refuses them too (the purge
    // covers every value written before it, the one Postfix deleted on A
    // included).
    for id in ["by-admin", "by-protocol", "by-purge"] {
        assert!(
            within_5s(|| b.lookup("smtpd", id).is_none()),
            "{id} resurrected on B"
        );
    }
    // A session stored after the purge is shared as usual.
    std::thread::sleep(Duration::from_millis(1100));
    b.update("smtpd", "later", b"DER-later");
    wait_for_keys(&redis, "smtpd", 4);
    assert_eq!(
        a.lookup("smtpd", "later").as_deref(),
        Some(&b"DER-later"[..])
    );
}

/// Waits until `n` hosts listen for the removals of site `mx`.
fn wait_for_subscribers(redis: &RedisServer, n: u64) {
    for _ in 0..200 {
        let (_, subscribed): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("tlsmgr:mx:inval")
            .query(&mut redis.conn())
            .unwrap();
        if subscribed == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{n} hosts never subscribed");
}

/// Polls `f` for up to 5 s.
fn within_5s(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn an_admin_removal_reaches_the_local_copies_of_other_hosts() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = host(&redis.url());
    let b = host(&redis.url());
    a.update("smtpd", "leaked", b"DER-leaked");
    a.update("smtpd", "kept", b"DER-kept");
    a.update("smtpd", "postfix-deleted", b"DER-pd");
    a.update("smtp", "client-0", b"DER-client");
    wait_for_keys(&redis, "smtpd", 3);
    wait_for_keys(&redis, "smtp", 1);
    wait_for_subscribers(&redis, 2);
    // B reads every one through, and so holds its own copies: with Redis
    // emptied it still serves them.
    for (ct, id) in [
        ("smtpd", "leaked"),
        ("smtpd", "kept"),
        ("smtpd", "postfix-deleted"),
        ("smtp", "client-0"),
    ] {
        assert!(b.lookup(ct, id).is_some(), "{id} not read through by B");
    }
    let _: () = redis::cmd("FLUSHALL").query(&mut redis.conn()).unwrap();
    assert_eq!(
        b.lookup("smtpd", "leaked").as_deref(),
        Some(&b"DER-leaked"[..])
    );

    // A protocol delete (Postfix's own failure paths) stays on A.
    let r = a
        .daemon
        .client()
        .request(&Request::Delete {
            cache_type: Bytes::from_static(b"smtpd"),
            cache_id: Bytes::from_static(b"postfix-deleted"),
        })
        .unwrap();
    assert_eq!(r, Reply::Status(Status::Ok));

    let o = a.tlsmgr(&["cache", "delete", "smtpd", "leaked"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        within_5s(|| b.lookup("smtpd", "leaked").is_none()),
        "B still serves its copy of the deleted session"
    );
    assert!(b
        .log()
        .contains("deleted smtpd leaked as another host did: local 1"));
    assert!(a
        .log()
        .contains("admin: told 1 other host(s) of the removal"));
    assert_eq!(b.lookup("smtpd", "kept").as_deref(), Some(&b"DER-kept"[..]));
    // The protocol delete was not told: B's copy still serves.
    assert_eq!(
        b.lookup("smtpd", "postfix-deleted").as_deref(),
        Some(&b"DER-pd"[..])
    );
    assert_eq!(a.lookup("smtpd", "postfix-deleted"), None);

    let o = a.tlsmgr(&["cache", "purge", "smtpd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        within_5s(|| b.lookup("smtpd", "kept").is_none()),
        "B still serves its copy after the purge"
    );
    assert_eq!(b.lookup("smtpd", "postfix-deleted"), None);
    // The other cache type is untouched, on both hosts.
    assert_eq!(
        b.lookup("smtp", "client-0").as_deref(),
        Some(&b"DER-client"[..])
    );
    assert_eq!(
        a.lookup("smtp", "client-0").as_deref(),
        Some(&b"DER-client"[..])
    );
    // A did not apply its own message a second time.
    assert!(!a.log().contains("as another host did"));
    // B counted both messages, dropped none, and never lost its
    // subscription.
    let o = b.tlsmgr(&["stats", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let shared = &stats["shared"];
    assert_eq!(shared["removals_told"], 2, "{shared}");
    assert_eq!(shared["removals_told_dropped"], 0, "{shared}");
    assert_eq!(shared["subscriber_lost"], 0, "{shared}");
}
