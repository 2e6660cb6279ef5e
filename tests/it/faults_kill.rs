//! The durability promise under `kill -9` (README, "Durability"): every
//! `update` answered OK before a SIGKILL reads back after a restart, byte
//! for byte, and no entry is corrupt. Measured at a volume that makes fjall
//! write memtables out and rotate its journal: 64 connections of 2 KiB
//! updates, killed mid-load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::disk;
use crate::common::serve;

use disk::apparent_bytes;

use bytes::Bytes;
use serve::ServeProcess;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tlsmgr::client::Client;
use tlsmgr::protocol::{Reply, Request, Status};

const CONNECTIONS: usize = 64;
const SESSION_LEN: usize = 2048;
const LOAD_TIME: Duration = Duration::from_secs(6);
/// Acknowledged session bytes that make fjall write memtables out.
const VOLUME: u64 = 16 * 1024 * 1024;

/// The session bytes of update `n` of connection `c`: recognisable, so a
/// read-back shows a torn or misplaced value.
fn session(c: usize, n: u64) -> Vec<u8> {
    let mut v = vec![0u8; SESSION_LEN];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (c as u64 ^ n.wrapping_mul(31) ^ i as u64) as u8;
    }
    v[..8].copy_from_slice(&n.to_be_bytes());
    v
}

fn id(c: usize, n: u64) -> String {
    format!("c{c}-n{n}")
}

#[test]
fn every_acknowledged_update_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n\
             smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
             tlsmgr_session_cache_max_entries = 0\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let daemon = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let socket = daemon.socket.clone();
    // Per connection: the highest n answered OK (ids are n = 0, 1, 2, ...),
    // and the one in flight when the kill came (may or may not be stored).
    let acked: Arc<Mutex<Vec<Option<u64>>>> = Arc::new(Mutex::new(vec![None; CONNECTIONS]));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (acked, stop, socket) = (acked.clone(), stop.clone(), socket.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(&socket, Duration::from_secs(10)).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let req = Request::Update {
                        cache_type: Bytes::from_static(b"smtpd"),
                        cache_id: Bytes::from(id(c, n)),
                        session: Bytes::from(session(c, n)),
                    };
                    match client.request(&req) {
                        Ok(Reply::Status(Status::Ok)) => {
                            acked.lock().unwrap()[c] = Some(n);
                            n += 1;
                        }
                        Ok(other) => panic!("update answered {other:?}"),
                        // The kill: the connection breaks.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    // LOAD_TIME at least, and on until VOLUME is acknowledged: a machine
    // busy with other work may not reach it in LOAD_TIME.
    let acked_bytes = || {
        let acked = acked.lock().unwrap();
        acked.iter().map(|a| a.map_or(0, |n| n + 1)).sum::<u64>() * SESSION_LEN as u64
    };
    std::thread::sleep(LOAD_TIME);
    while acked_bytes() <= VOLUME && started.elapsed() < 10 * LOAD_TIME {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGKILL mid-load: no flush, no exit hook.
    daemon.kill();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total: u64 = acked.iter().map(|a| a.map_or(0, |n| n + 1)).sum();
    let store_dir = dir.join("data/smtpd_scache.fjall");
    let disk: u64 = apparent_bytes(&store_dir);
    println!(
        "{total} updates acknowledged over {CONNECTIONS} connections in {:.1} s \
         ({:.0}/s), {} MiB of sessions, store {} MiB on disk, then SIGKILL",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        total * SESSION_LEN as u64 / (1024 * 1024),
        disk / (1024 * 1024)
    );
    assert!(
        total * SESSION_LEN as u64 > VOLUME,
        "too little load to exercise memtable writes: {total} updates"
    );

    let daemon = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let socket = daemon.socket.clone();
    let mut client = Client::connect(&socket, Duration::from_secs(10)).unwrap();
    let (mut checked, mut in_flight_stored) = (0u64, 0u64);
    for (c, last) in acked.iter().enumerate() {
        let upto = last.map_or(0, |n| n + 1);
        // Every acknowledged one, plus the one that was in flight.
        for n in 0..=upto {
            let reply = client
                .request(&Request::Lookup {
                    cache_type: Bytes::from_static(b"smtpd"),
                    cache_id: Bytes::from(id(c, n)),
                })
                .unwrap();
            match reply {
                Reply::Lookup {
                    status: Status::Ok,
                    session: s,
                } => {
                    assert_eq!(&s[..], &session(c, n)[..], "corrupt entry {}", id(c, n));
                    if n == upto {
                        in_flight_stored += 1;
                    } else {
                        checked += 1;
                    }
                }
                other if n == upto => {
                    assert_eq!(
                        other,
                        Reply::Lookup {
                            status: Status::Err,
                            session: Bytes::new()
                        }
                    );
                }
                other => panic!("acknowledged update {} lost: {other:?}", id(c, n)),
            }
        }
    }
    println!(
        "after restart: {checked} of {total} acknowledged updates read back intact, \
         0 lost; {in_flight_stored} of {CONNECTIONS} in-flight updates were stored too"
    );
    assert_eq!(checked, total);
    daemon.kill();
}
