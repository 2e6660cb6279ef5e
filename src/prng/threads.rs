//! Seeds on the request's own thread: [`SeedPool`], the central pool that
//! the PRNG actor feeds, and a generator per I/O thread keyed from it.
//!
//! # Construction
//!
//! * The central pool is a [`Pool`] (one ChaCha20 key, hash-based mixing;
//!   see the parent module) behind a mutex, with a generation counter that
//!   the PRNG actor bumps at every reseed (source bytes, exchange file).
//! * Each thread that serves `seed` keeps its own 256-bit key, taken from
//!   32 bytes of the central pool's keystream. It rekeys from the central
//!   pool when the generation moved (so every reseed reaches every thread
//!   before its next seed) and after [`REKEY_BYTES`] of output. The mutex is
//!   taken only then, never per request.
//! * Per request the thread runs ChaCha20 under its key with the time of
//!   day (seconds and nanoseconds, as Postfix mixes in before every request)
//!   as the 64-bit stream number: the first 32 bytes of that keystream
//!   replace the key, the next ones are the seed ("fast key erasure"). The
//!   time makes every request's stream distinct even if a key were ever
//!   reused; the erasure means the key held after a request never produced
//!   any output already served. One ChaCha20 call per seed, no hash: the
//!   central pool's SHA-256 mixing is for inputs that may be hostile
//!   (sources, the exchange file), which the time of day is not.
//!
//! # What a compromise reveals
//!
//! * One thread's state (its key) at some moment: not the seeds it served
//!   before, since every request replaced the key by keystream of the old
//!   key, which does not reveal it; not other threads' output, since their
//!   keys are other, independent stretches of the central keystream, and
//!   ChaCha20 keystream does not reveal its key (the central one) or other
//!   stretches; not its own output after its next rekey from the central
//!   pool.
//! * The central pool's state: the keys it hands out until its next reseed
//!   (as for any PRNG); not earlier central keys (mixing is a one-way hash),
//!   so not the seeds of earlier epochs either.

use super::Pool;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Output after which a thread's generator rekeys from the central pool.
pub const REKEY_BYTES: u64 = 1024 * 1024;

/// Distinguishes pools (several daemons in one test process share threads).
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// The central pool.
pub struct SeedPool {
    id: u64,
    pool: Mutex<Pool>,
    generation: AtomicU64,
    seeds: AtomicU64,
}

impl std::fmt::Debug for SeedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedPool")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

struct ThreadGenerator {
    pool_id: u64,
    generation: u64,
    since_rekey: u64,
    key: [u8; 32],
}

impl ThreadGenerator {
    /// One request's output (see "Construction").
    fn fill(&mut self, out: &mut [u8]) {
        let mut stream = ChaCha20Rng::from_seed(self.key);
        stream.set_stream(time_of_day());
        stream.fill_bytes(&mut self.key);
        stream.fill_bytes(out);
    }
}

/// Seconds and nanoseconds since the epoch in one word: distinct for
/// every request a thread serves (the clock's resolution is far finer than
/// a request).
fn time_of_day() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() << 30) ^ u64::from(now.subsec_nanos())
}

thread_local! {
    static GENERATOR: RefCell<Option<ThreadGenerator>> = const { RefCell::new(None) };
}

impl SeedPool {
    /// A central pool around `pool`.
    pub fn new(pool: Pool) -> Self {
        SeedPool {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            pool: Mutex::new(pool),
            generation: AtomicU64::new(0),
            seeds: AtomicU64::new(0),
        }
    }

    /// A central pool keyed from the operating system.
    pub fn from_os() -> Self {
        Self::new(Pool::from_os())
    }

    /// A central pool keyed from the operating system, or its refusal
    /// (see [`Pool::try_from_os`]).
    pub fn try_from_os() -> std::io::Result<Self> {
        Pool::try_from_os().map(Self::new)
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        // Every Pool method leaves a valid key behind, even mid-panic.
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the central pool without starting a new generation
    /// (reading bytes for the actor's own use: delays, forks).
    pub fn with<T>(&self, f: impl FnOnce(&mut Pool) -> T) -> T {
        f(&mut self.lock())
    }

    /// Mixes `input` into the central pool and starts a new generation:
    /// every thread rekeys before its next seed.
    pub fn reseed(&self, input: &[u8]) {
        self.lock().mix(input);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// How many reseeds there have been.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// How many seeds have been served.
    pub fn seeds_served(&self) -> u64 {
        self.seeds.load(Ordering::Relaxed)
    }

    /// Fills `out` with seed bytes from this thread's generator.
    pub fn seed(&self, out: &mut [u8]) {
        self.seeds.fetch_add(1, Ordering::Relaxed);
        GENERATOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            let generation = self.generation();
            let fresh = match slot.as_ref() {
                Some(g) => {
                    g.pool_id != self.id
                        || g.generation != generation
                        || g.since_rekey >= REKEY_BYTES
                }
                None => true,
            };
            if fresh {
                let mut key = [0u8; 32];
                self.lock().fill(&mut key);
                *slot = Some(ThreadGenerator {
                    pool_id: self.id,
                    generation,
                    since_rekey: 0,
                    key,
                });
            }
            if let Some(g) = slot.as_mut() {
                g.fill(out);
                g.since_rekey = g.since_rekey.saturating_add(out.len() as u64);
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn threads_get_different_streams() {
        let pool = std::sync::Arc::new(SeedPool::new(Pool::from_key([5; 32])));
        let outs: Vec<[u8; 32]> = (0..4)
            .map(|_| {
                let p = pool.clone();
                std::thread::spawn(move || {
                    let mut o = [0u8; 32];
                    p.seed(&mut o);
                    o
                })
                .join()
                .unwrap()
            })
            .collect();
        for (i, a) in outs.iter().enumerate() {
            for b in &outs[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    fn since_rekey() -> u64 {
        GENERATOR.with(|c| c.borrow().as_ref().map_or(0, |g| g.since_rekey))
    }

    #[test]
    fn a_reseed_rekeys_the_thread() {
        let pool = SeedPool::new(Pool::from_key([6; 32]));
        let mut o = [0u8; 32];
        pool.seed(&mut o);
        pool.seed(&mut o);
        assert_eq!(since_rekey(), 64, "no rekey without a reseed");
        pool.reseed(b"fresh");
        assert_eq!(pool.generation(), 1);
        pool.seed(&mut o);
        assert_eq!(since_rekey(), 32, "rekeyed at the new generation");
        GENERATOR.with(|c| assert_eq!(c.borrow().as_ref().unwrap().generation, 1));
    }

    #[test]
    fn every_request_erases_the_key_that_served_it() {
        let pool = SeedPool::new(Pool::from_key([8; 32]));
        let mut a = [0u8; 32];
        pool.seed(&mut a);
        let key_after = GENERATOR.with(|c| c.borrow().as_ref().unwrap().key);
        // The key held now is not the one the seed came from: the same key
        // under any stream gives other bytes than the seed just served.
        let mut replay = ChaCha20Rng::from_seed(key_after);
        let mut b = [0u8; 64];
        replay.fill_bytes(&mut b);
        assert_ne!(&b[32..], &a[..]);
        let mut c = [0u8; 32];
        pool.seed(&mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn rekeys_after_the_byte_bound() {
        let pool = SeedPool::new(Pool::from_key([7; 32]));
        let mut o = [0u8; 255];
        pool.seed(&mut o);
        GENERATOR.with(|c| {
            c.borrow_mut().as_mut().unwrap().since_rekey = REKEY_BYTES;
        });
        pool.seed(&mut o);
        GENERATOR.with(|c| assert_eq!(c.borrow().as_ref().unwrap().since_rekey, 255));
    }
}
