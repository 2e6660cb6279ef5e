//! Many clients at once: 200 concurrent connections with interleaved
//! requests, every reply belongs to its own request (no cross-talk).
#![allow(clippy::unwrap_used)]
mod common;

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
