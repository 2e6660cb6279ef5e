//! tokio-util codecs over the pure framing of [`super::attr`].
//!
//! [`ServerCodec`] turns a byte stream into [`Incoming`] units (requests,
//! malformed lists, the master wakeup) and encodes [`Reply`]s. Each read
//! rescans the buffered, incomplete list with memchr; the value cap bounds
//! that work (a maximal 1 MiB value read 8 KiB at a time costs about 64 MiB
//! of memchr in all, a few milliseconds), so no resume state is kept.

use super::attr::{self, FrameError, Limits};
use super::request::{self, Incoming};
use super::Reply;
use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Errors that end a connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A list broke a size limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The server end of a tlsmgr connection.
#[derive(Debug, Default)]
pub struct ServerCodec {
    limits: Limits,
    scratch: attr::Scratch,
}

impl ServerCodec {
    /// A codec with the given limits.
    pub fn new(limits: Limits) -> Self {
        ServerCodec {
            limits,
            scratch: attr::Scratch::default(),
        }
    }
}

impl Decoder for ServerCodec {
    type Item = Incoming;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        // master(8)'s wakeup is `W\0` where a list would start.
        if src.starts_with(b"W\0") {
            src.advance(2);
            return Ok(Some(Incoming::Wakeup));
        }
        Ok(attr::split_list(src, &self.limits, &mut self.scratch)?
            .map(|list| request::decode(&list)))
    }
}

impl Encoder<Reply> for ServerCodec {
    type Error = ProtocolError;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        reply.encode(dst);
        Ok(())
    }
}
