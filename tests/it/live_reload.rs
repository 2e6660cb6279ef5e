//! Live reconfiguration by editing main.cf (no restart): new timeouts reach
//! `policy` replies, caches are disabled, enabled and moved, the bound is
//! lowered, and an invalid edit leaves the old configuration in force, all
//! while clients keep being served over the real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tlsmgr::protocol::{Reply, Request, Status};

/// Replaces main.cf the way `postconf -e` does: new file, then rename.
fn save(d: &TestDaemon, extra: &str) {
    let tmp = d.dir.join("main.cf.tmp");
    std::fs::write(&tmp, d.main_cf_with(extra)).unwrap();
    std::fs::rename(&tmp, d.dir.join("main.cf")).unwrap();
}

fn policy(c: &mut tlsmgr::client::Client, ct: &str) -> Reply {
    c.request(&Request::Policy { cache_type: b(ct) }).unwrap()
}

fn policy_is(d: &TestDaemon, ct: &str, cachable: bool, timeout: u32) -> bool {
    eventually(|| {
        policy(&mut d.client(), ct)
            == Reply::Policy {
                status: Status::Ok,
                cachable,
                timeout,
            }
    })
}

/// Whether the store for `btree:$data_directory/NAME` exists on disk.
fn store_exists(d: &TestDaemon, name: &str) -> bool {
    std::fs::read_dir(d.dir.join("data")).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{name}."))
    })
}

#[test]
fn timeout_change_reaches_policy_and_expiry() {
    let d = TestDaemon::start_watched("");
    let mut c = d.client();
    assert!(policy_is(&d, "smtpd", true, 3600));
    assert_eq!(
        update(&mut c, "smtpd", "id", b"s"),
        Reply::Status(Status::Ok)
    );
    save(&d, "smtpd_tls_session_cache_timeout = 7200");
    assert!(policy_is(&d, "smtpd", true, 7200), "{}", d.log.text());
    assert!(
        reload_lines(&d)
            .iter()
            .any(|l| l.ends_with("reload: smtpd_tls_session_cache_timeout 3600s -> 7200")),
        "{}",
        d.log.text()
    );
    // Expiry uses the new timeout: stale after 7200 s, not 3600 s.
    d.clock.advance(3601);
    assert_eq!(lookup(&mut c, "smtpd", "id"), hit(b"s"));
    d.clock.advance(3600);
    assert_eq!(lookup(&mut c, "smtpd", "id"), miss());
    // The same connection kept working throughout.
    assert_eq!(
        policy(&mut c, "smtpd"),
        Reply::Policy {
            status: Status::Ok,
            cachable: true,
            timeout: 7200
        }
    );
}

#[test]
fn invalid_edit_keeps_the_old_configuration_until_fixed() {
    let d = TestDaemon::start_watched("smtpd_tls_session_cache_timeout = 600");
    assert!(policy_is(&d, "smtpd", true, 600));
    save(
        &d,
        "smtpd_tls_session_cache_timeout = 900\nsmtp_tls_session_cache_timeout = 1y",
    );
    let main_cf = d.dir.join("main.cf");
    let want = format!(
        "warning: {}, line 7: parameter smtp_tls_session_cache_timeout: bad time value or unit: 1y -- keeping the current configuration",
        main_cf.display()
    );
    assert!(
        eventually(|| d.log.text().contains(&want)),
        "{}",
        d.log.text()
    );
    // Nothing of the bad file applied, not even its valid line.
    assert!(policy_is(&d, "smtpd", true, 600));
    assert!(reload_lines(&d).is_empty());
    save(&d, "smtpd_tls_session_cache_timeout = 900");
    assert!(policy_is(&d, "smtpd", true, 900));
    assert_eq!(reload_lines(&d).len(), 1, "{}", d.log.text());
}

#[test]
fn cache_disabled_then_enabled_live() {
    let d = TestDaemon::start_watched("");
    let mut c = d.client();
    assert_eq!(
        update(&mut c, "smtp", "kept", b"v"),
        Reply::Status(Status::Ok)
    );
    save(&d, "smtp_tls_session_cache_database =");
    assert!(policy_is(&d, "smtp", false, 3600));
    assert_eq!(
        update(&mut c, "smtp", "x", b"v"),
        Reply::Status(Status::Fail)
    );
    assert_eq!(
        lookup(&mut c, "smtp", "kept"),
        Reply::Lookup {
            status: Status::Fail,
            session: bytes::Bytes::new()
        }
    );
    // Back on the same store: the persistent entry is still there.
    save(&d, "");
    assert!(policy_is(&d, "smtp", true, 3600));
    assert!(eventually(
        || lookup(&mut d.client(), "smtp", "kept") == hit(b"v")
    ));
    // A zero timeout disables it too.
    save(&d, "smtp_tls_session_cache_timeout = 0");
    assert!(policy_is(&d, "smtp", false, 0));
}

#[test]
fn database_moved_opens_the_new_store_and_closes_the_old() {
    let d = TestDaemon::start_watched("");
    let mut c = d.client();
    assert_eq!(
        update(&mut c, "smtpd", "old", b"1"),
        Reply::Status(Status::Ok)
    );
    save(
        &d,
        "smtpd_tls_session_cache_database = btree:${data_directory}/moved_scache",
    );
    assert!(eventually(|| d
        .log
        .text()
        .contains("reload: smtpd_tls_session_cache_database")));
    assert!(eventually(|| store_exists(&d, "moved_scache")));
    let mut c = d.client();
    assert_eq!(lookup(&mut c, "smtpd", "old"), miss());
    assert_eq!(
        update(&mut c, "smtpd", "new", b"2"),
        Reply::Status(Status::Ok)
    );
    assert_eq!(lookup(&mut c, "smtpd", "new"), hit(b"2"));
    // Moving back reopens the first store (its lock was released) with its data.
    save(&d, "");
    assert!(eventually(
        || lookup(&mut d.client(), "smtpd", "old") == hit(b"1")
    ));
}

#[test]
fn lower_max_entries_evicts_down_to_the_bound() {
    let d = TestDaemon::start_watched("");
    let mut c = d.client();
    for i in 0..20 {
        d.clock.advance(1);
        assert_eq!(
            update(&mut c, "smtpd", &format!("id{i:02}"), b"s"),
            Reply::Status(Status::Ok)
        );
    }
    save(&d, "tlsmgr_session_cache_max_entries = 5");
    assert!(eventually(
        || lookup(&mut d.client(), "smtpd", "id00") == miss()
    ));
    let kept = (0..20)
        .filter(|i| lookup(&mut c, "smtpd", &format!("id{i:02}")) == hit(b"s"))
        .count();
    assert_eq!(kept, 5);
    assert_eq!(lookup(&mut c, "smtpd", "id19"), hit(b"s"), "newest kept");
}

#[test]
fn comment_only_edits_are_not_reloads_and_log_levels_follow() {
    let d = TestDaemon::start_watched("");
    // A comment-only edit changes nothing tlsmgr reads: not a reload.
    save(&d, "# just a comment");
    save(&d, "smtpd_tls_loglevel = 2");
    assert!(
        eventually(|| reload_lines(&d).len() == 1),
        "{}",
        d.log.text()
    );
    assert!(reload_lines(&d)[0].ends_with("reload: smtpd_tls_loglevel 0 -> 2"));
    // Cache logging follows the new level at once.
    assert!(!d.log.text().contains("put smtpd session id=after"));
    assert_eq!(
        update(&mut d.client(), "smtpd", "after", b"s"),
        Reply::Status(Status::Ok)
    );
    assert!(eventually(|| d
        .log
        .text()
        .contains("put smtpd session id=after")));
}

/// Clients run continuously while main.cf goes through every kind of change;
/// no request that should succeed fails, and no connection breaks.
#[test]
fn continuous_clients_see_no_failures_across_edits() {
    let d = TestDaemon::start_watched("");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (socket, stop, done, failures) = (
            d.socket.clone(),
            stop.clone(),
            done.clone(),
            failures.clone(),
        );
        workers.push(std::thread::spawn(move || {
            let mut c =
                tlsmgr::client::Client::connect(&socket, std::time::Duration::from_secs(30))
                    .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("w{w}-{n}");
                let fail = |what: String| failures.lock().unwrap().push(what);
                // smtpd is never disabled (only retimed and moved): every
                // update must succeed, every lookup must be answered OK/ERR.
                match c.request(&Request::Update {
                    cache_type: b("smtpd"),
                    cache_id: b(&id),
                    session: b("sess"),
                }) {
                    Ok(Reply::Status(Status::Ok)) => {}
                    other => fail(format!("update {id}: {other:?}")),
                }
                match c.request(&Request::Lookup {
                    cache_type: b("smtpd"),
                    cache_id: b(&id),
                }) {
                    Ok(Reply::Lookup {
                        status: Status::Ok | Status::Err,
                        ..
                    }) => {}
                    other => fail(format!("lookup {id}: {other:?}")),
                }
                match c.request(&Request::Policy {
                    cache_type: b("smtpd"),
                }) {
                    Ok(Reply::Policy {
                        status: Status::Ok,
                        cachable: true,
                        timeout: 3600 | 7200,
                    }) => {}
                    other => fail(format!("policy: {other:?}")),
                }
                // smtp is disabled for a while: OK, or FAIL while disabled.
                match c.request(&Request::Update {
                    cache_type: b("smtp"),
                    cache_id: b(&id),
                    session: b("sess"),
                }) {
                    Ok(Reply::Status(Status::Ok | Status::Fail)) => {}
                    other => fail(format!("smtp update {id}: {other:?}")),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let progress = |d: &TestDaemon| {
        let before = done.load(Ordering::SeqCst);
        assert!(
            eventually(|| done.load(Ordering::SeqCst) > before + 20),
            "{}",
            d.log.text()
        );
    };
    progress(&d);
    save(&d, "smtpd_tls_session_cache_timeout = 7200");
    assert!(policy_is(&d, "smtpd", true, 7200));
    progress(&d);
    save(
        &d,
        "smtpd_tls_session_cache_timeout = 7200\nsmtp_tls_session_cache_database =",
    );
    assert!(policy_is(&d, "smtp", false, 3600));
    progress(&d);
    save(&d, "smtpd_tls_session_cache_timeout = 7200");
    assert!(policy_is(&d, "smtp", true, 3600));
    progress(&d);
    save(
        &d,
        "smtpd_tls_session_cache_timeout = 7200\n\
         smtpd_tls_session_cache_database = btree:${data_directory}/moved",
    );
    assert!(eventually(|| store_exists(&d, "moved")));
    progress(&d);
    save(&d, "smtpd_tls_session_cache_timeout = 3600\nbroken line");
    assert!(eventually(|| d
        .log
        .text()
        .contains("missing '=' after attribute name")));
    progress(&d);
    assert!(
        policy_is(&d, "smtpd", true, 7200),
        "invalid edit not applied"
    );
    save(&d, "smtpd_tls_session_cache_timeout = 3600");
    assert!(policy_is(&d, "smtpd", true, 3600));
    progress(&d);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests out of {} rounds, first: {:?}\n{}",
        failures.len(),
        done.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)],
        d.log.text()
    );
    // The reload line comes once the replaced store is closed, which can
    // be a moment after the new configuration answers.
    assert!(
        eventually(|| reload_lines(&d).len() == 5),
        "{:#?}",
        reload_lines(&d)
    );
}

#[test]
fn prng_source_follows_a_reload() {
    let d = TestDaemon::start_watched("");
    let status = || {
        futures::executor::block_on(d.services().prng.send(tlsmgr::actors::prng::GetStatus))
            .unwrap()
    };
    assert!(eventually(|| status().source == "dev:/dev/urandom"));
    let missing = d.dir.join("no-such-device");
    save(
        &d,
        &format!("tls_random_source = dev:{}", missing.display()),
    );
    assert!(eventually(
        || status().source == format!("dev:{}", missing.display())
    ));
    let want = format!("cannot open entropy device {}", missing.display());
    assert!(
        eventually(|| d.log.text().contains(&want)),
        "{}",
        d.log.text()
    );
    // Seeds keep flowing from the pool while the new source is unusable.
    let mut c = d.client();
    let reply = c.request(&Request::Seed { size: 32 }).unwrap();
    assert_eq!(reply.status(), Status::Ok);
    // Back to a working device: it is opened again without a restart.
    save(&d, "tls_random_source = dev:/dev/urandom");
    let before = status().reseeds;
    assert!(eventually(|| {
        let s = status();
        s.source == "dev:/dev/urandom" && s.source_open && s.reseeds > before
    }));
}

/// Lines of the captured log that contain `needle`.
fn count(d: &TestDaemon, needle: &str) -> usize {
    d.log.text().lines().filter(|l| l.contains(needle)).count()
}

/// Reads main.cf the way `cat main.cf` does, from another process.
fn cat(d: &TestDaemon) {
    let out = std::process::Command::new("cat")
        .arg(d.dir.join("main.cf"))
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Regression: the daemon's own read of main.cf (an IN_OPEN event) used to
/// schedule the next reload, forever, so one invalid edit was warned about
/// ~4 times a second. One edit now gives one warning, also when other
/// processes read the file.
#[test]
fn one_invalid_edit_warns_once_even_when_main_cf_is_read() {
    use std::io::Write;
    let d = TestDaemon::start_watched("");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.dir.join("main.cf"))
        .unwrap();
    f.write_all(b"smtpd_tls_session_cache_timeout = banana\n")
        .unwrap();
    drop(f);
    let bad = "bad time value or unit: banana -- keeping the current configuration";
    assert!(eventually(|| count(&d, bad) >= 1), "{}", d.log.text());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // Reads spaced wider than the debounce, so each would be a reload of
    // its own if reads counted as edits.
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(600));
        cat(&d);
        let _ = std::fs::read(d.dir.join("main.cf")).unwrap();
    }
    // An attribute change (IN_ATTRIB, an event that does count) of the same
    // bytes in the same file is no edit either.
    let mode = std::fs::metadata(d.dir.join("main.cf"))
        .unwrap()
        .permissions();
    std::fs::set_permissions(d.dir.join("main.cf"), mode).unwrap();
    std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
    assert_eq!(count(&d, bad), 1, "{}", d.log.text());
    assert_eq!(count(&d, "warning:"), 1, "{}", d.log.text());
    assert!(reload_lines(&d).is_empty(), "{}", d.log.text());
    assert!(policy_is(&d, "smtpd", true, 3600));
}

/// Regression: after a reload, an idle daemon reads main.cf no more (it
/// used to re-read it every 250 ms, triggered by its own previous read),
/// and logs nothing, whoever else reads the file.
#[test]
fn idle_daemon_performs_no_further_reloads() {
    let d = TestDaemon::start_watched("");
    save(&d, "smtpd_tls_session_cache_timeout = 7200");
    assert!(policy_is(&d, "smtpd", true, 7200), "{}", d.log.text());
    assert!(eventually(|| reload_lines(&d).len() == 1));
    let reads = count(&d, "reading main.cf");
    let before = d.log.text();
    // Idle first (the daemon's own read must not start another reload),
    // then reads by another process, spaced wider than the debounce.
    std::thread::sleep(std::time::Duration::from_secs(2));
    for _ in 0..4 {
        cat(&d);
        std::thread::sleep(std::time::Duration::from_millis(600));
    }
    // Other actors may log (a cache cleanup after the reload); the watcher
    // must not: no read, no reload, no warning.
    let text = d.log.text();
    let idle: Vec<&str> = text[before.len()..]
        .lines()
        .filter(|l| l.contains("main.cf") || l.contains("reload") || l.contains("warning"))
        .collect();
    assert!(idle.is_empty(), "logged while idle: {idle:#?}");
    assert!(reads >= 1, "the watcher logs each read\n{}", d.log.text());
    assert_eq!(count(&d, "reading main.cf"), reads);
    assert_eq!(reload_lines(&d).len(), 1);
}

/// A client sending `seed` requests (answered on the daemon thread, where
/// the watcher runs) until stopped; returns (served, failures, slowest).
fn seeding_client(
    d: &TestDaemon,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize, std::time::Duration)> {
    let socket = d.socket.clone();
    std::thread::spawn(move || {
        let mut c =
            tlsmgr::client::Client::connect(&socket, std::time::Duration::from_secs(30)).unwrap();
        let (mut served, mut failures) = (0, 0);
        let mut slowest = std::time::Duration::ZERO;
        while !stop.load(Ordering::SeqCst) {
            let t = std::time::Instant::now();
            match c.request(&Request::Seed { size: 32 }) {
                Ok(r) if r.status() == Status::Ok => served += 1,
                _ => failures += 1,
            }
            slowest = slowest.max(t.elapsed());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        (served, failures, slowest)
    })
}

/// Regression: main.cf was parsed and expanded on the daemon thread, so a
/// valid but pathological main.cf (values doubling at each line, ~540 MB
/// expanded) or merely a huge one held up every request for seconds. Now
/// the expansion is capped and refused with one warning, the parse runs on
/// a blocking thread, and `seed` requests keep being answered within 1 s.
#[test]
fn pathological_main_cf_does_not_hold_up_requests() {
    let d = TestDaemon::start_watched("");
    let stop = Arc::new(AtomicBool::new(false));
    let client = seeding_client(&d, stop.clone());
    // Lines 1-5 are the harness's; the extra text starts at line 6.
    let mut extra = format!("p0 = {}\n", "x".repeat(256));
    for n in 1..=21 {
        extra += &format!("p{n} = $p{m} $p{m}\n", m = n - 1);
    }
    extra += "smtpd_tls_loglevel = $p21";
    save(&d, &extra);
    let want = format!(
        "warning: {}, line 28: parameter smtpd_tls_loglevel: macro processing error: \
         unreasonable macro expansion length: more than 1048576 bytes \
         -- keeping the current configuration",
        d.dir.join("main.cf").display()
    );
    assert!(
        eventually(|| d.log.text().contains(&want)),
        "{}",
        d.log.text()
    );
    // A valid main.cf of 1000000 lines (47 MB; seconds to parse in a debug
    // build) is parsed off the daemon thread.
    let mut huge = String::with_capacity(50 << 20);
    for i in 0..1_000_000 {
        huge += &format!("unrelated_parameter_{i} = some value {i}\n");
    }
    save(&d, &huge);
    assert!(
        eventually_within(std::time::Duration::from_secs(90), || count(
            &d,
            "changed, but no parameter that tlsmgr uses"
        ) == 1),
        "{}",
        d.log.text()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (served, failures, slowest) = client.join().unwrap();
    println!("seed requests: {served} served, {failures} failed, slowest {slowest:?}");
    assert_eq!(failures, 0);
    assert!(served > 20, "{served}");
    assert!(
        slowest < std::time::Duration::from_secs(1),
        "slowest seed request {slowest:?}"
    );
    assert_eq!(count(&d, "warning:"), 1, "{}", d.log.text());
    assert!(reload_lines(&d).is_empty(), "{}", d.log.text());
    assert!(policy_is(&d, "smtpd", true, 3600));
}

/// SIGHUP forces a reload even of an unchanged main.cf (an edit event for
/// an unchanged file does nothing), and an idle daemon then stays quiet.
#[test]
fn sighup_rereads_an_unchanged_invalid_main_cf_once() {
    use crate::common::serve::ServeProcess;
    use nix::sys::signal::Signal;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let socket = dir.join("tlsmgr.sock");
    let serve = ServeProcess::start_on_socket(dir, &["-v"], &socket);
    let warnings_in = |log: &str| log.matches("bad time value or unit: banana").count();
    let warnings = || warnings_in(&serve.log_text());
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("main.cf"))
            .unwrap();
        f.write_all(b"smtpd_tls_session_cache_timeout = banana\n")
            .unwrap();
    }
    assert!(eventually(|| warnings() == 1), "{}", serve.log_text());
    serve.signal(Signal::SIGHUP);
    assert!(eventually(|| warnings() == 2), "{}", serve.log_text());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let quiet = warnings();
    let (status, log) = serve.stop_with_log();
    assert!(status.success());
    assert_eq!(quiet, 2, "{log}");
    assert_eq!(log.matches("reload requested").count(), 1);
}

/// TLS loglevel words this version does not know (Postfix 3.12's `trace`,
/// or any other) neither refuse the configuration nor disable a cache, at
/// start or at a reload; the known words keep their meaning (`2` still
/// turns cache logging on next to `trace`).
#[test]
fn unknown_loglevel_words_leave_the_caches_usable() {
    let d = TestDaemon::start_watched(
        "smtpd_tls_loglevel = 1,trace\nsmtp_tls_loglevel = trace\nlmtp_tls_loglevel = frobnicate",
    );
    let mut c = d.client();
    for ct in ["smtpd", "smtp"] {
        assert!(policy_is(&d, ct, true, 3600), "{}", d.log.text());
        assert_eq!(
            update(&mut c, ct, "before", b"s"),
            Reply::Status(Status::Ok)
        );
        assert_eq!(lookup(&mut c, ct, "before"), hit(b"s"));
    }
    assert!(!d.log.text().contains("put smtpd session id=before"));

    save(
        &d,
        "smtpd_tls_loglevel = 2, trace\nsmtp_tls_loglevel = trace, no-such-word\n\
         lmtp_tls_loglevel = frobnicate",
    );
    assert!(
        eventually(|| reload_lines(&d)
            .iter()
            .any(|l| l.contains("reload: smtpd_tls_loglevel 1,trace -> 2, trace, "))),
        "{}",
        d.log.text()
    );
    for ct in ["smtpd", "smtp"] {
        assert!(policy_is(&d, ct, true, 3600), "{}", d.log.text());
        assert_eq!(lookup(&mut c, ct, "before"), hit(b"s"));
        assert_eq!(update(&mut c, ct, "after", b"t"), Reply::Status(Status::Ok));
        assert_eq!(lookup(&mut c, ct, "after"), hit(b"t"));
    }
    assert!(eventually(|| d
        .log
        .text()
        .contains("put smtpd session id=after")));
    assert!(!d.log.text().contains("put smtp session id=after"));
    assert!(!d.log.text().contains("warning:"), "{}", d.log.text());
}
