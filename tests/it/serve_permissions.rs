//! `tlsmgr serve` makes its socket and the directories it creates for it
//! with explicit modes (socket 0600, directories 0700), whatever the umask:
//! under umask 000 they used to be 0777/0777, and user `nobody` read the
//! current ticket key and wrote cache entries. And `--socket PATH` replaces
//! only a stale socket: a regular file (or anything else) at PATH is left
//! alone, with an error naming PATH.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const OURS: &str = env!("CARGO_BIN_EXE_tlsmgr");
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && std::env::var_os("CI").is_some() {
        panic!("CI must run the tests as root (they switch to user nobody)");
    }
    if !root {
        eprintln!("skipping: not root, cannot run a client as nobody");
    }
    root
}

/// A directory for one test that user nobody may enter (the temporary
/// directory itself is 0700), so that only the daemon's own modes stand
/// between nobody and the socket.
fn open_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        tmp.path().join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n\
             smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n",
            d = tmp.path().display()
        ),
    )
    .unwrap();
    tmp
}

/// A `tlsmgr serve` process, stopped (SIGTERM, then waited for) when
/// dropped, also when an assertion fails.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our child's pid, not reaped yet (try_wait
            // just said so), so the pid cannot belong to anyone else.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        }
        let _ = self.0.wait();
    }
}

/// `tlsmgr serve` on `socket` under umask 000, its stderr in `dir/stderr`.
fn serve(dir: &Path, socket: &Path) -> Daemon {
    let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
    let mut cmd = crate::common::serve::command(&[], dir);
    cmd.arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: umask(2) is async-signal-safe, cannot fail and touches no
    // memory; nothing else runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    Daemon(cmd.spawn().unwrap())
}

/// `tlsmgr client --socket socket tktkey` as user nobody.
fn client_as_nobody(socket: &Path) -> Output {
    let mut cmd = Command::new(OURS);
    cmd.arg("client")
        .arg("--socket")
        .arg(socket)
        .arg("tktkey")
        .stdin(Stdio::null());
    // SAFETY: setgroups/setgid/setuid are async-signal-safe system calls on
    // values owned by this closure; nothing else runs in the child between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

fn wait_for_socket(p: &Path, dir: &Path) {
    for _ in 0..200 {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "no socket at {}: {}",
        p.display(),
        std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn under_umask_000_the_socket_is_0600_in_a_0700_directory_and_nobody_cannot_connect() {
    if !is_root() {
        return;
    }
    let tmp = open_dir();
    let dir = tmp.path();
    // Control: the same client as nobody reaches a socket it may reach (a
    // socket of the test's own, 0666 in a 0755 directory), so its failure
    // below is the daemon's modes, not the test's set-up.
    let control: PathBuf = dir.join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&control).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let accept = std::thread::spawn(move || listener.accept().is_ok());
    let out = client_as_nobody(&control);
    assert!(
        accept.join().unwrap(),
        "nobody could not connect to the control socket"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );

    // The daemon makes queue/private (two new directories) and the socket.
    let socket = dir.join("queue/private/tlsmgr");
    let child = serve(dir, &socket);
    wait_for_socket(&socket, dir);
    let modes = (
        mode(&socket),
        mode(&dir.join("queue/private")),
        mode(&dir.join("queue")),
        mode(&dir.join("data")),
    );
    println!(
        "socket, private/, queue/, data/ under umask 000: {:o} {:o} {:o} {:o}",
        modes.0, modes.1, modes.2, modes.3
    );
    assert_eq!(modes, (0o600, 0o700, 0o700, 0o700));
    let out = client_as_nobody(&socket);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody got a ticket key: {out:?}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // Even with the directories opened up (a careless chmod), the socket
    // itself still keeps nobody out.
    for d in ["queue", "queue/private"] {
        std::fs::set_permissions(dir.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = client_as_nobody(&socket);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Its owner is served.
    let mut c = tlsmgr::client::Client::connect(&socket, Duration::from_secs(5)).unwrap();
    let r = c
        .request(&tlsmgr::protocol::Request::Seed { size: 8 })
        .unwrap();
    assert_eq!(r.status(), tlsmgr::protocol::Status::Ok);
    drop(child);
}

/// Runs `tlsmgr serve --socket path` and expects it to refuse at once.
fn refused(dir: &Path, path: &Path) -> String {
    let mut child = serve(dir, path);
    let mut status = None;
    for _ in 0..200 {
        status = child.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = std::fs::read_to_string(dir.join("stderr")).unwrap();
    if status.is_none() {
        drop(child);
        panic!("serve did not refuse {}: {err}", path.display());
    }
    assert!(!status.unwrap().success(), "{err}");
    err
}

#[test]
fn only_a_stale_socket_is_ever_replaced() {
    let tmp = open_dir();
    let dir = tmp.path();
    // A mistyped --socket naming a regular file.
    let file = dir.join("main.cf.bak");
    std::fs::write(&file, "precious\n").unwrap();
    let err = refused(dir, &file);
    println!("{err}");
    assert!(
        err.contains(&format!(
            "{} exists and is not a socket (a regular file) -- not removing it",
            file.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
    // A symbolic link (to that file): not followed, not removed.
    let link = dir.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let err = refused(dir, &link);
    assert!(
        err.contains("(a symbolic link) -- not removing it"),
        "{err}"
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
    // A directory.
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("x"), "x").unwrap();
    let err = refused(dir, &sub);
    assert!(err.contains("(a directory) -- not removing it"), "{err}");
    assert!(sub.join("x").exists());
    // A live socket: another daemon's, left alone.
    let live = dir.join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let err = refused(dir, &live);
    assert!(
        err.contains("another tlsmgr is serving this socket"),
        "{err}"
    );
    // A stale socket (nobody listening) is replaced, and served.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let child = serve(dir, &stale);
    let served = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        tlsmgr::client::Client::connect(&stale, Duration::from_secs(5)).is_ok()
    });
    let err = std::fs::read_to_string(dir.join("stderr")).unwrap();
    drop(child);
    assert!(served, "{err}");
}

/// The names of what `dir` holds, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A directory of user nobody's, as `data_directory` (/var/lib/postfix)
/// is mail_owner's on a Postfix host: `serve` as root makes nothing in it,
/// neither at start nor when a reload points there, where it used to make
/// root-owned 0600 files that the Postfix daemons could not open.
#[test]
fn as_root_serve_makes_no_file_in_another_users_directory() {
    if !is_root() {
        return;
    }
    let tmp = open_dir();
    let dir = tmp.path();
    let theirs = dir.join("data");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();

    // At start: refused, with the parameter, the path and the owner.
    let err = refused(dir, &dir.join("queue/private/tlsmgr"));
    println!("{err}");
    assert!(
        err.contains(&format!(
            "fatal: smtpd_tls_session_cache_database: {}/smtpd_scache.fjall is in {}, \
             which belongs to nobody, not to root",
            theirs.display(),
            theirs.display()
        )),
        "{err}"
    );
    assert!(entries(&theirs).is_empty(), "{:?}", entries(&theirs));

    // The PRNG exchange file alone is checked too.
    let cf = |data: &Path, exch: &Path| {
        std::fs::write(
            dir.join("main.cf"),
            format!(
                "queue_directory = {d}\ndata_directory = {data}\n\
                 tls_random_exchange_name = {exch}\n\
                 smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n",
                d = dir.display(),
                data = data.display(),
                exch = exch.display(),
            ),
        )
        .unwrap();
    };
    let ours = dir.join("own");
    cf(&ours, &theirs.join("prng_exch"));
    let err = refused(dir, &dir.join("queue/private/tlsmgr"));
    assert!(
        err.contains(&format!(
            "fatal: tls_random_exchange_name: {}/prng_exch is in {}, which belongs to nobody",
            theirs.display(),
            theirs.display()
        )),
        "{err}"
    );
    assert!(entries(&theirs).is_empty(), "{:?}", entries(&theirs));

    // Started on directories of its own, then a reload that points there:
    // refused once, the configuration in force stays, nothing is made.
    cf(&ours, &ours.join("prng_exch"));
    let socket = dir.join("queue/private/tlsmgr");
    let child = serve(dir, &socket);
    wait_for_socket(&socket, dir);
    let mut c = tlsmgr::client::Client::connect(&socket, Duration::from_secs(5)).unwrap();
    let update = tlsmgr::protocol::Request::Update {
        cache_type: "smtpd".into(),
        cache_id: "id1".into(),
        session: bytes::Bytes::from_static(b"session one"),
    };
    assert_eq!(
        c.request(&update).unwrap().status(),
        tlsmgr::protocol::Status::Ok
    );
    cf(&theirs, &theirs.join("prng_exch"));
    let refusal = "which belongs to nobody, not to root";
    let log = || std::fs::read_to_string(dir.join("stderr")).unwrap();
    let seen = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        log().contains(refusal)
    });
    assert!(seen, "no refusal of the reload: {}", log());
    // Long enough for a watcher that re-read main.cf in a loop to repeat it.
    std::thread::sleep(Duration::from_secs(2));
    let text = log();
    println!("{text}");
    assert_eq!(text.matches(refusal).count(), 1, "{text}");
    assert!(
        text.contains("-- keeping the current configuration"),
        "{text}"
    );
    let lookup = tlsmgr::protocol::Request::Lookup {
        cache_type: "smtpd".into(),
        cache_id: "id1".into(),
    };
    let r = c.request(&lookup).unwrap();
    assert_eq!(r.status(), tlsmgr::protocol::Status::Ok, "{r:?}");
    drop(c);
    drop(child);
    assert!(entries(&theirs).is_empty(), "{:?}", entries(&theirs));
    assert!(entries(&ours).contains(&"smtpd_scache.fjall".to_string()));
}
