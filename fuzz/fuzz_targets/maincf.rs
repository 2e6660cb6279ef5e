//! Fuzz target: arbitrary bytes as main.cf, parsed, then every parameter
//! it defines expanded against one budget, and the snapshot built (which
//! expands every parameter tlsmgr reads, defaults included, against a
//! budget of its own). Checks: no panic, and the expansion caps of
//! `tlsmgr::config::expand` hold (per value and in total).
//!
//! Run: `cargo +nightly fuzz run maincf corpus/maincf seeds/maincf`
//! (new inputs go to corpus/, which is not committed; seeds/ is).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tlsmgr::config::expand::{self, Budget};
use tlsmgr::config::{expand_parameter, Config, RawConfig};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(raw) = RawConfig::parse(&text, Some(Path::new("/etc/postfix/main.cf"))) else {
        return;
    };
    let mut budget = Budget::new();
    let mut total = 0usize;
    for name in raw.entries.keys() {
        if let Ok(value) = expand_parameter(&raw, name, &mut budget) {
            assert!(
                value.len() <= expand::MAX_VALUE_LEN,
                "{name}: {}",
                value.len()
            );
            total += value.len();
        }
        // What a cap refused is not counted: usage never exceeds a total.
        let used = budget.used();
        assert!(used.len <= expand::MAX_TOTAL_LEN, "{used:?}");
        assert!(used.lookups <= expand::MAX_TOTAL_LOOKUPS, "{used:?}");
        assert!(used.scanned <= expand::MAX_TOTAL_SCAN, "{used:?}");
    }
    assert!(total <= expand::MAX_TOTAL_LEN, "total {total}");
    // The snapshot build (validation, database types, ...) must not panic.
    if let Ok(cfg) = Config::from_source(&raw) {
        let mut total = 0usize;
        for (name, value) in &cfg.effective {
            assert!(
                value.len() <= expand::MAX_VALUE_LEN,
                "{name}: {}",
                value.len()
            );
            total += value.len();
        }
        assert!(total <= expand::MAX_TOTAL_LEN, "effective total {total}");
    }
});
