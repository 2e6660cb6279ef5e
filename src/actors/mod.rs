//! The control plane: actix actors that decide *when* things happen. What
//! happens is the domain modules' (`crate::cache`, [`crate::tickets`],
//! [`crate::prng`]), which the data path calls directly; no request waits
//! on a mailbox.
//!
//! - [`cache`]: one [`cache::CacheActor`] per enabled cache, each on its own
//!   arbiter thread (store I/O blocks): open, reopen after a failure, sync,
//!   expiry sweeps, close.
//! - [`ticket`]: rotates the session-ticket keys and saves them.
//! - [`prng`]: reseeds the central seed pool (entropy source, exchange file).
//! - [`watcher`]: watches main.cf and reloads the configuration live.

pub mod cache;
pub mod prng;
pub mod ticket;
pub mod watcher;

use crate::cache::Cache;
use crate::config::Config;
use crate::protocol::CacheType;
use actix::{Addr, Message};
use std::sync::Arc;

/// A new configuration snapshot is in force (sent after a live reload to
/// actors that keep settings of their own: PRNG, ticket keys).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct ConfigChanged(pub Arc<Config>);

/// A running cache: the shared cache and its actor. The timeout it runs
/// with (what `policy` answers) is the cache's own (`Cache::limits`).
#[derive(Clone)]
pub struct RunningCache {
    /// The cache the data path calls.
    pub cache: Arc<Cache>,
    /// Its actor.
    pub addr: Addr<cache::CacheActor>,
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
