//! Keys and records (see "Layout" in the parent module): the tagged
//! session key, the age-index key, and the record of a session with its
//! timestamp.

use super::super::{Entry, StoreError};

/// The prefix of every `sessions` key (see the module documentation).
pub(super) const SESSION_KEY_TAG: u8 = b's';

/// Bytes of the big-endian timestamp at the start of a record and an index key.
pub(super) const TS_LEN: usize = 8;

/// fjall's key size limit; an index key adds the timestamp to the id.
pub(super) const MAX_KEY_LEN: usize = u16::MAX as usize;

/// fjall's value size limit is `u32::MAX` bytes; the record adds the timestamp.
pub(super) const MAX_SESSION_LEN: usize = u32::MAX as usize - TS_LEN;

/// What an age-index key points at.
pub(super) enum IndexTarget {
    /// A record whose entry is indexed by this key (or a malformed record):
    /// removing it removes an entry.
    Entry(Vec<u8>),
    /// Nothing, or a record indexed elsewhere: only the index key goes.
    Dangling,
}

pub(super) fn session_key(id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(SESSION_KEY_TAG);
    k.extend_from_slice(id);
    k
}

pub(super) fn age_key(stored_at: u64, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(TS_LEN + id.len());
    k.extend_from_slice(&stored_at.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// The record of `entry`: 8-byte big-endian `stored_at` ++ session.
pub fn encode_record(entry: &Entry) -> Vec<u8> {
    let mut v = Vec::with_capacity(TS_LEN + entry.session.len());
    v.extend_from_slice(&entry.stored_at.to_be_bytes());
    v.extend_from_slice(&entry.session);
    v
}

/// The leading big-endian timestamp of a record or index key.
pub(super) fn split_ts(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (ts, rest) = bytes.split_first_chunk::<TS_LEN>()?;
    Some((u64::from_be_bytes(*ts), rest))
}

/// [`encode_record`] built straight into the value fjall keeps: one
/// allocation and one copy of the session, where a `Vec` handed to fjall
/// is copied again into its own buffer.
pub(super) fn record_value(entry: &Entry) -> fjall::Slice {
    use std::io::Read;
    let ts = entry.stored_at.to_be_bytes();
    let mut parts = ts.as_slice().chain(&entry.session[..]);
    let len = TS_LEN + entry.session.len();
    // Reading two in-memory slices of exactly `len` bytes cannot fail;
    // were it to, the copy through a Vec is the same record.
    fjall::Slice::from_reader(&mut parts, len)
        .unwrap_or_else(|_| fjall::Slice::from(encode_record(entry)))
}

/// Reads a stored record back ([`encode_record`]); a record shorter than
/// its timestamp is [`StoreError::Malformed`] (the cache then drops it).
/// Public for the `store_value` fuzz target.
pub fn decode_record(bytes: &[u8]) -> Result<Entry, StoreError> {
    let (stored_at, session) = split_ts(bytes).ok_or_else(|| {
        StoreError::Malformed(format!(
            "record of {} bytes is shorter than its {TS_LEN}-byte timestamp",
            bytes.len()
        ))
    })?;
    Ok(Entry {
        stored_at,
        session: bytes::Bytes::copy_from_slice(session),
    })
}

/// The smallest byte string after `key`: `key` ++ 0.
pub(super) fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.extend_from_slice(key);
    k.push(0);
    k
}

/// True when `id` is too long for fjall's keys (the cache's own, much lower
/// limit normally keeps such ids away).
pub(super) fn id_too_long(id: &[u8]) -> bool {
    TS_LEN + id.len() > MAX_KEY_LEN
}
