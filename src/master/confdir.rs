//! A handle on the configuration directory, opened before the chroot (as
//! root may need to), so main.cf can still be read for a live reload when
//! `/etc/postfix` is no longer visible. The handle is a directory
//! descriptor: files are opened relative to it with openat(2).
//!
//! The config watcher (issue 4) reads main.cf through [`read`] when a
//! handle is open, and by path otherwise.

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::OnceLock;

static HANDLE: OnceLock<OwnedFd> = OnceLock::new();

/// Opens `dir` and keeps it for [`read`]. Only the first call takes effect.
pub fn open(dir: &Path) -> std::io::Result<()> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let _ = HANDLE.set(fd);
    Ok(())
}

/// Whether a handle is open.
pub fn is_open() -> bool {
    HANDLE.get().is_some()
}

/// Reads `name` (e.g. `main.cf`) from the configuration directory through
/// the handle; `None` when no handle was opened.
pub fn read(name: &str) -> Option<std::io::Result<Vec<u8>>> {
    let dir = HANDLE.get()?;
    Some((|| {
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )?;
        let mut buf = Vec::new();
        File::from(fd).read_to_end(&mut buf)?;
        Ok(buf)
    })())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_through_the_handle_after_the_directory_moved() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("postfix");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("main.cf"), "a = 1\n").unwrap();
        open(&dir).unwrap();
        // The path is gone (as /etc/postfix is inside a chroot); the handle is not.
        std::fs::rename(&dir, tmp.path().join("moved")).unwrap();
        std::fs::write(tmp.path().join("moved/main.cf"), "a = 2\n").unwrap();
        assert_eq!(read("main.cf").unwrap().unwrap(), b"a = 2\n");
        assert!(read("missing.cf").unwrap().is_err());
    }
}
