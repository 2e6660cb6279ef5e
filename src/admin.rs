//! The admin socket's protocol (`tlsmgr_admin_socket`), client side, and
//! what `tlsmgr stats`, `tlsmgr keys` and `tlsmgr cache` print. The server
//! side is `daemon::admin`.
//!
//! The protocol is ours, and deliberately small: the client sends one line
//! (`stats`, `keys list`, `keys rotate`, `cache purge TYPE`, `cache delete
//! TYPE ID`); the server answers `ok` or `error: TEXT` on a first line,
//! then the body (JSON for `stats`, text otherwise), and closes. Postfix
//! clients never see any of it: it is not the `private/tlsmgr` socket.
//!
//! [`AdminRequest`] is that line as a type: the client writes it
//! ([`AdminRequest`]'s `Display`) and the daemon reads it back
//! ([`AdminRequest::parse`]), so the grammar has one home.

use crate::protocol::CacheType;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest request line the server reads (a cache id is at most 16 KiB).
pub const MAX_LINE: usize = 64 * 1024;

/// How long either side waits for the other.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Admin client errors.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be reached or read.
    #[error("{what}: {source}")]
    Io {
        /// What failed, naming the socket.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon refused or failed the command; its words.
    #[error("{0}")]
    Refused(String),
    /// The daemon's answer is not what the protocol says.
    #[error("malformed answer from the daemon: {0}")]
    Protocol(String),
}

/// One admin request, as the client sends it and the daemon carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// `stats`: every counter, as JSON.
    Stats,
    /// `keys list`: role, name, age and expiry of each ticket key.
    KeysList,
    /// `keys rotate`: a new current key at once.
    KeysRotate,
    /// `cache purge TYPE`: every entry of one cache.
    CachePurge(CacheType),
    /// `cache delete TYPE ID`: one entry (the id may hold spaces, not a
    /// newline).
    CacheDelete(CacheType, String),
}

/// The answer to a request line that is none of the requests.
const UNKNOWN: &str = "stats, keys list, keys rotate, cache purge TYPE, cache delete TYPE ID";

impl AdminRequest {
    /// Reads a request line (without its newline); the error is the
    /// daemon's answer, in words an admin acts on.
    pub fn parse(line: &str) -> Result<AdminRequest, String> {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("stats"), None, None) => Ok(AdminRequest::Stats),
            (Some("keys"), Some("list"), None) => Ok(AdminRequest::KeysList),
            (Some("keys"), Some("rotate"), None) => Ok(AdminRequest::KeysRotate),
            (Some("cache"), Some(op @ ("purge" | "delete")), Some(rest)) => {
                match (op, rest.split_once(' ')) {
                    ("purge", None) => Ok(AdminRequest::CachePurge(cache_type(rest)?)),
                    ("delete", Some((t, id))) if !id.is_empty() => {
                        Ok(AdminRequest::CacheDelete(cache_type(t)?, id.to_string()))
                    }
                    _ => Err(format!(
                        "usage: cache {op} TYPE{}",
                        if op == "delete" { " ID" } else { "" }
                    )),
                }
            }
            _ => Err(format!(
                "unknown command \"{}\" ({UNKNOWN})",
                line.chars().take(100).collect::<String>()
            )),
        }
    }
}

impl std::fmt::Display for AdminRequest {
    /// The request line, without its newline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminRequest::Stats => f.write_str("stats"),
            AdminRequest::KeysList => f.write_str("keys list"),
            AdminRequest::KeysRotate => f.write_str("keys rotate"),
            AdminRequest::CachePurge(ct) => write!(f, "cache purge {ct}"),
            AdminRequest::CacheDelete(ct, id) => write!(f, "cache delete {ct} {id}"),
        }
    }
}

/// The cache named `word`, or why not.
pub fn cache_type(word: &str) -> Result<CacheType, String> {
    CacheType::from_wire(word.as_bytes())
        .ok_or_else(|| format!("unknown cache type \"{word}\" (smtpd, smtp or lmtp)"))
}

/// Sends `command` and returns the body of an `ok` answer.
pub fn request(socket: &Path, command: &AdminRequest) -> Result<String, AdminError> {
    let io = |what: &str| {
        let what = format!("{what} {}", socket.display());
        move |source| AdminError::Io { what, source }
    };
    let mut stream = loop {
        match UnixStream::connect(socket) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.map_err(io("connect"))?,
        }
    };
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(io("set timeout on"))?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(io("set timeout on"))?;
    // The daemon may answer (a refusal) and close before it reads the
    // command: then the write fails, and the answer still explains why.
    let written = stream.write_all(format!("{command}\n").as_bytes());
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    if answer.is_empty() {
        written.map_err(io("write"))?;
        read.map_err(io("read"))?;
    }
    let answer = String::from_utf8_lossy(&answer);
    let (first, body) = answer.split_once('\n').unwrap_or((&answer, ""));
    if first == "ok" {
        Ok(body.to_string())
    } else if let Some(why) = first.strip_prefix("error: ") {
        Err(AdminError::Refused(why.to_string()))
    } else {
        Err(AdminError::Protocol(first.chars().take(200).collect()))
    }
}

/// A `stats` answer as JSON.
pub fn stats(socket: &Path) -> Result<Value, AdminError> {
    let body = request(socket, &AdminRequest::Stats)?;
    serde_json::from_str(&body).map_err(|e| AdminError::Protocol(e.to_string()))
}

fn u(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}", part as f64 * 100.0 / whole as f64)
    }
}

/// The `tlsmgr stats` table for `now`; with `prev` (taken `secs` seconds
/// earlier, `--watch`) the counters are rates per second instead.
pub fn render_table(now: &Value, prev: Option<(&Value, f64)>) -> String {
    let mut out = String::new();
    let rate = |path: &[&str]| -> String {
        match prev {
            None => u(now, path).to_string(),
            Some((p, secs)) => format!(
                "{:.1}",
                u(now, path).saturating_sub(u(p, path)) as f64 / secs.max(0.001)
            ),
        }
    };
    let unit = if prev.is_some() { " (per second)" } else { "" };
    out += &format!(
        "{:<6} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}{}\n",
        "cache",
        "entries",
        "lookups",
        "hit%",
        "hits",
        "misses",
        "expired",
        "updates",
        "deletes",
        "evicted",
        unit
    );
    for ct in CacheType::ALL {
        let c = ct.as_str();
        let enabled = now["caches"][c]["enabled"].as_bool().unwrap_or(false);
        let hits = u(now, &["caches", c, "lookups", "hit"]);
        let lookups = hits
            + u(now, &["caches", c, "lookups", "miss"])
            + u(now, &["caches", c, "lookups", "expired"]);
        let (hit_pct, lookups_shown) = match prev {
            None => (percent(hits, lookups), lookups.to_string()),
            Some((p, secs)) => {
                let ph = u(p, &["caches", c, "lookups", "hit"]);
                let pl = ph
                    + u(p, &["caches", c, "lookups", "miss"])
                    + u(p, &["caches", c, "lookups", "expired"]);
                (
                    percent(hits.saturating_sub(ph), lookups.saturating_sub(pl)),
                    format!("{:.1}", lookups.saturating_sub(pl) as f64 / secs.max(0.001)),
                )
            }
        };
        let entries = if enabled {
            u(now, &["caches", c, "entries"]).to_string()
        } else {
            "off".to_string()
        };
        out += &format!(
            "{:<6} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            c,
            entries,
            lookups_shown,
            hit_pct,
            rate(&["caches", c, "lookups", "hit"]),
            rate(&["caches", c, "lookups", "miss"]),
            rate(&["caches", c, "lookups", "expired"]),
            rate(&["caches", c, "updates"]),
            rate(&["caches", c, "deletes"]),
            rate(&["caches", c, "evicted"]),
        );
    }
    for ct in CacheType::ALL {
        let c = ct.as_str();
        let resets: Vec<String> = crate::store::error::Lasting::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    u(now, &["caches", c, "store_resets", r.as_str()]),
                )
            })
            .filter(|&(_, n)| n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        if !resets.is_empty() {
            out += &format!("{c} store resets: {}\n", resets.join(", "));
        }
    }
    out += &format!(
        "ticket keys: issued {}, lookups found {}, unknown {}, rotations {}, save failures {}\n",
        rate(&["tickets", "issued"]),
        rate(&["tickets", "lookups", "found"]),
        rate(&["tickets", "lookups", "unknown"]),
        rate(&["tickets", "rotations"]),
        rate(&["tickets", "save_failures"]),
    );
    out += &format!(
        "prng: seed requests {}, seed bytes {}, reseeds {} ({} failed), exchange writes {} ({} failed)\n",
        rate(&["prng", "seed_requests"]),
        rate(&["prng", "seed_bytes"]),
        rate(&["prng", "reseeds"]),
        rate(&["prng", "reseed_failures"]),
        rate(&["prng", "exchange_writes"]),
        rate(&["prng", "exchange_failures"]),
    );
    let last = match now["reloads"]["last"].as_object() {
        Some(l) => {
            let at = l.get("time").and_then(Value::as_u64).unwrap_or(0);
            let ago = u(now, &["time"]).saturating_sub(at);
            format!(
                "last {} {}s ago",
                l.get("result").and_then(Value::as_str).unwrap_or("?"),
                ago
            )
        }
        None => "none yet".to_string(),
    };
    out += &format!(
        "reloads: {last}; applied {}, rejected {}\n",
        rate(&["reloads", "applied"]),
        rate(&["reloads", "rejected"]),
    );
    out += &format!(
        "connections: open {}, accepted {}\n",
        u(now, &["connections", "open"]),
        rate(&["connections", "total"]),
    );
    out += &format!(
        "log lines dropped: {}\n",
        rate(&["process", "log_lines_dropped"]),
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_what_the_client_writes() {
        for (line, request) in [
            ("stats", AdminRequest::Stats),
            ("keys list", AdminRequest::KeysList),
            ("keys rotate", AdminRequest::KeysRotate),
            (
                "cache purge lmtp",
                AdminRequest::CachePurge(CacheType::Lmtp),
            ),
            (
                "cache delete smtp a b:25",
                AdminRequest::CacheDelete(CacheType::Smtp, "a b:25".to_string()),
            ),
        ] {
            assert_eq!(request.to_string(), line);
            assert_eq!(AdminRequest::parse(line), Ok(request));
        }
    }

    #[test]
    fn malformed_requests_are_answered_with_the_grammar() {
        for (line, why) in [
            ("stats now", "unknown command \"stats now\""),
            ("keys", "unknown command \"keys\""),
            ("cache purge", "unknown command \"cache purge\""),
            ("cache purge smtpd x", "usage: cache purge TYPE"),
            ("cache delete smtpd", "usage: cache delete TYPE ID"),
            ("cache delete smtpd ", "usage: cache delete TYPE ID"),
            (
                "cache purge imap",
                "unknown cache type \"imap\" (smtpd, smtp or lmtp)",
            ),
        ] {
            let err = AdminRequest::parse(line).unwrap_err();
            assert!(err.starts_with(why), "{line}: {err}");
        }
    }

    #[test]
    fn table_shows_counts_and_rates() {
        let m = crate::metrics::Metrics::new(0);
        let a = m.snapshot(10).to_json();
        for _ in 0..3 {
            m.cache_lookup(CacheType::Smtp, crate::metrics::LookupResult::Hit);
        }
        m.cache_lookup(CacheType::Smtp, crate::metrics::LookupResult::Miss);
        let b = m.snapshot(12).to_json();
        let table = render_table(&b, None);
        let smtp = table.lines().find(|l| l.starts_with("smtp ")).unwrap_or("");
        let cols: Vec<&str> = smtp.split_whitespace().collect();
        assert_eq!(
            cols,
            ["smtp", "off", "4", "75.0", "3", "1", "0", "0", "0", "0"]
        );
        assert!(table.contains("reloads: none yet; applied 0, rejected 0"));
        let rates = render_table(&b, Some((&a, 2.0)));
        let smtp = rates.lines().find(|l| l.starts_with("smtp ")).unwrap_or("");
        let cols: Vec<&str> = smtp.split_whitespace().collect();
        assert_eq!(cols[2..5], ["2.0", "75.0", "1.5"]);
    }
}
