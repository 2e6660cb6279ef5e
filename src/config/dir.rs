//! The configuration directory, held open as a handle.
//!
//! Debian runs tlsmgr chrooted into the queue directory, where
//! `/etc/postfix` is out of reach. To keep live reload working there, the
//! directory is opened once, before the chroot, and main.cf is read relative
//! to that handle (`openat`) ever after. Editors replace main.cf by rename, so
//! the file itself is never held open: each read opens the name again.
//!
//! Limitation: a main.cf that is an *absolute* symlink is resolved against
//! the process root, so inside a chroot it must be a relative link (or a
//! plain file).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An open configuration directory.
#[derive(Debug)]
pub struct ConfigDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl ConfigDir {
    /// Opens `path` as a directory handle.
    pub fn open(path: &Path) -> std::io::Result<ConfigDir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
        // open(2) does not retain the pointer.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by a successful open(2) and is owned
        // by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ConfigDir {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// The directory's path as given (for messages and `config_directory`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory, for messages.
    pub fn display_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads the file `name` (a plain name, no `/`) through the handle.
    pub fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        self.read_stamped(name).map(|(bytes, _)| bytes)
    }

    /// Like [`ConfigDir::read`], also returning the identity of the file
    /// read (from the same open file, so the two always agree).
    pub fn read_stamped(&self, name: &str) -> std::io::Result<(Vec<u8>, FileStamp)> {
        if name.contains('/') {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        let c = CString::new(name)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the directory fd is open for the lifetime of `self`, and `c`
        // is a valid NUL-terminated string that outlives the call.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by a successful openat(2) and is
        // owned by nothing else; File takes ownership and closes it.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let meta = file.metadata()?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let stamp = FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        };
        Ok((buf, stamp))
    }
}

/// Which file was read and which version of it: device and inode (a
/// replacement by rename is a new file), size and modification time (an
/// in-place write). Not the access time: reading is not a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_through_the_handle_after_the_path_moves() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = tmp.path().join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("main.cf"), "a = 1\n").unwrap();
        let dir = ConfigDir::open(&conf).unwrap();
        // The path goes away (as /etc/postfix does after a chroot); the
        // handle still reaches the directory and sees later replacements.
        let moved = tmp.path().join("moved");
        std::fs::rename(&conf, &moved).unwrap();
        std::fs::write(moved.join("main.cf.tmp"), "a = 2\n").unwrap();
        std::fs::rename(moved.join("main.cf.tmp"), moved.join("main.cf")).unwrap();
        assert_eq!(dir.read("main.cf").unwrap(), b"a = 2\n");
        // Reading again is the same file, unchanged; a rename is not.
        let (_, first) = dir.read_stamped("main.cf").unwrap();
        let (_, again) = dir.read_stamped("main.cf").unwrap();
        assert_eq!(first, again);
        std::fs::write(moved.join("main.cf.tmp"), "a = 2\n").unwrap();
        std::fs::rename(moved.join("main.cf.tmp"), moved.join("main.cf")).unwrap();
        assert_ne!(dir.read_stamped("main.cf").unwrap().1, first);
        assert!(dir.read("../x").is_err());
        assert!(dir.read("missing").is_err());
    }
}
