//! The servers under test, each a separate process so that its CPU time and
//! peak RSS can be read from /proc:
//!
//! - ours (the binary cargo built with this bench) with the fjall store
//!   and with the memory store, started as Postfix runs it: a master(8)
//!   child, exactly as stock is started (below);
//! - ours as `tlsmgr serve` with the fjall store (`ours-serve`), and with
//!   the fjall store shared through a local `redis-server` (`ours-shared`);
//! - Debian's stock tlsmgr, started the way master(8) starts it (spec §4.1:
//!   flow pipe on fds 3/4, status socket on fd 5, listen socket on fd 6,
//!   `-l -t unix -u`, `GENERATION`, a `MAIL_CONFIG` with btree caches; the
//!   status records drained as master reads them);
//! - the ceiling: this bench binary re-executed in its minimal-server mode;
//! - on request, for A/B runs: ours with the Prometheus endpoint on and
//!   scraped (`ours-metrics`), and another build of ours (`ours-base`).

use command_fds::{CommandFdExt, FdMapping};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where Debian installs the stock daemon.
pub const STOCK_TLSMGR: &str = "/usr/lib/postfix/sbin/tlsmgr";

/// Environment variable that turns this binary into the ceiling server.
pub const CEILING_ENV: &str = "TLSMGR_BENCH_CEILING_SOCKET";

/// The kinds of server in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Ours, fjall store, as a master(8) child.
    OursFjall,
    /// Ours, memory store, as a master(8) child.
    OursMemory,
    /// Ours, fjall store, as `tlsmgr serve`.
    OursServe,
    /// Ours, fjall store, sharing through Redis.
    OursShared,
    /// Debian's tlsmgr.
    Stock,
    /// The fixed-reply server.
    Ceiling,
    /// Ours, memory store, with the Prometheus endpoint on and scraped
    /// every [`SCRAPE_INTERVAL`] (issue 12: the cost of metrics).
    OursMetrics,
    /// Another build of ours (`TLSMGR_BENCH_BASE_BIN`, e.g. one without
    /// the counters), memory store (fjall with
    /// `TLSMGR_BENCH_BASE_STORE=btree`): the baseline of an A/B run.
    OursBase,
}

/// How often `ours-metrics` is scraped (Prometheus' default is 15 s; once
/// a second is the pessimistic case).
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

impl Kind {
    /// The servers of a default run.
    pub const ALL: [Kind; 6] = [
        Kind::OursFjall,
        Kind::OursMemory,
        Kind::OursServe,
        Kind::OursShared,
        Kind::Stock,
        Kind::Ceiling,
    ];

    /// Every kind, in report order (the A/B kinds only on request).
    pub const EVERY: [Kind; 8] = [
        Kind::OursFjall,
        Kind::OursMemory,
        Kind::OursServe,
        Kind::OursShared,
        Kind::OursMetrics,
        Kind::OursBase,
        Kind::Stock,
        Kind::Ceiling,
    ];

    /// Short name, used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::OursFjall => "ours-fjall",
            Kind::OursMemory => "ours-memory",
            Kind::OursServe => "ours-serve",
            Kind::OursShared => "ours-shared",
            Kind::Stock => "stock",
            Kind::Ceiling => "ceiling",
            Kind::OursMetrics => "ours-metrics",
            Kind::OursBase => "ours-base",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::EVERY.into_iter().find(|k| k.name() == s)
    }
}

/// Whether the stock daemon can run here: installed, and we are root (as
/// master is). Under `CI` its absence is an error, as in the tests.
pub fn stock_available() -> Result<bool, String> {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = Path::new(STOCK_TLSMGR).exists() && root;
    if !ok && std::env::var_os("CI").is_some() {
        return Err(format!(
            "CI must install Debian's postfix package ({STOCK_TLSMGR}) and run as root"
        ));
    }
    Ok(ok)
}

/// A running server process.
pub struct Server {
    pub kind: Kind,
    pub child: Child,
    pub socket: PathBuf,
    /// Where the caches live (for on-disk bytes).
    pub data_dir: PathBuf,
    /// Master(8) children: our end of the status channel (closing it stops
    /// stock), drained by a thread so that the child never blocks writing
    /// to it.
    status: Option<UnixStream>,
    drainer: Option<std::thread::JoinHandle<()>>,
    log_path: PathBuf,
    /// `ours-metrics`: the scraper thread and its stop flag.
    scraper: Option<(Arc<AtomicBool>, std::thread::JoinHandle<u64>)>,
    _tmp: tempfile::TempDir,
}

/// Knobs for starting a server.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Parent directory of the server's temporary directory (default: $TMPDIR).
    pub base_dir: Option<PathBuf>,
    /// Extra main.cf lines.
    pub main_cf_extra: String,
    /// The Redis URL `ours-shared` shares through.
    pub shared_store: Option<String>,
}

/// A `redis-server` for `ours-shared`: loopback, persistence off, killed
/// when dropped.
pub struct Redis {
    child: Child,
    pub url: String,
}

impl Redis {
    /// Starts one; `Ok(None)` when redis-server is not installed (an error
    /// when `CI` is set).
    pub fn start() -> Result<Option<Redis>, String> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var_os("CI").is_some() {
                return Err("CI must install Debian's redis-server package".into());
            }
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("free port"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("start redis-server"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(Redis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        }))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tempdir(opts: &StartOptions) -> Result<tempfile::TempDir, String> {
    let r = match &opts.base_dir {
        Some(b) => tempfile::Builder::new()
            .prefix("tlsmgr-bench")
            .tempdir_in(b),
        None => tempfile::Builder::new().prefix("tlsmgr-bench").tempdir(),
    };
    r.map_err(|e| format!("temporary directory: {e}"))
}

fn io<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The path of our daemon: the `tlsmgr` binary cargo built for this bench
/// (release with `cargo bench`, debug under `cargo test`), unless
/// `TLSMGR_BENCH_OURS_BIN` names another build (for A/B experiments).
pub fn ours_binary() -> PathBuf {
    std::env::var_os("TLSMGR_BENCH_OURS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tlsmgr")))
}

impl Server {
    pub fn start(kind: Kind, opts: &StartOptions) -> Result<Server, String> {
        let tmp = tempdir(opts)?;
        let root = tmp.path().to_path_buf();
        let log_path = root.join("server.log");
        let log = || {
            std::fs::File::create(&log_path)
                .map(Stdio::from)
                .map_err(io("create log file"))
        };
        let data_dir = root.join("data");
        std::fs::create_dir_all(&data_dir).map_err(io("create data directory"))?;
        let mut metrics_port = None;
        let (child, socket) = match kind {
            Kind::Stock | Kind::OursFjall | Kind::OursMemory => {
                let mut server =
                    start_master_child(kind, tmp, &root, data_dir, log_path.clone(), opts)?;
                server.wait_ready()?;
                return Ok(server);
            }
            Kind::OursServe | Kind::OursShared | Kind::OursMetrics | Kind::OursBase => {
                // `TLSMGR_BENCH_BASE_STORE=btree` puts the baseline on the
                // fjall store, to compare two builds of the store itself.
                let base_on_disk = kind == Kind::OursBase
                    && std::env::var("TLSMGR_BENCH_BASE_STORE").as_deref() == Ok("btree");
                let db = |name: &str| match kind {
                    Kind::OursMetrics => format!("memory:{name}"),
                    Kind::OursBase if !base_on_disk => format!("memory:{name}"),
                    _ => format!("btree:{}/{name}", data_dir.display()),
                };
                let mut extra = opts.main_cf_extra.clone();
                if kind == Kind::OursShared {
                    use std::os::unix::fs::PermissionsExt;
                    let url = opts
                        .shared_store
                        .as_deref()
                        .ok_or("ours-shared needs a redis-server")?;
                    let secret = root.join("shared.key");
                    std::fs::write(&secret, [0x5au8; 32]).map_err(io("write secret"))?;
                    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
                        .map_err(io("chmod secret"))?;
                    // A site per server start: no run finds another's state.
                    let site: String = root
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                        .chars()
                        .filter(|c| c.is_ascii_alphanumeric())
                        .collect();
                    extra.push_str(&format!(
                        "\ntlsmgr_shared_store = {url}\ntlsmgr_shared_site = {site}\n\
                         tlsmgr_shared_secret_file = {}\n",
                        secret.display()
                    ));
                }
                std::fs::write(
                    root.join("main.cf"),
                    format!(
                        "queue_directory = {r}\ndata_directory = {d}\n\
                         smtpd_tls_session_cache_database = {smtpd}\n\
                         smtp_tls_session_cache_database = {smtp}\n{extra}\n",
                        r = root.display(),
                        d = data_dir.display(),
                        smtpd = db("smtpd_scache"),
                        smtp = db("smtp_scache"),
                        extra = extra,
                    ),
                )
                .map_err(io("write main.cf"))?;
                if kind == Kind::OursMetrics {
                    let port = std::net::TcpListener::bind("127.0.0.1:0")
                        .and_then(|l| l.local_addr())
                        .map_err(io("pick a port"))?
                        .port();
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(root.join("main.cf"))
                        .map_err(io("open main.cf"))?;
                    writeln!(f, "tlsmgr_metrics_listen = 127.0.0.1:{port}")
                        .map_err(io("write main.cf"))?;
                    metrics_port = Some(port);
                }
                let socket = root.join("tlsmgr.sock");
                let binary = match kind {
                    Kind::OursBase => std::env::var_os("TLSMGR_BENCH_BASE_BIN")
                        .map(PathBuf::from)
                        .ok_or("ours-base needs TLSMGR_BENCH_BASE_BIN (the baseline build)")?,
                    _ => ours_binary(),
                };
                let child = Command::new(binary)
                    .arg("serve")
                    .arg("-c")
                    .arg(&root)
                    .arg("--socket")
                    .arg(&socket)
                    .stdin(Stdio::null())
                    .stdout(log()?)
                    .stderr(log()?)
                    .spawn()
                    .map_err(io("start tlsmgr serve"))?;
                (child, socket)
            }
            Kind::Ceiling => {
                let socket = root.join("ceiling.sock");
                let exe = std::env::current_exe().map_err(io("own executable"))?;
                let child = Command::new(exe)
                    .env(CEILING_ENV, &socket)
                    .stdin(Stdio::null())
                    .stdout(log()?)
                    .stderr(log()?)
                    .spawn()
                    .map_err(io("start ceiling server"))?;
                (child, socket)
            }
        };
        let mut server = Server {
            kind,
            child,
            socket,
            data_dir,
            status: None,
            drainer: None,
            log_path,
            scraper: None,
            _tmp: tmp,
        };
        server.wait_ready()?;
        if let Some(port) = metrics_port {
            server.scraper = Some(scrape(port)?);
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the socket answers with the announcement.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited at startup ({st}): {}",
                    self.kind.name(),
                    self.log()
                ));
            }
            if let Ok(mut s) = UnixStream::connect(&self.socket) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut ann = [0u8; 26];
                if s.read_exact(&mut ann).is_ok() && ann[..] == *b"protocol\0tlsmgr_protocol\0\0" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready: {}", self.kind.name(), self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the server the way its supervisor would: SIGTERM for ours,
    /// closing the status channel for stock (master reload), SIGKILL for
    /// the ceiling. Returns the server's log.
    pub fn stop(self) -> String {
        self.stop_and_measure().0
    }

    /// Stops the server (SIGTERM for ours, a clean shutdown) and returns its
    /// log and what its caches take on disk once it has exited.
    pub fn stop_and_measure(mut self) -> (String, DiskUsage) {
        match self.kind {
            Kind::Stock => {
                // The drainer holds a clone of the socket, so dropping ours
                // is not enough: shut it down, which stock reads as EOF.
                if let Some(st) = self.status.take() {
                    let _ = st.shutdown(std::net::Shutdown::Both);
                }
            }
            // `postfix stop`: master sends its children SIGTERM.
            Kind::OursFjall
            | Kind::OursMemory
            | Kind::OursServe
            | Kind::OursShared
            | Kind::OursMetrics
            | Kind::OursBase => {
                // SAFETY: kill(2) on our own child's pid; no memory involved.
                unsafe {
                    libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
            Kind::Ceiling => {
                let _ = self.child.kill();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = self.drainer.take() {
            let _ = d.join();
        }
        if let Some((stop, t)) = self.scraper.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
        (self.log(), disk_usage(&self.data_dir))
    }
}

/// Scrapes `GET /metrics` on `port` every [`SCRAPE_INTERVAL`] until told
/// to stop; the first scrape must succeed (the endpoint is up). Returns the
/// number of scrapes.
fn scrape(port: u16) -> Result<(Arc<AtomicBool>, std::thread::JoinHandle<u64>), String> {
    let get = move || -> Result<(), String> {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", port)).map_err(io("connect /metrics"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io("set timeout"))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .map_err(io("send GET"))?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(io("read /metrics"))?;
        if body.starts_with("HTTP/1.0 200 OK") && body.contains("postfix_tlsmgr_requests_total") {
            Ok(())
        } else {
            Err(format!(
                "bad /metrics answer: {}",
                body.chars().take(200).collect::<String>()
            ))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // The listener is bound within a second of start (the supervisor's tick).
    while let Err(e) = get() {
        if Instant::now() > deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        let mut n = 1;
        while !flag.load(Ordering::Relaxed) {
            std::thread::sleep(SCRAPE_INTERVAL);
            if get().is_ok() {
                n += 1;
            }
        }
        n
    });
    Ok((stop, t))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chown_postfix(path: &Path) -> Result<(), String> {
    let st = Command::new("chown")
        .arg("postfix:postfix")
        .arg(path)
        .status()
        .map_err(io("chown"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("chown postfix {} failed", path.display()))
    }
}

/// The arguments master(8) gives tlsmgr for Debian's master.cf line
/// (`tlsmgr unix - - y 1000? 1 tlsmgr`) less `-c`, since the bench builds
/// no chroot jail: `-l` (one process), `-t unix`, `-u` (drop to
/// mail_owner); `-V` sends the log to stderr, the server's log file here.
const MASTER_CHILD_ARGS: [&str; 5] = ["-l", "-t", "unix", "-u", "-V"];

/// Starts stock tlsmgr, or ours, as master(8) does (see
/// tests/common/child.rs): the same directories, descriptors, arguments and
/// environment for both, so that the two are compared in the mode users
/// run; only main.cf's cache lines differ (ours: `kind`'s store).
fn start_master_child(
    kind: Kind,
    tmp: tempfile::TempDir,
    root: &Path,
    data_dir: PathBuf,
    log_path: PathBuf,
    opts: &StartOptions,
) -> Result<Server, String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod temp dir"))?;
    for sub in ["config", "queue", "queue/private"] {
        std::fs::create_dir_all(root.join(sub)).map_err(io("create master directories"))?;
    }
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut extra = String::new();
    if as_root {
        chown_postfix(&data_dir)?;
    } else if kind != Kind::Stock {
        // `-u` drops to mail_owner, which only root can: as in
        // scripts/callgrind-per-request.sh, the owner is who runs us.
        let me = Command::new("id")
            .arg("-un")
            .output()
            .map_err(io("id -un"))?;
        extra = format!(
            "mail_owner = {}\n",
            String::from_utf8_lossy(&me.stdout).trim()
        );
    }
    let (program, db_type) = match kind {
        Kind::Stock => (PathBuf::from(STOCK_TLSMGR), "btree"),
        Kind::OursMemory => (ours_binary(), "memory"),
        _ => (ours_binary(), "btree"),
    };
    let db = |name: &str| match db_type {
        "memory" => format!("memory:{name}"),
        t => format!("{t}:{}/{name}", data_dir.display()),
    };
    // Stock reads none of our parameters and warns about none of them.
    if kind != Kind::Stock {
        extra.push_str(&opts.main_cf_extra);
    }
    std::fs::write(
        root.join("config/main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {r}/queue\ndata_directory = {d}\n\
             smtpd_tls_session_cache_database = {smtpd}\n\
             smtp_tls_session_cache_database = {smtp}\n{extra}\n",
            r = root.display(),
            d = data_dir.display(),
            smtpd = db("smtpd_scache"),
            smtp = db("smtp_scache"),
        ),
    )
    .map_err(io("write master child main.cf"))?;
    let socket = root.join("queue/private/tlsmgr");
    let listener = UnixListener::bind(&socket).map_err(io("bind stock socket"))?;
    let (status_ours, status_child) = UnixStream::pair().map_err(io("status socketpair"))?;
    let (flow_r, flow_w) = std::io::pipe().map_err(io("flow pipe"))?;
    let log = std::fs::File::create(&log_path).map_err(io("create log"))?;
    let mut cmd = Command::new(&program);
    // master execs "$daemon_directory/tlsmgr": argv[0] is tlsmgr.
    std::os::unix::process::CommandExt::arg0(&mut cmd, "tlsmgr");
    cmd.args(MASTER_CHILD_ARGS)
        .env_clear()
        .env("MAIL_CONFIG", root.join("config"))
        .env("MAIL_LOGTAG", "postfix")
        .env("GENERATION", "17")
        .env("LANG", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
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
    .map_err(io("map master child fds"))?;
    let child = cmd
        .spawn()
        .map_err(io(&format!("start {}", program.display())))?;
    // multi_server writes a 12-byte TAKEN and AVAIL record per request;
    // master reads them, and so must we, or the child blocks on a full
    // socket.
    let mut reader = status_ours.try_clone().map_err(io("clone status socket"))?;
    let drainer = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    Ok(Server {
        kind,
        child,
        socket,
        data_dir,
        status: Some(status_ours),
        drainer: Some(drainer),
        log_path,
        scraper: None,
        _tmp: tmp,
    })
}

/// CPU time (user + system) of a process, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// CPU time of each thread of a process, by thread id.
pub fn thread_cpu_times(pid: u32) -> std::collections::HashMap<u32, Duration> {
    let mut m = std::collections::HashMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(cpu) = stat_cpu(&format!("/proc/{pid}/task/{tid}/stat")) {
                m.insert(tid, cpu);
            }
        }
    }
    m
}

/// The busiest thread's CPU time between two [`thread_cpu_times`] snapshots.
pub fn busiest_thread(
    before: &std::collections::HashMap<u32, Duration>,
    after: &std::collections::HashMap<u32, Duration>,
) -> Duration {
    after
        .iter()
        .map(|(tid, a)| a.saturating_sub(before.get(tid).copied().unwrap_or_default()))
        .max()
        .unwrap_or_default()
}

fn stat_cpu(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// A `kB` field of /proc/PID/status (VmHWM, VmRSS), in bytes.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Bytes on disk under a directory: allocated (st_blocks) and apparent
/// (st_size), and the apparent size and number of fjall's journal files
/// (`*.jnl`; upstream fjall makes each a sparse 64 MiB file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub alloc: u64,
    pub apparent: u64,
    pub journal_apparent: u64,
    pub journals: u64,
}

/// What the files under `dir` take on disk.
pub fn disk_usage(dir: &Path) -> DiskUsage {
    use std::os::unix::fs::MetadataExt;
    let mut u = DiskUsage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                u.alloc += md.blocks() * 512;
                u.apparent += md.len();
                if e.path().extension().is_some_and(|x| x == "jnl") {
                    u.journal_apparent += md.len();
                    u.journals += 1;
                }
            }
        }
    }
    u
}
