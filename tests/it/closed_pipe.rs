//! The printing commands (`check`, `stats`, `keys list`, `man`) on a
//! stdout whose reader has gone, as in `tlsmgr check | head -1`: they stop
//! quietly with their usual status, as other Unix tools do, and never
//! panic.
#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tlsmgr");

/// Runs `tlsmgr ARGS` with stdout a pipe whose read end is closed before
/// the command starts: its every write fails with EPIPE.
fn with_closed_stdout(args: &[&std::ffi::OsStr]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .env_remove("MAIL_CONFIG")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn assert_quiet_success(what: &str, out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(out.status.code(), Some(0), "{what}: {:?} {err}", out.status);
    assert!(!err.contains("fatal"), "{what}: {err}");
}

#[test]
fn check_and_man_stop_quietly_when_the_reader_has_gone() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("main.cf"), "data_directory = /srv/pf\n").unwrap();
    let check = with_closed_stdout(&["check".as_ref(), "-c".as_ref(), tmp.path().as_os_str()]);
    assert_quiet_success("check", &check);
    assert_quiet_success("man", &with_closed_stdout(&["man".as_ref()]));
}

#[test]
fn admin_commands_stop_quietly_when_the_reader_has_gone() {
    let d = TestDaemon::start("");
    let socket = d.admin_socket.as_os_str();
    for args in [
        ["stats".as_ref(), "--socket".as_ref(), socket].as_slice(),
        &[
            "stats".as_ref(),
            "--json".as_ref(),
            "--socket".as_ref(),
            socket,
        ],
        &[
            "stats".as_ref(),
            "--watch".as_ref(),
            "1".as_ref(),
            "--socket".as_ref(),
            socket,
        ],
        &[
            "keys".as_ref(),
            "--socket".as_ref(),
            socket,
            "list".as_ref(),
        ],
    ] {
        assert_quiet_success(&format!("{args:?}"), &with_closed_stdout(args));
    }
}
