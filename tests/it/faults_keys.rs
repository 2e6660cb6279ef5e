//! The ticket key file under faults, on real `tlsmgr serve` processes: a
//! full disk during `tlsmgr keys rotate` and during a scheduled rotation
//! (the wall clock moved with libfaketime), then SIGKILL and a restart with
//! room; and odd things at the key file's path (a FIFO, a link to
//! /dev/zero, a 200 MB file), which must be refused unread.
//!
//! The property: no key encrypts a ticket before it is in the file, so
//! every key `tktkey` handed out still opens by name after a crash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::keys;
use crate::common::serve;
use crate::common::tmpfs;

use bytes::Bytes;
use keys::current_ticket_key;
use serve::ServeProcess;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tlsmgr::client::Client;
use tlsmgr::protocol::{Reply, Request, Status};
use tlsmgr::tickets::file::{self, Loaded};
use tlsmgr::tickets::TicketKey;
use tmpfs::Tmpfs;

const BIN: &str = env!("CARGO_BIN_EXE_tlsmgr");
const SAVE_WARNING: &str = "cannot save session ticket keys";

/// main.cf: the key file in `data` (the data_directory), the smtpd cache
/// outside it, smtpd_tls_session_cache_timeout `timeout`.
fn write_main_cf(dir: &Path, data: &Path, timeout: u32) {
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {data}\n\
             smtpd_tls_session_cache_database = btree:{d}/smtpd_scache\n\
             smtpd_tls_session_cache_timeout = {timeout}s\n",
            d = dir.display(),
            data = data.display()
        ),
    )
    .unwrap();
}

fn key_file(data: &Path) -> PathBuf {
    data.join("tlsmgr_ticket_keys")
}

/// Names of the keys in the key file.
fn names_on_disk(data: &Path) -> Vec<[u8; 16]> {
    match file::load(&key_file(data)).unwrap() {
        Loaded::Keys(ring, _) => ring.roles().map(|(_, k)| k.name).collect(),
        other => panic!("key file: {other:?}"),
    }
}

fn by_name(c: &mut Client, k: &TicketKey) -> Status {
    match c
        .request(&Request::TktKey {
            keyname: Bytes::copy_from_slice(&k.name),
        })
        .unwrap()
    {
        Reply::TktKey { status, .. } => status,
        other => panic!("tktkey by name: {other:?}"),
    }
}

/// `tktkey`, checking that the key handed out is in the file already.
fn handed_out(c: &mut Client, data: &Path, all: &mut Vec<TicketKey>) -> TicketKey {
    let k = current_ticket_key(c);
    assert!(
        names_on_disk(data).contains(&k.name),
        "key {} handed out but not in the key file",
        hex::encode(k.name)
    );
    if !all.contains(&k) {
        all.push(k);
    }
    k
}

fn save_warnings(d: &ServeProcess) -> usize {
    d.log_text()
        .lines()
        .filter(|l| l.contains("warning:") && l.contains(SAVE_WARNING))
        .count()
}

fn admin(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(&args[..1])
        .arg("-c")
        .arg(dir)
        .args(&args[1..])
        .output()
        .unwrap()
}

fn save_failures(dir: &Path) -> u64 {
    let o = admin(dir, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["tickets"]["save_failures"].as_u64().unwrap()
}

#[test]
fn keys_rotate_on_a_full_disk_fails_and_keeps_the_saved_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let Some(fs) = Tmpfs::mount(&data, 1) else {
        return;
    };
    write_main_cf(dir, &data, 3600);
    let d = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let mut c = d.client();
    let mut all = Vec::new();
    let k1 = handed_out(&mut c, &data, &mut all);

    let filler = fs.fill("filler");
    let o = admin(dir, &["keys", "rotate"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    println!("keys rotate on a full disk: {:?}: {}", o.status, err.trim());
    assert!(!o.status.success(), "keys rotate succeeded on a full disk");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(handed_out(&mut c, &data, &mut all), k1, "the key changed");
    // Again: the same cause is not warned about twice.
    assert!(!admin(dir, &["keys", "rotate"]).status.success());
    assert_eq!(handed_out(&mut c, &data, &mut all), k1);
    assert_eq!(save_warnings(&d), 1, "{}", d.log_text());
    assert!(save_failures(dir) >= 2);

    d.kill();
    std::fs::remove_file(&filler).unwrap();
    let d = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let mut c = d.client();
    for k in &all {
        assert_eq!(by_name(&mut c, k), Status::Ok, "{k:?} lost");
    }
    assert_eq!(current_ticket_key(&mut c), k1);
    // With room, the rotation goes through.
    assert!(admin(dir, &["keys", "rotate"]).status.success());
    assert_ne!(handed_out(&mut c, &data, &mut Vec::new()), k1);
    d.stop();
}

fn libfaketime() -> Option<PathBuf> {
    let found = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "libfaketime is missing (apt-get install faketime)"
        );
        eprintln!("skipped: libfaketime not installed");
    }
    found
}

fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A daemon whose wall clock is `fake - real` seconds off, through
/// libfaketime's timestamp file.
fn start_faked(lib: &Path, dir: &Path, offset: i64) -> ServeProcess {
    let stamp = dir.join("faketime");
    std::fs::write(&stamp, format!("{offset:+}\n")).unwrap();
    ServeProcess::start(
        dir,
        &[
            ("LD_PRELOAD", lib.as_os_str()),
            ("FAKETIME_TIMESTAMP_FILE", stamp.as_os_str()),
            ("FAKETIME_NO_CACHE", "1".as_ref()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".as_ref()),
        ],
    )
}

/// Moves the daemon's clock to `fake_now`.
fn jump_to(dir: &Path, fake_now: i64) {
    std::fs::write(
        dir.join("faketime"),
        format!("{:+}\n", fake_now - real_now()),
    )
    .unwrap();
}

fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// T = 120 s: a key encrypts for 59 s, and the next one, made (and saved)
/// a rotation ahead, takes over. The rotation after the disk filled up
/// cannot save its new next key: the key handed out stays one that is on
/// disk, and once there is room the retry saves the new key *before* it is
/// needed, so after SIGKILL the restarted daemon goes on with the very key
/// the first one had made next.
#[test]
fn a_scheduled_rotation_on_a_full_disk_hands_out_only_saved_keys_and_retries() {
    let Some(lib) = libfaketime() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let Some(fs) = Tmpfs::mount(&data, 1) else {
        return;
    };
    write_main_cf(dir, &data, 120);
    let d = start_faked(&lib, dir, 0);
    let mut c = d.client();
    let mut all = Vec::new();
    let k1 = handed_out(&mut c, &data, &mut all);

    let filler = fs.fill("filler");
    jump_to(dir, k1.tout_secs() + 1);
    let mut k2 = k1;
    wait_until("the scheduled rotation", 10, || {
        k2 = handed_out(&mut c, &data, &mut all);
        k2 != k1
    });
    wait_until("the save failure", 10, || save_warnings(&d) == 1);
    // Retries at 1, 2, 4 s: still one warning.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(handed_out(&mut c, &data, &mut all), k2);
    assert_eq!(save_warnings(&d), 1, "{}", d.log_text());
    assert!(save_failures(dir) >= 3, "{}", save_failures(dir));
    let made_next = |data: &Path| -> Option<TicketKey> {
        match file::load(&key_file(data)).unwrap() {
            Loaded::Keys(ring, _) => ring.next.filter(|n| n.tout_secs() > k2.tout_secs()),
            _ => None,
        }
    };
    assert_eq!(made_next(&data), None, "saved on a full disk?");

    std::fs::remove_file(&filler).unwrap();
    // The retry waits at most 8 s by now (then 16, 30).
    wait_until("the retried save", 40, || made_next(&data).is_some());
    let k3 = made_next(&data).unwrap();
    assert!(d.log_text().contains("saved session ticket keys to"));
    d.kill();

    // Restarted when k2 stops encrypting: k3, from the file.
    let d = start_faked(&lib, dir, k2.tout_secs() - real_now());
    let mut c = d.client();
    let now = k2.tout_secs();
    for k in &all {
        // Still in its decryption window (tout + T/2): must open.
        if k.tout_secs() + 60 > now + 1 {
            assert_eq!(by_name(&mut c, k), Status::Ok, "{k:?} lost");
        }
    }
    assert_eq!(current_ticket_key(&mut c), k3);
    d.stop();
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Starts `tlsmgr serve` on `dir` and measures how long until `tktkey`
/// answers OK (at most `limit`, else `None`), and its peak RSS then.
fn serve_and_time(dir: &Path, limit: Duration) -> (std::process::Child, Option<Duration>, u64) {
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let started = Instant::now();
    let mut child = crate::common::serve::command(&[], dir)
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let socket = dir.join("private/tlsmgr");
    let mut served = None;
    while started.elapsed() < limit {
        let left = limit.saturating_sub(started.elapsed());
        if let Ok(mut c) = Client::connect(&socket, left.max(Duration::from_millis(1))) {
            if let Ok(Reply::TktKey {
                status: Status::Ok, ..
            }) = c.request(&Request::TktKey {
                keyname: Bytes::new(),
            }) {
                served = Some(started.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let rss = peak_rss_kib(child.id());
    if served.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (child, served, rss)
}

#[test]
fn odd_things_at_the_key_files_path_are_refused_unread() {
    type Make = fn(&Path);
    let cases: [(&str, Make); 3] = [
        ("a FIFO", |p| {
            nix::unistd::mkfifo(
                p,
                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
            )
            .unwrap()
        }),
        ("a symbolic link", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
        ("too large", |p| {
            std::fs::write(p, vec![1u8; 200 << 20]).unwrap();
        }),
    ];
    for (what, make) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        write_main_cf(dir, &data, 3600);
        let path = key_file(&data);
        make(&path);
        let (mut child, served, rss) = serve_and_time(dir, Duration::from_secs(1));
        let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        println!("{what}: served after {served:?}, peak RSS {} KiB", rss);
        assert!(served.is_some(), "{what}: no key within 1 s\n{log}");
        assert!(rss < 64 * 1024, "{what}: peak RSS {rss} KiB\n{log}");
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("warning:")).collect();
        assert_eq!(warnings.len(), 1, "{what}: {log}");
        assert!(
            warnings[0].contains(&path.display().to_string()) && warnings[0].contains(what),
            "{what}: {}",
            warnings[0]
        );
        // Fresh keys, saved over the entry (not through it).
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(names_on_disk(&data).len(), 2);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
}

/// SIGHUP with the key file removed, then replaced by another file: the
/// keys in memory are written again each time.
#[test]
fn sighup_writes_a_replaced_or_removed_key_file_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_main_cf(dir, &data, 3600);
    let d = ServeProcess::start(dir, ServeProcess::NO_ENV);
    let mut c = d.client();
    let k = current_ticket_key(&mut c);
    let path = key_file(&data);
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };
    std::fs::remove_file(&path).unwrap();
    hup();
    wait_until("the key file written again", 10, || {
        path.exists() && names_on_disk(&data).contains(&k.name)
    });
    // Another file renamed over it (a restore from backup, say).
    let other = data.join("other");
    std::fs::write(&other, b"someone else's file").unwrap();
    std::fs::rename(&other, &path).unwrap();
    hup();
    wait_until("the replaced key file written again", 10, || {
        matches!(file::load(&path), Ok(Loaded::Keys(..))) && names_on_disk(&data).contains(&k.name)
    });
    assert_eq!(
        d.log_text().matches("was replaced or removed").count(),
        2,
        "{}",
        d.log_text()
    );
    d.stop();
}
