//! Sharing ticket keys and session caches between the MX hosts of a site
//! through Redis (`tlsmgr_shared_*`; README, "An MX farm").
//!
//! - [`seal`]: pure functions: Redis key names (HMAC'd cache ids), sealed
//!   values (XChaCha20-Poly1305, associated data = key name and format
//!   version), the portable ticket-key record.
//! - [`breaker`]: the circuit breaker in front of Redis.
//! - [`client`]: the Redis link, owned by one thread; read-through,
//!   write-behind, calls, all bounded.
//! - [`sentinel`]: the lookup of the master of a `redis+sentinel://` store.
//! - [`invalidation`]: admin removals told to the other hosts of the
//!   site (pub/sub), so that their local copies go too.
//! - [`tombstones`]: removals this host made, so that a value written
//!   before one of them and put back in Redis is refused.
//! - [`unknown_names`]: ticket-key names the store did not have, remembered
//!   for a while so that they cost one lookup, not one per handshake.
//!
//! The site secret file and the store URL's syntax are configuration:
//! [`crate::config::secret`], [`crate::config::store_url`].
//!
//! Everything in Redis is encrypted and authenticated; what does not open
//! is a miss. When Redis is away each host serves from its own state.

pub mod bounded;
pub mod breaker;
pub mod client;
pub mod invalidation;
pub mod link;
pub mod seal;
pub mod sentinel;
pub mod tombstones;
pub mod unknown_names;

pub use client::{Settings, Shared, SharedError, Write};
