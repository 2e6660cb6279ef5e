//! Removals this host made, remembered so that a shared value written
//! before one of them is refused: a deleted session put back under its
//! Redis key (a write-behind `SET` from another host that lands after the
//! `DEL`, a failover to a replica that had not seen the `DEL`, a restored
//! dump, a hostile server replaying what it once held) is a miss here, not
//! a hit.
//!
//! A sealed session carries the time it was written (`stored_at`, inside
//! the AEAD), so "older than the removal" needs no new format. A removal
//! at `t` need only be remembered for the cache timeout: after `t +
//! timeout` every value written at or before `t` is stale anyway and
//! refused by the freshness check.
//!
//! The memory is this host's and this process's: other hosts, and this one
//! after a restart, do not know of the removal (SECURITY.md, "Removing a
//! shared session"). At most [`CAPACITY`] names are held; when they are
//! all still needed, they are folded into the per-type floor (every value
//! of the type written at or before the newest of them is refused), which
//! costs hits, never safety.

use crate::protocol::CacheType;
use std::collections::HashMap;
use std::sync::Mutex;

/// Removed names remembered at most.
pub const CAPACITY: usize = 65_536;

#[derive(Debug, Default)]
struct Inner {
    /// Redis key name -> (removed at, forget after).
    names: HashMap<String, (u64, u64)>,
    /// Per cache type: values written at or before this time are refused
    /// until `floor_until` (a purge, or names folded in when full).
    floor: [u64; 3],
    floor_until: [u64; 3],
}

/// The removals this host made.
#[derive(Debug, Default)]
pub struct Tombstones {
    inner: Mutex<Inner>,
}

impl Tombstones {
    /// The session stored under `name` (of type `ct`) was removed at `now`;
    /// remember it for `timeout` seconds.
    pub fn removed(&self, ct: CacheType, name: &str, now: u64, timeout: u64) {
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        let until = now.saturating_add(timeout);
        if m.names.len() >= CAPACITY && !m.names.contains_key(name) {
            m.names.retain(|_, (_, u)| *u >= now);
            if m.names.len() >= CAPACITY {
                // All still needed: the type's floor takes them over.
                let (at, u) = m
                    .names
                    .values()
                    .fold((0, 0), |(a, b), &(x, y)| (a.max(x), b.max(y)));
                m.names.clear();
                Self::raise(&mut m, ct, at, u);
            }
        }
        let e = m.names.entry(name.to_string()).or_insert((now, until));
        *e = (e.0.max(now), e.1.max(until));
    }

    /// Every session of `ct` was removed at `now` (a purge); remember it
    /// for `timeout` seconds.
    pub fn purged(&self, ct: CacheType, now: u64, timeout: u64) {
        if let Ok(mut m) = self.inner.lock() {
            Self::raise(&mut m, ct, now, now.saturating_add(timeout));
        }
    }

    fn raise(m: &mut Inner, ct: CacheType, at: u64, until: u64) {
        let i = ct.index();
        m.floor[i] = m.floor[i].max(at);
        m.floor_until[i] = m.floor_until[i].max(until);
    }

    /// Whether a value of `ct` under `name`, written at `stored_at`, was
    /// written at or before a removal this host still remembers at `now`.
    pub fn buries(&self, ct: CacheType, name: &str, stored_at: u64, now: u64) -> bool {
        let Ok(m) = self.inner.lock() else {
            // A poisoned lock: refusing costs a full handshake, serving
            // might resurrect what was removed.
            return true;
        };
        let i = ct.index();
        if now <= m.floor_until[i] && stored_at <= m.floor[i] {
            return true;
        }
        m.names
            .get(name)
            .is_some_and(|&(at, until)| now <= until && stored_at <= at)
    }

    /// Names remembered now (expired ones included until they are pruned).
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |m| m.names.len())
    }

    /// Whether no name is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: CacheType = CacheType::Smtpd;

    #[test]
    fn a_removal_buries_older_values_for_the_timeout() {
        let t = Tombstones::default();
        t.removed(S, "n", 1000, 3600);
        assert!(t.buries(S, "n", 999, 1001), "older");
        assert!(t.buries(S, "n", 1000, 1001), "same second");
        assert!(!t.buries(S, "n", 1001, 1002), "written after");
        assert!(!t.buries(S, "other", 999, 1001), "another name");
        assert!(t.buries(S, "n", 999, 4600));
        assert!(!t.buries(S, "n", 999, 4601), "forgotten after the timeout");
    }

    #[test]
    fn a_purge_buries_every_older_value_of_its_type() {
        let t = Tombstones::default();
        t.purged(S, 1000, 60);
        assert!(t.buries(S, "any", 1000, 1001));
        assert!(!t.buries(S, "any", 1001, 1001));
        assert!(!t.buries(CacheType::Lmtp, "any", 1000, 1001));
        assert!(!t.buries(S, "any", 1000, 1061));
    }

    #[test]
    fn full_folds_into_the_floor_and_stays_bounded() {
        let t = Tombstones::default();
        for i in 0..CAPACITY {
            t.removed(S, &format!("n{i}"), 1000 + (i as u64 % 7), 3600);
        }
        assert_eq!(t.len(), CAPACITY);
        t.removed(S, "one more", 2000, 3600);
        assert_eq!(t.len(), 1);
        // Every folded name is still buried (the floor is their newest).
        assert!(t.buries(S, "n5", 1005, 2001));
        assert!(t.buries(S, "unrelated", 1006, 2001), "costs hits");
        assert!(!t.buries(S, "unrelated", 1007, 2001));
        assert!(t.buries(S, "one more", 2000, 2001));
    }
}
