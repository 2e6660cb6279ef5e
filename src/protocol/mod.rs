//! Postfix's NUL-terminated attribute protocol as tlsmgr speaks it, with no I/O.
//!
//! - [`attr`]: framing of one attribute list (`name\0value\0 ... \0`) out of a
//!   byte buffer, with hard size limits, and the primitive encoders.
//! - [`request`]: typed requests decoded from a list, strict attribute order.
//! - [`reply`]: typed replies and their byte encoding.
//! - [`codec`]: tokio-util codecs for the server and client ends of a socket.
//!
//! Spec: `postfix-tlsmgr.md` §1. Ints are unsigned decimal on the wire (so -1
//! is `4294967295`); binary data is padded standard base64.

pub mod attr;
pub mod codec;
pub mod reply;
pub mod request;

pub use attr::{FrameError, Limits};
pub use reply::Reply;
pub use request::{Incoming, Malformed, Request, RequestKind};

/// What the server sends on every accepted connection before reading anything:
/// the list `protocol` = `tlsmgr_protocol` (Postfix 3.6+ clients require it).
pub const ANNOUNCEMENT: &[u8] = b"protocol\0tlsmgr_protocol\0\0";

/// The wire status codes (`TLS_MGR_STAT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// `0`: success.
    Ok,
    /// `-1` (`4294967295` on the wire): not found, or the operation failed.
    Err,
    /// `-2` (`4294967294` on the wire): bad request, or the cache is disabled.
    Fail,
}

impl Status {
    /// The C `int` value.
    pub fn code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::Err => -1,
            Status::Fail => -2,
        }
    }
    /// The value as sent on the wire: the int printed as unsigned 32-bit.
    pub fn wire(self) -> u32 {
        self.code() as u32
    }
    /// The status for a C int value, if it is one of the three.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Status::Ok),
            -1 => Some(Status::Err),
            -2 => Some(Status::Fail),
            _ => None,
        }
    }
    /// The Postfix name, for logs and `tlsmgr client` output.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Err => "ERR",
            Status::Fail => "FAIL",
        }
    }
}

/// The three session caches tlsmgr serves (`TLS_MGR_SCACHE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheType {
    /// The smtpd(8) server-side cache (`smtpd_tls_session_cache_*`).
    Smtpd,
    /// The smtp(8) client-side cache (`smtp_tls_session_cache_*`).
    Smtp,
    /// The lmtp client-side cache (`lmtp_tls_session_cache_*`).
    Lmtp,
}

impl CacheType {
    /// All cache types, in the order Postfix opens them.
    pub const ALL: [CacheType; 3] = [CacheType::Smtpd, CacheType::Smtp, CacheType::Lmtp];

    /// The wire name, which is also the parameter-name prefix and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheType::Smtpd => "smtpd",
            CacheType::Smtp => "smtp",
            CacheType::Lmtp => "lmtp",
        }
    }
    /// Parses a wire name: exact, case-sensitive.
    pub fn from_wire(name: &[u8]) -> Option<Self> {
        match name {
            b"smtpd" => Some(CacheType::Smtpd),
            b"smtp" => Some(CacheType::Smtp),
            b"lmtp" => Some(CacheType::Lmtp),
            _ => None,
        }
    }
    /// Index into per-cache arrays (0, 1, 2).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for CacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
