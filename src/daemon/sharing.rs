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
//!   (never waited for), dropped and counted when the queue is full.

use super::Services;
use crate::cache::{Cache, CacheDown};
use crate::config::Config;
use crate::protocol::CacheType;
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
    match found {
        Some((stored_at, session)) if cache.fresh(stored_at) => {
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

/// After a local delete: queue the shared one.
pub fn deleted(svc: &Services, cache: &Cache, id: &[u8]) {
    let ct = cache.cache_type();
    let Some(link) = link_for(svc, ct).filter(|_| id_ok(id)) else {
        return;
    };
    let st = link.settings();
    link.write(Write::Del {
        name: seal::session_name(&st.secret, &st.prefix, ct, id),
    });
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
