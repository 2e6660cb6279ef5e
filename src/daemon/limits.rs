//! File descriptors: the process limit, and what the daemon does when it
//! runs out of them.
//!
//! Every smtpd(8), smtp(8) and lmtp process keeps a connection to tlsmgr, so
//! a busy server holds thousands of them. [`raise_nofile_limit`] lifts the
//! soft `RLIMIT_NOFILE` (often 1024) to the hard limit at start. When the
//! daemon still runs out (`accept: Too many open files`), the accept loop
//! asks [`Connections::close_idle`] to close the connections that have been
//! idle the longest: a client between requests loses nothing it cannot get
//! back by reconnecting (Postfix clients reconnect on their own), while a
//! new client left in the listen queue would wait without end.
//!
//! The data path pays one atomic store (and a clock read) per request for
//! this; the registry's lock is taken when a connection opens or closes and
//! when the accept loop looks for idle connections, never per request.

use slog::{debug, info, warn, Logger};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

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
        debug!(log, "file descriptor limit {} (already the hard limit)", soft);
        return Some(soft as u64);
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
        return Some(soft as u64);
    }
    info!(log, "file descriptor limit raised from {} to {}", soft, target);
    Some(target as u64)
}

/// The soft `RLIMIT_NOFILE` now, for log lines.
pub fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `raise_nofile_limit`: writes only our local struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur as u64)
}

/// True for the accept(2) errors that mean "no descriptor or buffer for a
/// new connection now": closing idle connections can help.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// `last_active` of a connection that is serving a request (never idle).
const BUSY: u64 = u64::MAX;

/// One connection's entry in the registry.
#[derive(Debug)]
struct ConnState {
    /// Microseconds since the registry's epoch at which the last request
    /// completed (or the connection was accepted); [`BUSY`] while a request
    /// is being served.
    last_active: AtomicU64,
    /// Woken to make the connection close at its next wait for a request.
    close: tokio::sync::Notify,
}

/// The open client connections, shared by the accept loops and the I/O
/// threads.
#[derive(Debug)]
pub struct Connections {
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        }
    }
}

impl Connections {
    fn now(&self) -> u64 {
        // u64 microseconds last 584,000 years; never BUSY.
        self.epoch.elapsed().as_micros().min(u128::from(BUSY - 1)) as u64
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        // The map stays consistent whatever panicked while holding it
        // (every update is a single insert or remove).
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, idle since now. Dropping the returned
    /// [`Registration`] removes it.
    pub fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            last_active: AtomicU64::new(self.now()),
            close: tokio::sync::Notify::new(),
        });
        self.lock().insert(id, state.clone());
        Registration {
            registry: self.clone(),
            id,
            state,
        }
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the `n` least recently active idle connections (not serving a
    /// request) to close; returns how many were asked. They close on their
    /// own I/O threads, as soon as those run.
    pub fn close_idle(&self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let mut idle: Vec<(u64, Arc<ConnState>)> = self
            .lock()
            .values()
            .filter_map(|c| {
                let t = c.last_active.load(Ordering::Relaxed);
                (t != BUSY).then(|| (t, c.clone()))
            })
            .collect();
        if idle.len() > n {
            idle.select_nth_unstable_by_key(n, |(t, _)| *t);
            idle.truncate(n);
        }
        let mut asked = 0;
        for (t, c) in &idle {
            // Marked busy so that the next call (the accept loop retries
            // within milliseconds) picks others, not these again; skipped if
            // a request started meanwhile.
            if c.last_active
                .compare_exchange(*t, BUSY, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                // Stored as a permit if the connection is not waiting at
                // this instant: it then closes at its next wait.
                c.close.notify_one();
                asked += 1;
            }
        }
        asked
    }
}

/// A connection's handle on its registry entry; deregisters when dropped.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Connections>,
    id: u64,
    state: Arc<ConnState>,
}

impl Registration {
    /// A request was read: the connection is not idle until it is answered.
    #[inline]
    pub fn request_started(&self) {
        self.state.last_active.store(BUSY, Ordering::Relaxed);
    }

    /// The reply was written: idle from now.
    #[inline]
    pub fn request_finished(&self) {
        self.state
            .last_active
            .store(self.registry.now(), Ordering::Relaxed);
    }

    /// Resolves when the accept loop wants this connection closed.
    pub async fn close_requested(&self) {
        self.state.close.notified().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn closes_the_least_recently_active_idle_connections() {
        let reg = Arc::new(Connections::default());
        let a = reg.register();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = reg.register();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let c = reg.register();
        // a is the oldest but busy; b is next.
        a.request_started();
        assert_eq!(reg.close_idle(1), 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let quick = std::time::Duration::from_millis(10);
            assert!(tokio::time::timeout(quick, b.close_requested())
                .await
                .is_ok());
            assert!(tokio::time::timeout(quick, c.close_requested())
                .await
                .is_err());
            assert!(tokio::time::timeout(quick, a.close_requested())
                .await
                .is_err());
        });
        assert_eq!(reg.len(), 3);
        drop((a, b, c));
        assert!(reg.is_empty());
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        let log = Logger::root(slog::Discard, slog::o!());
        let after = raise_nofile_limit(&log).unwrap();
        assert_eq!(Some(after), nofile_limit());
    }
}
