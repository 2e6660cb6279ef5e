//! File descriptors: the process limit, and what the daemon does when it
//! runs out of them.
//!
//! Every smtpd(8), smtp(8) and lmtp process keeps a connection to tlsmgr, so
//! a busy server holds many. [`raise_nofile_limit`] lifts the soft
//! `RLIMIT_NOFILE` (often 1024) to the hard limit at start.
//!
//! When the daemon still runs out, accept(2) fails with EMFILE while the
//! new client waits in the listen queue, and the listening socket stays
//! readable, so a plain retry loop spins and the client hangs until some
//! descriptor is freed. Stock tlsmgr logs `error: accept connection: Too
//! many open files` each time, and msg_error's limit of 13 errors ends the
//! process (master restarts it). Instead [`Spare`] keeps one descriptor in
//! reserve: at EMFILE it is let go and the waiting client is accepted into
//! its slot. It is served, and the longest-idle connection is shut down to
//! make room ([`super::idle`]); its Postfix client reconnects at its next
//! request. When no connection is idle (all are mid-request), the newcomer
//! is closed at once instead: it sees EOF before the announcement and
//! retries like after any failed request, instead of hanging. Then the
//! reserve is taken back. [`Exhaustion`] keeps the log to one line per
//! episode and one per [`EXHAUSTION_LOG_INTERVAL`].
//!
//! Clients must not take the last descriptors either: the daemon's own
//! files need them (a store opens table files, journals and its directory
//! for a sync; ticket keys and the exchange file are written through
//! temporary files; main.cf is read at every edit). A store that meets
//! EMFILE fails the request or restarts. So [`ConnectionBudget`] stops
//! clients [`OWN_FILES_RESERVE`] descriptors short of the limit, and a
//! client beyond it is handled as at EMFILE, before accept(2) fails.

use crate::prng::strerror;
use slog::{debug, warn, Logger};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, once at start (`tlsmgr
/// serve` and the master(8) child). Returns the soft limit in force after
/// the call (`None`: it could not be read). Failures are logged, not fatal:
/// the daemon still works at the old limit, with fewer connections.
pub fn raise_nofile_limit(log: &Logger) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) only writes the `rlimit` struct we pass, which is
    // a valid, exclusively borrowed local; there is no safe wrapper in our
    // dependencies (nix's `resource` feature is not enabled).
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        warn!(
            log,
            "getrlimit RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    if soft >= hard {
        debug!(
            log,
            "file descriptor limit {} (already the hard limit)", soft
        );
        return Some(soft);
    }
    // An unlimited hard limit cannot be the soft limit of RLIMIT_NOFILE on
    // Linux (the kernel caps it at fs.nr_open); Linux never reports one,
    // other systems may: go as far as `OPEN_MAX`-like values allow.
    let target = if hard == libc::RLIM_INFINITY {
        1 << 20
    } else {
        hard
    };
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit(2) only reads the `rlimit` struct we pass, a valid
    // local; raising the soft limit up to the hard one needs no privilege
    // and changes nothing Rust relies on.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        warn!(
            log,
            "setrlimit RLIMIT_NOFILE {} -> {}: {}",
            soft,
            target,
            std::io::Error::last_os_error()
        );
        return Some(soft);
    }
    // debug: stock logs nothing here, and master children start often.
    debug!(
        log,
        "file descriptor limit raised from {} to {}", soft, target
    );
    Some(target)
}

/// The soft `RLIMIT_NOFILE` now, for log lines.
pub fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `raise_nofile_limit`: writes only our local struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// True for the accept(2) errors that mean "no descriptor or buffer for a
/// new connection now".
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Descriptors the admin socket and the metrics endpoint may hold at once:
/// their connections at their caps, and one more each for a newcomer being
/// turned away or taking an evicted client's place.
pub const SIDE_CONNECTIONS: u64 =
    super::admin::MAX_CONNECTIONS as u64 + super::http::MAX_CLIENTS as u64 + 2;

/// Descriptors kept free for the daemon's own files: every store at its
/// most ([`crate::store::fjall::MAX_OPEN_FILES`]; three caches: smtpd,
/// smtp, lmtp), the admin and metrics connections ([`SIDE_CONNECTIONS`])
/// and some for the rest (key and exchange files, main.cf, the listening
/// sockets, Redis). A quarter of the limit at most, so a small limit still
/// serves clients.
pub const OWN_FILES_RESERVE: u64 = 3 * crate::store::fjall::MAX_OPEN_FILES + SIDE_CONNECTIONS + 32;

/// A log line that may repeat many times a second (a failing accept(2)),
/// kept to one per interval; time comes in as `now`, so tests step it.
#[derive(Debug)]
pub struct LogEvery {
    interval: Duration,
    last: Option<Instant>,
    unlogged: u64,
}

impl LogEvery {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> LogEvery {
        LogEvery {
            interval,
            last: None,
            unlogged: 0,
        }
    }

    /// The event happened at `now`: `Some(n)` when a line is due, `n` being
    /// how many were not logged since the last line; `None` otherwise.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// How many client connections the descriptor limit leaves room for, once
/// the daemon's own files have theirs ([`OWN_FILES_RESERVE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    max: Option<u64>,
}

impl ConnectionBudget {
    /// The budget under the soft limit `limit` (`None`: unknown, no
    /// budget), with `in_use` descriptors already taken by the daemon
    /// (listening sockets, stores, pipes) before any client.
    pub fn new(limit: Option<u64>, in_use: u64) -> ConnectionBudget {
        ConnectionBudget {
            max: limit.map(|l| l.saturating_sub(in_use + OWN_FILES_RESERVE.min(l / 4))),
        }
    }

    /// The budget of this process now: its soft limit, and as descriptors
    /// in use the lowest free descriptor (the kernel hands out the lowest,
    /// so before any client connects everything below it is the daemon's).
    /// `probe` is any open descriptor, to duplicate; this needs no /proc,
    /// which a chrooted daemon does not have.
    pub fn of_this_process(probe: BorrowedFd<'_>) -> ConnectionBudget {
        let in_use = probe
            .try_clone_to_owned()
            .map_or(0, |dup| u64::try_from(dup.as_raw_fd()).unwrap_or(0));
        ConnectionBudget::new(nofile_limit(), in_use)
    }

    /// True when `open` connections use the whole budget: the next client
    /// takes the place of an idle one.
    pub fn is_spent(&self, open: usize) -> bool {
        self.max
            .is_some_and(|max| u64::try_from(open).unwrap_or(u64::MAX) >= max)
    }

    /// The number of connections allowed (`None`: no limit known).
    pub fn max(&self) -> Option<u64> {
        self.max
    }
}

/// What the accept loop does at EMFILE: one descriptor held back, to
/// accept (and close at once) a client that would otherwise wait.
#[derive(Debug)]
pub struct Spare(Option<OwnedFd>);

impl Spare {
    /// Holds a descriptor (`/dev/null`, read-only) in reserve.
    pub fn new() -> Spare {
        Spare(open_spare())
    }

    /// Lets the reserve go for the caller to use the freed slot; call
    /// [`Spare::restore`] after.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a reserve descriptor again if none is held; false when even
    /// that fails (still out of descriptors).
    pub fn restore(&mut self) -> bool {
        if self.0.is_none() {
            self.0 = open_spare();
        }
        self.0.is_some()
    }
}

impl Default for Spare {
    fn default() -> Self {
        Spare::new()
    }
}

fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// What became of the client waiting when accept(2) found no descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortageOutcome {
    /// Served, in place of the longest-idle connection, which was closed.
    Replaced,
    /// Closed at once: no connection was idle.
    ClosedNew,
    /// Nobody could be accepted (not even into the reserve's slot).
    Nothing,
}

/// How often a continuing descriptor shortage is logged again.
pub const EXHAUSTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The log of descriptor shortages: a line when one starts, a summary at
/// most every [`EXHAUSTION_LOG_INTERVAL`] while it lasts, and one when a
/// connection is accepted again. Time comes in as `now`, so tests step it.
#[derive(Debug, Default)]
pub struct Exhaustion {
    /// Since when descriptors are short, and when it was last logged.
    episode: Option<(Instant, Instant)>,
    /// Idle connections closed to make room since the last line.
    replaced: u64,
    /// New clients closed at once since the last line.
    closed: u64,
    /// Failed accepts since the last line.
    failures: u64,
}

impl Exhaustion {
    /// An accept failed for want of descriptors, and `outcome` is what
    /// became of the waiting client. Returns the line to log as an error,
    /// if one is due.
    pub fn failed(
        &mut self,
        now: Instant,
        err: &std::io::Error,
        outcome: ShortageOutcome,
    ) -> Option<String> {
        self.failures += 1;
        self.replaced += u64::from(outcome == ShortageOutcome::Replaced);
        self.closed += u64::from(outcome == ShortageOutcome::ClosedNew);
        match self.episode {
            None => {
                self.episode = Some((now, now));
                let limit = nofile_limit().map_or_else(|| "unknown".into(), |l| l.to_string());
                let line = format!(
                    "accept connection: {} (descriptor limit {limit}): each new client takes the place of the longest-idle one, which is closed (Postfix clients reconnect), or is closed at once when none is idle; this is logged once every {}s",
                    strerror(err),
                    EXHAUSTION_LOG_INTERVAL.as_secs()
                );
                self.reset();
                Some(line)
            }
            Some((since, last)) if now.duration_since(last) >= EXHAUSTION_LOG_INTERVAL => {
                self.episode = Some((since, now));
                let line = format!(
                    "accept connection: {}: still out of descriptors after {}s; {} accepts failed, {} idle clients were closed to make room and {} new clients were closed at once in the last {}s",
                    strerror(err),
                    now.duration_since(since).as_secs(),
                    self.failures,
                    self.replaced,
                    self.closed,
                    now.duration_since(last).as_secs()
                );
                self.reset();
                Some(line)
            }
            Some(_) => None,
        }
    }

    /// A connection was accepted: the end of a shortage, if there was one.
    /// Returns the line to log (info) then.
    #[inline]
    pub fn accepted(&mut self, now: Instant) -> Option<String> {
        let (since, _) = self.episode.take()?;
        let line = format!(
            "accept connection: descriptors available again after {}s; {} more accepts failed, {} idle clients were closed to make room and {} new clients were closed at once since the last report",
            now.duration_since(since).as_secs(),
            self.failures,
            self.replaced,
            self.closed
        );
        self.reset();
        Some(line)
    }

    fn reset(&mut self) {
        self.failures = 0;
        self.replaced = 0;
        self.closed = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_shortage_is_logged_once_per_interval_and_at_its_end() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_millis(n);
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut x = Exhaustion::default();
        assert_eq!(x.accepted(s(0)), None);
        use ShortageOutcome::{ClosedNew, Nothing, Replaced};
        let first = x.failed(s(0), &e, Replaced).unwrap();
        assert!(
            first.starts_with("accept connection: Too many open files (descriptor limit "),
            "{first}"
        );
        // 10 failures a second for 59.9 s: nothing more.
        let mut lines = 0;
        for ms in (100..60_000).step_by(100) {
            let outcome = match ms % 400 {
                0 => ClosedNew,
                200 => Replaced,
                _ => Nothing,
            };
            lines += usize::from(x.failed(s(ms), &e, outcome).is_some());
        }
        assert_eq!(lines, 0);
        let again = x.failed(s(60_000), &e, ClosedNew).unwrap();
        assert_eq!(
            again,
            "accept connection: Too many open files: still out of descriptors after 60s; 600 accepts failed, 150 idle clients were closed to make room and 150 new clients were closed at once in the last 60s"
        );
        assert_eq!(x.failed(s(60_001), &e, Replaced), None);
        assert_eq!(
            x.accepted(s(61_500)).unwrap(),
            "accept connection: descriptors available again after 61s; 1 more accepts failed, 1 idle clients were closed to make room and 0 new clients were closed at once since the last report"
        );
        assert_eq!(x.accepted(s(61_600)), None);
        // A new shortage starts a new episode, logged at once.
        assert!(x
            .failed(s(61_700), &e, Nothing)
            .unwrap()
            .contains("descriptor limit"));
    }

    #[test]
    fn a_repeated_line_is_logged_once_per_interval() {
        let t0 = Instant::now();
        let mut every = LogEvery::new(EXHAUSTION_LOG_INTERVAL);
        assert_eq!(every.due(t0), Some(0));
        // 10 a second for 59.9 s: nothing more.
        let logged = (1..600)
            .filter(|i| every.due(t0 + Duration::from_millis(i * 100)).is_some())
            .count();
        assert_eq!(logged, 0);
        assert_eq!(every.due(t0 + Duration::from_secs(60)), Some(599));
        assert_eq!(every.due(t0 + Duration::from_secs(61)), None);
        assert_eq!(every.due(t0 + Duration::from_secs(120)), Some(1));
    }

    #[test]
    fn the_budget_leaves_the_reserve_and_what_the_daemon_holds() {
        let b = ConnectionBudget::new(Some(4096), 40);
        assert_eq!(b.max(), Some(4096 - 40 - OWN_FILES_RESERVE));
        assert!(!b.is_spent(4096 - 41 - OWN_FILES_RESERVE as usize));
        assert!(b.is_spent(4096 - 40 - OWN_FILES_RESERVE as usize));
        // A small limit keeps three quarters for the daemon and clients.
        assert_eq!(
            ConnectionBudget::new(Some(1024), 40).max(),
            Some(1024 - 40 - 256)
        );
        assert_eq!(
            ConnectionBudget::new(Some(96), 20).max(),
            Some(96 - 20 - 24)
        );
        // No room at all, and no known limit.
        assert!(ConnectionBudget::new(Some(16), 40).is_spent(0));
        assert!(!ConnectionBudget::new(None, 40).is_spent(usize::MAX));
    }

    #[test]
    fn the_spare_descriptor_is_released_and_restored() {
        let mut spare = Spare::new();
        assert!(spare.release());
        assert!(!spare.release());
        assert!(spare.restore());
        assert!(spare.release());
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        let log = Logger::root(slog::Discard, slog::o!());
        let after = raise_nofile_limit(&log).unwrap();
        assert_eq!(Some(after), nofile_limit());
    }
}
