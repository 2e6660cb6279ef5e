//! The one list of what the daemon exports: each family of figures with
//! its Prometheus name, type and help, its place in `tlsmgr stats --json`,
//! and how its series are read from a [`Snapshot`]. Both renderings
//! ([`super::prometheus`], [`Snapshot::to_json`]) walk [`FAMILIES`], so a new
//! figure is declared here once; a test checks that the documentation
//! names every Prometheus family.
//!
//! Prometheus names sit beside postfix_exporter's `postfix_` namespace,
//! under `postfix_tlsmgr_`; every label set is listed on every scrape, at 0
//! until something happens, so that `rate()` and absent-series alerts work
//! from the start. The process figures use the conventional `process_`
//! names and come from getrusage(2), since `/proc` is missing in a chroot.

use super::{Lasting, LookupResult, Removal, RequestCounts, Snapshot, STATUSES};

/// How Prometheus types a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (the encoder adds `_total` to the name).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Request latencies, in the buckets of [`super::LATENCY_BUCKETS_US`].
    Histogram,
}

/// One series' value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A count.
    Count(u64),
    /// A real number (seconds).
    Real(f64),
    /// A yes/no state (`stats --json` only).
    Flag(bool),
    /// A request's latencies ([`Kind::Histogram`]).
    Latency(RequestCounts),
    /// A member `stats --json` shows as it is (the version, the last reload).
    Json(serde_json::Value),
}

/// One series of a family: its labels (name, value) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The label names and values, in the order Prometheus shows them.
    pub labels: Vec<(&'static str, &'static str)>,
    /// The value.
    pub value: Value,
}

impl Series {
    fn new(labels: Vec<(&'static str, &'static str)>, value: Value) -> Series {
        Series { labels, value }
    }
    fn one(value: Value) -> Vec<Series> {
        vec![Series::new(Vec::new(), value)]
    }
}

/// A family of series.
#[derive(Debug)]
pub struct Family {
    /// The Prometheus name and type; `None`: `stats --json` only.
    pub prometheus: Option<(&'static str, Kind)>,
    /// What it counts (Prometheus's `# HELP`).
    pub help: &'static str,
    /// Where each series sits in `stats --json`: member names joined by
    /// `.`, `{LABEL}` standing for that label's value; `None`: `/metrics`
    /// only.
    pub json: Option<&'static str>,
    /// The series of a snapshot.
    pub series: fn(&Snapshot) -> Vec<Series>,
}

fn count(n: u64) -> Value {
    Value::Count(n)
}

/// One series per cache, labelled `cache`.
fn per_cache(s: &Snapshot, f: impl Fn(&super::CacheCounts) -> Value) -> Vec<Series> {
    s.caches
        .iter()
        .map(|c| Series::new(vec![("cache", c.cache_type.as_str())], f(c)))
        .collect()
}

/// One series per `(label value, value)`, labelled `label`.
fn by(label: &'static str, rows: &[(&'static str, u64)]) -> Vec<Series> {
    rows.iter()
        .map(|&(v, n)| Series::new(vec![(label, v)], count(n)))
        .collect()
}

fn lower_status(s: crate::protocol::Status) -> &'static str {
    match s {
        crate::protocol::Status::Ok => "ok",
        crate::protocol::Status::Err => "err",
        crate::protocol::Status::Fail => "fail",
    }
}

/// Every exported family, in the order `/metrics` lists them.
pub const FAMILIES: &[Family] = &[
    Family {
        prometheus: None,
        help: "The daemon's version.",
        json: Some("version"),
        series: |s| Series::one(Value::Json(s.version.into())),
    },
    Family {
        prometheus: None,
        help: "Clock seconds when the figures were taken.",
        json: Some("time"),
        series: |s| Series::one(count(s.now)),
    },
    Family {
        prometheus: None,
        help: "Seconds since the daemon started.",
        json: Some("uptime_seconds"),
        series: |s| Series::one(count(s.now.saturating_sub(s.started_at))),
    },
    Family {
        prometheus: None,
        help: "Whether the cache is enabled and its store in service.",
        json: Some("caches.{cache}.enabled"),
        series: |s| per_cache(s, |c| Value::Flag(c.enabled)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_cache_lookups", Kind::Counter)),
        help: "Session cache lookups that reached the store, by result.",
        json: Some("caches.{cache}.lookups.{result}"),
        series: |s| {
            let mut rows = Vec::new();
            for c in &s.caches {
                for (i, r) in LookupResult::ALL.iter().enumerate() {
                    rows.push(Series::new(
                        vec![("cache", c.cache_type.as_str()), ("result", r.as_str())],
                        count(c.lookups[i]),
                    ));
                }
            }
            rows
        },
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_cache_updates", Kind::Counter)),
        help: "Session cache entries written.",
        json: Some("caches.{cache}.updates"),
        series: |s| per_cache(s, |c| count(c.updates)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_cache_deletes", Kind::Counter)),
        help: "Session cache entries removed by delete requests.",
        json: Some("caches.{cache}.deletes"),
        series: |s| per_cache(s, |c| count(c.deletes)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_cache_removals", Kind::Counter)),
        help: "Session cache entries removed other than by delete requests, by reason.",
        json: Some("caches.{cache}.{reason}"),
        series: |s| {
            let mut rows = Vec::new();
            for c in &s.caches {
                for r in Removal::ALL {
                    let v = match r {
                        Removal::Expired => c.expired,
                        Removal::Evicted => c.evicted,
                    };
                    rows.push(Series::new(
                        vec![("cache", c.cache_type.as_str()), ("reason", r.as_str())],
                        count(v),
                    ));
                }
            }
            rows
        },
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_store_resets", Kind::Counter)),
        help: "Session cache stores started afresh, by reason: unreadable (set aside) or removed under the daemon (entries carried over).",
        json: Some("caches.{cache}.store_resets.{reason}"),
        series: |s| {
            let mut rows = Vec::new();
            for c in &s.caches {
                for r in Lasting::ALL {
                    rows.push(Series::new(
                        vec![("cache", c.cache_type.as_str()), ("reason", r.as_str())],
                        count(c.store_resets[r.index()]),
                    ));
                }
            }
            rows
        },
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_cache_entries", Kind::Gauge)),
        help: "Session cache entries now.",
        json: Some("caches.{cache}.entries"),
        series: |s| per_cache(s, |c| count(c.entries)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_cache_size_bytes", Kind::Gauge)),
        help: "Session cache size on disk.",
        json: Some("caches.{cache}.bytes"),
        series: |s| per_cache(s, |c| count(c.bytes)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_requests", Kind::Counter)),
        help: "Requests answered, by request name and reply status.",
        json: Some("requests.{request}.{status}"),
        series: |s| {
            let mut rows = Vec::new();
            for r in &s.requests {
                for (i, st) in STATUSES.iter().enumerate() {
                    rows.push(Series::new(
                        vec![("request", r.kind.as_str()), ("status", lower_status(*st))],
                        count(r.by_status[i]),
                    ));
                }
            }
            rows
        },
    },
    Family {
        prometheus: Some((
            "postfix_tlsmgr_request_duration_seconds",
            Kind::Histogram,
        )),
        help: "Time from a request read to its reply, by request name.",
        json: Some("requests.{request}.duration_seconds"),
        series: |s| {
            s.requests
                .iter()
                .map(|r| Series::new(vec![("request", r.kind.as_str())], Value::Latency(*r)))
                .collect()
        },
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_ticket_key_rotations", Kind::Counter)),
        help: "Times the current session ticket key changed.",
        json: Some("tickets.rotations"),
        series: |s| Series::one(count(s.ticket_rotations)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_ticket_key_save_failures", Kind::Counter)),
        help: "Failed attempts to write the session ticket key file.",
        json: Some("tickets.save_failures"),
        series: |s| Series::one(count(s.ticket_key_save_failures)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_ticket_keys_issued", Kind::Counter)),
        help: "Session ticket encryption keys handed out (tktkey without a name).",
        json: Some("tickets.issued"),
        series: |s| Series::one(count(s.tickets_issued)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_ticket_key_lookups", Kind::Counter)),
        help: "Session ticket keys asked for by name, by result.",
        json: Some("tickets.lookups.{result}"),
        series: |s| {
            by(
                "result",
                &[
                    ("found", s.ticket_lookups_found),
                    ("unknown", s.ticket_lookups_unknown),
                ],
            )
        },
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_seed_requests", Kind::Counter)),
        help: "Seed requests served.",
        json: Some("prng.seed_requests"),
        series: |s| Series::one(count(s.seed_requests)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_seed_bytes", Kind::Counter)),
        help: "Seed bytes served.",
        json: Some("prng.seed_bytes"),
        series: |s| Series::one(count(s.seed_bytes)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_prng_reseeds", Kind::Counter)),
        help: "Successful reads of tls_random_source.",
        json: Some("prng.reseeds"),
        series: |s| Series::one(count(s.prng.reseeds)),
    },
    Family {
        prometheus: None,
        help: "Bytes the reads of tls_random_source delivered.",
        json: Some("prng.reseed_bytes"),
        series: |s| Series::one(count(s.prng.reseed_bytes)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_prng_reseed_failures", Kind::Counter)),
        help: "Failed opens and reads of tls_random_source.",
        json: Some("prng.reseed_failures"),
        series: |s| Series::one(count(s.prng.reseed_failures)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_prng_exchange_writes", Kind::Counter)),
        help: "Updates of tls_random_exchange_name.",
        json: Some("prng.exchange_writes"),
        series: |s| Series::one(count(s.prng.exchange_writes)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_prng_exchange_failures", Kind::Counter)),
        help: "Failed updates of tls_random_exchange_name.",
        json: Some("prng.exchange_failures"),
        series: |s| Series::one(count(s.prng.exchange_failures)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_config_reloads", Kind::Counter)),
        help: "main.cf reloads, by result.",
        json: Some("reloads.{result}"),
        series: |s| {
            by(
                "result",
                &[
                    ("applied", s.reloads_applied),
                    ("rejected", s.reloads_rejected),
                ],
            )
        },
    },
    Family {
        prometheus: None,
        help: "When the last reload was, and how it ended (null before the first).",
        json: Some("reloads.last"),
        series: |s| {
            Series::one(Value::Json(s.last_reload.map_or(
                serde_json::Value::Null,
                |(at, r)| serde_json::json!({"time": at, "result": r.as_str()}),
            )))
        },
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_connections", Kind::Gauge)),
        help: "Client connections open now.",
        json: Some("connections.open"),
        series: |s| Series::one(count(s.connections_open)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_connections_accepted", Kind::Counter)),
        help: "Client connections accepted since start.",
        json: Some("connections.total"),
        series: |s| Series::one(count(s.connections_total)),
    },
    Family {
        prometheus: None,
        help: "Whether sharing through a shared store is on.",
        json: Some("shared.enabled"),
        series: |s| Series::one(Value::Flag(s.shared.enabled)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_shared_lookups", Kind::Counter)),
        help: "Read-throughs to the shared store after a local miss, by result \
               (known_missing: a ticket-key name not asked for again, it was missing moments before).",
        json: Some("shared.lookups.{result}"),
        series: |s| {
            by(
                "result",
                &[
                    ("hit", s.shared.lookups_hit),
                    ("miss", s.shared.lookups_miss),
                    ("failed", s.shared.lookups_failed),
                    ("known_missing", s.shared.key_lookups_known_missing),
                ],
            )
        },
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_shared_writes", Kind::Counter)),
        help: "Writes for the shared store, by outcome (queued, dropped, failed).",
        json: Some("shared.writes.{result}"),
        series: |s| {
            by(
                "result",
                &[
                    ("queued", s.shared.writes_queued),
                    ("dropped", s.shared.writes_dropped),
                    ("failed", s.shared.writes_failed),
                ],
            )
        },
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_shared_breaker_opened", Kind::Counter)),
        help: "Times the circuit breaker of the shared store opened.",
        json: Some("shared.breaker_opened"),
        series: |s| Series::one(count(s.shared.breaker_opened)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_log_lines_dropped", Kind::Counter)),
        help: "Log lines dropped because syslogd or postlogd was not reading them.",
        json: Some("process.log_lines_dropped"),
        series: |s| Series::one(count(s.process.log_lines_dropped)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_shared_refused", Kind::Counter)),
        help: "Commands the shared store answered with an error while the link worked.",
        json: Some("shared.refused"),
        series: |s| Series::one(count(s.shared.refused)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_shared_degraded", Kind::Counter)),
        help: "Times the shared store started refusing commands it answered before.",
        json: Some("shared.degraded"),
        series: |s| Series::one(count(s.shared.degraded)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_shared_removals_told", Kind::Counter)),
        help: "Admin removals other hosts of the site told of.",
        json: Some("shared.removals_told"),
        series: |s| Series::one(count(s.shared.removals_told)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_shared_removals_told_dropped", Kind::Counter)),
        help: "Admin removals other hosts told of, dropped: the queue was full.",
        json: Some("shared.removals_told_dropped"),
        series: |s| Series::one(count(s.shared.removals_told_dropped)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_shared_subscriber_lost", Kind::Counter)),
        help: "Times the subscription to other hosts' removals was lost (removals missed meanwhile).",
        json: Some("shared.subscriber_lost"),
        series: |s| Series::one(count(s.shared.subscriber_lost)),
    },
    Family {
        prometheus: Some(("postfix_tlsmgr_build_info", Kind::Gauge)),
        help: "Always 1; the version as a label.",
        json: None,
        series: |s| vec![Series::new(vec![("version", s.version)], count(1))],
    },
    Family {
        prometheus: Some(("process_cpu_seconds", Kind::Counter)),
        help: "User and system CPU time spent (getrusage).",
        json: Some("process.cpu_seconds"),
        series: |s| Series::one(Value::Real(s.process.cpu_seconds)),
    },
    Family {
        prometheus: Some(("process_max_resident_memory_bytes", Kind::Gauge)),
        help: "Peak resident set size (getrusage).",
        json: Some("process.max_rss_bytes"),
        series: |s| Series::one(count(s.process.max_rss_bytes)),
    },
    Family {
        prometheus: Some(("process_start_time_seconds", Kind::Gauge)),
        help: "Start time of the process since the epoch.",
        json: None,
        series: |s| Series::one(count(s.started_at)),
    },
];

/// The name `/metrics` shows for a family: counters end in `_total`.
#[cfg(test)]
pub fn exposed_name(name: &str, kind: Kind) -> String {
    match kind {
        Kind::Counter => format!("{name}_total"),
        Kind::Gauge | Kind::Histogram => name.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    /// `a_{b,c}_d` → `a_b_d`, `a_c_d` (the docs abbreviate families so).
    fn expand_braces(word: &str) -> Vec<String> {
        match (word.find('{'), word.find('}')) {
            (Some(open), Some(close)) if open < close => word[open + 1..close]
                .split(',')
                .flat_map(|alt| {
                    expand_braces(&format!("{}{alt}{}", &word[..open], &word[close + 1..]))
                })
                .collect(),
            _ => vec![word.to_string()],
        }
    }

    fn markdown_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                markdown_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }

    /// Every name the documentation shows in backquotes, braces expanded
    /// and label lists (`{cache,result}`) dropped.
    fn documented_names() -> std::collections::BTreeSet<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![root.join("README.md")];
        markdown_files(&root.join("docs"), &mut files);
        let mut names = std::collections::BTreeSet::new();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            for quoted in text.split('`').skip(1).step_by(2) {
                // A label list follows the name: `name{cache,result}`.
                let word = match quoted.find('{') {
                    Some(i) if quoted.ends_with('}') && !quoted[..i].ends_with('_') => &quoted[..i],
                    _ => quoted,
                };
                names.extend(expand_braces(word));
            }
        }
        names
    }

    #[test]
    fn the_docs_name_every_prometheus_family() {
        let documented = documented_names();
        let missing: Vec<String> = FAMILIES
            .iter()
            .filter_map(|f| f.prometheus)
            .map(|(name, kind)| exposed_name(name, kind))
            .filter(|name| !documented.contains(name))
            .collect();
        assert!(missing.is_empty(), "not in README.md or docs/: {missing:?}");
    }

    #[test]
    fn braces_expand_as_the_docs_use_them() {
        assert_eq!(
            expand_braces("p_{a,b}_total"),
            ["p_a_total".to_string(), "p_b_total".to_string()]
        );
    }

    #[test]
    fn names_and_json_places_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for f in FAMILIES {
            if let Some((name, _)) = f.prometheus {
                assert!(seen.insert(name.to_string()), "{name} twice");
            }
            if let Some(path) = f.json {
                assert!(seen.insert(path.to_string()), "{path} twice");
            }
        }
    }
}
