//! Sockets and directories created with an exact mode, without touching the
//! process umask.
//!
//! The umask is process-wide: changing it for one `bind(2)` also changes it
//! for every file any other thread creates meanwhile, and for every child
//! process spawned meanwhile (which keeps it for life). So a socket is bound
//! inside a fresh staging directory that only its owner can enter, chmod-ed
//! there, and renamed into place: nobody else can connect before the final
//! mode is in force, and once it is at its path it already has it.
//!
//! [`bind`] is the one way the daemon binds a socket of its own (the
//! service socket of `tlsmgr serve`, the admin socket): what is already at
//! the path is replaced only when it is a stale socket.

use crate::Error;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Binds a listening socket at `path`, mode 0600 whatever the umask. A
/// socket nobody answers on is stale and replaced; a socket a daemon
/// answers on, or anything that is not a socket, is refused and left as
/// it is (a mistyped path, such as a main.cf or a store directory, must
/// not cost the file).
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    // symlink_metadata: a symbolic link at the path is not a socket either,
    // and must not be followed to whatever it points at.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::io(
                    format!("bind {}", path.display()),
                    io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another tlsmgr is serving this socket",
                    ),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("remove stale socket {}", path.display()), e))?;
        }
        Ok(meta) => {
            return Err(Error::io(
                format!("bind {}", path.display()),
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket ({}) -- not removing it",
                        path.display(),
                        file_kind(&meta.file_type())
                    ),
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
    }
    // Exactly 0600 before anyone can reach it: a chmod after a bind in
    // place would leave a window in which a socket in a shared directory
    // listens with the caller's (maybe 000) umask, and a client that
    // connects in that window keeps its connection.
    bind_with_mode(path, 0o600).map_err(|e| Error::io(format!("bind {}", path.display()), e))
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a socket"
    }
}

/// Binds a listening socket at `path` with exactly `mode` (for example
/// 0600). Whatever is at `path` is replaced by rename(2): callers check
/// first that it is a stale socket.
pub fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = StagingDir::create(&parent)?;
    let temp = staging.0.join("s");
    let listener = UnixListener::bind(&temp)?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&temp, path)?;
    Ok(listener)
}

/// Creates `dir` and its missing parents, each exactly `mode` whatever the
/// umask (mkdir(2) can only take bits away; the chmod that follows puts
/// back exactly `mode`, so no directory is ever wider than asked).
pub fn create_dirs_with_mode(dir: &Path, mode: u32) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
        if d.exists() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))?,
            // Made by someone else meanwhile: theirs, left as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A directory only its owner can enter, removed when dropped.
struct StagingDir(PathBuf);

impl StagingDir {
    fn create(parent: &Path) -> io::Result<StagingDir> {
        for attempt in 0u32..100 {
            let name = format!(
                ".tlsmgr-bind.{}.{}.{}",
                std::process::id(),
                nanos(),
                attempt
            );
            let dir = parent.join(name);
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let staging = StagingDir(dir);
                    // mkdir under a umask such as 0700 leaves even the
                    // owner out; 0700 is what it must be to bind inside.
                    std::fs::set_permissions(&staging.0, std::fs::Permissions::from_mode(0o700))?;
                    return Ok(staging);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free staging directory name in {}", parent.display()),
        ))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn socket_has_the_mode_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sock");
        let _l = bind_with_mode(&path, 0o600).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        // Only the socket is left in the directory: the staging one is gone.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sock")]);
    }

    #[test]
    fn directories_get_exactly_the_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dirs_with_mode(&deep, 0o700).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            let m = std::fs::metadata(tmp.path().join(d)).unwrap().mode() & 0o7777;
            assert_eq!(m, 0o700, "{d}");
        }
    }
}
