//! The watchdog tlsmgr(8) promises (spec §2.8): when the daemon makes no
//! progress for `daemon_timeout`, it logs `fatal: watchdog timeout` and
//! exits 1, so master(8) starts a fresh one.
//!
//! "Progress" is two things, checked by a separate OS thread that a stuck
//! event loop cannot stop: the main event loop beats a heartbeat several
//! times per period (a blocked actor on the main thread stops it), and a
//! request in flight must start or finish something within the period (a
//! request waiting forever on a cache actor's thread stops that; so does a
//! cache actor that does not answer the periodic flush the heartbeat sends).

use slog::{crit, Logger};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    heartbeat: Instant,
    in_flight: usize,
    last_request_event: Instant,
}

/// Shared progress record.
#[derive(Debug)]
pub struct Watchdog {
    state: Mutex<State>,
    timeout: Duration,
}

impl Watchdog {
    /// A watchdog with this `daemon_timeout`.
    pub fn new(timeout: Duration) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Watchdog {
            state: Mutex::new(State {
                heartbeat: now,
                in_flight: 0,
                last_request_event: now,
            }),
            timeout,
        })
    }

    /// How often the event loop should call [`Self::beat`].
    pub fn beat_interval(&self) -> Duration {
        (self.timeout / 4).max(Duration::from_millis(50))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The event loop is alive.
    pub fn beat(&self) {
        self.lock().heartbeat = Instant::now();
    }

    /// A request started.
    pub fn request_started(&self) {
        let mut s = self.lock();
        s.in_flight += 1;
        s.last_request_event = Instant::now();
    }

    /// A request finished.
    pub fn request_finished(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.last_request_event = Instant::now();
    }

    /// Whether the daemon is stuck at `now`.
    pub fn stuck_at(&self, now: Instant) -> bool {
        let s = self.lock();
        now.duration_since(s.heartbeat) >= self.timeout
            || (s.in_flight > 0 && now.duration_since(s.last_request_event) >= self.timeout)
    }

    /// Starts the checking thread: on a stall it logs and exits the process.
    pub fn start_thread(self: &Arc<Self>, log: Logger) -> std::io::Result<()> {
        let dog = self.clone();
        std::thread::Builder::new()
            .name("tlsmgr-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(dog.beat_interval());
                if dog.stuck_at(Instant::now()) {
                    crit!(log, "watchdog timeout");
                    std::process::exit(1);
                }
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_and_requests() {
        let w = Watchdog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(!w.stuck_at(t0 + Duration::from_secs(9)));
        assert!(w.stuck_at(t0 + Duration::from_secs(11)), "no heartbeat");
        w.beat();
        w.request_started();
        let t1 = Instant::now();
        // Heartbeat fresh, but the request is stuck.
        w.beat();
        assert!(w.stuck_at(t1 + Duration::from_secs(11)));
        w.request_finished();
        w.beat();
        assert!(!w.stuck_at(Instant::now() + Duration::from_secs(9)));
    }
}
