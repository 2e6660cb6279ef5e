//! The shared store failing under load (issue 13): Redis stopped
//! (SIGSTOP), killed and restarted empty, slowed (`DEBUG SLEEP`), and a
//! tarpit that accepts but never answers. In each case: zero failed
//! tlsmgr replies, every reply within a bound, one warning, and (where
//! Redis comes back) one info line and sharing again.
#![allow(clippy::unwrap_used)]
use crate::common;
use crate::common::redis_server;

use common::*;
use redis_server::{free_port, real_now, write_secret, RedisServer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tlsmgr::protocol::{Reply, Status};

const SECRET: &[u8] = b"fault-test secret: at least thirty-two bytes";
/// The bound every reply must meet, faults or not (the read-through
/// deadline is 20 ms; the rest is a loaded, shared 2-core machine).
const BOUND: Duration = Duration::from_secs(1);
const OPENED: &str = "consecutive failures";
const CLOSED: &str = "answers again -- sharing resumed";

fn host(url: &str) -> TestDaemon {
    let cf = format!(
        "tlsmgr_shared_store = {url}\ntlsmgr_shared_site = mx\n\
         tlsmgr_shared_secret_file = ${{queue_directory}}/shared.key\n"
    );
    TestDaemon::start_at(&cf, real_now(), false, |dir| {
        write_secret(&dir.join("shared.key"), SECRET)
    })
}

struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(Vec<Duration>, Vec<String>)>>,
}

/// Two clients on `d`, each looping: update, lookup of what it stored,
/// lookup of an id nobody stored (a read-through every time).
fn load(d: &TestDaemon) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..2)
        .map(|t| {
            let socket = d.socket.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c =
                    tlsmgr::client::Client::connect(&socket, Duration::from_secs(10)).unwrap();
                let mut lat = Vec::new();
                let mut failed = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let id = format!("load-{t}-{i}");
                    let steps: [(&str, Reply); 3] = [
                        ("update", Reply::Status(Status::Ok)),
                        ("lookup", hit(id.as_bytes())),
                        ("miss", miss()),
                    ];
                    for (what, want) in steps {
                        let start = Instant::now();
                        let got = match what {
                            "update" => tlsmgr_update(&mut c, &id),
                            "lookup" => common::lookup(&mut c, "smtpd", &id),
                            _ => common::lookup(&mut c, "smtpd", &format!("nobody-{t}-{i}")),
                        };
                        lat.push(start.elapsed());
                        if got != want {
                            failed.push(format!("{what} {id}: {got:?}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                (lat, failed)
            })
        })
        .collect();
    Load { stop, threads }
}

fn tlsmgr_update(c: &mut tlsmgr::client::Client, id: &str) -> Reply {
    common::update(c, "smtpd", id, id.as_bytes())
}

impl Load {
    /// Stops; returns (requests, p99, max, failures).
    fn finish(self) -> (usize, Duration, Duration, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        let mut failed = Vec::new();
        for t in self.threads {
            let (l, f) = t.join().unwrap();
            lat.extend(l);
            failed.extend(f);
        }
        lat.sort();
        let p99 = lat[lat.len() * 99 / 100];
        (lat.len(), p99, *lat.last().unwrap(), failed)
    }
}

fn count(d: &TestDaemon, needle: &str) -> usize {
    d.log.text().lines().filter(|l| l.contains(needle)).count()
}

fn shares(a: &TestDaemon, b: &TestDaemon, id: &str) -> bool {
    update(&mut a.client(), "smtpd", id, id.as_bytes());
    eventually(|| lookup(&mut b.client(), "smtpd", id) == hit(id.as_bytes()))
}

/// Runs load on A while `fault` is in force, then `heal`s; checks the
/// replies, the bound, the log lines and that sharing resumes with B.
fn under_load(
    name: &str,
    fault: impl FnOnce(&mut RedisServer),
    heal: impl FnOnce(&mut RedisServer),
) {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = host(&redis.url());
    let b = host(&redis.url());
    assert!(shares(&a, &b, "before"), "{name}: no sharing to start with");
    let running = load(&a);
    std::thread::sleep(Duration::from_millis(300));
    fault(&mut redis);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(count(&a, OPENED) >= 1, "{name}: the breaker never opened");
    heal(&mut redis);
    assert!(
        eventually(|| count(&a, CLOSED) == 1),
        "{name}: never closed"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (n, p99, max, failed) = running.finish();
    eprintln!(
        "fault {name}: {n} requests, {} failed, p99 {p99:?}, max {max:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{name}: {failed:?}");
    assert!(max < BOUND, "{name}: a reply took {max:?}");
    let w = a.warnings();
    assert_eq!(w.len(), 1, "{name}: one warning: {w:?}");
    assert!(w[0].contains(OPENED), "{name}: {w:?}");
    assert_eq!(count(&a, CLOSED), 1, "{name}");
    assert!(
        shares(&a, &b, &format!("after-{name}")),
        "{name}: sharing did not resume"
    );
    assert!(
        shares(&b, &a, &format!("back-{name}")),
        "{name}: sharing did not resume"
    );
}

#[test]
fn redis_stopped() {
    under_load("SIGSTOP", |r| r.pause(), |r| r.resume());
}

#[test]
fn redis_killed_and_restarted_empty() {
    under_load("kill", |r| r.kill(), |r| r.restart_empty());
}

#[test]
fn redis_slowed_by_debug_sleep() {
    under_load(
        "DEBUG SLEEP",
        |r| {
            let mut c = r.conn();
            std::thread::spawn(move || {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEBUG").arg("SLEEP").arg(3).query(&mut c);
            });
        },
        |_| {},
    );
}

#[test]
fn a_restarted_empty_redis_gets_the_ticket_key_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = host(&redis.url());
    let b = host(&redis.url());
    let tick = |d: &TestDaemon| {
        futures::executor::block_on(d.services().tickets.send(tlsmgr::actors::ticket::Tick))
            .unwrap()
    };
    let key = |d: &TestDaemon| match d
        .client()
        .request(&tlsmgr::protocol::Request::TktKey {
            keyname: bytes::Bytes::new(),
        })
        .unwrap()
    {
        Reply::TktKey {
            status: Status::Ok,
            keybuf,
        } => keybuf,
        other => panic!("{other:?}"),
    };
    assert!(eventually(|| {
        tick(&a);
        tick(&b);
        key(&a) == key(&b)
    }));
    let k = key(&a);
    redis.restart_empty();
    assert!(eventually(
        || count(&a, CLOSED) + count(&a, OPENED) == 0 || count(&a, CLOSED) >= count(&a, OPENED)
    ));
    // The recheck (every 10 s of the injected clock) offers the key again.
    assert!(eventually(|| {
        a.clock.advance(11);
        tick(&a);
        redis.dump().iter().any(|(n, _)| n.contains(":tkt:e:"))
    }));
    b.clock.advance(11);
    tick(&b);
    assert_eq!(key(&a), k);
    assert_eq!(key(&b), k);
}

#[test]
fn a_tarpit_that_never_answers() {
    if !redis_server::available() {
        return;
    }
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let a = host(&format!("redis://127.0.0.1:{port}/0"));
    let running = load(&a);
    std::thread::sleep(Duration::from_secs(3));
    let (n, p99, max, failed) = running.finish();
    eprintln!(
        "fault tarpit: {n} requests, {} failed, p99 {p99:?}, max {max:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(max < BOUND, "a reply took {max:?}");
    let w = a.warnings();
    assert_eq!(w.len(), 1, "one warning: {w:?}");
    assert!(w[0].contains(OPENED), "{w:?}");
    assert_eq!(count(&a, CLOSED), 0);
}

#[test]
fn a_host_restarted_while_redis_is_down_keeps_the_shared_key() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let mut a = host(&redis.url());
    let b = host(&redis.url());
    let key = |d: &TestDaemon| match d
        .client()
        .request(&tlsmgr::protocol::Request::TktKey {
            keyname: bytes::Bytes::new(),
        })
        .unwrap()
    {
        Reply::TktKey {
            status: Status::Ok,
            keybuf,
        } => keybuf,
        other => panic!("{other:?}"),
    };
    assert!(eventually(|| {
        for d in [&a, &b] {
            futures::executor::block_on(d.services().tickets.send(tlsmgr::actors::ticket::Tick))
                .unwrap();
        }
        key(&a) == key(&b)
    }));
    let shared = key(&b);
    redis.kill();
    let start = Instant::now();
    a.restart();
    // Startup does not wait for Redis, and the key from the file goes on.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(key(&a), shared);
    assert_eq!(lookup(&mut a.client(), "smtpd", "before-restart"), miss());
}

#[test]
fn a_full_write_queue_drops_and_counts_and_never_waits() {
    if !redis_server::available() {
        return;
    }
    // A tarpit: the first batch hangs until the call timeout; the queue
    // (bound 4) fills behind it.
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let secret = tlsmgr::config::secret::Secret::from_bytes("/s".into(), &[1; 32]);
    let settings = tlsmgr::shared::Settings {
        url: format!("redis://127.0.0.1:{port}/0"),
        prefix: "tlsmgr:mx".into(),
        secret: Arc::new(secret),
        caches: [true, false, false],
        lookup_deadline: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(5),
        write_queue: 4,
        ca: None,
        client_cert: None,
    };
    let log = tlsmgr::logging::MemoryLog::default();
    let link = tlsmgr::shared::Shared::start(settings, log.logger("t")).unwrap();
    let start = Instant::now();
    let mut accepted = 0;
    for i in 0..100 {
        if link.write(tlsmgr::shared::Write::Set {
            name: format!("tlsmgr:mx:sc:smtpd:{i}"),
            value: vec![1; 100],
            ttl: 60,
        }) {
            accepted += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let c = link.counters();
    let dropped = c.writes_dropped.load(Ordering::Relaxed);
    let queued = c.writes_queued.load(Ordering::Relaxed);
    eprintln!("write queue of 4 behind a tarpit: {queued} queued, {dropped} dropped");
    assert_eq!(queued, accepted);
    assert_eq!(queued + dropped, 100);
    // At most the bound plus the batch in flight.
    assert!(
        queued <= 4 + 256 && dropped >= 90,
        "{queued} queued, {dropped} dropped"
    );
}
