//! The PRNG exchange file, `tls_random_exchange_name` (spec §2.5): 1024
//! bytes that carry pool output across restarts.
//!
//! One update: exclusive `flock`, read up to 1024 bytes from offset 0 and
//! mix them in, write exactly 1024 fresh bytes at offset 0, cut the file to
//! 1024 bytes (stock leaves a longer file long), `fdatasync`, unlock.
//!
//! Unlike stock tlsmgr, nothing here is fatal and nothing read is trusted:
//! a removed file (`st_nlink == 0`) is recreated, a directory, FIFO or
//! unreadable path is reported and retried later, a file of the wrong size
//! or without entropy is reported and rewritten, and a symbolic link is
//! followed only when it leads into `data_directory`. Whatever the file
//! holds can only add to the pool (see [`crate::prng`]), and what we write
//! is the output of a forked pool, never the pool's state.
//!
//! All of it blocks (disk, lock): callers run it on a blocking thread.

use super::source::Failure;
use super::Pool;
use slog::Level;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// The size Postfix reads and writes.
pub const EXCHANGE_SIZE: usize = 1024;

/// How long to wait for another process's lock before giving up this round.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The exchange file, opened lazily and reopened after any trouble.
#[derive(Debug)]
pub struct ExchangeFile {
    path: PathBuf,
    data_directory: PathBuf,
    file: Option<File>,
    /// Opened by [`ExchangeFile::open_now`] and not updated since: the next
    /// update counts as the one that opened it (a new file is no surprise).
    preopened: bool,
}

/// What one update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The bytes read (to mix into the main pool too).
    pub read: Vec<u8>,
    /// The file's size before the update.
    pub old_size: u64,
    /// Whether the file was (re)opened or created for this update.
    pub opened: bool,
    /// Lines to log about what was found.
    pub notes: Vec<(Level, String)>,
}

/// `path` made absolute and free of `.`/`..`, without touching the disk.
fn lexical_absolute(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl ExchangeFile {
    /// The exchange file at `path`; links may only lead into `data_directory`.
    pub fn new(path: impl Into<PathBuf>, data_directory: impl Into<PathBuf>) -> Self {
        ExchangeFile {
            path: path.into(),
            data_directory: data_directory.into(),
            file: None,
            preopened: false,
        }
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, what: &str, e: &std::io::Error) -> Failure {
        Failure {
            level: Level::Warning,
            message: format!(
                "cannot {what} PRNG exchange file {}: {}",
                self.path.display(),
                super::strerror(e)
            ),
        }
    }

    /// Where opening `path` really leads, refusing symbolic links that leave
    /// `data_directory`.
    fn resolve(&self) -> Result<PathBuf, Failure> {
        let lexical = lexical_absolute(&self.path);
        let real = match std::fs::canonicalize(&self.path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Not there yet (or a dangling link): resolve the directory,
                // and refuse a dangling link outright.
                if std::fs::symlink_metadata(&self.path).is_ok() {
                    return Err(Failure {
                        level: Level::Warning,
                        message: format!(
                            "PRNG exchange file {} is a symbolic link to nowhere: not following it",
                            self.path.display()
                        ),
                    });
                }
                let parent = lexical.parent().unwrap_or(Path::new("/"));
                let name = lexical.file_name().unwrap_or_default();
                std::fs::canonicalize(parent)
                    .map_err(|e| self.fail("open", &e))?
                    .join(name)
            }
            Err(e) => return Err(self.fail("open", &e)),
        };
        if real != lexical {
            let inside = std::fs::canonicalize(&self.data_directory)
                .map(|d| real.starts_with(d))
                .unwrap_or(false);
            if !inside {
                return Err(Failure {
                    level: Level::Warning,
                    message: format!(
                        "PRNG exchange file {} leads through a symbolic link to {}, outside data_directory {}: not following it",
                        self.path.display(),
                        real.display(),
                        self.data_directory.display()
                    ),
                });
            }
        }
        Ok(real)
    }

    fn open(&self) -> Result<File, Failure> {
        let real = self.resolve()?;
        // O_NOFOLLOW: the last component was checked above; a link swapped
        // in since then fails instead of being followed. O_NONBLOCK: a FIFO
        // planted here cannot hang the open.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&real)
            .map_err(|e| self.fail("open", &e))?;
        let meta = file.metadata().map_err(|e| self.fail("fstat()", &e))?;
        if !meta.is_file() {
            return Err(Failure {
                level: Level::Warning,
                message: format!(
                    "PRNG exchange file {} is not a regular file",
                    self.path.display()
                ),
            });
        }
        Ok(file)
    }

    /// Opens (or creates) the file now, e.g. before a chroot makes its path
    /// unreachable; later updates use this descriptor while it stays valid.
    pub fn open_now(&mut self) -> Result<(), Failure> {
        if self.file.is_none() {
            self.file = Some(self.open()?);
            self.preopened = true;
        }
        Ok(())
    }

    /// The configured data directory.
    pub fn data_directory(&self) -> &Path {
        &self.data_directory
    }

    /// Closes the file; the next update reopens it.
    pub fn close(&mut self) {
        self.file = None;
    }

    /// One update, mixing what is read into `pool` (a fork of the daemon's
    /// pool) before drawing the 1024 bytes to write. On failure the file is
    /// closed, so the next call starts afresh.
    pub fn update(&mut self, mut pool: Pool) -> Result<Report, Failure> {
        let r = self.update_inner(&mut pool);
        if r.is_err() {
            self.file = None;
        }
        r
    }

    fn update_inner(&mut self, pool: &mut Pool) -> Result<Report, Failure> {
        let mut notes = Vec::new();
        if let Some(f) = &self.file {
            match f.metadata() {
                Ok(m) if m.nlink() == 0 => {
                    notes.push((
                        Level::Warning,
                        "PRNG exchange file was removed -- recreating it".to_string(),
                    ));
                    self.file = None;
                }
                Ok(_) => {}
                Err(e) => {
                    notes.push((Level::Warning, self.fail("fstat()", &e).message));
                    self.file = None;
                }
            }
        }
        let opened = self.file.is_none() || std::mem::take(&mut self.preopened);
        if self.file.is_none() {
            self.file = Some(self.open()?);
        }
        let Some(file) = self.file.as_ref() else {
            return Err(self.fail("open", &std::io::Error::other("not open")));
        };
        let lock = Lock::exclusive(file, LOCK_WAIT).map_err(|e| self.fail("lock", &e))?;
        let old_size = file.metadata().map_err(|e| self.fail("fstat()", &e))?.len();
        let mut buf = vec![0u8; EXCHANGE_SIZE];
        let mut got = 0;
        while got < EXCHANGE_SIZE {
            match file.read_at(&mut buf[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail("read", &e)),
            }
        }
        buf.truncate(got);
        pool.mix(&buf);
        let name = self.path.display();
        match old_size {
            0 if opened => notes.push((
                Level::Debug,
                format!("PRNG exchange file {name} is new or empty: nothing to mix in"),
            )),
            0 => notes.push((
                Level::Warning,
                format!("PRNG exchange file {name} was emptied: nothing to mix in"),
            )),
            n if n < EXCHANGE_SIZE as u64 => notes.push((
                Level::Warning,
                format!(
                    "PRNG exchange file {name} holds {n} bytes, not {EXCHANGE_SIZE}: mixed them in, rewriting it"
                ),
            )),
            n if n > EXCHANGE_SIZE as u64 => notes.push((
                Level::Warning,
                format!(
                    "PRNG exchange file {name} is {n} bytes long, not {EXCHANGE_SIZE}: mixed in the first {EXCHANGE_SIZE}, cutting it to {EXCHANGE_SIZE}"
                ),
            )),
            _ => {}
        }
        if buf.len() == EXCHANGE_SIZE && buf.iter().all(|&b| b == buf[0]) {
            notes.push((
                Level::Warning,
                format!(
                    "PRNG exchange file {name} holds no entropy (every byte is 0x{:02x}): rewriting it",
                    buf[0]
                ),
            ));
        }
        let mut fresh = [0u8; EXCHANGE_SIZE];
        pool.fill(&mut fresh);
        file.write_all_at(&fresh, 0)
            .map_err(|e| self.fail("write", &e))?;
        if old_size != EXCHANGE_SIZE as u64 {
            file.set_len(EXCHANGE_SIZE as u64)
                .map_err(|e| self.fail("truncate", &e))?;
        }
        file.sync_data().map_err(|e| self.fail("sync", &e))?;
        lock.release().map_err(|e| self.fail("unlock", &e))?;
        notes.push((
            Level::Debug,
            format!("update PRNG exchange file {name}: read {got} bytes, wrote {EXCHANGE_SIZE}"),
        ));
        Ok(Report {
            read: buf,
            old_size,
            opened,
            notes,
        })
    }
}

/// An exclusive `flock(2)` held until [`Lock::release`] (or drop).
struct Lock<'a> {
    file: &'a File,
    held: bool,
}

impl<'a> Lock<'a> {
    /// Takes the lock, polling so that a peer that never lets go costs us
    /// `wait` and an error, not a stuck thread.
    fn exclusive(file: &'a File, wait: Duration) -> std::io::Result<Self> {
        let start = Instant::now();
        loop {
            // SAFETY: flock(2) only reads the descriptor number, which stays
            // open for the call because `file` is borrowed.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                return Ok(Lock { file, held: true });
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => return Err(e),
            }
        }
    }

    fn release(mut self) -> std::io::Result<()> {
        self.held = false;
        // SAFETY: as in `exclusive`; the descriptor is open while borrowed.
        let r = unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        if self.held {
            // SAFETY: as in `exclusive`. Error paths only: best effort.
            let _ = unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_absolute_drops_dots() {
        assert_eq!(
            lexical_absolute(Path::new("/a/./b/../c")),
            PathBuf::from("/a/c")
        );
    }
}
