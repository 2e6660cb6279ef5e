//! The data path's side of sharing through Redis (`crate::shared`): what a
//! lookup, update or delete adds when its cache type is shared, and the
//! lookup of a ticket key by a name this host does not know. Kept apart
//! from `requests` so that the request semantics read as before.
//!
//! - Lookup: local first; on a miss, one read-through bounded by
//!   `tlsmgr_shared_lookup_deadline` (only this connection waits); a value
//!   that opens and is still fresh fills the local store with its original
//!   time, so it expires here when it does there. Anything else is a miss.
//! - Update and delete: the local store answers; the Redis write is queued
//!   (never waited for), dropped and counted when the queue is full. A
//!   protocol `delete` is not told to other hosts: Postfix deletes on its
//!   own failure paths, which say nothing of the other hosts' copies.
//! - Admin removals (`tlsmgr cache delete|purge`): Redis's copy goes at
//!   once, and the other hosts are told ([`crate::shared::invalidation`]);
//!   [`apply_told`] removes their local copies when they are told.

use super::Services;
use crate::cache::{Cache, CacheDown};
use crate::config::Config;
use crate::protocol::CacheType;
use crate::shared::invalidation::{Invalidation, Seen, Told};
use crate::shared::{seal, Settings, Shared, Write};
use crate::tickets::TicketKey;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use slog::{info, warn, Logger};
use std::sync::Arc;

/// The link in force (`None`: sharing off), swapped by reloads.
pub type SharedSlot = Arc<ArcSwapOption<Shared>>;

/// Starts the link `cfg` asks for (`None`: off, or it could not start,
/// which is warned about).
pub fn start_link(cfg: &Config, log: &Logger) -> Option<Arc<Shared>> {
    let settings = Settings::of(&cfg.shared)?;
    let url = crate::config::redact_url(&settings.url);
    match Shared::start(settings, log.clone()) {
        Ok(link) => {
            info!(log, "sharing through {} as site {}", url, cfg.shared.site);
            Some(link)
        }
        Err(e) => {
            warn!(log, "shared store {}: {} -- sharing off", url, e);
            None
        }
    }
}

/// After a reload: a new link when anything it runs with changed.
pub fn relink(slot: &SharedSlot, new: &Config, log: &Logger) {
    let wanted = Settings::of(&new.shared);
    let current = slot.load();
    if current.as_ref().map(|s| s.settings()) == wanted.as_ref() {
        return;
    }
    if wanted.is_none() && current.is_some() {
        info!(log, "sharing off");
    }
    slot.store(start_link(new, log));
}

fn link_for(svc: &Services, ct: CacheType) -> Option<Arc<Shared>> {
    svc.shared.load_full().filter(|s| s.settings().shares(ct))
}

/// Ids the cache refuses are not looked up or written in Redis either.
fn id_ok(id: &[u8]) -> bool {
    id.len() <= crate::store::MAX_CACHE_ID_LEN
}

/// Lookup with read-through.
pub async fn lookup(svc: &Services, cache: &Cache, id: &[u8]) -> Result<Option<Bytes>, CacheDown> {
    let local = cache.lookup(id)?;
    if local.is_some() {
        return Ok(local);
    }
    let ct = cache.cache_type();
    let Some(link) = link_for(svc, ct).filter(|_| id_ok(id)) else {
        return Ok(None);
    };
    let st = link.settings();
    let name = seal::session_name(&st.secret, &st.prefix, ct, id);
    let counters = link.counters();
    counters
        .lookups
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let found = match link.get(name.clone()).await {
        Ok(Some(v)) => seal::open_session(&st.secret, &name, &v),
        Ok(None) => None,
        Err(_) => {
            counters
                .lookup_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(None);
        }
    };
    let now = svc.clock.now();
    match found {
        Some((stored_at, session))
            if cache.fresh(stored_at) && !svc.tombstones.buries(ct, &name, stored_at, now) =>
        {
            counters
                .hits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if cache.limits().log_cache {
                info!(
                    svc.log,
                    "read {} TLS cache entry {}: time={} [data {} bytes] from the shared store",
                    ct,
                    String::from_utf8_lossy(id),
                    stored_at,
                    session.len()
                );
            }
            // A local store that fails now is the cache actor's business;
            // the session is still good for this reply.
            let _ = cache.fill(id, stored_at, &session);
            Ok(Some(Bytes::from(session)))
        }
        _ => {
            counters
                .misses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(None)
        }
    }
}

/// After a local update that succeeded: queue the shared copy.
pub fn updated(svc: &Services, cache: &Cache, id: &[u8], session: &[u8]) {
    let ct = cache.cache_type();
    let Some(link) = link_for(svc, ct) else {
        return;
    };
    let st = link.settings();
    let name = seal::session_name(&st.secret, &st.prefix, ct, id);
    let value = seal::seal_session(&st.secret, &name, svc.clock.now(), session);
    link.write(Write::Set {
        name,
        value,
        ttl: u64::from(cache.limits().timeout),
    });
}

/// After a local delete: queue the shared one, and remember it so that
/// the value is not read back if it reappears in Redis.
pub fn deleted(svc: &Services, cache: &Cache, id: &[u8]) {
    let ct = cache.cache_type();
    let Some(link) = link_for(svc, ct).filter(|_| id_ok(id)) else {
        return;
    };
    let st = link.settings();
    let name = seal::session_name(&st.secret, &st.prefix, ct, id);
    let timeout = u64::from(cache.limits().timeout);
    svc.tombstones.removed(ct, &name, svc.clock.now(), timeout);
    link.write(Write::Del { name });
}

/// A ticket key this host does not know, by name: one bounded lookup, none
/// for a name the store did not have moments before.
pub async fn key_by_name(svc: &Services, name: &[u8; 16]) -> Option<TicketKey> {
    let link = svc.shared.load_full()?;
    let now = svc.clock.now();
    if link.unknown_names().recently_missed(name, now) {
        link.counters()
            .lookups_known_missing
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return None;
    }
    let st = link.settings();
    let redis_name = seal::key_name(&st.prefix, name);
    // A timeout or an error is no answer: only what Redis said is remembered.
    let sealed = link.get(redis_name.clone()).await.ok()?;
    let key = sealed
        .and_then(|v| seal::open_key(&st.secret, &redis_name, &v))
        .filter(|k| &k.name == name);
    if key.is_none() {
        link.unknown_names().missed(*name, now);
    }
    key
}

/// Keys asked for per `SCAN` step of a purge: each step and each `UNLINK`
/// of what it found is a short command, so the read-throughs and writes of
/// every host are served in between; and a step's reply (about 100 bytes
/// a key name) stays far inside the reply bounds of `shared::bounded`.
pub const PURGE_SCAN_COUNT: usize = 500;

/// A purge gives up after this long and says so (run it again to go on):
/// the admin connection is closed after [`crate::admin::TIMEOUT`].
pub const PURGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// What an admin removal did in the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedRemoval {
    /// The cache type is not shared (or sharing is off): nothing to do.
    NotShared,
    /// Keys removed.
    Removed(u64),
    /// The store could not be reached or did not finish: keys removed
    /// before that, the store (redacted URL) and why.
    Failed {
        /// Keys removed before the failure.
        removed: u64,
        /// The store's URL, without its password.
        store: String,
        /// Why.
        why: String,
    },
}

/// Escapes the glob characters of `s` for a `SCAN ... MATCH` pattern. Site
/// names cannot hold any today; escaping keeps a purge within its site
/// whatever the syntax becomes.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `tlsmgr cache delete`: removes the shared copy of `id` now (not through
/// the write-behind queue, so the answer can say whether it went), on the
/// link's own thread, within `tlsmgr_shared_connect_timeout`. This host
/// refuses the value for `timeout` seconds should it reappear (also when
/// Redis does not answer now).
pub async fn admin_delete(svc: &Services, ct: CacheType, id: &[u8], timeout: u64) -> SharedRemoval {
    let Some(link) = link_for(svc, ct).filter(|_| id_ok(id)) else {
        return SharedRemoval::NotShared;
    };
    let st = link.settings();
    let name = seal::session_name(&st.secret, &st.prefix, ct, id);
    let now = svc.clock.now();
    svc.tombstones.removed(ct, &name, now, timeout);
    let mut cmd = redis::cmd("DEL");
    cmd.arg(&name);
    let removed = match removed_count(link.call(cmd).await) {
        Ok(n) => SharedRemoval::Removed(n),
        Err(why) => SharedRemoval::Failed {
            removed: 0,
            store: crate::config::redact_url(&st.url),
            why,
        },
    };
    let what = Invalidation::Delete {
        ct,
        id: id.to_vec(),
    };
    tell(svc, &link, &what, now, removed).await
}

/// Tells the other hosts that `what` was removed at `now` (also when the
/// Redis part failed: their local copies are what still serves the
/// session). A removal that went but could not be told fails, as other
/// hosts go on serving their copies.
async fn tell(
    svc: &Services,
    link: &Shared,
    what: &Invalidation,
    now: u64,
    removed: SharedRemoval,
) -> SharedRemoval {
    match link.publish(what, now).await {
        Ok(hosts) => {
            // PUBLISH counts this host's own subscription too.
            info!(
                svc.log,
                "admin: told {} other host(s) of the removal",
                hosts.saturating_sub(1)
            );
            removed
        }
        Err(e) => match removed {
            SharedRemoval::Removed(n) => SharedRemoval::Failed {
                removed: n,
                store: crate::config::redact_url(&link.settings().url),
                why: format!("other hosts not told: {e}"),
            },
            other => other,
        },
    }
}

/// Applies what other hosts removed ([`crate::shared::invalidation`]),
/// from the queue of the link in force, following the link when a reload
/// replaces it. Runs on the daemon thread; store I/O goes to the blocking
/// pool.
pub async fn apply_told(svc: Services) {
    let mut current: Option<Arc<Shared>> = None;
    let mut told: Option<tokio::sync::mpsc::Receiver<Told>> = None;
    let mut seen = Seen::default();
    // How often a replaced link is noticed (reloads are rare).
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        let next = match told.as_mut() {
            Some(rx) => tokio::select! {
                t = rx.recv() => match t {
                    Some(t) => Some(t),
                    None => {
                        told = None;
                        None
                    }
                },
                _ = tick.tick() => None,
            },
            None => {
                tick.tick().await;
                None
            }
        };
        let link = svc.shared.load_full();
        let same = match (&link, &current) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            told = link.as_ref().and_then(|l| l.take_told());
            current = link;
        }
        if let Some(t) = next {
            if seen.fresh(&t, svc.clock.now()) {
                apply(&svc, t).await;
            }
        }
    }
}

/// Removes locally what another host removed, and refuses what Redis may
/// still hold of it as if this host had removed it.
async fn apply(svc: &Services, told: Told) {
    let ct = match &told.what {
        Invalidation::Delete { ct, .. } | Invalidation::Purge { ct } => *ct,
    };
    let Some(link) = link_for(svc, ct) else {
        return;
    };
    let Some(cache) = svc.caches.load().get(ct).map(|rc| rc.cache.clone()) else {
        return;
    };
    let timeout = u64::from(cache.limits().timeout);
    let shown = match &told.what {
        Invalidation::Delete { id, .. } => {
            let st = link.settings();
            let name = seal::session_name(&st.secret, &st.prefix, ct, id);
            svc.tombstones.removed(ct, &name, told.at, timeout);
            format!("deleted {} {}", ct, String::from_utf8_lossy(id))
        }
        Invalidation::Purge { .. } => {
            svc.tombstones.purged(ct, told.at, timeout);
            format!("purged {ct}")
        }
    };
    let what = told.what;
    let local = actix_rt::task::spawn_blocking(move || match what {
        Invalidation::Delete { id, .. } => cache.delete(&id).map(u64::from),
        Invalidation::Purge { .. } => cache.purge(),
    })
    .await;
    match local {
        Ok(Ok(n)) => info!(svc.log, "{} as another host did: local {}", shown, n),
        _ => warn!(
            svc.log,
            "{} as another host did: the {} TLS cache is not available", shown, ct
        ),
    }
}

/// `tlsmgr cache purge`: removes every shared session of `ct` of this site,
/// `SCAN` step by `SCAN` step, each step's keys with one `UNLINK` (Redis
/// frees them in the background). Every command runs on the link's thread
/// under its usual bounds; none of it touches an I/O thread. This host
/// refuses every value of `ct` written until now for `timeout` seconds.
pub async fn admin_purge(svc: &Services, ct: CacheType, timeout: u64) -> SharedRemoval {
    let Some(link) = link_for(svc, ct) else {
        return SharedRemoval::NotShared;
    };
    let now = svc.clock.now();
    svc.tombstones.purged(ct, now, timeout);
    let removed = purge_shared(&link, ct).await;
    tell(svc, &link, &Invalidation::Purge { ct }, now, removed).await
}

/// The Redis part of [`admin_purge`].
async fn purge_shared(link: &Shared, ct: CacheType) -> SharedRemoval {
    let st = link.settings();
    let store = crate::config::redact_url(&st.url);
    let pattern = format!("{}:sc:{}:*", glob_escape(&st.prefix), ct);
    let started = std::time::Instant::now();
    let mut removed = 0u64;
    let mut cursor = 0u64;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(PURGE_SCAN_COUNT);
        let step = link
            .call(scan)
            .await
            .map_err(|e| e.to_string())
            .and_then(|v| {
                redis::from_redis_value::<(u64, Vec<Vec<u8>>)>(v).map_err(|e| e.to_string())
            });
        let (next, keys) = match step {
            Ok(s) => s,
            Err(why) => {
                return SharedRemoval::Failed {
                    removed,
                    store,
                    why,
                }
            }
        };
        if !keys.is_empty() {
            let mut unlink = redis::cmd("UNLINK");
            unlink.arg(keys);
            match removed_count(link.call(unlink).await) {
                Ok(n) => removed += n,
                Err(why) => {
                    return SharedRemoval::Failed {
                        removed,
                        store,
                        why,
                    }
                }
            }
        }
        if next == 0 {
            return SharedRemoval::Removed(removed);
        }
        cursor = next;
        if started.elapsed() > PURGE_DEADLINE {
            return SharedRemoval::Failed {
                removed,
                store,
                why: format!(
                    "not finished within {} s (run the purge again to go on)",
                    PURGE_DEADLINE.as_secs()
                ),
            };
        }
    }
}

/// The count a `DEL` or `UNLINK` answered, or why there is none.
fn removed_count(r: Result<redis::Value, crate::shared::SharedError>) -> Result<u64, String> {
    let v = r.map_err(|e| e.to_string())?;
    redis::from_redis_value::<u64>(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("tlsmgr:mx-1.eu"), "tlsmgr:mx-1.eu");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
