//! End to end with the real Postfix (Debian's `postfix` package): a
//! self-contained instance in a temporary directory (own config, queue and
//! data directories, loopback high ports, a self-signed certificate) whose
//! master.cf `tlsmgr` line runs our binary, chrooted and unprivileged.
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
use crate::common::stock;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OURS: &str = env!("CARGO_BIN_EXE_tlsmgr");
const POSTFIX_SBIN: &str = "/usr/lib/postfix/sbin";

struct Instance {
    _dir: tempfile::TempDir,
    root: PathBuf,
    port: u16,
    relay_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn install(from: &Path, to: &Path) {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

impl Instance {
    fn new() -> Instance {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["conf", "queue/tlscache", "data", "libexec"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        run(Command::new("chown")
            .arg("postfix:postfix")
            .arg(root.join("data"))
            .arg(root.join("queue/tlscache")));
        // daemon_directory: Debian's daemons, with our tlsmgr in its place.
        for e in std::fs::read_dir(POSTFIX_SBIN).unwrap() {
            let e = e.unwrap();
            install(&e.path(), &root.join("libexec").join(e.file_name()));
        }
        install(Path::new(OURS), &root.join("libexec/tlsmgr"));
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=e2e.localdomain",
                "-keyout",
                &root.join("conf/key.pem").display().to_string(),
                "-out",
                &root.join("conf/cert.pem").display().to_string(),
            ])
            .stderr(Stdio::null()));
        let port = free_port();
        let relay_port = std::iter::repeat_with(free_port)
            .find(|p| *p != port)
            .unwrap();
        let inst = Instance {
            _dir: dir,
            root,
            port,
            relay_port,
        };
        inst.write_main_cf("");
        let master_cf = format!(
            "127.0.0.1:{p} inet n - n - - smtpd\n\
             127.0.0.1:{rp} inet n - n - - smtpd -o content_filter=discard:e2e\n\
             cleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\n\
             tlsmgr unix - - y 1000? 1 tlsmgr\n\
             rewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\n\
             defer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\n\
             smtp unix - - n - - smtp\n\
             relay unix - - n - - smtp\n\
             showq unix n - n - - showq\n\
             error unix - - n - - error\n\
             retry unix - - n - - error\n\
             discard unix - - n - - discard\n\
             anvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n",
            p = inst.port,
            rp = inst.relay_port
        );
        std::fs::write(inst.root.join("conf/master.cf"), master_cf).unwrap();
        inst
    }

    fn write_main_cf(&self, extra: &str) {
        let r = self.root.display();
        let text = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {r}/queue\n\
             data_directory = {r}/data\n\
             daemon_directory = {r}/libexec\n\
             meta_directory = /etc/postfix\n\
             shlib_directory = /usr/lib/postfix\n\
             command_directory = /usr/sbin\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = e2e.localdomain\n\
             mydestination =\n\
             alias_maps =\n\
             alias_database =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             maillog_file = {r}/maillog\n\
             maillog_file_prefixes = {r}\n\
             relayhost = [127.0.0.1]:{rp}\n\
             smtp_connection_cache_on_demand = no\n\
             smtpd_tls_cert_file = {r}/conf/cert.pem\n\
             smtpd_tls_key_file = {r}/conf/key.pem\n\
             smtpd_tls_security_level = may\n\
             smtpd_tls_loglevel = 2\n\
             smtp_tls_security_level = may\n\
             smtp_tls_loglevel = 2\n\
             # Below queue_directory, so the chrooted tlsmgr reaches them.\n\
             smtpd_tls_session_cache_database = btree:$queue_directory/tlscache/smtpd_scache\n\
             smtp_tls_session_cache_database = btree:$queue_directory/tlscache/smtp_scache\n\
             tlsmgr_ticket_key_file = $queue_directory/tlscache/ticket_keys\n\
             {extra}\n",
            rp = self.relay_port
        );
        std::fs::write(self.root.join("conf/main.cf"), text).unwrap();
    }

    fn postfix(&self, action: &str) {
        run(Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.root.join("conf"))
            .arg(action)
            .stdin(Stdio::null()));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    /// Polls the mail log (from byte `from`) for a line matching `pred`.
    fn wait_log(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(l) = log.get(from..).unwrap_or("").lines().find(|l| pred(l)) {
                return l.to_string();
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "no log line for {what} within 30 s; log:\n{}",
                    &log[from.min(log.len())..]
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pids of processes running `$daemon_directory/<name>` of this instance.
    fn pids(&self, name: &str) -> Vec<u32> {
        let exe = self.root.join("libexec").join(name);
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map(|p| p == exe)
                    .unwrap_or(false)
            })
            .collect()
    }

    fn wait_gone(&self, pids: &[u32]) {
        let start = Instant::now();
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "processes {pids:?} did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postfix reload`, then waits until the old tlsmgr and smtpd
    /// processes are gone so the next connection meets fresh ones.
    fn reload(&self) {
        let mut old = self.pids("tlsmgr");
        old.extend(self.pids("smtpd"));
        let from = self.log().len();
        self.postfix("reload");
        self.wait_log(from, "master reload", |l| {
            l.contains("postfix/master[") && l.contains("reload -- version")
        });
        self.wait_gone(&old);
    }

    /// One `openssl s_client -starttls smtp` session; returns its output.
    fn s_client(&self, tls: &str, sess_out: Option<&Path>, sess_in: Option<&Path>) -> String {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", self.port),
            "-starttls",
            "smtp",
            "-ign_eof",
            tls,
        ]);
        if let Some(p) = sess_out {
            cmd.arg("-sess_out").arg(p);
        }
        if let Some(p) = sess_in {
            cmd.arg("-sess_in").arg(p);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"QUIT\r\n").unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("openssl s_client hung");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    /// Issues a session (to `file`), then resumes it: returns the second
    /// handshake's `New, ...`/`Reused, ...` line.
    fn resume(&self, tls: &str, file: &Path, reload_between: bool) -> String {
        let first = self.s_client(tls, Some(file), None);
        assert!(first.contains("\nNew, TLSv1."), "{first}");
        assert!(first.contains("221 2.0.0"), "QUIT answered: {first}");
        if reload_between {
            self.reload();
        }
        let second = self.s_client(tls, None, Some(file));
        let line = second
            .lines()
            .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
            .unwrap_or_else(|| panic!("no session line: {second}"))
            .to_string();
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
        self.root.join(name)
    }

    /// Submits one message over plain SMTP; it is relayed by smtp(8).
    fn submit(&self, subject: &str) {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
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

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.pids("master").is_empty() {
            let _ = Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(self.root.join("conf"))
                .arg("stop")
                .output();
        }
    }
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
    let pf = Instance::new();
    let started = Instant::now();

    // 1. Stock tlsmgr: state is lost on reload.
    install(
        Path::new(stock::STOCK_TLSMGR),
        &pf.root.join("libexec/tlsmgr"),
    );
    pf.write_main_cf("tls_ssl_options = NO_TICKET");
    pf.postfix("start");
    pf.wait_log(0, "master start", |l| l.contains("daemon started"));
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
    install(Path::new(OURS), &pf.root.join("libexec/tlsmgr"));
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
