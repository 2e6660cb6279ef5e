//! Placeholder: database string -> backend and path. TO BE IMPLEMENTED (helper).
use std::path::PathBuf;

/// Which backend serves a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// fjall keyspace in a directory.
    Fjall,
    /// In-process memory.
    Memory,
}

/// Where and how a cache is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLocation {
    /// The backend.
    pub backend: Backend,
    /// The directory of a file store; `None` for memory.
    pub path: Option<PathBuf>,
}
