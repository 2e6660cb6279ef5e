//! Opening a small file that tlsmgr reads by path (the shared secret, the
//! ticket key file) without trusting what is at that path: not through a
//! symbolic link, without blocking on a FIFO, and only if it is a regular
//! file no larger than the caller's bound, checked on the open descriptor
//! (`fstat`) so that nothing is read before the checks pass.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why [`read_small`] read nothing.
#[derive(Debug)]
pub enum Refused {
    /// Nothing at the path.
    Missing,
    /// Something other than a regular file: what was found ("a FIFO",
    /// "a symbolic link", ...).
    NotAFile(&'static str),
    /// A regular file larger than the bound: its size in bytes.
    TooLarge(u64),
    /// The open, `fstat` or read failed otherwise.
    Io(std::io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Missing => f.write_str("no such file"),
            Refused::NotAFile(what) => write!(f, "found {what}, not a regular file"),
            Refused::TooLarge(n) => write!(f, "{n} bytes, too large"),
            Refused::Io(e) => write!(f, "{e}"),
        }
    }
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// Opens `path` read-only with `O_NOFOLLOW | O_NONBLOCK`: a symbolic link
/// is refused by the kernel (ELOOP) instead of followed, and a FIFO opens
/// at once instead of waiting for a writer. Then checks, on the descriptor,
/// that it is a regular file of at most `max` bytes.
pub fn open_small(path: &Path, max: u64) -> Result<(File, std::fs::Metadata), Refused> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Refused::Missing),
        // ELOOP is what O_NOFOLLOW gives for a link; say what is there.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(match std::fs::symlink_metadata(path) {
                Ok(m) => Refused::NotAFile(kind_of(m.file_type())),
                Err(_) => Refused::Io(e),
            })
        }
        Err(e) => return Err(Refused::Io(e)),
    };
    let meta = file.metadata().map_err(Refused::Io)?;
    if !meta.is_file() {
        return Err(Refused::NotAFile(kind_of(meta.file_type())));
    }
    if meta.len() > max {
        return Err(Refused::TooLarge(meta.len()));
    }
    Ok((file, meta))
}

/// [`open_small`], then reads at most `max` bytes (a file that grew after
/// the check is refused as too large rather than read to its end).
pub fn read_small(path: &Path, max: u64) -> Result<(Vec<u8>, std::fs::Metadata), Refused> {
    let (file, meta) = open_small(path, max)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(Refused::Io)?;
    if bytes.len() as u64 > max {
        return Err(Refused::TooLarge(bytes.len() as u64));
    }
    Ok((bytes, meta))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_links_fifos_directories_and_large_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("ok"), b"abc").unwrap();
        assert_eq!(read_small(&d.join("ok"), 3).unwrap().0, b"abc");
        assert!(matches!(
            read_small(&d.join("ok"), 2),
            Err(Refused::TooLarge(3))
        ));
        assert!(matches!(
            read_small(&d.join("none"), 2),
            Err(Refused::Missing)
        ));
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        assert!(matches!(
            read_small(&d.join("zero"), 100),
            Err(Refused::NotAFile("a symbolic link"))
        ));
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(
            read_small(&d.join("fifo"), 100),
            Err(Refused::NotAFile("a FIFO"))
        ));
        assert!(matches!(
            read_small(d, 1 << 20),
            Err(Refused::NotAFile("a directory"))
        ));
        assert!(matches!(
            read_small(Path::new("/dev/null"), 100),
            Err(Refused::NotAFile("a character device"))
        ));
    }
}
