//! tlsmgr: a wire-compatible, drop-in replacement for Postfix's `tlsmgr(8)`.
//!
//! Map of the crate (each module says what lives there):
//! - [`protocol`]: the NUL-terminated attribute protocol, sans I/O: framing,
//!   typed requests and replies, the tokio codecs.
//! - [`config`]: main.cf reading and the typed, immutable [`config::Config`].
//! - [`store`]: the session-cache storage trait and its backends (fjall, memory).
//! - [`formats`]: the on-disk formats we own, named and versioned.
//! - `cache`: a session cache's rules (staleness, bound, id limit), called
//!   by the data path.
//! - [`tickets`]: RFC 5077 session-ticket keys: the 88-byte wire struct, the
//!   previous/current/next ring and its file.
//! - [`prng`]: the seed pool behind the `seed` request (per-thread
//!   generators), entropy sources, the exchange file and their schedule.
//! - [`actors`]: the control plane: actix actors that decide when caches
//!   open, sync and expire, keys rotate, the pool reseeds, main.cf reloads.
//! - `metrics`: the counters (sharded atomics on the data path), their
//!   JSON and Prometheus renderings.
//! - [`daemon`]: wiring, the listening socket, the per-connection request
//!   loop and request semantics, live reload.
//! - [`admin`]: the admin socket's protocol, client side (`tlsmgr stats`,
//!   `keys`, `cache`).
//! - [`client`]: the client side of the protocol (`tlsmgr client`, tests, benches).
//! - [`clock`]: injected time, so expiry and rotation are tested by stepping a clock.
//! - [`logging`]: slog drains that format lines the way Postfix does.
//! - [`master`]: running as a child of Postfix's master(8).
//! - [`serve`]: running as `tlsmgr serve`, the standalone daemon.
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(rust_2018_idioms, unused_must_use)]
#![warn(missing_docs, clippy::unwrap_used, clippy::expect_used)]

// Public: what the binary (src/main.rs), the integration tests, the
// benches and the fuzz targets use; everything else stays private, so
// that the compiler reports what nothing uses.
pub mod actors;
pub mod admin;
mod cache;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
mod error;
pub mod formats;
pub mod logging;
pub mod master;
mod metrics;
pub mod prng;
pub mod protocol;
pub mod serve;
pub mod shared;
pub mod store;
pub mod tickets;

pub use error::Error;
