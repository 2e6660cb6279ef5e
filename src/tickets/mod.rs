//! RFC 5077 session-ticket keys (spec §2.6): which key encrypts and which
//! decrypt at a given time, and how the set rotates.
//!
//! - `key`: the 88-byte wire struct.
//! - [`file`](mod@file): the key file (`tlsmgr_ticket_key_file`).
//!
//! With T the sanitized smtpd cache timeout and t = T/2, a key encrypts until
//! its `tout` and decrypts while `tout + t > now`, as in Postfix. Stock
//! Postfix makes a key lazily, when a request finds none that encrypts, so
//! that request waits for the key to be made (and, here, saved). We rotate
//! ahead of time instead, as nginx does with its previous/current/next keys:
//! the [`KeyRing`] holds the previous key (still decrypting), the current one
//! and the next one, made in advance with `tout = current.tout + t - 1` —
//! the key Postfix would make on the first request at `current.tout`. When
//! the current key stops encrypting, a request takes the next one at once,
//! from the same snapshot; the ticket actor (`actors::ticket`) then
//! rotates, saves and publishes a new ring with a fresh next key. A request
//! never waits for a key to be made, unless the clock ran past even the next
//! key (a suspended machine, a clock step), where it asks the actor.
//!
//! Lifetimes are capped by the clock: a previous or current key whose `tout`
//! lies more than `t` past now, or a next key more than `2t` (the most each
//! can have), was made under a clock that has since gone back, and is
//! dropped at the next rotation and when the file is loaded, so a clock that jumped forward and back cannot pin a key for
//! years. Every function takes `now`, so tests step time by hand.

pub mod epoch;
pub mod file;
mod key;

pub use key::{TicketKey, TICKET_KEY_LEN};

/// Why no key was returned (both answer ERR on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// The smtpd cache timeout is 0: tickets are disabled.
    Disabled,
    /// No key has that name, or it is past its decryption window.
    Unknown,
    /// No key encrypts at `now` (the ring is behind the clock): rotate first.
    Stale,
}

/// The previous, current and next keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyRing {
    /// Stopped encrypting; decrypts for another t.
    pub previous: Option<TicketKey>,
    /// Encrypts until its `tout`.
    pub current: Option<TicketKey>,
    /// Encrypts from `current.tout` on; made ahead of time.
    pub next: Option<TicketKey>,
    /// More keys that only decrypt: with a shared store, keys of older
    /// epochs, keys made here that lost to another host's, and keys
    /// fetched by name. Not kept in the key file (they are in the store).
    pub extra: Vec<TicketKey>,
}

fn half(timeout: u32) -> i64 {
    i64::from(timeout / 2)
}

fn secs(now: u64) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX)
}

fn to_time_t(t: i64) -> libc::time_t {
    // A 32-bit time_t saturates rather than wrapping into the past.
    libc::time_t::try_from(t).unwrap_or(libc::time_t::MAX)
}

impl KeyRing {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    fn keys(&self) -> impl Iterator<Item = &TicketKey> {
        [&self.previous, &self.current, &self.next]
            .into_iter()
            .flatten()
            .chain(self.extra.iter())
    }

    /// The key that encrypts at `now`: the current one while its `tout` is
    /// ahead, then the next one. Never makes a key: [`KeyMiss::Stale`] when
    /// neither encrypts (the caller rotates and asks again).
    pub fn encrypt_at(&self, now: u64, timeout: u32) -> Result<TicketKey, KeyMiss> {
        if timeout == 0 {
            return Err(KeyMiss::Disabled);
        }
        let now = secs(now);
        [self.current, self.next]
            .into_iter()
            .flatten()
            .find(|k| k.tout_secs() > now)
            .ok_or(KeyMiss::Stale)
    }

    /// The key named `name` if it may still decrypt at `now`.
    pub fn decrypt_at(
        &self,
        name: &[u8; 16],
        now: u64,
        timeout: u32,
    ) -> Result<TicketKey, KeyMiss> {
        if timeout == 0 {
            return Err(KeyMiss::Disabled);
        }
        let now = secs(now);
        match self.keys().find(|k| &k.name == name) {
            Some(k) if k.tout_secs().saturating_add(half(timeout)) > now => Ok(*k),
            _ => Err(KeyMiss::Unknown),
        }
    }

    /// Brings the ring up to `now`: drops keys that can no longer decrypt
    /// and keys from a clock that went back; moves to the next key when the
    /// current one stopped encrypting; makes the missing keys from `fill`
    /// (random bytes). Returns whether anything changed (then the ring must
    /// be saved before it is published). Does nothing when tickets are
    /// disabled (`timeout` 0).
    pub fn rotate(&mut self, now: u64, timeout: u32, fill: &mut dyn FnMut(&mut [u8])) -> bool {
        if timeout == 0 {
            return false;
        }
        let before = self.clone();
        let t = half(timeout);
        let now_s = secs(now);
        // Decrypting still, and not from the future: a current key made at
        // now encrypts until now + t - 1 at most, the next one until
        // now + 2t - 2, so anything later was made under a clock that has
        // since gone back.
        let keep = |k: &Option<TicketKey>, latest: i64| {
            k.filter(|k| k.tout_secs().saturating_add(t) > now_s && k.tout_secs() <= latest)
        };
        let (in_t, in_2t) = (now_s.saturating_add(t), now_s.saturating_add(2 * t));
        self.previous = keep(&self.previous, in_t);
        self.current = keep(&self.current, in_t);
        self.next = keep(&self.next, in_2t);
        self.extra.retain(|k| keep(&Some(*k), in_t).is_some());
        // Move on while the current key has stopped encrypting (or is gone
        // and the next one is there).
        loop {
            match self.current {
                Some(cur) if cur.tout_secs() > now_s => break,
                Some(cur) => {
                    self.previous = Some(cur);
                    self.current = self.next.take();
                }
                None => match self.next.take() {
                    Some(next) => self.current = Some(next),
                    None => break,
                },
            }
        }
        // A next key that became current must not encrypt for longer than
        // a key made now either.
        if self.current.is_some_and(|c| c.tout_secs() > in_t) {
            self.current = None;
            self.next = None;
        }
        if self.current.is_none() {
            self.current = Some(make_key(in_t - 1, fill));
        }
        let cur_tout = self.current.map_or(now_s, |c| c.tout_secs());
        if self.next.is_none() {
            self.next = Some(make_key(cur_tout.saturating_add(t) - 1, fill));
        }
        *self != before
    }
}

impl KeyRing {
    /// Rotation on demand (`tlsmgr keys rotate`, a suspected compromise):
    /// a new current key encrypts from `now`, and a new next key follows
    /// it (the old next key was made with the old one and may be known
    /// too). The old current key is retired early: it stops encrypting now
    /// and, as previous, decrypts only for another T/2 from now, so tickets
    /// issued under it still resume meanwhile. The old previous key goes.
    /// Returns false (nothing done) when tickets are disabled.
    pub fn rotate_now(&mut self, now: u64, timeout: u32, fill: &mut dyn FnMut(&mut [u8])) -> bool {
        if timeout == 0 {
            return false;
        }
        let t = half(timeout);
        let now_s = secs(now);
        self.previous = self.current.take().map(|mut k| {
            if k.tout_secs() > now_s {
                k.tout = to_time_t(now_s);
            }
            k
        });
        let current = make_key(now_s + t - 1, fill);
        self.next = Some(make_key(current.tout_secs() + t - 1, fill));
        self.current = Some(current);
        true
    }

    /// The keys with their role: `previous`, `current`, `next`.
    pub fn roles(&self) -> impl Iterator<Item = (&'static str, &TicketKey)> {
        [
            ("previous", &self.previous),
            ("current", &self.current),
            ("next", &self.next),
        ]
        .into_iter()
        .filter_map(|(role, k)| k.as_ref().map(|k| (role, k)))
    }
}

fn make_key(tout: i64, fill: &mut dyn FnMut(&mut [u8])) -> TicketKey {
    let mut key = TicketKey {
        name: [0; 16],
        bits: [0; 32],
        hmac: [0; 32],
        tout: to_time_t(tout),
    };
    fill(&mut key.name);
    fill(&mut key.bits);
    fill(&mut key.hmac);
    key
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

    const T: u32 = 3600;

    #[test]
    fn first_key_is_postfixs_and_next_follows_it() {
        let mut ring = KeyRing::new();
        let t0 = 1_000_000;
        assert_eq!(ring.encrypt_at(t0, T), Err(KeyMiss::Stale));
        assert!(ring.rotate(t0, T, &mut counter()));
        let k1 = ring.encrypt_at(t0, T).unwrap();
        assert_eq!(k1.tout as u64 - t0, 1799, "tout = now + T/2 - 1");
        let next = ring.next.unwrap();
        assert_eq!(next.tout_secs(), k1.tout_secs() + 1799);
        // Nothing to do until the current key stops encrypting.
        assert!(!ring.rotate(t0 + 1798, T, &mut counter()));
    }

    #[test]
    fn at_tout_the_next_key_encrypts_without_a_rotation() {
        let mut ring = KeyRing::new();
        let mut fill = counter();
        let t0 = 1_000_000;
        ring.rotate(t0, T, &mut fill);
        let k1 = ring.encrypt_at(t0, T).unwrap();
        let k2 = ring.next.unwrap();
        // The snapshot alone answers at the boundary.
        assert_eq!(ring.encrypt_at(t0 + 1798, T), Ok(k1));
        assert_eq!(ring.encrypt_at(t0 + 1799, T), Ok(k2));
        // The old key still decrypts until tout + T/2.
        assert_eq!(ring.decrypt_at(&k1.name, t0 + 1799 + 1799, T), Ok(k1));
        assert_eq!(
            ring.decrypt_at(&k1.name, t0 + 1799 + 1800, T),
            Err(KeyMiss::Unknown)
        );
        // The rotation moves the ring on and makes a new next key.
        assert!(ring.rotate(t0 + 1799, T, &mut fill));
        assert_eq!(ring.previous, Some(k1));
        assert_eq!(ring.current, Some(k2));
        assert_eq!(ring.encrypt_at(t0 + 1799, T), Ok(k2));
        assert_eq!(ring.decrypt_at(&k1.name, t0 + 1800, T), Ok(k1));
        let k3 = ring.next.unwrap();
        assert_eq!(k3.tout_secs(), k2.tout_secs() + 1799);
        assert_ne!(k3.name, k2.name);
        assert_eq!(ring.decrypt_at(&[9; 16], t0, T), Err(KeyMiss::Unknown));
    }

    #[test]
    fn a_ring_left_far_behind_starts_over_from_now() {
        let mut ring = KeyRing::new();
        let mut fill = counter();
        ring.rotate(1_000, T, &mut fill);
        let later = 1_000 + 10 * 3600;
        assert_eq!(ring.encrypt_at(later, T), Err(KeyMiss::Stale));
        assert!(ring.rotate(later, T, &mut fill));
        let k = ring.encrypt_at(later, T).unwrap();
        assert_eq!(k.tout_secs(), later as i64 + 1799);
        assert_eq!(ring.previous, None, "nothing old still decrypts");
    }

    #[test]
    fn rotate_now_replaces_current_and_next_and_retires_the_old_key() {
        let mut ring = KeyRing::new();
        let mut fill = counter();
        let t0 = 1_000_000;
        ring.rotate(t0, T, &mut fill);
        let (old_prev, old_cur, old_next) =
            (ring.previous, ring.current.unwrap(), ring.next.unwrap());
        let now = t0 + 100;
        assert!(ring.rotate_now(now, T, &mut fill));
        let cur = ring.encrypt_at(now, T).unwrap();
        assert_ne!(cur.name, old_cur.name);
        assert_ne!(cur.name, old_next.name);
        assert_eq!(cur.tout_secs(), now as i64 + 1799);
        assert_ne!(ring.next.unwrap().name, old_next.name);
        assert_eq!(
            ring.decrypt_at(&old_next.name, now, T),
            Err(KeyMiss::Unknown)
        );
        // The old key still decrypts, but only until now + T/2.
        assert!(ring.decrypt_at(&old_cur.name, now + 1799, T).is_ok());
        assert_eq!(
            ring.decrypt_at(&old_cur.name, now + 1800, T),
            Err(KeyMiss::Unknown)
        );
        assert_eq!(old_prev, None);
        assert!(!ring.rotate_now(now, 0, &mut fill));
    }

    #[test]
    fn minimum_timeout_gives_59_seconds() {
        let mut ring = KeyRing::new();
        ring.rotate(500, 120, &mut counter());
        assert_eq!(ring.encrypt_at(500, 120).unwrap().tout, 559);
    }

    #[test]
    fn disabled_when_timeout_zero() {
        let mut ring = KeyRing::new();
        assert!(!ring.rotate(5, 0, &mut counter()));
        assert_eq!(ring.encrypt_at(5, 0), Err(KeyMiss::Disabled));
        assert_eq!(ring.decrypt_at(&[0; 16], 5, 0), Err(KeyMiss::Disabled));
    }

    #[test]
    fn keys_from_a_clock_that_went_back_are_dropped() {
        let mut ring = KeyRing::new();
        let mut fill = counter();
        let now = 1_700_000_000u64;
        let ten_years = 10 * 365 * 86_400;
        // Made while the clock stood ten years ahead.
        ring.rotate(now + ten_years, T, &mut fill);
        let future = ring.encrypt_at(now + ten_years, T).unwrap();
        // Back to the right time: the future keys would encrypt for ten
        // years; they go, and the new key has a normal lifetime.
        assert!(ring.rotate(now, T, &mut fill));
        let k = ring.encrypt_at(now, T).unwrap();
        assert_ne!(k.name, future.name);
        assert_eq!(k.tout_secs(), now as i64 + 1799);
        assert!(ring.keys().all(|k| k.tout_secs() <= now as i64 + 3600));
        assert_eq!(ring.decrypt_at(&future.name, now, T), Err(KeyMiss::Unknown));
    }
}
