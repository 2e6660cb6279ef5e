//! A tlsmgr (ours or Debian's stock one) started exactly as master(8)
//! starts it (spec §4.1): flow pipe on fds 3/4, the status socketpair on
//! fd 5, the listening socket on fd 6, `GENERATION` and `MAIL_CONFIG` in a
//! clean environment, stdin/stdout on /dev/null, stderr captured (`-V`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use command_fds::{CommandFdExt, FdMapping};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const OURS: &str = env!("CARGO_BIN_EXE_tlsmgr");

pub struct MasterChild {
    pub child: Child,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub status: Option<UnixStream>,
    dir: Option<tempfile::TempDir>,
}

/// A scratch instance: config/, queue/private/, data/ (postfix-owned).
pub fn instance(main_cf_extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["config", "queue", "queue/private", "data"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let st = Command::new("chown")
        .arg("postfix:postfix")
        .arg(root.join("data"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(
        root.join("config/main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {r}/queue\ndata_directory = {r}/data\n\
             smtpd_tls_session_cache_database = btree:{r}/data/smtpd_scache\n\
             smtp_tls_session_cache_database = btree:{r}/data/smtp_scache\n{main_cf_extra}\n",
            r = root.display()
        ),
    )
    .unwrap();
    dir
}

impl MasterChild {
    pub fn start(program: &str, args: &[&str], main_cf_extra: &str) -> MasterChild {
        Self::start_env(program, args, main_cf_extra, &[])
    }

    pub fn start_env(
        program: &str,
        args: &[&str],
        main_cf_extra: &str,
        env: &[(&str, &str)],
    ) -> MasterChild {
        Self::start_in(instance(main_cf_extra), program, args, env)
    }

    /// Starts in an instance made by [`instance`] (and then adjusted).
    pub fn start_in(
        dir: tempfile::TempDir,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> MasterChild {
        let root = dir.path().to_path_buf();
        let socket = root.join("queue/private/tlsmgr");
        // Left by a child that ran in this instance before.
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let (status_ours, status_child) = UnixStream::pair().unwrap();
        let (flow_r, flow_w) = std::io::pipe().unwrap();
        // master execs "$daemon_directory/tlsmgr": argv[0] is named tlsmgr.
        let mut cmd = Command::new(program);
        cmd.arg0("tlsmgr")
            .args(args)
            .env_clear()
            .env("MAIL_CONFIG", root.join("config"))
            .env("MAIL_LOGTAG", "postfix")
            .env("GENERATION", "17")
            .env("LANG", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.fd_mappings(vec![
            FdMapping {
                parent_fd: OwnedFd::from(flow_r),
                child_fd: 3,
            },
            FdMapping {
                parent_fd: OwnedFd::from(flow_w),
                child_fd: 4,
            },
            FdMapping {
                parent_fd: OwnedFd::from(status_child),
                child_fd: 5,
            },
            FdMapping {
                parent_fd: OwnedFd::from(listener),
                child_fd: 6,
            },
        ])
        .unwrap();
        use std::os::unix::process::CommandExt;
        let child = cmd.spawn().unwrap();
        MasterChild {
            child,
            root,
            socket,
            status: Some(status_ours),
            dir: Some(dir),
        }
    }

    /// Reads `n` 12-byte status records (within 10 s).
    pub fn status_records(&mut self, n: usize) -> Vec<(i32, u32, i32)> {
        let s = self.status.as_mut().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 12 * n];
        s.read_exact(&mut buf).unwrap();
        buf.chunks(12)
            .map(|c| {
                (
                    i32::from_ne_bytes(c[0..4].try_into().unwrap()),
                    u32::from_ne_bytes(c[4..8].try_into().unwrap()),
                    i32::from_ne_bytes(c[8..12].try_into().unwrap()),
                )
            })
            .collect()
    }

    /// Every record that arrives until the channel is quiet for `quiet`.
    pub fn drain_records(&mut self, quiet: Duration) -> Vec<(i32, u32, i32)> {
        let s = self.status.as_mut().unwrap();
        s.set_read_timeout(Some(quiet)).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64];
        loop {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        assert_eq!(buf.len() % 12, 0, "partial status record");
        buf.chunks(12)
            .map(|c| {
                (
                    i32::from_ne_bytes(c[0..4].try_into().unwrap()),
                    u32::from_ne_bytes(c[4..8].try_into().unwrap()),
                    i32::from_ne_bytes(c[8..12].try_into().unwrap()),
                )
            })
            .collect()
    }

    /// Whether more status bytes arrive within `wait`.
    pub fn status_quiet_for(&mut self, wait: Duration) -> bool {
        let s = self.status.as_mut().unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        !matches!(s.read(&mut b), Ok(n) if n > 0)
    }

    /// Reads (and drops) every status record from now on, on a thread of
    /// its own, as master does: under heavy traffic the records would
    /// otherwise fill the socket buffer and block the daemon.
    pub fn drain_status(&mut self) {
        let mut s = self.status.as_ref().unwrap().try_clone().unwrap();
        s.set_read_timeout(None).unwrap();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
        });
    }

    /// Closes the status channel as master does on reload; returns the exit
    /// status and stderr.
    pub fn close_status(&mut self) -> (ExitStatus, String) {
        // Shut down, not just closed: a drain thread may hold a clone.
        if let Some(s) = self.status.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.wait(Duration::from_secs(20))
    }

    /// Waits for exit (killing after `bound`); returns status and stderr.
    pub fn wait(&mut self, bound: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > bound {
                let _ = self.child.kill();
                panic!("tlsmgr did not exit within {bound:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (st, err)
    }

    /// The instance directory, to start another child in it once this one
    /// has exited (it is killed if it still runs).
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("directory already taken")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

impl Drop for MasterChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Owner uid and mode bits of `p`.
pub fn owner_mode(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.mode() & 0o7777)
}

/// The uid of the postfix account.
pub fn postfix_uid() -> u32 {
    let out = Command::new("id").args(["-u", "postfix"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
