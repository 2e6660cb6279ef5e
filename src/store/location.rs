//! Where a session cache is stored: from a main.cf database string to a
//! backend and a path.
//!
//! The `smtpd_tls_session_cache_database`, `smtp_tls_session_cache_database`
//! and `lmtp_tls_session_cache_database` parameters take a Postfix database
//! string, `type:path`. This tlsmgr stores caches in its own format, so the
//! string is mapped as follows:
//!
//! | database string            | storage                                   |
//! |----------------------------|-------------------------------------------|
//! | `fjall:PATH`               | fjall database in directory `PATH`        |
//! | `btree:PATH`, `hash:PATH`, `lmdb:PATH`, `sdbm:PATH` | fjall database in directory `PATH.fjall` |
//! | `memory:` (anything after the colon is ignored) | in process memory, lost at exit |
//! | `PATH` (no `type:` prefix) | as if `default_database_type:PATH` had been written (`hash` on Linux, so `PATH.fjall`) |
//! | any other type (`cdb:`, `proxy:`, `memcache:`, `redis:`, …) | error: unsupported database type |
//!
//! - The `.fjall` suffix keeps the directory apart from the files stock
//!   Postfix would use for the same string (`PATH.db`, `PATH.lmdb`,
//!   `PATH.dir` + `PATH.pag`), so both can share a `data_directory` and
//!   switching back to stock Postfix needs no clean-up.
//! - The type is the text before the first `:`, unless that text contains a
//!   `/`: then the whole string is a path without a type (so
//!   `/var/lib/odd:name` is a path, while `cdb:/x` names the type `cdb`).
//!   Type names are case-sensitive, as in Postfix.
//! - An empty `PATH` (`btree:`) or an empty type (`:/x`) is an error.
//! - A relative `PATH` stays relative; it is resolved against the daemon's
//!   working directory when the store is opened.
//! - The fjall directory is created (mode 0700) when missing, but its parent
//!   directory must exist, as for Postfix's own cache files.
//! - Two cache types must not share a store: [`same_store`] tells whether two
//!   locations are one and the same (paths are compared after making them
//!   absolute, without resolving symbolic links or `..`).

use super::fjall::FjallStore;
use super::memory::MemoryStore;
use super::{OpenOptions, Store, StoreError};
use std::fmt;
use std::path::{Path, PathBuf};

/// The suffix appended to the path of a Postfix file map type (`btree:PATH`
/// → directory `PATH.fjall`).
pub const FJALL_DIR_SUFFIX: &str = ".fjall";

/// Postfix file map types that we serve with a fjall directory `PATH.fjall`.
const FILE_MAP_TYPES: [&str; 4] = ["btree", "hash", "lmdb", "sdbm"];

/// Which backend serves a cache, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A fjall database in this directory.
    Fjall {
        /// The database directory (relative paths are kept relative).
        dir: PathBuf,
    },
    /// In-process memory; nothing is kept across restarts.
    Memory,
}

/// Where and how a cache is stored.
///
/// Note that `==` compares the descriptions; whether two locations are the
/// same store is [`same_store`]'s question (two `memory:` caches are equal
/// here but are different stores).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLocation {
    /// The database string as configured (e.g. `btree:/var/lib/postfix/smtpd_scache`);
    /// this is what [`fmt::Display`] shows, as Postfix's logs do.
    pub database: String,
    /// The backend and its path.
    pub backend: Backend,
}

impl StoreLocation {
    /// The directory of a file store; `None` for memory.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Fjall { dir } => Some(dir),
            Backend::Memory => None,
        }
    }

    /// Opens the store. A memory store is new and empty each time and
    /// ignores `opts`.
    pub fn open(&self, opts: OpenOptions) -> Result<Box<dyn Store>, StoreError> {
        match &self.backend {
            Backend::Fjall { dir } => Ok(Box::new(FjallStore::open(dir, opts)?)),
            Backend::Memory => Ok(Box::new(MemoryStore::new())),
        }
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.database)
    }
}

/// Maps a main.cf cache database string to a backend and path (rule in the
/// module documentation). `default_database_type` is Postfix's parameter of
/// that name, used when `value` has no `type:` prefix.
///
/// An empty `value` is an error here: callers treat an empty parameter as
/// "cache disabled" before asking for a location.
pub fn parse_database(
    value: &str,
    default_database_type: &str,
) -> Result<StoreLocation, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidDatabase {
        database: value.to_owned(),
        reason: reason.to_owned(),
    };
    let (db_type, path) = match value.split_once(':') {
        Some((t, p)) if !t.contains('/') => (t, p),
        _ => (default_database_type, value),
    };
    if db_type.is_empty() {
        return Err(if value.starts_with(':') {
            invalid("empty database type before ':'")
        } else {
            invalid("no database type given and default_database_type is empty")
        });
    }
    let backend = match db_type {
        "memory" => Backend::Memory,
        "fjall" => Backend::Fjall {
            dir: PathBuf::from(nonempty(path).ok_or_else(|| invalid("empty path"))?),
        },
        t if FILE_MAP_TYPES.contains(&t) => {
            let path = nonempty(path).ok_or_else(|| invalid("empty path"))?;
            Backend::Fjall {
                dir: PathBuf::from(format!("{path}{FJALL_DIR_SUFFIX}")),
            }
        }
        other => return Err(StoreError::UnsupportedType(other.to_owned())),
    };
    Ok(StoreLocation {
        database: value.to_owned(),
        backend,
    })
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// True when `a` and `b` are the same store, which two cache types must not
/// share. Two memory locations are always different stores; two fjall
/// locations are the same when their directories are equal after making
/// them absolute (lexically: symbolic links and `..` are not resolved).
pub fn same_store(a: &StoreLocation, b: &StoreLocation) -> bool {
    match (&a.backend, &b.backend) {
        (Backend::Fjall { dir: x }, Backend::Fjall { dir: y }) => absolute(x) == absolute(y),
        _ => false,
    }
}

fn absolute(p: &Path) -> PathBuf {
    // `absolute` only fails for an empty path or when the working directory
    // is unknown; the lexical form is then the best comparison left.
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_the_configured_string() {
        let loc = parse_database("/var/lib/postfix/smtpd_scache", "hash").unwrap();
        assert_eq!(loc.to_string(), "/var/lib/postfix/smtpd_scache");
        assert_eq!(
            loc.path(),
            Some(Path::new("/var/lib/postfix/smtpd_scache.fjall"))
        );
    }

    #[test]
    fn memory_path_is_none_and_opens_empty() {
        let loc = parse_database("memory:x", "hash").unwrap();
        assert_eq!(loc.path(), None);
        let s = loc.open(OpenOptions::default()).unwrap();
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn relative_and_absolute_spellings_of_one_dir_are_the_same_store() {
        let cwd = std::env::current_dir().unwrap();
        let a = parse_database("fjall:rel/dir", "hash").unwrap();
        let b = parse_database(&format!("fjall:{}/rel/./dir/", cwd.display()), "hash").unwrap();
        assert!(same_store(&a, &b));
    }
}
