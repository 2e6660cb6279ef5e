//! A failing store: requests get ERR promptly (never a hang), the cache
//! actor is restarted by its supervisor, and service resumes.
#![allow(clippy::unwrap_used)]
use crate::common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tlsmgr::protocol::{Reply, Status};

#[test]
fn failed_store_answers_err_then_recovers() {
    let d = TestDaemon::start("");
    let mut c = d.client();
    update(&mut c, "smtpd", "before", b"B");
    d.faults[0].store(true, Ordering::SeqCst);
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(lookup(&mut c, "smtpd", "before"), miss());
        assert_eq!(
            update(&mut c, "smtpd", "during", b"D"),
            Reply::Status(Status::Err)
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ERR must be prompt"
    );
    // Other caches are unaffected.
    assert_eq!(
        update(&mut c, "smtp", "other", b"O"),
        Reply::Status(Status::Ok)
    );
    d.faults[0].store(false, Ordering::SeqCst);
    // The supervisor restarted the actor and the store reopened: data intact.
    assert!(eventually(|| lookup(&mut c, "smtpd", "before") == hit(b"B")));
    assert!(
        d.log.text().contains("restarting the cache"),
        "{}",
        d.log.text()
    );
}
