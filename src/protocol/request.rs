//! Typed requests (spec §1.5): decoding a complete attribute list into an
//! [`Incoming`] with Postfix's strict rules (exact order, no missing and no
//! extra attributes, typed values), and encoding for the client side.
use super::attr::{self, AttrList};
use bytes::{Bytes, BytesMut};

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

/// The type of a request attribute.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Data,
}

impl RequestKind {
    /// The request for a wire name.
    pub fn from_wire(name: &[u8]) -> Option<Self> {
        Some(match name {
            b"seed" => RequestKind::Seed,
            b"policy" => RequestKind::Policy,
            b"lookup" => RequestKind::Lookup,
            b"update" => RequestKind::Update,
            b"delete" => RequestKind::Delete,
            b"tktkey" => RequestKind::TktKey,
            _ => return None,
        })
    }

    /// The attributes after `request`, in order, with their types.
    fn schema(self) -> &'static [(&'static str, Kind)] {
        const CT: (&str, Kind) = ("cache_type", Kind::Str);
        const ID: (&str, Kind) = ("cache_id", Kind::Str);
        match self {
            RequestKind::Seed => &[("size", Kind::Int)],
            RequestKind::Policy => &[CT],
            RequestKind::Lookup | RequestKind::Delete => &[CT, ID],
            RequestKind::Update => &[CT, ID, ("session", Kind::Data)],
            RequestKind::TktKey => &[("keyname", Kind::Data)],
        }
    }
}

/// A typed attribute value (`None`: not in this request's schema).
#[derive(Default)]
enum Value {
    #[default]
    None,
    Str(Bytes),
    Int(i32),
    Data(Bytes),
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn truncated(b: &[u8]) -> String {
    let s = lossy(b);
    match s.char_indices().nth(100) {
        Some((i, _)) => s[..i].to_string(),
        None => s,
    }
}

/// Decodes a complete list (the `W\0` wakeup is recognized by the codec):
/// a framed one straight from the read buffer ([`attr::Frame`]) or decoded
/// pairs.
pub fn decode<L: AttrList + ?Sized>(list: &L) -> Incoming {
    if list.count() == 0 {
        return Incoming::Malformed(Malformed::NoRequestName {
            warning: "missing attribute request in input from tlsmgr socket".into(),
        });
    }
    if list.name(0) != b"request" {
        return Incoming::Malformed(Malformed::NoRequestName {
            warning: format!(
                "unexpected attribute {} from tlsmgr socket (expecting: request)",
                lossy(list.name(0))
            ),
        });
    }
    let Some(kind) = RequestKind::from_wire(list.value(0)) else {
        return Incoming::Malformed(Malformed::UnknownRequest {
            name: lossy(list.value(0)),
        });
    };
    let bad = |warning: String| Incoming::Malformed(Malformed::BadAttributes { kind, warning });
    let schema = kind.schema();
    // At most three attributes follow `request` (update's).
    let mut values: [Value; 3] = Default::default();
    for (i, (want, ty)) in schema.iter().enumerate() {
        let at = i + 1;
        if at >= list.count() {
            return bad(format!(
                "missing attribute {want} in input from tlsmgr socket"
            ));
        }
        if list.name(at) != want.as_bytes() {
            return bad(format!(
                "unexpected attribute {} from tlsmgr socket (expecting: {want})",
                lossy(list.name(at))
            ));
        }
        let value = list.value(at);
        values[i] = match ty {
            Kind::Str => Value::Str(list.value_bytes(at)),
            Kind::Int => match attr::int_value(value) {
                Some(v) => Value::Int(v),
                None => {
                    return bad(format!(
                        "malformed numerical data from tlsmgr socket while reading input attribute value: {}",
                        truncated(value)
                    ))
                }
            },
            Kind::Data => match attr::data_value(value) {
                Some(v) => Value::Data(v),
                None => {
                    return bad(format!(
                        "malformed base64 data from tlsmgr socket while reading input attribute {want}: {}",
                        truncated(value)
                    ))
                }
            },
        };
    }
    if list.count() > schema.len() + 1 {
        return bad(format!(
            "unexpected attribute {} from tlsmgr socket (expecting: (list terminator))",
            lossy(list.name(schema.len() + 1))
        ));
    }
    use Value::{Data, Int, Str};
    let req = match (kind, values) {
        (RequestKind::Seed, [Int(size), ..]) => Request::Seed { size },
        (RequestKind::Policy, [Str(cache_type), ..]) => Request::Policy { cache_type },
        (RequestKind::Lookup, [Str(cache_type), Str(cache_id), _]) => Request::Lookup {
            cache_type,
            cache_id,
        },
        (RequestKind::Update, [Str(cache_type), Str(cache_id), Data(session)]) => Request::Update {
            cache_type,
            cache_id,
            session,
        },
        (RequestKind::Delete, [Str(cache_type), Str(cache_id), _]) => Request::Delete {
            cache_type,
            cache_id,
        },
        (RequestKind::TktKey, [Data(keyname), ..]) => Request::TktKey { keyname },
        // Unreachable: the values were read by the same schema.
        _ => return bad("internal error: request schema mismatch".into()),
    };
    Incoming::Request(req)
}

impl Request {
    /// Which request this is.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Seed { .. } => RequestKind::Seed,
            Request::Policy { .. } => RequestKind::Policy,
            Request::Lookup { .. } => RequestKind::Lookup,
            Request::Update { .. } => RequestKind::Update,
            Request::Delete { .. } => RequestKind::Delete,
            Request::TktKey { .. } => RequestKind::TktKey,
        }
    }

    /// Appends the request's bytes, exactly as a Postfix client sends them.
    pub fn encode(&self, buf: &mut BytesMut) {
        attr::put_str(buf, "request", self.kind().as_str().as_bytes());
        match self {
            Request::Seed { size } => attr::put_int(buf, "size", *size),
            Request::Policy { cache_type } => attr::put_str(buf, "cache_type", cache_type),
            Request::Lookup {
                cache_type,
                cache_id,
            }
            | Request::Delete {
                cache_type,
                cache_id,
            } => {
                attr::put_str(buf, "cache_type", cache_type);
                attr::put_str(buf, "cache_id", cache_id);
            }
            Request::Update {
                cache_type,
                cache_id,
                session,
            } => {
                attr::put_str(buf, "cache_type", cache_type);
                attr::put_str(buf, "cache_id", cache_id);
                attr::put_data(buf, "session", session);
            }
            Request::TktKey { keyname } => attr::put_data(buf, "keyname", keyname),
        }
        attr::end_list(buf);
    }
}
