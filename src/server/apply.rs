//! Request semantics (spec §1.5, §2.6, §2.7): each [`Request`] applied to the
//! running [`Services`] gives exactly one [`Reply`], with Postfix's warnings.

use super::Services;
use crate::actors::{cache, prng, ticket};
use crate::protocol::{CacheType, Reply, Request, Status};
use crate::ticket::KeyMiss;
use bytes::Bytes;
use slog::warn;
use std::time::Duration;

/// Longest a request waits for an actor before it is answered ERR; a healthy
/// actor answers in microseconds, so this only bounds a stuck store.
pub const ACTOR_DEADLINE: Duration = Duration::from_secs(30);

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
fn cache_for(
    svc: &Services,
    cache_type: &[u8],
    request: &str,
) -> Option<actix::Addr<cache::CacheActor>> {
    let Some(ct) = CacheType::from_wire(cache_type) else {
        bogus_type(svc, cache_type, request);
        return None;
    };
    svc.caches.load().get(ct).map(|c| c.addr.clone())
}

/// Applies one request.
pub async fn apply(req: Request, svc: &Services) -> Reply {
    match req {
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
            match svc.prng.send(prng::Seed(size as usize)).await {
                Ok(bytes) => Reply::Seed {
                    status: Status::Ok,
                    seed: Bytes::from(bytes),
                },
                Err(_) => Reply::Seed {
                    status: Status::Err,
                    seed: Bytes::new(),
                },
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
                let running = svc.caches.load().get(ct).map(|rc| rc.timeout);
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
            let miss = |status| Reply::Lookup {
                status,
                session: Bytes::new(),
            };
            let Some(addr) = cache_for(svc, &cache_type, "lookup") else {
                return miss(Status::Fail);
            };
            match addr
                .send(cache::Lookup(cache_id))
                .timeout(ACTOR_DEADLINE)
                .await
            {
                Ok(Ok(Some(session))) => Reply::Lookup {
                    status: Status::Ok,
                    session,
                },
                _ => miss(Status::Err),
            }
        }
        Request::Update {
            cache_type,
            cache_id,
            session,
        } => {
            let Some(addr) = cache_for(svc, &cache_type, "update") else {
                return Reply::Status(Status::Fail);
            };
            match addr
                .send(cache::Update(cache_id, session))
                .timeout(ACTOR_DEADLINE)
                .await
            {
                Ok(Ok(())) => Reply::Status(Status::Ok),
                _ => Reply::Status(Status::Err),
            }
        }
        Request::Delete {
            cache_type,
            cache_id,
        } => {
            let Some(addr) = cache_for(svc, &cache_type, "delete") else {
                return Reply::Status(Status::Fail);
            };
            match addr
                .send(cache::Delete(cache_id))
                .timeout(ACTOR_DEADLINE)
                .await
            {
                Ok(Ok(true)) => Reply::Status(Status::Ok),
                _ => Reply::Status(Status::Err),
            }
        }
        Request::TktKey { keyname } => {
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
            match svc.tickets.send(ticket::GetKey(name)).await {
                Ok(Ok(key)) => Reply::TktKey {
                    status: Status::Ok,
                    keybuf: Bytes::copy_from_slice(&key.to_bytes()),
                },
                // Stock Postfix echoes the requested name in an ERR reply;
                // clients ignore it, but we match the bytes.
                Ok(Err(KeyMiss::Unknown)) => Reply::TktKey {
                    status: Status::Err,
                    keybuf: keyname,
                },
                Ok(Err(KeyMiss::Disabled)) | Err(_) => Reply::TktKey {
                    status: Status::Err,
                    keybuf: Bytes::new(),
                },
            }
        }
    }
}
