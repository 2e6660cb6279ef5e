//! A [`Snapshot`] in the Prometheus text format (version 0.0.4), through
//! the official `prometheus-client` crate: a [`Collector`] that encodes the
//! snapshot's figures at scrape time (our counters are our own sharded
//! atomics, so there is nothing to register ahead).
//!
//! Names sit beside postfix_exporter's `postfix_` namespace, under
//! `postfix_tlsmgr_`; every label set is written on every scrape, at 0
//! until something happens, so that `rate()` and absent-series alerts work
//! from the start. The process figures use the conventional `process_`
//! names and come from getrusage(2), since `/proc` is missing in a chroot.

use super::{Lasting, LookupResult, Removal, Snapshot, STATUSES};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge_family<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Labels<'_>, V)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let per_cache = |f: &dyn Fn(&super::CacheCounts) -> u64| -> Vec<(Labels<'_>, u64)> {
            s.caches
                .iter()
                .map(|c| (vec![("cache", c.cache_type.as_str())], f(c)))
                .collect()
        };
        let mut rows = Vec::new();
        for c in &s.caches {
            for (i, r) in LookupResult::ALL.iter().enumerate() {
                rows.push((
                    vec![("cache", c.cache_type.as_str()), ("result", r.as_str())],
                    c.lookups[i],
                ));
            }
        }
        counter_family(
            &mut enc,
            "postfix_tlsmgr_cache_lookups",
            "Session cache lookups that reached the store, by result.",
            &rows,
        )?;
        counter_family(
            &mut enc,
            "postfix_tlsmgr_cache_updates",
            "Session cache entries written.",
            &per_cache(&|c| c.updates),
        )?;
        counter_family(
            &mut enc,
            "postfix_tlsmgr_cache_deletes",
            "Session cache entries removed by delete requests.",
            &per_cache(&|c| c.deletes),
        )?;
        let mut rows = Vec::new();
        for c in &s.caches {
            for r in Removal::ALL {
                let v = match r {
                    Removal::Expired => c.expired,
                    Removal::Evicted => c.evicted,
                };
                rows.push((
                    vec![("cache", c.cache_type.as_str()), ("reason", r.as_str())],
                    v,
                ));
            }
        }
        counter_family(
            &mut enc,
            "postfix_tlsmgr_cache_removals",
            "Session cache entries removed other than by delete requests, by reason.",
            &rows,
        )?;
        let mut rows = Vec::new();
        for c in &s.caches {
            for r in Lasting::ALL {
                rows.push((
                    vec![("cache", c.cache_type.as_str()), ("reason", r.as_str())],
                    c.store_resets[r.index()],
                ));
            }
        }
        counter_family(
            &mut enc,
            "postfix_tlsmgr_store_resets",
            "Session cache stores started afresh, by reason: unreadable (set aside) or removed under the daemon (entries carried over).",
            &rows,
        )?;
        gauge_family(
            &mut enc,
            "postfix_tlsmgr_cache_entries",
            "Session cache entries now.",
            &per_cache(&|c| c.entries),
        )?;
        gauge_family(
            &mut enc,
            "postfix_tlsmgr_cache_size_bytes",
            "Session cache size on disk.",
            &per_cache(&|c| c.bytes),
        )?;
        let mut rows = Vec::new();
        for r in &s.requests {
            for (i, st) in STATUSES.iter().enumerate() {
                rows.push((
                    vec![("request", r.kind.as_str()), ("status", lower_status(*st))],
                    r.by_status[i],
                ));
            }
        }
        counter_family(
            &mut enc,
            "postfix_tlsmgr_requests",
            "Requests answered, by request name and reply status.",
            &rows,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "postfix_tlsmgr_request_duration_seconds",
                "Time from a request read to its reply, by request name.",
                None,
                MetricType::Histogram,
            )?;
            for r in &s.requests {
                let buckets: Vec<(f64, u64)> = r.buckets().map(|(le, n, _)| (le, n)).collect();
                let cumulative = r.buckets().last().map_or(0, |(_, _, total)| total);
                let labels: Labels<'_> = vec![("request", r.kind.as_str())];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    r.latency_sum_ns as f64 / 1e9,
                    cumulative,
                    &buckets,
                    None,
                )?;
            }
        }
        counter(
            &mut enc,
            "postfix_tlsmgr_ticket_key_rotations",
            "Times the current session ticket key changed.",
            s.ticket_rotations,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_ticket_key_save_failures",
            "Failed attempts to write the session ticket key file.",
            s.ticket_key_save_failures,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_ticket_keys_issued",
            "Session ticket encryption keys handed out (tktkey without a name).",
            s.tickets_issued,
        )?;
        counter_family(
            &mut enc,
            "postfix_tlsmgr_ticket_key_lookups",
            "Session ticket keys asked for by name, by result.",
            &[
                (vec![("result", "found")], s.ticket_lookups_found),
                (vec![("result", "unknown")], s.ticket_lookups_unknown),
            ],
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_seed_requests",
            "Seed requests served.",
            s.seed_requests,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_seed_bytes",
            "Seed bytes served.",
            s.seed_bytes,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_prng_reseeds",
            "Successful reads of tls_random_source.",
            s.prng.reseeds,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_prng_reseed_failures",
            "Failed opens and reads of tls_random_source.",
            s.prng.reseed_failures,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_prng_exchange_writes",
            "Updates of tls_random_exchange_name.",
            s.prng.exchange_writes,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_prng_exchange_failures",
            "Failed updates of tls_random_exchange_name.",
            s.prng.exchange_failures,
        )?;
        counter_family(
            &mut enc,
            "postfix_tlsmgr_config_reloads",
            "main.cf reloads, by result.",
            &[
                (vec![("result", "applied")], s.reloads_applied),
                (vec![("result", "rejected")], s.reloads_rejected),
            ],
        )?;
        gauge_family(
            &mut enc,
            "postfix_tlsmgr_connections",
            "Client connections open now.",
            &[(vec![], s.connections_open)],
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_connections_accepted",
            "Client connections accepted since start.",
            s.connections_total,
        )?;
        counter_family(
            &mut enc,
            "postfix_tlsmgr_shared_lookups",
            "Read-throughs to the shared store after a local miss, by result \
             (known_missing: a ticket-key name not asked for again, it was missing moments before).",
            &[
                (vec![("result", "hit")], s.shared.lookups_hit),
                (vec![("result", "miss")], s.shared.lookups_miss),
                (vec![("result", "failed")], s.shared.lookups_failed),
                (
                    vec![("result", "known_missing")],
                    s.shared.key_lookups_known_missing,
                ),
            ],
        )?;
        counter_family(
            &mut enc,
            "postfix_tlsmgr_shared_writes",
            "Writes for the shared store, by outcome (queued, dropped, failed).",
            &[
                (vec![("result", "queued")], s.shared.writes_queued),
                (vec![("result", "dropped")], s.shared.writes_dropped),
                (vec![("result", "failed")], s.shared.writes_failed),
            ],
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_shared_breaker_opened",
            "Times the circuit breaker of the shared store opened.",
            s.shared.breaker_opened,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_log_lines_dropped",
            "Log lines dropped because syslogd or postlogd was not reading them.",
            s.process.log_lines_dropped,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_shared_refused",
            "Commands the shared store answered with an error while the link worked.",
            s.shared.refused,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_shared_degraded",
            "Times the shared store started refusing commands it answered before.",
            s.shared.degraded,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_shared_removals_told",
            "Admin removals other hosts of the site told of.",
            s.shared.removals_told,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_shared_removals_told_dropped",
            "Admin removals other hosts told of, dropped: the queue was full.",
            s.shared.removals_told_dropped,
        )?;
        counter(
            &mut enc,
            "postfix_tlsmgr_shared_subscriber_lost",
            "Times the subscription to other hosts' removals was lost (removals missed meanwhile).",
            s.shared.subscriber_lost,
        )?;
        gauge_family(
            &mut enc,
            "postfix_tlsmgr_build_info",
            "Always 1; the version as a label.",
            &[(vec![("version", s.version)], 1u64)],
        )?;
        {
            let m = enc.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent (getrusage).",
                None,
                MetricType::Counter,
            )?;
            let mut m = m;
            m.encode_counter::<NoLabelSet, _, f64>(&s.process.cpu_seconds, None)?;
        }
        gauge_family(
            &mut enc,
            "process_max_resident_memory_bytes",
            "Peak resident set size (getrusage).",
            &[(vec![], s.process.max_rss_bytes)],
        )?;
        gauge_family(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the process since the epoch.",
            &[(vec![], s.started_at)],
        )?;
        Ok(())
    }
}

fn lower_status(s: crate::protocol::Status) -> &'static str {
    match s {
        crate::protocol::Status::Ok => "ok",
        crate::protocol::Status::Err => "err",
        crate::protocol::Status::Fail => "fail",
    }
}

/// `snapshot` as a `GET /metrics` body.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail; the encoder only reports fmt errors.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use super::*;

    #[test]
    fn every_label_set_is_there_at_zero() {
        let text = render(&Metrics::new(0).snapshot(0));
        for line in [
            "postfix_tlsmgr_cache_lookups_total{cache=\"lmtp\",result=\"expired\"} 0",
            "postfix_tlsmgr_cache_removals_total{cache=\"smtpd\",reason=\"evicted\"} 0",
            "postfix_tlsmgr_store_resets_total{cache=\"smtp\",reason=\"not_a_store\"} 0",
            "postfix_tlsmgr_store_resets_total{cache=\"smtp\",reason=\"removed\"} 0",
            "postfix_tlsmgr_requests_total{request=\"tktkey\",status=\"fail\"} 0",
            "postfix_tlsmgr_request_duration_seconds_count{request=\"seed\"} 0",
            "postfix_tlsmgr_config_reloads_total{result=\"rejected\"} 0",
            "postfix_tlsmgr_ticket_key_rotations_total 0",
            "postfix_tlsmgr_ticket_key_save_failures_total 0",
            "postfix_tlsmgr_seed_bytes_total 0",
            "postfix_tlsmgr_connections 0",
            "postfix_tlsmgr_cache_entries{cache=\"smtp\"} 0",
            "postfix_tlsmgr_shared_lookups_total{result=\"hit\"} 0",
            "postfix_tlsmgr_shared_lookups_total{result=\"known_missing\"} 0",
            "postfix_tlsmgr_shared_writes_total{result=\"dropped\"} 0",
            "postfix_tlsmgr_shared_breaker_opened_total 0",
            "postfix_tlsmgr_shared_refused_total 0",
            "postfix_tlsmgr_shared_degraded_total 0",
            "postfix_tlsmgr_shared_removals_told_total 0",
            "postfix_tlsmgr_shared_removals_told_dropped_total 0",
            "postfix_tlsmgr_shared_subscriber_lost_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let m = Metrics::new(0);
        m.store_reset(crate::protocol::CacheType::Smtpd, Lasting::Corrupt);
        let text = render(&m.snapshot(0));
        assert!(text.lines().any(
            |l| l == "postfix_tlsmgr_store_resets_total{cache=\"smtpd\",reason=\"corrupt\"} 1"
        ));
        assert!(text.contains(&format!(
            "postfix_tlsmgr_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
