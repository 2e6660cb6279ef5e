//! When the PRNG manager's jobs are due, without I/O or timers: the actor
//! asks [`Schedule::due`] with the injected clock's `now` and reports each
//! outcome back, so tests step time instead of sleeping.
//!
//! Two jobs (spec §2.5): the reseed from `tls_random_source` and the
//! exchange-file update. Both run once at start. After a success the next run
//! is `period * b / 255` seconds later, `b` a pool byte, exactly Postfix's
//! integer formula (so uniformly in `[0, period]`), but never less than one
//! second: where Postfix's 0 re-runs the job at once, we wait a second, so
//! a job never runs back to back (nothing is lost: the pool is mixed either
//! way) and a stepped test clock that stands still sees it idle. After a failure the job is retried with backoff (1 s, 2 s, 4 s ...
//! capped at [`MAX_BACKOFF`] and at the period): stock tlsmgr exits to reopen
//! a lost source, we reopen in place.

/// Longest wait before retrying a failed source or exchange file.
pub const MAX_BACKOFF: u64 = 300;

/// Postfix's next-run delay: `period * b / 255` in integer arithmetic.
pub fn random_delay(period: u64, b: u8) -> u64 {
    period.saturating_mul(u64::from(b)) / 255
}

/// The job kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Read `tls_random_source`.
    Reseed,
    /// Update the exchange file.
    Exchange,
}

/// One job's timer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timer {
    /// When it is next due; `None` while running or when disabled.
    pub at: Option<u64>,
    /// Consecutive failures (0 after a success).
    pub failures: u32,
}

impl Timer {
    fn succeeded(&mut self, now: u64, period: u64, b: u8) -> u64 {
        self.failures = 0;
        let delay = random_delay(period, b).max(1);
        self.at = Some(now.saturating_add(delay));
        delay
    }

    fn failed(&mut self, now: u64, period: u64) -> u64 {
        let delay = backoff(self.failures, period);
        self.failures = self.failures.saturating_add(1);
        self.at = Some(now.saturating_add(delay));
        delay
    }
}

/// The delay after `failures` earlier consecutive failures: 1, 2, 4 ... s,
/// never more than [`MAX_BACKOFF`] nor the job's period (but at least 1 s,
/// so a broken source cannot spin).
pub fn backoff(failures: u32, period: u64) -> u64 {
    let exp = 1u64.checked_shl(failures.min(32)).unwrap_or(u64::MAX);
    exp.min(MAX_BACKOFF).min(period).max(1)
}

/// Both timers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// The reseed timer.
    pub reseed: Timer,
    /// The exchange-file timer.
    pub exchange: Timer,
}

impl Schedule {
    /// A schedule whose enabled jobs are due at `now` (the start-up run).
    #[cfg(test)]
    pub fn new(now: u64, reseed: bool, exchange: bool) -> Self {
        let timer = |on: bool| Timer {
            at: on.then_some(now),
            failures: 0,
        };
        Schedule {
            reseed: timer(reseed),
            exchange: timer(exchange),
        }
    }

    fn timer(&mut self, job: Job) -> &mut Timer {
        match job {
            Job::Reseed => &mut self.reseed,
            Job::Exchange => &mut self.exchange,
        }
    }

    /// The jobs due at `now`. Each returned job is disarmed until its
    /// outcome is reported, so a slow job is never started twice.
    pub fn due(&mut self, now: u64) -> Vec<Job> {
        let mut jobs = Vec::new();
        for job in [Job::Reseed, Job::Exchange] {
            let t = self.timer(job);
            if t.at.is_some_and(|at| at <= now) {
                t.at = None;
                jobs.push(job);
            }
        }
        jobs
    }

    /// Reports success; returns the delay until the next run.
    pub fn succeeded(&mut self, job: Job, now: u64, period: u64, b: u8) -> u64 {
        self.timer(job).succeeded(now, period, b)
    }

    /// Reports failure; returns the backoff delay until the retry.
    pub fn failed(&mut self, job: Job, now: u64, period: u64) -> u64 {
        self.timer(job).failed(now, period)
    }

    /// Stops a job (e.g. a plain-file source after its one read).
    pub fn disable(&mut self, job: Job) {
        *self.timer(job) = Timer::default();
    }

    /// Arms a job to run at `now` (e.g. after a configuration change).
    pub fn arm_now(&mut self, job: Job, now: u64) {
        *self.timer(job) = Timer {
            at: Some(now),
            failures: 0,
        };
    }

    /// The earliest time anything is due.
    #[cfg(test)]
    pub fn next_due(&self) -> Option<u64> {
        [self.reseed.at, self.exchange.at]
            .into_iter()
            .flatten()
            .min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn postfix_formula_spans_zero_to_period() {
        assert_eq!(random_delay(3600, 0), 0);
        assert_eq!(random_delay(3600, 255), 3600);
        assert_eq!(random_delay(3600, 128), 3600 * 128 / 255);
        assert_eq!(random_delay(1, 254), 0, "integer arithmetic, as in C");
        assert_eq!(random_delay(8_421_504, 255), 8_421_504);
        for b in 0..=255u8 {
            assert!(random_delay(100, b) <= 100);
        }
    }

    #[test]
    fn both_jobs_run_at_start_then_at_the_drawn_time() {
        let mut s = Schedule::new(1000, true, true);
        assert_eq!(s.next_due(), Some(1000));
        assert_eq!(s.due(999), vec![]);
        assert_eq!(s.due(1000), vec![Job::Reseed, Job::Exchange]);
        assert_eq!(s.due(1000), vec![], "in flight: not started twice");
        assert_eq!(s.next_due(), None);
        assert_eq!(s.succeeded(Job::Reseed, 1000, 3600, 51), 720);
        assert_eq!(s.succeeded(Job::Exchange, 1001, 60, 0), 1, "at least 1 s");
        assert_eq!(s.next_due(), Some(1002));
        assert_eq!(s.due(1001), vec![]);
        assert_eq!(s.due(1002), vec![Job::Exchange]);
        assert_eq!(s.due(1719), vec![]);
        assert_eq!(s.due(1720), vec![Job::Reseed]);
    }

    #[test]
    fn disabled_jobs_never_run() {
        let mut s = Schedule::new(5, false, true);
        assert_eq!(s.due(u64::MAX), vec![Job::Exchange]);
        s.disable(Job::Exchange);
        assert_eq!(s.next_due(), None);
        assert_eq!(s.due(u64::MAX), vec![]);
    }

    #[test]
    fn failures_back_off_and_success_resets() {
        let mut s = Schedule::new(0, true, false);
        let mut delays = Vec::new();
        for _ in 0..12 {
            let now = s.next_due().unwrap();
            assert_eq!(s.due(now), vec![Job::Reseed]);
            delays.push(s.failed(Job::Reseed, now, 3600));
        }
        assert_eq!(
            delays,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
        );
        assert_eq!(s.reseed.failures, 12);
        s.due(u64::MAX);
        s.succeeded(Job::Reseed, 10_000, 3600, 255);
        assert_eq!(s.reseed.failures, 0);
        assert_eq!(s.failed(Job::Reseed, 20_000, 3600), 1);
    }

    #[test]
    fn backoff_never_exceeds_the_period_nor_drops_to_zero() {
        assert_eq!(backoff(20, 10), 10);
        assert_eq!(backoff(0, 1), 1);
        assert_eq!(backoff(u32::MAX, 3600), MAX_BACKOFF);
    }
}
