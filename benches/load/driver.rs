//! The load generator: C persistent connections, each playing the requests
//! Postfix sends per TLS handshake, one request at a time (Postfix never
//! pipelines), on a tokio multi-thread runtime.
//!
//! Per connection: `policy` for its cache once (what a new smtpd/smtp
//! process does), then handshakes until the window closes. Even-numbered
//! connections are smtpd, odd ones the smtp client. One handshake:
//! - `seed` (32 bytes; sent at every TLS session start);
//! - `lookup` of a session id: with probability `hit_ratio` one this
//!   connection stored before (a resumption), else a new one;
//! - `update` with a new 1–2.5 KiB session when the lookup missed;
//! - smtpd only: `tktkey` for the current key (ticket issue).
//!
//! Only requests that start and end inside the measuring window count;
//! the server's CPU time and our own are read at the window's edges.

use super::servers::{busiest_thread, cpu_time, status_kb, thread_cpu_times, Server};
use super::wire::{self, Rng};
use bytes::BytesMut;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The workload.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Probability that a handshake resumes a stored session.
    pub hit_ratio: f64,
    /// Session sizes, bytes of DER.
    pub session_min: usize,
    pub session_max: usize,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            hit_ratio: 0.5,
            session_min: 1024,
            session_max: 2560,
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Default)]
pub struct Measure {
    pub window: Duration,
    pub requests: u64,
    pub handshakes: u64,
    pub hits: u64,
    pub misses: u64,
    /// Lookups of a stored id that missed (eviction or a lost update).
    pub lost: u64,
    /// Replies that were malformed or had an unexpected status.
    pub errors: u64,
    /// Latencies of the counted requests, sorted, in nanoseconds.
    pub latencies: Vec<u64>,
    /// The same per request kind ([`KINDS`] order), sorted.
    pub by_kind: [Vec<u64>; 4],
    pub server_cpu: Duration,
    /// CPU time of the server's busiest thread (a saturated thread is
    /// near the window's length).
    pub server_busiest_thread: Duration,
    pub client_cpu: Duration,
    pub server_peak_rss: u64,
    /// Requests that took [`SLOW`] or longer: when each started (since the
    /// window opened) and how long it took, in nanoseconds, by start.
    pub slow: Vec<(u64, u64)>,
}

/// What counts as a slow request for [`Measure::slow_summary`].
pub const SLOW: Duration = Duration::from_millis(5);

/// The width of the time slots [`Measure::slow_summary`] groups slow
/// requests into.
const SLOT: Duration = Duration::from_millis(10);

impl Measure {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64().max(1e-9)
    }
    /// Latency percentile in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)] as f64 / 1000.0
    }
    /// p99 in microseconds per request kind, as `seed=…` text for logs.
    pub fn p99_by_kind(&self) -> String {
        KINDS
            .iter()
            .zip(&self.by_kind)
            .map(|(k, v)| match v.len() {
                0 => format!("{k}=–"),
                n => format!(
                    "{k}={:.0}",
                    v[((n - 1) as f64 * 0.99).round() as usize] as f64 / 1000.0
                ),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
    /// Whether the slow requests come in bursts (a stall that holds every
    /// connection at once) or spread out (queueing), as text for logs:
    /// how many there were, in how many 10 ms slots they started, what
    /// share started in the 10 fullest slots, and the longest.
    pub fn slow_summary(&self) -> String {
        if self.slow.is_empty() {
            return format!("slow(>={}ms) 0", SLOW.as_millis());
        }
        let slot = SLOT.as_nanos() as u64;
        let mut per_slot: std::collections::HashMap<u64, u64> = Default::default();
        for &(start, _) in &self.slow {
            *per_slot.entry(start / slot).or_default() += 1;
        }
        let mut counts: Vec<u64> = per_slot.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top: u64 = counts.iter().take(10).sum();
        let longest = self.slow.iter().map(|&(_, l)| l).max().unwrap_or(0);
        format!(
            "slow(>={}ms) {} in {} slots of {} ms, {:.0}% in the fullest 10, longest {:.1} ms",
            SLOW.as_millis(),
            self.slow.len(),
            counts.len(),
            SLOT.as_millis(),
            100.0 * top as f64 / self.slow.len() as f64,
            longest as f64 / 1e6
        )
    }
    /// Server CPU per request, microseconds.
    pub fn server_cpu_per_req_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / (self.requests.max(1) as f64)
    }
    /// Share of one core the process used during the window.
    pub fn server_cores(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.window.as_secs_f64().max(1e-9)
    }
    /// Share of one core the server's busiest thread used.
    pub fn busiest_thread_cores(&self) -> f64 {
        self.server_busiest_thread.as_secs_f64() / self.window.as_secs_f64().max(1e-9)
    }
    pub fn client_cores(&self) -> f64 {
        self.client_cpu.as_secs_f64() / self.window.as_secs_f64().max(1e-9)
    }
}

/// Request kinds whose latencies are kept apart: `lookup` and `update` go
/// through our cache actors, `seed` and `tktkey` do not.
pub const KINDS: [&str; 4] = ["seed", "lookup", "update", "tktkey"];

#[derive(Default)]
struct ConnStats {
    requests: u64,
    handshakes: u64,
    hits: u64,
    misses: u64,
    lost: u64,
    errors: u64,
    latencies: Vec<u64>,
    by_kind: [Vec<u64>; 4],
    slow: Vec<(u64, u64)>,
}

/// Connects and reads the announcement; retries while the backlog is full.
pub async fn connect(path: &std::path::Path) -> Result<(UnixStream, BytesMut), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path).await {
            Ok(mut s) => {
                let mut buf = BytesMut::with_capacity(8192);
                loop {
                    if let Some(l) = wire::frame(&buf) {
                        if l.first != b"tlsmgr_protocol" {
                            return Err("bad announcement".into());
                        }
                        let _ = buf.split_to(l.len);
                        return Ok((s, buf));
                    }
                    match s.read_buf(&mut buf).await {
                        Ok(0) => return Err("closed before announcement".into()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("read announcement: {e}")),
                    }
                }
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => return Err(format!("connect {}: {e}", path.display())),
        }
    }
}

/// Sends one request and reads its reply; returns (status, second value
/// is non-empty, latency).
async fn exchange(
    s: &mut UnixStream,
    buf: &mut BytesMut,
    req: &[u8],
) -> Result<(Option<i32>, bool, Duration), String> {
    let t = Instant::now();
    s.write_all(req).await.map_err(|e| format!("write: {e}"))?;
    loop {
        if let Some(l) = wire::frame(buf) {
            let st = wire::status(l.first);
            let nonempty = l.second.is_some_and(|v| !v.is_empty());
            let len = l.len;
            let _ = buf.split_to(len);
            return Ok((st, nonempty, t.elapsed()));
        }
        match s.read_buf(buf).await {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

struct Shared {
    sessions: Vec<Vec<u8>>,
    mix: Mix,
    t0: Instant,
    t1: Instant,
}

pub fn cache_id(smtpd: bool, conn: usize, n: u64) -> Vec<u8> {
    // Shaped like Postfix's ids: smtpd's is the hex session id plus the
    // service and OpenSSL version; smtp's names the next hop and a digest.
    if smtpd {
        format!(
            "smtpd&{:016X}{:016X}{:032X}&0x30000b0&",
            conn,
            n,
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        )
    } else {
        format!(
            "smtp&mx{conn}.example.net&192.0.2.{}:25&{:064X}",
            n % 250,
            (n as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        )
    }
    .into_bytes()
}

/// Which session ids a connection looks up: with probability `hit_ratio`
/// one it stored before (a resumption), else a new one. Shared by the
/// closed-loop and the open-loop generators.
#[derive(Default)]
pub struct Resumptions {
    /// Ids this connection stored (at most [`Resumptions::KEPT`]).
    stored: Vec<u64>,
    next_id: u64,
}

impl Resumptions {
    /// How many stored ids a connection keeps to resume.
    const KEPT: usize = 1024;

    /// The next id to look up, and whether it is a resumption.
    pub fn pick(&mut self, rng: &mut Rng, hit_ratio: f64) -> (u64, bool) {
        if !self.stored.is_empty() && rng.chance(hit_ratio) {
            (
                self.stored[rng.below(self.stored.len() as u64) as usize],
                true,
            )
        } else {
            self.next_id += 1;
            (self.next_id, false)
        }
    }

    /// Remembers that new id `n` was stored, dropping a random older one
    /// once [`Resumptions::KEPT`] are kept.
    pub fn stored(&mut self, rng: &mut Rng, n: u64) {
        if self.stored.len() >= Self::KEPT {
            self.stored
                .swap_remove(rng.below(Self::KEPT as u64) as usize);
        }
        self.stored.push(n);
    }
}

/// A lookup's reply: `Some(true)` a hit, `Some(false)` a miss, `None` a
/// malformed reply or unexpected status.
pub fn lookup_outcome(status: Option<i32>, nonempty: bool) -> Option<bool> {
    match status {
        Some(0) if nonempty => Some(true),
        Some(-1) => Some(false),
        _ => None,
    }
}

async fn conn_task(
    mut s: UnixStream,
    mut buf: BytesMut,
    conn: usize,
    shared: Arc<Shared>,
) -> Result<ConnStats, String> {
    let smtpd = conn.is_multiple_of(2);
    let ct = if smtpd { "smtpd" } else { "smtp" };
    let mut rng = Rng::new(conn as u64 + 1);
    let mut st = ConnStats::default();
    let seed = wire::seed();
    let tktkey = wire::tktkey();
    let (status, _, _) = exchange(&mut s, &mut buf, &wire::policy(ct)).await?;
    if status != Some(0) {
        st.errors += 1;
    }
    let mut ids = Resumptions::default();
    let record = |st: &mut ConnStats, kind: usize, start: Instant, lat: Duration| {
        if start >= shared.t0 && start + lat <= shared.t1 {
            st.requests += 1;
            st.latencies.push(lat.as_nanos() as u64);
            st.by_kind[kind].push(lat.as_nanos() as u64);
            if lat >= SLOW {
                st.slow
                    .push(((start - shared.t0).as_nanos() as u64, lat.as_nanos() as u64));
            }
        }
    };
    loop {
        let start = Instant::now();
        if start >= shared.t1 {
            break;
        }
        let (status, nonempty, lat) = exchange(&mut s, &mut buf, &seed).await?;
        if status != Some(0) || !nonempty {
            st.errors += 1;
        }
        record(&mut st, 0, start, lat);

        let (n, resume) = ids.pick(&mut rng, shared.mix.hit_ratio);
        let id = cache_id(smtpd, conn, n);
        let start = Instant::now();
        let (status, nonempty, lat) = exchange(&mut s, &mut buf, &wire::lookup(ct, &id)).await?;
        record(&mut st, 1, start, lat);
        let hit = lookup_outcome(status, nonempty).unwrap_or_else(|| {
            st.errors += 1;
            false
        });
        if hit {
            st.hits += 1;
        } else {
            st.misses += 1;
            if resume {
                st.lost += 1;
            }
            let session = &shared.sessions[rng.below(shared.sessions.len() as u64) as usize];
            let start = Instant::now();
            let (status, _, lat) =
                exchange(&mut s, &mut buf, &wire::update(ct, &id, session)).await?;
            if status != Some(0) {
                st.errors += 1;
            }
            record(&mut st, 2, start, lat);
            if !resume {
                ids.stored(&mut rng, n);
            }
        }
        if smtpd {
            let start = Instant::now();
            let (status, nonempty, lat) = exchange(&mut s, &mut buf, &tktkey).await?;
            if status != Some(0) || !nonempty {
                st.errors += 1;
            }
            record(&mut st, 3, start, lat);
        }
        if start >= shared.t0 && Instant::now() <= shared.t1 {
            st.handshakes += 1;
        }
    }
    Ok(st)
}

/// Runs `conns` connections against `server`: `warmup`, then a measured
/// `window`.
pub fn run(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    conns: usize,
    warmup: Duration,
    window: Duration,
    mix: &Mix,
) -> Result<Measure, String> {
    let socket: PathBuf = server.socket.clone();
    let pid = server.pid();
    let sessions = wire::session_pool(256, mix.session_min, mix.session_max, 42);
    rt.block_on(async move {
        let mut streams = Vec::with_capacity(conns);
        for _ in 0..conns {
            streams.push(connect(&socket).await?);
        }
        let t0 = Instant::now() + warmup;
        let shared = Arc::new(Shared {
            sessions,
            mix: mix.clone(),
            t0,
            t1: t0 + window,
        });
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, (s, buf))| tokio::spawn(conn_task(s, buf, i, shared.clone())))
            .collect();
        tokio::time::sleep_until(t0.into()).await;
        let me = std::process::id();
        let (s0, c0, th0) = (cpu_time(pid), cpu_time(me), thread_cpu_times(pid));
        tokio::time::sleep_until(shared.t1.into()).await;
        let (s1, c1, th1) = (cpu_time(pid), cpu_time(me), thread_cpu_times(pid));
        let peak = status_kb(pid, "VmHWM").unwrap_or(0);
        let mut m = Measure {
            window,
            server_peak_rss: peak,
            server_busiest_thread: busiest_thread(&th0, &th1),
            ..Measure::default()
        };
        if let (Some(a), Some(b), Some(c), Some(d)) = (s0, s1, c0, c1) {
            m.server_cpu = b.saturating_sub(a);
            m.client_cpu = d.saturating_sub(c);
        }
        for t in tasks {
            let st = t.await.map_err(|e| format!("connection task: {e}"))??;
            m.requests += st.requests;
            m.handshakes += st.handshakes;
            m.hits += st.hits;
            m.misses += st.misses;
            m.lost += st.lost;
            m.errors += st.errors;
            m.latencies.extend(st.latencies);
            m.slow.extend(st.slow);
            for (all, mine) in m.by_kind.iter_mut().zip(st.by_kind) {
                all.extend(mine);
            }
        }
        m.latencies.sort_unstable();
        m.slow.sort_unstable();
        for v in &mut m.by_kind {
            v.sort_unstable();
        }
        Ok(m)
    })
}
