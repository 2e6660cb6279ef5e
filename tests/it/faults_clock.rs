//! Wall-clock jumps (issue 14): a real `tlsmgr serve` process under
//! libfaketime (Debian's `faketime` package), its clock moved while it runs
//! through a timestamp file. A jump ten years forward and back must not
//! leave a key that encrypts for ten years, neither in the running daemon
//! nor in the key file a restart loads; sessions stay readable across a
//! forward jump that is shorter than their timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::keys;

use bytes::Bytes;
use keys::current_ticket_key;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tlsmgr::client::Client;
use tlsmgr::protocol::{Reply, Request, Status};
use tlsmgr::tickets::TicketKey;

const TEN_YEARS: i64 = 3650 * 86_400;
/// smtpd_tls_session_cache_timeout of the test: t = T/2 = 1800 s.
const T: i64 = 3600;

fn libfaketime() -> Option<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// libfaketime, or `None` to skip; under CI (`CI` set) its absence fails.
fn need_faketime() -> Option<PathBuf> {
    let lib = libfaketime();
    if lib.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "libfaketime is missing (apt-get install faketime)"
        );
        eprintln!("skipped: libfaketime not installed");
    }
    lib
}

use crate::common::serve;

/// A daemon whose wall clock is moved through a timestamp file.
struct Faked {
    daemon: serve::ServeProcess,
    stamp: PathBuf,
}

impl Faked {
    /// Starts `tlsmgr serve -c dir` with its wall clock at `offset` seconds
    /// from the real one (monotonic time is left alone: timers stay sane).
    fn start(lib: &Path, dir: &Path, offset: i64) -> Faked {
        let stamp = dir.join("faketime");
        set_offset(&stamp, offset);
        let daemon = serve::ServeProcess::start(
            dir,
            &[
                ("LD_PRELOAD", lib.as_os_str()),
                ("FAKETIME_TIMESTAMP_FILE", stamp.as_os_str()),
                ("FAKETIME_NO_CACHE", "1".as_ref()),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1".as_ref()),
            ],
        );
        Faked { daemon, stamp }
    }

    fn client(&self) -> Client {
        self.daemon.client()
    }

    fn jump(&self, offset: i64) {
        set_offset(&self.stamp, offset);
    }

    fn stop(self) {
        self.daemon.stop();
    }
}

/// libfaketime's relative format: `+N` / `-N` seconds.
fn set_offset(stamp: &Path, offset: i64) {
    std::fs::write(stamp, format!("{offset:+}\n")).unwrap();
}

fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn key_by_name(c: &mut Client, k: &TicketKey) -> Status {
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

/// Waits (the actor looks at the clock every second) until `cond` holds
/// for the current key.
fn wait_for_key(c: &mut Client, what: &str, cond: impl Fn(&TicketKey) -> bool) -> TicketKey {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let k = current_ticket_key(c);
        if cond(&k) {
            return k;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: current key still expires at {} (real now {})",
            k.tout_secs(),
            real_now()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::write(
        d.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n\
             smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
             smtpd_tls_session_cache_timeout = {T}s\n",
            d = d.display()
        ),
    )
    .unwrap();
    tmp
}

#[test]
fn a_jump_forward_and_back_pins_no_key_in_the_daemon_or_its_file() {
    let Some(lib) = need_faketime() else { return };
    let tmp = setup();
    let dir = tmp.path();
    let d = Faked::start(&lib, dir, 0);
    let mut c = d.client();
    let before = current_ticket_key(&mut c);
    let lifetime = before.tout_secs() - real_now();
    assert!(
        (0..=T / 2).contains(&lifetime),
        "a fresh key encrypts for at most t: {lifetime} s"
    );

    // Ten years ahead: the ring is far behind the clock and starts over.
    d.jump(TEN_YEARS);
    let future = wait_for_key(&mut c, "after the forward jump", |k| {
        k.tout_secs() > real_now() + TEN_YEARS - T
    });
    assert_ne!(future.name, before.name);

    // Back to the real time: within a tick the future key is gone, from
    // encryption and from decryption, and the new one has a normal life.
    d.jump(0);
    let t0 = Instant::now();
    let after = wait_for_key(&mut c, "after the jump back", |k| {
        k.tout_secs() <= real_now() + T
    });
    println!(
        "jump back: key with a normal lifetime after {:?}; it expires in {} s",
        t0.elapsed(),
        after.tout_secs() - real_now()
    );
    assert_ne!(after.name, future.name);
    assert_eq!(key_by_name(&mut c, &future), Status::Err);
    drop(c);
    d.stop();

    // The key file holds no key from the future either: a restart at the
    // real time serves the same, normal key.
    let d = Faked::start(&lib, dir, 0);
    let mut c = d.client();
    let restarted = current_ticket_key(&mut c);
    assert!(
        restarted.tout_secs() <= real_now() + T,
        "key from the file expires in {} s",
        restarted.tout_secs() - real_now()
    );
    assert_eq!(key_by_name(&mut c, &future), Status::Err);
    drop(c);
    d.stop();
}

#[test]
fn a_key_file_written_ten_years_ahead_is_not_trusted_at_start() {
    let Some(lib) = need_faketime() else { return };
    let tmp = setup();
    let dir = tmp.path();
    // A daemon whose clock stood ten years ahead saved its keys, and exited.
    let d = Faked::start(&lib, dir, TEN_YEARS);
    let mut c = d.client();
    let future = current_ticket_key(&mut c);
    assert!(future.tout_secs() > real_now() + TEN_YEARS - T);
    drop(c);
    d.stop();
    assert!(dir.join("data/tlsmgr_ticket_keys").exists());

    // Started again at the right time, it drops those keys when loading.
    let d = Faked::start(&lib, dir, 0);
    let mut c = d.client();
    let now_key = current_ticket_key(&mut c);
    assert_ne!(now_key.name, future.name);
    assert!(now_key.tout_secs() <= real_now() + T);
    assert_eq!(key_by_name(&mut c, &future), Status::Err);
    drop(c);
    d.stop();
}

#[test]
fn sessions_survive_a_forward_jump_shorter_than_their_timeout_and_expire_after_a_longer_one() {
    let Some(lib) = need_faketime() else { return };
    let tmp = setup();
    let d = Faked::start(&lib, tmp.path(), 0);
    let mut c = d.client();
    let update = |c: &mut Client, id: &str| {
        let r = c
            .request(&Request::Update {
                cache_type: Bytes::from_static(b"smtpd"),
                cache_id: Bytes::copy_from_slice(id.as_bytes()),
                session: Bytes::from_static(b"session bytes"),
            })
            .unwrap();
        assert_eq!(r, Reply::Status(Status::Ok));
    };
    let found = |c: &mut Client, id: &str| match c
        .request(&Request::Lookup {
            cache_type: Bytes::from_static(b"smtpd"),
            cache_id: Bytes::copy_from_slice(id.as_bytes()),
        })
        .unwrap()
    {
        Reply::Lookup { status, .. } => status == Status::Ok,
        other => panic!("lookup: {other:?}"),
    };
    update(&mut c, "a");
    d.jump(T / 2);
    assert!(found(&mut c, "a"), "half the timeout later");
    d.jump(T + 60);
    assert!(!found(&mut c, "a"), "past the timeout");
    // And back: an entry stored in the future is not served forever, but
    // it is not lost either while within its timeout of the real time.
    update(&mut c, "b");
    d.jump(0);
    assert!(found(&mut c, "b"));
    drop(c);
    d.stop();
}
