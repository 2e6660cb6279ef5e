//! `tlsmgr stats` against a running daemon: the counters are exactly what
//! a test client did, an invalid main.cf edit moves `rejected` by one, and
//! the periodic `statistics:` summary logs the interval's figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;

use common::*;
use serde_json::Value;
use std::process::Command;
use tlsmgr::protocol::{Reply, Request, Status};

const BIN: &str = env!("CARGO_BIN_EXE_tlsmgr");

/// A daemon whose main.cf puts the admin socket where the harness binds
/// it, so that `tlsmgr stats -c DIR` finds it from main.cf alone.
fn start(extra: &str, watched: bool) -> TestDaemon {
    let extra = format!("tlsmgr_admin_socket = ${{config_directory}}/tlsmgr.admin\n{extra}");
    if watched {
        TestDaemon::start_watched(&extra)
    } else {
        TestDaemon::start(&extra)
    }
}

fn stats_json(d: &TestDaemon) -> Value {
    let o = Command::new(BIN)
        .args(["stats", "--json", "-c"])
        .arg(&d.dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn stats_table(d: &TestDaemon) -> String {
    let o = Command::new(BIN)
        .args(["stats", "-c"])
        .arg(&d.dir)
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

fn tktkey(c: &mut tlsmgr::client::Client, name: &[u8]) -> Reply {
    c.request(&Request::TktKey {
        keyname: bytes::Bytes::copy_from_slice(name),
    })
    .unwrap()
}

#[test]
fn counters_equal_what_the_client_did() {
    let d = start("", false);
    assert_eq!(
        d.config().admin_socket.as_deref(),
        Some(d.admin_socket.as_path())
    );
    let fresh = stats_json(&d);
    assert_eq!(fresh["version"], env!("CARGO_PKG_VERSION"));
    for ct in ["smtpd", "smtp", "lmtp"] {
        assert_eq!(fresh["caches"][ct]["lookups"]["hit"], 0);
        assert_eq!(fresh["caches"][ct]["updates"], 0);
    }
    let mut c = d.client();
    // smtpd: 3 writes (one replaces), 2 hits, 2 misses, 1 expired, 1 delete
    // that found its entry and 1 that did not.
    for (id, s) in [("a", "1"), ("b", "2"), ("a", "3")] {
        assert_eq!(
            update(&mut c, "smtpd", id, s.as_bytes()),
            Reply::Status(Status::Ok)
        );
    }
    assert_eq!(lookup(&mut c, "smtpd", "a"), hit(b"3"));
    assert_eq!(lookup(&mut c, "smtpd", "b"), hit(b"2"));
    assert_eq!(lookup(&mut c, "smtpd", "x"), miss());
    assert_eq!(lookup(&mut c, "smtpd", "y"), miss());
    assert_eq!(delete(&mut c, "smtpd", "b"), Reply::Status(Status::Ok));
    assert_eq!(delete(&mut c, "smtpd", "b"), Reply::Status(Status::Err));
    d.clock.advance(3601);
    assert_eq!(lookup(&mut c, "smtpd", "a"), miss(), "stale now");
    // smtp: one write, one hit. lmtp is disabled: FAIL, counted as a
    // request only.
    assert_eq!(update(&mut c, "smtp", "s", b"v"), Reply::Status(Status::Ok));
    assert_eq!(lookup(&mut c, "smtp", "s"), hit(b"v"));
    assert_eq!(
        lookup(&mut c, "lmtp", "s"),
        Reply::Lookup {
            status: Status::Fail,
            session: bytes::Bytes::new()
        }
    );
    // Ticket keys: one issued, found by name once, one unknown name.
    let key = match tktkey(&mut c, b"") {
        Reply::TktKey {
            status: Status::Ok,
            keybuf,
        } => keybuf,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        tktkey(&mut c, &key[..16]),
        Reply::TktKey {
            status: Status::Ok,
            ..
        }
    ));
    assert!(matches!(
        tktkey(&mut c, &[7u8; 16]),
        Reply::TktKey {
            status: Status::Err,
            ..
        }
    ));
    // Seeds: 16 + 1 bytes served, one bad length.
    for size in [16, 1, 300] {
        c.request(&Request::Seed { size }).unwrap();
    }
    let mut second = d.client();
    c.request(&Request::Policy {
        cache_type: b("smtp"),
    })
    .unwrap();
    second
        .request(&Request::Policy {
            cache_type: b("imap"),
        })
        .unwrap();

    let s = stats_json(&d);
    let smtpd = &s["caches"]["smtpd"];
    assert_eq!(smtpd["enabled"], true);
    assert_eq!(smtpd["lookups"]["hit"], 2, "{s}");
    assert_eq!(smtpd["lookups"]["miss"], 2);
    assert_eq!(smtpd["lookups"]["expired"], 1);
    assert_eq!(smtpd["updates"], 3);
    assert_eq!(smtpd["deletes"], 1);
    assert_eq!(smtpd["expired"], 1);
    assert_eq!(smtpd["evicted"], 0);
    assert_eq!(smtpd["entries"], 0, "a was expired, b deleted");
    let smtp = &s["caches"]["smtp"];
    assert_eq!(
        (
            smtp["lookups"]["hit"].as_u64(),
            smtp["updates"].as_u64(),
            smtp["entries"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(s["caches"]["lmtp"]["enabled"], false);
    assert_eq!(s["caches"]["lmtp"]["lookups"]["miss"], 0);
    let req = |name: &str, status: &str| s["requests"][name][status].as_u64().unwrap();
    assert_eq!(
        (
            req("update", "ok"),
            req("update", "err"),
            req("update", "fail")
        ),
        (4, 0, 0)
    );
    // 5 smtpd lookups (2 OK, 3 ERR), 1 smtp OK, 1 lmtp FAIL.
    assert_eq!(
        (
            req("lookup", "ok"),
            req("lookup", "err"),
            req("lookup", "fail")
        ),
        (3, 3, 1)
    );
    assert_eq!((req("delete", "ok"), req("delete", "err")), (1, 1));
    assert_eq!((req("tktkey", "ok"), req("tktkey", "err")), (2, 1));
    assert_eq!((req("seed", "ok"), req("seed", "fail")), (2, 1));
    assert_eq!((req("policy", "ok"), req("policy", "fail")), (1, 1));
    assert_eq!(s["requests"]["lookup"]["duration_seconds"]["count"], 7);
    assert_eq!(s["tickets"]["issued"], 1);
    assert_eq!(s["tickets"]["lookups"]["found"], 1);
    assert_eq!(s["tickets"]["lookups"]["unknown"], 1);
    // The clock stepped past the whole ring (3601 s with T/2 = 1800): the
    // first tktkey found no encrypting key and had the actor rotate, once,
    // before its reply.
    assert_eq!(s["tickets"]["rotations"], 1);
    assert_eq!(s["prng"]["seed_requests"], 2);
    assert_eq!(s["prng"]["seed_bytes"], 17);
    assert_eq!(s["reloads"]["applied"], 0);
    assert_eq!(s["reloads"]["rejected"], 0);
    assert_eq!(s["connections"]["open"], 2);
    assert_eq!(s["connections"]["total"], 2);
    drop((c, second));
    assert!(eventually(|| stats_json(&d)["connections"]["open"] == 0));

    // The table: a line per cache with the same figures.
    let table = stats_table(&d);
    let row = |ct: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(ct))
            .unwrap_or_else(|| panic!("no {ct} row in\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // cache entries lookups hit% hits misses expired updates deletes evicted
    assert_eq!(
        row("smtpd"),
        ["smtpd", "0", "5", "40.0", "2", "2", "1", "3", "1", "0"]
    );
    assert_eq!(
        row("smtp"),
        ["smtp", "1", "1", "100.0", "1", "0", "0", "1", "0", "0"]
    );
    assert_eq!(row("lmtp")[1], "off");
    assert!(
        table.contains("ticket keys: issued 1, lookups found 1, unknown 1, rotations 1"),
        "{table}"
    );
    assert!(
        table.contains("reloads: none yet; applied 0, rejected 0"),
        "{table}"
    );
    assert!(table.contains("connections: open 0, accepted 2"), "{table}");
}

/// Replaces main.cf the way `postconf -e` does: new file, then rename.
fn save(d: &TestDaemon, extra: &str) {
    let tmp = d.dir.join("main.cf.tmp");
    let extra = format!("tlsmgr_admin_socket = ${{config_directory}}/tlsmgr.admin\n{extra}");
    std::fs::write(&tmp, d.main_cf_with(&extra)).unwrap();
    std::fs::rename(&tmp, d.dir.join("main.cf")).unwrap();
}

#[test]
fn an_invalid_edit_moves_rejected_by_exactly_one() {
    let d = start("", true);
    let before = stats_json(&d);
    assert_eq!(before["reloads"]["rejected"], 0);
    assert_eq!(before["reloads"]["last"], Value::Null);
    save(&d, "smtpd_tls_session_cache_timeout = 1y");
    assert!(
        eventually(|| d.log.text().contains("keeping the current configuration")),
        "{}",
        d.log.text()
    );
    let after = stats_json(&d);
    assert_eq!(after["reloads"]["rejected"], 1, "{}", d.log.text());
    assert_eq!(after["reloads"]["applied"], 0);
    assert_eq!(after["reloads"]["last"]["result"], "rejected");
    // A valid edit: applied moves, rejected stays.
    save(&d, "smtpd_tls_session_cache_timeout = 900");
    assert!(
        eventually(|| stats_json(&d)["reloads"]["applied"] == 1),
        "{}",
        d.log.text()
    );
    let last = stats_json(&d);
    assert_eq!(last["reloads"]["rejected"], 1);
    assert_eq!(last["reloads"]["last"]["result"], "applied");
    assert!(stats_table(&d).contains("reloads: last applied "));
}

#[test]
fn the_periodic_summary_logs_the_interval() {
    let d = start("tlsmgr_stats_log_interval = 60s", false);
    let mut c = d.client();
    update(&mut c, "smtpd", "a", b"s");
    for id in ["a", "a", "a", "nope"] {
        lookup(&mut c, "smtpd", id);
    }
    let summary = "]: statistics: smtpd TLS cache lookup hits=3 miss=1 success=75%";
    // Not before the interval is over (the task looks every second).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(!d.log.text().contains("statistics:"), "{}", d.log.text());
    d.clock.advance(60);
    assert!(
        eventually(|| d.log.text().contains(summary)),
        "{}",
        d.log.text()
    );
    let text = d.log.text();
    assert!(text.contains("]: statistics: start interval "), "{text}");
    assert!(
        text.contains(
            "]: statistics: smtpd TLS cache updates=1 deletes=0 expired=0 evicted=0 entries=1"
        ),
        "{text}"
    );
    // The next interval starts from there: idle, so nothing is logged.
    d.clock.advance(60);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(
        d.log.text().matches("statistics: start interval").count(),
        1,
        "{}",
        d.log.text()
    );
}

#[test]
fn no_summary_by_default() {
    let d = start("", false);
    let mut c = d.client();
    lookup(&mut c, "smtpd", "x");
    d.clock.advance(100_000);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(!d.log.text().contains("statistics:"), "{}", d.log.text());
}

#[test]
fn watch_prints_rates_per_second() {
    let d = start("", false);
    let mut child = Command::new(BIN)
        .args(["stats", "--watch", "1", "-c"])
        .arg(&d.dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = d.client();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(2600);
    while std::time::Instant::now() < until {
        lookup(&mut c, "smtpd", "x");
    }
    child.kill().unwrap();
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let tables: Vec<&str> = out.split("\n\n").filter(|t| t.contains("cache")).collect();
    assert!(tables.len() >= 2, "{out}");
    // The first table counts, the next ones are rates.
    assert!(!tables[0].contains("(per second)"));
    let rates = tables[1];
    assert!(rates.contains("(per second)"), "{out}");
    let smtpd: Vec<&str> = rates
        .lines()
        .find(|l| l.starts_with("smtpd "))
        .unwrap()
        .split_whitespace()
        .collect();
    let per_sec: f64 = smtpd[2].parse().unwrap();
    assert!(per_sec > 10.0, "{rates}");
    assert_eq!(smtpd[3], "0.0", "all misses: hit ratio 0");
}
