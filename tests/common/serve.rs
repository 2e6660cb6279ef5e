//! `tlsmgr serve` as a real process, for every test that starts one:
//! [`command`] builds the command line; [`ServeProcess`] runs it with
//! extra environment (libfaketime) or arguments, its stderr appended to
//! `DIR/stderr.log`, waits until its socket answers, signals it and stops
//! it with SIGTERM (killed if a test fails first); [`run_to_exit`] runs a
//! start that must fail. Tests that time the start themselves
//! (faults_keys) or need a umask before exec (serve_permissions) spawn
//! [`command`] directly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tlsmgr::client::Client;

/// `tlsmgr serve [FLAGS] -c DIR`: every `tlsmgr serve` the tests start is
/// built here, so which binary runs and how it finds its main.cf are said
/// once; callers add what they test (`--socket`, stdio, environment, a
/// umask or uid before exec) and how they wait for it.
pub fn command(flags: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tlsmgr"));
    cmd.arg("serve").args(flags).arg("-c").arg(dir);
    cmd
}

pub struct ServeProcess {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl ServeProcess {
    /// Starts the daemon on `dir`'s main.cf with `env` added, and waits
    /// until `$queue_directory/private/tlsmgr` (queue_directory = `dir`)
    /// answers.
    pub fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(dir: &Path, env: &[(K, V)]) -> ServeProcess {
        Self::start_with(dir, env, |_| {})
    }

    /// [`ServeProcess::start`], with `customize` applied to the command
    /// before it is spawned (resource limits, more arguments).
    pub fn start_with<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        dir: &Path,
        env: &[(K, V)],
        customize: impl FnOnce(&mut Command),
    ) -> ServeProcess {
        let mut cmd = command(&[], dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        customize(&mut cmd);
        Self::spawn(cmd, dir, dir.join("private/tlsmgr"))
    }

    /// `tlsmgr serve FLAGS -c DIR --socket SOCKET`, stdin closed, waited
    /// for until `socket` answers.
    pub fn start_on_socket(dir: &Path, flags: &[&str], socket: &Path) -> ServeProcess {
        let mut cmd = command(flags, dir);
        cmd.arg("--socket").arg(socket).stdin(Stdio::null());
        Self::spawn(cmd, dir, socket.to_path_buf())
    }

    /// Spawns `cmd` with stderr appended to `DIR/stderr.log` and waits
    /// (up to 20 s) until `socket` answers.
    fn spawn(mut cmd: Command, dir: &Path, socket: PathBuf) -> ServeProcess {
        let log = dir.join("stderr.log");
        cmd.stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        ));
        let child = cmd.spawn().unwrap();
        let mut serve = ServeProcess { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Client::connect(&serve.socket, Duration::from_secs(5)).is_err() {
            assert!(
                serve.running() && Instant::now() < deadline,
                "tlsmgr serve did not start: {}",
                serve.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }

    /// Whether the daemon has not exited yet.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// No environment added (for [`ServeProcess::start`]).
    pub const NO_ENV: &'static [(&'static str, &'static str)] = &[];

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and waits for it: nothing saved, nothing flushed.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket, Duration::from_secs(10)).unwrap()
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as `postfix stop` sends; waits for the exit and returns
    /// its status and everything the daemon logged.
    pub fn stop_with_log(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid (not yet waited for) with
        // a valid signal number; no memory is shared or touched.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        let status = self.child.wait().unwrap();
        (status, self.log_text())
    }

    /// SIGTERM, and waits for the exit (state saved, stores flushed).
    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tlsmgr serve -c DIR` with `env` added, for a start that must fail:
/// waits for it to exit by itself (the test fails if it still runs after
/// `bound`) and returns its status and output.
pub fn run_to_exit<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    dir: &Path,
    env: &[(K, V)],
    bound: Duration,
) -> std::process::Output {
    run_to_exit_with(dir, env, bound, |_| {})
}

/// [`run_to_exit`], with `customize` applied to the command before it is
/// spawned (more arguments).
pub fn run_to_exit_with<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    dir: &Path,
    env: &[(K, V)],
    bound: Duration,
    customize: impl FnOnce(&mut Command),
) -> std::process::Output {
    let mut cmd = command(&[], dir);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    customize(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + bound;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tlsmgr serve still runs after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// main.cf for `tlsmgr serve` in `dir`: the smtpd cache only, with a small
/// write buffer so that a few MiB of sessions make table files (the store
/// recovery tests break and remove those files).
pub fn write_store_main_cf(dir: &Path) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "queue_directory = {d}\ndata_directory = {d}/data\n\
             smtpd_tls_session_cache_database = btree:${{data_directory}}/smtpd_scache\n\
             tlsmgr_store_write_buffer_size = 1048576\ntlsmgr_io_threads = 2\n",
            d = dir.display()
        ),
    )
    .unwrap();
}
