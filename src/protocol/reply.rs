//! Typed replies (spec §1.5). TO BE IMPLEMENTED (helper).
use super::Status;
use bytes::Bytes;

/// A reply, in the attribute order of spec §1.5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `status` alone: update, delete, and requests that could not be parsed.
    Status(Status),
    /// `status`, `seed`
    Seed {
        /// Status.
        status: Status,
        /// Seed bytes (empty unless OK).
        seed: Bytes,
    },
    /// `status`, `cachable` (0/1), `timeout`
    Policy {
        /// Status.
        status: Status,
        /// Whether the cache is enabled.
        cachable: bool,
        /// Sanitized cache timeout in seconds.
        timeout: u32,
    },
    /// `status`, `session`
    Lookup {
        /// Status.
        status: Status,
        /// Session bytes (empty unless OK).
        session: Bytes,
    },
    /// `status`, `keybuf`
    TktKey {
        /// Status.
        status: Status,
        /// The raw ticket-key struct when OK.
        keybuf: Bytes,
    },
}
