//! Ticket keys by epoch, for hosts that share them through a store (see
//! `shared`): which key encrypts when, decided by the clock alone, so that
//! hosts agree with no lock.
//!
//! With T the smtpd cache timeout, the epoch length is E = min(T/2, 12 h)
//! and the epoch of `now` is ⌊now/E⌋. The key of epoch n encrypts during
//! [nE, (n+1)E) (its `tout` is (n+1)E) and decrypts for another T/2, as a
//! Postfix key does. Each host makes a candidate for every epoch it needs;
//! the store keeps the first one written (`SET NX GET`) and every host
//! adopts it ([`EpochKeys::settle`]). The next epoch's key is fetched at a
//! random moment in the second half of the current epoch
//! ([`Slot::fetch_at`]), so it decrypts everywhere before it encrypts
//! anywhere. A candidate that lost after it encrypted (the store was away)
//! stays as a decrypt-only key and must be published by name.
//!
//! Pure: every function takes `now`; randomness is passed in.

use super::{KeyRing, TicketKey};
use std::collections::BTreeMap;

/// Longest epoch: 12 hours.
pub const MAX_EPOCH_LEN: u64 = 12 * 3600;

/// E for the smtpd cache timeout `timeout` (> 0).
pub fn epoch_len(timeout: u32) -> u64 {
    (u64::from(timeout) / 2).clamp(1, MAX_EPOCH_LEN)
}

/// How long the store keeps the key of `epoch`: until it stops decrypting,
/// plus one epoch of margin for clock skew.
pub fn ttl(epoch: u64, len: u64, timeout: u32, now: u64) -> u64 {
    let end = (epoch + 1) * len + u64::from(timeout / 2) + len;
    end.saturating_sub(now).max(1)
}

/// One epoch's key here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The key.
    pub key: TicketKey,
    /// True once the store returned it (ours won, or it is the winner's).
    pub confirmed: bool,
    /// When to fetch it if not confirmed yet (the random moment in the
    /// second half of the epoch before).
    pub fetch_at: u64,
}

/// The keys of a host that shares them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochKeys {
    len: u64,
    slots: BTreeMap<u64, Slot>,
    /// Decrypt-only keys (older epochs, lost candidates, fetched by name).
    extra: Vec<TicketKey>,
    /// Keys that encrypted here and are not yet known to be in the store by
    /// name.
    unpublished: Vec<TicketKey>,
}

fn make(tout: u64, fill: &mut dyn FnMut(&mut [u8])) -> TicketKey {
    let mut key = TicketKey {
        name: [0; 16],
        bits: [0; 32],
        hmac: [0; 32],
        tout: libc::time_t::try_from(tout).unwrap_or(libc::time_t::MAX),
    };
    fill(&mut key.name);
    fill(&mut key.bits);
    fill(&mut key.hmac);
    key
}

impl EpochKeys {
    /// Starts from the keys of a ring (loaded from the key file, or the
    /// local ring when sharing is turned on): a key that ends exactly at an
    /// epoch boundary of this timeout was an epoch's key and is that
    /// epoch's candidate again (the store confirms or replaces it), so a
    /// restart while the store is away keeps the shared key; the others
    /// only decrypt.
    pub fn from_ring(ring: &KeyRing, timeout: u32) -> Self {
        let mut keys = EpochKeys::default();
        if timeout == 0 {
            keys.extra = ring.keys().copied().collect();
            return keys;
        }
        let len = epoch_len(timeout);
        keys.len = len;
        for k in ring.keys() {
            let tout = u64::try_from(k.tout_secs()).unwrap_or(0);
            if tout >= len && tout % len == 0 && !keys.slots.contains_key(&(tout / len - 1)) {
                let e = tout / len - 1;
                keys.slots.insert(
                    e,
                    Slot {
                        key: *k,
                        confirmed: false,
                        fetch_at: e.saturating_sub(1) * len + len / 2,
                    },
                );
            } else {
                keys.extra.push(*k);
            }
        }
        keys
    }

    /// The epoch length in force (0 before the first [`EpochKeys::advance`]).
    pub fn epoch_len(&self) -> u64 {
        self.len
    }

    /// The epoch of `now`.
    pub fn epoch(&self, now: u64) -> u64 {
        now / self.len.max(1)
    }

    /// Brings the keys up to `now`: candidates for this epoch and the next
    /// (`fill`: random bytes; `frac`: random in [0, 1) for the fetch
    /// moment), older epochs to the decrypt-only keys, keys past their
    /// decryption window dropped. A new timeout (a new E) starts over,
    /// keeping the old keys for decryption.
    pub fn advance(
        &mut self,
        now: u64,
        timeout: u32,
        fill: &mut dyn FnMut(&mut [u8]),
        frac: &mut dyn FnMut() -> f64,
    ) {
        let len = epoch_len(timeout);
        if len != self.len {
            self.extra.extend(self.slots.values().map(|s| s.key));
            self.slots.clear();
            self.len = len;
        }
        let n = now / len;
        let old: Vec<u64> = self
            .slots
            .range(..n.saturating_sub(1))
            .map(|(e, _)| *e)
            .collect();
        for e in old {
            if let Some(s) = self.slots.remove(&e) {
                self.extra.push(s.key);
            }
        }
        // Keys from a clock that went back far are dropped too.
        self.slots.retain(|e, _| *e <= n + 1);
        for e in [n, n + 1] {
            self.slots.entry(e).or_insert_with(|| {
                let half = len / 2;
                let r = frac().clamp(0.0, 0.999_999);
                let fetch_at = e.saturating_sub(1) * len + half + ((len - half) as f64 * r) as u64;
                Slot {
                    key: make((e + 1) * len, fill),
                    confirmed: false,
                    fetch_at: fetch_at.min(e * len),
                }
            });
        }
        let t = i64::from(timeout / 2);
        let now_s = i64::try_from(now).unwrap_or(i64::MAX);
        // Still decrypting, and not from a clock that has since gone back.
        let alive = |k: &TicketKey| {
            k.tout_secs().saturating_add(t) > now_s && k.tout_secs() <= now_s.saturating_add(2 * t)
        };
        self.extra.retain(alive);
        self.unpublished.retain(alive);
        let mut seen = std::collections::HashSet::new();
        self.extra.retain(|k| seen.insert(k.name));
        // The key that encrypts now has encrypted: it must be findable by
        // name from every host.
        if let Some(cur) = self.slots.get(&n) {
            if !self.unpublished.iter().any(|k| k.name == cur.key.name) {
                self.unpublished.push(cur.key);
            }
        }
    }

    /// The epochs whose key must be fetched (or offered) now: this one
    /// while not confirmed, the next one from its fetch moment on.
    pub fn due(&self, now: u64) -> Vec<(u64, TicketKey)> {
        let n = self.epoch(now);
        self.slots
            .range(n..=n + 1)
            .filter(|(e, s)| !s.confirmed && (**e == n || now >= s.fetch_at))
            .map(|(e, s)| (*e, s.key))
            .collect()
    }

    /// Forgets that the keys of this epoch and the next were confirmed, so
    /// that the next [`EpochKeys::due`] checks them against the store again
    /// (a store restarted empty, a new link).
    pub fn recheck(&mut self) {
        for s in self.slots.values_mut() {
            s.confirmed = false;
        }
    }

    /// Keeps every key for decryption only, so that new candidates are
    /// made (a new site or secret: keys are never carried over).
    pub fn forget_epochs(&mut self) {
        self.extra.extend(self.slots.values().map(|s| s.key));
        self.slots.clear();
        self.unpublished.clear();
    }

    /// The store answered for `epoch`: `winner` is the key it holds, `None`
    /// when ours was written. A lost candidate that already encrypted
    /// (`now` in or past its epoch) stays, to decrypt, and is to be
    /// published by name. Returns whether anything changed.
    pub fn settle(
        &mut self,
        epoch: u64,
        ours: &TicketKey,
        winner: Option<TicketKey>,
        now: u64,
    ) -> bool {
        let n = self.epoch(now);
        let Some(slot) = self.slots.get_mut(&epoch) else {
            return false;
        };
        if slot.key.name != ours.name {
            return false;
        }
        match winner {
            None => {
                slot.confirmed = true;
                false
            }
            Some(w) if w.name == ours.name => {
                slot.confirmed = true;
                false
            }
            Some(w) => {
                let lost = slot.key;
                *slot = Slot {
                    key: w,
                    confirmed: true,
                    fetch_at: slot.fetch_at,
                };
                self.unpublished
                    .retain(|k| k.name != lost.name || epoch <= n);
                if epoch <= n {
                    self.extra.push(lost);
                    if !self.unpublished.iter().any(|k| k.name == lost.name) {
                        self.unpublished.push(lost);
                    }
                } else {
                    self.unpublished.retain(|k| k.name != lost.name);
                }
                true
            }
        }
    }

    /// Keys to publish by name.
    pub fn unpublished(&self) -> &[TicketKey] {
        &self.unpublished
    }

    /// `name` is now in the store by name.
    pub fn published(&mut self, name: &[u8; 16]) {
        self.unpublished.retain(|k| &k.name != name);
    }

    /// A key fetched by name: decrypts from now on. Returns whether it was new.
    pub fn adopt(&mut self, key: TicketKey) -> bool {
        let known = self.slots.values().any(|s| s.key.name == key.name)
            || self.extra.iter().any(|k| k.name == key.name);
        if !known {
            self.extra.push(key);
        }
        !known
    }

    /// The ring requests read: previous, current and next epoch's keys,
    /// and the decrypt-only ones.
    pub fn ring(&self, now: u64) -> KeyRing {
        let n = self.epoch(now);
        let get = |e: Option<u64>| e.and_then(|e| self.slots.get(&e)).map(|s| s.key);
        KeyRing {
            previous: get(n.checked_sub(1)),
            current: get(Some(n)),
            next: get(Some(n + 1)),
            extra: self.extra.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut(&mut [u8]) {
        counter_from(0)
    }

    fn counter_from(start: u8) -> impl FnMut(&mut [u8]) {
        let mut n = start;
        move |buf: &mut [u8]| {
            n = n.wrapping_add(1);
            buf.fill(n);
        }
    }

    const T: u32 = 3600;

    #[test]
    fn epoch_length_and_ttl() {
        assert_eq!(epoch_len(3600), 1800);
        assert_eq!(epoch_len(8_640_000), MAX_EPOCH_LEN);
        assert_eq!(epoch_len(120), 60);
        // Epoch 10 of 1800 s: tout 19800, decrypts until 21600, + 1800.
        assert_eq!(ttl(10, 1800, 3600, 18_000), 23_400 - 18_000);
        assert_eq!(ttl(10, 1800, 3600, 99_999), 1);
    }

    #[test]
    fn keys_follow_epochs_and_the_next_is_fetched_in_the_second_half() {
        let mut k = EpochKeys::default();
        let mut fill = counter();
        let now = 1800 * 1000 + 10;
        k.advance(now, T, &mut fill, &mut || 0.5);
        let ring = k.ring(now);
        let cur = ring.encrypt_at(now, T).unwrap();
        assert_eq!(cur.tout_secs(), 1800 * 1001);
        assert_eq!(ring.next.unwrap().tout_secs(), 1800 * 1002);
        // Only the current epoch is due in the first half.
        assert_eq!(
            k.due(now).iter().map(|d| d.0).collect::<Vec<_>>(),
            vec![1000]
        );
        // 0.5 of the second half: 1800*1000 + 900 + 450.
        assert_eq!(k.due(1800 * 1000 + 1349).len(), 1);
        assert_eq!(k.due(1800 * 1000 + 1350).len(), 2);
        // Across the boundary the snapshot alone answers with the next key.
        assert_eq!(ring.encrypt_at(1800 * 1001, T), Ok(ring.next.unwrap()));
    }

    #[test]
    fn the_stores_key_wins_and_a_lost_key_that_encrypted_still_decrypts() {
        let mut a = EpochKeys::default();
        let mut b = EpochKeys::default();
        let now = 1800 * 1000 + 10;
        a.advance(now, T, &mut counter(), &mut || 0.0);
        let mut fill_b = counter_from(0x80);
        b.advance(now, T, &mut fill_b, &mut || 0.0);
        let a_key = a.ring(now).current.unwrap();
        let b_key = b.ring(now).current.unwrap();
        assert_ne!(a_key.name, b_key.name);
        // a wrote first; b adopts it.
        assert!(!a.settle(1000, &a_key, None, now));
        assert!(b.settle(1000, &b_key, Some(a_key), now));
        assert_eq!(b.ring(now).current, Some(a_key));
        assert!(b.due(now).is_empty());
        // b's own key encrypted (it was current): decrypts, to publish.
        assert_eq!(b.ring(now).decrypt_at(&b_key.name, now, T), Ok(b_key));
        assert!(b.unpublished().iter().any(|k| k.name == b_key.name));
        // A stale answer (not our candidate) changes nothing.
        assert!(!b.settle(1000, &b_key, Some(b_key), now));
        // Keys past their decryption window go.
        let later = 1800 * 1003 + 1;
        b.advance(later, T, &mut fill_b, &mut || 0.0);
        assert_eq!(
            b.ring(later).decrypt_at(&b_key.name, later, T),
            Err(crate::tickets::KeyMiss::Unknown)
        );
    }

    #[test]
    fn a_lost_next_key_never_encrypted_and_is_not_kept() {
        let mut b = EpochKeys::default();
        let now = 1800 * 1000 + 1700;
        b.advance(now, T, &mut counter(), &mut || 0.0);
        let next = b.ring(now).next.unwrap();
        let winner = TicketKey {
            name: [0xee; 16],
            ..next
        };
        assert!(b.settle(1001, &next, Some(winner), now));
        assert_eq!(b.ring(now).next, Some(winner));
        assert!(b.ring(now).decrypt_at(&next.name, now, T).is_err());
        assert!(!b.unpublished().iter().any(|k| k.name == next.name));
    }

    #[test]
    fn keys_of_a_saved_ring_are_candidates_again() {
        let mut k = EpochKeys::default();
        let now = 1800 * 1000 + 10;
        k.advance(now, T, &mut counter(), &mut || 0.0);
        let ring = k.ring(now);
        let local = TicketKey {
            name: [0x77; 16],
            tout: 12345,
            ..ring.current.unwrap()
        };
        let saved = KeyRing {
            extra: vec![local],
            ..ring.clone()
        };
        let mut again = EpochKeys::from_ring(&saved, T);
        again.advance(now + 5, T, &mut counter_from(0x90), &mut || 0.0);
        let r = again.ring(now + 5);
        assert_eq!(r.current, ring.current);
        assert_eq!(r.next, ring.next);
        assert!(r.extra.contains(&local) || local.tout_secs() + 1800 <= now as i64);
        // Unconfirmed: the store is asked.
        assert_eq!(again.due(now + 5).len(), 1);
    }

    #[test]
    fn keys_from_a_clock_that_went_back_do_not_stay() {
        let now = 1_700_000_000u64;
        let future = TicketKey {
            name: [0x99; 16],
            bits: [0; 32],
            hmac: [0; 32],
            tout: (now + 10 * 365 * 86_400) as libc::time_t,
        };
        let saved = KeyRing {
            extra: vec![future],
            ..Default::default()
        };
        let mut k = EpochKeys::from_ring(&saved, T);
        k.advance(now, T, &mut counter(), &mut || 0.0);
        let ring = k.ring(now);
        assert!(ring.decrypt_at(&future.name, now, T).is_err());
        assert!(ring.current.unwrap().tout_secs() <= now as i64 + 1800);
    }

    #[test]
    fn a_new_timeout_keeps_old_keys_for_decryption() {
        let mut k = EpochKeys::default();
        let now = 1_000_000;
        k.advance(now, T, &mut counter(), &mut || 0.0);
        let old = k.ring(now).current.unwrap();
        k.advance(now, 7200, &mut counter_from(0x40), &mut || 0.0);
        assert_eq!(k.epoch_len(), 3600);
        let ring = k.ring(now);
        assert_ne!(ring.current.unwrap().name, old.name);
        assert_eq!(ring.decrypt_at(&old.name, now, 7200), Ok(old));
        assert!(k.adopt(TicketKey {
            name: [9; 16],
            ..old
        }));
        assert!(!k.adopt(old));
    }
}
