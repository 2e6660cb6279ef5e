//! The ticket key file (`tlsmgr_ticket_key_file`): the [`KeyRing`] kept
//! across restarts, so tickets issued before a restart still decrypt after
//! it (stock Postfix forgets its keys at every start).
//!
//! Format: three slots (previous, current, next), each a presence byte
//! (zero or one) then the native [`TicketKey`] struct (zeros when absent).
//! Files of the earlier two-slot format (newest, previous) are still read.
//! Anything else is not a key file and is ignored with a warning by the
//! caller.
//!
//! [`save`] writes a temporary file (mode 0600), fsyncs it, renames it over
//! the old one and fsyncs the directory, so once it returns the keys survive
//! a power loss: a ticket issued under a key that is then lost could never
//! resume.

use super::key::{TicketKey, TICKET_KEY_LEN};
use super::KeyRing;
use std::io::Write;
use std::path::Path;

const SLOT_LEN: usize = 1 + TICKET_KEY_LEN;

fn put_slot(out: &mut Vec<u8>, slot: &Option<TicketKey>) {
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

fn get_slot(chunk: &[u8]) -> Option<Option<TicketKey>> {
    match chunk.split_first() {
        Some((1, key)) => Some(Some(TicketKey::from_bytes(key)?)),
        Some((0, _)) => Some(None),
        _ => None,
    }
}

/// The file's bytes for `ring`.
pub fn to_bytes(ring: &KeyRing) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * SLOT_LEN);
    for slot in [&ring.previous, &ring.current, &ring.next] {
        put_slot(&mut out, slot);
    }
    out
}

/// Parses [`to_bytes`] output (or the two-slot format); `None` if malformed.
pub fn from_bytes(b: &[u8]) -> Option<KeyRing> {
    let slots = b
        .chunks(SLOT_LEN)
        .map(|c| (c.len() == SLOT_LEN).then(|| get_slot(c)).flatten())
        .collect::<Option<Vec<_>>>()?;
    match slots.as_slice() {
        [previous, current, next] => Some(KeyRing {
            previous: *previous,
            current: *current,
            next: *next,
            extra: Vec::new(),
        }),
        // Two slots: newest, previous (no next key yet).
        [newest, previous] => Some(KeyRing {
            previous: *previous,
            current: *newest,
            next: None,
            extra: Vec::new(),
        }),
        _ => None,
    }
}

/// What [`load`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// No file.
    Missing,
    /// A file that is not a key file.
    Malformed,
    /// The keys.
    Keys(Box<KeyRing>),
}

/// Reads the key file.
pub fn load(path: &Path) -> std::io::Result<Loaded> {
    match std::fs::read(path) {
        Ok(b) => Ok(from_bytes(&b).map_or(Loaded::Malformed, |r| Loaded::Keys(Box::new(r)))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::Missing),
        Err(e) => Err(e),
    }
}

/// Saves atomically and durably (see the module documentation).
pub fn save(ring: &KeyRing, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&to_bytes(ring))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename is durable once the directory is synced.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key(n: u8, tout: i64) -> TicketKey {
        TicketKey {
            name: [n; 16],
            bits: [n; 32],
            hmac: [n; 32],
            tout: tout as libc::time_t,
        }
    }

    #[test]
    fn round_trip_mode_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let ring = KeyRing {
            previous: None,
            current: Some(key(1, 100)),
            next: Some(key(2, 200)),
            extra: Vec::new(),
        };
        save(&ring, &path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&path).unwrap(), Loaded::Keys(Box::new(ring)));
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(load(&path).unwrap(), Loaded::Malformed);
        assert_eq!(load(&dir.path().join("absent")).unwrap(), Loaded::Missing);
    }

    #[test]
    fn reads_the_two_slot_format() {
        let mut old = Vec::new();
        put_slot(&mut old, &Some(key(3, 300)));
        put_slot(&mut old, &Some(key(2, 200)));
        assert_eq!(
            from_bytes(&old),
            Some(KeyRing {
                previous: Some(key(2, 200)),
                current: Some(key(3, 300)),
                next: None,
                extra: Vec::new(),
            })
        );
        let mut bad = old.clone();
        bad[0] = 7;
        assert_eq!(from_bytes(&bad), None);
        assert_eq!(from_bytes(&old[1..]), None);
    }
}
