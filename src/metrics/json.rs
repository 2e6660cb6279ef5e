//! The `tlsmgr stats --json` object, built from [`super::table::FAMILIES`]:
//! each series goes at its family's place, `{LABEL}` replaced by its label.

use super::table::{Value, FAMILIES};
use super::{RequestCounts, Snapshot};
use serde_json::{json, Map};

impl Snapshot {
    /// The `tlsmgr stats --json` object. Members may be added later;
    /// readers ignore what they do not know.
    pub fn to_json(&self) -> serde_json::Value {
        let mut root = Map::new();
        for family in FAMILIES {
            let Some(place) = family.json else {
                continue;
            };
            for series in (family.series)(self) {
                let mut path = place.to_string();
                for (label, value) in &series.labels {
                    path = path.replace(&format!("{{{label}}}"), value);
                }
                insert(&mut root, &path, json_value(&series.value));
            }
        }
        serde_json::Value::Object(root)
    }
}

/// Puts `value` at `path` (members joined by `.`), making the objects on
/// the way.
fn insert(root: &mut Map<String, serde_json::Value>, path: &str, value: serde_json::Value) {
    let mut object = root;
    let mut members = path.split('.').peekable();
    while let Some(member) = members.next() {
        if members.peek().is_none() {
            object.insert(member.to_string(), value);
            return;
        }
        let next = object
            .entry(member.to_string())
            .or_insert_with(|| serde_json::Value::Object(Map::new()));
        if !next.is_object() {
            *next = serde_json::Value::Object(Map::new());
        }
        let serde_json::Value::Object(inner) = next else {
            return;
        };
        object = inner;
    }
}

fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Count(n) => json!(n),
        Value::Real(x) => json!(x),
        Value::Flag(b) => json!(b),
        Value::Json(v) => v.clone(),
        Value::Latency(r) => latency(r),
    }
}

/// A request's latencies: count, sum (seconds) and the cumulative buckets
/// as `[upper bound, requests]`, the last bound `"+Inf"`.
fn latency(r: &RequestCounts) -> serde_json::Value {
    let buckets: Vec<serde_json::Value> = r
        .buckets()
        .map(|(le, _, cumulative)| {
            let le = if le.is_finite() {
                serde_json::Value::from(le)
            } else {
                serde_json::Value::from("+Inf")
            };
            json!([le, cumulative])
        })
        .collect();
    json!({
        "count": r.total(),
        "sum": r.latency_sum_ns as f64 / 1e9,
        "buckets": buckets,
    })
}
