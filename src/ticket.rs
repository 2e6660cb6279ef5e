//! RFC 5077 session-ticket keys (spec §2.6): the wire struct and rotation.
//!
//! smtpd asks for the current encryption key with an empty name and for a
//! decryption key by its 16-byte name. We keep at most two keys: the newest
//! (encrypting) and the previous one (still decrypting). With T the sanitized
//! smtpd cache timeout and t = T/2, a key encrypts until `tout = created + t - 1`
//! and decrypts while `tout + t > now`. Rotation is lazy, on demand, exactly as
//! Postfix does it; every function takes `now` so tests step time by hand.
//!
//! Unlike stock Postfix, the pair can be saved to a file (mode 0600) and loaded
//! at start, so tickets issued before a restart still decrypt after it.

use std::io::Write;
use std::path::Path;

/// The C struct `TLS_TICKET_KEY` as copied raw onto the wire.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TicketKey {
    /// RFC 5077 key name.
    pub name: [u8; 16],
    /// Cipher key (smtpd uses the first key_len bytes).
    pub bits: [u8; 32],
    /// HMAC-SHA256 key.
    pub hmac: [u8; 32],
    /// Absolute expiry of the *encryption* use, seconds since the epoch.
    pub tout: libc::time_t,
}

/// Size of the struct on this host's C ABI: 88 with a 64-bit `time_t`, 84
/// with a 32-bit one. The client rejects any other length.
pub const TICKET_KEY_LEN: usize = std::mem::size_of::<TicketKey>();

// The layout must be name(16) + bits(32) + hmac(32) + time_t with no padding.
const _: () = assert!(TICKET_KEY_LEN == 80 + std::mem::size_of::<libc::time_t>());
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
const _: () = assert!(TICKET_KEY_LEN == 88);

impl std::fmt::Debug for TicketKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &hex::encode_upper(self.name))
            .field("tout", &self.tout)
            .finish_non_exhaustive()
    }
}

impl TicketKey {
    /// The struct's bytes in the host's native layout, as the wire carries them.
    pub fn to_bytes(&self) -> [u8; TICKET_KEY_LEN] {
        let mut out = [0u8; TICKET_KEY_LEN];
        out[..16].copy_from_slice(&self.name);
        out[16..48].copy_from_slice(&self.bits);
        out[48..80].copy_from_slice(&self.hmac);
        out[80..].copy_from_slice(&self.tout.to_ne_bytes());
        out
    }

    /// Parses the native layout; `None` unless exactly [`TICKET_KEY_LEN`] bytes.
    pub fn from_bytes(b: &[u8]) -> Option<TicketKey> {
        if b.len() != TICKET_KEY_LEN {
            return None;
        }
        let mut k = TicketKey {
            name: [0; 16],
            bits: [0; 32],
            hmac: [0; 32],
            tout: 0,
        };
        k.name.copy_from_slice(&b[..16]);
        k.bits.copy_from_slice(&b[16..48]);
        k.hmac.copy_from_slice(&b[48..80]);
        let mut t = [0u8; std::mem::size_of::<libc::time_t>()];
        t.copy_from_slice(&b[80..]);
        k.tout = libc::time_t::from_ne_bytes(t);
        Some(k)
    }

    fn tout_secs(&self) -> i64 {
        #[allow(clippy::useless_conversion)] // time_t is i32 on some ABIs
        i64::from(self.tout)
    }
}

/// Why no key was returned (both answer ERR on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// The smtpd cache timeout is 0: tickets are disabled.
    Disabled,
    /// No key has that name, or it is past its decryption window.
    Unknown,
}

/// The newest and the previous key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TicketKeys {
    /// keys[0] = newest (latest tout), keys[1] = previous.
    keys: [Option<TicketKey>; 2],
}

impl TicketKeys {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current encryption key at `now`, creating and rotating in a new one
    /// (from `fill`, which supplies random bytes) when the newest has stopped
    /// encrypting. `timeout` is the sanitized smtpd cache timeout. Returns the
    /// key and whether a new one was created.
    pub fn encrypt_at(
        &mut self,
        now: u64,
        timeout: u32,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(TicketKey, bool), KeyMiss> {
        if timeout == 0 {
            return Err(KeyMiss::Disabled);
        }
        let now_i = now as i64;
        if let Some(k) = self.keys[0] {
            if k.tout_secs() > now_i {
                return Ok((k, false));
            }
        }
        let half = i64::from(timeout / 2);
        let mut key = TicketKey {
            name: [0; 16],
            bits: [0; 32],
            hmac: [0; 32],
            tout: (now_i + half - 1) as libc::time_t,
        };
        fill(&mut key.name);
        fill(&mut key.bits);
        fill(&mut key.hmac);
        // The new key replaces the older slot, then becomes keys[0] if newer.
        self.keys[1] = Some(key);
        let newer = match self.keys[0] {
            None => true,
            Some(k0) => k0.tout < key.tout,
        };
        if newer {
            self.keys.swap(0, 1);
        }
        Ok((key, true))
    }

    /// The key named `name` if it may still decrypt at `now`. Never creates a key.
    pub fn decrypt_at(
        &self,
        name: &[u8; 16],
        now: u64,
        timeout: u32,
    ) -> Result<TicketKey, KeyMiss> {
        if timeout == 0 {
            return Err(KeyMiss::Disabled);
        }
        let half = i64::from(timeout / 2);
        for k in self.keys.iter().map_while(|k| k.as_ref()) {
            if &k.name == name {
                return if k.tout_secs() + half > now as i64 {
                    Ok(*k)
                } else {
                    Err(KeyMiss::Unknown)
                };
            }
        }
        Err(KeyMiss::Unknown)
    }

    /// Drops keys that can no longer decrypt at `now` (used after loading).
    pub fn prune(&mut self, now: u64, timeout: u32) {
        let half = i64::from(timeout / 2);
        let live = |k: &Option<TicketKey>| k.is_some_and(|k| k.tout_secs() + half > now as i64);
        let kept: Vec<TicketKey> = self
            .keys
            .iter()
            .filter(|k| live(k))
            .flatten()
            .copied()
            .collect();
        self.keys = [kept.first().copied(), kept.get(1).copied()];
    }

    /// Serializes both slots: a presence byte then the native struct, each.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * (1 + TICKET_KEY_LEN));
        for slot in &self.keys {
            match slot {
                Some(k) => {
                    out.push(1);
                    out.extend_from_slice(&k.to_bytes());
                }
                None => {
                    out.push(0);
                    out.extend_from_slice(&[0u8; TICKET_KEY_LEN]);
                }
            }
        }
        out
    }

    /// Parses [`Self::to_file_bytes`] output; `None` if malformed.
    pub fn from_file_bytes(b: &[u8]) -> Option<TicketKeys> {
        if b.len() != 2 * (1 + TICKET_KEY_LEN) {
            return None;
        }
        let mut keys = TicketKeys::new();
        for (i, chunk) in b.chunks(1 + TICKET_KEY_LEN).enumerate() {
            keys.keys[i] = match chunk.first() {
                Some(1) => Some(TicketKey::from_bytes(&chunk[1..])?),
                Some(0) => None,
                _ => return None,
            };
        }
        Some(keys)
    }

    /// Loads keys saved by [`Self::save`]. A missing file is `Ok(None)`.
    pub fn load(path: &Path) -> std::io::Result<Option<TicketKeys>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Self::from_file_bytes(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Saves atomically (temporary file, fsync, rename), mode 0600.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&self.to_file_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut(&mut [u8]) {
        let mut n = 0u8;
        move |buf: &mut [u8]| {
            n = n.wrapping_add(1);
            buf.fill(n);
        }
    }

    #[test]
    fn wire_layout_matches_spec_example() {
        let k = TicketKey {
            name: [0x11; 16],
            bits: [0x22; 32],
            hmac: [0x33; 32],
            tout: 1_700_001_799,
        };
        let b = k.to_bytes();
        assert_eq!(b.len(), 88);
        assert_eq!(&b[80..], &1_700_001_799i64.to_le_bytes());
        assert_eq!(TicketKey::from_bytes(&b), Some(k));
        assert_eq!(TicketKey::from_bytes(&b[1..]), None);
    }

    #[test]
    fn rotation_follows_postfix() {
        let mut keys = TicketKeys::new();
        let mut fill = counter();
        let t0 = 1_000_000;
        let (k1, new) = keys.encrypt_at(t0, 3600, &mut fill).unwrap();
        assert!(new);
        assert_eq!(k1.tout as u64 - t0, 1799, "tout = now + T/2 - 1");
        // Same key while it encrypts.
        let (again, new) = keys.encrypt_at(t0 + 1798, 3600, &mut fill).unwrap();
        assert_eq!((again, new), (k1, false));
        // At tout the key stops encrypting: a new one.
        let (k2, new) = keys.encrypt_at(t0 + 1799, 3600, &mut fill).unwrap();
        assert!(new);
        assert_ne!(k2.name, k1.name);
        // The old one still decrypts until tout + T/2.
        assert_eq!(keys.decrypt_at(&k1.name, t0 + 1799 + 1799, 3600), Ok(k1));
        assert_eq!(
            keys.decrypt_at(&k1.name, t0 + 1799 + 1800, 3600),
            Err(KeyMiss::Unknown)
        );
        assert_eq!(keys.decrypt_at(&k2.name, t0 + 1800, 3600), Ok(k2));
        // A third key destroys the first.
        let (k3, _) = keys.encrypt_at(t0 + 2 * 1799, 3600, &mut fill).unwrap();
        assert_eq!(
            keys.decrypt_at(&k1.name, t0 + 2 * 1799, 3600),
            Err(KeyMiss::Unknown)
        );
        assert_eq!(keys.decrypt_at(&k3.name, t0 + 2 * 1799, 3600), Ok(k3));
        assert_eq!(keys.decrypt_at(&[9; 16], t0, 3600), Err(KeyMiss::Unknown));
    }

    #[test]
    fn minimum_timeout_gives_59_seconds() {
        let mut keys = TicketKeys::new();
        let (k, _) = keys.encrypt_at(500, 120, &mut counter()).unwrap();
        assert_eq!(k.tout, 559);
    }

    #[test]
    fn disabled_when_timeout_zero() {
        let mut keys = TicketKeys::new();
        assert_eq!(
            keys.encrypt_at(5, 0, &mut counter()).unwrap_err(),
            KeyMiss::Disabled
        );
        assert_eq!(keys.decrypt_at(&[0; 16], 5, 0), Err(KeyMiss::Disabled));
    }

    #[test]
    fn file_roundtrip_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let mut keys = TicketKeys::new();
        let mut fill = counter();
        let (k1, _) = keys.encrypt_at(1000, 3600, &mut fill).unwrap();
        keys.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut loaded = TicketKeys::load(&path).unwrap().unwrap();
        assert_eq!(loaded, keys);
        assert_eq!(loaded.decrypt_at(&k1.name, 1001, 3600), Ok(k1));
        loaded.prune(1000 + 1799 + 1800, 3600);
        assert_eq!(loaded, TicketKeys::new());
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(TicketKeys::load(&path).unwrap(), None);
        assert_eq!(TicketKeys::load(&dir.path().join("absent")).unwrap(), None);
    }
}
