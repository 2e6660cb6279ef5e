//! The circuit breaker in front of the shared store: after
//! [`Breaker::threshold`] consecutive failures it opens, and while it is open
//! nothing calls Redis (no request waits on a store that is away); only the
//! client's jittered probe does, and its first success closes it. Lock-free:
//! every I/O thread asks it on every shared lookup.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A state change the caller logs (one line each way, never one per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed.
    None,
    /// It just opened.
    Opened,
    /// It just closed.
    Closed,
}

/// Consecutive failures before the breaker opens.
pub const DEFAULT_THRESHOLD: u32 = 3;

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
    threshold: u32,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures.
    pub fn new(threshold: u32) -> Self {
        Breaker {
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            threshold: threshold.max(1),
        }
    }

    /// Consecutive failures before it opens.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Whether calls may go to Redis now.
    pub fn allows(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    /// A call (or probe) succeeded.
    pub fn success(&self) -> Transition {
        self.failures.store(0, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) {
            Transition::Closed
        } else {
            Transition::None
        }
    }

    /// A call failed (error or timeout).
    pub fn failure(&self) -> Transition {
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if n >= self.threshold && !self.open.swap(true, Ordering::AcqRel) {
            Transition::Opened
        } else {
            Transition::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_after_threshold_and_closes_once() {
        let b = Breaker::new(3);
        assert!(b.allows());
        assert_eq!(b.failure(), Transition::None);
        assert_eq!(b.failure(), Transition::None);
        // A success in between resets the count.
        assert_eq!(b.success(), Transition::None);
        assert_eq!(b.failure(), Transition::None);
        assert_eq!(b.failure(), Transition::None);
        assert_eq!(b.failure(), Transition::Opened);
        assert!(!b.allows());
        // Failed probes while open: no new transition.
        for _ in 0..10 {
            assert_eq!(b.failure(), Transition::None);
        }
        assert_eq!(b.success(), Transition::Closed);
        assert!(b.allows());
        assert_eq!(b.success(), Transition::None);
    }
}
