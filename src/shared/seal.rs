//! What goes to the shared store, as pure functions: key names, sealed
//! values and the portable ticket-key record.
//!
//! - Names: `tlsmgr:<site>:sc:<type>:<hex HMAC-SHA256(id key, cache id)>`
//!   for sessions, `tlsmgr:<site>:tkt:e:<E>:<epoch>` for the key of an
//!   epoch, `tlsmgr:<site>:tkt:n:<hex key name>` for a key by its RFC 5077
//!   name. Peer names and addresses (in cache ids) never reach Redis.
//! - Values: `version (1) | nonce (24) | XChaCha20-Poly1305 ciphertext+tag`,
//!   with associated data = format label, version and the *full* Redis key
//!   name: a value copied to another key (another site, type, id or epoch)
//!   does not open. Anything that does not open is `None`, never a panic.
//! - Session plaintext: `'S' | stored_at (u64 BE) | session bytes`: the hit keeps
//!   the age it had, so the local copy expires when the shared one does.
//! - Ticket-key plaintext: `'K' | name (16) | cipher key (32) | HMAC key (32) |
//!   tout (i64 BE)`: portable between hosts whatever their `time_t`; the
//!   native struct exists only on the wire to Postfix.

use crate::config::secret::Secret;
use crate::protocol::CacheType;
use crate::tickets::TicketKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Format version of sealed values (in the value and its associated data).
pub const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to its plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Length of a ticket-key record's plaintext.
pub const KEY_RECORD_LEN: usize = 1 + 16 + 32 + 32 + 8;
/// First byte of a session record.
const SESSION_TAG: u8 = b'S';
/// First byte of a ticket-key record.
const KEY_TAG: u8 = b'K';

/// The key prefix of a site: every name this site uses starts with it and
/// a colon (what a Redis ACL `~tlsmgr:<site>:*` allows).
pub fn prefix(site: &str) -> String {
    format!("tlsmgr:{site}")
}

/// The Redis key of a session.
pub fn session_name(secret: &Secret, prefix: &str, ct: CacheType, cache_id: &[u8]) -> String {
    // new_from_slice fails only for key sizes HMAC cannot take; any size works.
    let tag = match <Hmac<Sha256> as Mac>::new_from_slice(&secret.id_key) {
        Ok(mut mac) => {
            mac.update(ct.to_string().as_bytes());
            mac.update(&[0]);
            mac.update(cache_id);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("{prefix}:sc:{ct}:{tag}")
}

/// The Redis key of the ticket key of `epoch` (of length `epoch_len` s).
pub fn epoch_name(prefix: &str, epoch_len: u64, epoch: u64) -> String {
    format!("{prefix}:tkt:e:{epoch_len}:{epoch}")
}

/// The Redis key of a ticket key by its RFC 5077 name.
pub fn key_name(prefix: &str, name: &[u8; 16]) -> String {
    format!("{prefix}:tkt:n:{}", hex::encode(name))
}

fn aad(name: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(16 + name.len());
    ad.extend_from_slice(b"tlsmgr-shared\0");
    ad.push(FORMAT_VERSION);
    ad.extend_from_slice(name.as_bytes());
    ad
}

/// Seals `plain` for the Redis key `name`; `nonce` must be random (24 bytes).
pub fn seal(secret: &Secret, name: &str, plain: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new((&secret.seal_key).into());
    let ad = aad(name);
    // Encryption fails only for plaintexts beyond 256 GiB.
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &ad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens a value read from the Redis key `name`: `None` unless it was
/// sealed by this secret for exactly this name and format.
pub fn open(secret: &Secret, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD || sealed[0] != FORMAT_VERSION {
        return None;
    }
    let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new((&secret.seal_key).into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: &aad(name),
            },
        )
        .ok()
}

/// A random nonce from the OS.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    use rand_core::{OsRng, TryRngCore};
    let mut n = [0u8; NONCE_LEN];
    if OsRng.try_fill_bytes(&mut n).is_err() {
        // No OS randomness: a nonce from the clock and a counter still never
        // repeats within this process, and the key is per site.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        n[..16].copy_from_slice(&t.to_le_bytes());
        n[16..].copy_from_slice(&c.to_le_bytes());
    }
    n
}

/// A session's plaintext record.
pub fn session_record(stored_at: u64, session: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + session.len());
    v.push(SESSION_TAG);
    v.extend_from_slice(&stored_at.to_be_bytes());
    v.extend_from_slice(session);
    v
}

/// Parses a session record: `(stored_at, session)`.
pub fn parse_session_record(plain: &[u8]) -> Option<(u64, &[u8])> {
    let (&tag, rest) = plain.split_first()?;
    if tag != SESSION_TAG || rest.len() < 8 {
        return None;
    }
    let (t, s) = rest.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(t);
    Some((u64::from_be_bytes(b), s))
}

/// A ticket key's portable plaintext record.
pub fn key_record(key: &TicketKey) -> [u8; KEY_RECORD_LEN] {
    let mut out = [0u8; KEY_RECORD_LEN];
    out[0] = KEY_TAG;
    out[1..17].copy_from_slice(&key.name);
    out[17..49].copy_from_slice(&key.bits);
    out[49..81].copy_from_slice(&key.hmac);
    out[81..].copy_from_slice(&key.tout_secs().to_be_bytes());
    out
}

/// Parses a ticket-key record; `None` unless exactly [`KEY_RECORD_LEN`]
/// bytes with a `tout` this host's `time_t` can hold.
pub fn parse_key_record(plain: &[u8]) -> Option<TicketKey> {
    if plain.len() != KEY_RECORD_LEN || plain[0] != KEY_TAG {
        return None;
    }
    let plain = &plain[1..];
    let mut key = TicketKey {
        name: [0; 16],
        bits: [0; 32],
        hmac: [0; 32],
        tout: 0,
    };
    key.name.copy_from_slice(&plain[..16]);
    key.bits.copy_from_slice(&plain[16..48]);
    key.hmac.copy_from_slice(&plain[48..80]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&plain[80..]);
    key.tout = libc::time_t::try_from(i64::from_be_bytes(t)).ok()?;
    Some(key)
}

/// Seals a ticket key for the Redis key `name`.
pub fn seal_key(secret: &Secret, name: &str, key: &TicketKey) -> Vec<u8> {
    seal(secret, name, &key_record(key), random_nonce())
}

/// Opens a ticket key read from the Redis key `name`.
pub fn open_key(secret: &Secret, name: &str, sealed: &[u8]) -> Option<TicketKey> {
    parse_key_record(&open(secret, name, sealed)?)
}

/// Seals a session for the Redis key `name`.
pub fn seal_session(secret: &Secret, name: &str, stored_at: u64, session: &[u8]) -> Vec<u8> {
    seal(
        secret,
        name,
        &session_record(stored_at, session),
        random_nonce(),
    )
}

/// Opens a session read from the Redis key `name`: `(stored_at, session)`.
pub fn open_session(secret: &Secret, name: &str, sealed: &[u8]) -> Option<(u64, Vec<u8>)> {
    let plain = open(secret, name, sealed)?;
    let (t, s) = parse_session_record(&plain)?;
    Some((t, s.to_vec()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn secret(b: u8) -> Secret {
        Secret::from_bytes(PathBuf::from("/s"), &[b; 32])
    }

    fn key() -> TicketKey {
        TicketKey {
            name: [0x11; 16],
            bits: [0x22; 32],
            hmac: [0x33; 32],
            tout: 1_700_001_799,
        }
    }

    #[test]
    fn names_hide_ids_and_separate_types_and_sites() {
        let s = secret(1);
        let p = prefix("mx");
        let n = session_name(&s, &p, CacheType::Smtpd, b"mail.example.com&25");
        assert!(n.starts_with("tlsmgr:mx:sc:smtpd:"), "{n}");
        assert_eq!(n.len(), "tlsmgr:mx:sc:smtpd:".len() + 64);
        assert!(!n.contains("example"));
        assert_ne!(
            n,
            session_name(&s, &p, CacheType::Smtp, b"mail.example.com&25")
        );
        assert_ne!(
            n,
            session_name(&secret(2), &p, CacheType::Smtpd, b"mail.example.com&25")
        );
        assert_eq!(
            n,
            session_name(&s, &p, CacheType::Smtpd, b"mail.example.com&25")
        );
        assert_eq!(epoch_name(&p, 1800, 944_444), "tlsmgr:mx:tkt:e:1800:944444");
        assert_eq!(
            key_name(&p, &[0xab; 16]),
            format!("tlsmgr:mx:tkt:n:{}", "ab".repeat(16))
        );
    }

    #[test]
    fn sessions_round_trip_and_do_not_move() {
        let s = secret(1);
        let name = "tlsmgr:mx:sc:smtpd:00";
        let sealed = seal_session(&s, name, 1234, b"DER session bytes");
        assert!(!sealed.windows(7).any(|w| w == b"session"), "no plaintext");
        assert_eq!(
            open_session(&s, name, &sealed),
            Some((1234, b"DER session bytes".to_vec()))
        );
        // Another name (site, type, id), another secret: nothing.
        assert_eq!(open_session(&s, "tlsmgr:other:sc:smtpd:00", &sealed), None);
        assert_eq!(open_session(&s, "tlsmgr:mx:sc:smtp:00", &sealed), None);
        assert_eq!(open_session(&secret(2), name, &sealed), None);
        // Two seals of the same value differ (random nonce).
        assert_ne!(sealed, seal_session(&s, name, 1234, b"DER session bytes"));
    }

    #[test]
    fn planted_and_corrupted_values_are_none() {
        let s = secret(1);
        let name = "tlsmgr:mx:tkt:e:1800:5";
        let sealed = seal_key(&s, name, &key());
        assert_eq!(open_key(&s, name, &sealed), Some(key()));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(open_key(&s, name, &bad), None, "byte {i}");
        }
        for len in 0..sealed.len() {
            assert_eq!(open_key(&s, name, &sealed[..len]), None);
        }
        assert_eq!(open_key(&s, name, b""), None);
        assert_eq!(open_key(&s, name, &[0u8; 200]), None);
        assert_eq!(open_key(&s, name, &key().to_bytes()), None, "a clear key");
        // The epoch is in the name: a key moved to another epoch is refused.
        assert_eq!(open_key(&s, "tlsmgr:mx:tkt:e:1800:6", &sealed), None);
        // A session record sealed under the name is not a key.
        let planted = seal_session(&s, name, 1, &[0; 80]);
        assert_eq!(planted.len(), SEAL_OVERHEAD + KEY_RECORD_LEN);
        assert_eq!(open_key(&s, name, &planted), None);
        assert_eq!(parse_session_record(b"short"), None);
    }

    #[test]
    fn key_record_is_portable_big_endian() {
        let r = key_record(&key());
        assert_eq!(&r[81..], &1_700_001_799i64.to_be_bytes());
        assert_eq!(r[0], b'K');
        assert_eq!(parse_key_record(&r), Some(key()));
        assert_eq!(parse_key_record(&r[1..]), None);
    }
}
