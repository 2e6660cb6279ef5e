//! `-c` (chroot into queue_directory) on any store location: the path rules
//! (a path outside queue_directory is kept at the same path below it, one
//! inside is used as it is, the jail's system directories are refused, and
//! unchrooted runs are unchanged), and a chrooted master(8) child writing
//! more than 100 MiB of sessions (memtable writes, journal rotation,
//! compaction) with no failed update and no warning, all of them read back
//! after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common::child;
use crate::common::keys;
use crate::common::stock;

use bytes::Bytes;
use child::{instance, owner_mode, postfix_uid, MasterChild, OURS};
use keys::current_key;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tlsmgr::client::Client;
use tlsmgr::protocol::{Reply, Request, Status};

const CHROOTED: &[&str] = &["-l", "-t", "unix", "-u", "-c", "-V"];

fn connect(c: &MasterChild) -> Client {
    Client::connect(&c.socket, Duration::from_secs(10)).unwrap()
}

fn uid_of(pid: u32) -> u32 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn root_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/root")).unwrap()
}

fn update(c: &mut Client, id: &str, session: &[u8]) -> Reply {
    c.request(&Request::Update {
        cache_type: Bytes::from_static(b"smtpd"),
        cache_id: Bytes::copy_from_slice(id.as_bytes()),
        session: Bytes::copy_from_slice(session),
    })
    .unwrap()
}

fn lookup(c: &mut Client, id: &str) -> Reply {
    c.request(&Request::Lookup {
        cache_type: Bytes::from_static(b"smtpd"),
        cache_id: Bytes::copy_from_slice(id.as_bytes()),
    })
    .unwrap()
}

fn hit(session: &[u8]) -> Reply {
    Reply::Lookup {
        status: Status::Ok,
        session: Bytes::copy_from_slice(session),
    }
}

/// `p` (absolute) as kept below the jail `root`.
fn in_jail(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap())
}

/// Warning, fatal and panic lines, but for the harness's own: an instance's
/// main.cf sets the caches, and a test that moves them overrides that.
fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("warning:") || l.contains("fatal:") || l.contains("panic"))
        .filter(|l| !l.contains("overriding earlier entry"))
        .collect()
}

#[test]
fn outside_paths_are_kept_at_the_same_path_below_queue_directory() {
    if !stock::available() {
        return;
    }
    // The instance's caches are in data/, outside queue/: Debian's layout
    // (data_directory /var/lib/postfix, queue_directory /var/spool/postfix).
    let dir = instance("");
    let top = dir.path().to_path_buf();
    let queue = top.join("queue");
    let mut d = MasterChild::start_in(dir, OURS, CHROOTED, &[]);
    let mut c = connect(&d);
    assert_eq!(update(&mut c, "id1", b"S1"), Reply::Status(Status::Ok));
    let key = current_key(&mut c);
    let pid = d.pid();
    assert_eq!(root_of(pid), queue, "chrooted into queue_directory");
    assert_eq!(uid_of(pid), postfix_uid(), "not root");
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(warnings(&err), Vec::<&str>::new(), "{err}");
    // On disk below the jail, at the configured path.
    let store = in_jail(&queue, &top.join("data/smtpd_scache.fjall"));
    let keys = in_jail(&queue, &top.join("data/tlsmgr_ticket_keys"));
    assert!(store.join("version").exists(), "{}", store.display());
    assert_eq!(owner_mode(&store), (postfix_uid(), 0o700));
    assert_eq!(owner_mode(&keys), (postfix_uid(), 0o600));
    // The directory that holds them is mail_owner's, its parents root's.
    let holder = store.parent().unwrap();
    assert_eq!(owner_mode(holder), (postfix_uid(), 0o700));
    let mut parent = holder.parent().unwrap();
    while parent != queue {
        assert_eq!(owner_mode(parent), (0, 0o755), "{}", parent.display());
        parent = parent.parent().unwrap();
    }
    assert!(
        !top.join("data/smtpd_scache.fjall").exists(),
        "nothing at the unjailed path"
    );
    // One info line, at the first start only.
    let told = |log: &str| {
        log.lines()
            .filter(|l| l.contains("session caches and ticket keys are kept at"))
            .count()
    };
    assert_eq!(told(&err), 1, "{err}");
    assert!(err.contains(&store.display().to_string()), "{err}");

    let dir = d.take_dir();
    let mut d = MasterChild::start_in(dir, OURS, CHROOTED, &[]);
    let mut c = connect(&d);
    assert_eq!(lookup(&mut c, "id1"), hit(b"S1"), "kept across a restart");
    assert_eq!(current_key(&mut c), key);
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(told(&err), 0, "{err}");
    assert_eq!(warnings(&err), Vec::<&str>::new(), "{err}");
}

#[test]
fn paths_below_queue_directory_are_used_as_they_are() {
    if !stock::available() {
        return;
    }
    let extra = "smtpd_tls_session_cache_database = btree:$queue_directory/tlscache/smtpd_scache\n\
                 smtp_tls_session_cache_database = btree:$queue_directory/tlscache/smtp_scache\n\
                 tlsmgr_ticket_key_file = $queue_directory/tlscache/ticket_keys";
    let dir = instance(extra);
    let queue = dir.path().join("queue");
    let mut d = MasterChild::start_in(dir, OURS, CHROOTED, &[]);
    let mut c = connect(&d);
    assert_eq!(update(&mut c, "id1", b"S1"), Reply::Status(Status::Ok));
    current_key(&mut c);
    assert_eq!(root_of(d.pid()), queue);
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(warnings(&err), Vec::<&str>::new(), "{err}");
    assert!(queue.join("tlscache/smtpd_scache.fjall/version").exists());
    assert_eq!(owner_mode(&queue.join("tlscache")), (postfix_uid(), 0o700));
    assert!(queue.join("tlscache/ticket_keys").exists());
}

#[test]
fn the_jails_system_directories_are_refused() {
    if !stock::available() {
        return;
    }
    // A postfix-owned directory, so that spec §2.9 (files in a directory
    // not owned by mail_owner go to data_directory) does not move it first.
    let etc_dir = PathBuf::from(format!("/etc/tlsmgr-chroot-test-{}", std::process::id()));
    std::fs::create_dir_all(&etc_dir).unwrap();
    let st = std::process::Command::new("chown")
        .arg("postfix:postfix")
        .arg(&etc_dir)
        .status()
        .unwrap();
    assert!(st.success());
    let cache = format!(
        "smtpd_tls_session_cache_database = btree:{}/smtpd_scache",
        etc_dir.display()
    );
    for (extra, param) in [
        (cache.as_str(), "smtpd_tls_session_cache_database"),
        (
            "tlsmgr_ticket_key_file = /usr/lib/postfix/keys",
            "tlsmgr_ticket_key_file",
        ),
    ] {
        let mut d = MasterChild::start(OURS, CHROOTED, extra);
        let (st, err) = d.wait(Duration::from_secs(20));
        assert_eq!(st.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("fatal: parameter {param}: ")),
            "{err}"
        );
        assert!(err.contains("which Postfix manages"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&etc_dir);
}

#[test]
fn unchrooted_runs_are_unchanged() {
    if !stock::available() {
        return;
    }
    let dir = instance("");
    let top = dir.path().to_path_buf();
    let mut d = MasterChild::start_in(dir, OURS, &["-l", "-t", "unix", "-u", "-V"], &[]);
    let mut c = connect(&d);
    assert_eq!(update(&mut c, "id1", b"S1"), Reply::Status(Status::Ok));
    assert_eq!(root_of(d.pid()), Path::new("/"));
    assert_eq!(uid_of(d.pid()), postfix_uid());
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(warnings(&err), Vec::<&str>::new(), "{err}");
    assert!(top.join("data/smtpd_scache.fjall/version").exists());
    assert!(!top
        .join("queue")
        .join(top.strip_prefix("/").unwrap())
        .exists());
}

/// Session `n`: 2–4 KiB, recognisable.
fn session(n: u64) -> Vec<u8> {
    let len = 2048 + (n as usize * 7919) % 2048;
    let mut v: Vec<u8> = (0..len)
        .map(|i| (n.wrapping_mul(2654435761) ^ i as u64) as u8)
        .collect();
    v[..8].copy_from_slice(&n.to_be_bytes());
    v
}

#[test]
fn a_chrooted_child_writes_over_100_mib_without_a_warning() {
    if !stock::available() {
        return;
    }
    const CONNS: u64 = 8;
    const PER_CONN: u64 = 4_600; // 36 800 sessions of 3 KiB on average
    let dir = instance("tlsmgr_session_cache_max_entries = 0");
    let mut d = MasterChild::start_in(dir, OURS, CHROOTED, &[]);
    d.drain_status();
    let socket = d.socket.clone();
    let started = Instant::now();
    let writers: Vec<_> = (0..CONNS)
        .map(|w| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket, Duration::from_secs(30)).unwrap();
                let mut bytes = 0u64;
                for i in 0..PER_CONN {
                    let n = w * PER_CONN + i;
                    let s = session(n);
                    bytes += s.len() as u64;
                    let r = update(&mut c, &format!("id{n}"), &s);
                    assert_eq!(r, Reply::Status(Status::Ok), "update {n}");
                }
                bytes
            })
        })
        .collect();
    let bytes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let took = started.elapsed();
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(warnings(&err), Vec::<&str>::new(), "{err}");
    println!(
        "{} updates, {} MiB of sessions in {:.1} s, chrooted, no warning",
        CONNS * PER_CONN,
        bytes / (1024 * 1024),
        took.as_secs_f64()
    );
    assert!(bytes > 100 * 1024 * 1024, "{bytes} bytes");

    let dir = d.take_dir();
    let mut d = MasterChild::start_in(dir, OURS, CHROOTED, &[]);
    d.drain_status();
    let mut c = connect(&d);
    for n in 0..CONNS * PER_CONN {
        let r = lookup(&mut c, &format!("id{n}"));
        assert_eq!(r, hit(&session(n)), "session {n} after the restart");
    }
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(warnings(&err), Vec::<&str>::new(), "{err}");
    println!(
        "all {} sessions read back after a restart",
        CONNS * PER_CONN
    );
}

/// The admin socket of a chrooted, unprivileged child: bound before the
/// chroot at `$queue_directory/private/tlsmgr.admin`, mail_owner's, 0600,
/// and its actions work from inside the jail (a rotated key is saved there
/// and reaches `tktkey`).
#[test]
fn the_admin_socket_of_a_chrooted_child() {
    if !stock::available() {
        return;
    }
    let dir = instance("");
    let queue = dir.path().join("queue");
    let mut d = MasterChild::start_in(dir, OURS, CHROOTED, &[]);
    let admin = queue.join("private/tlsmgr.admin");
    let mut c = connect(&d);
    let key = current_key(&mut c);
    assert_eq!(owner_mode(&admin), (postfix_uid(), 0o600));
    let stats = tlsmgr::admin::stats(&admin).unwrap();
    assert_eq!(stats["caches"]["smtpd"]["enabled"], true);
    assert_eq!(stats["tickets"]["issued"], 1);
    let rotated = tlsmgr::admin::request(&admin, &tlsmgr::admin::AdminRequest::KeysRotate).unwrap();
    let new = current_key(&mut c);
    assert_ne!(new[..16], key[..16]);
    assert_eq!(
        rotated,
        format!("new current key {}\n", hex::encode(&new[..16]))
    );
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(warnings(&err), Vec::<&str>::new(), "{err}");
    assert!(
        err.contains("admin: keys rotate requested by uid 0"),
        "{err}"
    );
}
