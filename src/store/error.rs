//! [`StoreError`]: what a session-cache store can fail with.

use std::path::PathBuf;

/// Errors of a session-cache storage backend. No backend type (fjall, redis)
/// crosses this boundary: backends turn their errors into these variants.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is held by another process (e.g. a previous tlsmgr still
    /// exiting) and was not released within the wait bound.
    #[error("store {path} is locked by another process")]
    Locked {
        /// The store's location.
        path: PathBuf,
    },
    /// A file-system operation on the store failed.
    #[error("store {path}: {source}")]
    Io {
        /// The store's location.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The store refuses writes after an earlier write failed (fjall
    /// "poisons" itself; a background flush can do it on a full disk, so
    /// a request may see this before it sees `ENOSPC`). Reopening clears it.
    #[error("store {path}: refuses writes after a failed write (Poisoned)")]
    Poisoned {
        /// The store's location.
        path: PathBuf,
    },
    /// The store cannot be read, and will not become readable by waiting:
    /// its files are corrupt, of an unknown or another format, or the path
    /// is not a store. The cache sets it aside and starts a fresh one.
    #[error("store {path}: {message}")]
    Unreadable {
        /// The store's location.
        path: PathBuf,
        /// Which lasting cause (also the counter's `reason` label).
        reason: Lasting,
        /// What the backend said.
        message: String,
    },
    /// The backend reported an error of its own; the text is its message.
    #[error("store {path}: {message}")]
    Backend {
        /// The store's location (or a description for non-file stores).
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
    /// A stored record could not be decoded (too short, bad layout).
    #[error("malformed entry: {0}")]
    Malformed(String),
    /// The database string names a type we cannot serve (e.g. `cdb:`).
    #[error("unsupported database type: {0}")]
    UnsupportedType(String),
    /// The database string is not of a usable form (e.g. `btree:` with an
    /// empty path); see [`crate::store::location`] for the rule.
    #[error("invalid database \"{database}\": {reason}")]
    InvalidDatabase {
        /// The database string as configured.
        database: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A lasting reason why a store cannot be opened: waiting will not help,
/// a fresh store will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lasting {
    /// Files that do not decode: bad checksums, cut-off tables, bad
    /// headers or tags, a journal that does not recover.
    Corrupt,
    /// A storage format fjall does not know (its `version` file unreadable
    /// or of another fjall major version).
    Format,
    /// A store written by another version of our own record format
    /// ([`crate::formats::STORE_FORMAT`]).
    Version,
    /// The path is ours (`PATH.fjall`) but is not a store: a regular file,
    /// or a directory fjall cannot use.
    NotAStore,
    /// Not a reason an open fails: the store's directory was removed or
    /// replaced under the running daemon, so a new store was started at
    /// its path (with the entries the open store still held). Counted
    /// with the others because it is the same event for an admin: a
    /// store started afresh.
    Removed,
}

impl Lasting {
    /// Every reason, in counter order ([`Lasting::index`]).
    pub const ALL: [Lasting; 5] = [
        Lasting::Corrupt,
        Lasting::Format,
        Lasting::Version,
        Lasting::NotAStore,
        Lasting::Removed,
    ];

    /// The position in [`Lasting::ALL`].
    pub fn index(self) -> usize {
        match self {
            Lasting::Corrupt => 0,
            Lasting::Format => 1,
            Lasting::Version => 2,
            Lasting::NotAStore => 3,
            Lasting::Removed => 4,
        }
    }

    /// The counter label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Lasting::Corrupt => "corrupt",
            Lasting::Format => "format",
            Lasting::Version => "version",
            Lasting::NotAStore => "not_a_store",
            Lasting::Removed => "removed",
        }
    }
}

/// A reason that may pass: the store is kept and opened again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transient {
    /// Another process holds the store (a previous tlsmgr still exiting).
    Locked,
    /// Permission denied (`EACCES`, `EPERM`), a read-only file system.
    Permission,
    /// No space (`ENOSPC`, `EDQUOT`, `EFBIG`), or a store poisoned by a
    /// write that failed.
    NoSpace,
    /// The descriptor limit (`EMFILE`, `ENFILE`).
    Descriptors,
    /// Memory (`ENOMEM`), interrupted or would-block calls.
    Resources,
    /// Anything else: not known to be lasting, so the store is kept (it
    /// may hold the only copy of what an admin wants to look at).
    Other,
}

impl Transient {
    /// The log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Transient::Locked => "locked",
            Transient::Permission => "permission",
            Transient::NoSpace => "no_space",
            Transient::Descriptors => "descriptors",
            Transient::Resources => "resources",
            Transient::Other => "other",
        }
    }
}

/// How a failed open is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenFailure {
    /// Set the store aside and open a fresh one.
    Lasting(Lasting),
    /// Keep the store; retry with a backoff.
    Transient(Transient),
}

/// Classifies an I/O error met while opening or reading a store. Only
/// errors that say the bytes on disk are wrong are lasting: a file cut
/// short (`UnexpectedEof`), data that does not parse (`InvalidData`), a
/// path component that is not a directory (`ENOTDIR`) or is one where a
/// file should be (`EISDIR`).
pub fn classify_io(e: &std::io::Error) -> OpenFailure {
    if let Some(errno) = e.raw_os_error() {
        return match errno {
            libc::EACCES | libc::EPERM | libc::EROFS => {
                OpenFailure::Transient(Transient::Permission)
            }
            libc::ENOSPC | libc::EDQUOT | libc::EFBIG => OpenFailure::Transient(Transient::NoSpace),
            libc::EMFILE | libc::ENFILE => OpenFailure::Transient(Transient::Descriptors),
            libc::ENOMEM | libc::EINTR | libc::EAGAIN => {
                OpenFailure::Transient(Transient::Resources)
            }
            libc::ENOTDIR | libc::EISDIR => OpenFailure::Lasting(Lasting::NotAStore),
            _ => OpenFailure::Transient(Transient::Other),
        };
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
            OpenFailure::Lasting(Lasting::Corrupt)
        }
        std::io::ErrorKind::PermissionDenied => OpenFailure::Transient(Transient::Permission),
        std::io::ErrorKind::OutOfMemory | std::io::ErrorKind::Interrupted => {
            OpenFailure::Transient(Transient::Resources)
        }
        _ => OpenFailure::Transient(Transient::Other),
    }
}

impl StoreError {
    /// How an open that failed with this error is answered.
    pub fn open_failure(&self) -> OpenFailure {
        match self {
            StoreError::Unreadable { reason, .. } => OpenFailure::Lasting(*reason),
            StoreError::Locked { .. } => OpenFailure::Transient(Transient::Locked),
            StoreError::Poisoned { .. } => OpenFailure::Transient(Transient::NoSpace),
            StoreError::Io { source, .. } => classify_io(source),
            // Records that do not decode, read at open.
            StoreError::Malformed(_) => OpenFailure::Lasting(Lasting::Corrupt),
            StoreError::Backend { .. }
            | StoreError::UnsupportedType(_)
            | StoreError::InvalidDatabase { .. } => OpenFailure::Transient(Transient::Other),
        }
    }

    /// True when the store failed for want of space: a full file system
    /// (`ENOSPC`), a quota (`EDQUOT`) or a file size limit (`EFBIG`). The
    /// store is intact but cannot take writes until there is room, which
    /// is not a reason to reopen it at once and at every request.
    pub fn is_out_of_space(&self) -> bool {
        if let StoreError::Poisoned { path } = self {
            // Poisoned by a write that found no space (often fjall's own
            // background flush): the file system says so.
            return free_bytes(path).is_some_and(|free| free < LOW_SPACE);
        }
        let StoreError::Io { source, .. } = self else {
            return false;
        };
        matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
        )
    }
}

/// Free bytes below which a poisoned store is taken to have run out of
/// space (a journal record and a table flush must fit).
pub const LOW_SPACE: u64 = 4 * 1024 * 1024;

/// Free bytes for unprivileged writers on the file system that holds
/// `path` (or its parent, before it exists); `None` if unknown.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let probe = if path.exists() { path } else { path.parent()? };
    let st = nix::sys::statvfs::statvfs(probe).ok()?;
    // The field types differ between platforms (u64 on Linux x86_64).
    #[allow(clippy::useless_conversion)]
    Some(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn io_errors_are_classified() {
        let os = Error::from_raw_os_error;
        let t = OpenFailure::Transient;
        let l = OpenFailure::Lasting;
        for (e, want) in [
            (os(libc::EACCES), t(Transient::Permission)),
            (os(libc::EPERM), t(Transient::Permission)),
            (os(libc::EROFS), t(Transient::Permission)),
            (os(libc::ENOSPC), t(Transient::NoSpace)),
            (os(libc::EDQUOT), t(Transient::NoSpace)),
            (os(libc::EMFILE), t(Transient::Descriptors)),
            (os(libc::ENFILE), t(Transient::Descriptors)),
            (os(libc::ENOMEM), t(Transient::Resources)),
            (os(libc::EIO), t(Transient::Other)),
            (os(libc::ENOENT), t(Transient::Other)),
            (os(libc::ENOTDIR), l(Lasting::NotAStore)),
            (os(libc::EISDIR), l(Lasting::NotAStore)),
            (Error::from(ErrorKind::UnexpectedEof), l(Lasting::Corrupt)),
            (Error::from(ErrorKind::InvalidData), l(Lasting::Corrupt)),
            (
                Error::from(ErrorKind::PermissionDenied),
                t(Transient::Permission),
            ),
            (Error::from(ErrorKind::Other), t(Transient::Other)),
        ] {
            assert_eq!(classify_io(&e), want, "{e:?}");
        }
    }

    #[test]
    fn store_errors_are_classified() {
        let path = PathBuf::from("/x");
        assert_eq!(
            StoreError::Locked { path: path.clone() }.open_failure(),
            OpenFailure::Transient(Transient::Locked)
        );
        assert_eq!(
            StoreError::Malformed("short".into()).open_failure(),
            OpenFailure::Lasting(Lasting::Corrupt)
        );
        assert_eq!(
            StoreError::Backend {
                path,
                message: "refusing".into()
            }
            .open_failure(),
            OpenFailure::Transient(Transient::Other)
        );
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in Lasting::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
