//! `tlsmgr serve` reloads on SIGHUP (instead of dying, SIGHUP's default) and
//! follows main.cf edits live, as a real process on a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::serve::ServeProcess;
use nix::sys::signal::Signal;
use std::time::Duration;
use tlsmgr::client::Client;
use tlsmgr::protocol::{Reply, Request, Status};

fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn policy_timeout(socket: &std::path::Path) -> Option<u32> {
    let mut c = Client::connect(socket, Duration::from_secs(5)).ok()?;
    match c
        .request(&Request::Policy {
            cache_type: bytes::Bytes::from_static(b"smtpd"),
        })
        .ok()?
    {
        Reply::Policy {
            status: Status::Ok,
            timeout,
            ..
        } => Some(timeout),
        _ => None,
    }
}

#[test]
fn sighup_reloads_and_edits_apply_live() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let main_cf = |timeout: u32| {
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n\
             smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
             smtpd_tls_session_cache_timeout = {timeout}\n",
            d = dir.display()
        )
    };
    std::fs::write(dir.join("main.cf"), main_cf(600)).unwrap();
    let socket = dir.join("tlsmgr.sock");
    let mut serve = ServeProcess::start_on_socket(dir, &[], &socket);
    let log_file = serve.log.clone();
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        eventually(|| policy_timeout(&socket) == Some(600)),
        "{}",
        log()
    );
    serve.signal(Signal::SIGHUP);
    assert!(
        eventually(|| log().contains("reload requested")),
        "{}",
        log()
    );
    assert!(serve.running(), "SIGHUP killed it");
    // An edit by rename reaches new clients.
    std::fs::write(dir.join("main.cf.tmp"), main_cf(1200)).unwrap();
    std::fs::rename(dir.join("main.cf.tmp"), dir.join("main.cf")).unwrap();
    assert!(
        eventually(|| policy_timeout(&socket) == Some(1200)),
        "{}",
        log()
    );
    // The reload line is written after the new configuration is in force
    // (stderr goes through an asynchronous drain): wait for it too.
    assert!(
        eventually(|| log().contains("reload: smtpd_tls_session_cache_timeout 600 -> 1200")),
        "{}",
        log()
    );
    let (status, _) = serve.stop_with_log();
    assert!(status.success());
}
