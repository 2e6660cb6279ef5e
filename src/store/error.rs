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

impl StoreError {
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
