//! A [`Snapshot`] in the Prometheus text format (version 0.0.4), through
//! the official `prometheus-client` crate: a [`Collector`] that encodes the
//! families of [`super::table::FAMILIES`] at scrape time (our counters are
//! our own sharded atomics, so there is nothing to register ahead).

use super::table::{Kind, Value, FAMILIES};
use super::Snapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in FAMILIES {
            let Some((name, kind)) = family.prometheus else {
                continue;
            };
            let metric_type = match kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut m = enc.encode_descriptor(name, family.help, None, metric_type)?;
            for series in (family.series)(&self.0) {
                if series.labels.is_empty() {
                    encode_value(&mut m, kind, &series.value)?;
                } else {
                    encode_value(&mut m.encode_family(&series.labels)?, kind, &series.value)?;
                }
            }
        }
        Ok(())
    }
}

/// One series' value, as its family's type.
fn encode_value(
    m: &mut MetricEncoder<'_>,
    kind: Kind,
    value: &Value,
) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (Kind::Counter, Value::Count(n)) => m.encode_counter::<NoLabelSet, _, u64>(n, None),
        (Kind::Counter, Value::Real(x)) => m.encode_counter::<NoLabelSet, _, f64>(x, None),
        (Kind::Gauge, Value::Count(n)) => m.encode_gauge(n),
        (Kind::Gauge, Value::Real(x)) => m.encode_gauge(x),
        (Kind::Histogram, Value::Latency(r)) => {
            let buckets: Vec<(f64, u64)> = r.buckets().map(|(le, n, _)| (le, n)).collect();
            let cumulative = r.buckets().last().map_or(0, |(_, _, total)| total);
            m.encode_histogram::<NoLabelSet>(
                r.latency_sum_ns as f64 / 1e9,
                cumulative,
                &buckets,
                None,
            )
        }
        // A value of a kind Prometheus has no type for: a table entry
        // with a `prometheus` name must not have one (a unit test checks).
        _ => Err(std::fmt::Error),
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
    use super::super::table::exposed_name;
    use super::super::{Lasting, Metrics};
    use super::*;

    #[test]
    fn every_family_of_the_table_is_rendered() {
        let text = render(&Metrics::new(0).snapshot(0));
        for (name, kind) in FAMILIES.iter().filter_map(|f| f.prometheus) {
            let exposed = exposed_name(name, kind);
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("# TYPE {exposed} "))),
                "{exposed} missing in\n{text}"
            );
        }
    }

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
