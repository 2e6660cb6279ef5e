//! Pre-opening (stock pre_init): the entropy source and the exchange file
//! are opened before a chroot would hide their paths, and the daemon keeps
//! using those descriptors. Simulated by making both paths unreachable
//! between `preopen` and the daemon's start, which is handed what
//! `preopen` opened.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;

use common::prng_util::*;
use common::*;
use tlsmgr::config::Config;

#[test]
fn preopened_source_and_exchange_file_are_used_after_their_paths_vanish() {
    let outside = tempfile::tempdir().unwrap();
    let sub = outside.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let dev = sub.join("dev");
    std::fs::write(&dev, [9u8; 100]).unwrap();
    let extra = format!(
        "tls_random_source = dev:{}\ntls_random_exchange_name = {}",
        dev.display(),
        sub.join("prng_exch").display()
    );
    let moved = outside.path().join("moved");
    let (sub2, moved2, extra2) = (sub.clone(), moved.clone(), extra.clone());
    let d = TestDaemon::start_preopened(&extra, move |dir| {
        std::fs::write(dir.join("main.cf"), main_cf(dir, &extra2)).unwrap();
        let cfg = Config::load(dir, &[]).unwrap();
        let (preopened, failures) = tlsmgr::prng::preopen(&cfg);
        assert!(failures.is_empty());
        // As if chrooted: neither path resolves any more.
        std::fs::rename(&sub2, &moved2).unwrap();
        preopened
    });
    let s = wait_status(&d, |s| s.reseeds == 1 && s.exchange_updates == 1);
    assert_eq!(s.source_bytes, 32, "read through the pre-opened descriptor");
    assert_eq!(
        s.source_failures + s.exchange_failures,
        0,
        "{}",
        d.log.text()
    );
    assert_eq!(std::fs::read(moved.join("prng_exch")).unwrap().len(), 1024);
    assert!(!sub.exists(), "nothing recreated at the old path");
    let mut c = d.client();
    seed(&mut c, 32);
}
