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

/// Largest key file read: the format needs 3 * (1 + 88) bytes; anything
/// much larger is not a key file and is refused before a byte is read.
pub const MAX_FILE_LEN: u64 = 4096;

/// What [`load`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// No file.
    Missing,
    /// A file that is not a key file.
    Malformed,
    /// Not a regular file of a sane size: what was there (never read).
    Refused(String),
    /// The keys, and the file's identity.
    Keys(Box<KeyRing>, FileStamp),
}

/// Which file is at the path: device and inode. A file replaced by
/// another (a restore, an edit, a removal) has another stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    /// The stamp of what is at `path` now (not following a link); `None`
    /// when nothing is.
    pub fn at(path: &Path) -> Option<FileStamp> {
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| FileStamp::of(&m))
    }
}

/// Reads the key file: opened with `O_NOFOLLOW | O_NONBLOCK` and checked on
/// the descriptor (a regular file of at most [`MAX_FILE_LEN`] bytes), as
/// the shared secret is (`config::regular`); a FIFO, a link (to
/// `/dev/zero`, say), a device or a huge file is never read.
pub fn load(path: &Path) -> std::io::Result<Loaded> {
    use crate::config::regular::{read_small, Refused};
    match read_small(path, MAX_FILE_LEN) {
        Ok((b, meta)) => Ok(from_bytes(&b).map_or(Loaded::Malformed, |r| {
            Loaded::Keys(Box::new(r), FileStamp::of(&meta))
        })),
        Err(Refused::Missing) => Ok(Loaded::Missing),
        Err(Refused::Io(e)) => Err(e),
        Err(e @ (Refused::NotAFile(_) | Refused::TooLarge(_))) => {
            Ok(Loaded::Refused(e.to_string()))
        }
    }
}

/// Saves atomically and durably (see the module documentation); returns
/// the stamp of the file written. The temporary file is created afresh
/// (`O_EXCL | O_NOFOLLOW`: a link planted at its name is not followed) and
/// renamed over `path`, which replaces whatever entry is there (a link, a
/// FIFO) without following or opening it.
pub fn save(ring: &KeyRing, path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // A temporary file left by a crash (or planted) goes first.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = f
        .write_all(&to_bytes(ring))
        .and_then(|()| f.sync_all())
        .and_then(|()| f.metadata())
        .and_then(|m| std::fs::rename(&tmp, path).map(|()| FileStamp::of(&m)));
    let stamp = match written {
        Ok(s) => s,
        Err(e) => {
            // No half-written file left to fill the disk further.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The rename is durable once the directory is synced.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(stamp)
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
        let stamp = save(&ring, &path).unwrap();
        assert_eq!(FileStamp::at(&path), Some(stamp));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load(&path).unwrap(), Loaded::Keys(Box::new(ring), stamp));
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(load(&path).unwrap(), Loaded::Malformed);
        assert_eq!(load(&dir.path().join("absent")).unwrap(), Loaded::Missing);
    }

    #[test]
    fn odd_files_are_refused_unread_and_save_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(
            matches!(load(&path).unwrap(), Loaded::Refused(ref w) if w.contains("symbolic link"))
        );
        let ring = KeyRing {
            previous: None,
            current: Some(key(1, 100)),
            next: None,
            extra: Vec::new(),
        };
        // The link itself is replaced; its target is not written.
        save(&ring, &path).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        // A link planted at the temporary name is not followed either.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, path.with_extension("tmp")).unwrap();
        save(&ring, &path).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(load(&path).unwrap(), Loaded::Refused(ref w) if w.contains("FIFO")));
        std::fs::remove_file(&path).unwrap();
        std::fs::File::create(&path)
            .unwrap()
            .set_len(200 << 20)
            .unwrap();
        assert!(matches!(load(&path).unwrap(), Loaded::Refused(ref w) if w.contains("too large")));
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
