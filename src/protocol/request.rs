//! Typed requests (spec §1.5). TO BE IMPLEMENTED (helper).
use bytes::Bytes;

/// Which request a list was (or claimed to be); decides the shape of a FAIL reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `seed`
    Seed,
    /// `policy`
    Policy,
    /// `lookup`
    Lookup,
    /// `update`
    Update,
    /// `delete`
    Delete,
    /// `tktkey`
    TktKey,
}

impl RequestKind {
    /// The wire name of the request.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Seed => "seed",
            RequestKind::Policy => "policy",
            RequestKind::Lookup => "lookup",
            RequestKind::Update => "update",
            RequestKind::Delete => "delete",
            RequestKind::TktKey => "tktkey",
        }
    }
}

/// A well-formed request: every attribute present, in order, of the right type.
/// Values are as received; their meaning (known cache type, seed size range,
/// key-name length) is checked by the server, which logs Postfix's warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `request=seed size=N`; `size` is the C int (so `4294967295` is -1).
    Seed {
        /// Requested number of bytes.
        size: i32,
    },
    /// `request=policy cache_type=T`
    Policy {
        /// Raw cache type name.
        cache_type: Bytes,
    },
    /// `request=lookup cache_type=T cache_id=ID`
    Lookup {
        /// Raw cache type name.
        cache_type: Bytes,
        /// Opaque cache id (any NUL-free bytes).
        cache_id: Bytes,
    },
    /// `request=update cache_type=T cache_id=ID session=DATA`
    Update {
        /// Raw cache type name.
        cache_type: Bytes,
        /// Opaque cache id.
        cache_id: Bytes,
        /// Decoded session bytes.
        session: Bytes,
    },
    /// `request=delete cache_type=T cache_id=ID`
    Delete {
        /// Raw cache type name.
        cache_type: Bytes,
        /// Opaque cache id.
        cache_id: Bytes,
    },
    /// `request=tktkey keyname=DATA` (empty = the current encryption key)
    TktKey {
        /// Decoded key name (0 or 16 bytes when valid).
        keyname: Bytes,
    },
}

/// A complete attribute list that is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// The first attribute was not `request` (or the list was empty): the
    /// reply is `status=FAIL` alone.
    NoRequestName {
        /// Postfix-style warning text, e.g.
        /// `unexpected attribute cache_type from tlsmgr socket (expecting: request)`.
        warning: String,
    },
    /// A request name we do not know: `status=FAIL` alone (stock sends
    /// nothing; we answer so the client never waits).
    UnknownRequest {
        /// The name as received (lossy UTF-8).
        name: String,
    },
    /// A known request whose attributes are missing, extra, out of order or
    /// not of their type: FAIL in that request's reply shape.
    BadAttributes {
        /// Which request.
        kind: RequestKind,
        /// Postfix-style warning text.
        warning: String,
    },
}

/// One unit read from a server-side connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// master(8)'s wakeup trigger `W\0`: close the connection, no reply.
    Wakeup,
    /// A valid request.
    Request(Request),
    /// A complete list that is not a valid request: answer FAIL.
    Malformed(Malformed),
}
