//! Many clients at once: 200 concurrent connections with interleaved
//! requests, every reply belongs to its own request (no cross-talk); and
//! the same spread over several I/O threads (`tlsmgr_io_threads`).
#![allow(clippy::unwrap_used)]
use crate::common;

use common::*;
use std::sync::{Arc, Barrier};
use tlsmgr::protocol::{Reply, Request, Status};

#[test]
fn two_hundred_connections_without_cross_talk() {
    let d = TestDaemon::start("");
    let barrier = Arc::new(Barrier::new(200));
    let threads: Vec<_> = (0..200)
        .map(|n| {
            let mut c = d.client(); // connected and announced before the race
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let ct = if n % 2 == 0 { "smtpd" } else { "smtp" };
                for round in 0..20 {
                    let id = format!("conn{n}-{round}");
                    let session = format!("session of {id}").repeat(1 + n % 7).into_bytes();
                    assert_eq!(update(&mut c, ct, &id, &session), Reply::Status(Status::Ok));
                    match c
                        .request(&Request::Seed {
                            size: 1 + (n % 255) as i32,
                        })
                        .unwrap()
                    {
                        Reply::Seed {
                            status: Status::Ok,
                            seed,
                        } => assert_eq!(seed.len(), 1 + n % 255),
                        other => panic!("{other:?}"),
                    }
                    assert_eq!(lookup(&mut c, ct, &id), hit(&session));
                    if round % 3 == 0 {
                        assert_eq!(delete(&mut c, ct, &id), Reply::Status(Status::Ok));
                        assert_eq!(lookup(&mut c, ct, &id), miss());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Everything not deleted is there: 200 * (20 - 7) entries.
    let mut c = d.client();
    for n in (0..200).step_by(37) {
        let ct = if n % 2 == 0 { "smtpd" } else { "smtp" };
        let id = format!("conn{n}-19");
        assert_eq!(
            lookup(&mut c, ct, &id),
            hit(&format!("session of {id}").repeat(1 + n % 7).into_bytes())
        );
    }
}

/// `tlsmgr_io_threads = 3`: connections are dealt to the daemon thread and
/// two more; each still gets its own replies in order, a request on one
/// thread sees what another thread's connection stored, and stopping the
/// daemon while connections sit open on every thread neither hangs nor
/// loses what was stored.
#[test]
fn connections_on_several_io_threads_share_caches_and_stop_cleanly() {
    let mut d = TestDaemon::start("tlsmgr_io_threads = 3");
    // Nine connections: three per thread, round-robin.
    let mut clients: Vec<_> = (0..9).map(|_| d.client()).collect();
    for round in 0..5 {
        for (n, c) in clients.iter_mut().enumerate() {
            let id = format!("io{n}-{round}");
            assert_eq!(
                update(c, "smtpd", &id, id.as_bytes()),
                Reply::Status(Status::Ok)
            );
        }
        // Read back through the next connection, usually on another thread.
        for n in 0..clients.len() {
            let id = format!("io{n}-{round}");
            let c = &mut clients[(n + 1) % 9];
            assert_eq!(lookup(c, "smtpd", &id), hit(id.as_bytes()));
        }
    }
    let started = std::time::Instant::now();
    d.stop();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "stop took {:?} with connections open",
        started.elapsed()
    );
    // Every connection was closed by the stop.
    for c in &mut clients {
        assert!(c.request(&Request::Seed { size: 8 }).is_err());
    }
    d.restart();
    let mut c = d.client();
    for n in 0..9 {
        let id = format!("io{n}-4");
        assert_eq!(lookup(&mut c, "smtpd", &id), hit(id.as_bytes()));
    }
}
