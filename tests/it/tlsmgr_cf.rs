//! tlsmgr.cf: our own `tlsmgr_*` parameters beside main.cf, where Postfix
//! does not read them. Its edits apply live like main.cf's (also when it
//! appears or goes away), an invalid edit is refused with one warning
//! naming file, line and parameter, our parameters left in main.cf keep
//! working with one note per start and reload, and tlsmgr.cf wins over
//! main.cf. The in-process daemon of `common` for the reloads, a real
//! `tlsmgr serve` process for what is logged at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;
use crate::common::serve;

use common::*;
use serve::ServeProcess;
use std::path::Path;
use std::time::Duration;

/// Replaces `name` in `dir` the way editors and `postconf -e` do: a new
/// file, then a rename.
fn save(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn max_entries(d: &TestDaemon) -> u64 {
    d.services().config.load().max_entries
}

/// Lines of `text` that contain `needle`.
fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn tlsmgr_cf_edits_apply_live_as_it_appears_changes_and_goes() {
    let d = TestDaemon::start_watched("");
    assert_eq!(max_entries(&d), 100_000);
    // Appears.
    save(
        &d.dir,
        "tlsmgr.cf",
        "tlsmgr_session_cache_max_entries = 5\n",
    );
    assert!(eventually(|| max_entries(&d) == 5), "{}", d.log.text());
    assert!(
        eventually(|| reload_lines(&d)
            .last()
            .is_some_and(|l| l.ends_with("reload: tlsmgr_session_cache_max_entries 100000 -> 5"))),
        "{}",
        d.log.text()
    );
    // Written in place, with a Postfix parameter that belongs in main.cf:
    // ignored, with one warning naming the file, line and parameter.
    std::fs::write(
        d.dir.join("tlsmgr.cf"),
        "# ours\ntlsmgr_session_cache_max_entries = 7\n\
         data_directory = /elsewhere\n",
    )
    .unwrap();
    assert!(eventually(|| max_entries(&d) == 7), "{}", d.log.text());
    let want = format!(
        "warning: {}, line 3: data_directory belongs in main.cf, where Postfix reads it \
         (tlsmgr.cf holds only tlsmgr_* parameters) -- ignored",
        d.dir.join("tlsmgr.cf").display()
    );
    assert!(
        eventually(|| count(&d.log.text(), &want) == 1),
        "{}",
        d.log.text()
    );
    assert_eq!(
        d.services().config.load().data_directory,
        d.dir.join("data")
    );
    // Goes: our parameters are back at their defaults.
    std::fs::remove_file(d.dir.join("tlsmgr.cf")).unwrap();
    assert!(
        eventually(|| max_entries(&d) == 100_000),
        "{}",
        d.log.text()
    );
    assert_eq!(reload_lines(&d).len(), 3, "{}", d.log.text());
    // `$name` in tlsmgr.cf sees main.cf's parameters.
    save(
        &d.dir,
        "tlsmgr.cf",
        "tlsmgr_ticket_key_file = ${data_directory}/moved_keys\n",
    );
    assert!(
        eventually(
            || d.services().config.load().ticket_key_file == Some(d.dir.join("data/moved_keys"))
        ),
        "{}",
        d.log.text()
    );
}

#[test]
fn invalid_tlsmgr_cf_edit_keeps_the_last_good_configuration_with_one_warning() {
    let d = TestDaemon::start_watched("");
    save(
        &d.dir,
        "tlsmgr.cf",
        "tlsmgr_session_cache_max_entries = 5\n",
    );
    assert!(eventually(|| max_entries(&d) == 5), "{}", d.log.text());
    save(
        &d.dir,
        "tlsmgr.cf",
        "tlsmgr_stats_log_interval = 1h\ntlsmgr_session_cache_max_entries = lots\n",
    );
    let want = format!(
        "warning: {}, line 2: bad numerical configuration: \
         tlsmgr_session_cache_max_entries = lots -- keeping the current configuration",
        d.dir.join("tlsmgr.cf").display()
    );
    assert!(
        eventually(|| d.log.text().contains(&want)),
        "{}",
        d.log.text()
    );
    // Read by others, and quiet for several debounce periods: still one
    // warning, and nothing of the bad file applied, not even its valid line.
    for _ in 0..3 {
        std::fs::read(d.dir.join("tlsmgr.cf")).unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    let text = d.log.text();
    assert_eq!(count(&text, "warning:"), 1, "{text}");
    assert_eq!(max_entries(&d), 5);
    assert_eq!(
        d.services().config.load().stats_log_interval,
        Duration::ZERO
    );
    assert_eq!(reload_lines(&d).len(), 1, "{text}");
    // Fixed: applied.
    save(
        &d.dir,
        "tlsmgr.cf",
        "tlsmgr_stats_log_interval = 1h\ntlsmgr_session_cache_max_entries = 9\n",
    );
    assert!(eventually(|| max_entries(&d) == 9), "{}", d.log.text());
    assert_eq!(
        d.services().config.load().stats_log_interval,
        Duration::from_secs(3600)
    );
}

/// main.cf for a `tlsmgr serve` process in `dir`, plus `extra`.
fn serve_main_cf(dir: &Path, extra: &str) -> String {
    format!(
        "queue_directory = {d}\ndata_directory = {d}/data\n\
         smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n{extra}",
        d = dir.display()
    )
}

#[test]
fn ours_left_in_main_cf_work_with_one_note_per_start_and_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let admin = dir.join("legacy.admin");
    let legacy = format!(
        "tlsmgr_admin_socket = {}\ntlsmgr_stats_log_interval = 1h\n",
        admin.display()
    );
    std::fs::write(dir.join("main.cf"), serve_main_cf(dir, &legacy)).unwrap();
    let daemon = ServeProcess::start(dir, ServeProcess::NO_ENV);
    // The main.cf value is used: the admin socket is where it says.
    assert!(admin.exists(), "{}", daemon.log_text());
    let note = format!(
        "{}: tlsmgr_admin_socket (line 4), tlsmgr_stats_log_interval (line 5): Postfix warns \
         that these parameters are unused; move them to {}",
        dir.join("main.cf").display(),
        dir.join("tlsmgr.cf").display()
    );
    let log = daemon.log_text();
    assert_eq!(count(&log, &note), 1, "{log}");
    assert_eq!(count(&log, "warning:"), 0, "a note, not a warning: {log}");
    // Requests log no more of it.
    let mut c = daemon.client();
    for _ in 0..20 {
        update(&mut c, "smtpd", "id", b"s");
        lookup(&mut c, "smtpd", "id");
    }
    // A reload logs it once more, with its reload line.
    save(
        dir,
        "main.cf",
        &serve_main_cf(
            dir,
            &format!("{legacy}smtpd_tls_session_cache_timeout = 7200\n"),
        ),
    );
    assert!(
        eventually(|| daemon
            .log_text()
            .contains("reload: smtpd_tls_session_cache_timeout")),
        "{}",
        daemon.log_text()
    );
    assert_eq!(count(&daemon.log_text(), &note), 2, "{}", daemon.log_text());
    daemon.stop();
}

#[test]
fn tlsmgr_cf_wins_over_main_cf_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let (theirs, ours) = (dir.join("main.admin"), dir.join("ours.admin"));
    std::fs::write(
        dir.join("main.cf"),
        serve_main_cf(
            dir,
            &format!("tlsmgr_admin_socket = {}\n", theirs.display()),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("tlsmgr.cf"),
        format!("# ours\ntlsmgr_admin_socket = {}\n", ours.display()),
    )
    .unwrap();
    let daemon = ServeProcess::start(dir, ServeProcess::NO_ENV);
    assert!(ours.exists() && !theirs.exists(), "{}", daemon.log_text());
    let want = format!(
        "warning: {}, line 2: tlsmgr_admin_socket is also set in {}, line 4; the value here \
         wins: delete the main.cf line",
        dir.join("tlsmgr.cf").display(),
        dir.join("main.cf").display()
    );
    let log = daemon.log_text();
    assert_eq!(count(&log, &want), 1, "{log}");
    // Overridden there, so not among the lines to move.
    assert!(!log.contains("move it to"), "{log}");
    daemon.stop();

    // tlsmgr check agrees, and says where the value came from.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlsmgr"))
        .args(["check", "-c"])
        .arg(dir)
        .env_remove("MAIL_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let note = format!("# from {}, line 2", dir.join("tlsmgr.cf").display());
    let value = format!("tlsmgr_admin_socket = {}", ours.display());
    assert!(stdout.contains(&format!("{note}\n{value}\n")), "{stdout}");
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains(&want["warning: ".len()..]));
}
