//! The PRNG exchange file (spec §2.5): created 0600, 1024 bytes rewritten
//! at start, at drawn times and at shutdown; odd contents logged, mixed in
//! and rewritten; unusable paths logged and retried while seeds keep
//! flowing; a removed file recreated; symbolic links followed only into
//! data_directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;
use crate::common::prng_util;

use common::*;
use prng_util::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn exch(dir: &Path) -> PathBuf {
    dir.join("data/prng_exch")
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    tlsmgr::prng::Pool::from_os().fill(&mut v);
    v
}

#[test]
fn created_0600_with_1024_bytes_rewritten_on_schedule_and_at_shutdown() {
    let mut d = TestDaemon::start("tls_random_prng_update_period = 600s");
    let path = exch(&d.dir);
    let s = wait_status(&d, |s| s.exchange_updates == 1);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 1024);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let first = std::fs::read(&path).unwrap();
    let at = s.next_exchange.unwrap();
    assert!((T0..=T0 + 600).contains(&at), "next update {at}");
    if at > T0 {
        d.clock.set(at - 1);
        tick(&d);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(status(&d).exchange_updates, 1, "not before its time");
    }
    d.clock.set(at);
    let s = wait_status(&d, |s| s.exchange_updates == 2);
    assert_eq!(
        s.exchange_bytes_mixed, 1024,
        "the second update read the first's bytes"
    );
    let second = std::fs::read(&path).unwrap();
    assert_eq!(second.len(), 1024);
    assert_ne!(first, second);
    d.stop();
    let third = std::fs::read(&path).unwrap();
    assert_eq!(third.len(), 1024);
    assert_ne!(second, third, "shutdown writes fresh bytes");
}

/// Plants `contents` as the exchange file, starts a daemon, and checks the
/// file is mixed in, rewritten to exactly 1024 fresh bytes, and logged.
fn odd_contents(contents: &[u8], expect_log: Option<&str>) {
    let planted = contents.to_vec();
    let d = TestDaemon::start_with("", |dir| std::fs::write(exch(dir), &planted).unwrap());
    let s = wait_status(&d, |s| s.exchange_updates == 1);
    assert_eq!(s.exchange_bytes_mixed as usize, contents.len().min(1024));
    let now = std::fs::read(exch(&d.dir)).unwrap();
    assert_eq!(now.len(), 1024, "exactly 1024 bytes afterwards");
    assert_ne!(&now[..], &contents[..contents.len().min(1024)]);
    if let Some(needle) = expect_log {
        let p = exch(&d.dir).display().to_string();
        wait_log(&d, &needle.replace("PATH", &p));
    }
    let mut c = d.client();
    assert_ne!(seed(&mut c, 32), seed(&mut c, 32));
}

#[test]
fn empty_exchange_file() {
    odd_contents(
        b"",
        Some("PRNG exchange file PATH is new or empty: nothing to mix in"),
    );
}

#[test]
fn one_byte_exchange_file() {
    odd_contents(
        b"x",
        Some(
            "warning: PRNG exchange file PATH holds 1 bytes, not 1024: mixed them in, rewriting it",
        ),
    );
}

#[test]
fn one_mebibyte_exchange_file_is_cut_to_1024() {
    odd_contents(
        &random_bytes(1 << 20),
        Some("warning: PRNG exchange file PATH is 1048576 bytes long, not 1024: mixed in the first 1024, cutting it to 1024"),
    );
}

#[test]
fn garbage_exchange_file_is_mixed_in() {
    odd_contents(&random_bytes(1024), None);
    let script = b"#!/bin/sh\nrm -rf / # not entropy\n";
    odd_contents(
        script,
        Some(&format!("holds {} bytes, not 1024", script.len())),
    );
}

#[test]
fn constant_exchange_file_is_reported() {
    odd_contents(
        &[0u8; 1024],
        Some(
            "warning: PRNG exchange file PATH holds no entropy (every byte is 0x00): rewriting it",
        ),
    );
}

/// A path that cannot serve: logged as a warning, retried with backoff,
/// seeds unaffected, and the file works once the obstacle is gone.
fn unusable(setup: impl FnOnce(&Path), needle: &str, fix: impl FnOnce(&Path)) {
    let d = TestDaemon::start_with("", setup);
    let p = exch(&d.dir).display().to_string();
    let s = wait_status(&d, |s| s.exchange_failures == 1);
    assert_eq!(s.exchange_updates, 0);
    wait_log(&d, &format!("warning: {}", needle.replace("PATH", &p)));
    wait_log(
        &d,
        "retrying the PRNG exchange file in 1s; seeds keep coming from the pool",
    );
    let mut c = d.client();
    assert_eq!(seed(&mut c, 255).len(), 255);
    fix(&d.dir);
    d.clock.set(s.next_exchange.unwrap());
    wait_status(&d, |s| s.exchange_updates == 1);
    assert_eq!(std::fs::read(exch(&d.dir)).unwrap().len(), 1024);
}

#[test]
fn directory_in_place_of_the_exchange_file() {
    unusable(
        |dir| std::fs::create_dir(exch(dir)).unwrap(),
        "cannot open PRNG exchange file PATH: Is a directory",
        |dir| std::fs::remove_dir(exch(dir)).unwrap(),
    );
}

#[test]
fn fifo_in_place_of_the_exchange_file() {
    unusable(
        |dir| {
            let st = std::process::Command::new("mkfifo")
                .arg(exch(dir))
                .status()
                .unwrap();
            assert!(st.success());
        },
        "PRNG exchange file PATH is not a regular file",
        |dir| std::fs::remove_file(exch(dir)).unwrap(),
    );
}

#[test]
fn symlink_out_of_the_data_directory_is_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("precious");
    std::fs::write(&target, b"do not overwrite me").unwrap();
    let t = target.clone();
    unusable(
        move |dir| std::os::unix::fs::symlink(&t, exch(dir)).unwrap(),
        &format!(
            "PRNG exchange file PATH leads through a symbolic link to {}, outside data_directory",
            target.display()
        ),
        |dir| std::fs::remove_file(exch(dir)).unwrap(),
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"do not overwrite me");
}

#[test]
fn dangling_symlink_is_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("would-be-created");
    let t = target.clone();
    unusable(
        move |dir| std::os::unix::fs::symlink(&t, exch(dir)).unwrap(),
        "PRNG exchange file PATH is a symbolic link to nowhere: not following it",
        |dir| std::fs::remove_file(exch(dir)).unwrap(),
    );
    assert!(!target.exists(), "nothing created through the link");
}

#[test]
fn symlink_inside_the_data_directory_is_followed() {
    let d = TestDaemon::start_with("", |dir| {
        std::fs::write(dir.join("data/real_exch"), [1u8; 1024]).unwrap();
        std::os::unix::fs::symlink("real_exch", exch(dir)).unwrap();
    });
    wait_status(&d, |s| s.exchange_updates == 1);
    let real = std::fs::read(d.dir.join("data/real_exch")).unwrap();
    assert_eq!(real.len(), 1024);
    assert_ne!(real, vec![1u8; 1024]);
    assert!(std::fs::symlink_metadata(exch(&d.dir))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn removed_exchange_file_is_recreated() {
    let d = TestDaemon::start("");
    let path = exch(&d.dir);
    let s = wait_status(&d, |s| s.exchange_updates == 1);
    std::fs::remove_file(&path).unwrap();
    d.clock.set(s.next_exchange.unwrap());
    wait_status(&d, |s| s.exchange_updates == 2);
    wait_log(
        &d,
        "warning: PRNG exchange file was removed -- recreating it",
    );
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 1024);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let mut c = d.client();
    seed(&mut c, 32);
}

#[test]
fn locked_by_another_process_waits_then_proceeds() {
    let d = TestDaemon::start("tls_random_prng_update_period = 60s");
    let path = exch(&d.dir);
    let s = wait_status(&d, |s| s.exchange_updates == 1);
    // Hold the lock from another process (as a second tlsmgr would).
    let lock = std::process::Command::new("flock")
        .args(["-x", "-w", "5"])
        .arg(&path)
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = std::fs::read(&path).unwrap();
    d.clock.set(s.next_exchange.unwrap());
    tick(&d);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(status(&d).exchange_updates, 1, "waits while locked");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let mut c = d.client();
    seed(&mut c, 32); // seeds are not held up by the lock
    wait_status(&d, |s| s.exchange_updates == 2);
    assert_ne!(std::fs::read(&path).unwrap(), before);
    let mut lock = lock;
    assert!(lock.wait().unwrap().success());
}

#[test]
fn two_daemons_from_the_same_exchange_file_give_different_seeds() {
    let shared = random_bytes(1024);
    let (s1, s2) = (shared.clone(), shared.clone());
    let a = TestDaemon::start_with("tls_random_source =", |dir| {
        std::fs::write(exch(dir), &s1).unwrap()
    });
    let b = TestDaemon::start_with("tls_random_source =", |dir| {
        std::fs::write(exch(dir), &s2).unwrap()
    });
    wait_status(&a, |s| s.exchange_updates == 1);
    wait_status(&b, |s| s.exchange_updates == 1);
    let (mut ca, mut cb) = (a.client(), b.client());
    for n in [1, 16, 32, 255] {
        assert_ne!(seed(&mut ca, n), seed(&mut cb, n), "size {n}");
    }
    assert_ne!(
        std::fs::read(exch(&a.dir)).unwrap(),
        std::fs::read(exch(&b.dir)).unwrap()
    );
}

/// Exchange file readable by nobody but its owner's writes: needs a
/// non-root user, so as root the test reruns itself through setpriv(1) as
/// `nobody` (CI runs as root).
#[test]
fn unreadable_exchange_file() {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        unreadable_exchange_file_unprivileged();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        // Not --exact: the name is qualified by the module in the
        // gathered binary; this filter matches this one test.
        .args([
            "unreadable_exchange_file_unprivileged",
            "--ignored",
            "--nocapture",
        ])
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by unreadable_exchange_file as an unprivileged user"]
fn unreadable_exchange_file_unprivileged() {
    // SAFETY: as above.
    assert_ne!(unsafe { libc::geteuid() }, 0, "root reads everything");
    unusable(
        |dir| {
            let p = exch(dir);
            std::fs::write(&p, random_bytes(1024)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o200)).unwrap();
        },
        "cannot open PRNG exchange file PATH: Permission denied",
        |dir| {
            std::fs::set_permissions(exch(dir), std::fs::Permissions::from_mode(0o600)).unwrap();
        },
    );
}

#[test]
fn the_real_binary_saves_the_exchange_file_on_sigterm() {
    // Stock tlsmgr dies on SIGTERM without saving; ours saves on the way out.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("main.cf"), main_cf(dir, "")).unwrap();
    let sock = dir.join("tlsmgr.sock");
    let serve = crate::common::serve::ServeProcess::start_on_socket(dir, &[], &sock);
    let path = exch(dir);
    let written = || {
        std::fs::metadata(&path)
            .map(|m| m.len() == 1024)
            .unwrap_or(false)
    };
    assert!(eventually(|| sock.exists() && written()));
    let before = std::fs::read(&path).unwrap();
    let (status, log) = serve.stop_with_log();
    assert!(status.success(), "{log}");
    let after = std::fs::read(&path).unwrap();
    assert_eq!(after.len(), 1024);
    assert_ne!(before, after, "fresh bytes written at exit");
}
