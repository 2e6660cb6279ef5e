//! The ticket key as the wire carries it: the C struct `TLS_TICKET_KEY`
//! (spec §2.6) in the host's native layout.

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

    /// Expiry of the encryption use, seconds since the epoch.
    pub fn tout_secs(&self) -> i64 {
        #[allow(clippy::useless_conversion)] // time_t is i32 on some ABIs
        i64::from(self.tout)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
