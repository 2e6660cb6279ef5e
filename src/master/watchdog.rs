//! The watchdog tlsmgr(8) promises (spec §2.8): when the daemon makes no
//! progress for `daemon_timeout`, it logs `fatal: watchdog timeout` and
//! exits 1, so master(8) starts a fresh one.
//!
//! "Progress" is checked by a separate OS thread that a stuck event loop
//! cannot stop, and is three things:
//! - the main event loop beats a heartbeat several times per period (a
//!   blocked actor on the main thread stops it);
//! - every I/O thread beats its own ([`Watchdog::register_thread`]): a
//!   request that blocks its thread stops that thread's beat, however busy
//!   the other threads are;
//! - every probe must be answered within the period: the heartbeat pings
//!   each cache actor ([`Watchdog::probe_started`]), and a store stuck in
//!   I/O keeps its actor's thread from answering;
//! - and a request in flight must start or finish something within the
//!   period. Requests only bump atomic counters, with no lock and no clock
//!   read (they are the hot path, run by every I/O thread at once); the
//!   checking thread notes when it first sees the event count change, so
//!   such a stall is caught between one and one and a quarter periods
//!   after the last event.

use slog::{crit, Logger};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    heartbeat: Instant,
    /// The request event count the checker last saw, and when it first
    /// saw it.
    seen_events: u64,
    seen_at: Instant,
    /// Last beat of each registered I/O thread.
    threads: Vec<Instant>,
    /// Probes in flight, by id: when each was sent.
    probes: HashMap<u64, Instant>,
    next_probe: u64,
}

/// Shared progress record.
#[derive(Debug)]
pub struct Watchdog {
    state: Mutex<State>,
    in_flight: AtomicUsize,
    /// Requests started plus requests finished.
    request_events: AtomicU64,
    timeout: Duration,
}

impl Watchdog {
    /// A watchdog with this `daemon_timeout`.
    pub fn new(timeout: Duration) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Watchdog {
            state: Mutex::new(State {
                heartbeat: now,
                seen_events: 0,
                seen_at: now,
                threads: Vec::new(),
                probes: HashMap::new(),
                next_probe: 0,
            }),
            in_flight: AtomicUsize::new(0),
            request_events: AtomicU64::new(0),
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
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.request_events.fetch_add(1, Ordering::Relaxed);
    }

    /// A request finished.
    pub fn request_finished(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        self.request_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the daemon is stuck at `now`. Called by the checking
    /// thread each [`Self::beat_interval`]: a change in the request event
    /// count counts as progress at the time of the call that sees it.
    pub fn stuck_at(&self, now: Instant) -> bool {
        let mut s = self.lock();
        let events = self.request_events.load(Ordering::Relaxed);
        if events != s.seen_events {
            s.seen_events = events;
            s.seen_at = now;
        }
        let late = |t: &Instant| now.duration_since(*t) >= self.timeout;
        late(&s.heartbeat)
            || (self.in_flight.load(Ordering::Relaxed) > 0 && late(&s.seen_at))
            || s.threads.iter().any(late)
            || s.probes.values().any(late)
    }

    /// A thread whose progress counts: returns its index for
    /// [`Watchdog::thread_beat`], which it must call every
    /// [`Watchdog::beat_interval`].
    pub fn register_thread(&self) -> usize {
        let mut s = self.lock();
        s.threads.push(Instant::now());
        s.threads.len() - 1
    }

    /// Thread `index` made progress.
    pub fn thread_beat(&self, index: usize) {
        if let Some(t) = self.lock().threads.get_mut(index) {
            *t = Instant::now();
        }
    }

    /// Something was asked that must be answered within the period; pass
    /// the id to [`Watchdog::probe_finished`] when it is.
    pub fn probe_started(&self) -> u64 {
        let mut s = self.lock();
        let id = s.next_probe;
        s.next_probe = s.next_probe.wrapping_add(1);
        s.probes.insert(id, Instant::now());
        id
    }

    /// Probe `id` was answered (or given up).
    pub fn probe_finished(&self, id: u64) {
        self.lock().probes.remove(&id);
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
        // The checker's sample that sees the request start.
        assert!(!w.stuck_at(t1));
        // Heartbeat fresh, but the request is stuck.
        w.beat();
        assert!(w.stuck_at(t1 + Duration::from_secs(11)));
        w.request_finished();
        w.beat();
        assert!(!w.stuck_at(Instant::now() + Duration::from_secs(9)));
    }

    #[test]
    fn one_silent_thread_or_probe_is_enough() {
        let w = Watchdog::new(Duration::from_secs(10));
        let a = w.register_thread();
        let b = w.register_thread();
        let t0 = Instant::now();
        // Thread b and the heartbeat keep beating; thread a stopped.
        w.beat();
        w.thread_beat(b);
        assert!(w.stuck_at(t0 + Duration::from_secs(11)));
        // Busy requests elsewhere do not hide it.
        w.request_started();
        w.request_finished();
        assert!(w.stuck_at(t0 + Duration::from_secs(11)));
        w.thread_beat(a);
        let t1 = Instant::now();
        assert!(!w.stuck_at(t1 + Duration::from_secs(9)));
        let p = w.probe_started();
        let q = w.probe_started();
        w.probe_finished(q);
        w.beat();
        w.thread_beat(a);
        w.thread_beat(b);
        assert!(
            w.stuck_at(Instant::now() + Duration::from_secs(10)),
            "p unanswered"
        );
        w.probe_finished(p);
        w.beat();
        w.thread_beat(a);
        w.thread_beat(b);
        assert!(!w.stuck_at(Instant::now() + Duration::from_secs(9)));
    }
}
