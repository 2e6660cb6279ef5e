//! The open-loop generator: a fixed total rate of handshakes, spread evenly
//! over the connections, each handshake due at a time set in advance.
//! Latency is counted from when a handshake was due, not from when the
//! connection got round to sending it, so a server that stalls is charged
//! for every handshake that waited behind the stall (no coordinated
//! omission): a connection that falls behind sends its late handshakes
//! back to back until it has caught up, each timed from its own due time.
//!
//! Each connection is an OS thread with a blocking socket, as each Postfix
//! smtpd and smtp process is a process of its own; a thread sleeps until
//! its next handshake is due with `nanosleep(2)` (tens of microseconds of
//! slack, where tokio's timer rounds to milliseconds). One handshake is
//! the closed-loop generator's (`driver`): `seed`, `lookup`, `update` on a
//! miss, and `tktkey` on smtpd connections.
//!
//! The run is cut into windows (the soak's 10 s, or one window for a
//! point of the load bench); each handshake counts in the window it was
//! due in. At the end, a connection still behind stops after
//! [`GRACE`]: every handshake due before the end that it did not send is
//! counted as unfinished, with the time it had waited as its latency (a
//! lower bound), so a saturated server's tail is not dropped.

use super::driver::{cache_id, lookup_outcome, Mix, Resumptions};
use super::servers::{cpu_time, status_kb};
use super::wire::{self, Rng};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection still behind schedule may go on after the end.
pub const GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Handshakes per second, all connections together.
    pub rate: f64,
    pub conns: usize,
    pub warmup: Duration,
    /// Measured time after the warm-up.
    pub duration: Duration,
    /// Width of a window.
    pub window: Duration,
    pub mix: Mix,
    /// Added to every cache id, so that a run finds none of the ids a
    /// prefill stored under another tag.
    pub id_tag: u64,
}

/// The figures of one window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub width: Duration,
    /// Handshake latencies from their due time, nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// Handshakes due in the window that were never sent (see [`GRACE`]).
    pub unfinished: u64,
    pub hits: u64,
    pub misses: u64,
    pub lost: u64,
    pub errors: u64,
    /// The server's resident memory when the window closed.
    pub rss: u64,
    /// The server's CPU time during the window.
    pub server_cpu: Duration,
    /// The 1-minute load average when the window closed.
    pub loadavg: f64,
}

impl Window {
    /// Latency percentile in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)] as f64 / 1000.0
    }
    pub fn max_us(&self) -> f64 {
        self.latencies
            .last()
            .map_or(f64::NAN, |&l| l as f64 / 1000.0)
    }
    /// Handshakes completed per second.
    pub fn handshake_rate(&self) -> f64 {
        (self.latencies.len() as u64 - self.unfinished) as f64 / self.width.as_secs_f64().max(1e-9)
    }
    /// Server CPU per completed handshake, microseconds.
    pub fn cpu_us_per_handshake(&self) -> f64 {
        let done = (self.latencies.len() as u64).saturating_sub(self.unfinished);
        self.server_cpu.as_secs_f64() * 1e6 / done.max(1) as f64
    }
}

/// The 1-minute load average (the machine is shared: figures name it).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// One handshake's outcome, by the window it was due in.
struct Done {
    window: usize,
    latency: u64,
    unfinished: bool,
}

#[derive(Default)]
struct ConnResult {
    done: Vec<Done>,
    hits: u64,
    misses: u64,
    lost: u64,
    errors: u64,
}

/// A blocking connection: the socket and the bytes read past the last
/// reply.
pub struct Conn {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects and reads the announcement.
    pub fn open(path: &Path) -> Result<Conn, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("connect {}: {e}", path.display()))
                }
                // The backlog is full while many connect at once.
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| format!("set timeout: {e}"))?;
        let mut c = Conn {
            s,
            buf: Vec::with_capacity(8192),
        };
        let (first, _) = c.read_list()?;
        if first != b"tlsmgr_protocol" {
            return Err("bad announcement".into());
        }
        Ok(c)
    }

    /// Reads one list: its first value, and whether its second is non-empty.
    fn read_list(&mut self) -> Result<(Vec<u8>, bool), String> {
        loop {
            if let Some(l) = wire::frame(&self.buf) {
                let out = (l.first.to_vec(), l.second.is_some_and(|v| !v.is_empty()));
                let len = l.len;
                self.buf.drain(..len);
                return Ok(out);
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err("server closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Sends a request and reads its reply: (status, second value non-empty).
    pub fn exchange(&mut self, req: &[u8]) -> Result<(Option<i32>, bool), String> {
        self.s.write_all(req).map_err(|e| format!("write: {e}"))?;
        let (first, nonempty) = self.read_list()?;
        Ok((wire::status(&first), nonempty))
    }
}

/// When one connection's handshakes are due: every `period` from
/// `first_due`; counted from `t0` (the end of the warm-up) to `t_end`.
#[derive(Clone, Copy)]
struct Schedule {
    first_due: Instant,
    period: Duration,
    t0: Instant,
    t_end: Instant,
}

/// One connection's handshakes, as `sched` has them due.
fn conn_loop(
    mut c: Conn,
    conn: usize,
    plan: &Plan,
    sessions: &[Vec<u8>],
    sched: Schedule,
) -> Result<ConnResult, String> {
    let Schedule {
        first_due,
        period,
        t0,
        t_end,
    } = sched;
    let smtpd = conn.is_multiple_of(2);
    let ct = if smtpd { "smtpd" } else { "smtp" };
    let mut rng = Rng::new(conn as u64 + 1 + plan.id_tag);
    let mut r = ConnResult::default();
    let (seed, tktkey) = (wire::seed(), wire::tktkey());
    let (st, _) = c.exchange(&wire::policy(ct))?;
    if st != Some(0) {
        r.errors += 1;
    }
    let mut ids = Resumptions::default();
    let window_of = |due: Instant| -> Option<usize> {
        (due >= t0).then(|| ((due - t0).as_nanos() / plan.window.as_nanos().max(1)) as usize)
    };
    for k in 0u32.. {
        let due = first_due + period * k;
        if due >= t_end {
            break;
        }
        let now = Instant::now();
        if now > t_end + GRACE {
            // Everything still due counts, timed to now (a lower bound).
            let mut due = due;
            while due < t_end {
                if let Some(window) = window_of(due) {
                    r.done.push(Done {
                        window,
                        latency: (now - due).as_nanos() as u64,
                        unfinished: true,
                    });
                }
                due += period;
            }
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let (st, nonempty) = c.exchange(&seed)?;
        if st != Some(0) || !nonempty {
            r.errors += 1;
        }
        let (n, resume) = ids.pick(&mut rng, plan.mix.hit_ratio);
        let id = cache_id(smtpd, conn, n ^ (plan.id_tag << 40));
        let (st, nonempty) = c.exchange(&wire::lookup(ct, &id))?;
        let hit = lookup_outcome(st, nonempty).unwrap_or_else(|| {
            r.errors += 1;
            false
        });
        if hit {
            r.hits += 1;
        } else {
            r.misses += 1;
            if resume {
                r.lost += 1;
            }
            let session = &sessions[rng.below(sessions.len() as u64) as usize];
            let (st, _) = c.exchange(&wire::update(ct, &id, session))?;
            if st != Some(0) {
                r.errors += 1;
            }
            if !resume {
                ids.stored(&mut rng, n);
            }
        }
        if smtpd {
            let (st, nonempty) = c.exchange(&tktkey)?;
            if st != Some(0) || !nonempty {
                r.errors += 1;
            }
        }
        if let Some(window) = window_of(due) {
            r.done.push(Done {
                window,
                latency: due.elapsed().as_nanos() as u64,
                unfinished: false,
            });
        }
    }
    Ok(r)
}

/// Runs `plan` against the server listening on `socket` (process `pid`),
/// and returns its windows. `on_window` sees each window's server figures
/// as it closes (latencies come at the end), for progress lines.
pub fn run(
    socket: &Path,
    pid: u32,
    plan: &Plan,
    on_window: &mut dyn FnMut(usize, &Window),
) -> Result<Vec<Window>, String> {
    let conns = plan.conns.max(1);
    // Each connection's share of the rate; connection i starts i/conns of
    // a period after the first, so the handshakes are evenly spread.
    let period = Duration::from_secs_f64(conns as f64 / plan.rate.max(1e-3));
    let sessions = Arc::new(wire::session_pool(
        256,
        plan.mix.session_min,
        plan.mix.session_max,
        42 + plan.id_tag,
    ));
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(Conn::open(socket)?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let t0 = start + plan.warmup;
    let t_end = t0 + plan.duration;
    let n_windows = (plan
        .duration
        .as_nanos()
        .div_ceil(plan.window.as_nanos().max(1))) as usize;
    let plan_arc = Arc::new(plan.clone());
    let threads: Vec<_> = opened
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let plan = plan_arc.clone();
            let sessions = sessions.clone();
            let sched = Schedule {
                first_due: start + period.mul_f64(i as f64 / conns as f64),
                period,
                t0,
                t_end,
            };
            std::thread::Builder::new()
                .name(format!("open-loop-{i}"))
                .spawn(move || conn_loop(c, i, &plan, &sessions, sched))
                .map_err(|e| format!("spawn connection thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut windows: Vec<Window> = (0..n_windows)
        .map(|w| {
            let end = (plan.window * (w as u32 + 1)).min(plan.duration);
            Window {
                width: end - plan.window * w as u32,
                ..Window::default()
            }
        })
        .collect();
    let sleep_until = |t: Instant| {
        let now = Instant::now();
        if t > now {
            std::thread::sleep(t - now);
        }
    };
    sleep_until(t0);
    let mut cpu_before = cpu_time(pid);
    for (w, win) in windows.iter_mut().enumerate() {
        sleep_until(t0 + plan.window * w as u32 + win.width);
        let cpu = cpu_time(pid);
        if let (Some(a), Some(b)) = (cpu_before, cpu) {
            win.server_cpu = b.saturating_sub(a);
        }
        cpu_before = cpu;
        win.rss = status_kb(pid, "VmRSS").unwrap_or(0);
        win.loadavg = loadavg();
        on_window(w, win);
    }
    for t in threads {
        let r = t
            .join()
            .map_err(|_| "a connection thread panicked".to_string())??;
        for d in r.done {
            if let Some(win) = windows.get_mut(d.window) {
                win.latencies.push(d.latency);
                win.unfinished += u64::from(d.unfinished);
            }
        }
        // Hits and errors are not split by window: charged to the last.
        if let Some(last) = windows.last_mut() {
            last.hits += r.hits;
            last.misses += r.misses;
            last.lost += r.lost;
            last.errors += r.errors;
        }
    }
    for w in &mut windows {
        w.latencies.sort_unstable();
    }
    Ok(windows)
}

/// Fills a server's smtpd and smtp caches with `per_cache` sessions each
/// (ids under `id_tag`, which no later run uses), over 8 connections.
#[allow(dead_code)] // The soak's; the load bench fills through `footprint`.
pub fn prefill(socket: &Path, per_cache: u64, mix: &Mix, id_tag: u64) -> Result<(), String> {
    const CONNS: u64 = 8;
    let sessions = Arc::new(wire::session_pool(64, mix.session_min, mix.session_max, 7));
    let threads: Vec<_> = (0..CONNS)
        .map(|c| {
            let socket = socket.to_path_buf();
            let sessions = sessions.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut conn = Conn::open(&socket)?;
                let smtpd = c % 2 == 0;
                let ct = if smtpd { "smtpd" } else { "smtp" };
                // Half the connections per cache; each its share of ids.
                let mut i = c / 2;
                while i < per_cache {
                    let id = cache_id(smtpd, 10_000 + c as usize, i ^ (id_tag << 40));
                    let s = &sessions[(i % 64) as usize];
                    let (st, _) = conn.exchange(&wire::update(ct, &id, s))?;
                    if st != Some(0) {
                        return Err(format!("prefill update {i}: status {st:?}"));
                    }
                    i += CONNS / 2;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| "a prefill thread panicked".to_string())??;
    }
    Ok(())
}
