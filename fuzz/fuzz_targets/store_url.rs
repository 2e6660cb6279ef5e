//! Fuzz target: arbitrary text as a `tlsmgr_shared_store` value, read by
//! main.cf's validation ([`tlsmgr::config::store_url`]). Checks: no panic
//! in the Sentinel parse nor in the URL check (redis-rs's parser for the
//! other schemes), what the Sentinel parse accepts is well formed (at
//! least one Sentinel, each with a host and a port that is not 0, a service
//! name, a database that is not negative), and the check agrees with the
//! parse on every Sentinel URL.
//!
//! Run: `cargo +nightly fuzz run store_url corpus/store_url seeds/store_url`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmgr::config::store_url::{check_url, is_sentinel_url, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse(url);
    if let Ok(u) = &parsed {
        assert!(is_sentinel_url(url));
        assert!(!u.sentinels.is_empty());
        assert!(u.sentinels.iter().all(|(h, p)| !h.is_empty() && *p > 0));
        assert!(!u.service.is_empty());
        assert!(u.db >= 0);
    }
    let checked = check_url(url);
    if is_sentinel_url(url) {
        assert_eq!(checked.is_ok(), parsed.is_ok(), "{url:?}");
    }
});
