//! tokio-util codecs over the pure framing of [`super::attr`].
//!
//! [`ServerCodec`] turns a byte stream into [`Incoming`] units (requests,
//! malformed lists, the master wakeup) and encodes [`Reply`]s. It keeps the
//! scan of the unfinished list between reads ([`attr::Scratch`]), so every
//! byte is searched once: a peer that sends one byte a millisecond costs
//! one byte of work a millisecond, not a rescan of all it sent before.
//!
//! Memory is bounded twice: per connection by [`Limits::max_list`], and
//! across all connections by a process-wide [`Budget`] that every codec
//! charges for the bytes of its unfinished request, so that many slow
//! peers together cannot make us hold more than [`PENDING_LIMIT`] either.

use super::attr::{self, FrameError, Limits};
use super::request::{self, Incoming};
use super::Reply;
use bytes::{Buf, BytesMut};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// The default process-wide budget for unfinished requests: 128 connections
/// each holding a maximal list ([`Limits::max_list`], 256 KiB). Real
/// clients hold a few KiB for microseconds (a whole request arrives in one
/// write), so even thousands of smtpd processes stay far below it; only
/// peers that send slowly on purpose reach it, and they are the ones cut
/// off (each refused peer is closed, and its bytes given back).
pub const PENDING_LIMIT: usize = 32 << 20;

/// A byte budget shared by codecs: what their unfinished requests hold.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes, none used.
    pub const fn new(limit: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            limit,
        }
    }
    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit
    }
    /// Takes `n` bytes if they fit.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }
    /// Gives back `n` bytes taken before.
    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The budget every [`ServerCodec::new`] and [`ServerCodec::default`] codec
/// charges: one per process, so the bound holds across all connections and
/// I/O threads.
pub static PENDING: Budget = Budget::new(PENDING_LIMIT);

/// The server end of a tlsmgr connection.
#[derive(Debug)]
pub struct ServerCodec {
    limits: Limits,
    scratch: attr::Scratch,
    budget: &'static Budget,
    /// Bytes this codec has charged to `budget` (given back on drop).
    charged: usize,
}

impl Default for ServerCodec {
    fn default() -> Self {
        ServerCodec::new(Limits::default())
    }
}

impl ServerCodec {
    /// A codec with the given limits, charging the process-wide [`PENDING`].
    pub fn new(limits: Limits) -> Self {
        ServerCodec::with_budget(limits, &PENDING)
    }

    /// A codec charging its own budget (tests, the fuzz target).
    pub fn with_budget(limits: Limits, budget: &'static Budget) -> Self {
        ServerCodec {
            limits,
            scratch: attr::Scratch::default(),
            budget,
            charged: 0,
        }
    }

    /// Bytes searched for NULs over this codec's life: at most the bytes
    /// it was given, however they were cut into reads.
    pub fn bytes_scanned(&self) -> u64 {
        self.scratch.bytes_scanned()
    }

    /// Bytes of an unfinished request this codec holds against its budget.
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// Charges exactly `n` bytes, the length of the unfinished request now
    /// buffered; fails (charging nothing) when the budget has no room.
    fn charge(&mut self, n: usize) -> Result<(), FrameError> {
        if n > self.charged {
            if !self.budget.take(n - self.charged) {
                self.release();
                return Err(FrameError::BudgetExceeded {
                    limit: self.budget.limit(),
                });
            }
        } else {
            self.budget.give_back(self.charged - n);
        }
        self.charged = n;
        Ok(())
    }

    fn release(&mut self) {
        self.budget.give_back(self.charged);
        self.charged = 0;
    }
}

impl Drop for ServerCodec {
    fn drop(&mut self) {
        self.release();
    }
}

impl Decoder for ServerCodec {
    type Item = Incoming;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, ProtocolError> {
        // master(8)'s wakeup is `W\0` where a list would start. (The scan
        // cannot be past that NUL: this is checked before every scan.)
        if src.starts_with(b"W\0") {
            src.advance(2);
            self.scratch.reset();
            self.release();
            return Ok(Some(Incoming::Wakeup));
        }
        match attr::split_frame(src, &self.limits, &mut self.scratch) {
            Ok(Some(frame)) => {
                let incoming = request::decode(&frame);
                // Complete: what follows it is charged when it is scanned,
                // on the next call.
                self.release();
                Ok(Some(incoming))
            }
            Ok(None) => {
                // All of `src` is the unfinished list (complete ones were
                // split off), at most max_list bytes.
                if let Err(e) = self.charge(src.len()) {
                    self.scratch.reset();
                    return Err(e.into());
                }
                Ok(None)
            }
            Err(e) => {
                self.release();
                Err(e.into())
            }
        }
    }
}

impl Encoder<Reply> for ServerCodec {
    type Error = ProtocolError;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        reply.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A request of about 200 KiB fed one byte per read: every byte is
    /// searched once (rescanning made it 20 G byte searches).
    #[test]
    fn a_byte_at_a_time_scans_each_byte_once() {
        static B: Budget = Budget::new(PENDING_LIMIT);
        let mut wire = b"request\0update\0cache_type\0smtpd\0cache_id\0".to_vec();
        wire.extend(std::iter::repeat_n(b'i', 60_000));
        wire.extend_from_slice(b"\0session\0");
        wire.extend(std::iter::repeat_n(b'Q', 140_000));
        wire.extend_from_slice(b"\0\0");
        let mut codec = ServerCodec::with_budget(Limits::default(), &B);
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, &byte) in wire.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            if let Some(item) = codec.decode(&mut buf).unwrap() {
                assert_eq!(i, wire.len() - 1, "complete too early");
                got = Some(item);
            } else {
                assert_eq!(codec.charged(), i + 1);
                assert_eq!(B.used(), i + 1);
            }
        }
        assert!(got.is_some());
        println!(
            "fed {} bytes one at a time, scanned {}",
            wire.len(),
            codec.bytes_scanned()
        );
        assert!(codec.bytes_scanned() <= wire.len() as u64);
        // Complete: nothing is held any more.
        assert_eq!(codec.charged(), 0);
        assert_eq!(B.used(), 0);
    }

    #[test]
    fn the_whole_list_is_capped() {
        static B: Budget = Budget::new(PENDING_LIMIT);
        let mut codec = ServerCodec::with_budget(Limits::default(), &B);
        // Values under max_value each, 256 KiB in all: refused at the cap,
        // before the terminator.
        let mut buf = BytesMut::new();
        let mut err = None;
        for i in 0..3 {
            buf.extend_from_slice(format!("a{i}\0").as_bytes());
            buf.extend(std::iter::repeat_n(b'v', 100_000));
            buf.extend_from_slice(b"\0");
            match codec.decode(&mut buf) {
                Ok(None) => assert!(buf.len() <= 256 << 10),
                Ok(Some(_)) => panic!("complete?"),
                Err(e) => {
                    err = Some(e.to_string());
                    break;
                }
            }
        }
        assert_eq!(
            err.as_deref(),
            Some("attribute list longer than 262144 bytes")
        );
        assert_eq!(B.used(), 0);
        // Exactly max_list bytes is still a list.
        let limits = Limits {
            max_list: 12,
            ..Limits::default()
        };
        let mut codec = ServerCodec::with_budget(limits, &B);
        let mut buf = BytesMut::from(&b"request\0ab\0\0"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_some());
        let mut buf = BytesMut::from(&b"request\0abc\0"[..]);
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn the_budget_is_shared_and_given_back() {
        static B: Budget = Budget::new(100);
        let mut a = ServerCodec::with_budget(Limits::default(), &B);
        let mut b = ServerCodec::with_budget(Limits::default(), &B);
        let mut abuf = BytesMut::from(&[b'x'; 60][..]);
        assert!(a.decode(&mut abuf).unwrap().is_none());
        assert_eq!(B.used(), 60);
        let mut bbuf = BytesMut::from(&[b'y'; 30][..]);
        assert!(b.decode(&mut bbuf).unwrap().is_none());
        assert_eq!(B.used(), 90);
        // b growing past the budget is refused, and gives back its 30.
        bbuf.extend_from_slice(&[b'y'; 20]);
        let err = b.decode(&mut bbuf).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unfinished requests of all connections would hold more than 100 bytes"
        );
        assert_eq!(B.used(), 60);
        // a completes its list (a name of 60 + NUL, empty value, end): the
        // name is too long for max_name, so use a fresh codec for that.
        drop(a);
        assert_eq!(B.used(), 0);
        let mut c = ServerCodec::with_budget(Limits::default(), &B);
        let mut cbuf = BytesMut::from(&b"request\0seed\0size\x0032\0"[..]);
        assert!(c.decode(&mut cbuf).unwrap().is_none());
        assert_eq!(B.used(), cbuf.len());
        cbuf.extend_from_slice(b"\0request\0se");
        assert!(c.decode(&mut cbuf).unwrap().is_some());
        // The rest is charged when it is scanned.
        assert_eq!(B.used(), 0);
        assert!(c.decode(&mut cbuf).unwrap().is_none());
        assert_eq!(B.used(), 10);
        assert!(c
            .decode(&mut BytesMut::from(&b"W\0"[..]))
            .unwrap()
            .is_some());
        assert_eq!(B.used(), 0);
    }
}
