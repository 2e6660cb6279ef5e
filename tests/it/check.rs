//! `tlsmgr check`: prints every parameter's effective value like postconf,
//! and fails with `file, line N: ...` on a bad configuration.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn check(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsmgr"))
        .arg("check")
        .arg("-c")
        .arg(dir)
        .args(args)
        .env_remove("MAIL_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn prints_effective_values() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("main.cf"),
        "data_directory = /srv/pf\nsmtpd_tls_session_cache_timeout = 2h\n\
         smtpd_tls_session_cache_database = btree:${data_directory}/s\n\
         smtpd_tls_session_cache_timeout = 7200\n",
    )
    .unwrap();
    let (ok, out, err) = check(
        tmp.path(),
        &["-o", "smtp_tls_loglevel=${{1} < {2}?{cache}}"],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        format!("config_directory = {}", tmp.path().display()),
        "tls_random_exchange_name = /srv/pf/prng_exch".to_string(),
        "smtpd_tls_session_cache_database = btree:/srv/pf/s".to_string(),
        "smtpd_tls_session_cache_timeout = 7200".to_string(),
        "smtp_tls_loglevel = cache".to_string(),
        "tlsmgr_ticket_key_file = /srv/pf/tlsmgr_ticket_keys".to_string(),
    ] {
        assert!(lines.contains(&want.as_str()), "missing {want:?} in\n{out}");
    }
    assert!(
        err.contains(
            "main.cf, line 4: overriding earlier entry: smtpd_tls_session_cache_timeout=2h"
        ),
        "{err}"
    );
}

#[test]
fn bad_values_fail_with_file_line_and_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let main_cf = tmp.path().join("main.cf");
    for (text, msg) in [
        (
            "a = 1\nsmtpd_tls_session_cache_timeout = 1y\n",
            "line 2: parameter smtpd_tls_session_cache_timeout: bad time value or unit: 1y",
        ),
        (
            "tls_random_bytes = 0\n",
            "line 1: invalid tls_random_bytes parameter value 0 < 1",
        ),
        (
            "\n\nnot an assignment\n",
            "line 3: missing '=' after attribute name",
        ),
        (
            "x = 1\nsyslog_name = ${x?{a} junk}\n",
            "line 2: parameter syslog_name: macro processing error",
        ),
    ] {
        std::fs::write(&main_cf, text).unwrap();
        let (ok, out, err) = check(tmp.path(), &[]);
        assert!(!ok, "accepted {text:?}: {out}");
        assert!(
            err.contains(&format!("tlsmgr: fatal: {}, {msg}", main_cf.display())),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn mail_config_locates_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("main.cf"), "mail_owner = someone\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tlsmgr"))
        .arg("check")
        .env("MAIL_CONFIG", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("mail_owner = someone\n"));
}

/// Regression: a valid main.cf whose values double at each line (~270 MB
/// expanded) is refused quickly, naming file, line and parameter.
#[test]
fn exponential_expansion_fails_with_file_line_and_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let main_cf = tmp.path().join("main.cf");
    let mut text = format!("p0 = {}\n", "x".repeat(256));
    for n in 1..=20 {
        text += &format!("p{n} = $p{m} $p{m}\n", m = n - 1);
    }
    text += "smtpd_tls_loglevel = $p20\n";
    std::fs::write(&main_cf, text).unwrap();
    let t = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tlsmgr"))
        .arg("check")
        .arg("-c")
        .arg(tmp.path())
        .env_remove("MAIL_CONFIG")
        .output()
        .unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(1), "{:?}", out.status);
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end(),
        format!(
            "tlsmgr: fatal: {}, line 22: parameter smtpd_tls_loglevel: macro processing error: \
             unreasonable macro expansion length: more than 1048576 bytes",
            main_cf.display()
        )
    );
}

/// Issue 11: `check` says where the state is on disk, following master.cf:
/// chrooted as Debian ships it, the stores and key file are kept at the
/// same path below queue_directory; unchrooted, where configured; a place
/// among the jail's system directories is refused as at start.
#[test]
fn prints_where_the_state_is_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("main.cf"),
        "queue_directory = /var/spool/postfix\ndata_directory = /var/lib/postfix\n\
         smtpd_tls_session_cache_database = btree:${data_directory}/smtpd_scache\n\
         smtp_tls_session_cache_database = btree:/var/spool/postfix/tls/smtp_scache\n",
    )
    .unwrap();
    let master_cf = tmp.path().join("master.cf");
    let on_disk = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("#   "))
            .map(|l| l[4..].to_string())
            .collect()
    };

    // No master.cf: as `serve` uses them.
    let (ok, out, err) = check(tmp.path(), &[]);
    assert!(ok, "{err}");
    assert!(out.contains("# on disk (no tlsmgr service in"), "{out}");
    assert_eq!(
        on_disk(&out),
        [
            "smtpd_tls_session_cache_database: /var/lib/postfix/smtpd_scache.fjall",
            "smtp_tls_session_cache_database: /var/spool/postfix/tls/smtp_scache.fjall",
            "tlsmgr_ticket_key_file: /var/lib/postfix/tlsmgr_ticket_keys",
        ]
    );

    // Debian's master.cf: chrooted.
    std::fs::write(
        &master_cf,
        "# a comment\nsmtp      inet  n       -       y       -       -       smtpd\n\
         tlsmgr    unix  -       -       y       1000?   1       tlsmgr\n",
    )
    .unwrap();
    let (ok, out, err) = check(tmp.path(), &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("master.cf, line 3: tlsmgr chrooted into /var/spool/postfix):"),
        "{out}"
    );
    assert_eq!(
        on_disk(&out),
        [
            "smtpd_tls_session_cache_database: /var/spool/postfix/var/lib/postfix/smtpd_scache.fjall",
            "smtp_tls_session_cache_database: /var/spool/postfix/tls/smtp_scache.fjall",
            "tlsmgr_ticket_key_file: /var/spool/postfix/var/lib/postfix/tlsmgr_ticket_keys",
        ]
    );

    // Upstream's master.cf: not chrooted, paths as configured.
    std::fs::write(
        &master_cf,
        "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n",
    )
    .unwrap();
    let (ok, out, _) = check(tmp.path(), &[]);
    assert!(ok);
    assert!(out.contains("tlsmgr not chrooted"), "{out}");
    assert_eq!(
        on_disk(&out)[0],
        "smtpd_tls_session_cache_database: /var/lib/postfix/smtpd_scache.fjall"
    );

    // Chrooted, with the key file under the jail's etc/: refused.
    std::fs::write(
        &master_cf,
        "tlsmgr    unix  -       -       y       1000?   1       tlsmgr\n",
    )
    .unwrap();
    let (ok, _, err) = check(
        tmp.path(),
        &["-o", "tlsmgr_ticket_key_file=/etc/postfix/keys"],
    );
    assert!(!ok);
    assert!(
        err.contains("fatal: parameter tlsmgr_ticket_key_file: /etc/postfix/keys would be kept at /var/spool/postfix/etc/postfix/keys"),
        "{err}"
    );
}

/// `$default_cache_db_type` (Postfix 3.11's documented prefix for cache
/// paths) expands to `btree`, or to the administrator's own value, and the
/// cache lands where the same path with `btree:` would.
#[test]
fn default_cache_db_type_expands() {
    let tmp = tempfile::tempdir().unwrap();
    let main_cf = tmp.path().join("main.cf");
    let on_disk = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("#   smtpd_"))
            .map(|l| l[4..].to_string())
            .collect()
    };
    for (own, want) in [("", "btree"), ("default_cache_db_type = lmdb\n", "lmdb")] {
        std::fs::write(
            &main_cf,
            format!(
                "{own}data_directory = /var/lib/postfix\n\
                 smtpd_tls_session_cache_database = \
                 $default_cache_db_type:${{data_directory}}/smtpd_scache\n"
            ),
        )
        .unwrap();
        let (ok, out, err) = check(tmp.path(), &[]);
        assert!(ok, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        for line in [
            format!("default_cache_db_type = {want}"),
            format!("smtpd_tls_session_cache_database = {want}:/var/lib/postfix/smtpd_scache"),
        ] {
            assert!(lines.contains(&line.as_str()), "missing {line:?} in\n{out}");
        }
        assert_eq!(
            on_disk(&out),
            ["smtpd_tls_session_cache_database: /var/lib/postfix/smtpd_scache.fjall"],
            "{out}"
        );
    }
}

/// Each value set in a file is preceded by the file and line it came
/// from; main.cf and tlsmgr.cf are both read; a default has no note.
#[test]
fn notes_the_file_each_value_came_from() {
    let tmp = tempfile::tempdir().unwrap();
    let main_cf = tmp.path().join("main.cf");
    let tlsmgr_cf = tmp.path().join("tlsmgr.cf");
    std::fs::write(&main_cf, "# Postfix's\ndata_directory = /srv/pf\n").unwrap();
    std::fs::write(
        &tlsmgr_cf,
        "# ours\n\ntlsmgr_ticket_key_file = ${data_directory}/keys\n",
    )
    .unwrap();
    let (ok, out, err) = check(tmp.path(), &["-o", "tlsmgr_shared_site=mx"]);
    assert!(ok, "{err}");
    assert!(err.is_empty(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let before = |line: &str| -> Option<&str> {
        let at = lines.iter().position(|l| *l == line)?;
        Some(if at == 0 { "" } else { lines[at - 1] })
    };
    assert_eq!(
        before("data_directory = /srv/pf").unwrap(),
        format!("# from {}, line 2", main_cf.display())
    );
    assert_eq!(
        before("tlsmgr_ticket_key_file = /srv/pf/keys").unwrap(),
        format!("# from {}, line 3", tlsmgr_cf.display())
    );
    assert_eq!(before("tlsmgr_shared_site = mx").unwrap(), "# from -o");
    assert!(!before("mail_owner = postfix")
        .unwrap()
        .starts_with("# from"));
    // An error in tlsmgr.cf names it.
    std::fs::write(&tlsmgr_cf, "tlsmgr_io_threads = 1000\n").unwrap();
    let (ok, _, err) = check(tmp.path(), &[]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "tlsmgr: fatal: {}, line 1: invalid tlsmgr_io_threads parameter value 1000 > 256",
            tlsmgr_cf.display()
        )),
        "{err}"
    );
}
