//! Debian's stock Postfix tlsmgr, started the way master(8) starts it
//! (spec §4, appendix B): listen socket on fd 6, status socketpair on fd 5,
//! flow pipe on fds 3/4, `GENERATION` in the environment, `-l -t unix`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use command_fds::{CommandFdExt, FdMapping};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const STOCK_TLSMGR: &str = "/usr/lib/postfix/sbin/tlsmgr";

/// Whether the stock daemon can run here (installed, and we are root as
/// master is). In CI (`CI` set) its absence is a failure, not a skip.
pub fn available() -> bool {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = Path::new(STOCK_TLSMGR).exists() && root;
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install Debian's postfix package and run as root");
    }
    if !ok {
        eprintln!("skipping: {STOCK_TLSMGR} not installed or not root");
    }
    ok
}

pub struct StockTlsmgr {
    pub child: Child,
    pub socket: PathBuf,
    status: Option<UnixStream>,
    _dir: tempfile::TempDir,
}

fn chown_postfix(path: &Path) {
    let st = Command::new("chown")
        .arg("postfix:postfix")
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

impl StockTlsmgr {
    /// Starts stock tlsmgr with `main_cf_extra` appended to a main.cf that
    /// puts btree caches for smtpd and smtp in a private data directory.
    pub fn start(main_cf_extra: &str) -> StockTlsmgr {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["config", "queue", "queue/private", "data"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        chown_postfix(&root.join("data"));
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
        let socket = root.join("queue/private/tlsmgr");
        let listener = UnixListener::bind(&socket).unwrap();
        let (status_ours, status_child) = UnixStream::pair().unwrap();
        let (flow_r, flow_w) = std::io::pipe().unwrap();
        let mut cmd = Command::new(STOCK_TLSMGR);
        cmd.args(["-l", "-t", "unix", "-V"])
            .env_clear()
            .env("MAIL_CONFIG", root.join("config"))
            .env("GENERATION", "17")
            .env("LANG", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
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
        let child = cmd.spawn().unwrap();
        StockTlsmgr {
            child,
            socket,
            status: Some(status_ours),
            _dir: dir,
        }
    }

    /// Closes the status channel, as master does on reload: stock exits 0.
    pub fn stop(mut self) -> String {
        self.status.take();
        self.child.wait_with_output_ref()
    }
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let st = self.wait().unwrap();
        assert!(st.success(), "stock tlsmgr exit {st:?}: {err}");
        err
    }
}

impl Drop for StockTlsmgr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
