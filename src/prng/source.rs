//! The external entropy source named by `tls_random_source` (spec §2.2,
//! §2.5): `dev:PATH` (a device read with one timed read of at most 255
//! bytes), `egd:PATH` (an EGD server: we send `0x01 n`, it answers a count
//! byte then that many bytes), a plain file (read once, up to
//! `tls_random_bytes`), or empty (no source; Postfix's two warnings).
//!
//! Every read and connect is bounded by [`IO_TIMEOUT`] (Postfix's
//! `TLS_MGR_TIMEOUT`). Nothing here trusts the other side: short reads, EOF,
//! a zero count, a count larger than asked for, and silence all come back as
//! a [`Failure`] carrying Postfix's log line; the caller decides to reopen.
//! Device and file reads block, so they run on tokio's blocking pool with a
//! `poll(2)` timeout; the EGD exchange is async on a tokio socket.

use crate::config::Config;
use slog::Level;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Postfix's bound on each source read and connect.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest single device or EGD read (the EGD count is one byte).
pub const MAX_DEV_READ: usize = 255;

/// What `tls_random_source` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RandomSource {
    /// Empty: no external source.
    None,
    /// `dev:PATH`.
    Dev(PathBuf),
    /// `egd:PATH`.
    Egd(PathBuf),
    /// Anything else: a plain file, read once.
    File(PathBuf),
}

impl RandomSource {
    /// Parses a `tls_random_source` value the way Postfix does: prefix
    /// `dev:` or `egd:`, else a file name; empty (after trimming) is none.
    pub fn parse(value: &str) -> Self {
        let v = value.trim();
        if v.is_empty() {
            RandomSource::None
        } else if let Some(p) = v.strip_prefix("dev:") {
            RandomSource::Dev(PathBuf::from(p))
        } else if let Some(p) = v.strip_prefix("egd:") {
            RandomSource::Egd(PathBuf::from(p))
        } else {
            RandomSource::File(PathBuf::from(v))
        }
    }

    /// How many bytes one reseed asks for: `tls_random_bytes`, capped at
    /// 255 for devices and EGD.
    pub fn request_size(&self, tls_random_bytes: u32) -> usize {
        let n = usize::try_from(tls_random_bytes).unwrap_or(usize::MAX);
        match self {
            RandomSource::Dev(_) | RandomSource::Egd(_) => n.min(MAX_DEV_READ),
            _ => n,
        }
    }

    /// The noun Postfix uses in log lines ("entropy device /dev/urandom").
    pub fn describe(&self) -> String {
        match self {
            RandomSource::None => "no entropy source".into(),
            RandomSource::Dev(p) => format!("entropy device {}", p.display()),
            RandomSource::Egd(p) => format!("EGD server {}", p.display()),
            RandomSource::File(p) => format!("entropy file {}", p.display()),
        }
    }
}

impl fmt::Display for RandomSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RandomSource::None => Ok(()),
            RandomSource::Dev(p) => write!(f, "dev:{}", p.display()),
            RandomSource::Egd(p) => write!(f, "egd:{}", p.display()),
            RandomSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Config {
    /// `tls_random_source`, typed.
    pub fn random_source(&self) -> RandomSource {
        RandomSource::parse(&self.tls_random_source)
    }
}

/// Why a source could not be opened or read: the log line to write (with
/// its level), worded as Postfix words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Warning or info, as Postfix logs this case.
    pub level: Level,
    /// The text.
    pub message: String,
}

impl Failure {
    fn warn(message: String) -> Self {
        Failure {
            level: Level::Warning,
            message,
        }
    }
    fn info(message: String) -> Self {
        Failure {
            level: Level::Info,
            message,
        }
    }
}

/// An open source.
#[derive(Debug)]
pub enum Handle {
    /// A device (kept open, read sequentially).
    Dev(PathBuf, File),
    /// A connected EGD server.
    Egd(PathBuf, UnixStream),
    /// A plain file (read once from offset 0).
    File(PathBuf, File),
}

/// A source opened without a runtime (see [`crate::prng::preopen`]).
#[derive(Debug)]
pub enum PreHandle {
    /// A device or plain file.
    File(Handle),
    /// A connected EGD server, still a std socket.
    Egd(PathBuf, std::os::unix::net::UnixStream),
}

impl PreHandle {
    /// The async handle. Must run inside the tokio runtime (EGD sockets are
    /// registered with it).
    pub fn into_handle(self) -> std::io::Result<Handle> {
        match self {
            PreHandle::File(h) => Ok(h),
            PreHandle::Egd(p, s) => {
                s.set_nonblocking(true)?;
                Ok(Handle::Egd(p, UnixStream::from_std(s)?))
            }
        }
    }
}

/// Opens `source` with blocking calls, before the daemon's runtime exists
/// (and before a chroot hides the path). Same log lines as [`open`].
pub fn open_blocking(source: &RandomSource) -> Result<Option<PreHandle>, Failure> {
    match source {
        RandomSource::None => Ok(None),
        RandomSource::Dev(p) => open_nonblocking(p)
            .map(|f| Some(PreHandle::File(Handle::Dev(p.clone(), f))))
            .map_err(|e| {
                Failure::warn(format!(
                    "cannot open entropy device {}: {}",
                    p.display(),
                    super::strerror(&e)
                ))
            }),
        RandomSource::File(p) => open_nonblocking(p)
            .map(|f| Some(PreHandle::File(Handle::File(p.clone(), f))))
            .map_err(|e| {
                Failure::warn(format!(
                    "cannot open entropy file {}: {}",
                    p.display(),
                    super::strerror(&e)
                ))
            }),
        // A UNIX-domain connect does not wait for the server to accept;
        // it fails at once when nobody listens.
        RandomSource::Egd(p) => std::os::unix::net::UnixStream::connect(p)
            .map(|s| Some(PreHandle::Egd(p.clone(), s)))
            .map_err(|e| {
                Failure::warn(format!(
                    "cannot connect to EGD server {}: {}",
                    p.display(),
                    super::strerror(&e)
                ))
            }),
    }
}

/// Bytes read from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entropy {
    /// What to mix into the pool: the bytes themselves, or for a large file
    /// a SHA-256 digest of everything read.
    pub material: Vec<u8>,
    /// How many bytes the source delivered.
    pub count: usize,
    /// How many were asked for.
    pub requested: usize,
}

fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    // Non-blocking so that opening a FIFO without a writer cannot hang; the
    // reads wait in poll(2) with a timeout instead.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Opens `source`. `None` has nothing to open.
pub async fn open(source: &RandomSource, timeout: Duration) -> Result<Option<Handle>, Failure> {
    match source {
        RandomSource::None => Ok(None),
        RandomSource::Dev(p) => {
            let path = p.clone();
            blocking(move || open_nonblocking(&path))
                .await
                .map(|f| Some(Handle::Dev(p.clone(), f)))
                .map_err(|e| {
                    Failure::warn(format!(
                        "cannot open entropy device {}: {}",
                        p.display(),
                        super::strerror(&e)
                    ))
                })
        }
        RandomSource::File(p) => {
            let path = p.clone();
            blocking(move || open_nonblocking(&path))
                .await
                .map(|f| Some(Handle::File(p.clone(), f)))
                .map_err(|e| {
                    Failure::warn(format!(
                        "cannot open entropy file {}: {}",
                        p.display(),
                        super::strerror(&e)
                    ))
                })
        }
        RandomSource::Egd(p) => {
            let fail = |e: std::io::Error| {
                Failure::warn(format!(
                    "cannot connect to EGD server {}: {}",
                    p.display(),
                    super::strerror(&e)
                ))
            };
            match tokio::time::timeout(timeout, UnixStream::connect(p)).await {
                Ok(Ok(s)) => Ok(Some(Handle::Egd(p.clone(), s))),
                Ok(Err(e)) => Err(fail(e)),
                Err(_) => Err(fail(timed_out())),
            }
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "Connection timed out")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("I/O thread failed: {e}"))))
}

/// Waits up to `timeout` for `file` to be readable, then reads once.
/// `Ok(0)` is end of file.
pub fn timed_read(file: &mut File, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid, exclusively borrowed pollfd array of
        // length 1 for the duration of the call, and its fd is open (owned
        // by `file`, which outlives the call).
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            break;
        }
        if r == 0 {
            return Err(timed_out());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads one reseed's worth of bytes. The handle comes back with the result
/// (`None` only if its I/O thread died) so the caller keeps it open
/// (devices, EGD) or drops it (plain files, failures).
pub async fn read(
    handle: Handle,
    tls_random_bytes: u32,
    timeout: Duration,
) -> (Option<Handle>, Result<Entropy, Failure>) {
    match handle {
        Handle::Dev(path, file) => {
            let n = tls_random_bytes.clamp(1, MAX_DEV_READ as u32) as usize;
            let p = path.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let mut file = file;
                let mut buf = vec![0u8; n];
                let r = timed_read(&mut file, &mut buf, timeout).map(|got| {
                    buf.truncate(got);
                    buf
                });
                (file, r)
            })
            .await;
            let (file, r) = match joined {
                Ok(x) => x,
                Err(e) => {
                    // The blocking thread died with the file: the caller reopens.
                    let f = Failure::info(format!(
                        "cannot read from entropy device {}: I/O thread failed: {e}",
                        p.display()
                    ));
                    return (None, Err(f));
                }
            };
            let result = match r {
                Ok(buf) if !buf.is_empty() => Ok(Entropy {
                    count: buf.len(),
                    material: buf,
                    requested: n,
                }),
                Ok(_) => Err(Failure::info(format!(
                    "cannot read from entropy device {}: end of file",
                    p.display()
                ))),
                Err(e) => Err(Failure::info(format!(
                    "cannot read from entropy device {}: {}",
                    p.display(),
                    super::strerror(&e)
                ))),
            };
            (Some(Handle::Dev(path, file)), result)
        }
        Handle::File(path, file) => {
            let p = path.clone();
            let want = u64::from(tls_random_bytes);
            let joined = tokio::task::spawn_blocking(move || {
                let mut file = file;
                let r = read_file(&mut file, want, timeout);
                (file, r)
            })
            .await;
            match joined {
                Ok((file, Ok(e))) => (Some(Handle::File(path, file)), Ok(e)),
                Ok((file, Err(e))) => (
                    Some(Handle::File(path, file)),
                    Err(Failure::warn(format!(
                        "cannot read from entropy file {}: {}",
                        p.display(),
                        super::strerror(&e)
                    ))),
                ),
                Err(e) => (
                    None,
                    Err(Failure::warn(format!(
                        "cannot read from entropy file {}: I/O thread failed: {e}",
                        p.display()
                    ))),
                ),
            }
        }
        Handle::Egd(path, mut stream) => {
            let n = tls_random_bytes.clamp(1, MAX_DEV_READ as u32) as u8;
            let r = egd_exchange(&path, &mut stream, n, timeout).await;
            (Some(Handle::Egd(path, stream)), r)
        }
    }
}

/// Reads a plain file from offset 0, up to `want` bytes, in 8 KiB chunks.
fn read_file(file: &mut File, want: u64, timeout: Duration) -> std::io::Result<Entropy> {
    use sha2::{Digest, Sha256};
    use std::io::{Seek, SeekFrom};
    // Seeking fails on a FIFO; that is fine, it has no offset to reset.
    let _ = file.seek(SeekFrom::Start(0));
    let mut hash = Sha256::new();
    let mut small = Vec::new();
    let mut count: u64 = 0;
    let mut chunk = vec![0u8; 8192];
    while count < want {
        let room = usize::try_from((want - count).min(8192)).unwrap_or(8192);
        let got = timed_read(file, &mut chunk[..room], timeout)?;
        if got == 0 {
            break;
        }
        hash.update(&chunk[..got]);
        if small.len() < 4096 {
            small.extend_from_slice(&chunk[..got]);
        }
        count += got as u64;
    }
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let material = if count <= 4096 {
        small
    } else {
        hash.finalize().to_vec()
    };
    Ok(Entropy {
        material,
        count,
        requested: usize::try_from(want).unwrap_or(usize::MAX),
    })
}

async fn egd_exchange(
    path: &Path,
    stream: &mut UnixStream,
    n: u8,
    timeout: Duration,
) -> Result<Entropy, Failure> {
    let p = path.display();
    let io = |what: String| {
        move |e: std::io::Error| Failure::info(format!("{what}: {}", super::strerror(&e)))
    };
    let timed = |r: Result<std::io::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(x) => x,
        Err(_) => Err(timed_out()),
    };
    // EGD command 1: "get entropy, don't block", then the count wanted.
    timed(tokio::time::timeout(timeout, stream.write_all(&[0x01, n])).await)
        .map_err(io(format!("cannot write to EGD server {p}")))?;
    let mut count = [0u8; 1];
    timed(
        tokio::time::timeout(timeout, stream.read_exact(&mut count))
            .await
            .map(|r| r.map(|_| ())),
    )
    .map_err(io(format!("cannot read from EGD server {p}")))?;
    let c = count[0];
    if c == 0 {
        return Err(Failure::info(format!(
            "EGD server {p} reports zero bytes available"
        )));
    }
    if c > n {
        return Err(Failure::warn(format!(
            "EGD server {p} announced {c} bytes, more than the {n} requested: not an EGD server?"
        )));
    }
    let mut buf = vec![0u8; usize::from(c)];
    timed(
        tokio::time::timeout(timeout, stream.read_exact(&mut buf))
            .await
            .map(|r| r.map(|_| ())),
    )
    .map_err(io(format!("cannot read {c} bytes from EGD server {p}")))?;
    Ok(Entropy {
        count: buf.len(),
        material: buf,
        requested: usize::from(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_postfix() {
        assert_eq!(RandomSource::parse(""), RandomSource::None);
        assert_eq!(RandomSource::parse("  "), RandomSource::None);
        assert_eq!(
            RandomSource::parse("dev:/dev/urandom"),
            RandomSource::Dev("/dev/urandom".into())
        );
        assert_eq!(
            RandomSource::parse("egd:/var/run/egd-pool"),
            RandomSource::Egd("/var/run/egd-pool".into())
        );
        assert_eq!(
            RandomSource::parse("/etc/seed"),
            RandomSource::File("/etc/seed".into())
        );
        assert_eq!(RandomSource::parse("dev:/x").to_string(), "dev:/x");
    }

    #[test]
    fn request_size_caps_devices_and_egd_only() {
        assert_eq!(RandomSource::Dev("/d".into()).request_size(1000), 255);
        assert_eq!(RandomSource::Egd("/e".into()).request_size(32), 32);
        assert_eq!(RandomSource::File("/f".into()).request_size(1000), 1000);
    }
}
