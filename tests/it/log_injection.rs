//! Log injection: names and values that clients send end up in warnings,
//! and a newline in one must not start a forged line in the mail log.
//! Every drain masks them as Postfix's printable() does: the captured log
//! of an in-process daemon, and, as a master(8) child, syslog, postlogd
//! (`maillog_file`) and stderr (`-V`).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;
use crate::common::child;
use crate::common::stock;
use crate::common::syslog;

use child::{MasterChild, OURS};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use syslog::SyslogReader;

/// The forgery of the report: a request name carrying a whole log line.
const FORGED_REQUEST: &[u8] = b"request\0seed\npostfix/tlsmgr[1]: fatal: FORGED\0\0";
const FORGED_MASKED: &str =
    "warning: unknown request \"seed?postfix/tlsmgr[1]: fatal: FORGED\" from tlsmgr socket";
/// The same through an attribute name, with a carriage return, an escape
/// and bytes that are not UTF-8.
const FORGED_ATTRIBUTE: &[u8] =
    b"cache_type\r\npostfix/tlsmgr[1]: fatal: AGAIN\x1b[2K\xff\xfe\0smtpd\0\0";
const ATTRIBUTE_MASKED: &str =
    "warning: unexpected attribute cache_type??postfix/tlsmgr[1]: fatal: AGAIN?[2K?? from tlsmgr socket (expecting: request)";
const FAIL_ONLY: &[u8] = b"status\x004294967294\x00\x00";

/// Sends both forgeries on one connection and reads their FAIL replies.
fn send_forgeries(socket: &std::path::Path) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ann = [0u8; 26];
    s.read_exact(&mut ann).unwrap();
    for req in [FORGED_REQUEST, FORGED_ATTRIBUTE] {
        s.write_all(req).unwrap();
        let mut reply = vec![0u8; FAIL_ONLY.len()];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply, FAIL_ONLY);
    }
}

/// No line of `text` is forged, and both masked warnings are there.
fn assert_masked(what: &str, lines: &[String]) {
    for l in lines {
        assert!(
            !l.contains("fatal: FORGED\"") || l.contains(FORGED_MASKED),
            "{what}: forged line {l:?}"
        );
        assert!(
            !l.starts_with("postfix/tlsmgr[1]") && !l.contains('\r') && !l.contains('\u{1b}'),
            "{what}: forged or raw line {l:?}"
        );
    }
    for want in [FORGED_MASKED, ATTRIBUTE_MASKED] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "{what}: no {want:?} in {lines:#?}"
        );
    }
}

#[test]
fn forged_lines_are_masked_in_the_captured_log() {
    let d = TestDaemon::start("");
    send_forgeries(&d.socket);
    let text = d.log.text();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_masked("memory log", &lines);
    // Exactly one line per warning: nothing split.
    assert_eq!(
        lines.iter().filter(|l| l.contains("FORGED")).count(),
        1,
        "{text}"
    );
}

#[test]
fn forged_lines_are_masked_in_syslog_and_on_stderr() {
    if !stock::available() {
        return;
    }
    let logdir = tempfile::tempdir().unwrap();
    let sock_path = logdir.path().join("log");
    let sock = SyslogReader::bind(&sock_path);
    let env = [("TLSMGR_TEST_SYSLOG_PATH", sock_path.to_str().unwrap())];
    let mut d = MasterChild::start_env(OURS, &["-l", "-t", "unix", "-V"], "", &env);
    send_forgeries(&d.socket);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    let syslog = sock.finish();
    // Each datagram is one record: none may hold a line break.
    assert!(syslog.iter().all(|l| !l.contains('\n')), "{syslog:#?}");
    assert_masked("syslog", &syslog);
    let stderr: Vec<String> = err.lines().map(str::to_string).collect();
    assert_masked("stderr", &stderr);
}

#[test]
fn forged_lines_are_masked_in_the_postlog_records() {
    if !stock::available() {
        return;
    }
    let logdir = tempfile::tempdir().unwrap();
    let sock_path = logdir.path().join("postlog");
    let sock = SyslogReader::bind(&sock_path);
    let env = [
        ("POSTLOG_SERVICE", sock_path.to_str().unwrap()),
        ("POSTLOG_HOSTNAME", "mx.example"),
    ];
    let extra = format!("maillog_file = {}/maillog", logdir.path().display());
    let mut d = MasterChild::start_env(OURS, &["-l", "-t", "unix"], &extra, &env);
    send_forgeries(&d.socket);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    let records = sock.finish();
    assert!(
        records.iter().any(|l| l.contains(" mx postfix/tlsmgr[")),
        "{records:#?}"
    );
    assert!(records.iter().all(|l| !l.contains('\n')), "{records:#?}");
    assert_masked("postlog", &records);
}
