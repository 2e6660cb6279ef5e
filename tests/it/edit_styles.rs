//! main.cf edited the ways people edit it: vim (real vim when installed,
//! its write-by-rename sequence otherwise), `sed -i`, `postconf -e`,
//! truncate-then-write in two steps, and a main.cf that is a symlink
//! switched or edited by a configuration tool. Each edit ends in exactly one
//! reload, of the final content.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tlsmgr::protocol::{Reply, Request, Status};

fn smtpd_timeout(d: &TestDaemon) -> Option<u32> {
    match d.client().request(&Request::Policy {
        cache_type: b("smtpd"),
    }) {
        Ok(Reply::Policy {
            status: Status::Ok,
            timeout,
            ..
        }) => Some(timeout),
        _ => None,
    }
}

/// Waits for the timeout to reach `want`, then for things to settle, and
/// checks that exactly one reload happened, changing exactly that.
fn exactly_one_reload_to(d: &TestDaemon, want: u32) {
    assert!(
        eventually(|| smtpd_timeout(d) == Some(want)),
        "{}",
        d.log.text()
    );
    // Give a second (delayed) reload every chance to show up.
    std::thread::sleep(Duration::from_millis(1500));
    let lines = reload_lines(d);
    assert_eq!(lines.len(), 1, "{}", d.log.text());
    assert!(
        lines[0].ends_with(&format!(
            "reload: smtpd_tls_session_cache_timeout 3600s -> {want}"
        )),
        "{}",
        lines[0]
    );
    assert_eq!(smtpd_timeout(d), Some(want));
}

const LINE: &str = "smtpd_tls_session_cache_timeout = 3600s";

/// The first of `names` installed; in CI a missing tool is a failure.
fn tool(names: &[&str]) -> Option<String> {
    let found = names
        .iter()
        .flat_map(|n| ["/usr/bin/", "/usr/sbin/", "/bin/"].map(|p| format!("{p}{n}")))
        .find(|p| Path::new(p).exists());
    if found.is_none() && std::env::var_os("CI").is_some() {
        panic!("CI must install one of {names:?}");
    }
    found
}

#[test]
fn vim() {
    let d = TestDaemon::start_watched(LINE);
    let main_cf = d.dir.join("main.cf");
    match tool(&["vim", "vim.tiny"]) {
        Some(vim) => {
            // Real vim, ex mode, with its usual write-by-rename behaviour.
            let st = Command::new(vim)
                .args(["-u", "NONE", "-i", "NONE", "-N", "-es"])
                .args(["-c", "set backupcopy=no writebackup nobackup"])
                .args(["-c", "%s/= 3600s/= 7200/", "-c", "wq"])
                .arg(&main_cf)
                .stdin(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        }
        None => {
            // vim's sequence: probe file, move the original aside, write the
            // new file in several writes, remove the backup.
            std::fs::write(d.dir.join("4913"), "").unwrap();
            std::fs::remove_file(d.dir.join("4913")).unwrap();
            let text = std::fs::read_to_string(&main_cf)
                .unwrap()
                .replace("= 3600s", "= 7200");
            std::fs::rename(&main_cf, d.dir.join("main.cf~")).unwrap();
            let mut f = std::fs::File::create(&main_cf).unwrap();
            for chunk in text.as_bytes().chunks(16) {
                f.write_all(chunk).unwrap();
                f.flush().unwrap();
            }
            drop(f);
            std::fs::remove_file(d.dir.join("main.cf~")).unwrap();
        }
    }
    exactly_one_reload_to(&d, 7200);
}

#[test]
fn sed_in_place() {
    let d = TestDaemon::start_watched(LINE);
    let sed = tool(&["sed"]).unwrap();
    let st = Command::new(sed)
        .arg("-i")
        .arg("s/= 3600s/= 5400/")
        .arg(d.dir.join("main.cf"))
        .status()
        .unwrap();
    assert!(st.success());
    exactly_one_reload_to(&d, 5400);
}

#[test]
fn postconf_e() {
    let d = TestDaemon::start_watched(LINE);
    let Some(postconf) = tool(&["postconf"]) else {
        return;
    };
    let st = Command::new(postconf)
        .arg("-c")
        .arg(&d.dir)
        .arg("-e")
        .arg("smtpd_tls_session_cache_timeout=1800")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    exactly_one_reload_to(&d, 1800);
}

#[test]
fn truncate_then_write_later() {
    let d = TestDaemon::start_watched(LINE);
    let main_cf = d.dir.join("main.cf");
    let text = std::fs::read_to_string(&main_cf)
        .unwrap()
        .replace("= 3600s", "= 900");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&main_cf)
        .unwrap();
    // Longer than the debounce: the empty file is seen, and must not apply.
    assert!(eventually(|| d.log.text().contains("is empty -- keeping")));
    assert_eq!(smtpd_timeout(&d), Some(3600));
    f.write_all(text.as_bytes()).unwrap();
    drop(f);
    exactly_one_reload_to(&d, 900);
}

#[test]
fn symlink_switched_and_target_edited() {
    let d = TestDaemon::start_watched(LINE);
    let store = d.dir.join("cfgstore");
    std::fs::create_dir(&store).unwrap();
    let main_cf = d.dir.join("main.cf");
    let original = std::fs::read_to_string(&main_cf).unwrap();
    // A configuration tool's layout: main.cf -> cfgstore/main.cf.vN.
    std::fs::write(store.join("main.cf.v1"), &original).unwrap();
    let link = |target: &str| {
        let tmp = d.dir.join("main.cf.link");
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, &main_cf).unwrap();
    };
    link("cfgstore/main.cf.v1");
    // Same content through a link: no reload.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(reload_lines(&d).is_empty(), "{}", d.log.text());
    std::fs::write(
        store.join("main.cf.v2"),
        original.replace("= 3600s", "= 2400"),
    )
    .unwrap();
    link("cfgstore/main.cf.v2");
    exactly_one_reload_to(&d, 2400);
    // The tool edits the target in place (another directory): followed too.
    let tmp = store.join(".v2.tmp");
    std::fs::write(&tmp, original.replace("= 3600s", "= 4800")).unwrap();
    std::fs::rename(&tmp, store.join("main.cf.v2")).unwrap();
    assert!(
        eventually(|| smtpd_timeout(&d) == Some(4800)),
        "{}",
        d.log.text()
    );
    assert_eq!(reload_lines(&d).len(), 2);
}

#[test]
fn a_last_line_still_being_written_is_not_applied() {
    let d = TestDaemon::start_watched(LINE);
    let main_cf = d.dir.join("main.cf");
    let full = std::fs::read_to_string(&main_cf)
        .unwrap()
        .replace("= 3600s", "= 7200");
    // The writer stops mid-line ("= 72" of "= 7200") for longer than the
    // debounce: the daemon sees a file without its final newline and waits.
    let cut = full.find("= 7200").unwrap() + "= 72".len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&main_cf)
        .unwrap();
    f.write_all(&full.as_bytes()[..cut]).unwrap();
    assert!(eventually(|| d.log.text().contains("no final newline yet")));
    f.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(f);
    // Never 72 (sanitized to 120): one reload, straight to the final value.
    exactly_one_reload_to(&d, 7200);
}

#[test]
fn a_complete_file_without_final_newline_is_applied() {
    let d = TestDaemon::start_watched(LINE);
    let main_cf = d.dir.join("main.cf");
    let text = std::fs::read_to_string(&main_cf)
        .unwrap()
        .replace("= 3600s", "= 600");
    let tmp = d.dir.join("main.cf.tmp");
    std::fs::write(&tmp, text.trim_end()).unwrap();
    std::fs::rename(&tmp, &main_cf).unwrap();
    exactly_one_reload_to(&d, 600);
}
