//! Typed replies (spec §1.5): the server encodes them in exactly Postfix's
//! attribute order; the client side decodes them, knowing which request it
//! sent.

use super::attr::{self, Attr};
use super::{RequestKind, Status};
use bytes::{Bytes, BytesMut};

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

impl Reply {
    /// The reply's status.
    pub fn status(&self) -> Status {
        match self {
            Reply::Status(s)
            | Reply::Seed { status: s, .. }
            | Reply::Policy { status: s, .. }
            | Reply::Lookup { status: s, .. }
            | Reply::TktKey { status: s, .. } => *s,
        }
    }

    /// FAIL in the reply shape of `kind`, for a request whose attributes
    /// could not be read.
    pub fn fail_for(kind: RequestKind) -> Reply {
        let status = Status::Fail;
        match kind {
            RequestKind::Seed => Reply::Seed {
                status,
                seed: Bytes::new(),
            },
            RequestKind::Policy => Reply::Policy {
                status,
                cachable: false,
                timeout: 0,
            },
            RequestKind::Lookup => Reply::Lookup {
                status,
                session: Bytes::new(),
            },
            RequestKind::Update | RequestKind::Delete => Reply::Status(status),
            RequestKind::TktKey => Reply::TktKey {
                status,
                keybuf: Bytes::new(),
            },
        }
    }

    /// `status` FAIL alone: no request name could be read, or it is unknown.
    pub fn fail_status() -> Reply {
        Reply::Status(Status::Fail)
    }

    /// Appends the reply's bytes.
    pub fn encode(&self, buf: &mut BytesMut) {
        attr::put_int(buf, "status", self.status().code());
        match self {
            Reply::Status(_) => {}
            Reply::Seed { seed, .. } => attr::put_data(buf, "seed", seed),
            Reply::Policy {
                cachable, timeout, ..
            } => {
                attr::put_int(buf, "cachable", i32::from(*cachable));
                attr::put_int(buf, "timeout", *timeout as i32);
            }
            Reply::Lookup { session, .. } => attr::put_data(buf, "session", session),
            Reply::TktKey { keybuf, .. } => attr::put_data(buf, "keybuf", keybuf),
        }
        attr::end_list(buf);
    }

    /// Decodes the reply to a `kind` request (client side). Every attribute
    /// of the shape must be present, in order; the status must be one of
    /// the three codes.
    pub fn decode(kind: RequestKind, list: &[Attr]) -> Result<Reply, ReplyError> {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut it = list.iter();
        let mut next = |want: &'static str| -> Result<&Bytes, ReplyError> {
            match it.next() {
                Some((name, value)) if name.as_ref() == want.as_bytes() => Ok(value),
                Some((name, _)) => Err(ReplyError::Unexpected {
                    found: lossy(name),
                    want,
                }),
                None => Err(ReplyError::Missing(want)),
            }
        };
        let int = |v: &Bytes| attr::int_value(v).ok_or_else(|| ReplyError::BadNumber(lossy(v)));
        let data = |v: &Bytes| attr::data_value(v).ok_or_else(|| ReplyError::BadBase64(lossy(v)));
        let code = int(next("status")?)?;
        let status = Status::from_code(code).ok_or(ReplyError::UnknownStatus(code))?;
        Ok(match kind {
            RequestKind::Update | RequestKind::Delete => Reply::Status(status),
            RequestKind::Seed => Reply::Seed {
                status,
                seed: data(next("seed")?)?,
            },
            RequestKind::Lookup => Reply::Lookup {
                status,
                session: data(next("session")?)?,
            },
            RequestKind::TktKey => Reply::TktKey {
                status,
                keybuf: data(next("keybuf")?)?,
            },
            RequestKind::Policy => {
                let cachable = int(next("cachable")?)? != 0;
                let timeout = int(next("timeout")?)? as u32;
                Reply::Policy {
                    status,
                    cachable,
                    timeout,
                }
            }
        })
    }
}

/// Why a server's reply could not be decoded (client side), in the words
/// of Postfix's attribute reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Another attribute came where `want` was expected.
    #[error("unexpected attribute {found} (expecting: {want})")]
    Unexpected {
        /// The name received.
        found: String,
        /// The name expected.
        want: &'static str,
    },
    /// The list ended before `0`.
    #[error("missing attribute {0}")]
    Missing(&'static str),
    /// A numeric attribute that is not a number.
    #[error("malformed numerical data: {0}")]
    BadNumber(String),
    /// A data attribute that is not base64.
    #[error("malformed base64 data: {0}")]
    BadBase64(String),
    /// A status that is none of the three codes.
    #[error("unknown status {0}")]
    UnknownStatus(i32),
}
