//! Postfix's own tools stay quiet about our parameters when they are where
//! tlsmgr-rs(8) says to put them, tlsmgr.cf: the real `postconf -c DIR -n`,
//! `postconf -c DIR -M` and `postfix -c DIR check` print no warning for a
//! configuration directory with our parameters in tlsmgr.cf and Debian's
//! master.cf line for tlsmgr. The same parameters in main.cf, or as `-o` on
//! the tlsmgr line of master.cf, make them warn `unused parameter`, which
//! is what tlsmgr.cf is for (and shows that this test can fail). Needs
//! Debian's `postfix` package; `postfix check` also needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const POSTCONF: &str = "/usr/sbin/postconf";
const POSTFIX: &str = "/usr/sbin/postfix";

fn available() -> bool {
    let ok = Path::new(POSTCONF).exists() && Path::new(POSTFIX).exists();
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install Debian's postfix package ({POSTCONF}, {POSTFIX})");
    }
    if !ok {
        eprintln!("skipping: {POSTCONF} or {POSTFIX} not installed");
    }
    ok
}

fn root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

const MAIN_CF: &str = "compatibility_level = 3.6\n\
    smtpd_tls_session_cache_database = btree:${data_directory}/smtpd_scache\n\
    smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache\n";

/// Ours, as a user would set them (one refers to a Postfix parameter).
const OURS: &str = "tlsmgr_session_cache_max_entries = 50000\n\
    tlsmgr_ticket_key_file = ${data_directory}/tlsmgr_ticket_keys\n\
    tlsmgr_stats_log_interval = 1h\n";

/// Debian's master.cf line for tlsmgr, after an smtpd.
const MASTER_CF: &str = "smtp      inet  n       -       y       -       -       smtpd\n\
    tlsmgr    unix  -       -       y       1000?   1       tlsmgr\n";

/// A configuration directory of these three files (`tlsmgr_cf`: `None`
/// makes none).
fn config_dir(main_cf: &str, master_cf: &str, tlsmgr_cf: Option<&str>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("main.cf"), main_cf).unwrap();
    std::fs::write(tmp.path().join("master.cf"), master_cf).unwrap();
    if let Some(text) = tlsmgr_cf {
        std::fs::write(tmp.path().join("tlsmgr.cf"), text).unwrap();
    }
    tmp
}

/// Runs `program -c DIR args` and returns its stderr (it must succeed).
fn stderr_of(program: &str, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .arg("-c")
        .arg(dir)
        .args(args)
        .env_remove("MAIL_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{program} -c DIR {args:?}: {err}");
    err
}

/// What postconf -n, postconf -M and (as root) postfix check print on stderr.
fn postfix_says(dir: &Path) -> Vec<(&'static str, String)> {
    let mut said = vec![
        ("postconf -n", stderr_of(POSTCONF, dir, &["-n"])),
        ("postconf -M", stderr_of(POSTCONF, dir, &["-M"])),
    ];
    if root() {
        said.push(("postfix check", stderr_of(POSTFIX, dir, &["check"])));
    } else {
        eprintln!("not root: postfix check not run");
    }
    said
}

#[test]
fn ours_in_tlsmgr_cf_make_postfix_print_no_warning() {
    if !available() {
        return;
    }
    let tmp = config_dir(MAIN_CF, MASTER_CF, Some(OURS));
    for (what, err) in postfix_says(tmp.path()) {
        assert!(!err.contains("warning"), "{what}: {err}");
    }
    // And tlsmgr reads them from there.
    let out = Command::new(env!("CARGO_BIN_EXE_tlsmgr"))
        .args(["check", "-c"])
        .arg(tmp.path())
        .env_remove("MAIL_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("tlsmgr_session_cache_max_entries = 50000\n"));
}

#[test]
fn ours_in_main_cf_make_postfix_warn_unused_parameter() {
    if !available() {
        return;
    }
    let tmp = config_dir(&format!("{MAIN_CF}{OURS}"), MASTER_CF, None);
    for (what, err) in postfix_says(tmp.path()) {
        if what == "postconf -M" {
            // It reports on master.cf only.
            continue;
        }
        assert!(
            err.contains("main.cf: unused parameter: tlsmgr_session_cache_max_entries=50000"),
            "{what}: {err}"
        );
    }
}

#[test]
fn ours_as_master_cf_overrides_make_postfix_warn_unused_parameter() {
    if !available() {
        return;
    }
    let master_cf = format!("{MASTER_CF}  -o tlsmgr_session_cache_max_entries=50000\n");
    let tmp = config_dir(MAIN_CF, &master_cf, None);
    for (what, err) in postfix_says(tmp.path()) {
        assert!(
            err.contains("master.cf: unused parameter: tlsmgr_session_cache_max_entries=50000"),
            "{what}: {err}"
        );
    }
}
