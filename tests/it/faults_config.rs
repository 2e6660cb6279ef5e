//! Fault test: 1000 random invalid main.cf edits applied to a running,
//! watched daemon. Each must be refused with exactly one warning, none may
//! be applied (no `reload:` line, `policy` answers unchanged), and a client
//! served throughout must see no failure. Reproducible: a fixed-seed LCG
//! chooses the faults (`FAULTS_SEED` overrides the seed, `FAULTS_EDITS`
//! the count).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tlsmgr::protocol::{Reply, Request, Status};

/// Knuth's MMIX LCG; the high bits are the usable ones.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One invalid edit: lines to put into main.cf, and a fragment the
/// warning must contain.
fn fault(rng: &mut Lcg, i: usize) -> (Vec<String>, String) {
    let one = |line: String, want: String| (vec![line], want);
    match rng.below(14) {
        0 => one(
            format!("smtpd_tls_session_cache_timeout = {i}q"),
            format!("parameter smtpd_tls_session_cache_timeout: bad time value or unit: {i}q"),
        ),
        1 => one(
            format!("smtp_tls_session_cache_timeout = banana{i}"),
            format!("bad time value or unit: banana{i}"),
        ),
        2 => {
            let v = 8_640_001 + i;
            one(
                format!("lmtp_tls_session_cache_timeout = {v}"),
                format!("invalid lmtp_tls_session_cache_timeout: {v} (max 8640000)"),
            )
        }
        3 => one(
            format!("tlsmgr_persistent_state = maybe{i}"),
            format!("bad boolean configuration: tlsmgr_persistent_state = maybe{i}"),
        ),
        4 => one(
            format!("tls_random_bytes = {i}k"),
            format!("bad numerical configuration: tls_random_bytes = {i}k"),
        ),
        5 => one(
            format!("tlsmgr_session_cache_max_entries = -{}", i + 1),
            format!(
                "invalid tlsmgr_session_cache_max_entries parameter value -{} < 0",
                i + 1
            ),
        ),
        6 => one(
            // lmtp: main.cf defines smtpd and smtp, and a later line wins.
            format!("lmtp_tls_session_cache_database = nosuch{i}:/tmp/x"),
            format!("unsupported database type: nosuch{i}"),
        ),
        7 => one(
            format!("syslog_name = ${{x{i}"),
            format!("truncated macro reference: \"${{x{i}\""),
        ),
        8 => one(
            format!("bogus{i} line"),
            format!("missing '=' after attribute name: \"bogus{i} line\""),
        ),
        9 => one(
            format!("smtpd_tls_loglevel = a$-{i}"),
            format!("empty macro name: \"a$-{i}\""),
        ),
        10 => one(
            format!("mail_owner = ${{{{{i}}} === {{b}}?x}}"),
            "expected at".to_string(),
        ),
        11 => (
            vec![
                format!("loop{i} = $loop{i}"),
                format!("tls_random_source = $loop{i}"),
            ],
            "unreasonable macro call nesting".to_string(),
        ),
        12 => one(
            // smtpd's store, spelled alike or not.
            if i.is_multiple_of(2) {
                "lmtp_tls_session_cache_database = btree:${data_directory}/smtpd_scache".into()
            } else {
                "lmtp_tls_session_cache_database = btree:$data_directory/smtpd_scache".into()
            },
            "for smtpd and lmtp".to_string(),
        ),
        _ => {
            let mut lines = vec![format!("p0 = {i}{}", "x".repeat(60))];
            for n in 1..=21 {
                lines.push(format!("p{n} = $p{m} $p{m}", m = n - 1));
            }
            lines.push("smtp_tls_loglevel = $p21".to_string());
            (
                lines,
                "parameter smtp_tls_loglevel: macro processing error: unreasonable".to_string(),
            )
        }
    }
}

const WARNING: &str = "-- keeping the current configuration";

#[test]
fn random_invalid_edits_are_all_refused_once() {
    let seed: u64 = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7115_6d67);
    let edits: usize = std::env::var("FAULTS_EDITS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let started = Instant::now();
    let d = TestDaemon::start_watched_debounce("", Duration::from_millis(10));
    let base: Vec<String> = d.main_cf_with("").lines().map(str::to_string).collect();
    let main_cf = d.dir.join("main.cf");
    let tmp = d.dir.join("main.cf.tmp");

    // A client asking for `policy` and `seed` throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let client = {
        let (socket, stop, served) = (d.socket.clone(), stop.clone(), served.clone());
        std::thread::spawn(move || {
            let mut c = tlsmgr::client::Client::connect(&socket, Duration::from_secs(30)).unwrap();
            let mut failures = Vec::new();
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                match c.request(&Request::Policy {
                    cache_type: b("smtpd"),
                }) {
                    Ok(Reply::Policy {
                        status: Status::Ok,
                        cachable: true,
                        timeout: 3600,
                    }) => {}
                    other => failures.push(format!("policy: {other:?}")),
                }
                match c.request(&Request::Seed { size: 32 }) {
                    Ok(r) if r.status() == Status::Ok => {}
                    other => failures.push(format!("seed: {other:?}")),
                }
                slowest = slowest.max(t.elapsed());
                served.fetch_add(2, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
            (failures, slowest)
        })
    };

    let mut rng = Lcg(seed);
    for i in 0..edits {
        let (lines, want) = fault(&mut rng, i);
        // The fault goes before, among or after the valid lines, sometimes
        // with harmless company (comments, blank lines, unrelated names).
        let mut text = base.clone();
        let at = rng.below(text.len() + 1);
        for (k, l) in lines.into_iter().enumerate() {
            text.insert(at + k, l);
        }
        if rng.below(3) == 0 {
            let at = rng.below(text.len() + 1);
            text.insert(at, format!("# edit {i}\n\nunrelated_{i} = x"));
        }
        let before = d.warnings().len();
        // As postconf -e does: a new file renamed over main.cf.
        std::fs::write(&tmp, text.join("\n") + "\n").unwrap();
        std::fs::rename(&tmp, &main_cf).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            let w = d.warnings();
            if w.len() > before {
                break w;
            }
            assert!(
                Instant::now() < deadline,
                "edit {i}: no warning for {want:?}\n{}",
                d.log.text()
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        assert_eq!(got.len(), before + 1, "edit {i}: {:#?}", &got[before..]);
        let line = &got[before];
        assert!(
            line.contains(&want) && line.ends_with(WARNING),
            "edit {i}: want {want:?} in {line:?}"
        );
    }
    // Late duplicates would show here.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (failures, slowest) = client.join().unwrap();
    let warned = d.warnings().len();
    let applied = reload_lines(&d).len();
    let served = served.load(Ordering::SeqCst);
    println!(
        "faults_config: seed {seed:#x}: {edits} invalid edits, {warned} warnings, \
         {applied} applied, {served} requests served, {} failures, slowest request {slowest:?}, \
         {:.1} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(warned, edits, "one warning per edit");
    assert_eq!(applied, 0, "{:#?}", reload_lines(&d));
    assert!(
        failures.is_empty(),
        "{:#?}",
        &failures[..failures.len().min(5)]
    );
    assert!(served > edits, "{served}");
    // The configuration in force is the one the daemon started with.
    assert_eq!(
        d.client()
            .request(&Request::Policy {
                cache_type: b("lmtp")
            })
            .unwrap(),
        Reply::Policy {
            status: Status::Ok,
            cachable: false,
            timeout: 3600
        }
    );
}
