//! Memory and disk (issue 7, part 3): fill a server's smtpd cache with N
//! sessions of 2 KiB through the socket (8 connections of `update`s), then
//! read its resident memory and the bytes its cache takes on disk. Stock
//! stores each session as uppercase hex (twice the size) in a btree file.
//! A sample of lookups afterwards proves the sessions are really there.

use super::driver::connect;
use super::servers::{disk_usage, status_kb, DiskUsage, Kind, Server, StartOptions};
use super::wire::{self, Rng};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long to wait at most for the store's background work to finish.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);
/// How long the directory must stay unchanged to count as settled: longer
/// than two of the daemon's periodic syncs (1 s by default), since a sync
/// releases what a compaction superseded before the previous sync.
const SETTLED_AFTER: Duration = Duration::from_secs(3);

/// Session size of the footprint test.
pub const SESSION_BYTES: usize = 2048;

#[derive(Debug, Clone)]
pub struct Footprint {
    pub kind: Kind,
    pub sessions: u64,
    pub fill_time: Duration,
    pub rss_idle: u64,
    pub rss_full: u64,
    pub peak_rss: u64,
    /// The data directory on disk half a second after the fill.
    pub disk: DiskUsage,
    /// The same once it has not changed for [`SETTLED_AFTER`] (flushes and
    /// compactions done), at most [`SETTLE_LIMIT`] later.
    pub disk_settled: DiskUsage,
    /// The same after a clean shutdown (SIGTERM).
    pub disk_stopped: DiskUsage,
    /// Lookups of the sample that hit.
    pub sample_hits: u64,
    pub sample: u64,
}

fn id(n: u64) -> Vec<u8> {
    format!("smtpd&{n:064X}&0x30000b0&").into_bytes()
}

async fn request(
    s: &mut tokio::net::UnixStream,
    buf: &mut bytes::BytesMut,
    req: &[u8],
) -> Result<(Option<i32>, bool), String> {
    s.write_all(req).await.map_err(|e| format!("write: {e}"))?;
    loop {
        if let Some(l) = wire::frame(buf) {
            let r = (
                wire::status(l.first),
                l.second.is_some_and(|v| !v.is_empty()),
            );
            let len = l.len;
            let _ = buf.split_to(len);
            return Ok(r);
        }
        match s.read_buf(buf).await {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Fills `kind` with `n` sessions and measures it.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    kind: Kind,
    n: u64,
    opts: &StartOptions,
) -> Result<Footprint, String> {
    let mut opts = opts.clone();
    if kind != Kind::Stock {
        // Ours bounds each cache at 100 000 entries by default; lift the
        // bound so that exactly n entries are stored, as stock stores them.
        opts.main_cf_extra
            .push_str("\ntlsmgr_session_cache_max_entries = 0\n");
    }
    let server = Server::start(kind, &opts)?;
    let pid = server.pid();
    let rss_idle = status_kb(pid, "VmRSS").unwrap_or(0);
    let sessions = wire::session_pool(64, SESSION_BYTES, SESSION_BYTES, 7);
    let socket = server.socket.clone();
    const CONNS: u64 = 8;
    let sample = n.min(200);
    let (fill_time, sample_hits) = rt.block_on(async {
        let t = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..CONNS {
            let (mut s, mut buf) = connect(&socket).await?;
            let sessions = sessions.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while i < n {
                    let req = wire::update("smtpd", &id(i), &sessions[(i % 64) as usize]);
                    let (st, _) = request(&mut s, &mut buf, &req).await?;
                    if st != Some(0) {
                        return Err(format!("update {i}: status {st:?}"));
                    }
                    i += CONNS;
                }
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| format!("fill task: {e}"))??;
        }
        let fill = t.elapsed();
        let (mut s, mut buf) = connect(&socket).await?;
        let mut rng = Rng::new(3);
        let mut hits = 0;
        for _ in 0..sample {
            let (st, nonempty) =
                request(&mut s, &mut buf, &wire::lookup("smtpd", &id(rng.below(n)))).await?;
            if st == Some(0) && nonempty {
                hits += 1;
            }
        }
        Ok::<_, String>((fill, hits))
    })?;
    // Let background writers (fjall's journal and flushes) settle.
    std::thread::sleep(Duration::from_millis(500));
    let rss_full = status_kb(pid, "VmRSS").unwrap_or(0);
    let peak_rss = status_kb(pid, "VmHWM").unwrap_or(0);
    let disk = disk_usage(&server.data_dir);
    // Flushes and compactions go on after the last reply: tables are
    // written, merged and their inputs deleted, sealed journals deleted once
    // their memtables are flushed. Settled is when the directory has not
    // changed for [`SETTLED_AFTER`].
    let settle_until = Instant::now() + SETTLE_LIMIT;
    let mut disk_settled = disk;
    let mut unchanged_since = Instant::now();
    while Instant::now() < settle_until && unchanged_since.elapsed() < SETTLED_AFTER {
        std::thread::sleep(Duration::from_millis(100));
        let now = disk_usage(&server.data_dir);
        if now != disk_settled {
            disk_settled = now;
            unchanged_since = Instant::now();
        }
    }
    let (log, disk_stopped) = server.stop_and_measure();
    if log.contains("fatal") || log.contains("panic") {
        return Err(format!("{} log: {log}", kind.name()));
    }
    Ok(Footprint {
        kind,
        sessions: n,
        fill_time,
        rss_idle,
        rss_full,
        peak_rss,
        disk,
        disk_settled,
        disk_stopped,
        sample_hits,
        sample,
    })
}
