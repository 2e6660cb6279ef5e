//! A system that refuses its random source at start (no getrandom(2), or a
//! seccomp filter that denies it): the daemon cannot serve seeds or make
//! ticket keys, so it dies the Postfix way, a `fatal:` line and exit
//! status 1, without a panic, both as `tlsmgr serve` and as a master(8)
//! child. The refusal is injected with the `TLSMGR_TEST_OS_RNG_FAIL` test
//! hook (ENOSYS, as a kernel without getrandom answers).
#![allow(clippy::unwrap_used)]

use crate::common::child::{MasterChild, OURS};
use crate::common::{main_cf, serve};
use std::time::Duration;

const REFUSE: (&str, &str) = ("TLSMGR_TEST_OS_RNG_FAIL", "1");
const FATAL: &str = "fatal: read the system's random source (getrandom): \
                     Function not implemented (os error 38)";

#[test]
fn serve_dies_with_one_fatal_line_when_the_system_refuses_random_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("data")).unwrap();
    std::fs::write(tmp.path().join("main.cf"), main_cf(tmp.path(), "")).unwrap();
    let out = serve::run_to_exit(tmp.path(), &[REFUSE], Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches(FATAL).count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!tmp.path().join("private/tlsmgr").exists(), "{err}");
}

#[test]
fn a_master_child_dies_with_one_fatal_line_when_the_system_refuses_random_bytes() {
    let mut d = MasterChild::start_env(OURS, &["-l", "-t", "unix", "-V"], "", &[REFUSE]);
    let (status, err) = d.close_status();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(err.matches(FATAL).count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
