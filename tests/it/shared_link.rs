//! The link to the shared store against a hostile or half-working server:
//! replies over the bounds (a real `tlsmgr serve` process, its RSS sampled),
//! a connection a middlebox stops forwarding, and a Redis that answers
//! PING but refuses GET (ACL) or SET (read-only replica).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;
use crate::common::redis_server;
use crate::common::serve;

use common::*;
use redis_server::{free_port, real_now, write_secret, RedisServer};
use serve::ServeProcess;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"link-test secret: at least thirty-two bytes long";
/// The daemon's resident set must stay under this, whatever Redis sends.
const RSS_BOUND_KIB: u64 = 128 * 1024;
/// The read-through deadline the daemons run with (the default).
const DEADLINE: Duration = Duration::from_millis(20);
/// What a read-through may add to the deadline, in 99 of 100 lookups:
/// the hops between the daemon's threads and the two sockets.
const MARGIN: Duration = Duration::from_millis(5);
/// What the single slowest may add. Not the daemon: on a 2-core machine
/// running other tests (or CI's other jobs) a process now and then waits
/// that long for a core, and a read-through wakes more threads (the
/// link's, the server's) than a local hit, each a chance to wait.
const SLOWEST_MARGIN: Duration = Duration::from_millis(230);

/// What a fake server answers a GET (and ROLE) with.
#[derive(Clone, Copy)]
enum Evil {
    /// `*2000000000` then `:1` elements without end.
    HugeArray,
    /// `$9999999999999` then a body without end.
    HugeBulk,
}

/// Reads one RESP command (an array of bulk strings); `None` at EOF.
fn read_command(r: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::new();
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf).ok()?;
        buf.truncate(len);
        args.push(String::from_utf8_lossy(&buf).to_uppercase());
    }
    Some(args)
}

/// A fake Redis on loopback: +OK to everything, but GET and ROLE get
/// `evil`, sent until the peer goes. With `master`, a fake Sentinel that
/// names `127.0.0.1:master` instead.
fn fake_server(evil: Evil, master: Option<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                while let Some(cmd) = read_command(&mut r) {
                    let name = cmd.first().cloned().unwrap_or_default();
                    if let Some(m) = master {
                        let port = m.to_string();
                        let bulk = |s: &str| format!("${}\r\n{s}\r\n", s.len());
                        let masters = cmd.get(1).is_some_and(|a| a == "MASTERS");
                        let reply = if name == "SENTINEL" && masters {
                            // What redis-rs's SentinelClient asks.
                            let fields = [
                                "name",
                                "mx",
                                "ip",
                                "127.0.0.1",
                                "port",
                                &port,
                                "flags",
                                "master",
                            ];
                            let mut r = format!("*1\r\n*{}\r\n", fields.len());
                            for f in fields {
                                r.push_str(&bulk(f));
                            }
                            r
                        } else if name == "SENTINEL" {
                            format!("*2\r\n{}{}", bulk("127.0.0.1"), bulk(&port))
                        } else if name == "ROLE" {
                            format!("*2\r\n{}*1\r\n{}", bulk("sentinel"), bulk("mx"))
                        } else {
                            "+OK\r\n".to_string()
                        };
                        if w.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                        continue;
                    }
                    if name != "GET" && name != "ROLE" {
                        let reply: &[u8] = if name == "PING" {
                            b"+PONG\r\n"
                        } else {
                            b"+OK\r\n"
                        };
                        if w.write_all(reply).is_err() {
                            return;
                        }
                        continue;
                    }
                    let (head, chunk): (&[u8], Vec<u8>) = match evil {
                        Evil::HugeArray => (b"*2000000000\r\n", b":1\r\n".repeat(16384)),
                        Evil::HugeBulk => (b"$9999999999999\r\n", vec![b'x'; 65536]),
                    };
                    if w.write_all(head).is_err() {
                        return;
                    }
                    while w.write_all(&chunk).is_ok() {}
                    return;
                }
            });
        }
    });
    port
}

/// A `tlsmgr serve` process sharing through `url`, its metrics endpoint
/// on `metrics`.
fn serve(url: &str, metrics: u16) -> (tempfile::TempDir, ServeProcess) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    write_secret(&dir.join("shared.key"), SECRET);
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n\
             smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
             tlsmgr_shared_store = {url}\ntlsmgr_shared_site = mx\n\
             tlsmgr_shared_secret_file = {d}/shared.key\n\
             tlsmgr_metrics_listen = 127.0.0.1:{metrics}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let p = ServeProcess::start(dir, ServeProcess::NO_ENV);
    (tmp, p)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The 99th percentile of `times` (sorted here).
fn p99(times: &mut [Duration]) -> Duration {
    times.sort();
    times
        .get(times.len() * 99 / 100)
        .copied()
        .unwrap_or_default()
}

/// Lookups (each a read-through: nobody stored the ids) for 10 s against
/// a daemon whose store sends `evil`; RSS sampled all along. The daemon
/// is killed as soon as it is over the bound (the machine is shared).
/// Between them, lookups of a session the daemon holds itself (a local
/// hit, Redis not asked): what the machine alone adds to a reply, printed
/// beside the read-throughs' figures.
fn bounded_against(name: &str, url: &str) {
    let metrics = free_port();
    let (_tmp, daemon) = serve(url, metrics);
    let pid = daemon.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = rss_kib(pid);
                peak = peak.max(r);
                if r > RSS_BOUND_KIB {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let mut c = daemon.client();
    update(&mut c, "smtpd", "local", b"held here");
    let start = Instant::now();
    let (mut times, mut local_times) = (Vec::new(), Vec::new());
    let mut n = 0;
    let mut failed = None;
    while start.elapsed() < Duration::from_secs(10) {
        n += 1;
        let t = Instant::now();
        let got = c.request(&tlsmgr::protocol::Request::Lookup {
            cache_type: b("smtpd"),
            cache_id: b(&format!("{name}-{n}")),
        });
        times.push(t.elapsed());
        match got {
            Ok(r) if r == miss() => {}
            other => {
                failed = Some(format!("{other:?}"));
                break;
            }
        }
        let t = Instant::now();
        let got = lookup(&mut c, "smtpd", "local");
        local_times.push(t.elapsed());
        assert_eq!(got, hit(b"held here"));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let slowest = times.iter().max().copied().unwrap_or_default();
    let local_slowest = local_times.iter().max().copied().unwrap_or_default();
    let (p99, local_p99) = (p99(&mut times), p99(&mut local_times));
    eprintln!(
        "{name}: {n} read-throughs, p99 {p99:?}, slowest {slowest:?}; \
         local hits p99 {local_p99:?}, slowest {local_slowest:?}; peak RSS {peak} KiB"
    );
    // The daemon's own view: its lookups (read-throughs and local hits)
    // over deadline + 5 ms, from its latency histogram (a bucket ends at
    // 25 ms), measured from the request read to the reply written, so
    // without the time this process waits for a core.
    let (over, total) = lookups_over_25ms(metrics);
    eprintln!(
        "{name}: daemon-side, {over} of {total} lookups over {:?}",
        DEADLINE + MARGIN
    );
    let log = daemon.log_text();
    let tail: Vec<&str> = log.lines().rev().take(3).collect();
    eprintln!("{name}: log ends {tail:#?}");
    assert!(peak <= RSS_BOUND_KIB, "{name}: RSS {peak} KiB");
    assert_eq!(failed, None, "{name}: lookup {n}");
    assert_eq!(total, 2 * n as u64, "{name}: every lookup counted");
    assert!(
        over * 100 <= n as u64,
        "{name}: {over} of {n} read-throughs over {:?} in the daemon",
        DEADLINE + MARGIN
    );
    // Seen from here, the p99 is printed, not asserted: on a loaded
    // 2-core machine this process and the fake server wait for a core
    // too (at a load average of 17, read-throughs' p99 went to 36 ms
    // here while the daemon kept 1 of 406 over 25 ms). The slowest is
    // bounded, less what the machine added to a local hit.
    assert!(
        slowest <= DEADLINE + SLOWEST_MARGIN + local_slowest,
        "{name}: a lookup took {slowest:?} (local hits {local_slowest:?})"
    );
}

/// From the daemon's `/metrics`: lookups that took longer than 25 ms, and
/// all lookups.
fn lookups_over_25ms(port: u16) -> (u64, u64) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {text}")) as u64
    };
    let total = value("postfix_tlsmgr_request_duration_seconds_count{request=\"lookup\"}");
    let within =
        value("postfix_tlsmgr_request_duration_seconds_bucket{request=\"lookup\",le=\"0.025\"}");
    (total - within, total)
}

#[test]
fn a_huge_array_reply_is_refused() {
    let port = fake_server(Evil::HugeArray, None);
    bounded_against("array", &format!("redis://127.0.0.1:{port}/0"));
}

#[test]
fn an_endless_bulk_reply_is_refused() {
    let port = fake_server(Evil::HugeBulk, None);
    bounded_against("bulk", &format!("redis://127.0.0.1:{port}/0"));
}

#[test]
fn a_sentinel_naming_a_hostile_master_is_bounded_too() {
    let master = fake_server(Evil::HugeArray, None);
    let sentinel = fake_server(Evil::HugeBulk, Some(master));
    bounded_against(
        "sentinel",
        &format!("redis+sentinel://127.0.0.1:{sentinel}/mx/0"),
    );
}

/// A TCP proxy to `target` whose connections made before `freeze` is set
/// stop forwarding (without closing) once it is; later ones forward.
fn proxy(target: u16, freeze: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(client) = s else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            // Connections made while frozen are the fresh ones: they work.
            let stale = if freeze.load(Ordering::Relaxed) {
                Arc::new(AtomicBool::new(false))
            } else {
                freeze.clone()
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let stale = stale.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        let Ok(n) = from.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        if stale.load(Ordering::Relaxed) {
                            // A middlebox that lost the flow: holds it open,
                            // forwards nothing.
                            loop {
                                std::thread::sleep(Duration::from_secs(3600));
                            }
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    port
}

fn host(url: &str) -> TestDaemon {
    let cf = format!(
        "tlsmgr_shared_store = {url}\ntlsmgr_shared_site = mx\n\
         tlsmgr_shared_secret_file = ${{queue_directory}}/shared.key\n"
    );
    TestDaemon::start_at(&cf, real_now(), false, |dir| {
        write_secret(&dir.join("shared.key"), SECRET)
    })
}

#[test]
fn a_half_open_connection_is_replaced() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let freeze = Arc::new(AtomicBool::new(false));
    let port = proxy(redis.port, freeze.clone());
    let a = host(&format!("redis://127.0.0.1:{port}/0"));
    let b = host(&redis.url());
    update(&mut b.client(), "smtpd", "before", b"before");
    assert!(eventually(
        || lookup(&mut a.client(), "smtpd", "before") == hit(b"before")
    ));
    freeze.store(true, Ordering::Relaxed);
    let frozen = Instant::now();
    let mut i = 0;
    let resumed = loop {
        i += 1;
        let id = format!("after-{i}");
        update(&mut b.client(), "smtpd", &id, id.as_bytes());
        if lookup(&mut a.client(), "smtpd", &id) == hit(id.as_bytes()) && i > 1 {
            break Some(frozen.elapsed());
        }
        if frozen.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("half-open: shared hits again after {resumed:?}");
    let resumed = resumed.expect("no shared hit within 10 s");
    assert!(resumed < Duration::from_secs(3), "{resumed:?}");
}

/// Update and lookup load on `d` for `secs`; the warning lines logged.
fn warnings_under_load(d: &TestDaemon, secs: u64) -> Vec<String> {
    let mut c = d.client();
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        i += 1;
        let id = format!("load-{i}");
        // Mostly read-throughs: a write that works in between must not
        // hide a GET that keeps failing.
        if i % 10 == 0 {
            update(&mut c, "smtpd", &id, id.as_bytes());
        }
        lookup(&mut c, "smtpd", &format!("nobody-{i}"));
        std::thread::sleep(Duration::from_millis(5));
    }
    d.warnings()
}

/// How long the half-working stores run. The goal is 60 s; 20 s
/// tells as much: the breaker flapped about every 2 s (124-228 warning
/// lines a minute before the degraded state existed), and nothing else
/// that could repeat a line has a longer period (the prober: 0.5-1.5 s;
/// the subscriber's retries, up to 30 s, log info lines only at a
/// change), so 20 s shows ten flaps where one warning is due. At 60 s
/// this binary, which CI runs twice (Redis, then Debian 13's Valkey),
/// would take about 80 s instead of 41 s (measured: `cargo test --test
/// shared_link`, 2 test threads on 2 cores).
const HALF_WORKING_SECS: u64 = 20;

#[test]
fn a_redis_that_refuses_get_warns_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "tlsmgr", "on", ">pw", "~*", "+@all", "-get"])
        .query(&mut redis.conn())
        .unwrap();
    let d = host(&format!("redis://tlsmgr:pw@127.0.0.1:{}/0", redis.port));
    let w = warnings_under_load(&d, HALF_WORKING_SECS);
    eprintln!("ACL without +get: {} warnings: {w:?}", w.len());
    assert!(w.len() <= 2, "{w:?}");
    let link = d.services().shared.load_full().unwrap();
    let c = link.counters();
    assert!(c.refused.load(Ordering::Relaxed) > 0, "refusals counted");
    assert_eq!(c.degraded.load(Ordering::Relaxed), 1);
    // Given GET back: one line says so, and read-throughs work again.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "tlsmgr", "+get"])
        .query(&mut redis.conn())
        .unwrap();
    let ended = "no longer degraded";
    assert!(eventually(|| {
        lookup(&mut d.client(), "smtpd", "probe");
        d.log.text().contains(ended)
    }));
    let lines = d.log.text().lines().filter(|l| l.contains(ended)).count();
    assert_eq!(lines, 1);
    assert_eq!(d.warnings().len(), w.len());
}

#[test]
fn a_read_only_replica_warns_once() {
    let Some(master) = RedisServer::start() else {
        return;
    };
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]).unwrap();
    let d = host(&replica.url());
    let w = warnings_under_load(&d, HALF_WORKING_SECS);
    eprintln!("read-only replica: {} warnings: {w:?}", w.len());
    assert!(w.len() <= 2, "{w:?}");
    let _ = free_port();
}
