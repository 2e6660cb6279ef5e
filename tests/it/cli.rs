//! `tlsmgr serve` and `tlsmgr client` as real processes: the issue's
//! acceptance list, end to end through the command line.
#![allow(clippy::unwrap_used)]

use crate::common::serve::ServeProcess;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tlsmgr");

/// `tlsmgr serve` on the default socket, `$queue_directory/private/tlsmgr`.
struct Serve {
    daemon: ServeProcess,
}

impl Serve {
    fn start(dir: &Path) -> Serve {
        std::fs::write(
            dir.join("main.cf"),
            format!(
                "queue_directory = {d}\ndata_directory = {d}/data\n\
                 smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
                 smtp_tls_session_cache_database = hash:${{data_directory}}/smtp_scache\n",
                d = dir.display()
            ),
        )
        .unwrap();
        Serve {
            daemon: ServeProcess::start(dir, ServeProcess::NO_ENV),
        }
    }

    fn client(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(["client", "--socket"])
            .arg(&self.daemon.socket)
            .args(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// SIGTERM, as `postfix stop` sends; the daemon must flush and exit 0.
    fn stop(self) -> String {
        let (status, log) = self.daemon.stop_with_log();
        assert!(status.success(), "exit status {status:?}");
        log
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn client_against_serve() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());

    let o = serve.client(
        &["update", "smtpd", "id1", "-"],
        Some(b"\x30\x05\x02\x01\x01\x04\x00"),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "status: OK\n");
    let o = serve.client(&["lookup", "smtpd", "id1"], None);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "status: OK\nsession: 30050201010400\n");
    let o = serve.client(&["--raw", "lookup", "smtpd", "id1"], None);
    assert_eq!(
        o.stdout,
        b"status: OK\nsession: \x30\x05\x02\x01\x01\x04\x00\n"
    );

    let o = serve.client(&["delete", "smtpd", "id1"], None);
    assert_eq!(o.status.code(), Some(0));
    let o = serve.client(&["lookup", "smtpd", "id1"], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "status: ERR\nsession: \n");

    for (t, cachable) in [("smtpd", 1), ("smtp", 1), ("lmtp", 0)] {
        let o = serve.client(&["policy", t], None);
        assert_eq!(o.status.code(), Some(0));
        assert_eq!(
            stdout(&o),
            format!("status: OK\ncachable: {cachable}\ntimeout: 3600\n")
        );
    }

    let o = serve.client(&["tktkey"], None);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    let keybuf = text
        .strip_prefix("status: OK\nkeybuf: ")
        .unwrap()
        .trim_end();
    assert_eq!(keybuf.len(), 2 * 88);
    let o = serve.client(&["tktkey", &keybuf[..32]], None);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), text, "lookup by name returns the same key");

    let o = serve.client(&["seed", "32"], None);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o)
            .strip_prefix("status: OK\nseed: ")
            .unwrap()
            .trim_end()
            .len(),
        64
    );
    let o = serve.client(&["seed", "256"], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "status: FAIL\nseed: \n");
    let o = serve.client(&["policy", "imap"], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "status: FAIL\ncachable: 0\ntimeout: 0\n");

    let log = serve.stop();
    assert!(
        log.contains("warning: bogus seed length \"256\" in \"seed\" request"),
        "{log}"
    );
    assert!(
        log.contains("warning: bogus cache type \"imap\" in \"policy\" request"),
        "{log}"
    );
    // Stores are where the README says: PATH.fjall, never stock's PATH.db.
    assert!(dir.path().join("data/smtpd_scache.fjall").is_dir());
    assert!(dir.path().join("data/smtp_scache.fjall").is_dir());
    assert!(!dir.path().join("data/smtpd_scache.db").exists());
}

#[test]
fn client_reports_connection_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["client", "--socket"])
        .arg(dir.path().join("nothing"))
        .args(["seed", "8"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn serve_rejects_a_bad_configuration_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.cf"),
        "queue_directory = /tmp\nsmtpd_tls_session_cache_timeout = 200d\n",
    )
    .unwrap();
    let o = crate::common::serve::command(&[], dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "fatal: {}/main.cf, line 2: invalid smtpd_tls_session_cache_timeout: 17280000 (max 8640000)",
            dir.path().display()
        )),
        "{err}"
    );
}

/// Without `--socket`, `tlsmgr client` asks the socket that `serve` and
/// master(8) use: `$queue_directory/private/tlsmgr` of the main.cf in `-c
/// DIR`, else in `$MAIL_CONFIG`.
#[test]
fn client_finds_the_socket_through_main_cf() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    let client = |args: &[&str], mail_config: Option<&Path>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("client").args(args).env_remove("MAIL_CONFIG");
        if let Some(d) = mail_config {
            cmd.env("MAIL_CONFIG", d);
        }
        cmd.output().unwrap()
    };
    let d = dir.path().to_str().unwrap();

    let o = client(&["-c", d, "seed", "8"], None);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout(&o).starts_with("status: OK\nseed: "),
        "{}",
        stdout(&o)
    );

    let o = client(&["policy", "smtpd"], Some(dir.path()));
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "status: OK\ncachable: 1\ntimeout: 3600\n");

    // -c wins over $MAIL_CONFIG.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(
        elsewhere.path().join("main.cf"),
        format!("queue_directory = {}\n", elsewhere.path().display()),
    )
    .unwrap();
    let o = client(&["-c", d, "seed", "8"], Some(elsewhere.path()));
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // ... and $MAIL_CONFIG is read when there is no -c: nothing listens there.
    let o = client(&["seed", "8"], Some(elsewhere.path()));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}/private/tlsmgr", elsewhere.path().display())),
        "{err}"
    );

    // A main.cf that cannot be used: exit 2, naming file and line.
    std::fs::write(
        elsewhere.path().join("main.cf"),
        "smtpd_tls_session_cache_timeout = 200d\n",
    )
    .unwrap();
    let o = client(&["seed", "8"], Some(elsewhere.path()));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("main.cf, line 1: invalid smtpd_tls_session_cache_timeout"),
        "{err}"
    );

    // -c and --socket together are a usage error.
    let o = client(&["-c", d, "--socket", "/nonexistent", "seed", "8"], None);
    assert_eq!(o.status.code(), Some(2));
    serve.stop();
}

/// `tlsmgr man` prints the tlsmgr-rs(8) page: the generated command
/// reference and the hand-written sections.
#[test]
fn man_page_has_every_command_and_section() {
    let o = Command::new(BIN).arg("man").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let page = stdout(&o);
    assert!(page.contains("\n.TH TLSMGR-RS 8 "), "{page}");
    for want in [
        ".SS \"tlsmgr serve\"",
        ".SS \"tlsmgr check\"",
        ".SS \"tlsmgr client\"",
        ".SS \"tlsmgr client tktkey\"",
        ".SH PARAMETERS",
        ".SH \"LIVE RELOAD\"",
        ".SH \"DIFFERENCES FROM STOCK\"",
        ".SH FILES",
        ".SH \"SEE ALSO\"",
        "tlsmgr(8postfix)",
    ] {
        assert!(page.contains(want), "missing {want}");
    }
    // Every tlsmgr_* parameter has an entry.
    for (name, _) in tlsmgr::config::DEFAULTS {
        if name.starts_with("tlsmgr_") {
            assert!(
                page.contains(&format!(".BR {name} ")),
                "{name} undocumented"
            );
        }
    }
    // The hidden command stays out of the help and the page.
    assert!(!page.contains("\"tlsmgr man\""));
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(!stdout(&help).contains("  man "), "{}", stdout(&help));
}
