//! What the daemon counts: cache lookups by result, updates, deletes and
//! removals per cache type; requests by name and status with a latency
//! histogram per request name; ticket keys; seeds; config reloads;
//! connections.
//!
//! - this file: the counters themselves ([`Metrics`]), as the data path
//!   and the actors update them;
//! - [`snapshot`]: every figure at one moment ([`Snapshot`]);
//! - [`table`]: the one list of what is exported, under which names and
//!   where ([`table::FAMILIES`]); a new figure is declared there once;
//! - the two renderings the table drives: the JSON object of `tlsmgr stats
//!   --json` ([`Snapshot::to_json`], in `json`) and the Prometheus text
//!   format of `GET /metrics` ([`prometheus`]).
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

mod json;
pub mod prometheus;
pub mod snapshot;
pub mod table;

pub use snapshot::{
    CacheCounts, PrngCounts, ProcessFigures, RequestCounts, SharedCounts, Snapshot,
};

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
