//! What the daemon counts (issue 12): cache lookups by result, updates,
//! deletes and removals per cache type; requests by name and status with a
//! latency histogram per request name; ticket keys; seeds; config reloads;
//! connections. And the two renderings of a [`Snapshot`] of them: the JSON
//! object of `tlsmgr stats --json` ([`Snapshot::to_json`]) and the Prometheus
//! text format of `GET /metrics` ([`prometheus`]).
//!
//! The data path updates the counters with no shared lock: each thread
//! picks one of [`SHARDS`] cache-line-aligned shards of relaxed atomics (the
//! I/O threads, a handful, land on distinct shards) and only adds to it;
//! a reader sums the shards. A sum read while requests run is not one
//! instant's, but every counter is monotonic and exact once the requests
//! it counts have been answered, which is what the tests compare.
//!
//! Counters of the control plane (rotations, reloads), updated a few times
//! an hour, are single atomics. Gauges that live elsewhere (entries and
//! bytes of each store, the PRNG actor's counts) are gathered by the daemon
//! when a snapshot is taken (`daemon::stats`).

pub mod prometheus;

use crate::protocol::{CacheType, RequestKind, Status};
pub use crate::store::error::Lasting;
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Shards per [`Metrics`]; threads beyond this many share shards (still
/// correct, only contended).
pub const SHARDS: usize = 16;

/// The request names, in the order of every per-request array.
pub const REQUESTS: [RequestKind; 6] = [
    RequestKind::Lookup,
    RequestKind::Update,
    RequestKind::Delete,
    RequestKind::Policy,
    RequestKind::TktKey,
    RequestKind::Seed,
];

/// The reply statuses, in the order of every per-status array.
pub const STATUSES: [Status; 3] = [Status::Ok, Status::Err, Status::Fail];

/// Upper bounds of the latency buckets, in microseconds (a last bucket,
/// `+Inf`, takes the rest). Fixed, so that histograms of different
/// daemons and scrapes add up.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000, 10_000_000,
];
const NBUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// What a `lookup` that reached the store found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    /// A fresh entry, returned.
    Hit,
    /// No entry (or a malformed one, deleted; or an id too long to store).
    Miss,
    /// An entry past its timeout, deleted and reported missing.
    Expired,
}

impl LookupResult {
    /// All results, in array order.
    pub const ALL: [LookupResult; 3] =
        [LookupResult::Hit, LookupResult::Miss, LookupResult::Expired];
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LookupResult::Hit => "hit",
            LookupResult::Miss => "miss",
            LookupResult::Expired => "expired",
        }
    }
}

/// Why entries left a cache other than by a `delete` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Past their timeout (a lookup found it stale, or an expiry sweep).
    Expired,
    /// The oldest, to keep the cache within its bound.
    Evicted,
}

impl Removal {
    /// All reasons, in array order.
    pub const ALL: [Removal; 2] = [Removal::Expired, Removal::Evicted];
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::Expired => "expired",
            Removal::Evicted => "evicted",
        }
    }
}

/// One thread's share of the data-path counters. Aligned so that two
/// threads' shards never share a cache line.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    lookups: [[AtomicU64; 3]; 3],
    updates: [AtomicU64; 3],
    deletes: [AtomicU64; 3],
    removals: [[AtomicU64; 2]; 3],
    requests: [[AtomicU64; 3]; 6],
    latency: [[AtomicU64; NBUCKETS]; 6],
    latency_sum_ns: [AtomicU64; 6],
    tickets_issued: AtomicU64,
    ticket_lookups: [AtomicU64; 2],
    seed_requests: AtomicU64,
    seed_bytes: AtomicU64,
    connections_total: AtomicU64,
    /// Opened minus closed on this thread's shard; only the sum means
    /// something (a connection closes on the thread that opened it, but
    /// threads may share a shard).
    connections_open: AtomicI64,
}

/// Hands each thread its shard index, round-robin over all threads that
/// ever count (shared by every [`Metrics`] of the process).
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// A monotonic timestamp in nanoseconds, for request latencies: one
/// clock_gettime(2) (a vDSO call) and plain u64 arithmetic, where
/// `Instant::now` and `elapsed` add checked `Duration` arithmetic on every
/// request. 0 if the clock cannot be read (latencies then read 0).
#[inline]
pub fn stamp() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(t.tv_nsec() as u64)
    })
}

fn shard_index() -> usize {
    SHARD.with(|s| match s.get() {
        Some(i) => i,
        None => {
            let i = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
            s.set(Some(i));
            i
        }
    })
}

fn index_of_request(kind: RequestKind) -> usize {
    match kind {
        RequestKind::Lookup => 0,
        RequestKind::Update => 1,
        RequestKind::Delete => 2,
        RequestKind::Policy => 3,
        RequestKind::TktKey => 4,
        RequestKind::Seed => 5,
    }
}

fn index_of_status(status: Status) -> usize {
    match status {
        Status::Ok => 0,
        Status::Err => 1,
        Status::Fail => 2,
    }
}

/// Result of the last configuration reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// A new snapshot is in force.
    Applied,
    /// main.cf was refused; the previous snapshot stays.
    Rejected,
}

impl ReloadResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Rejected => "rejected",
        }
    }
}

/// The daemon's counters. Shared (`Arc`) by the data path, the actors and
/// the readers.
pub struct Metrics {
    shards: Box<[Shard]>,
    started_at: u64,
    ticket_rotations: AtomicU64,
    ticket_key_save_failures: AtomicU64,
    /// Stores set aside and started afresh, per cache and
    /// [`Lasting::index`] (a few a year at most: no sharding).
    store_resets: [[AtomicU64; 5]; 3],
    reloads: [AtomicU64; 2],
    /// Clock seconds of the last reload, and its result (0 none, 1
    /// applied, 2 rejected), written together by the one watcher.
    last_reload_at: AtomicU64,
    last_reload_result: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Metrics {
    /// All counters at zero; `started_at` is the clock's seconds at start.
    pub fn new(started_at: u64) -> Self {
        Metrics {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            started_at,
            ticket_rotations: AtomicU64::new(0),
            ticket_key_save_failures: AtomicU64::new(0),
            store_resets: Default::default(),
            reloads: Default::default(),
            last_reload_at: AtomicU64::new(0),
            last_reload_result: AtomicU64::new(0),
        }
    }

    fn shard(&self) -> &Shard {
        // shard_index() < SHARDS == self.shards.len().
        &self.shards[shard_index() % self.shards.len()]
    }

    fn sum(&self, f: impl Fn(&Shard) -> u64) -> u64 {
        self.shards.iter().map(f).fold(0u64, u64::wrapping_add)
    }

    /// A lookup in `ct` that reached the store found `result`.
    pub fn cache_lookup(&self, ct: CacheType, result: LookupResult) {
        let r = LookupResult::ALL
            .iter()
            .position(|x| *x == result)
            .unwrap_or(0);
        self.shard().lookups[ct.index()][r].fetch_add(1, Relaxed);
    }

    /// An entry was written to `ct`.
    pub fn cache_update(&self, ct: CacheType) {
        self.shard().updates[ct.index()].fetch_add(1, Relaxed);
    }

    /// A `delete` request removed an entry from `ct`.
    pub fn cache_delete(&self, ct: CacheType) {
        self.shard().deletes[ct.index()].fetch_add(1, Relaxed);
    }

    /// `n` entries left `ct` for `reason`.
    pub fn cache_removed(&self, ct: CacheType, reason: Removal, n: u64) {
        if n > 0 {
            let r = match reason {
                Removal::Expired => 0,
                Removal::Evicted => 1,
            };
            self.shard().removals[ct.index()][r].fetch_add(n, Relaxed);
        }
    }

    /// A request was answered with `status` after `elapsed`.
    pub fn request(&self, kind: RequestKind, status: Status, elapsed: Duration) {
        // u64 arithmetic: Duration's as_nanos/as_micros go through u128,
        // a library division per call on the data path. Saturates after
        // 584 years.
        let ns = elapsed
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(elapsed.subsec_nanos()));
        self.request_ns(kind, status, ns);
    }

    /// [`Metrics::request`] with the latency in nanoseconds, the
    /// difference of two [`stamp`]s.
    pub fn request_ns(&self, kind: RequestKind, status: Status, ns: u64) {
        let s = self.shard();
        let k = index_of_request(kind);
        s.requests[k][index_of_status(status)].fetch_add(1, Relaxed);
        // Rounded up: a bucket holds what took at most its bound.
        let us = ns.div_ceil(1000);
        let b = LATENCY_BUCKETS_US.partition_point(|&le| le < us);
        s.latency[k][b].fetch_add(1, Relaxed);
        s.latency_sum_ns[k].fetch_add(ns, Relaxed);
    }

    /// A `tktkey` answered: `by_name` (a decryption lookup) found a key or
    /// not, or (no name) an encryption key was issued (`found`).
    pub fn ticket_lookup(&self, by_name: bool, found: bool) {
        let s = self.shard();
        match (by_name, found) {
            (true, true) => s.ticket_lookups[0].fetch_add(1, Relaxed),
            (true, false) => s.ticket_lookups[1].fetch_add(1, Relaxed),
            (false, true) => s.tickets_issued.fetch_add(1, Relaxed),
            (false, false) => 0,
        };
    }

    /// The current ticket key changed (schedule or `keys rotate`).
    pub fn ticket_rotated(&self) {
        self.ticket_rotations.fetch_add(1, Relaxed);
    }

    /// An attempt to write the ticket key file failed.
    pub fn ticket_key_save_failed(&self) {
        self.ticket_key_save_failures.fetch_add(1, Relaxed);
    }

    /// Failed attempts to write the ticket key file so far.
    pub fn ticket_key_save_failures(&self) -> u64 {
        self.ticket_key_save_failures.load(Relaxed)
    }

    /// A seed of `bytes` bytes was served.
    pub fn seed(&self, bytes: u64) {
        let s = self.shard();
        s.seed_requests.fetch_add(1, Relaxed);
        s.seed_bytes.fetch_add(bytes, Relaxed);
    }

    /// A client connected; the guard counts it closed when dropped.
    pub fn connection(&self) -> ConnectionGuard<'_> {
        let s = self.shard();
        s.connections_total.fetch_add(1, Relaxed);
        s.connections_open.fetch_add(1, Relaxed);
        ConnectionGuard(s)
    }

    /// The store of `ct` could not be read for `reason` and was replaced
    /// by a fresh one.
    pub fn store_reset(&self, ct: CacheType, reason: Lasting) {
        self.store_resets[ct.index()][reason.index()].fetch_add(1, Relaxed);
    }

    /// A reload ended with `result` at clock second `now`.
    pub fn reload(&self, result: ReloadResult, now: u64) {
        let (i, code) = match result {
            ReloadResult::Applied => (0, 1),
            ReloadResult::Rejected => (1, 2),
        };
        self.reloads[i].fetch_add(1, Relaxed);
        self.last_reload_at.store(now, Relaxed);
        self.last_reload_result.store(code, Relaxed);
    }

    /// The counters summed now; gauges kept elsewhere are left at zero
    /// (see [`Snapshot`]).
    pub fn snapshot(&self, now: u64) -> Snapshot {
        let mut caches: [CacheCounts; 3] = Default::default();
        for ct in CacheType::ALL {
            let i = ct.index();
            let c = &mut caches[i];
            c.cache_type = ct;
            for r in 0..3 {
                c.lookups[r] = self.sum(|s| s.lookups[i][r].load(Relaxed));
            }
            c.updates = self.sum(|s| s.updates[i].load(Relaxed));
            c.deletes = self.sum(|s| s.deletes[i].load(Relaxed));
            c.expired = self.sum(|s| s.removals[i][0].load(Relaxed));
            c.evicted = self.sum(|s| s.removals[i][1].load(Relaxed));
            c.store_resets = std::array::from_fn(|r| self.store_resets[i][r].load(Relaxed));
        }
        let requests = std::array::from_fn(|k| {
            let mut buckets = [0u64; NBUCKETS];
            for (b, slot) in buckets.iter_mut().enumerate() {
                *slot = self.sum(|s| s.latency[k][b].load(Relaxed));
            }
            RequestCounts {
                kind: REQUESTS[k],
                by_status: std::array::from_fn(|st| self.sum(|s| s.requests[k][st].load(Relaxed))),
                latency_buckets: buckets,
                latency_sum_ns: self.sum(|s| s.latency_sum_ns[k].load(Relaxed)),
            }
        });
        let open: i64 = self
            .shards
            .iter()
            .map(|s| s.connections_open.load(Relaxed))
            .sum();
        let last_reload = match self.last_reload_result.load(Relaxed) {
            1 => Some((self.last_reload_at.load(Relaxed), ReloadResult::Applied)),
            2 => Some((self.last_reload_at.load(Relaxed), ReloadResult::Rejected)),
            _ => None,
        };
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            now,
            started_at: self.started_at,
            caches,
            requests,
            tickets_issued: self.sum(|s| s.tickets_issued.load(Relaxed)),
            ticket_lookups_found: self.sum(|s| s.ticket_lookups[0].load(Relaxed)),
            ticket_lookups_unknown: self.sum(|s| s.ticket_lookups[1].load(Relaxed)),
            ticket_rotations: self.ticket_rotations.load(Relaxed),
            ticket_key_save_failures: self.ticket_key_save_failures.load(Relaxed),
            seed_requests: self.sum(|s| s.seed_requests.load(Relaxed)),
            seed_bytes: self.sum(|s| s.seed_bytes.load(Relaxed)),
            prng: PrngCounts::default(),
            reloads_applied: self.reloads[0].load(Relaxed),
            reloads_rejected: self.reloads[1].load(Relaxed),
            last_reload,
            connections_open: u64::try_from(open).unwrap_or(0),
            connections_total: self.sum(|s| s.connections_total.load(Relaxed)),
            process: ProcessFigures::default(),
            shared: SharedCounts::default(),
        }
    }
}

/// Counts a connection closed when dropped (see [`Metrics::connection`]).
pub struct ConnectionGuard<'a>(&'a Shard);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

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
    /// [`Lasting::index`].
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

    /// The `tlsmgr stats --json` object. Members may be added later;
    /// readers ignore what they do not know.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut caches = Map::new();
        for c in &self.caches {
            caches.insert(
                c.cache_type.as_str().to_string(),
                json!({
                    "enabled": c.enabled,
                    "entries": c.entries,
                    "bytes": c.bytes,
                    "lookups": {
                        "hit": c.lookups[0],
                        "miss": c.lookups[1],
                        "expired": c.lookups[2],
                    },
                    "updates": c.updates,
                    "deletes": c.deletes,
                    "expired": c.expired,
                    "evicted": c.evicted,
                    "store_resets": Lasting::ALL
                        .iter()
                        .map(|r| (r.as_str().to_string(), Value::from(c.store_resets[r.index()])))
                        .collect::<Map<String, Value>>(),
                }),
            );
        }
        let mut requests = Map::new();
        for r in &self.requests {
            let buckets: Vec<Value> = r
                .buckets()
                .map(|(le, _, cumulative)| {
                    let le = if le.is_finite() {
                        Value::from(le)
                    } else {
                        Value::from("+Inf")
                    };
                    json!([le, cumulative])
                })
                .collect();
            requests.insert(
                r.kind.as_str().to_string(),
                json!({
                    "ok": r.by_status[0],
                    "err": r.by_status[1],
                    "fail": r.by_status[2],
                    "duration_seconds": {
                        "count": r.total(),
                        "sum": r.latency_sum_ns as f64 / 1e9,
                        "buckets": buckets,
                    },
                }),
            );
        }
        json!({
            "version": self.version,
            "time": self.now,
            "uptime_seconds": self.now.saturating_sub(self.started_at),
            "caches": caches,
            "requests": requests,
            "tickets": {
                "issued": self.tickets_issued,
                "rotations": self.ticket_rotations,
                "save_failures": self.ticket_key_save_failures,
                "lookups": {
                    "found": self.ticket_lookups_found,
                    "unknown": self.ticket_lookups_unknown,
                },
            },
            "prng": {
                "seed_requests": self.seed_requests,
                "seed_bytes": self.seed_bytes,
                "reseeds": self.prng.reseeds,
                "reseed_bytes": self.prng.reseed_bytes,
                "reseed_failures": self.prng.reseed_failures,
                "exchange_writes": self.prng.exchange_writes,
                "exchange_failures": self.prng.exchange_failures,
            },
            "reloads": {
                "applied": self.reloads_applied,
                "rejected": self.reloads_rejected,
                "last": self.last_reload.map(|(at, r)| json!({"time": at, "result": r.as_str()})),
            },
            "connections": {
                "open": self.connections_open,
                "total": self.connections_total,
            },
            "process": {
                "cpu_seconds": self.process.cpu_seconds,
                "max_rss_bytes": self.process.max_rss_bytes,
                "log_lines_dropped": self.process.log_lines_dropped,
            },
            "shared": {
                "enabled": self.shared.enabled,
                "lookups": {
                    "hit": self.shared.lookups_hit,
                    "miss": self.shared.lookups_miss,
                    "failed": self.shared.lookups_failed,
                    "known_missing": self.shared.key_lookups_known_missing,
                },
                "writes": {
                    "queued": self.shared.writes_queued,
                    "dropped": self.shared.writes_dropped,
                    "failed": self.shared.writes_failed,
                },
                "breaker_opened": self.shared.breaker_opened,
                "refused": self.shared.refused,
                "degraded": self.shared.degraded,
                "removals_told": self.shared.removals_told,
                "removals_told_dropped": self.shared.removals_told_dropped,
                "subscriber_lost": self.shared.subscriber_lost,
            },
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let m = std::sync::Arc::new(Metrics::new(5));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.cache_lookup(CacheType::Smtp, LookupResult::Hit);
                        m.request(RequestKind::Lookup, Status::Ok, Duration::from_micros(30));
                    }
                    let _c = m.connection();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = m.snapshot(10);
        assert_eq!(s.cache(CacheType::Smtp).lookups, [8000, 0, 0]);
        assert_eq!(s.cache(CacheType::Smtpd).lookups, [0, 0, 0]);
        let r = s.request(RequestKind::Lookup);
        assert_eq!(r.by_status, [8000, 0, 0]);
        // 30 µs falls in the (25, 50] bucket.
        assert_eq!(r.latency_buckets[2], 8000);
        assert_eq!(r.latency_sum_ns, 8000 * 30_000);
        assert_eq!(r.quantile_bound(0.99), Some(50e-6));
        assert_eq!((s.connections_open, s.connections_total), (0, 8));
        assert_eq!(s.to_json()["uptime_seconds"], 5);
    }

    #[test]
    fn bucket_bounds_are_inclusive_and_overflow_goes_to_inf() {
        let m = Metrics::new(0);
        m.request(RequestKind::Seed, Status::Ok, Duration::from_micros(10));
        m.request(RequestKind::Seed, Status::Fail, Duration::from_secs(60));
        let r = *m.snapshot(0).request(RequestKind::Seed);
        assert_eq!(r.latency_buckets[0], 1);
        assert_eq!(r.latency_buckets[NBUCKETS - 1], 1);
        assert_eq!(r.by_status, [1, 0, 1]);
        assert_eq!(r.quantile_bound(1.0), None);
        let j = m.snapshot(0).to_json();
        assert_eq!(
            j["requests"]["seed"]["duration_seconds"]["buckets"][14][0],
            "+Inf"
        );
        assert_eq!(
            j["requests"]["seed"]["duration_seconds"]["buckets"][14][1],
            2
        );
    }

    #[test]
    fn last_reload_is_reported() {
        let m = Metrics::new(0);
        assert_eq!(
            m.snapshot(0).to_json()["reloads"]["last"],
            serde_json::Value::Null
        );
        m.reload(ReloadResult::Applied, 7);
        m.reload(ReloadResult::Rejected, 9);
        let s = m.snapshot(10);
        assert_eq!((s.reloads_applied, s.reloads_rejected), (1, 1));
        assert_eq!(s.last_reload, Some((9, ReloadResult::Rejected)));
    }
}
