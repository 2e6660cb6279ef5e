//! End to end with the real Postfix (Debian's `postfix` package): one
//! instance of `common::postfix` (loopback high ports, a self-signed
//! certificate, our tlsmgr chrooted and unprivileged in master.cf).
//!
//! One test, in phases, because each phase builds on the instance's state:
//! 1. Stock tlsmgr first, for contrast: a session (server cache) and a
//!    ticket issued before `postfix reload` do NOT resume after it.
//! 2. Ours: `openssl s_client -starttls smtp` resumes (`Reused`) over TLS 1.2
//!    and 1.3, with tickets and with `tls_ssl_options = NO_TICKET`.
//! 3. The smtp(8) client cache: the second of two relayed messages logs a
//!    reused session.
//! 4. `postfix reload`: our process exits 0, saves the exchange file, a new
//!    one serves, and a session and a ticket issued before the reload still
//!    resume after it.
//! 5. The process is chrooted into queue_directory and runs as postfix.
//! 6. The mail log has no throttling, no panic, no warning about tlsmgr, and
//!    `postfix stop` leaves none of our processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common::postfix::{run, session_line, Instance, Setup, OURS};
use crate::common::stock;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The instance, with the port of a second smtpd that discards what the
/// first relays to it (for the smtp(8) client cache).
struct E2e {
    pf: Instance,
    relay_port: u16,
}

impl E2e {
    fn new() -> E2e {
        let port = free_port();
        let relay_port = std::iter::repeat_with(free_port)
            .find(|p| *p != port)
            .unwrap();
        let pf = Instance::new(Setup {
            inet_services: format!(
                "127.0.0.1:{port} inet n - n - - smtpd\n\
                 127.0.0.1:{relay_port} inet n - n - - smtpd -o content_filter=discard:e2e\n"
            ),
            ..Setup::smtpd("127.0.0.1", port, "e2e.localdomain")
        });
        let e = E2e { pf, relay_port };
        e.write_main_cf("");
        e
    }

    /// The instance's main.cf with the smtp(8) client relaying to the
    /// second smtpd over TLS, its session cache beside smtpd's.
    fn write_main_cf(&self, extra: &str) {
        self.pf.write_main_cf(&format!(
            "relayhost = [127.0.0.1]:{rp}\n\
             smtp_connection_cache_on_demand = no\n\
             smtp_tls_security_level = may\n\
             smtp_tls_loglevel = 2\n\
             smtp_tls_session_cache_database = btree:$queue_directory/tlscache/smtp_scache\n\
             {extra}",
            rp = self.relay_port
        ));
    }

    /// Issues a session (to `file`), then resumes it: returns the second
    /// handshake's `New, ...`/`Reused, ...` line.
    fn resume(&self, tls: &str, file: &Path, reload_between: bool) -> String {
        let first = self.pf.s_client(&[tls], Some(file), None);
        assert!(first.contains("\nNew, TLSv1."), "{first}");
        assert!(first.contains("221 2.0.0"), "QUIT answered: {first}");
        if reload_between {
            self.pf.reload();
        }
        let line = session_line(&self.pf.s_client(&[tls], None, Some(file)));
        eprintln!(
            "s_client {tls} {} ({}): {line}",
            file.file_name().unwrap_or_default().to_string_lossy(),
            if reload_between {
                "reload between"
            } else {
                "no reload"
            }
        );
        line
    }

    fn session_file(&self, name: &str) -> PathBuf {
        self.pf.root.join(name)
    }

    /// Submits one message over plain SMTP; it is relayed by smtp(8).
    fn submit(&self, subject: &str) {
        let s = TcpStream::connect(("127.0.0.1", self.pf.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let expect = |code: &str, r: &mut BufReader<TcpStream>| loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        };
        expect("220", &mut r);
        for (cmd, code) in [
            ("EHLO client.test\r\n", "250"),
            ("MAIL FROM:<sender@e2e.localdomain>\r\n", "250"),
            ("RCPT TO:<rcpt@example.test>\r\n", "250"),
            ("DATA\r\n", "354"),
        ] {
            w.write_all(cmd.as_bytes()).unwrap();
            expect(code, &mut r);
        }
        w.write_all(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes())
            .unwrap();
        expect("250", &mut r);
        w.write_all(b"QUIT\r\n").unwrap();
        expect("221", &mut r);
    }
}

impl std::ops::Deref for E2e {
    type Target = Instance;
    fn deref(&self) -> &Instance {
        &self.pf
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn proc_uid(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

fn postfix_uid() -> u32 {
    run(Command::new("id").args(["-u", "postfix"]))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn real_postfix_resumes_sessions_through_our_tlsmgr() {
    if !stock::available() {
        return;
    }
    let pf = E2e::new();
    let started = Instant::now();

    // 1. Stock tlsmgr: state is lost on reload.
    pf.install_tlsmgr(Path::new(stock::STOCK_TLSMGR));
    pf.write_main_cf("tls_ssl_options = NO_TICKET");
    pf.start();
    let l = pf.resume("-tls1_2", &pf.session_file("stock-cache.pem"), false);
    assert!(
        l.starts_with("Reused, TLSv1.2"),
        "stock resumes without reload: {l}"
    );
    let l = pf.resume("-tls1_2", &pf.session_file("stock-cache2.pem"), true);
    assert!(
        l.starts_with("New, TLSv1.2"),
        "stock loses its cache on reload: {l}"
    );
    pf.write_main_cf("");
    pf.reload();
    let l = pf.resume("-tls1_3", &pf.session_file("stock-ticket.pem"), true);
    assert!(
        l.starts_with("New, TLSv1.3"),
        "stock loses its ticket keys on reload: {l}"
    );

    // 2. Ours, tickets on.
    pf.install_tlsmgr(Path::new(OURS));
    pf.reload();
    let ours_from = pf.log().len();
    for tls in ["-tls1_2", "-tls1_3"] {
        let l = pf.resume(tls, &pf.session_file(&format!("ticket{tls}.pem")), false);
        assert!(
            l.starts_with(&format!("Reused, TLSv1.{}", &tls[6..])),
            "{tls} ticket: {l}"
        );
    }
    pf.wait_log(ours_from, "smtpd ticket reuse", |l| {
        l.contains("postfix/smtpd[") && l.contains("Reusing old session (RFC 5077 session ticket)")
    });

    // 5. Chrooted and unprivileged, as master.cf says (unpriv -, chroot y).
    let ours = pf.pids("tlsmgr");
    assert_eq!(ours.len(), 1, "one tlsmgr: {ours:?}");
    assert_eq!(proc_uid(ours[0]), vec![postfix_uid(); 4]);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/root", ours[0])).unwrap(),
        pf.root.join("queue")
    );

    // 3. The smtp(8) client cache: the second relayed message reuses.
    let from = pf.log().len();
    pf.submit("first");
    pf.wait_log(from, "first relayed", |l| {
        l.contains("postfix/smtp[") && l.contains("status=sent")
    });
    let from = pf.log().len();
    pf.submit("second");
    pf.wait_log(from, "second relayed", |l| {
        l.contains("postfix/smtp[") && l.contains("status=sent")
    });
    let reuse = pf.wait_log(from, "smtp session reuse", |l| {
        l.contains("postfix/smtp[")
            && (l.contains("from smtp cache") || l.contains("Reusing old session"))
    });
    eprintln!("smtp client reuse: {reuse}");

    // 4. Reload with tickets: ours exits 0, saves the exchange file, the
    // next one decrypts a ticket issued before the reload.
    let exch = pf.root.join("data/prng_exch");
    let before = std::fs::read(&exch).unwrap();
    let old = pf.pids("tlsmgr");
    let l = pf.resume("-tls1_3", &pf.session_file("reload-ticket.pem"), true);
    assert!(
        l.starts_with("Reused, TLSv1.3"),
        "ticket survives reload: {l}"
    );
    assert_ne!(
        std::fs::read(&exch).unwrap(),
        before,
        "exchange file saved at reload"
    );
    let new = pf.pids("tlsmgr");
    assert_eq!(new.len(), 1);
    assert_ne!(new, old, "a new tlsmgr serves after reload");

    // 2'. NO_TICKET: resumption through our smtpd session cache, across reloads.
    pf.write_main_cf("tls_ssl_options = NO_TICKET");
    pf.reload();
    for tls in ["-tls1_2", "-tls1_3"] {
        let l = pf.resume(tls, &pf.session_file(&format!("cache{tls}.pem")), false);
        assert!(
            l.starts_with(&format!("Reused, TLSv1.{}", &tls[6..])),
            "{tls} cache: {l}"
        );
    }
    let from = pf.log().len();
    let l = pf.resume("-tls1_2", &pf.session_file("reload-cache.pem"), true);
    assert!(
        l.starts_with("Reused, TLSv1.2"),
        "cached session survives reload: {l}"
    );
    pf.wait_log(from, "smtpd cache reuse", |l| {
        l.contains("postfix/smtpd[") && l.contains("from smtpd cache")
    });

    // 6. Stop: nothing of ours is left; the log is clean.
    let ours = pf.pids("tlsmgr");
    assert_eq!(ours.len(), 1);
    let before_stop = std::fs::read(&exch).unwrap();
    pf.postfix("stop");
    let start = Instant::now();
    while !pf.pids("master").is_empty() || !pf.pids("tlsmgr").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "postfix stop left processes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pf.wait_gone(&ours);
    assert_ne!(
        std::fs::read(&exch).unwrap(),
        before_stop,
        "postfix stop (SIGTERM): exchange file saved"
    );
    let log = pf.log();
    let ours_log = &log[ours_from..];
    for bad in ["bad command startup -- throttling", "panic:", "fatal:"] {
        assert!(!log.contains(bad), "{bad} in log:\n{log}");
    }
    for l in log.lines() {
        let about_tlsmgr = l.contains("tlsmgr") || l.contains("tls_mgr");
        assert!(
            !(l.contains("warning:") && about_tlsmgr),
            "warning about tlsmgr: {l}"
        );
    }
    // While ours runs, no daemon that talks to it warns or errs at all.
    for l in ours_log.lines() {
        let talker = [
            "postfix/smtpd[",
            "postfix/smtp[",
            "postfix/tlsmgr[",
            "postfix/master[",
        ]
        .iter()
        .any(|t| l.contains(t));
        assert!(
            !(talker && (l.contains("warning:") || l.contains("error:"))),
            "{l}"
        );
    }
    eprintln!(
        "--- key mail log lines ({} s) ---",
        started.elapsed().as_secs()
    );
    for l in ours_log.lines().filter(|l| {
        l.contains("postfix/tlsmgr[")
            || l.contains("reload -- version")
            || l.contains("Reusing old session")
            || l.contains("from smtpd cache")
            || l.contains("from smtp cache")
            || l.contains("terminating on signal")
            || l.contains("stopping the Postfix mail system")
    }) {
        eprintln!("{l}");
    }
}
