//! Redis passwords stay out of sight: `tlsmgr check` prints the
//! `tlsmgr_shared_store` URL with its password masked, and a real `tlsmgr
//! serve` process logs none either, at start, at a reload that changes the
//! URL and when the store cannot be reached (nothing listens at the URLs
//! used here). A symbolic link as the secret file is refused, saying why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::serve;

use serve::ServeProcess;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PASSWORDS: [&str; 3] = ["Pw1-first-secret", "Pw2-second-secret", "Pw3-sentinel"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn secret_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("shared.key");
    std::fs::write(&p, [7u8; 32]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn write_cf(dir: &Path, store: &str) {
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n\
             smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let tmp = dir.join("tlsmgr.cf.tmp");
    std::fs::write(
        &tmp,
        format!(
            "tlsmgr_shared_store = {store}\ntlsmgr_shared_secret_file = {}\n\
             tlsmgr_shared_connect_timeout = 1s\n",
            dir.join("shared.key").display()
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join("tlsmgr.cf")).unwrap();
}

fn check(dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsmgr"))
        .arg("check")
        .arg("-c")
        .arg(dir)
        .env_remove("MAIL_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn no_password(what: &str, text: &str) {
    for pw in PASSWORDS {
        assert!(!text.contains(pw), "{what} shows {pw}:\n{text}");
    }
}

#[test]
fn check_prints_no_password() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    secret_file(dir);
    for (url, shown) in [
        (
            format!("redis://tlsmgr:{}@127.0.0.1:6379/2", PASSWORDS[0]),
            "tlsmgr_shared_store = redis://tlsmgr:***@127.0.0.1:6379/2",
        ),
        (
            format!("rediss://:{}@redis.example:6380/0", PASSWORDS[1]),
            "tlsmgr_shared_store = rediss://:***@redis.example:6380/0",
        ),
        (
            format!("redis+sentinel://tlsmgr:{}@s1:26379,s2/mx/1", PASSWORDS[2]),
            "tlsmgr_shared_store = redis+sentinel://tlsmgr:***@s1:26379,s2/mx/1",
        ),
    ] {
        write_cf(dir, &url);
        let (ok, out, err) = check(dir);
        assert!(ok, "{err}");
        no_password("tlsmgr check", &out);
        no_password("tlsmgr check's stderr", &err);
        assert!(out.lines().any(|l| l == shown), "{out}");
    }
    // A URL that fails the check is not printed in clear either.
    write_cf(
        dir,
        &format!("redis+sentinel://u:{}@h:99999/mx", PASSWORDS[2]),
    );
    let (ok, out, err) = check(dir);
    assert!(!ok);
    no_password("a failed check", &format!("{out}{err}"));
    assert!(err.contains("redis+sentinel://u:***@h:99999/mx"), "{err}");
}

#[test]
fn the_log_shows_no_password_at_start_reload_and_connection_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    secret_file(dir);
    let (p1, p2) = (free_port(), free_port());
    write_cf(
        dir,
        &format!("redis://tlsmgr:{}@127.0.0.1:{p1}/0", PASSWORDS[0]),
    );
    let d = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !d.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The store does not answer: the failure is logged, with the URL.
    wait_for(&format!("redis://tlsmgr:***@127.0.0.1:{p1}"));
    // A reload that changes the URL (and its password).
    write_cf(
        dir,
        &format!("redis://tlsmgr:{}@127.0.0.1:{p2}/0", PASSWORDS[1]),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(d.pid()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(&format!(
        "tlsmgr_shared_store redis://tlsmgr:***@127.0.0.1:{p1}/0 -> redis://tlsmgr:***@127.0.0.1:{p2}/0"
    ));
    wait_for(&format!("redis://tlsmgr:***@127.0.0.1:{p2}/0:"));
    // A Sentinel URL with a password fails as quietly.
    write_cf(
        dir,
        &format!("redis+sentinel://tlsmgr:{}@127.0.0.1:{p1}/mx", PASSWORDS[2]),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(d.pid()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for("redis+sentinel://tlsmgr:***@127.0.0.1");
    std::thread::sleep(Duration::from_secs(1));
    let text = d.log_text();
    d.stop();
    no_password("the daemon's log", &text);
}

#[test]
fn a_symlinked_secret_file_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let real = secret_file(dir);
    write_cf(dir, "redis://127.0.0.1:1/0");
    std::fs::remove_file(dir.join("shared.key")).unwrap();
    let elsewhere = dir.join("real.key");
    std::fs::write(&elsewhere, [7u8; 32]).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &real).unwrap();
    // The daemon reads the secret at start (`tlsmgr check` does not).
    // Bounded: a daemon that accepted the link would go on serving.
    let out = serve::run_to_exit(dir, serve::ServeProcess::NO_ENV, Duration::from_secs(15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is a symbolic link, not a regular file (links are not followed"),
        "{err}"
    );
}
