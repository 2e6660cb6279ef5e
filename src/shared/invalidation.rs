//! Removals told to the other hosts of a site: `tlsmgr cache delete` and
//! `tlsmgr cache purge` remove the shared copy from Redis, but every host
//! that read the session through keeps a local copy. The host that removed
//! it publishes a message on the site's channel (`tlsmgr:<site>:inval`);
//! every host subscribes on a connection of its own (bounded like the
//! others, `super::bounded`) and removes its local copy too.
//!
//! Messages are sealed with the site secret like the values (associated
//! data: the channel name), so only a host of the site can make one, and
//! the cache id, which names a peer, never reaches Redis in clear. A
//! message carries its sender (a random id per link, so a host skips its
//! own) and its time; one older than [`MAX_AGE`] or seen before is dropped,
//! so a replayed purge cannot empty the caches again and again.
//!
//! Pub/sub is fire and forget: a host whose subscriber is disconnected
//! misses what was published meanwhile (it logs that it was away;
//! SECURITY.md, "Removing a shared session").

use super::seal;
use crate::config::secret::Secret;
use crate::protocol::CacheType;
use std::collections::{HashSet, VecDeque};

/// What another host removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One session (`tlsmgr cache delete TYPE ID`).
    Delete {
        /// Its cache type.
        ct: CacheType,
        /// Its cache id.
        id: Vec<u8>,
    },
    /// Every session of a type (`tlsmgr cache purge TYPE`).
    Purge {
        /// The cache type.
        ct: CacheType,
    },
}

/// A message from another host, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    /// The link that sent it.
    pub sender: u64,
    /// What to remove.
    pub what: Invalidation,
    /// When the sender removed it (its clock, seconds).
    pub at: u64,
}

/// Messages older (or further in the future, clocks differ) than this are
/// dropped: a delivery takes milliseconds, so only replays are that old.
pub const MAX_AGE: u64 = 60;

/// Messages remembered to drop replays within [`MAX_AGE`]: far more than
/// admins remove in a minute.
pub const REMEMBERED: usize = 4096;

/// The channel of the site whose keys start with `prefix`.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:inval")
}

const DELETE: u8 = b'D';
const PURGE: u8 = b'P';

/// The sealed message saying that `sender` removed `what` at `now`.
pub fn encode(
    secret: &Secret,
    channel: &str,
    sender: u64,
    now: u64,
    what: &Invalidation,
) -> Vec<u8> {
    let mut plain = sender.to_be_bytes().to_vec();
    match what {
        Invalidation::Delete { ct, id } => {
            plain.push(DELETE);
            plain.push(ct.index() as u8);
            plain.extend_from_slice(id);
        }
        Invalidation::Purge { ct } => {
            plain.push(PURGE);
            plain.push(ct.index() as u8);
        }
    }
    seal::seal_session(secret, channel, now, &plain)
}

/// Opens a message, `None` when it does not open or does not parse.
pub fn decode(secret: &Secret, channel: &str, sealed: &[u8]) -> Option<Told> {
    let (at, plain) = seal::open_session(secret, channel, sealed)?;
    let (sender, rest) = plain.split_first_chunk::<8>()?;
    let (&[kind, ct], id) = rest.split_first_chunk::<2>()?;
    let ct = *CacheType::ALL.get(usize::from(ct))?;
    let what = match kind {
        DELETE if !id.is_empty() => Invalidation::Delete {
            ct,
            id: id.to_vec(),
        },
        PURGE if id.is_empty() => Invalidation::Purge { ct },
        _ => return None,
    };
    Some(Told {
        sender: u64::from_be_bytes(*sender),
        what,
        at,
    })
}

/// The messages accepted lately, to drop replays.
#[derive(Debug, Default)]
pub struct Seen {
    set: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl Seen {
    /// Whether `told` is new and fresh at `now` (and now remembered). A
    /// replay has the sender, time and content of the message it copies.
    pub fn fresh(&mut self, told: &Told, now: u64) -> bool {
        let mut key = told.sender.to_be_bytes().to_vec();
        key.extend_from_slice(&told.at.to_be_bytes());
        match &told.what {
            Invalidation::Delete { ct, id } => {
                key.extend_from_slice(&[DELETE, ct.index() as u8]);
                key.extend_from_slice(id);
            }
            Invalidation::Purge { ct } => key.extend_from_slice(&[PURGE, ct.index() as u8]),
        }
        if told.at.abs_diff(now) > MAX_AGE || self.set.contains(&key) {
            return false;
        }
        let sealed = key;
        if self.order.len() >= REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(sealed.clone());
        self.order.push_back(sealed);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn secret(b: u8) -> Secret {
        Secret::from_bytes(PathBuf::from("/s"), &[b; 32])
    }

    #[test]
    fn a_message_opens_only_with_its_secret_and_channel() {
        let ch = channel("tlsmgr:mx");
        let del = Invalidation::Delete {
            ct: CacheType::Smtp,
            id: b"example.com:25".to_vec(),
        };
        let m = encode(&secret(1), &ch, 7, 1000, &del);
        assert_eq!(
            decode(&secret(1), &ch, &m),
            Some(Told {
                sender: 7,
                what: del,
                at: 1000
            })
        );
        assert!(!m.windows(11).any(|w| w == b"example.com"));
        assert_eq!(decode(&secret(2), &ch, &m), None);
        assert_eq!(decode(&secret(1), &channel("tlsmgr:other"), &m), None);
        let purge = Invalidation::Purge {
            ct: CacheType::Smtpd,
        };
        let m = encode(&secret(1), &ch, 8, 5, &purge);
        assert_eq!(decode(&secret(1), &ch, &m).unwrap().what, purge);
        assert_eq!(decode(&secret(1), &ch, b"garbage"), None);
    }

    #[test]
    fn replays_and_stale_messages_are_dropped() {
        let told = |sender, at| Told {
            sender,
            what: Invalidation::Purge {
                ct: CacheType::Smtpd,
            },
            at,
        };
        let mut seen = Seen::default();
        assert!(seen.fresh(&told(1, 100), 100));
        assert!(!seen.fresh(&told(1, 100), 101), "replayed");
        assert!(seen.fresh(&told(2, 100), 101), "another sender");
        assert!(!seen.fresh(&told(3, 100), 100 + MAX_AGE + 1), "too old");
        assert!(
            !seen.fresh(&told(4, 100 + MAX_AGE + 1), 100),
            "from the future"
        );
        for i in 0..REMEMBERED as u64 {
            assert!(seen.fresh(&told(10 + i, 100), 100));
        }
        assert!(seen.set.len() <= REMEMBERED);
    }
}
