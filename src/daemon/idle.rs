//! Every open connection and how long it has waited for its next request:
//! which connection gives up its descriptor when the daemon runs out of
//! them (the one that has waited longest), and which have waited longer
//! than `ipc_timeout` ([`sweep`]).
//!
//! Every smtpd(8), smtp(8) and lmtp process keeps its tlsmgr connection
//! open between requests, most of them idle. At the descriptor limit a new
//! client is better served than an idle one: Postfix's client side
//! (`attr_clnt`) reconnects by itself when it finds its connection closed
//! at its next request, whereas a newcomer turned away has no TLS cache for
//! that handshake. So the accept loop (`super::accept_loop`) takes the
//! newcomer into its reserve descriptor's slot, shuts the longest-idle
//! connection down ([`IdleConnections::close_longest_idle`]), and takes the
//! reserve back once that connection's descriptor is closed.
//!
//! `ipc_timeout` is enforced here too, not by a timer per request: [`sweep`]
//! shuts down the connections that have been idle too long (a request left
//! half sent counts as idle since the previous reply, as before), a few
//! times per `ipc_timeout`. So the data path arms no timer and reads no
//! clock for it.
//!
//! Cost on the data path: two relaxed stores per request (busy, idle) into
//! the connection's own slot. The registry's lock is taken only when a
//! connection starts or ends, when one is chosen to be closed, and once
//! per sweep.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `Activity::since` of a connection that is serving a request.
const BUSY: u64 = u64::MAX;

/// `Activity::closing`: open.
const OPEN: u8 = 0;
/// `Activity::closing`: shut down to make room for a new client.
const EVICTED: u8 = 1;
/// `Activity::closing`: shut down after `ipc_timeout` without a request.
const TIMED_OUT: u8 = 2;

/// The connections that are open, with when each was last active.
#[derive(Debug)]
pub struct IdleConnections {
    slots: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
    /// Coarse time in milliseconds since `start`, advanced by the accept
    /// loop ([`IdleConnections::tick`]): connections read it instead of
    /// the clock, which costs nothing on the data path and is precise
    /// enough to tell an hour's idleness from a millisecond's.
    clock: AtomicU64,
    start: Instant,
    /// Notified when a connection chosen to be closed has closed its
    /// descriptor.
    closed: tokio::sync::Notify,
}

#[derive(Debug)]
struct Slot {
    /// The connection's socket. Valid while the slot is in the map: the
    /// connection removes its slot before it closes the socket, and the
    /// shutdown below happens under the same lock.
    fd: RawFd,
    activity: Arc<Activity>,
}

/// What a connection and the registry share.
#[derive(Debug)]
struct Activity {
    /// The registry's clock when the connection last became idle, or
    /// [`BUSY`].
    since: AtomicU64,
    /// [`OPEN`], or why it was shut down ([`EVICTED`]: the accept loop
    /// waits for its descriptor; [`TIMED_OUT`]).
    closing: AtomicU8,
}

impl Default for IdleConnections {
    fn default() -> Self {
        IdleConnections {
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            start: Instant::now(),
            closed: tokio::sync::Notify::new(),
        }
    }
}

impl IdleConnections {
    /// Advances the coarse clock to `now`.
    pub fn tick(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.start).as_millis();
        self.clock
            .fetch_max(u64::try_from(ms).unwrap_or(u64::MAX - 1), Relaxed);
    }

    /// Registers the connection whose socket is `fd`, idle from now. The
    /// returned registration must be dropped before the socket is closed.
    pub fn register(self: &Arc<Self>, fd: BorrowedFd<'_>) -> Registration {
        let activity = Arc::new(Activity {
            since: AtomicU64::new(self.clock.load(Relaxed)),
            closing: AtomicU8::new(OPEN),
        });
        let id = self.next_id.fetch_add(1, Relaxed);
        let slot = Slot {
            fd: fd.as_raw_fd(),
            activity: activity.clone(),
        };
        if let Ok(mut slots) = self.slots.lock() {
            slots.insert(id, slot);
        }
        Registration {
            registry: self.clone(),
            id,
            activity,
        }
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.len())
    }

    /// True when no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shuts down the connection that has been idle longest (not one that
    /// is serving a request, nor one already chosen). Its task then sees
    /// end of file, ends and closes its descriptor; wait for that with
    /// [`IdleConnections::wait_closed`]. False when no connection is idle.
    pub fn close_longest_idle(&self) -> bool {
        let Ok(slots) = self.slots.lock() else {
            return false;
        };
        let victim = slots
            .iter()
            .filter(|(_, s)| s.activity.closing.load(Relaxed) == OPEN)
            .map(|(id, s)| (s.activity.since.load(Relaxed), *id, s))
            .filter(|(since, _, _)| *since != BUSY)
            .min_by_key(|(since, id, _)| (*since, *id));
        let Some((_, _, slot)) = victim else {
            return false;
        };
        shut_down(slot, EVICTED);
        true
    }

    /// Shuts down every connection that has waited for its next request
    /// for at least `max` (by the coarse clock, advanced to `now` first,
    /// which may lag by up to `lag`: so `max + lag` is what is compared).
    /// `before` is called before each one is shut down (the warning goes
    /// out before its client can see the end of file). Returns how many.
    pub fn close_timed_out(
        &self,
        now: Instant,
        max: Duration,
        lag: Duration,
        mut before: impl FnMut(),
    ) -> usize {
        self.tick(now);
        let clock = self.clock.load(Relaxed);
        let limit = u64::try_from((max + lag).as_millis()).unwrap_or(u64::MAX);
        let Ok(slots) = self.slots.lock() else {
            return 0;
        };
        let mut closed = 0;
        for slot in slots.values() {
            let since = slot.activity.since.load(Relaxed);
            if since != BUSY
                && clock.saturating_sub(since) >= limit
                && slot.activity.closing.load(Relaxed) == OPEN
            {
                before();
                shut_down(slot, TIMED_OUT);
                closed += 1;
            }
        }
        closed
    }

    /// Waits until a connection chosen by
    /// [`IdleConnections::close_longest_idle`] has closed its descriptor,
    /// at most `max`. False on timeout.
    pub async fn wait_closed(&self, max: Duration) -> bool {
        tokio::time::timeout(max, self.closed.notified())
            .await
            .is_ok()
    }
}

/// Marks `slot` as closing for `why` and shuts its socket down. Called with
/// the registry's lock held.
fn shut_down(slot: &Slot, why: u8) {
    slot.activity.closing.store(why, Relaxed);
    // The descriptor is the connection's open socket: its slot is still in
    // the map, which the caller holds locked, and the connection removes
    // the slot (under this lock) before it closes the socket. shutdown(2)
    // wakes its reader with end of file and closes nothing itself.
    let _ = nix::sys::socket::shutdown(slot.fd, nix::sys::socket::Shutdown::Both);
}

/// Enforces `ipc_timeout` (read from `timeout` at every round, so a reload
/// applies to open connections too) on the connections of `registry`: a
/// round every quarter of it, at least every 10 ms and at most every
/// second, with stock's warning for each connection closed. Runs until the
/// daemon stops.
pub async fn sweep(
    registry: Arc<IdleConnections>,
    timeout: impl Fn() -> Duration,
    log: slog::Logger,
) {
    loop {
        let max = timeout();
        let period = (max / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::time::sleep(period).await;
        // The clock lags by at most one period (this sweep ticks it).
        registry.close_timed_out(Instant::now(), max, period, || {
            slog::warn!(log, "timeout while waiting for data from tlsmgr socket")
        });
    }
}

/// A connection's place in [`IdleConnections`]; removes it when dropped.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<IdleConnections>,
    id: u64,
    activity: Arc<Activity>,
}

impl Registration {
    /// A request was read: this connection is not idle until its reply is
    /// written.
    #[inline]
    pub fn busy(&self) {
        self.activity.since.store(BUSY, Relaxed);
    }

    /// The reply was written: idle from now.
    #[inline]
    pub fn idle(&self) {
        self.activity
            .since
            .store(self.registry.clock.load(Relaxed), Relaxed);
    }

    /// Removes the registration and returns what is needed once the
    /// socket is closed: call [`Closed::socket_closed`] then.
    pub fn unregister(self) -> Closed {
        Closed {
            registry: self.registry.clone(),
            activity: self.activity.clone(),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut slots) = self.registry.slots.lock() {
            slots.remove(&self.id);
        }
    }
}

/// A connection that is no longer registered (see
/// [`Registration::unregister`]).
#[derive(Debug)]
pub struct Closed {
    registry: Arc<IdleConnections>,
    activity: Arc<Activity>,
}

impl Closed {
    /// The connection's socket is closed: if it was chosen to make room,
    /// its descriptor is free now, and the accept loop is told.
    pub fn socket_closed(self) {
        if self.activity.closing.load(Relaxed) == EVICTED {
            self.registry.closed.notify_one();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_longest_idle_connection_is_closed_and_a_busy_one_never() {
        let reg = Arc::new(IdleConnections::default());
        let t0 = Instant::now();
        let pairs: Vec<(UnixStream, UnixStream)> =
            (0..3).map(|_| UnixStream::pair().unwrap()).collect();
        // Idle since 0 ms (busy now), since 10 ms and since 20 ms.
        let regs: Vec<Registration> = pairs
            .iter()
            .enumerate()
            .map(|(i, (ours, _))| {
                reg.tick(t0 + Duration::from_millis(10 * i as u64));
                reg.register(ours.as_fd())
            })
            .collect();
        regs[0].busy();
        assert!(reg.close_longest_idle());
        // The second one (idle since 10 ms) was shut down: its peer sees EOF.
        let mut buf = [0u8; 1];
        let mut peer = &pairs[1].1;
        assert_eq!(peer.read(&mut buf).unwrap(), 0);
        // Not chosen twice; then the third; then nobody (the first is busy).
        assert!(reg.close_longest_idle());
        let mut peer = &pairs[2].1;
        assert_eq!(peer.read(&mut buf).unwrap(), 0);
        assert!(!reg.close_longest_idle());
        regs[0].idle();
        assert!(reg.close_longest_idle());
        assert_eq!(reg.len(), 3);
        drop(regs);
        assert!(reg.is_empty());
    }

    #[test]
    fn only_connections_idle_for_the_timeout_are_timed_out() {
        let reg = Arc::new(IdleConnections::default());
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let pairs: Vec<(UnixStream, UnixStream)> =
            (0..3).map(|_| UnixStream::pair().unwrap()).collect();
        let regs: Vec<Registration> = pairs
            .iter()
            .map(|(ours, _)| reg.register(ours.as_fd()))
            .collect();
        // 0: busy for long; 1: idle since 0; 2: idle again at 1240 ms.
        regs[0].busy();
        let (max, lag) = (Duration::from_millis(1000), Duration::from_millis(250));
        // At 1200 ms nobody has waited 1000 + 250 ms.
        assert_eq!(reg.close_timed_out(ms(1200), max, lag, || ()), 0);
        reg.tick(ms(1240));
        regs[2].idle();
        // At 1250 ms the second has; the busy one and the recent one not.
        assert_eq!(reg.close_timed_out(ms(1250), max, lag, || ()), 1);
        let mut buf = [0u8; 1];
        let mut peer = &pairs[1].1;
        assert_eq!(peer.read(&mut buf).unwrap(), 0);
        // Not twice; the third at 1240 + 1250.
        assert_eq!(reg.close_timed_out(ms(2489), max, lag, || ()), 0);
        assert_eq!(reg.close_timed_out(ms(2490), max, lag, || ()), 1);
        // A connection shut down for want of requests frees no room the
        // accept loop waits for.
        assert!(!reg.close_longest_idle());
    }
}
