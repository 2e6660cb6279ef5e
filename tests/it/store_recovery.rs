//! A store broken while the daemon was down is set aside and a fresh one
//! serves at once: garbage in fjall's `version` file, table files cut to a
//! third, the directory replaced by a regular file, a store of another
//! record format; as `tlsmgr serve`, as a chrooted master(8) child and at a
//! live reload. Each time: an update and a lookup of a new session answer
//! OK within 1 s of the daemon's first answer, exactly one warning, the old
//! store kept as `PATH.fjall.broken-<UTC time>`, at most two such copies.
//! A store that cannot be read for want of permission (the daemon as
//! mail_owner, not root, which bypasses modes) is retried, logged once,
//! served again once readable, and not set aside.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;
use crate::common::child;
use crate::common::serve;

use child::{instance, MasterChild, OURS};
use common::{b, hit, lookup, update, TestDaemon};
use serve::{write_store_main_cf as write_main_cf, ServeProcess};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tlsmgr::client::Client;
use tlsmgr::protocol::{Reply, Status};

const OK: Reply = Reply::Status(Status::Ok);

fn store_of(dir: &Path) -> PathBuf {
    dir.join("data/smtpd_scache.fjall")
}

/// Fills the store at `dir` through a real daemon (4 MiB of sessions,
/// several table files), and stops it.
fn make_store(dir: &Path) {
    write_main_cf(dir);
    let d = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let mut c = d.client();
    let session = vec![7u8; 8 * 1024];
    for i in 0..512 {
        assert_eq!(update(&mut c, "smtpd", &format!("old{i}"), &session), OK);
    }
    drop(c);
    d.stop();
    std::fs::remove_file(dir.join("stderr.log")).unwrap();
}

/// Every regular file below `p`.
fn files_below(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files_below(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// The ways a store is broken while the daemon is down.
#[derive(Clone, Copy, Debug)]
enum Breakage {
    GarbageVersion,
    TablesCutToAThird,
    RegularFile,
    OtherFormat,
}

fn break_store(store: &Path, how: Breakage) {
    match how {
        Breakage::GarbageVersion => {
            std::fs::write(store.join("version"), b"\x00garbage, not fjall").unwrap()
        }
        Breakage::TablesCutToAThird => {
            let tables: Vec<_> = files_below(&store.join("keyspaces"))
                .into_iter()
                .filter(|p| p.parent().is_some_and(|d| d.ends_with("tables")))
                .collect();
            assert!(!tables.is_empty(), "no table files in {}", store.display());
            for t in tables {
                let len = std::fs::metadata(&t).unwrap().len();
                let f = std::fs::OpenOptions::new().write(true).open(&t).unwrap();
                f.set_len(len / 3).unwrap();
            }
        }
        Breakage::RegularFile => {
            std::fs::remove_dir_all(store).unwrap();
            std::fs::write(store, b"not a store").unwrap();
        }
        Breakage::OtherFormat => {
            std::fs::write(store.join("tlsmgr-format"), b"tlsmgr-store 2\n").unwrap()
        }
    }
}

/// The set-aside copies of `store`, oldest first.
fn copies_of(store: &Path) -> Vec<PathBuf> {
    let name = store.file_name().unwrap().to_str().unwrap().to_owned();
    let mut v: Vec<_> = std::fs::read_dir(store.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{name}.broken-"))
        })
        .collect();
    v.sort();
    v
}

/// Updates and looks up a new session until both answer OK, from the
/// daemon's first answer; returns how long that took.
fn served_within(c: &mut Client, id: &str) -> Duration {
    let start = Instant::now();
    loop {
        if update(c, "smtpd", id, b"NEW") == OK && lookup(c, "smtpd", id) == hit(b"NEW") {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the cache never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("warning:") || l.contains("fatal:") || l.contains("panic"))
        .filter(|l| !l.contains("overriding earlier entry"))
        .collect()
}

fn broken_store_is_replaced(how: Breakage) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_store(dir);
    let store = store_of(dir);
    break_store(&store, how);
    let d = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let took = served_within(&mut d.client(), "new");
    assert!(
        took < Duration::from_secs(1),
        "{how:?}: served after {took:?}"
    );
    let log = d.log_text();
    d.stop();
    let w = warnings(&log);
    assert_eq!(w.len(), 1, "{how:?}: {log}");
    eprintln!("{how:?}: {}", w[0]);
    let copies = copies_of(&store);
    assert_eq!(copies.len(), 1, "{how:?}: {copies:?}");
    assert!(w[0].contains(&store.display().to_string()), "{}", w[0]);
    assert!(w[0].contains(&copies[0].display().to_string()), "{}", w[0]);
    let stamp = copies[0]
        .to_str()
        .unwrap()
        .rsplit(".broken-")
        .next()
        .unwrap();
    assert_eq!(stamp.len(), "20261207T181500Z".len(), "{stamp}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "{stamp}"
    );
    assert!(store.is_dir(), "a fresh store in place");
    assert_eq!(
        std::fs::read_to_string(store.join("tlsmgr-format")).unwrap(),
        "tlsmgr-store 1\n"
    );
}

#[test]
fn garbage_version_file() {
    broken_store_is_replaced(Breakage::GarbageVersion);
}

#[test]
fn table_files_cut_to_a_third() {
    broken_store_is_replaced(Breakage::TablesCutToAThird);
}

#[test]
fn directory_replaced_by_a_regular_file() {
    broken_store_is_replaced(Breakage::RegularFile);
}

#[test]
fn another_record_format() {
    broken_store_is_replaced(Breakage::OtherFormat);
}

#[test]
fn at_most_two_copies_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_main_cf(dir);
    let store = store_of(dir);
    let mut seen = Vec::new();
    for round in 0..3 {
        std::fs::create_dir_all(&store).unwrap();
        std::fs::write(store.join("version"), format!("garbage {round}")).unwrap();
        let d = ServeProcess::start(dir, ServeProcess::NO_ENV);
        served_within(&mut d.client(), "new");
        d.stop();
        // The fresh store of this round is broken again for the next one.
        std::fs::remove_dir_all(&store).unwrap();
        seen = copies_of(&store);
        // Names are by the second: a round within the same second gets -N.
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let kept: Vec<String> = seen
        .iter()
        .map(|p| std::fs::read_to_string(p.join("version")).unwrap())
        .collect();
    assert_eq!(kept, ["garbage 1", "garbage 2"]);
}

/// `-u`: as mail_owner (postfix), which root is not.
const CHILD: &[&str] = &["-l", "-t", "unix", "-u", "-V"];
const CHROOTED: &[&str] = &["-l", "-t", "unix", "-u", "-c", "-V"];

fn in_jail(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap())
}

fn connect(c: &MasterChild) -> Client {
    Client::connect(&c.socket, Duration::from_secs(10)).unwrap()
}

/// Waits for the child's first answer (it may still be starting).
fn first_answer(c: &mut Client) {
    let start = Instant::now();
    while c
        .request(&tlsmgr::protocol::Request::Policy {
            cache_type: b("smtpd"),
        })
        .is_err()
    {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn chrooted_master_child_replaces_a_broken_store() {
    let dir = instance("");
    let top = dir.path().to_path_buf();
    let mut d = MasterChild::start_in(dir, OURS, CHROOTED, &[]);
    let mut c = connect(&d);
    assert_eq!(update(&mut c, "smtpd", "old", b"OLD"), OK);
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    let store = in_jail(&top.join("queue"), &top.join("data/smtpd_scache.fjall"));
    assert!(store.join("version").exists(), "{}", store.display());
    break_store(&store, Breakage::GarbageVersion);

    let dir = d.take_dir();
    let mut d = MasterChild::start_in(dir, OURS, CHROOTED, &[]);
    let mut c = connect(&d);
    first_answer(&mut c);
    let took = served_within(&mut c, "new");
    assert!(took < Duration::from_secs(1), "served after {took:?}");
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    let w = warnings(&err);
    assert_eq!(w.len(), 1, "{err}");
    let copies = copies_of(&store);
    assert_eq!(copies.len(), 1, "{copies:?}");
    // The warning names the paths as the jailed process sees them.
    assert!(w[0].contains("smtpd_scache.fjall.broken-"), "{}", w[0]);
    assert_eq!(
        std::fs::read(copies[0].join("version")).unwrap(),
        b"\x00garbage, not fjall"
    );
}

#[test]
fn an_unreadable_store_is_retried_not_set_aside() {
    let dir = instance("");
    let top = dir.path().to_path_buf();
    let mut d = MasterChild::start_in(dir, OURS, CHILD, &[]);
    let mut c = connect(&d);
    assert_eq!(update(&mut c, "smtpd", "old", b"OLD"), OK);
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    let store = top.join("data/smtpd_scache.fjall");
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o000)).unwrap();

    let dir = d.take_dir();
    let mut d = MasterChild::start_in(dir, OURS, CHILD, &[]);
    d.drain_status();
    let mut c = connect(&d);
    first_answer(&mut c);
    assert_ne!(update(&mut c, "smtpd", "new", b"NEW"), OK);
    // Two retries (every 5 s), then readable again.
    std::thread::sleep(Duration::from_secs(11));
    assert_ne!(update(&mut c, "smtpd", "new", b"NEW"), OK);
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
    let start = Instant::now();
    while update(&mut c, "smtpd", "new", b"NEW") != OK {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not served again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        lookup(&mut c, "smtpd", "old"),
        hit(b"OLD"),
        "the same store"
    );
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    let w = warnings(&err);
    assert_eq!(w.len(), 1, "{err}");
    assert!(w[0].contains("Permission denied"), "{}", w[0]);
    assert!(copies_of(&store).is_empty());
}

#[test]
fn a_live_reload_to_a_broken_store_replaces_it() {
    let d = TestDaemon::start_watched("");
    let moved = d.dir.join("data/moved_scache.fjall");
    std::fs::write(&moved, b"not a store").unwrap();
    let tmp = d.dir.join("main.cf.tmp");
    std::fs::write(
        &tmp,
        d.main_cf_with("smtpd_tls_session_cache_database = btree:${data_directory}/moved_scache"),
    )
    .unwrap();
    std::fs::rename(&tmp, d.dir.join("main.cf")).unwrap();
    assert!(common::eventually(|| d
        .log
        .text()
        .contains("reload: smtpd_tls_session_cache_database")));
    let mut c = d.client();
    assert!(common::eventually(|| {
        update(&mut c, "smtpd", "new", b"NEW") == OK
            && lookup(&mut c, "smtpd", "new") == hit(b"NEW")
    }));
    let log = d.log.text();
    assert_eq!(warnings(&log).len(), 1, "{log}");
    assert!(moved.is_dir());
    assert_eq!(copies_of(&moved).len(), 1);
}
