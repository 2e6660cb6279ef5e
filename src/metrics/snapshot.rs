//! [`Snapshot`]: every figure at one moment, summed from the counters and
//! completed with the gauges the daemon gathers; what the renderings read.

use super::{index_of_request, ReloadResult, LATENCY_BUCKETS_US, NBUCKETS};
use crate::protocol::{CacheType, RequestKind};

/// One cache's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheCounts {
    /// Which cache.
    pub cache_type: CacheType,
    /// Enabled (and its store in service) when the snapshot was taken.
    pub enabled: bool,
    /// Entries now (0 when disabled or down).
    pub entries: u64,
    /// Bytes on disk now.
    pub bytes: u64,
    /// Lookups by [`LookupResult`] (array order).
    pub lookups: [u64; 3],
    /// Entries written.
    pub updates: u64,
    /// Entries removed by `delete` requests.
    pub deletes: u64,
    /// Entries removed as expired.
    pub expired: u64,
    /// Entries evicted to keep the bound.
    pub evicted: u64,
    /// Stores started afresh (set aside, or removed under the daemon), by
    /// [`super::Lasting::index`].
    pub store_resets: [u64; 5],
}

impl Default for CacheCounts {
    fn default() -> Self {
        CacheCounts {
            cache_type: CacheType::Smtpd,
            enabled: false,
            entries: 0,
            bytes: 0,
            lookups: [0; 3],
            updates: 0,
            deletes: 0,
            expired: 0,
            evicted: 0,
            store_resets: [0; 5],
        }
    }
}

/// One request name's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    /// Which request.
    pub kind: RequestKind,
    /// Replies by status ([`STATUSES`] order).
    pub by_status: [u64; 3],
    /// Requests per latency bucket ([`LATENCY_BUCKETS_US`], then `+Inf`),
    /// not cumulative.
    pub latency_buckets: [u64; NBUCKETS],
    /// Sum of the latencies, nanoseconds.
    pub latency_sum_ns: u64,
}

impl RequestCounts {
    /// The latency buckets in order: upper bound in seconds (`INFINITY` for
    /// the last), requests in the bucket, and requests up to and including
    /// it (the cumulative count both Prometheus and `stats --json` show).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64, u64)> + '_ {
        let mut cumulative = 0;
        self.latency_buckets.iter().enumerate().map(move |(i, &n)| {
            cumulative += n;
            let le = LATENCY_BUCKETS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            (le, n, cumulative)
        })
    }

    /// Requests answered.
    pub fn total(&self) -> u64 {
        self.by_status.iter().sum()
    }

    /// The upper bound (seconds) of the bucket holding quantile `q`
    /// (0..=1), or `None` with no requests or in the `+Inf` bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return LATENCY_BUCKETS_US.get(i).map(|us| *us as f64 / 1e6);
            }
        }
        None
    }
}

/// The PRNG actor's counts (filled in by the daemon from its status).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrngCounts {
    /// Successful entropy-source reads.
    pub reseeds: u64,
    /// Bytes they delivered.
    pub reseed_bytes: u64,
    /// Failed source opens and reads.
    pub reseed_failures: u64,
    /// Exchange-file updates.
    pub exchange_writes: u64,
    /// Failed ones.
    pub exchange_failures: u64,
}

/// The process's own figures, from getrusage(2) (works under chroot, where
/// `/proc` is missing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size, bytes.
    pub max_rss_bytes: u64,
    /// Log lines dropped because syslogd or postlogd was not reading
    /// (`logging::lines_dropped`).
    pub log_lines_dropped: u64,
}

impl ProcessFigures {
    /// This process's figures now.
    pub fn now() -> Self {
        // SAFETY: getrusage writes into the zeroed struct we own; no other
        // memory is touched, and RUSAGE_SELF is always valid.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        if rc != 0 {
            return Self::default();
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        ProcessFigures {
            cpu_seconds: secs(ru.ru_utime) + secs(ru.ru_stime),
            // Linux reports ru_maxrss in kilobytes.
            max_rss_bytes: u64::try_from(ru.ru_maxrss).unwrap_or(0) * 1024,
            log_lines_dropped: crate::logging::lines_dropped(),
        }
    }
}

/// Every figure at one moment: what `tlsmgr stats` shows and `/metrics`
/// exports.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The daemon's version.
    pub version: &'static str,
    /// Clock seconds when taken.
    pub now: u64,
    /// Clock seconds when the daemon started.
    pub started_at: u64,
    /// Per cache, [`CacheType::index`] order.
    pub caches: [CacheCounts; 3],
    /// Per request, [`REQUESTS`] order.
    pub requests: [RequestCounts; 6],
    /// Encryption keys handed out (`tktkey` without a name, OK).
    pub tickets_issued: u64,
    /// `tktkey` by name that found the key.
    pub ticket_lookups_found: u64,
    /// `tktkey` by name that did not.
    pub ticket_lookups_unknown: u64,
    /// Times the current key changed.
    pub ticket_rotations: u64,
    /// Failed attempts to write the ticket key file.
    pub ticket_key_save_failures: u64,
    /// `seed` requests served.
    pub seed_requests: u64,
    /// Seed bytes served.
    pub seed_bytes: u64,
    /// The PRNG actor's counts.
    pub prng: PrngCounts,
    /// Reloads applied.
    pub reloads_applied: u64,
    /// Reloads refused.
    pub reloads_rejected: u64,
    /// When the last reload was, and how it ended.
    pub last_reload: Option<(u64, ReloadResult)>,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// CPU and memory.
    pub process: ProcessFigures,
    /// The shared store's figures (`tlsmgr_shared_store`); zeros while
    /// sharing is off. They start again from zero when a reload makes a
    /// new link (another URL, site or secret).
    pub shared: SharedCounts,
}

/// What the link to the shared store did (issue 13), copied from its
/// counters when a snapshot is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedCounts {
    /// Sharing is on.
    pub enabled: bool,
    /// Read-throughs after a local miss, by result.
    pub lookups_hit: u64,
    /// Read-throughs that found nothing (or a value that did not open).
    pub lookups_miss: u64,
    /// Read-throughs skipped or failed (breaker open, deadline, error).
    pub lookups_failed: u64,
    /// Ticket-key lookups by name not sent: the store did not have the name
    /// moments before.
    pub key_lookups_known_missing: u64,
    /// Writes queued for Redis.
    pub writes_queued: u64,
    /// Writes dropped (queue full, breaker open).
    pub writes_dropped: u64,
    /// Writes in a batch that failed.
    pub writes_failed: u64,
    /// Times the circuit breaker opened.
    pub breaker_opened: u64,
    /// Commands Redis answered with an error while the link worked (an ACL
    /// without the command, a read-only replica).
    pub refused: u64,
    /// Times the link became degraded (Redis answers, but refuses some
    /// commands).
    pub degraded: u64,
    /// Admin removals other hosts told of, received.
    pub removals_told: u64,
    /// Of those, dropped: the queue to the data path was full.
    pub removals_told_dropped: u64,
    /// Times the subscription to other hosts' removals was lost.
    pub subscriber_lost: u64,
}

impl Snapshot {
    /// The figures for `ct`.
    pub fn cache(&self, ct: CacheType) -> &CacheCounts {
        &self.caches[ct.index()]
    }

    /// The figures for `kind`.
    pub fn request(&self, kind: RequestKind) -> &RequestCounts {
        &self.requests[index_of_request(kind)]
    }
}
