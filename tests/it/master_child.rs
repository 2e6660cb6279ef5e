//! Our binary as a master(8) child (spec §4): started exactly as master
//! starts a daemon, it must report TAKEN/AVAIL records on fd 5 byte for byte
//! as Debian's stock tlsmgr does for the same traffic, exit 0 and save its
//! state when fd 5 closes or on SIGTERM, create its files as mail_owner,
//! drop privileges and chroot when asked, refuse bad command lines the
//! Postfix way, and die by its watchdog when stuck.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common::child;
use crate::common::stock;
use crate::common::syslog;

use child::{owner_mode, postfix_uid, MasterChild, OURS};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tlsmgr::client::Client;
use tlsmgr::protocol::{Reply, Request, Status};

fn connect(c: &MasterChild) -> Client {
    Client::connect(&c.socket, Duration::from_secs(10)).unwrap()
}

fn seed(c: &mut Client) -> Reply {
    c.request(&Request::Seed { size: 32 }).unwrap()
}

type Record = (i32, u32, i32);

/// The traffic both daemons see, in phases; returns the status records
/// each phase produced (collected until fd 5 is quiet for 400 ms).
fn status_for_traffic(program: &str) -> (u32, Vec<(&'static str, Vec<Record>)>) {
    let quiet = Duration::from_millis(400);
    let mut d = MasterChild::start(program, &["-l", "-t", "unix", "-V"], "");
    let pid = d.pid();
    let mut phases = Vec::new();
    let mut c = connect(&d);
    phases.push(("connect", d.drain_records(quiet)));
    assert!(matches!(
        seed(&mut c),
        Reply::Seed {
            status: Status::Ok,
            ..
        }
    ));
    phases.push(("seed", d.drain_records(quiet)));
    let r = c
        .request(&Request::Policy {
            cache_type: bytes::Bytes::from_static(b"smtpd"),
        })
        .unwrap();
    assert!(
        matches!(
            r,
            Reply::Policy {
                status: Status::Ok,
                ..
            }
        ),
        "{r:?}"
    );
    phases.push(("policy", d.drain_records(quiet)));
    drop(c);
    phases.push(("close", d.drain_records(quiet)));
    // A partial request, then EOF.
    let mut p = UnixStream::connect(&d.socket).unwrap();
    let mut ann = [0u8; 26];
    p.read_exact(&mut ann).unwrap();
    p.write_all(b"request\0se").unwrap();
    drop(p);
    phases.push(("partial request, close", d.drain_records(quiet)));
    // The master wakeup: `W\0`, then the daemon closes.
    let mut w = UnixStream::connect(&d.socket).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    w.write_all(b"W\0").unwrap();
    let mut rest = Vec::new();
    w.read_to_end(&mut rest).unwrap();
    assert_eq!(
        rest, b"protocol\0tlsmgr_protocol\0\0",
        "announcement, then close"
    );
    phases.push(("wakeup", d.drain_records(quiet)));
    let (st, err) = d.close_status();
    assert!(st.success(), "{program} exit {st:?}: {err}");
    (pid, phases)
}

#[test]
fn status_records_match_stock_byte_for_byte() {
    if !stock::available() {
        return;
    }
    let (stock_pid, stock) = status_for_traffic(stock::STOCK_TLSMGR);
    let (our_pid, ours) = status_for_traffic(OURS);
    // The pid is each daemon's own; the rest must be identical.
    let norm = |pid: u32, v: &[(&'static str, Vec<Record>)]| -> Vec<(&'static str, Vec<Record>)> {
        v.iter()
            .map(|(name, recs)| {
                assert!(recs.iter().all(|r| r.0 == pid as i32), "{name}: {recs:?}");
                (*name, recs.iter().map(|&(_, g, a)| (0, g, a)).collect())
            })
            .collect()
    };
    assert_eq!(norm(our_pid, &ours), norm(stock_pid, &stock));
    // GENERATION=17 is octal: 15. TAKEN = 0, AVAIL = 1.
    assert_eq!(
        ours[1].1,
        vec![(our_pid as i32, 15, 0), (our_pid as i32, 15, 1)]
    );
}

#[test]
fn closing_fd5_saves_exchange_file_and_exits_0() {
    if !stock::available() {
        return;
    }
    let mut d = MasterChild::start(OURS, &["-l", "-t", "unix", "-V"], "");
    let mut c = connect(&d);
    assert!(matches!(
        seed(&mut c),
        Reply::Seed {
            status: Status::Ok,
            ..
        }
    ));
    d.status_records(2);
    let exch = d.path("data/prng_exch");
    let at_start = std::fs::read(&exch).unwrap();
    assert_eq!(at_start.len(), 1024, "written once at start");
    assert_eq!(owner_mode(&exch), (postfix_uid(), 0o600));
    let store = d.path("data/smtpd_scache.fjall");
    assert_eq!(
        owner_mode(&store).0,
        postfix_uid(),
        "store created as mail_owner"
    );
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    let at_exit = std::fs::read(&exch).unwrap();
    assert_eq!(at_exit.len(), 1024);
    assert_ne!(at_exit, at_start, "exchange file rewritten at exit");
    assert!(
        !err.contains("warning:") && !err.contains("fatal:"),
        "{err}"
    );
    assert!(
        !err.contains("master disconnect"),
        "verbose line without -v: {err}"
    );
}

#[test]
fn mail_verbose_turns_on_verbose_logging() {
    if !stock::available() {
        return;
    }
    let env = [("MAIL_VERBOSE", "")];
    let mut d = MasterChild::start_env(OURS, &["-l", "-t", "unix", "-V"], "", &env);
    let mut c = connect(&d);
    assert!(matches!(
        seed(&mut c),
        Reply::Seed {
            status: Status::Ok,
            ..
        }
    ));
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(
        err.contains("postfix/tlsmgr: master disconnect -- exiting"),
        "{err}"
    );
}

#[test]
fn sigterm_saves_state_and_exits_0() {
    if !stock::available() {
        return;
    }
    let mut d = MasterChild::start(OURS, &["-l", "-t", "unix", "-V"], "");
    let mut c = connect(&d);
    assert!(matches!(
        seed(&mut c),
        Reply::Seed {
            status: Status::Ok,
            ..
        }
    ));
    d.status_records(2);
    let exch = d.path("data/prng_exch");
    let at_start = std::fs::read(&exch).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (st, err) = d.wait(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(
        err.contains("postfix/tlsmgr: terminating on signal 15"),
        "{err}"
    );
    assert_ne!(std::fs::read(&exch).unwrap(), at_start, "saved on SIGTERM");
}

fn proc_status_ids(pid: u32, field: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(field))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

fn chown_postfix(p: &std::path::Path) {
    std::fs::create_dir_all(p).unwrap();
    let st = std::process::Command::new("chown")
        .arg("postfix:postfix")
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn unprivileged_with_u_and_chrooted_with_c() {
    if !stock::available() {
        return;
    }
    let pf = postfix_uid();
    // Stores and the ticket key file below queue_directory, so -c can chroot.
    let extra = "smtpd_tls_session_cache_database = btree:$queue_directory/tlscache/smtpd_scache\n\
                 smtp_tls_session_cache_database = btree:$queue_directory/tlscache/smtp_scache\n\
                 tlsmgr_ticket_key_file = $queue_directory/tlscache/ticket_keys";
    let dir = child::instance(extra);
    chown_postfix(&dir.path().join("queue/tlscache"));
    let mut d = MasterChild::start_in(dir, OURS, &["-l", "-t", "unix", "-u", "-c", "-V"], &[]);
    let mut c = connect(&d);
    assert!(matches!(
        seed(&mut c),
        Reply::Seed {
            status: Status::Ok,
            ..
        }
    ));
    let session = b"session bytes".to_vec();
    let id = bytes::Bytes::from_static(b"id1");
    let ct = bytes::Bytes::from_static(b"smtpd");
    let r = c
        .request(&Request::Update {
            cache_type: ct.clone(),
            cache_id: id.clone(),
            session: session.clone().into(),
        })
        .unwrap();
    assert_eq!(r, Reply::Status(Status::Ok));
    let r = c
        .request(&Request::Lookup {
            cache_type: ct,
            cache_id: id,
        })
        .unwrap();
    assert_eq!(
        r,
        Reply::Lookup {
            status: Status::Ok,
            session: session.into()
        },
        "the store works inside the chroot, as mail_owner"
    );
    let r = c
        .request(&Request::TktKey {
            keyname: bytes::Bytes::new(),
        })
        .unwrap();
    assert!(
        matches!(
            r,
            Reply::TktKey {
                status: Status::Ok,
                ..
            }
        ),
        "{r:?}"
    );
    let pid = d.pid();
    assert_eq!(
        proc_status_ids(pid, "Uid:"),
        vec![pf; 4],
        "real, effective, saved, fs uid"
    );
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(root, d.path("queue"), "chrooted into queue_directory");
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(
        err.lines()
            .filter(|l| l.contains("warning:"))
            .all(|l| l.contains("overriding earlier entry")),
        "{err}"
    );
    let keys = d.path("queue/tlscache/ticket_keys");
    assert_eq!(
        owner_mode(&keys),
        (pf, 0o600),
        "ticket keys saved from inside the chroot"
    );
}

#[test]
fn bad_command_lines_are_fatal_the_postfix_way() {
    if !stock::available() {
        return;
    }
    for (args, want) in [
        (
            &["-t", "unix", "-V"][..],
            "postfix/tlsmgr: fatal: service tlsmgr requires a process limit of 1",
        ),
        (
            &["-l", "-x", "-V"][..],
            "postfix/tlsmgr: fatal: invalid option: x",
        ),
        (
            &["-l", "-V"][..],
            "postfix/tlsmgr: fatal: no transport type specified",
        ),
        (
            &["-l", "-t", "unix", "-V", "extra"][..],
            "postfix/tlsmgr: fatal: unexpected command-line argument: extra",
        ),
    ] {
        let mut d = MasterChild::start(OURS, args, "");
        let (st, err) = d.wait(Duration::from_secs(20));
        assert_eq!(st.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // main.cf errors are fatal too, naming file and parameter.
    {
        let mut d = MasterChild::start(
            OURS,
            &["-l", "-t", "unix", "-V"],
            "syslog_facility = nosuch",
        );
        let want = format!(
            "postfix/tlsmgr: fatal: file {}/main.cf: parameter syslog_facility: unrecognized value: nosuch",
            d.path("config").display()
        );
        let (st, err) = d.wait(Duration::from_secs(20));
        assert_eq!(st.code(), Some(1), "{err}");
        assert!(err.contains(&want), "{err}");
    }
}

#[test]
fn a_terminal_on_stdin_is_refused_unless_d() {
    if !stock::available() {
        return;
    }
    use std::process::{Command, Stdio};
    let pty = nix::pty::openpty(None, None).unwrap();
    let dir = child::instance("");
    let out = Command::new(OURS)
        .args(["-l", "-t", "unix", "-V"])
        .env("MAIL_CONFIG", dir.path().join("config"))
        .stdin(Stdio::from(pty.slave))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("postfix/tlsmgr: fatal: do not run this command by hand"),
        "{err}"
    );
    // With -d the terminal is fine; this run then stops at the missing fd 5.
    let pty2 = nix::pty::openpty(None, None).unwrap();
    let out = Command::new(OURS)
        .args(["-l", "-t", "unix", "-V", "-d"])
        .env("MAIL_CONFIG", dir.path().join("config"))
        .stdin(Stdio::from(pty2.slave))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("do not run this command by hand"), "{err}");
    // Past the terminal check, it finds no descriptors from master.
    assert!(err.contains("(not started by master?)"), "{err}");
    drop(pty.master);
    drop(pty2.master);
}

#[test]
fn watchdog_kills_a_stalled_daemon_but_not_an_idle_one() {
    if !stock::available() {
        return;
    }
    let args = ["-l", "-t", "unix", "-V", "-o", "daemon_timeout=2s"];
    let env = [(tlsmgr::daemon::connection::TEST_STALL_ENV, "1")];
    let mut d = MasterChild::start_env(OURS, &args, "", &env);
    // Idle for well over daemon_timeout: the heartbeat keeps it alive.
    let mut c = connect(&d);
    std::thread::sleep(Duration::from_millis(4500));
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "idle daemon must live"
    );
    let r = c
        .request(&Request::Policy {
            cache_type: bytes::Bytes::from_static(b"smtp"),
        })
        .unwrap();
    assert!(matches!(
        r,
        Reply::Policy {
            status: Status::Ok,
            ..
        }
    ));
    // The injected stall: a seed request blocks the event loop.
    c.send_raw(b"request\0seed\0size\x0032\0\0").unwrap();
    let (st, err) = d.wait(Duration::from_secs(20));
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("postfix/tlsmgr: fatal: watchdog timeout"),
        "{err}"
    );
}

#[test]
fn logs_to_syslog_with_ident_pid_facility_and_postfix_prefixes() {
    if !stock::available() {
        return;
    }
    let logdir = tempfile::tempdir().unwrap();
    let sock_path = logdir.path().join("log");
    // Read as syslogd does, while the daemon runs: with -v it logs more
    // than the socket queues (see `common/syslog.rs`).
    let reader = syslog::SyslogReader::bind(&sock_path);
    // service_name is a read-only parameter set from -n.
    let extra = "syslog_facility = local3\nsyslog_name = pf-${service_name}";
    let env = [("TLSMGR_TEST_SYSLOG_PATH", sock_path.to_str().unwrap())];
    let mut d = MasterChild::start_env(
        OURS,
        &["-l", "-t", "unix", "-v", "-n", "mysvc"],
        extra,
        &env,
    );
    let pid = d.pid();
    let mut c = connect(&d);
    c.send_raw(b"request\0bogus\0\0").unwrap();
    let _ = c.read_list().unwrap();
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(err.is_empty(), "nothing on stderr without -V: {err}");
    let lines = reader.finish();
    let tag = format!("pf-mysvc/tlsmgr[{pid}]: ");
    // PRI = facility | severity: local3 (19 << 3) with warning (4), debug (7).
    let warning = format!("<{}>", (19 << 3) | 4);
    let debug = format!("<{}>", (19 << 3) | 7);
    let find = |pri: &str, text: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(pri) && l.contains(&format!("{tag}{text}")))
    };
    let w = find(
        &warning,
        "warning: unknown request \"bogus\" from tlsmgr socket",
    )
    .unwrap_or_else(|| panic!("{lines:#?}"));
    // `<PRI>Mon DD HH:MM:SS tag[pid]: text`, as glibc's syslog(3) sends it.
    let stamp = &w[warning.len()..warning.len() + 16];
    assert!(
        stamp.as_bytes()[3] == b' ' && stamp.as_bytes()[6] == b' ' && stamp.ends_with(' '),
        "{w}"
    );
    assert!(
        find(&debug, "master disconnect -- exiting").is_some(),
        "-v: {lines:#?}"
    );
}

/// Spec §2.9: a file in a directory not owned by mail_owner is created in
/// data_directory instead, with the same two warnings stock logs.
#[test]
fn exchange_file_in_a_root_owned_directory_is_redirected_like_stock() {
    if !stock::available() {
        return;
    }
    let extra = "tls_random_exchange_name = $config_directory/prng_exch";
    let mut warnings = Vec::new();
    for program in [stock::STOCK_TLSMGR, OURS] {
        let mut d = MasterChild::start(program, &["-l", "-t", "unix", "-V"], extra);
        let mut c = connect(&d);
        assert!(matches!(
            seed(&mut c),
            Reply::Seed {
                status: Status::Ok,
                ..
            }
        ));
        drop(c);
        let (st, err) = d.close_status();
        assert_eq!(st.code(), Some(0), "{program}: {err}");
        assert!(!d.path("config/prng_exch").exists(), "{program}");
        assert_eq!(
            owner_mode(&d.path("data/prng_exch")),
            (postfix_uid(), 0o600),
            "{program}"
        );
        let root = d.root.display().to_string();
        warnings.push(
            err.lines()
                .filter(|l| l.contains("warning:"))
                .map(|l| l.replace(&root, "ROOT"))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        warnings[1],
        vec![
            "postfix/tlsmgr: warning: request to update file ROOT/config/prng_exch in non-postfix directory ROOT/config".to_string(),
            "postfix/tlsmgr: warning: redirecting the request to postfix-owned data_directory ROOT/data".to_string(),
        ]
    );
    assert_eq!(warnings[1], warnings[0], "same words as stock");
}

/// Live reload where it is hardest: chrooted into queue_directory and
/// running as mail_owner, main.cf is read through the directory handle
/// opened before the chroot, and the path decisions of start-up hold.
#[test]
fn live_reload_inside_the_chroot() {
    if !stock::available() {
        return;
    }
    let base = "smtpd_tls_session_cache_database = btree:$queue_directory/tlscache/smtpd_scache\n\
                smtp_tls_session_cache_database = btree:$queue_directory/tlscache/smtp_scache\n\
                tlsmgr_ticket_key_file = $queue_directory/tlscache/ticket_keys\n";
    let dir = child::instance(base);
    chown_postfix(&dir.path().join("queue/tlscache"));
    let main_cf = dir.path().join("config/main.cf");
    let original = std::fs::read_to_string(&main_cf).unwrap();
    let save = |extra: &str| {
        let tmp = main_cf.with_extension("tmp");
        std::fs::write(&tmp, format!("{original}{extra}\n")).unwrap();
        std::fs::rename(&tmp, &main_cf).unwrap();
    };
    let mut d = MasterChild::start_in(dir, OURS, &["-l", "-t", "unix", "-u", "-c", "-V"], &[]);
    let policy = |d: &MasterChild, ct: &str| {
        connect(d)
            .request(&Request::Policy {
                cache_type: bytes::Bytes::copy_from_slice(ct.as_bytes()),
            })
            .unwrap()
    };
    let policy_becomes = |d: &MasterChild, ct: &str, cachable: bool, timeout: u32| {
        let want = Reply::Policy {
            status: Status::Ok,
            cachable,
            timeout,
        };
        for _ in 0..100 {
            if policy(d, ct) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    assert!(policy_becomes(&d, "smtpd", true, 3600));
    let pid = d.pid();
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(root, d.path("queue"), "chrooted into queue_directory");

    // A new timeout, read through the handle from inside the chroot.
    save("smtpd_tls_session_cache_timeout = 7200s");
    assert!(policy_becomes(&d, "smtpd", true, 7200));

    // A new store outside the chroot is refused; the running one stays.
    let outside = d.path("data/elsewhere");
    save(&format!(
        "smtpd_tls_session_cache_timeout = 7200s\n\
         smtp_tls_session_cache_database = btree:{}",
        outside.display()
    ));
    // Then a move inside it is applied: the new store is created in the chroot.
    std::thread::sleep(Duration::from_millis(600));
    assert!(policy_becomes(&d, "smtp", true, 3600));
    save(
        "smtpd_tls_session_cache_timeout = 7200s\n\
         smtp_tls_session_cache_database = btree:$queue_directory/tlscache/smtp_moved",
    );
    let moved = d.path("queue/tlscache/smtp_moved.fjall");
    let mut appeared = false;
    for _ in 0..100 {
        if moved.is_dir() {
            appeared = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(appeared, "moved store created inside the chroot");
    assert_eq!(owner_mode(&moved).0, postfix_uid());
    assert!(policy_becomes(&d, "smtp", true, 3600));
    assert_eq!(d.pid(), pid, "no restart");

    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(
        err.contains("reload: smtpd_tls_session_cache_timeout"),
        "{err}"
    );
    // Kept at the same path below the jail, whose directory only root
    // could make: refused until the next start.
    let refused = format!(
        "{}: directory {} does not exist inside the chroot {} \
         (it is created at the next start) -- keeping the current configuration",
        outside.with_extension("fjall").display(),
        d.path("data").display(),
        d.path("queue").display()
    );
    assert!(err.contains(&refused), "{err}");
    assert!(!outside.with_extension("fjall").exists());
}

/// A reload that changes `syslog_name` and `syslog_facility` re-points
/// logging at once, without a restart.
#[test]
fn logging_follows_a_reload_of_syslog_name_and_facility() {
    if !stock::available() {
        return;
    }
    let logdir = tempfile::tempdir().unwrap();
    let sock_path = logdir.path().join("log");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let dir = child::instance("syslog_name = before\nsyslog_facility = local3");
    let main_cf = dir.path().join("config/main.cf");
    let env = [("TLSMGR_TEST_SYSLOG_PATH", sock_path.to_str().unwrap())];
    let mut d = MasterChild::start_in(dir, OURS, &["-l", "-t", "unix"], &env);
    let pid = d.pid();
    let mut lines = Vec::new();
    let wait_for = |needle: &str, lines: &mut Vec<String>| {
        let mut buf = [0u8; 4096];
        for _ in 0..100 {
            if lines.iter().any(|l| l.contains(needle)) {
                return true;
            }
            if let Ok(n) = sock.recv(&mut buf) {
                lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        false
    };
    let mut c = connect(&d);
    c.send_raw(b"request\0bogus\0\0").unwrap();
    let _ = c.read_list().unwrap();
    let before = format!("<{}>", (19 << 3) | 4);
    assert!(wait_for(
        &format!("before/tlsmgr[{pid}]: warning: unknown request"),
        &mut lines
    ));
    assert!(lines.iter().any(|l| l.starts_with(&before)), "{lines:#?}");

    let text = std::fs::read_to_string(&main_cf)
        .unwrap()
        .replace("syslog_name = before", "syslog_name = after")
        .replace("syslog_facility = local3", "syslog_facility = local4");
    let tmp = main_cf.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &main_cf).unwrap();
    assert!(
        wait_for(&format!("after/tlsmgr[{pid}]: reload: "), &mut lines),
        "{lines:#?}"
    );
    c.send_raw(b"request\0bogus\0\0").unwrap();
    let _ = c.read_list().unwrap();
    let needle = format!("after/tlsmgr[{pid}]: warning: unknown request");
    assert!(wait_for(&needle, &mut lines), "{lines:#?}");
    let after = format!("<{}>", (20 << 3) | 4);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&after) && l.contains(&needle)),
        "facility local4: {lines:#?}"
    );
    drop(c);
    let (st, err) = d.close_status();
    assert_eq!(st.code(), Some(0), "{err}");
}

/// `-o process_name=...` and `-o service_name=...` in master.cf change
/// nothing (Postfix 3.12): the names stay argv[0]'s and `-n`'s, in the log
/// tag and for main.cf and `-o` values that use them.
#[test]
fn process_and_service_name_cannot_be_overridden() {
    if !stock::available() {
        return;
    }
    for (n, service) in [(&["-n", "mysvc"][..], "mysvc"), (&[][..], "tlsmgr")] {
        let mut args = vec!["-l", "-t", "unix", "-v", "-V"];
        args.extend_from_slice(n);
        args.extend_from_slice(&[
            "-o",
            "process_name=evilproc",
            "-o",
            "service_name=evilsvc",
            "-o",
            "syslog_name=pf-$service_name-$process_name",
        ]);
        let mut d = MasterChild::start(OURS, &args, "");
        let mut c = connect(&d);
        c.send_raw(b"request\0bogus\0\0").unwrap();
        let _ = c.read_list().unwrap();
        drop(c);
        let (st, err) = d.close_status();
        assert_eq!(st.code(), Some(0), "{err}");
        // `<syslog_name>/<process name>`.
        let tag = format!("pf-{service}-tlsmgr/tlsmgr: ");
        assert!(
            err.contains(&format!(
                "{tag}warning: unknown request \"bogus\" from tlsmgr socket"
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("{tag}master disconnect -- exiting")),
            "{err}"
        );
        assert!(!err.contains("evil"), "{err}");
    }
}
