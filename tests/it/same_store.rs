//! One store under two spellings (`..`, a symbolic link) for two cache
//! types: refused by where the paths lead, not by their text, with an error
//! naming both parameters. Fatal at start; on a reload a warning, and the
//! last good configuration stays. (It used to be accepted: the second cache
//! then failed on the first one's lock, logged as "locked by another
//! process", while `policy` still said cachable.)
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;

use common::*;
use std::time::Duration;
use tlsmgr::protocol::{Reply, Request, Status};

fn policy(d: &TestDaemon, ct: &str) -> Reply {
    d.client()
        .request(&Request::Policy { cache_type: b(ct) })
        .unwrap()
}

fn save(d: &TestDaemon, extra: &str) {
    let tmp = d.dir.join("main.cf.tmp");
    std::fs::write(&tmp, d.main_cf_with(extra)).unwrap();
    std::fs::rename(&tmp, d.dir.join("main.cf")).unwrap();
}

/// The warning a reload to `lmtp = SPELLING` (line 6 of main.cf) logs.
fn refused(d: &TestDaemon, spelling: &str) -> String {
    let place = std::fs::canonicalize(d.dir.join("data"))
        .unwrap()
        .join("smtpd_scache.fjall");
    format!(
        "warning: {}, line 6: do not use the same TLS cache file for smtpd_tls_session_cache_database (btree:{d}/data/smtpd_scache) and lmtp_tls_session_cache_database ({spelling}): both are stored in {} -- keeping the current configuration",
        d.dir.join("main.cf").display(),
        place.display(),
        d = d.dir.display(),
    )
}

#[test]
fn a_reload_to_a_second_spelling_is_refused_and_the_last_good_config_stays() {
    let d = TestDaemon::start_watched("");
    std::os::unix::fs::symlink(d.dir.join("data"), d.dir.join("alias")).unwrap();
    let mut c = d.client();
    assert_eq!(update(&mut c, "smtpd", "id", b"s").status(), Status::Ok);
    let lmtp_off = Reply::Policy {
        status: Status::Ok,
        cachable: false,
        timeout: 3600,
    };
    assert_eq!(policy(&d, "lmtp"), lmtp_off);
    for (n, spelling) in [
        format!("btree:{}/data/../data/smtpd_scache", d.dir.display()),
        format!("btree:{}/alias/smtpd_scache", d.dir.display()),
    ]
    .into_iter()
    .enumerate()
    {
        save(&d, &format!("lmtp_tls_session_cache_database = {spelling}"));
        let want = refused(&d, &spelling);
        assert!(
            eventually(|| d.log.text().matches(&want).count() == 1),
            "{}",
            d.log.text()
        );
        assert_eq!(
            d.log.text().matches("warning:").count(),
            n + 1,
            "{}",
            d.log.text()
        );
        // Nothing applied: lmtp still has no cache, smtpd's is untouched,
        // and no store was opened twice.
        assert!(reload_lines(&d).is_empty(), "{}", d.log.text());
        assert_eq!(policy(&d, "lmtp"), lmtp_off);
        assert_eq!(lookup(&mut c, "smtpd", "id"), hit(b"s"));
        assert!(!d.log.text().contains("locked"), "{}", d.log.text());
    }
    // A real second store is accepted.
    save(
        &d,
        &format!(
            "lmtp_tls_session_cache_database = btree:{}/alias/lmtp_scache",
            d.dir.display()
        ),
    );
    assert!(
        eventually(|| matches!(policy(&d, "lmtp"), Reply::Policy { cachable: true, .. })),
        "{}",
        d.log.text()
    );
}

#[test]
fn a_second_spelling_at_start_is_fatal_naming_both_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("data")).unwrap();
    std::os::unix::fs::symlink(dir.join("data"), dir.join("alias")).unwrap();
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n\
             smtpd_tls_session_cache_database = btree:{d}/alias/scache\n\
             smtp_tls_session_cache_database = btree:{d}/data/scache\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let socket = dir.join("tlsmgr.sock");
    // Bounded: the old code went on serving (and never exited).
    let out = crate::common::serve::run_to_exit_with(
        dir,
        crate::common::serve::ServeProcess::NO_ENV,
        Duration::from_secs(10),
        |cmd| {
            cmd.arg("--socket").arg(&socket);
        },
    );
    let (status, err) = (out.status, String::from_utf8_lossy(&out.stderr));
    println!("{err}");
    assert!(!status.success(), "{err}");
    let place = std::fs::canonicalize(dir.join("data"))
        .unwrap()
        .join("scache.fjall");
    let want = format!(
        "fatal: {}, line 4: do not use the same TLS cache file for smtpd_tls_session_cache_database (btree:{d}/alias/scache) and smtp_tls_session_cache_database (btree:{d}/data/scache): both are stored in {}",
        dir.join("main.cf").display(),
        place.display(),
        d = dir.display()
    );
    assert!(err.contains(&want), "{err}");
    // Refused before anything was opened or bound.
    assert!(!socket.exists());
    assert!(!dir.join("data/scache.fjall").exists());
}
