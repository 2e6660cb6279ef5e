//! A store whose directory is removed (`rm -rf`) or replaced (moved away,
//! an empty directory made in its place) under a running `tlsmgr serve`,
//! while a client updates about 100 sessions a second: the daemon notices
//! within the sync interval (1 s) with one warning, starts a new store at
//! the path with the entries the old one held, and every update answered
//! OK, before and after, is found after a clean restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;
use crate::common::serve;

use common::{b, hit, lookup};
use serve::{write_store_main_cf as write_main_cf, ServeProcess};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tlsmgr::protocol::{Reply, Request, Status};

/// The sync interval the daemon runs with (the default).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Scheduling slack on a shared machine.
const MARGIN: Duration = Duration::from_millis(1500);

/// The warning that names the event.
const GONE_LINE: &str = "under the daemon";

fn session_of(i: u64) -> Vec<u8> {
    let mut s = format!("session {i} ").into_bytes();
    s.resize(512, b'x');
    s
}

/// Updates `u0`, `u1`, … about 100 times a second until `stop`; returns
/// the numbers of the updates answered OK.
fn updater(d: &ServeProcess, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    let mut c = d.client();
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let reply = c.request(&Request::Update {
                cache_type: b("smtpd"),
                cache_id: b(&format!("u{i}")),
                session: session_of(i).into(),
            });
            if matches!(reply, Ok(Reply::Status(Status::Ok))) {
                acked.push(i);
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        acked
    })
}

fn gone_lines(d: &ServeProcess) -> Vec<String> {
    d.log_text()
        .lines()
        .filter(|l| l.contains(GONE_LINE))
        .map(str::to_owned)
        .collect()
}

fn run(what: &str, pull_away: impl FnOnce(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_main_cf(dir);
    let store = dir.join("data/smtpd_scache.fjall");
    let d = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let stop = Arc::new(AtomicBool::new(false));
    let t = updater(&d, stop.clone());
    std::thread::sleep(Duration::from_secs(2));

    pull_away(&store);
    let t0 = Instant::now();
    while gone_lines(&d).is_empty() && t0.elapsed() < SYNC_INTERVAL + MARGIN {
        std::thread::sleep(Duration::from_millis(20));
    }
    let noticed = t0.elapsed();
    let lines = gone_lines(&d);
    assert_eq!(lines.len(), 1, "one warning, in time:\n{}", d.log_text());
    assert!(
        lines[0].contains(&format!("was {what}")) && lines[0].contains("smtpd_scache.fjall"),
        "{}",
        lines[0]
    );

    eprintln!("{}", lines[0]);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let acked = t.join().unwrap();
    assert_eq!(gone_lines(&d).len(), 1, "{}", d.log_text());
    d.stop();

    let d = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let mut c = d.client();
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|&i| lookup(&mut c, "smtpd", &format!("u{i}")) != hit(&session_of(i)))
        .collect();
    eprintln!(
        "{what}: noticed after {noticed:?}; {} updates acknowledged, {} found after a restart",
        acked.len(),
        acked.len() - missing.len()
    );
    assert!(acked.len() > 400, "{} updates acknowledged", acked.len());
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged updates lost: {:?}…",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    drop(c);
    d.stop();
}

#[test]
fn a_store_removed_under_the_daemon_loses_nothing() {
    run("removed", |store| std::fs::remove_dir_all(store).unwrap());
}

#[test]
fn a_store_replaced_under_the_daemon_loses_nothing() {
    run("replaced", |store| {
        let away = store.with_extension("fjall.moved");
        std::fs::rename(store, &away).unwrap();
        std::fs::create_dir(store).unwrap();
    });
}
