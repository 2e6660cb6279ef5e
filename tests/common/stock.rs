//! Debian's stock Postfix tlsmgr: where it is and whether it can run here.
//! It is started as master(8) starts it by `common/child.rs`.
#![allow(dead_code)]

use std::path::Path;

pub const STOCK_TLSMGR: &str = "/usr/lib/postfix/sbin/tlsmgr";

/// Whether the stock daemon can run here (installed, and we are root as
/// master is). In CI (`CI` set) its absence is a failure, not a skip.
pub fn available() -> bool {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = Path::new(STOCK_TLSMGR).exists() && root;
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install Debian's postfix package and run as root");
    }
    if !ok {
        eprintln!("skipping: {STOCK_TLSMGR} not installed or not root");
    }
    ok
}
