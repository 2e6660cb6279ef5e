//! A real `redis-server` (Debian's package) for the shared-store tests: on a
//! free loopback port, persistence off, killed when dropped. In CI (`CI`
//! set) a missing binary is a failure, not a skip.
//!
//! `TLSMGR_TEST_REDIS_SERVER=PROGRAM` runs the same tests against another
//! server that takes redis-server's arguments, such as Debian 13's
//! `valkey-server` (`.ci/debian13-valkey`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server program: `TLSMGR_TEST_REDIS_SERVER`, or Debian's redis-server.
pub fn redis_server() -> String {
    std::env::var("TLSMGR_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

/// Whether redis-server can run here.
pub fn available() -> bool {
    let ok = Command::new(redis_server())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!(
            "CI must install Debian's redis-server package ({} not found)",
            redis_server()
        );
    }
    if !ok {
        eprintln!("skipping: {} not installed", redis_server());
    }
    ok
}

/// A free loopback TCP port (bound then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// With TLS: the CA certificate (PEM) its certificate is signed by.
    pub ca: Option<std::path::PathBuf>,
    /// With TLS and client authentication: a client certificate and key
    /// (PEM) from the same CA, which the server requires.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// More redis-server arguments (a replica's `--replicaof`).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one, or `None` when redis-server is not installed (outside CI).
    pub fn start() -> Option<RedisServer> {
        Self::start_with(&[])
    }

    /// One with more arguments, such as `--replicaof 127.0.0.1 PORT`.
    pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
        if !available() {
            return None;
        }
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            _dir: tempfile::tempdir().unwrap(),
            ca: None,
            client: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        Some(r)
    }

    /// One that speaks TLS only, with a certificate for 127.0.0.1 from a
    /// fresh CA (made with the openssl CLI).
    pub fn start_tls() -> Option<RedisServer> {
        Self::start_tls_with(false)
    }

    /// The same, and it refuses clients without a certificate from that CA
    /// (`tls-auth-clients yes`); [`RedisServer::client`] is one.
    pub fn start_tls_with_client_auth() -> Option<RedisServer> {
        Self::start_tls_with(true)
    }

    fn start_tls_with(client_auth: bool) -> Option<RedisServer> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let st = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "openssl {args:?}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tlsmgr test CA",
            ],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat());
        std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        let sign = |name: &str| {
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                "ext",
            ])
        };
        sign("srv");
        if client_auth {
            run(&[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "cli.key",
                    "-out",
                    "cli.csr",
                    "-subj",
                    "/CN=tlsmgr test client",
                ],
            ]
            .concat());
            sign("cli");
        }
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            ca: Some(d.join("ca.pem")),
            client: client_auth.then(|| (d.join("cli.pem"), d.join("cli.key"))),
            extra: Vec::new(),
            _dir: dir,
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(redis_server());
        match &self.ca {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some(ca) => {
                let d = ca.parent().unwrap();
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(d.join("srv.pem"))
                    .arg("--tls-key-file")
                    .arg(d.join("srv.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args([
                        "--tls-auth-clients",
                        if self.client.is_some() { "yes" } else { "no" },
                    ]);
            }
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(mut c) = self.try_conn() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        let c = match &self.ca {
            None => redis::Client::open(self.url())?,
            Some(ca) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                redis::Client::build_with_tls(
                    self.url(),
                    redis::TlsCertificates {
                        client_tls: self.client.as_ref().map(|(cert, key)| {
                            redis::ClientTlsConfig {
                                client_cert: std::fs::read(cert).unwrap(),
                                client_key: std::fs::read(key).unwrap(),
                            }
                        }),
                        root_cert: Some(std::fs::read(ca).unwrap()),
                    },
                )?
            }
        };
        c.get_connection_with_timeout(Duration::from_secs(2))
    }

    pub fn conn(&self) -> redis::Connection {
        self.try_conn().unwrap()
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// SIGSTOP: the process stays, the socket stays open, nothing answers.
    pub fn pause(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGSTOP).unwrap();
    }

    pub fn resume(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A new, empty server on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Every key and value in the database.
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut c = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
        keys.into_iter()
            .map(|k| {
                let v: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut c).unwrap_or_default();
                (k, v)
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        self.kill();
    }
}

/// The real time now, seconds (the clock the shared-store daemons start at,
/// so that they agree with Redis's `TIME`).
pub fn real_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Writes a secret file of `bytes` (mode 0600) at `path`.
pub fn write_secret(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
