//! Out of file descriptors, as a real `tlsmgr serve` process with a low
//! `RLIMIT_NOFILE` (soft and hard, so that raising cannot help): more
//! clients than descriptors. Each client beyond the limit is served, in
//! place of the connection idle the longest, which the daemon closes (a
//! Postfix client reconnects at its next request); a client that keeps
//! asking is never the one closed, however old; nobody hangs; the shortage
//! is logged once (not 10 times a second), and new clients are served
//! without replacing anyone as soon as others leave. Also: the soft limit
//! is raised to the hard one at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::serve;

use bytes::Bytes;
use serve::ServeProcess;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tlsmgr::protocol::{Reply, Request, Status};

const ANNOUNCEMENT: usize = 26;
const SEED_REQUEST: &[u8] = b"request\0seed\0size\x008\0\0";

/// `tlsmgr serve` in `dir` with RLIMIT_NOFILE set to `soft`/`hard` before
/// exec; its log in `dir/stderr.log`.
fn serve(dir: &Path, soft: u64, hard: u64) -> ServeProcess {
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n\
             smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
             tlsmgr_io_threads = 2\n",
            d = dir.display()
        ),
    )
    .unwrap();
    ServeProcess::start_with(dir, ServeProcess::NO_ENV, |cmd| {
        // SAFETY: setrlimit(2) is async-signal-safe and reads only the
        // struct on this closure's stack; nothing else runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

fn stderr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
}

/// What happened to one new client within `wait`.
#[derive(Debug)]
enum Outcome {
    /// Got the announcement: being served.
    Served(UnixStream),
    /// Closed before the announcement.
    Closed,
    /// Neither within `wait`.
    Hung,
}

fn connect(dir: &Path, wait: Duration) -> Outcome {
    let Ok(mut s) = UnixStream::connect(dir.join("private/tlsmgr")) else {
        return Outcome::Closed;
    };
    s.set_read_timeout(Some(wait)).unwrap();
    let mut ann = [0u8; ANNOUNCEMENT];
    match s.read(&mut ann) {
        Ok(0) => Outcome::Closed,
        Ok(n) => match s.read_exact(&mut ann[n..]) {
            Ok(()) => Outcome::Served(s),
            Err(_) => Outcome::Hung,
        },
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Outcome::Hung,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::Hung,
        Err(_) => Outcome::Closed,
    }
}

/// A seed request on an open connection; true when answered.
fn seed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(SEED_REQUEST).is_err() {
        return false;
    }
    // status 0, seed (8 bytes, base64) and the terminator.
    let mut reply = [0u8; 64];
    matches!(s.read(&mut reply), Ok(n) if n > 0 && reply.starts_with(b"status\x000\0"))
}

/// True when the daemon has closed `s` (end of file waiting), false
/// while it is open and quiet.
fn closed_by_daemon(s: &UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let closed = matches!((&*s).read(&mut buf), Ok(0));
    s.set_nonblocking(false).unwrap();
    closed
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn more_clients_than_descriptors_replace_the_longest_idle_and_log_once() {
    const LIMIT: u64 = 96;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let child = serve(dir, LIMIT, LIMIT);
    let pid = child.pid();
    println!(
        "daemon holds {} descriptors at start, limit {LIMIT}",
        open_fds(pid)
    );
    // The oldest connection of all, which keeps asking: never replaced.
    let Outcome::Served(mut active) = connect(dir, Duration::from_secs(3)) else {
        panic!("first client not served: {}", stderr(dir));
    };

    // Clients one after the other until well past the limit, then new
    // clients for two more seconds (the load that used to log an error 10
    // times a second), the active client asking between them.
    let mut served = Vec::new();
    let (mut closed, mut hung, mut answered, mut asked) = (0, 0, 0, 0);
    let mut new_client = |served: &mut Vec<UnixStream>| match connect(dir, Duration::from_secs(3)) {
        Outcome::Served(s) => served.push(s),
        Outcome::Closed => closed += 1,
        Outcome::Hung => hung += 1,
    };
    let start = Instant::now();
    for _ in 0..LIMIT + 40 {
        new_client(&mut served);
        asked += 1;
        answered += usize::from(seed(&mut active));
    }
    let flood = Instant::now();
    while flood.elapsed() < Duration::from_secs(2) {
        new_client(&mut served);
        asked += 1;
        answered += usize::from(seed(&mut active));
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = stderr(dir);
    let errors = log.matches("error: accept connection:").count();
    let total = served.len() + closed + hung;
    // The daemon closed the longest-idle ones: a run of the oldest, and
    // every newer one is still open and answers.
    let replaced = served.iter().take_while(|s| closed_by_daemon(s)).count();
    let still_closed = served[replaced..]
        .iter()
        .filter(|s| closed_by_daemon(s))
        .count();
    let open_answered = served[replaced..]
        .iter_mut()
        .map(seed)
        .filter(|&ok| ok)
        .count();
    println!(
        "{total} new clients in {:?}: {} served, {closed} closed at once, {hung} hung; \
         {replaced} of the oldest idle ones closed by the daemon, {open_answered} newer ones open and answered; \
         the active first client answered {answered} of {asked}; daemon at {} descriptors; {errors} accept error lines",
        start.elapsed(),
        served.len(),
        open_fds(pid)
    );
    assert_eq!(hung, 0, "{log}");
    assert_eq!(closed, 0, "idle connections were there to replace: {log}");
    assert_eq!(answered, asked, "the active client was cut off: {log}");
    assert!(replaced > 40, "{replaced} replaced: {log}");
    assert_eq!(
        still_closed, 0,
        "a newer one closed while older ones stayed"
    );
    assert_eq!(open_answered, served.len() - replaced, "{log}");
    // One line for the whole shortage.
    assert_eq!(errors, 1, "{log}");
    assert!(
        log.contains(&format!(
            "error: accept connection: Too many open files (descriptor limit {LIMIT}): each new client takes the place of the longest-idle one"
        )),
        "{log}"
    );

    // Recovery: ten clients leave, ten new ones are served with nobody
    // replaced.
    let before = served.len();
    served.truncate(before - 10);
    std::thread::sleep(Duration::from_millis(200));
    let mut back = Vec::new();
    for _ in 0..10 {
        if let Outcome::Served(mut s) = connect(dir, Duration::from_secs(3)) {
            if seed(&mut s) {
                back.push(s);
            }
        }
    }
    let log = stderr(dir);
    let lost = served[replaced..]
        .iter()
        .filter(|s| closed_by_daemon(s))
        .count();
    println!(
        "after 10 left: {} of 10 new clients served, {lost} others closed",
        back.len()
    );
    assert_eq!(back.len(), 10, "{log}");
    assert_eq!(lost, 0, "{log}");
    assert!(
        log.contains("]: accept connection: descriptors available again after "),
        "{log}"
    );
    assert_eq!(log.matches("error: accept connection:").count(), 1, "{log}");
    drop(served);
    drop(child);
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let child = serve(tmp.path(), 64, 2048);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    drop(child);
    println!("{line}");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], &["2048", "2048"], "{line}");
}

/// Issue 14's case: 5 000 idle connections against a daemon at a 1024
/// descriptor limit, while a well-behaved client that connected first
/// keeps asking for seeds. It is answered during the flood as before it
/// (every request; the latencies are printed, not asserted: speed belongs
/// to the benches), although it is the oldest connection; every idle
/// client is served, the oldest idle ones are closed to make room, none
/// hangs, and once the idle clients have gone new clients are served
/// again.
#[test]
fn five_thousand_idle_clients_at_1024_descriptors() {
    const LIMIT: u64 = 1024;
    const IDLE: usize = 5000;
    // This process holds the idle clients' ends: give it room.
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit(2) read and write only `own`.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut own);
        if own.rlim_max < 2 * IDLE as u64 {
            own.rlim_max = 2 * IDLE as u64; // raising the hard limit needs root
        }
        own.rlim_cur = own.rlim_max;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &own),
            0,
            "cannot raise this test's descriptor limit: {}",
            std::io::Error::last_os_error()
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let child = serve(dir, LIMIT, LIMIT);
    let pid = child.pid();
    let Outcome::Served(mut good) = connect(dir, Duration::from_secs(3)) else {
        panic!("the well-behaved client was not served");
    };
    let sample = |s: &mut UnixStream, n: usize| -> Vec<Duration> {
        let mut v: Vec<Duration> = (0..n)
            .map(|_| {
                let t = Instant::now();
                assert!(seed(s), "a seed request was not answered: {}", stderr(dir));
                t.elapsed()
            })
            .collect();
        v.sort();
        v
    };
    let pct = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let before = sample(&mut good, 500);

    // The flood, from another thread, while the good client goes on.
    let d = dir.to_path_buf();
    let flood = std::thread::spawn(move || {
        let (mut idle, mut closed, mut hung) = (Vec::new(), 0usize, 0usize);
        for _ in 0..IDLE {
            match connect(&d, Duration::from_secs(3)) {
                Outcome::Served(s) => idle.push(s),
                Outcome::Closed => closed += 1,
                Outcome::Hung => hung += 1,
            }
        }
        (idle, closed, hung)
    });
    let mut during = Vec::new();
    while !flood.is_finished() {
        during.extend(sample(&mut good, 50));
    }
    let (idle, closed, hung) = flood.join().unwrap();
    during.extend(sample(&mut good, 200)); // with ~1000 idle clients held
    during.sort();
    let replaced = idle.iter().take_while(|s| closed_by_daemon(s)).count();
    let held = idle[replaced..]
        .iter()
        .filter(|s| !closed_by_daemon(s))
        .count();
    println!(
        "{IDLE} idle clients at limit {LIMIT}: {} served, {closed} closed at once, {hung} hung; \
         the {replaced} oldest closed later to make room, the {held} newest held; daemon at {} descriptors",
        idle.len(),
        open_fds(pid)
    );
    println!(
        "well-behaved client: before p50 {:?} p99 {:?} ({} requests); during p50 {:?} p99 {:?} ({} requests)",
        pct(&before, 0.5),
        pct(&before, 0.99),
        before.len(),
        pct(&during, 0.5),
        pct(&during, 0.99),
        during.len()
    );
    assert_eq!(hung, 0, "{}", stderr(dir));
    assert_eq!(idle.len(), IDLE, "{closed} closed at once: {}", stderr(dir));
    assert!(replaced > 0, "the limit was never reached");
    assert_eq!(replaced + held, IDLE, "not the oldest that were closed");

    // The store still has descriptors with every client slot taken: more
    // updates than one write buffer holds (8 MiB), so that a memtable is
    // flushed to a new table file and journals turn over, then a periodic
    // sync, all at the limit. A client beyond the budget replaces an idle
    // one, so this one is served.
    let free = LIMIT as usize - open_fds(pid);
    let mut store = child.client();
    let session = vec![0x5a_u8; 2048];
    let updates = 5000;
    let acked = (0..updates)
        .filter(|i| {
            let r = store.request(&Request::Update {
                cache_type: Bytes::from_static(b"smtpd"),
                cache_id: Bytes::from(format!("at-limit-{i}")),
                session: Bytes::copy_from_slice(&session),
            });
            matches!(r, Ok(Reply::Status(Status::Ok)))
        })
        .count();
    std::thread::sleep(Duration::from_millis(1500));
    let found = (0..updates)
        .step_by(50)
        .filter(|i| {
            let r = store.request(&Request::Lookup {
                cache_type: Bytes::from_static(b"smtpd"),
                cache_id: Bytes::from(format!("at-limit-{i}")),
            });
            matches!(r, Ok(Reply::Lookup { status: Status::Ok, session: s }) if s == session)
        })
        .count();
    println!(
        "at the limit ({free} descriptors free): {acked} of {updates} updates acknowledged, \
         {found} of {} sampled lookups found; daemon at {} descriptors",
        updates / 50,
        open_fds(pid)
    );
    let log = stderr(dir);
    assert_eq!(acked, updates, "{log}");
    assert_eq!(found, updates / 50, "{log}");
    let starved: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Too many open files") && !l.contains("accept connection:"))
        .collect();
    assert!(
        starved.is_empty(),
        "the daemon's own files ran out of descriptors: {starved:?}"
    );
    drop(store);

    let errors = log.matches("error: accept connection:").count();
    assert!(errors <= 2, "{errors} accept error lines:\n{log}");

    // The idle clients leave: new clients are served again.
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    let mut back = 0;
    for _ in 0..20 {
        if let Outcome::Served(mut s) = connect(dir, Duration::from_secs(3)) {
            back += usize::from(seed(&mut s));
        }
    }
    assert_eq!(back, 20, "{}", stderr(dir));
    drop(child);
}

/// Many idle admin connections at a 1024-descriptor limit: the admin
/// socket serves 16 at once and turns the rest away, so the stores keep
/// their descriptors: every update is answered OK, and accept errors, if
/// any, are logged at most once a minute.
#[test]
fn idle_admin_connections_leave_the_stores_their_descriptors() {
    const LIMIT: u64 = 1024;
    const IDLE: usize = 1100;
    const UPDATES: usize = 4000;
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit(2) read and write only `own`.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut own);
        if own.rlim_max < 4 * IDLE as u64 {
            own.rlim_max = 4 * IDLE as u64; // raising the hard limit needs root
        }
        own.rlim_cur = own.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &own), 0);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let child = serve(dir, LIMIT, LIMIT);
    let pid = child.pid();
    let admin = dir.join("private/tlsmgr.admin");
    let mut idle = Vec::new();
    let mut refused = 0usize;
    for _ in 0..IDLE {
        let s = UnixStream::connect(&admin).unwrap();
        idle.push(s);
    }
    // The 16 oldest are held (until the admin timeout); the rest were told
    // why and closed.
    std::thread::sleep(Duration::from_millis(500));
    let mut held = 0usize;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 128];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => {
                assert!(
                    buf[..n].starts_with(b"error: too many admin connections"),
                    "{}",
                    String::from_utf8_lossy(&buf[..n])
                );
                refused += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                held += 1
            }
            _ => {}
        }
    }
    let fds = open_fds(pid);
    let mut c = child.client();
    let mut failed = 0usize;
    for i in 0..UPDATES {
        let reply = c
            .request(&Request::Update {
                cache_type: Bytes::from_static(b"smtpd"),
                cache_id: Bytes::from(format!("admin-flood-{i}")),
                session: Bytes::from(vec![b'S'; 200]),
            })
            .unwrap();
        if reply != Reply::Status(Status::Ok) {
            failed += 1;
        }
    }
    let log = stderr(dir);
    let accept_errors = log
        .lines()
        .filter(|l| l.contains("admin socket: accept"))
        .count();
    println!(
        "{IDLE} idle admin connections at limit {LIMIT}: {held} held, {refused} turned away; \
         daemon at {fds} descriptors; {failed} of {UPDATES} updates failed; \
         {accept_errors} accept error lines"
    );
    assert_eq!(held, 16, "{log}");
    assert_eq!(failed, 0, "{log}");
    assert!(accept_errors <= 1, "{log}");
    assert!(!log.contains("Too many open files -- restarting"), "{log}");
    drop(idle);
    child.stop();
}
