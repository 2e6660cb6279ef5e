//! The ticket-key actor: serves `tktkey` (spec §2.6) from [`TicketKeys`].
//!
//! T is read from the live configuration at every request (the smtpd cache
//! timeout), so a reload changes key lifetimes at once. With
//! `tlsmgr_persistent_state = yes` and a `tlsmgr_ticket_key_file`, the pair is
//! saved whenever a key is created and loaded at start, so tickets survive a
//! restart.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::prng::Pool;
use crate::ticket::{KeyMiss, TicketKey, TicketKeys};
use actix::prelude::*;
use arc_swap::ArcSwap;
use slog::{info, warn, Logger};
use std::path::PathBuf;
use std::sync::Arc;

/// The actor.
pub struct TicketActor {
    keys: TicketKeys,
    pool: Pool,
    file: Option<PathBuf>,
    config: Arc<ArcSwap<Config>>,
    clock: SharedClock,
    log: Logger,
}

impl TicketActor {
    /// Creates the actor, loading saved keys when the configuration asks for it.
    pub fn new(config: Arc<ArcSwap<Config>>, clock: SharedClock, log: Logger) -> Self {
        let cfg = config.load();
        let file = if cfg.persistent_state {
            cfg.ticket_key_file.clone()
        } else {
            None
        };
        let mut keys = TicketKeys::new();
        if let Some(path) = &file {
            match TicketKeys::load(path) {
                Ok(Some(mut loaded)) => {
                    loaded.prune(clock.now(), cfg.ticket_timeout());
                    keys = loaded;
                    info!(log, "loaded session ticket keys from {}", path.display());
                }
                Ok(None) => {}
                Err(e) => warn!(
                    log,
                    "cannot read session ticket keys from {}: {}",
                    path.display(),
                    e
                ),
            }
        }
        TicketActor {
            keys,
            pool: Pool::from_os(),
            file,
            config,
            clock,
            log,
        }
    }
}

impl Actor for TicketActor {
    type Context = Context<Self>;
}

/// Get the current encryption key (`None`) or a decryption key by name.
#[derive(Message)]
#[rtype(result = "Result<TicketKey, KeyMiss>")]
pub struct GetKey(pub Option<[u8; 16]>);

impl Handler<GetKey> for TicketActor {
    type Result = Result<TicketKey, KeyMiss>;
    fn handle(&mut self, msg: GetKey, _ctx: &mut Context<Self>) -> Self::Result {
        let timeout = self.config.load().ticket_timeout();
        let now = self.clock.now();
        match msg.0 {
            Some(name) => self.keys.decrypt_at(&name, now, timeout),
            None => {
                self.pool.mix_time_of_day();
                let pool = &mut self.pool;
                let (key, created) = self.keys.encrypt_at(now, timeout, &mut |b| pool.fill(b))?;
                if created {
                    if let Some(path) = &self.file {
                        if let Err(e) = self.keys.save(path) {
                            warn!(
                                self.log,
                                "cannot save session ticket keys to {}: {}",
                                path.display(),
                                e
                            );
                        }
                    }
                }
                Ok(key)
            }
        }
    }
}
