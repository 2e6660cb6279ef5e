//! The daemon's top-level error: start-up, configuration and I/O. Each
//! module has its own error enum ([`crate::store::StoreError`],
//! [`crate::config::ConfigError`], ...); this one only wraps them.

use crate::store::StoreError;

/// Errors of the daemon as a whole (start-up, configuration, I/O).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed; `what` says which and on what.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing, e.g. `bind /var/spool/postfix/private/tlsmgr`.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration is invalid. The message names file, line and parameter
    /// where they are known, in Postfix's style.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A session-cache store could not be opened or used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A start-up hook of the layer above failed (the master(8) adapter's
    /// chroot and switch of ids); its error says what.
    #[error(transparent)]
    Hook(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Wraps an I/O error with a description of what failed.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
