//! Ticket-key names the shared store did not have: remembered for
//! [`FORGET_AFTER`] seconds, so that a name that many clients bring (a key
//! retired long ago, another site's, a forged ticket replayed) costs one
//! Redis lookup per host and period instead of one per handshake.
//!
//! Only a definite answer is remembered (Redis had no such key, or its
//! value did not open); a timeout, an error or an open breaker is not an
//! answer. A key that reaches the store later (made while Redis was away,
//! published when it returned) is found at most [`FORGET_AFTER`] seconds
//! late, which costs the clients that bring it one full handshake. The set
//! is bounded by [`CAPACITY`]; time is passed in.

use std::collections::HashMap;
use std::sync::Mutex;

/// Seconds a name stays known as missing.
pub const FORGET_AFTER: u64 = 30;

/// Names remembered at most. When full, the expired ones go; if none has
/// expired (a flood of fresh names), the set starts over, so a flood can
/// never grow it.
pub const CAPACITY: usize = 4096;

/// Whether a miss at `at` still holds at `now`: less than [`FORGET_AFTER`]
/// ago, and not in the future (a clock stepped back forgets it).
fn still_missing(at: u64, now: u64) -> bool {
    at <= now && now - at < FORGET_AFTER
}

/// A 16-byte ticket-key name.
pub type KeyName = [u8; 16];

/// The names recently looked up in the shared store and not found.
#[derive(Debug, Default)]
pub struct UnknownNames {
    missed_at: Mutex<HashMap<KeyName, u64>>,
}

impl UnknownNames {
    /// Whether `name` was missed less than [`FORGET_AFTER`] seconds before
    /// `now`.
    pub fn recently_missed(&self, name: &KeyName, now: u64) -> bool {
        let Ok(m) = self.missed_at.lock() else {
            return false;
        };
        m.get(name).is_some_and(|&at| still_missing(at, now))
    }

    /// The store had no usable key `name` at `now`.
    pub fn missed(&self, name: KeyName, now: u64) {
        let Ok(mut m) = self.missed_at.lock() else {
            return;
        };
        if m.len() >= CAPACITY && !m.contains_key(&name) {
            m.retain(|_, at| still_missing(*at, now));
            if m.len() >= CAPACITY {
                m.clear();
            }
        }
        m.insert(name, now);
    }

    /// Names remembered now (expired ones included until they are pruned).
    pub fn len(&self) -> usize {
        self.missed_at.lock().map_or(0, |m| m.len())
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn name(i: u32) -> KeyName {
        let mut n = [0u8; 16];
        n[..4].copy_from_slice(&i.to_be_bytes());
        n
    }

    #[test]
    fn a_missed_name_is_remembered_for_its_period_only() {
        let u = UnknownNames::default();
        assert!(!u.recently_missed(&name(1), 1000));
        u.missed(name(1), 1000);
        assert!(u.recently_missed(&name(1), 1000));
        assert!(u.recently_missed(&name(1), 1000 + FORGET_AFTER - 1));
        assert!(!u.recently_missed(&name(1), 1000 + FORGET_AFTER));
        assert!(!u.recently_missed(&name(2), 1000));
        // A clock stepped back does not make an entry last longer.
        assert!(!u.recently_missed(&name(1), 999));
    }

    #[test]
    fn a_flood_of_fresh_names_never_grows_the_set_past_its_capacity() {
        let u = UnknownNames::default();
        for i in 0..(3 * CAPACITY as u32) {
            u.missed(name(i), 5000);
            assert!(u.len() <= CAPACITY);
        }
        // The newest is there; expired ones make room before a restart.
        assert!(u.recently_missed(&name(3 * CAPACITY as u32 - 1), 5000));
        let u = UnknownNames::default();
        for i in 0..CAPACITY as u32 {
            u.missed(name(i), 100);
        }
        u.missed(name(1), 100 + FORGET_AFTER - 1);
        u.missed(name(CAPACITY as u32), 100 + FORGET_AFTER);
        assert_eq!(u.len(), 2, "only the unexpired name and the new one stay");
        assert!(u.recently_missed(&name(1), 100 + FORGET_AFTER));
    }
}
