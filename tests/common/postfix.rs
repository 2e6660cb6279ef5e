//! A real Postfix (Debian's `postfix` package) for the end-to-end tests: a
//! self-contained instance in a temporary directory (own config, queue and
//! data directories, a high port on a loopback address, a certificate)
//! whose master.cf `tlsmgr` line runs our binary, chrooted into
//! queue_directory and unprivileged, as Debian's master.cf has it.
//!
//! `postfix_e2e` runs one instance (with a second smtpd as relay target);
//! `shared_postfix` runs two on one Redis, on 127.0.0.1 and 127.0.0.2 in a
//! network namespace of their own ([`own_loopback_with`]). Both drive them
//! with `postfix start|reload|stop`, `openssl s_client` and the mail log.
//!
//! The Debian tests in `.ci/` (`debian-install-test`: our package in the
//! machine's own Postfix; `debian13-sandbox-test`: Debian 13's Postfix
//! under its systemd sandbox) check the same resumptions from the shell,
//! on a whole installed system rather than an instance in a directory, so
//! they do not use this module.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Our binary, as master(8) runs it from `$daemon_directory/tlsmgr`.
pub const OURS: &str = env!("CARGO_BIN_EXE_tlsmgr");
/// Debian's daemons, copied (linked) into each instance's daemon_directory.
const POSTFIX_SBIN: &str = "/usr/lib/postfix/sbin";

/// Runs `cmd`, fails the test unless it succeeds, returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Puts `from` at `to`: a hard link where it can (no copy of a large
/// binary per instance), a copy across file systems.
pub fn install(from: &Path, to: &Path) {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

/// A self-signed certificate and key for `cn`, written to `cert` and `key`.
pub fn self_signed(cn: &str, cert: &Path, key: &Path) {
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-subj")
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stderr(Stdio::null()));
}

/// Moves the calling thread (and every process it starts from now on)
/// into a network namespace of its own whose loopback also carries
/// `addrs`: Postfix wants `inet_interfaces` to be an interface address,
/// and the host's network stays as it was.
pub fn own_loopback_with(addrs: &[&str]) {
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
    for a in addrs {
        run(Command::new("ip").args(["addr", "add", &format!("{a}/8"), "dev", "lo"]));
    }
}

/// What differs between the instances the tests run.
pub struct Setup<'a> {
    /// `inet_interfaces`, and where [`Instance::s_client`] connects.
    pub ip: &'static str,
    /// The port of the smtpd that [`Instance::s_client`] talks to.
    pub port: u16,
    /// master.cf's inet lines (the rest is the fixed set of daemons).
    pub inet_services: String,
    pub myhostname: &'static str,
    /// Certificate and key to copy in; `None` makes a fresh self-signed
    /// one for `myhostname`.
    pub cert_key: Option<(&'a Path, &'a Path)>,
}

impl Setup<'_> {
    /// One smtpd on `ip:port`, its service named by the port alone (as
    /// smtpd's cache id embeds the service name, two hosts of a farm must
    /// use the same one).
    pub fn smtpd(ip: &'static str, port: u16, myhostname: &'static str) -> Setup<'static> {
        Setup {
            ip,
            port,
            inet_services: format!("{port} inet n - n - - smtpd\n"),
            myhostname,
            cert_key: None,
        }
    }
}

/// master.cf's lines for the daemons every instance runs; `tlsmgr` is
/// chrooted (`y`) and unprivileged (`-`), as in Debian's master.cf.
const DAEMONS: &str = "cleanup unix n - n - 0 cleanup\n\
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
     postlog unix-dgram n - n - 1 postlogd\n";

/// One Postfix instance; `postfix stop` when dropped if still running.
pub struct Instance {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub ip: &'static str,
    pub port: u16,
    myhostname: &'static str,
}

impl Instance {
    /// Lays out the instance (not started; main.cf is written by
    /// [`Instance::write_main_cf`]).
    pub fn new(setup: Setup) -> Instance {
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
        let (cert, key) = (root.join("conf/cert.pem"), root.join("conf/key.pem"));
        match setup.cert_key {
            Some((c, k)) => {
                std::fs::copy(c, &cert).unwrap();
                std::fs::copy(k, &key).unwrap();
            }
            None => self_signed(setup.myhostname, &cert, &key),
        }
        std::fs::write(
            root.join("conf/master.cf"),
            format!("{}{DAEMONS}", setup.inet_services),
        )
        .unwrap();
        Instance {
            _dir: dir,
            root,
            ip: setup.ip,
            port: setup.port,
            myhostname: setup.myhostname,
        }
    }

    /// Puts `binary` in master.cf's `tlsmgr` place (ours or the stock one);
    /// the next `postfix reload` runs it.
    pub fn install_tlsmgr(&self, binary: &Path) {
        install(binary, &self.root.join("libexec/tlsmgr"));
    }

    /// main.cf: the instance's directories, the smtpd TLS settings with the
    /// session cache and ticket key file below queue_directory (so the
    /// chrooted tlsmgr reaches them), then `extra`.
    pub fn write_main_cf(&self, extra: &str) {
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
             myhostname = {host}\n\
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
             {extra}\n",
            host = self.myhostname,
            ip = self.ip
        );
        std::fs::write(self.root.join("conf/main.cf"), text).unwrap();
    }

    /// `postfix -c CONF ACTION`; fails the test (with the mail log) unless
    /// it succeeds.
    pub fn postfix(&self, action: &str) {
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

    /// `postfix start`, and waits until master(8) logs that it runs.
    pub fn start(&self) {
        self.postfix("start");
        self.wait_log(0, "master start", |l| l.contains("daemon started"));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    /// Polls the mail log (from byte `from`) for a line matching `pred`;
    /// returns the line.
    pub fn wait_log(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(l) = log.get(from..).unwrap_or("").lines().find(|l| pred(l)) {
                return l.to_string();
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

    /// Pids of processes running `$daemon_directory/<name>` of this instance.
    pub fn pids(&self, name: &str) -> Vec<u32> {
        let exe = self.root.join("libexec").join(name);
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
            .collect()
    }

    /// Waits (up to 30 s) until none of `pids` exists.
    pub fn wait_gone(&self, pids: &[u32]) {
        let start = Instant::now();
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{}: processes {pids:?} did not exit",
                self.ip
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postfix reload`, then waits until the old tlsmgr and smtpd
    /// processes are gone so the next connection meets fresh ones.
    pub fn reload(&self) {
        let mut old = self.pids("tlsmgr");
        old.extend(self.pids("smtpd"));
        let from = self.log().len();
        self.postfix("reload");
        self.wait_log(from, "master reload", |l| {
            l.contains("postfix/master[") && l.contains("reload -- version")
        });
        self.wait_gone(&old);
    }

    /// One `openssl s_client -starttls smtp` session with `opts`, saving
    /// its session to `sess_out` or resuming `sess_in`; returns its output.
    pub fn s_client(
        &self,
        opts: &[&str],
        sess_out: Option<&Path>,
        sess_in: Option<&Path>,
    ) -> String {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &format!("{}:{}", self.ip, self.port),
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
        // TLS 1.3 tickets arrive after the handshake: give them a moment
        // before QUIT ends the connection.
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
}

/// The `New, ...` or `Reused, ...` line of an `openssl s_client` output.
pub fn session_line(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
        .unwrap_or_else(|| panic!("no session line: {out}"))
        .to_string()
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
