//! The actix actors and how they are wired.
//!
//! - [`cache`]: one [`cache::CacheActor`] per enabled cache, each on its own
//!   arbiter thread (store I/O blocks), supervised.
//! - [`ticket`]: the session-ticket keys.
//! - [`prng`]: the seed pool and what feeds it (entropy source, exchange
//!   file), off the actor where I/O blocks.
//! - [`expiry`]: periodic, stepwise removal of stale cache entries.
//! - [`watcher`]: watches main.cf and reloads the configuration live.
//!
//! Connections are tokio tasks on the main arbiter (see [`crate::server`]);
//! they reach the actors through [`CacheSet`] and the addresses in
//! [`crate::server::Services`].

pub mod cache;
pub mod expiry;
pub mod prng;
pub mod ticket;
pub mod watcher;

use crate::config::Config;
use crate::protocol::CacheType;
use actix::{Addr, Message};
use std::sync::Arc;

/// A new configuration snapshot is in force (sent after a live reload to
/// actors that keep settings of their own, e.g. the PRNG actor).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct ConfigChanged(pub Arc<Config>);

/// A running cache: its actor and the timeout it was started with.
#[derive(Clone)]
pub struct RunningCache {
    /// The actor.
    pub addr: Addr<cache::CacheActor>,
    /// Its sanitized timeout.
    pub timeout: u32,
}

/// The running caches, indexed by [`CacheType::index`]; `None` = disabled.
#[derive(Clone, Default)]
pub struct CacheSet(pub [Option<RunningCache>; 3]);

impl CacheSet {
    /// The running cache for `ct`, if enabled.
    pub fn get(&self, ct: CacheType) -> Option<&RunningCache> {
        self.0[ct.index()].as_ref()
    }
}
