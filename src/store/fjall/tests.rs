//! Unit tests of the fjall store: layout, presence, scans, the directory
//! and format file, and error mapping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::formats;
use std::os::unix::fs::PermissionsExt;

fn entry(stored_at: u64, session: &[u8]) -> Entry {
    Entry {
        stored_at,
        session: bytes::Bytes::copy_from_slice(session),
    }
}

fn keep() -> OpenOptions {
    OpenOptions {
        empty_on_start: false,
        ..OpenOptions::default()
    }
}

fn open_in(tmp: &tempfile::TempDir) -> FjallStore {
    FjallStore::open(&tmp.path().join("c.fjall"), keep()).unwrap()
}

/// What we count towards a rotation is at least what fjall adds to its
/// memtables, item by item, for every kind of write: otherwise fjall's
/// own rotation fires first and floods its worker (fjall-rs/fjall#323).
/// A flush finishing between the two readings only makes fjall's
/// figure smaller.
#[test]
fn rotation_counts_at_least_what_fjall_puts_in_its_memtables() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_in(&tmp);
    let counted = |s: &FjallStore| {
        let w = s.writer();
        w.unrotated[0] + w.unrotated[1]
    };
    let check = |what: &str, op: &dyn Fn(&FjallStore)| {
        let (ours0, theirs0) = (counted(&store), store.memtable_bytes());
        op(&store);
        let (ours1, theirs1) = (counted(&store), store.memtable_bytes());
        // A rotation in between resets our count: skip that sample.
        if ours1 >= ours0 {
            assert!(
                ours1 - ours0 >= theirs1.saturating_sub(theirs0),
                "{what}: we counted {} bytes, fjall {}",
                ours1 - ours0,
                theirs1.saturating_sub(theirs0)
            );
        }
    };
    for i in 0..200u64 {
        let id = format!("i{i}");
        check("insert, tiny", &|s| {
            s.put(id.as_bytes(), &entry(i, b"x"), 0).unwrap();
        });
        check("replace, newer", &|s| {
            s.put(id.as_bytes(), &entry(i + 1000, &[7; 3000]), 0)
                .unwrap();
        });
        check("delete", &|s| {
            s.delete(id.as_bytes()).unwrap();
        });
    }
}

#[test]
fn the_value_given_to_fjall_is_the_record() {
    for session in [&b""[..], b"x", &[9u8; 5000]] {
        let e = entry(0x0102_0304_0506_0708, session);
        assert_eq!(&record_value(&e)[..], &encode_record(&e)[..]);
    }
}

#[test]
fn record_round_trip_and_layout() {
    let e = entry(0x0102_0304_0506_0708, b"abc");
    let rec = encode_record(&e);
    assert_eq!(rec, b"\x01\x02\x03\x04\x05\x06\x07\x08abc");
    assert_eq!(decode_record(&rec).unwrap(), e);
    assert_eq!(decode_record(&[0; 8]).unwrap(), entry(0, b""));
    assert_eq!(age_key(1, b"id"), b"\0\0\0\0\0\0\0\x01id");
    assert_eq!(session_key(b""), b"s");
}

#[test]
fn short_record_is_malformed() {
    for len in 0..TS_LEN {
        let err = decode_record(&vec![0; len]).unwrap_err();
        assert!(matches!(err, StoreError::Malformed(_)), "{err}");
    }
}

#[test]
fn malformed_record_is_reported_then_deleted_by_the_caller() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open_in(&tmp);
    s.put(b"ok", &entry(1, b"x"), 0).unwrap();
    s.sessions
        .insert(session_key(b"bad"), b"short".to_vec())
        .unwrap();
    // As counted and recorded at open.
    s.len.fetch_add(1, Ordering::Relaxed);
    s.presence.add(b"bad");
    assert!(matches!(s.get(b"bad"), Err(StoreError::Malformed(_))));
    assert!(s.delete(b"bad").unwrap());
    assert_eq!(s.get(b"bad").unwrap(), None);
    assert_eq!(s.len(), 1);
    assert_eq!(s.get(b"ok").unwrap(), Some(entry(1, b"x")));
}

#[test]
fn every_change_keeps_one_index_key_per_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open_in(&tmp);
    let check = |s: &FjallStore| {
        assert_eq!(s.by_age.iter().count() as u64, s.len());
        assert_eq!(s.sessions.iter().count() as u64, s.len());
    };
    s.put(b"a", &entry(1, b"1"), 0).unwrap();
    s.put(b"a", &entry(2, b"2"), 0).unwrap();
    check(&s);
    s.put(b"a", &entry(2, b"3"), 0).unwrap();
    s.put(b"b", &entry(1, b""), 0).unwrap();
    check(&s);
    s.delete(b"a").unwrap();
    check(&s);
    s.put(b"c", &entry(0, b""), 0).unwrap();
    s.sweep_before(1, 1).unwrap();
    check(&s);
    s.evict_to(s.len() - 1).unwrap();
    check(&s);
    assert!(s.is_empty());
}

/// The presence record never calls absent an id the store holds, and
/// after every kind of change holds exactly the ids the store holds:
/// puts, replacements, deletes, sweeps, evictions under the bound, a
/// clear, and both ways a kept store is reopened.
#[test]
fn presence_follows_every_change_and_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let held = |s: &FjallStore| -> Vec<Vec<u8>> {
        s.sessions
            .iter()
            .map(|g| g.key().unwrap()[1..].to_vec())
            .collect()
    };
    let check = |s: &FjallStore, probes: u32| {
        let ids = held(s);
        assert_eq!(s.presence.hashes(), ids.len(), "one hash per held id");
        for id in &ids {
            assert!(s.presence.may_hold(id), "held id {id:?} called absent");
            assert!(s.get(id).unwrap().is_some());
        }
        for i in 0..probes {
            let id = format!("id{i}").into_bytes();
            assert_eq!(s.presence.may_hold(&id), ids.contains(&id), "{i}");
        }
    };
    let s = open_in(&tmp);
    // 100 ids, each stored three times: two thirds are replacements.
    for i in 0..300u32 {
        let id = format!("id{}", i % 100);
        let put = s
            .put(id.as_bytes(), &entry(u64::from(i), b"s"), 150)
            .unwrap();
        assert_eq!(put.inserted, i < 100, "{i}");
    }
    assert_eq!(s.len(), 100);
    check(&s, 200);
    // 100 new ids under a bound of 150: the puts evict the oldest.
    for i in 100..200u32 {
        let id = format!("id{i}");
        s.put(id.as_bytes(), &entry(u64::from(i + 300), b"s"), 150)
            .unwrap();
    }
    assert_eq!(s.len(), 150);
    check(&s, 200);
    // A replacement of the oldest entry under a lowered bound: the put
    // evicts the very entry it replaces, then stores it anew.
    let oldest = s.by_age.first_key_value().unwrap().key().unwrap();
    let oldest_id = oldest[TS_LEN..].to_vec();
    let put = s.put(&oldest_id, &entry(1_000, b"t"), 120).unwrap();
    assert!(put.evicted > 0 && !put.inserted, "{put:?}");
    assert_eq!(s.len(), 120);
    check(&s, 200);
    for i in (0..200u32).step_by(7) {
        s.delete(format!("id{i}").as_bytes()).unwrap();
    }
    check(&s, 200);
    s.sweep_before(200, 40).unwrap();
    check(&s, 200);
    s.evict_to(50).unwrap();
    check(&s, 200);
    drop(s);
    // Rebuilt by the walk that counts the entries...
    let s = open_in(&tmp);
    assert_eq!(s.len(), 50);
    check(&s, 200);
    drop(s);
    // ... or from the age index when the count is known.
    let known = OpenOptions {
        known_entries: Some(50),
        ..keep()
    };
    let s = FjallStore::open(&tmp.path().join("c.fjall"), known).unwrap();
    check(&s, 200);
    s.clear().unwrap();
    check(&s, 200);
    s.put(b"id3", &entry(1, b"s"), 0).unwrap();
    check(&s, 200);
}

#[test]
fn dangling_index_keys_are_dropped_without_counting() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open_in(&tmp);
    // Index keys with no record, with a record of another time, and too
    // short to hold a timestamp.
    s.by_age.insert(age_key(1, b"ghost"), Vec::new()).unwrap();
    s.put(b"moved", &entry(50, b"m"), 0).unwrap();
    s.by_age.insert(age_key(2, b"moved"), Vec::new()).unwrap();
    s.by_age.insert(b"\0".to_vec(), Vec::new()).unwrap();
    s.put(b"a", &entry(10, b"a"), 0).unwrap();
    s.put(b"b", &entry(20, b"b"), 0).unwrap();
    assert_eq!(s.len(), 3);
    // The three dangling keys sort first; eviction skips them.
    assert_eq!(s.evict_to(s.len() - 1).unwrap(), 1);
    assert_eq!(s.get(b"a").unwrap(), None);
    assert_eq!(s.len(), 2);
    assert_eq!(s.by_age.iter().count(), 2);
    assert_eq!(s.get(b"moved").unwrap(), Some(entry(50, b"m")));
}

#[test]
fn malformed_record_met_by_a_scan_is_removed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open_in(&tmp);
    s.sessions.insert(session_key(b"bad"), vec![1, 2]).unwrap();
    s.by_age.insert(age_key(1, b"bad"), Vec::new()).unwrap();
    s.by_age.insert(age_key(2, b"bad"), Vec::new()).unwrap();
    s.len.fetch_add(1, Ordering::Relaxed); // as counted at open
    s.put(b"good", &entry(3, b""), 0).unwrap();
    let step = s.sweep_before(10, 10).unwrap();
    assert_eq!(
        step,
        SweepStep {
            removed: 2,
            more: false
        }
    );
    assert!(s.is_empty());
    assert_eq!(s.sessions.iter().count(), 0);
}

#[test]
fn sweep_work_is_bounded_by_dangling_keys_too() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open_in(&tmp);
    for i in 0..5u8 {
        s.by_age.insert(age_key(1, &[i]), Vec::new()).unwrap();
    }
    s.put(b"real", &entry(2, b""), 0).unwrap();
    let step = s.sweep_before(10, 3).unwrap();
    assert_eq!(
        step,
        SweepStep {
            removed: 0,
            more: true
        }
    );
    let step = s.sweep_before(10, 3).unwrap();
    assert_eq!(
        step,
        SweepStep {
            removed: 1,
            more: false
        }
    );
    assert!(s.is_empty());
    assert_eq!(s.by_age.iter().count(), 0);
}

#[test]
fn creates_the_directory_with_mode_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new.fjall");
    let s = FjallStore::open(&dir, keep()).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(s.path(), dir);
}

#[test]
fn missing_parent_is_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("no/such/parent.fjall");
    let err = FjallStore::open(&dir, keep()).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
}

#[test]
fn refuses_a_foreign_directory_and_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("smtpd_scache.db"), b"x").unwrap();
    let err = FjallStore::open(tmp.path(), keep()).unwrap_err();
    assert!(err.to_string().contains("holds no fjall database"), "{err}");
    assert!(!tmp.path().join("version").exists());
    let file = tmp.path().join("smtpd_scache.db");
    let err = FjallStore::open(&file, keep()).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn an_existing_empty_directory_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let s = FjallStore::open(tmp.path(), keep()).unwrap();
    s.put(b"a", &entry(1, b""), 0).unwrap();
    drop(s);
    let s = FjallStore::open(tmp.path(), keep()).unwrap();
    assert_eq!(s.len(), 1);
}

#[test]
fn flush_and_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open_in(&tmp);
    s.put(b"a", &entry(1, &[7; 1000]), 0).unwrap();
    s.flush().unwrap();
    let st = s.stats();
    assert_eq!(st.entries, 1);
    assert!(st.bytes > 0, "{st:?}");
}

#[test]
fn error_mapping_keeps_io_and_lock_apart() {
    let p = Path::new("/x");
    let io = map_err(p, fjall::Error::Io(std::io::Error::other("disk")));
    assert!(matches!(io, StoreError::Io { .. }));
    assert!(matches!(
        map_err(p, fjall::Error::Locked),
        StoreError::Locked { .. }
    ));
    let poisoned = map_err(p, fjall::Error::Poisoned);
    assert!(matches!(poisoned, StoreError::Poisoned { .. }));
}

#[test]
fn fjall_errors_are_classified() {
    use crate::store::error::{Lasting, OpenFailure, Transient};
    use std::io::{Error as IoError, ErrorKind};
    let lasting = |r| OpenFailure::Lasting(r);
    let transient = |t| OpenFailure::Transient(t);
    let cases: Vec<(fjall::Error, OpenFailure)> = vec![
        (fjall::Error::InvalidVersion(None), lasting(Lasting::Format)),
        (fjall::Error::Unrecoverable, lasting(Lasting::Corrupt)),
        (fjall::Error::InvalidTrailer, lasting(Lasting::Corrupt)),
        (
            fjall::Error::JournalRecovery(fjall::JournalRecoveryError::ChecksumMismatch),
            lasting(Lasting::Corrupt),
        ),
        (
            fjall::Error::Storage(fjall::LsmError::InvalidHeader("Trailer")),
            lasting(Lasting::Corrupt),
        ),
        (
            fjall::Error::Storage(fjall::LsmError::InvalidVersion(9)),
            lasting(Lasting::Format),
        ),
        (
            fjall::Error::Storage(fjall::LsmError::Unrecoverable),
            lasting(Lasting::Corrupt),
        ),
        (
            fjall::Error::Storage(fjall::LsmError::Io(IoError::from(ErrorKind::UnexpectedEof))),
            lasting(Lasting::Corrupt),
        ),
        (
            fjall::Error::Io(IoError::from_raw_os_error(libc::ENOTDIR)),
            lasting(Lasting::NotAStore),
        ),
        (fjall::Error::Locked, transient(Transient::Locked)),
        (fjall::Error::Poisoned, transient(Transient::NoSpace)),
        (
            fjall::Error::Io(IoError::from_raw_os_error(libc::EACCES)),
            transient(Transient::Permission),
        ),
        (
            fjall::Error::Storage(fjall::LsmError::Io(IoError::from_raw_os_error(
                libc::ENOSPC,
            ))),
            transient(Transient::NoSpace),
        ),
        (
            fjall::Error::Io(IoError::from_raw_os_error(libc::EMFILE)),
            transient(Transient::Descriptors),
        ),
        (
            fjall::Error::Io(IoError::from_raw_os_error(libc::EIO)),
            transient(Transient::Other),
        ),
        (fjall::Error::KeyspaceDeleted, transient(Transient::Other)),
    ];
    for (e, want) in cases {
        let shown = format!("{e:?}");
        assert_eq!(classify_fjall(&e), want, "{shown}");
        // The store error it becomes classifies the same.
        assert_eq!(map_err(Path::new("/x"), e).open_failure(), want, "{shown}");
    }
}

#[test]
fn a_store_of_another_format_is_unreadable_and_an_old_one_is_adopted() {
    use crate::store::error::{Lasting, OpenFailure};
    let tmp = tempfile::tempdir().unwrap();
    let s = FjallStore::open(tmp.path(), keep()).unwrap();
    s.put(b"a", &entry(1, b"x"), 0).unwrap();
    drop(s);
    let format = tmp.path().join(formats::STORE_FORMAT_FILE);
    assert_eq!(
        std::fs::read_to_string(&format).unwrap(),
        "tlsmgr-store 1\n"
    );
    // Written before the file existed: adopted, data kept.
    std::fs::remove_file(&format).unwrap();
    let s = FjallStore::open(tmp.path(), keep()).unwrap();
    assert_eq!(s.len(), 1);
    drop(s);
    assert!(format.exists());
    for text in ["tlsmgr-store 2\n", "garbage"] {
        std::fs::write(&format, text).unwrap();
        let e = FjallStore::open(tmp.path(), keep()).unwrap_err();
        assert_eq!(
            e.open_failure(),
            OpenFailure::Lasting(Lasting::Version),
            "{e}"
        );
    }
}

#[test]
fn only_paths_named_as_ours_are_not_stores() {
    use crate::store::error::{Lasting, OpenFailure, Transient};
    let tmp = tempfile::tempdir().unwrap();
    for (name, want) in [
        ("s.fjall", OpenFailure::Lasting(Lasting::NotAStore)),
        ("data", OpenFailure::Transient(Transient::Other)),
    ] {
        let p = tmp.path().join(name);
        std::fs::write(&p, b"x").unwrap();
        let e = FjallStore::open(&p, keep()).unwrap_err();
        assert_eq!(e.open_failure(), want, "{name}: {e}");
    }
}
