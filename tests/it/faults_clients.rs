//! Clients that never read (issue 14): they send requests and never read
//! the replies. The daemon must stop reading such a client once its replies
//! fill the socket buffer (backpressure), so that its memory does not grow
//! with what the client sends, and it must keep answering everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::serve;

use serve::ServeProcess;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const SEED_REQUEST: &[u8] = b"request\0seed\0size\x00255\0\0";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn connect(sock: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ann = [0u8; 26];
    s.read_exact(&mut ann).unwrap();
    s
}

#[test]
fn clients_that_never_read_hold_no_memory_and_stall_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let sock = child.socket.clone();
    let pid = child.pid();
    let mut good = connect(&sock);
    let ask = |s: &mut UnixStream| -> Duration {
        let t = Instant::now();
        s.write_all(SEED_REQUEST).unwrap();
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        // status, seed, end of list: the reply ends with "\0\0".
        while !got.ends_with(b"\0\0") {
            let n = s.read(&mut buf).expect("the good client got no reply");
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
        t.elapsed()
    };
    ask(&mut good);
    let rss_before = rss_kib(pid);

    // Eight clients each write 64 MiB of seed requests (each asks for a
    // 340-byte reply) and never read a byte; writes stop when the daemon
    // stops reading.
    const PER_CLIENT: usize = 64 << 20;
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let mut s = connect(&sock);
            s.set_write_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            std::thread::spawn(move || {
                let chunk = SEED_REQUEST.repeat(4096);
                let mut sent = 0usize;
                while sent < PER_CLIENT {
                    match s.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break, // the daemon stopped reading: backpressure
                    }
                }
                (s, sent)
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for _ in 0..200 {
        worst = worst.max(ask(&mut good));
    }
    let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let sent: usize = results.iter().map(|r| r.1).sum();
    for _ in 0..200 {
        worst = worst.max(ask(&mut good));
    }
    let rss_after = rss_kib(pid);
    println!(
        "8 never-reading clients sent {} KiB before the daemon stopped reading them; daemon RSS {} -> {} KiB; the good client's slowest of 400 replies {:?}",
        sent / 1024,
        rss_before,
        rss_after,
        worst
    );
    assert!(
        sent < 8 * PER_CLIENT,
        "the daemon read everything: no backpressure"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    drop(results);
}
