//! End to end with two real Postfix instances on one Redis (issue 13): an
//! MX farm of two, A on 127.0.0.1 and B on 127.0.0.2, with the same
//! master.cf service name (`PORT inet ... smtpd`: smtpd's cache id embeds
//! the service name), each with our tlsmgr (chrooted, unprivileged, as
//! master.cf says), sharing through Redis. `openssl s_client -starttls smtp
//! -sess_out` against A, then `-sess_in` against B, prints `Reused` for TLS
//! 1.2 tickets, TLS 1.3 tickets and, with `-no_ticket`, the session cache.
//! Controls: with Redis killed, A→A still resumes and a new session A→B is
//! `New`, with no error in either log; on another site, A→B is `New`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common::redis_server;
use crate::common::stock;

use redis_server::{write_secret, RedisServer};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OURS: &str = env!("CARGO_BIN_EXE_tlsmgr");
const POSTFIX_SBIN: &str = "/usr/lib/postfix/sbin";
const SECRET: &[u8] = b"e2e farm secret: the same 48 bytes on both hosts";

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

struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ip: &'static str,
    port: u16,
}

impl Host {
    fn new(ip: &'static str, port: u16, cert: &Path, key: &Path) -> Host {
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
        for e in std::fs::read_dir(POSTFIX_SBIN).unwrap() {
            let e = e.unwrap();
            install(&e.path(), &root.join("libexec").join(e.file_name()));
        }
        install(Path::new(OURS), &root.join("libexec/tlsmgr"));
        // One certificate for the farm, as behind one MX name.
        std::fs::copy(cert, root.join("conf/cert.pem")).unwrap();
        std::fs::copy(key, root.join("conf/key.pem")).unwrap();
        // Root's, outside the chroot: read by tlsmgr before it.
        write_secret(&root.join("conf/shared.key"), SECRET);
        let master_cf = format!(
            "{port} inet n - n - - smtpd\n\
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
             postlog unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(root.join("conf/master.cf"), master_cf).unwrap();
        Host {
            _dir: dir,
            root,
            ip,
            port,
        }
    }

    fn write_main_cf(&self, redis_url: &str, site: &str) {
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
             myhostname = mx.farm.test\n\
             mydestination =\n\
             alias_maps =\n\
             alias_database =\n\
             inet_interfaces = {ip}\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             maillog_file = {r}/maillog\n\
             maillog_file_prefixes = {r}\n\
             smtpd_tls_cert_file = {r}/conf/cert.pem\n\
             smtpd_tls_key_file = {r}/conf/key.pem\n\
             smtpd_tls_security_level = may\n\
             smtpd_tls_loglevel = 2\n\
             smtpd_tls_session_cache_database = btree:$queue_directory/tlscache/smtpd_scache\n\
             tlsmgr_ticket_key_file = $queue_directory/tlscache/ticket_keys\n\
             tlsmgr_shared_store = {redis_url}\n\
             tlsmgr_shared_site = {site}\n\
             tlsmgr_shared_secret_file = {r}/conf/shared.key\n",
            ip = self.ip
        );
        std::fs::write(self.root.join("conf/main.cf"), text).unwrap();
    }

    fn postfix(&self, action: &str) {
        let out = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.root.join("conf"))
            .arg(action)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: postfix {action}: {:?} {} {}\nlog:\n{}",
            self.ip,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    fn wait_log(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.get(from..).unwrap_or("").lines().any(&pred) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{}: no log line for {what} within 30 s; log:\n{}",
                self.ip,
                &log[from.min(log.len())..]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pids(&self, name: &str) -> Vec<u32> {
        let exe = self.root.join("libexec").join(name);
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
            .collect()
    }

    /// `postfix reload`, and waits until the old tlsmgr and smtpd are gone.
    fn reload(&self) {
        let mut old = self.pids("tlsmgr");
        old.extend(self.pids("smtpd"));
        let from = self.log().len();
        self.postfix("reload");
        self.wait_log(from, "master reload", |l| {
            l.contains("postfix/master[") && l.contains("reload -- version")
        });
        let start = Instant::now();
        while old
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "old processes stay"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Host {
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

/// One `openssl s_client -starttls smtp` session against `host`.
fn s_client(host: &Host, opts: &[&str], sess_out: Option<&Path>, sess_in: Option<&Path>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("{}:{}", host.ip, host.port),
        "-starttls",
        "smtp",
        "-ign_eof",
    ])
    .args(opts);
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
    // TLS 1.3 tickets arrive after the handshake: give them a moment.
    std::thread::sleep(Duration::from_millis(300));
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

fn session_line(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
        .unwrap_or_else(|| panic!("no session line: {out}"))
        .to_string()
}

/// A session from `from` (saved to `file`), then resumed against `to`.
fn across(from: &Host, to: &Host, opts: &[&str], file: &Path) -> String {
    let first = s_client(from, opts, Some(file), None);
    assert!(first.contains("\nNew, TLSv1."), "{first}");
    assert!(first.contains("221 2.0.0"), "QUIT answered: {first}");
    // Write-behind: the session reaches Redis within milliseconds.
    std::thread::sleep(Duration::from_millis(300));
    let line = session_line(&s_client(to, opts, None, Some(file)));
    eprintln!("{} -> {} {opts:?}: {line}", from.ip, to.ip);
    line
}

fn clean(h: &Host, from: usize) {
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

/// Moves this test (its thread, and every process it starts from now on)
/// into a network namespace of its own whose loopback also carries
/// 127.0.0.2: Postfix wants `inet_interfaces` to be an interface address,
/// and the host's network stays as it was.
fn own_loopback_with_two_addresses() {
    // SAFETY: unshare(2) takes a flag word and touches no memory of ours;
    // it moves only the calling thread, which then starts every process.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    run(Command::new("ip").args(["link", "set", "lo", "up"]));
    run(Command::new("ip").args(["addr", "add", "127.0.0.2/8", "dev", "lo"]));
}

#[test]
fn two_postfix_hosts_resume_each_others_sessions() {
    if !stock::available() {
        return;
    }
    own_loopback_with_two_addresses();
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=mx.farm.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null()));
    // The same port on both addresses: the same service name.
    let port = redis_server::free_port();
    let a = Host::new("127.0.0.1", port, &cert, &key);
    let b = Host::new("127.0.0.2", port, &cert, &key);
    for h in [&a, &b] {
        h.write_main_cf(&redis.url(), "farm");
        h.postfix("start");
        h.wait_log(0, "master start", |l| l.contains("daemon started"));
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
    b.write_main_cf(&redis.url(), "elsewhere");
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
    b.write_main_cf(&redis.url(), "farm");
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
