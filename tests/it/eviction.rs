//! The bound on cache entries (`tlsmgr_session_cache_max_entries`): the
//! count never exceeds it, and the oldest entries go first.
#![allow(clippy::unwrap_used)]
use crate::common;

use common::*;
use tlsmgr::actors::cache::Stats;

fn entries(d: &TestDaemon) -> u64 {
    let set = d.services().caches.load();
    let addr = set
        .get(tlsmgr::protocol::CacheType::Smtpd)
        .unwrap()
        .addr
        .clone();
    futures::executor::block_on(addr.send(Stats))
        .unwrap()
        .unwrap()
        .entries
}

#[test]
fn count_never_exceeds_the_bound_and_oldest_go_first() {
    let mut d = TestDaemon::start("tlsmgr_session_cache_max_entries = 50");
    let mut c = d.client();
    for i in 0..200 {
        update(&mut c, "smtpd", &format!("s{i}"), b"x");
        d.clock.advance(1);
        assert!(entries(&d) <= 50, "after {i} updates");
    }
    assert_eq!(entries(&d), 50);
    assert_eq!(lookup(&mut c, "smtpd", "s149"), miss());
    assert_eq!(lookup(&mut c, "smtpd", "s150"), hit(b"x"));
    assert_eq!(lookup(&mut c, "smtpd", "s199"), hit(b"x"));
    // Re-storing an old entry makes it young again.
    update(&mut c, "smtpd", "s150", b"y");
    d.clock.advance(1);
    update(&mut c, "smtpd", "new", b"z");
    assert_eq!(lookup(&mut c, "smtpd", "s150"), hit(b"y"));
    assert_eq!(lookup(&mut c, "smtpd", "s151"), miss());
    // A lower bound at restart evicts down to it.
    drop(c);
    d.restart_with("tlsmgr_session_cache_max_entries = 10");
    assert!(eventually(|| entries(&d) == 10));
    let mut c = d.client();
    assert_eq!(lookup(&mut c, "smtpd", "new"), hit(b"z"));
}
