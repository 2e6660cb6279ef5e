//! Snapshots of the daemon's figures ([`snapshot`]: the counters plus what
//! lives elsewhere: each store's entries and size, the PRNG actor's
//! counts, getrusage(2)), and the periodic summary in the mail log
//! (`tlsmgr_stats_log_interval`), worded like scache(8)'s `statistics:`
//! lines.

use super::Services;
use crate::metrics::{PrngCounts, ProcessFigures, Snapshot};
use crate::protocol::CacheType;
use slog::info;
use std::time::Duration;

/// Every figure now. Runs on the daemon thread; the store sizes are read
/// on a blocking thread (fjall's disk space walks its files).
pub async fn snapshot(svc: &Services) -> Snapshot {
    let mut snap = svc.metrics.snapshot(svc.clock.now());
    if let Some(link) = svc.shared.load_full() {
        use std::sync::atomic::Ordering::Relaxed;
        let c = link.counters();
        snap.shared = crate::metrics::SharedCounts {
            enabled: true,
            lookups_hit: c.hits.load(Relaxed),
            lookups_miss: c.misses.load(Relaxed),
            lookups_failed: c.lookup_failures.load(Relaxed),
            key_lookups_known_missing: c.lookups_known_missing.load(Relaxed),
            writes_queued: c.writes_queued.load(Relaxed),
            writes_dropped: c.writes_dropped.load(Relaxed),
            writes_failed: c.writes_failed.load(Relaxed),
            breaker_opened: c.breaker_opened.load(Relaxed),
            refused: c.refused.load(Relaxed),
            degraded: c.degraded.load(Relaxed),
            removals_told: c.told.load(Relaxed),
            removals_told_dropped: c.told_dropped.load(Relaxed),
            subscriber_lost: c.subscriber_lost.load(Relaxed),
        };
    }
    let caches = svc.caches.load_full();
    let stores: Vec<_> = CacheType::ALL
        .iter()
        .map(|ct| caches.get(*ct).and_then(|rc| rc.cache.store()))
        .collect();
    let sizes = actix_rt::task::spawn_blocking(move || {
        stores
            .into_iter()
            .map(|s| {
                s.and_then(|s| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.stats())).ok()
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (i, size) in sizes.into_iter().enumerate() {
        if let (Some(c), Some(size)) = (snap.caches.get_mut(i), size) {
            c.enabled = true;
            c.entries = size.entries;
            c.bytes = size.bytes;
        }
    }
    if let Ok(p) = svc.prng.send(crate::actors::prng::GetStatus).await {
        snap.prng = PrngCounts {
            reseeds: p.reseeds,
            reseed_bytes: p.source_bytes,
            reseed_failures: p.source_failures,
            exchange_writes: p.exchange_updates,
            exchange_failures: p.exchange_failures,
        };
    }
    snap.process = ProcessFigures::now();
    snap
}

/// `Mmm dd hh:mm:ss` in local time, as scache(8) prints `ctime() + 4`.
pub fn ctime15(secs: u64) -> String {
    let t = libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX);
    // SAFETY: localtime_r reads `t` and writes the zeroed `tm` we own; it
    // keeps no pointer to either. A failure leaves `tm` zeroed, which
    // formats as a harmless (wrong) date.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::localtime_r(&t, &mut tm) };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS
        .get(usize::try_from(tm.tm_mon).unwrap_or(0))
        .unwrap_or(&"Jan");
    format!(
        "{} {:2} {:02}:{:02}:{:02}",
        month, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

/// The `statistics:` lines for the interval from `prev` (taken at its
/// start) to `now`; empty when nothing happened, as scache logs nothing
/// for an idle interval.
pub fn summary_lines(prev: &Snapshot, now: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    for (p, n) in prev.caches.iter().zip(now.caches.iter()) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        let hits = d(p.lookups[0], n.lookups[0]);
        let miss = d(p.lookups[1], n.lookups[1]) + d(p.lookups[2], n.lookups[2]);
        let (updates, deletes) = (d(p.updates, n.updates), d(p.deletes, n.deletes));
        let (expired, evicted) = (d(p.expired, n.expired), d(p.evicted, n.evicted));
        if let Some(success) = (hits * 100).checked_div(hits + miss) {
            lines.push(format!(
                "statistics: {} TLS cache lookup hits={} miss={} success={}%",
                n.cache_type, hits, miss, success
            ));
        }
        if updates + deletes + expired + evicted > 0 {
            lines.push(format!(
                "statistics: {} TLS cache updates={} deletes={} expired={} evicted={} entries={}",
                n.cache_type, updates, deletes, expired, evicted, n.entries
            ));
        }
    }
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let issued = d(prev.tickets_issued, now.tickets_issued);
    let found = d(prev.ticket_lookups_found, now.ticket_lookups_found);
    let unknown = d(prev.ticket_lookups_unknown, now.ticket_lookups_unknown);
    let rotations = d(prev.ticket_rotations, now.ticket_rotations);
    if issued + found + unknown + rotations > 0 {
        lines.push(format!(
            "statistics: ticket keys issued={issued} lookup hits={found} miss={unknown} rotations={rotations}"
        ));
    }
    let seeds = d(prev.seed_requests, now.seed_requests);
    if seeds > 0 {
        lines.push(format!(
            "statistics: seed requests={} bytes={}",
            seeds,
            d(prev.seed_bytes, now.seed_bytes)
        ));
    }
    let conns = d(prev.connections_total, now.connections_total);
    if conns > 0 {
        lines.push(format!(
            "statistics: connections={} open={}",
            conns, now.connections_open
        ));
    }
    if !lines.is_empty() {
        lines.insert(
            0,
            format!("statistics: start interval {}", ctime15(prev.now)),
        );
    }
    lines
}

/// How often the summary task looks at the clock and the configuration.
pub const STATS_TICK: Duration = Duration::from_secs(1);

/// Logs the summary every `tlsmgr_stats_log_interval` of the (injected)
/// clock, looking every [`STATS_TICK`]; a reload that changes the interval
/// starts a new one. Runs on the daemon thread until the daemon stops.
pub async fn log_periodically(svc: Services) {
    let mut tick = tokio::time::interval(STATS_TICK);
    let mut interval = svc.config.load().stats_log_interval;
    // The first interval starts with the daemon, from zero (this task
    // starts before the first connection is accepted).
    let mut prev: Option<Snapshot> =
        Some(crate::metrics::Metrics::new(0).snapshot(svc.clock.now()));
    loop {
        tick.tick().await;
        let want = svc.config.load().stats_log_interval;
        if want != interval {
            // A reload changed it: a new interval starts now.
            interval = want;
            prev = None;
        }
        if interval.is_zero() {
            continue;
        }
        let now = svc.clock.now();
        match &prev {
            None => prev = Some(snapshot(&svc).await),
            Some(p) if now >= p.now.saturating_add(interval.as_secs()) => {
                let next = snapshot(&svc).await;
                for line in summary_lines(p, &next) {
                    info!(svc.log, "{}", line);
                }
                prev = Some(next);
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{LookupResult, Metrics};

    #[test]
    fn summary_counts_the_interval_only() {
        let m = Metrics::new(0);
        m.cache_lookup(CacheType::Smtpd, LookupResult::Hit);
        let before = m.snapshot(100);
        assert!(summary_lines(&before, &m.snapshot(160)).is_empty());
        m.cache_lookup(CacheType::Smtpd, LookupResult::Hit);
        m.cache_lookup(CacheType::Smtpd, LookupResult::Hit);
        m.cache_lookup(CacheType::Smtpd, LookupResult::Miss);
        m.cache_lookup(CacheType::Smtpd, LookupResult::Expired);
        let lines = summary_lines(&before, &m.snapshot(160));
        assert!(lines[0].starts_with("statistics: start interval "));
        assert_eq!(lines[0].len(), "statistics: start interval ".len() + 15);
        assert_eq!(
            lines[1],
            "statistics: smtpd TLS cache lookup hits=2 miss=2 success=50%"
        );
        assert_eq!(lines.len(), 2);
    }
}
