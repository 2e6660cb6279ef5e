//! The Prometheus endpoint (`tlsmgr_metrics_listen`): `/metrics` parses
//! with a Prometheus text parser and has every name and label set of the
//! issue from the start, `stats --json` agrees with it, it follows live
//! edits of main.cf (on, moved, off), and bad requests are answered, not
//! fatal.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;

use common::*;
use prometheus_parse::{Scrape, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 exchange: the status line and the body.
fn http(addr: SocketAddr, request: &[u8]) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    http(addr, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics").unwrap();
    assert_eq!(status, "HTTP/1.0 200 OK");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of `name` with exactly `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| {
            x.metric == name
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
                && x.labels.len() == labels.len()
        })
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

const CACHES: [&str; 3] = ["smtpd", "smtp", "lmtp"];
const REQUESTS: [&str; 6] = ["lookup", "update", "delete", "policy", "tktkey", "seed"];

fn start(extra: &str) -> (TestDaemon, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = TestDaemon::start_watched(&format!("tlsmgr_metrics_listen = {addr}\n{extra}"));
    assert!(
        eventually(|| get(addr, "/metrics").is_ok()),
        "{}",
        d.log.text()
    );
    (d, addr)
}

#[test]
fn every_name_and_label_set_is_there_from_the_start() {
    let (d, addr) = start("");
    let s = scrape(addr);
    for c in CACHES {
        for r in ["hit", "miss", "expired"] {
            assert_eq!(
                value(
                    &s,
                    "postfix_tlsmgr_cache_lookups_total",
                    &[("cache", c), ("result", r)]
                ),
                Some(0.0),
                "{c} {r}"
            );
        }
        for r in ["expired", "evicted"] {
            assert_eq!(
                value(
                    &s,
                    "postfix_tlsmgr_cache_removals_total",
                    &[("cache", c), ("reason", r)]
                ),
                Some(0.0)
            );
        }
        for name in [
            "postfix_tlsmgr_cache_updates_total",
            "postfix_tlsmgr_cache_deletes_total",
            "postfix_tlsmgr_cache_entries",
        ] {
            assert_eq!(value(&s, name, &[("cache", c)]), Some(0.0), "{name}");
        }
    }
    for r in REQUESTS {
        for st in ["ok", "err", "fail"] {
            assert_eq!(
                value(
                    &s,
                    "postfix_tlsmgr_requests_total",
                    &[("request", r), ("status", st)]
                ),
                Some(0.0)
            );
        }
        assert_eq!(
            value(
                &s,
                "postfix_tlsmgr_request_duration_seconds",
                &[("request", r)]
            ),
            Some(0.0),
            "histogram for {r}"
        );
    }
    for r in ["applied", "rejected"] {
        assert_eq!(
            value(&s, "postfix_tlsmgr_config_reloads_total", &[("result", r)]),
            Some(0.0)
        );
    }
    for name in [
        "postfix_tlsmgr_ticket_key_rotations_total",
        "postfix_tlsmgr_seed_bytes_total",
        "postfix_tlsmgr_connections",
    ] {
        assert_eq!(value(&s, name, &[]), Some(0.0), "{name}");
    }
    assert_eq!(
        value(
            &s,
            "postfix_tlsmgr_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(value(&s, "process_cpu_seconds_total", &[]).unwrap() > 0.0);
    assert!(value(&s, "process_max_resident_memory_bytes", &[]).unwrap() > 0.0);
    assert!(s.docs.contains_key("postfix_tlsmgr_cache_lookups_total"));
    drop(d);
}

#[test]
fn stats_json_agrees_with_metrics() {
    let (d, addr) = start("");
    let mut c = d.client();
    update(&mut c, "smtpd", "a", b"x");
    update(&mut c, "smtp", "b", b"y");
    lookup(&mut c, "smtpd", "a");
    lookup(&mut c, "smtpd", "zz");
    delete(&mut c, "smtp", "b");
    c.request(&tlsmgr::protocol::Request::Seed { size: 40 })
        .unwrap();
    let s = scrape(addr);
    let j = tlsmgr::admin::stats(&d.admin_socket).unwrap();
    let n = |v: &serde_json::Value| v.as_u64().unwrap() as f64;
    for ct in CACHES {
        let jc = &j["caches"][ct];
        for r in ["hit", "miss", "expired"] {
            assert_eq!(
                value(
                    &s,
                    "postfix_tlsmgr_cache_lookups_total",
                    &[("cache", ct), ("result", r)]
                ),
                Some(n(&jc["lookups"][r])),
                "{ct} {r}"
            );
        }
        assert_eq!(
            value(&s, "postfix_tlsmgr_cache_updates_total", &[("cache", ct)]),
            Some(n(&jc["updates"]))
        );
        assert_eq!(
            value(&s, "postfix_tlsmgr_cache_deletes_total", &[("cache", ct)]),
            Some(n(&jc["deletes"]))
        );
        assert_eq!(
            value(&s, "postfix_tlsmgr_cache_entries", &[("cache", ct)]),
            Some(n(&jc["entries"]))
        );
        assert_eq!(
            value(
                &s,
                "postfix_tlsmgr_cache_removals_total",
                &[("cache", ct), ("reason", "evicted")]
            ),
            Some(n(&jc["evicted"]))
        );
    }
    for r in REQUESTS {
        for st in ["ok", "err", "fail"] {
            assert_eq!(
                value(
                    &s,
                    "postfix_tlsmgr_requests_total",
                    &[("request", r), ("status", st)]
                ),
                Some(n(&j["requests"][r][st])),
                "{r} {st}"
            );
        }
        assert_eq!(
            value(
                &s,
                "postfix_tlsmgr_request_duration_seconds",
                &[("request", r)]
            ),
            Some(n(&j["requests"][r]["duration_seconds"]["count"])),
            "{r} histogram"
        );
    }
    assert_eq!(j["requests"]["lookup"]["duration_seconds"]["count"], 2);
    assert_eq!(
        value(&s, "postfix_tlsmgr_seed_bytes_total", &[]),
        Some(n(&j["prng"]["seed_bytes"]))
    );
    assert_eq!(
        value(&s, "postfix_tlsmgr_connections", &[]),
        Some(n(&j["connections"]["open"]))
    );
    // And both are what the client did.
    assert_eq!(j["caches"]["smtpd"]["lookups"]["hit"], 1);
    assert_eq!(j["caches"]["smtpd"]["lookups"]["miss"], 1);
    assert_eq!(j["caches"]["smtp"]["deletes"], 1);
    assert_eq!(j["prng"]["seed_bytes"], 40);
    assert_eq!(j["connections"]["open"], 1);
    // The JSON endpoint beside /metrics is the same object.
    let (status, body) = get(addr, "/stats.json").unwrap();
    assert_eq!(status, "HTTP/1.0 200 OK");
    let web: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(web["caches"], j["caches"]);
    assert_eq!(
        web["requests"]["lookup"]["ok"],
        j["requests"]["lookup"]["ok"]
    );
}

/// Replaces main.cf the way `postconf -e` does: new file, then rename.
fn save(d: &TestDaemon, extra: &str) {
    let tmp = d.dir.join("main.cf.tmp");
    std::fs::write(&tmp, d.main_cf_with(extra)).unwrap();
    std::fs::rename(&tmp, d.dir.join("main.cf")).unwrap();
}

#[test]
fn the_listener_follows_live_edits() {
    let (d, first) = start("");
    let second: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    save(&d, &format!("tlsmgr_metrics_listen = {second}"));
    assert!(
        eventually(|| get(second, "/metrics").is_ok()),
        "{}",
        d.log.text()
    );
    assert!(
        eventually(|| get(first, "/metrics").is_err()),
        "old address closed"
    );
    save(&d, "tlsmgr_metrics_listen =");
    assert!(
        eventually(|| get(second, "/metrics").is_err()),
        "{}",
        d.log.text()
    );
    // Off does not stop the daemon from serving.
    assert_eq!(
        update(&mut d.client(), "smtpd", "a", b"x"),
        tlsmgr::protocol::Reply::Status(tlsmgr::protocol::Status::Ok)
    );
    let log = d.log.text();
    assert!(
        log.contains(&format!(
            "metrics endpoint: listening on http://{second}/metrics"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("metrics endpoint: closed http://{first}/")),
        "{log}"
    );
    // An invalid address is refused like any invalid edit.
    save(&d, "tlsmgr_metrics_listen = localhost:99999");
    assert!(eventually(|| d.log.text().contains(
        "invalid tlsmgr_metrics_listen parameter value localhost:99999"
    )));
}

#[test]
fn bad_requests_get_an_answer() {
    let (d, addr) = start("");
    assert_eq!(get(addr, "/nope").unwrap().0, "HTTP/1.0 404 Not Found");
    assert_eq!(
        http(addr, b"POST /metrics HTTP/1.0\r\n\r\n").unwrap().0,
        "HTTP/1.0 405 Method Not Allowed"
    );
    assert_eq!(
        http(addr, b"garbage\r\n\r\n").unwrap().0,
        "HTTP/1.0 400 Bad Request"
    );
    let long = format!("GET /{} HTTP/1.0\r\n\r\n", "x".repeat(20_000));
    assert_eq!(
        http(addr, long.as_bytes()).unwrap().0,
        "HTTP/1.0 400 Bad Request"
    );
    // A client that sends nothing and holds on does not block others.
    let _idle = TcpStream::connect(addr).unwrap();
    assert_eq!(get(addr, "/metrics").unwrap().0, "HTTP/1.0 200 OK");
    let (status, page) = get(addr, "/").unwrap();
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(page.contains("<html"));
    drop(d);
}

/// Clients that connect, send one byte and wait cannot keep a scraper out:
/// when every place is taken, the oldest one still sending its head is
/// closed to make room. More keep arriving between scrapes.
#[test]
fn slow_clients_cannot_lock_a_scraper_out() {
    let (d, addr) = start("");
    let slow = |n: usize| -> Vec<TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                s.write_all(b"G").unwrap();
                s
            })
            .collect()
    };
    let mut held = slow(64);
    std::thread::sleep(Duration::from_millis(200));
    let mut answered = 0;
    for _ in 0..10 {
        if matches!(get(addr, "/metrics"), Ok((status, _)) if status == "HTTP/1.0 200 OK") {
            answered += 1;
        }
        held.extend(slow(8));
    }
    assert_eq!(answered, 10, "{answered} of 10 scrapes answered");
    // The oldest slow clients were closed (EOF or reset), not answered.
    let mut first = held.swap_remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(first.read(&mut buf), Ok(0) | Err(_)));
    drop(held);
    drop(d);
}

/// A scrape flood stays within the cap: 100 scrapers at once are all
/// answered or closed, and none hangs.
#[test]
fn a_scrape_flood_is_answered_or_closed_promptly() {
    let (d, addr) = start("");
    let t0 = std::time::Instant::now();
    let threads: Vec<_> = (0..100)
        .map(|_| std::thread::spawn(move || get(addr, "/metrics").map(|(s, _)| s)))
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results
        .iter()
        .filter(|r| matches!(r, Ok(s) if s == "HTTP/1.0 200 OK"))
        .count();
    assert!(ok >= 32, "only {ok} of 100 answered: {results:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(get(addr, "/metrics").unwrap().0, "HTTP/1.0 200 OK");
    drop(d);
}

/// A connection to `to` from the loopback address `from` (any 127.x.y.z
/// is ours on Linux): another peer, as far as the endpoint can tell.
fn connect_from(
    rt: &tokio::runtime::Runtime,
    from: [u8; 4],
    to: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let s = rt.block_on(socket.connect(to))?.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// 64 clients that send one byte and wait, and a thread that opens new
/// connections from another address as fast as it can (each sends one
/// byte and waits too): a scraper is answered 10 times of 10. The flood
/// only displaces its own connections, and a scraper whose request has
/// arrived is never taken for an idle client.
#[test]
fn a_connection_flood_cannot_evict_a_scraper() {
    let (d, addr) = start("");
    let held: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut open = std::collections::VecDeque::new();
            let mut made = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut s) = connect_from(&rt, [127, 0, 0, 2], addr) {
                    let _ = s.write_all(b"G");
                    open.push_back(s);
                    made += 1;
                }
                // Its own descriptors stay bounded; the daemon's eviction
                // is what closes the others.
                if open.len() > 256 {
                    open.pop_front();
                }
            }
            made
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = std::time::Instant::now();
        if matches!(get(addr, "/metrics"), Ok((status, _)) if status == "HTTP/1.0 200 OK") {
            answered += 1;
        }
        slowest = slowest.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let made = flood.join().unwrap();
    eprintln!(
        "flood: {made} connections; {answered} of 10 scrapes answered, slowest in {slowest:?}"
    );
    assert!(made > 100, "the flood made only {made} connections");
    assert_eq!(answered, 10, "{answered} of 10 scrapes answered");
    drop(held);
    drop(d);
}
