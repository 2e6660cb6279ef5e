//! The seed generator behind the `seed` request (spec §2.5).
//!
//! Pool design: the state is a ChaCha20 key. Outputs come from the ChaCha20
//! keystream, so they reveal nothing about the key. To mix in an input (the
//! time of day at each request; entropy-source and exchange-file bytes later),
//! the new key is SHA-256 over a domain label, 32 fresh keystream bytes and
//! the input: the input can only add unpredictability, never remove it, and
//! the old key cannot be recovered from the new one (forward secrecy). At
//! start, before any source has answered, the key comes from the operating
//! system's CSPRNG (`getrandom`).

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// Largest `seed` request Postfix accepts.
pub const MAX_SEED: usize = 255;

/// A ChaCha20 pool with hash-based input mixing.
pub struct Pool {
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool { .. }")
    }
}

impl Pool {
    /// A pool keyed from the operating system's CSPRNG.
    pub fn from_os() -> Self {
        Pool {
            rng: ChaCha20Rng::from_os_rng(),
        }
    }

    /// A pool from a fixed key. For tests only: outputs are predictable.
    pub fn from_key(key: [u8; 32]) -> Self {
        Pool {
            rng: ChaCha20Rng::from_seed(key),
        }
    }

    /// Fills `out` with pool output.
    pub fn fill(&mut self, out: &mut [u8]) {
        self.rng.fill_bytes(out);
    }

    /// Mixes `input` into the pool by rekeying (see the module docs).
    pub fn mix(&mut self, input: &[u8]) {
        let mut fresh = [0u8; 32];
        self.rng.fill_bytes(&mut fresh);
        let mut h = Sha256::new();
        h.update(b"tlsmgr pool mix v1");
        h.update(fresh);
        h.update((input.len() as u64).to_be_bytes());
        h.update(input);
        self.rng = ChaCha20Rng::from_seed(h.finalize().into());
    }

    /// Mixes the time of day (seconds and nanoseconds) and the pid, as
    /// Postfix does before every request.
    pub fn mix_time_of_day(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut input = [0u8; 16];
        input[..8].copy_from_slice(&now.as_secs().to_ne_bytes());
        input[8..12].copy_from_slice(&now.subsec_nanos().to_ne_bytes());
        input[12..].copy_from_slice(&std::process::id().to_ne_bytes());
        self.mix(&input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_changes_the_stream() {
        let mut a = Pool::from_key([7; 32]);
        let mut b = Pool::from_key([7; 32]);
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y, "same key, same stream");
        a.mix(b"input");
        a.fill(&mut x);
        b.fill(&mut y);
        assert_ne!(x, y, "mixing must change the output");
    }

    #[test]
    fn os_pools_differ() {
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        Pool::from_os().fill(&mut x);
        Pool::from_os().fill(&mut y);
        assert_ne!(x, y);
    }
}
