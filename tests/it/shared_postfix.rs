//! End to end with two real Postfix instances on one Redis: an
//! MX farm of two, A on 127.0.0.1 and B on 127.0.0.2, with the same
//! master.cf service name (`PORT inet ... smtpd`: smtpd's cache id embeds
//! the service name), each with our tlsmgr (chrooted, unprivileged, as
//! master.cf says), sharing through Redis. `openssl s_client -starttls smtp
//! -sess_out` against A, then `-sess_in` against B, prints `Reused` for TLS
//! 1.2 tickets, TLS 1.3 tickets and, with `-no_ticket`, the session cache.
//! Controls: with Redis killed, A→A still resumes and a new session A→B is
//! `New`, with no error in either log; on another site, A→B is `New`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common::postfix::{self, own_loopback_with, session_line, Instance, Setup};
use crate::common::redis_server;
use crate::common::stock;

use redis_server::{write_secret, RedisServer};
use std::path::Path;
use std::time::Duration;

const SECRET: &[u8] = b"e2e farm secret: the same 48 bytes on both hosts";

/// One host of the farm on `ip`, with the farm's certificate (as behind
/// one MX name) and shared secret.
fn host(ip: &'static str, port: u16, cert: &Path, key: &Path) -> Instance {
    let h = Instance::new(Setup {
        cert_key: Some((cert, key)),
        ..Setup::smtpd(ip, port, "mx.farm.test")
    });
    // Root's, outside the chroot: read by tlsmgr before it.
    write_secret(&h.root.join("conf/shared.key"), SECRET);
    h
}

/// The host's main.cf, sharing through `redis_url` as site `site`.
fn write_main_cf(h: &Instance, redis_url: &str, site: &str) {
    h.write_main_cf(&format!(
        "tlsmgr_shared_store = {redis_url}\n\
         tlsmgr_shared_site = {site}\n\
         tlsmgr_shared_secret_file = {r}/conf/shared.key",
        r = h.root.display()
    ));
}

/// A session from `from` (saved to `file`), then resumed against `to`.
fn across(from: &Instance, to: &Instance, opts: &[&str], file: &Path) -> String {
    let first = from.s_client(opts, Some(file), None);
    assert!(first.contains("\nNew, TLSv1."), "{first}");
    assert!(first.contains("221 2.0.0"), "QUIT answered: {first}");
    // Write-behind: the session reaches Redis within milliseconds.
    std::thread::sleep(Duration::from_millis(300));
    let line = session_line(&to.s_client(opts, None, Some(file)));
    eprintln!("{} -> {} {opts:?}: {line}", from.ip, to.ip);
    line
}

fn clean(h: &Instance, from: usize) {
    let log = h.log();
    for l in log[from.min(log.len())..].lines() {
        assert!(
            !l.contains("panic") && !l.contains("fatal:") && !l.contains("error:"),
            "{}: {l}",
            h.ip
        );
        let talker = l.contains("postfix/smtpd[") || l.contains("postfix/master[");
        assert!(!(talker && l.contains("warning:")), "{}: {l}", h.ip);
    }
}

#[test]
fn two_postfix_hosts_resume_each_others_sessions() {
    if !stock::available() {
        return;
    }
    own_loopback_with(&["127.0.0.2"]);
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    postfix::self_signed("mx.farm.test", &cert, &key);
    // The same port on both addresses: the same service name.
    let port = redis_server::free_port();
    let a = host("127.0.0.1", port, &cert, &key);
    let b = host("127.0.0.2", port, &cert, &key);
    for h in [&a, &b] {
        write_main_cf(h, &redis.url(), "farm");
        h.start();
    }
    let f = |name: &str| tmp.path().join(name);

    // Tickets, TLS 1.2 and 1.3; then the session cache (-no_ticket).
    for (opts, want) in [
        (&["-tls1_2"][..], "Reused, TLSv1.2"),
        (&["-tls1_3"][..], "Reused, TLSv1.3"),
        (&["-tls1_2", "-no_ticket"][..], "Reused, TLSv1.2"),
    ] {
        let l = across(&a, &b, opts, &f(&format!("ab{}.pem", opts.join(""))));
        assert!(l.starts_with(want), "A -> B {opts:?}: {l}");
    }
    b.wait_log(0, "smtpd ticket reuse", |l| {
        l.contains("postfix/smtpd[") && l.contains("Reusing old session (RFC 5077 session ticket)")
    });
    b.wait_log(0, "smtpd cache reuse", |l| {
        l.contains("postfix/smtpd[") && l.contains("from smtpd cache")
    });
    b.wait_log(0, "a read-through hit", |l| {
        l.contains("postfix/tlsmgr[") && l.contains("from the shared store")
    });
    // Both tlsmgr processes are chrooted and run as postfix.
    for h in [&a, &b] {
        let p = h.pids("tlsmgr");
        assert_eq!(p.len(), 1);
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/root", p[0])).unwrap(),
            h.root.join("queue")
        );
    }

    // Redis killed: A -> A still resumes, a new session A -> B is New.
    let (from_a, from_b) = (a.log().len(), b.log().len());
    redis.kill();
    let l = across(&a, &a, &["-tls1_2", "-no_ticket"], &f("aa-down.pem"));
    assert!(
        l.starts_with("Reused, TLSv1.2"),
        "A -> A without Redis: {l}"
    );
    let l = across(&a, &b, &["-tls1_2", "-no_ticket"], &f("ab-down.pem"));
    assert!(l.starts_with("New, TLSv1.2"), "A -> B without Redis: {l}");
    clean(&a, from_a);
    clean(&b, from_b);
    for h in [&a, &b] {
        let log = h.log();
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("warning:")).collect();
        assert!(warnings.len() <= 1, "{}: {warnings:?}", h.ip);
    }

    // Redis back (empty), B on another site: A -> B is New.
    redis.restart_empty();
    a.wait_log(from_a, "A's link back", |l| l.contains("answers again"));
    write_main_cf(&b, &redis.url(), "elsewhere");
    b.reload();
    let from_b = b.log().len();
    for (opts, name) in [
        (&["-tls1_2", "-no_ticket"][..], "site-cache.pem"),
        (&["-tls1_3"][..], "site-ticket.pem"),
    ] {
        let l = across(&a, &b, opts, &f(name));
        assert!(
            l.starts_with("New, "),
            "A -> B on another site {opts:?}: {l}"
        );
    }
    // And back on the same site, sharing resumes.
    write_main_cf(&b, &redis.url(), "farm");
    b.reload();
    let l = across(&a, &b, &["-tls1_2", "-no_ticket"], &f("ab-back.pem"));
    assert!(l.starts_with("Reused, TLSv1.2"), "A -> B again: {l}");
    clean(&b, from_b);
    eprintln!("--- tlsmgr lines ---");
    for h in [&a, &b] {
        for l in h.log().lines().filter(|l| l.contains("postfix/tlsmgr[")) {
            eprintln!("{l}");
        }
    }
}
