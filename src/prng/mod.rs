//! The seed generator behind the `seed` request (spec §2.5), and the PRNG
//! manager's parts: `threads` (the central pool and the per-thread
//! generators that serve seeds on the request's thread), [`source`] (the
//! `tls_random_source` reader), [`exchange`] (the 1024-byte
//! `tls_random_exchange_name` file) and `schedule` (when reseeds and
//! exchange updates are due, sans I/O). The actor that drives them is
//! `actors::prng`.
//!
//! # Pool design
//!
//! The whole state is one 256-bit ChaCha20 key (plus the stream position).
//!
//! * **Output.** Seeds are ChaCha20 keystream. Recovering the key from
//!   keystream would break ChaCha20, so no amount of output (the wire only
//!   ever carries output) reveals the state.
//! * **Mixing an input** (entropy-source bytes, exchange-file contents; the
//!   time of day of each request goes into the per-thread generators of
//!   `threads` instead): the new key is
//!   `SHA-256("tlsmgr pool mix v1" || 32 keystream bytes || len(input) || input)`.
//!   The 32 keystream bytes stand for the old key, so the new key is at least
//!   as unpredictable as the old one whatever the input is: hostile or
//!   garbage input (an attacker-written exchange file, a lying EGD server)
//!   cannot reduce it, and any secret input adds to it. SHA-256 is one-way,
//!   so a key captured later does not reveal earlier keys or earlier output.
//! * **Start.** The first key comes from the operating system's CSPRNG
//!   (`getrandom`), so seeds are unpredictable from the first request, before
//!   any source answered and before the exchange file is read; those only add.
//! * **Exchange file contents** are written from a [`Pool::fork`]: a child
//!   pool keyed by 32 bytes of our output. The file therefore holds output,
//!   never state: reading it tells nothing about the keys that served seeds.

pub mod exchange;
pub(crate) mod schedule;
pub mod source;
mod threads;

pub use threads::SeedPool;

use crate::config::Config;

/// The entropy source and exchange file opened by [`preopen`], handed to
/// the daemon (`daemon::Options::prng_preopened`) for its PRNG actor to
/// adopt.
#[derive(Debug)]
pub struct Preopened {
    /// The source as configured, and its open handle.
    pub source: Option<(source::RandomSource, source::PreHandle)>,
    /// The exchange file, opened.
    pub exchange: Option<exchange::ExchangeFile>,
}

/// Opens `tls_random_source` and the exchange file now, as stock tlsmgr
/// does in pre_init: before the chroot into `queue_directory` hides
/// `/dev/urandom` and `data_directory`. The daemon's PRNG actor adopts
/// them when it starts with the same configuration; later reopens (after
/// a failure) use the paths as seen from wherever the process then is.
/// Returns what was opened, and what could not be (to log; the actor
/// retries it).
pub fn preopen(config: &Config) -> (Preopened, Vec<source::Failure>) {
    let mut failures = Vec::new();
    let want = config.random_source();
    let source = match source::open_blocking(&want) {
        Ok(Some(h)) => Some((want, h)),
        Ok(None) => None,
        Err(f) => {
            failures.push(f);
            None
        }
    };
    let exchange = config.tls_random_exchange_name.as_ref().and_then(|path| {
        let mut f = exchange::ExchangeFile::new(path.clone(), config.data_directory.clone());
        match f.open_now() {
            Ok(()) => Some(f),
            Err(e) => {
                failures.push(e);
                None
            }
        }
    });
    (Preopened { source, exchange }, failures)
}

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
    /// A pool keyed from the operating system's CSPRNG. Panics where the
    /// system refuses: for benches and unit tests; the daemon uses
    /// [`Pool::try_from_os`].
    pub fn from_os() -> Self {
        Pool {
            rng: ChaCha20Rng::from_os_rng(),
        }
    }

    /// A pool keyed from the operating system's CSPRNG (getrandom(2)), or
    /// the system's refusal (no getrandom, a seccomp filter that denies
    /// it): the daemon cannot serve seeds or make keys without one, so it
    /// dies with `fatal:` at start. Test builds (feature `test-hooks`)
    /// refuse as ENOSYS when `TLSMGR_TEST_OS_RNG_FAIL` is set.
    pub fn try_from_os() -> std::io::Result<Self> {
        #[cfg(feature = "test-hooks")]
        if std::env::var_os("TLSMGR_TEST_OS_RNG_FAIL").is_some() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
        }
        match ChaCha20Rng::try_from_os_rng() {
            Ok(rng) => Ok(Pool { rng }),
            Err(e) => Err(e.raw_os_error().map_or_else(
                || std::io::Error::other(e.to_string()),
                std::io::Error::from_raw_os_error,
            )),
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

    /// One pool byte, e.g. for Postfix's `period * b / 255` delays.
    pub fn byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.rng.fill_bytes(&mut b);
        b[0]
    }

    /// A child pool keyed from 32 bytes of this pool's output: it can be
    /// handed to another thread (exchange-file I/O) and its output reveals
    /// nothing about this pool's key.
    pub fn fork(&mut self) -> Pool {
        let mut key = [0u8; 32];
        self.rng.fill_bytes(&mut key);
        Pool::from_key(key)
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

/// An I/O error as Postfix prints it (`strerror()`), without Rust's
/// ` (os error N)` suffix: the warnings about sources and the exchange
/// file read like stock's (and the daemon's accept errors).
pub(crate) fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
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
    fn a_fork_is_not_its_parent() {
        let mut a = Pool::from_key([9; 32]);
        let mut b = Pool::from_key([9; 32]);
        let mut child = a.fork();
        let (mut x, mut y) = ([0u8; 64], [0u8; 64]);
        child.fill(&mut x);
        b.fill(&mut y);
        assert_ne!(x, y, "the child must not replay the parent's stream");
        assert_ne!(x[..32], y[32..], "nor continue it");
    }

    #[test]
    fn os_pools_differ() {
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        Pool::from_os().fill(&mut x);
        Pool::from_os().fill(&mut y);
        assert_ne!(x, y);
    }
}
