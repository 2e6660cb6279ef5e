//! Request semantics (spec §1.5, §2.6, §2.7): each [`Request`] applied to the
//! running [`Services`] gives exactly one [`Reply`], with Postfix's warnings.
//!
//! Everything here runs on the I/O thread that read the request, against
//! shared handles: the cache's store ([`crate::cache::Cache`]), the ticket
//! ring snapshot ([`crate::tickets::KeyRing`]) and the thread's seed
//! generator ([`crate::prng::SeedPool`]). The one await is the ticket
//! fallback: a `tktkey` that finds no encrypting key in the snapshot (the
//! clock ran past the whole ring) asks the ticket actor to rotate.

use super::Services;
use crate::actors::ticket::{AdoptKey, Tick};
use crate::cache::Cache;
use crate::protocol::{CacheType, Reply, Request, Status};
use crate::tickets::KeyMiss;
use bytes::Bytes;
use slog::warn;
use std::sync::Arc;
use std::time::Duration;

/// Longest a `tktkey` waits for the ticket actor's rotation in the fallback.
pub const ROTATION_DEADLINE: Duration = Duration::from_secs(10);

fn bogus_type(svc: &Services, cache_type: &[u8], request: &str) {
    warn!(
        svc.log,
        "bogus cache type \"{}\" in \"{}\" request",
        String::from_utf8_lossy(cache_type),
        request
    );
}

/// The running cache for a request, or the FAIL cause: unknown type
/// (warned) or cache disabled.
fn cache_for(svc: &Services, cache_type: &[u8], request: &str) -> Option<Arc<Cache>> {
    let Some(ct) = CacheType::from_wire(cache_type) else {
        bogus_type(svc, cache_type, request);
        return None;
    };
    svc.caches.load().get(ct).map(|c| c.cache.clone())
}

fn status_of(ok: bool) -> Status {
    if ok {
        Status::Ok
    } else {
        Status::Err
    }
}

/// Applies one request.
pub async fn apply(req: Request, svc: &Services) -> Reply {
    match req {
        Request::TktKey { keyname } => tktkey(keyname, svc).await,
        Request::Seed { size } => {
            if !(1..=255).contains(&size) {
                warn!(
                    svc.log,
                    "bogus seed length \"{}\" in \"seed\" request", size
                );
                return Reply::Seed {
                    status: Status::Fail,
                    seed: Bytes::new(),
                };
            }
            // Always OK, never the ERR with an empty seed that Postfix
            // 3.7.21+ sends when RAND_bytes() fails: producing a seed here
            // cannot fail. It is ChaCha20 keystream from a key this thread
            // took from the central pool (`prng::threads`), computed in
            // memory with no system call and no error path. The operating
            // system's CSPRNG is asked only when the pools are made, at
            // start (`Pool::from_os`), before the socket is served: without
            // it the start fails, so no request ever meets an unkeyed pool.
            // Sources and the exchange file only mix into a pool that is
            // already keyed, and a failed read leaves the key as it was.
            let mut seed = vec![0u8; size as usize];
            svc.seeds.seed(&mut seed);
            svc.metrics.seed(seed.len() as u64);
            Reply::Seed {
                status: Status::Ok,
                seed: Bytes::from(seed),
            }
        }
        Request::Policy { cache_type } => match CacheType::from_wire(&cache_type) {
            None => {
                bogus_type(svc, &cache_type, "policy");
                Reply::Policy {
                    status: Status::Fail,
                    cachable: false,
                    timeout: 0,
                }
            }
            Some(ct) => {
                // The running cache's own timeout: a reload applied on
                // another I/O thread between the two loads below cannot pair
                // an enabled cache with another configuration's timeout.
                let running = svc
                    .caches
                    .load()
                    .get(ct)
                    .map(|rc| rc.cache.limits().timeout);
                Reply::Policy {
                    status: Status::Ok,
                    cachable: running.is_some(),
                    timeout: running.unwrap_or_else(|| svc.config.load().cache(ct).timeout),
                }
            }
        },
        Request::Lookup {
            cache_type,
            cache_id,
        } => {
            let session = match cache_for(svc, &cache_type, "lookup") {
                None => Err(Status::Fail),
                Some(c) => match super::sharing::lookup(svc, &c, &cache_id).await {
                    Ok(Some(s)) => Ok(s),
                    _ => Err(Status::Err),
                },
            };
            match session {
                Ok(session) => Reply::Lookup {
                    status: Status::Ok,
                    session,
                },
                Err(status) => Reply::Lookup {
                    status,
                    session: Bytes::new(),
                },
            }
        }
        Request::Update {
            cache_type,
            cache_id,
            session,
        } => Reply::Status(match cache_for(svc, &cache_type, "update") {
            None => Status::Fail,
            Some(c) => {
                let ok = c.update(&cache_id, &session).is_ok();
                if ok {
                    super::sharing::updated(svc, &c, &cache_id, &session);
                }
                status_of(ok)
            }
        }),
        Request::Delete {
            cache_type,
            cache_id,
        } => Reply::Status(match cache_for(svc, &cache_type, "delete") {
            None => Status::Fail,
            Some(c) => {
                let r = c.delete(&cache_id);
                if r.is_ok() {
                    super::sharing::deleted(svc, &c, &cache_id);
                }
                status_of(r == Ok(true))
            }
        }),
    }
}

async fn tktkey(keyname: Bytes, svc: &Services) -> Reply {
    let name: Option<[u8; 16]> = match keyname.len() {
        0 => None,
        16 => {
            let mut n = [0u8; 16];
            n.copy_from_slice(&keyname);
            Some(n)
        }
        other => {
            warn!(svc.log, "invalid session ticket key name length: {}", other);
            return Reply::TktKey {
                status: Status::Fail,
                keybuf: Bytes::new(),
            };
        }
    };
    let timeout = svc.config.load().ticket_timeout();
    let lookup = || {
        let now = svc.clock.now();
        let ring = svc.ticket_keys.load();
        match &name {
            Some(n) => ring.decrypt_at(n, now, timeout),
            None => ring.encrypt_at(now, timeout),
        }
    };
    let mut found = lookup();
    if found == Err(KeyMiss::Stale) {
        let _ = tokio::time::timeout(ROTATION_DEADLINE, svc.tickets.send(Tick)).await;
        found = lookup();
    }
    if let (Err(KeyMiss::Unknown), Some(n)) = (found, &name) {
        // Made on another host of the site: one bounded lookup.
        if let Some(key) = super::sharing::key_by_name(svc, n).await {
            if key.tout_secs() + i64::from(timeout / 2) > svc.clock.now() as i64 {
                svc.tickets.do_send(AdoptKey(key));
                found = Ok(key);
            }
        }
    }
    svc.metrics.ticket_lookup(name.is_some(), found.is_ok());
    match found {
        Ok(key) => Reply::TktKey {
            status: Status::Ok,
            keybuf: Bytes::copy_from_slice(&key.to_bytes()),
        },
        // Stock Postfix echoes the requested name in an ERR reply;
        // clients ignore it, but we match the bytes.
        Err(KeyMiss::Unknown) => Reply::TktKey {
            status: Status::Err,
            keybuf: keyname,
        },
        Err(KeyMiss::Disabled) | Err(KeyMiss::Stale) => Reply::TktKey {
            status: Status::Err,
            keybuf: Bytes::new(),
        },
    }
}
