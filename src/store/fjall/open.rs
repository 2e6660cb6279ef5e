//! Opening a store: its directory, the record format file, and the
//! options fjall opens the database and its keyspaces with.

use super::super::error::{classify_io, Lasting, OpenFailure};
use super::super::location::FJALL_DIR_SUFFIX;
use super::super::{OpenOptions, StoreError};
use super::map_err;
use crate::formats;
use fjall::{Database, KeyspaceCreateOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long to sleep between attempts to take a locked database.
pub(super) const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(50);

// fjall configuration for a small cache: one database per cache type, three
// at most per process, each holding at most some tens of MiB. The block
// cache and the write buffer are parameters (`OpenOptions`).
/// Background flush/compaction threads per database (default: up to 4).
pub(super) const WORKER_THREADS: usize = 1;
/// Open table files kept per database (default 900, too many for three
/// databases under a 1024 descriptor limit).
pub(super) const MAX_CACHED_FILES: usize = 64;
/// The most descriptors one open store holds at once: its table file
/// cache, and its journals, version and lock files and directory (the
/// daemon keeps these free of clients, `daemon::limits`).
pub const MAX_OPEN_FILES: u64 = MAX_CACHED_FILES as u64 + 16;
/// Journal size bound; fjall's minimum (default 512 MiB).
pub(super) const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// Flushed memtables (level-0 tables) a keyspace gathers before they are
/// merged into level 1 (fjall's default: 4). Session ids are random, so
/// every merge rewrites all of level 1, which holds nearly the whole cache:
/// gathering 16 rewrites it a quarter as often. A read checks each level-0
/// table's bloom filter, which fjall keeps in memory. In the load bench at
/// 64 connections (BENCHMARKS.md, "Eighth pass") it gave 0.54 of the
/// ceiling against 0.49-0.51 with 4, and p99.9 11 against 15 ms; 8 and 32
/// did no better.
pub(super) const L0_TABLES_BEFORE_COMPACTION: u8 = 16;

/// fjall's marker files and ours; a non-empty directory with none of them
/// is not a store.
pub(super) const FJALL_MARKERS: [&str; 3] = ["version", "lock", crate::formats::STORE_FORMAT_FILE];

/// Creates `dir` (mode 0700, parent must exist) or checks that an existing
/// one is a fjall database or empty, so that a mistyped `fjall:` path such
/// as the data directory itself is not filled with fjall's files.
pub(super) fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    if !dir.is_dir() {
        return Err(not_a_store(dir, "exists and is not a directory"));
    }
    let mut entries = std::fs::read_dir(dir).map_err(io)?;
    let is_empty = entries.next().is_none();
    if !is_empty && !FJALL_MARKERS.iter().any(|m| dir.join(m).exists()) {
        return Err(not_a_store(
            dir,
            "directory is not empty and holds no fjall database; refusing to use it",
        ));
    }
    Ok(())
}

/// The error for a path that is not a store. Only a path named as ours
/// (`PATH.fjall`, see `store::location`) is [`Lasting::NotAStore`], and
/// so set aside: a `fjall:` path typed by hand may name anything (the data
/// directory itself), which is refused and left where it is.
pub(super) fn not_a_store(dir: &Path, message: &str) -> StoreError {
    let ours = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() > FJALL_DIR_SUFFIX.len() && n.ends_with(FJALL_DIR_SUFFIX));
    if ours {
        StoreError::Unreadable {
            path: dir.to_path_buf(),
            reason: Lasting::NotAStore,
            message: message.into(),
        }
    } else {
        StoreError::Backend {
            path: dir.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Checks the record format a store names ([`formats::STORE_FORMAT_FILE`]).
/// Returns whether the file is missing: a new store, or one written before
/// the file existed (whose records are format 1), which gets it once open.
pub(super) fn check_format(dir: &Path) -> Result<bool, StoreError> {
    let file = dir.join(formats::STORE_FORMAT_FILE);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(source) => {
            return Err(match classify_io(&source) {
                OpenFailure::Lasting(reason) => StoreError::Unreadable {
                    path: dir.to_path_buf(),
                    reason,
                    message: format!("{}: {source}", file.display()),
                },
                OpenFailure::Transient(_) => StoreError::Io {
                    path: dir.to_path_buf(),
                    source,
                },
            })
        }
    };
    let found = std::str::from_utf8(&bytes)
        .ok()
        .and_then(formats::parse_store_format);
    match found {
        Some(formats::STORE_FORMAT) => Ok(false),
        Some(v) => Err(StoreError::Unreadable {
            path: dir.to_path_buf(),
            reason: Lasting::Version,
            message: format!(
                "record format {} {v}, this tlsmgr reads {}",
                formats::STORE_FORMAT_NAME,
                formats::STORE_FORMAT
            ),
        }),
        None => Err(StoreError::Unreadable {
            path: dir.to_path_buf(),
            reason: Lasting::Version,
            message: format!("{} names no record format", file.display()),
        }),
    }
}

/// Writes the format file of a store ([`check_format`]): a temporary
/// file, fsynced, renamed into place, so a crash leaves either no file
/// (taken as format 1 again) or a whole one.
pub(super) fn write_format(dir: &Path) -> Result<(), StoreError> {
    use std::io::Write;
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let tmp = dir.join(format!("{}.tmp", formats::STORE_FORMAT_FILE));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(formats::store_format_line(formats::STORE_FORMAT).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, dir.join(formats::STORE_FORMAT_FILE)).map_err(io)?;
    Ok(())
}

/// How a new keyspace is made: fjall's defaults, with our memtable limit
/// and [`L0_TABLES_BEFORE_COMPACTION`]. fjall records both in the
/// database, so a store made by an earlier version keeps its own.
pub(super) fn keyspace_options(max_memtable: u64) -> KeyspaceCreateOptions {
    let compaction =
        fjall::compaction::Leveled::default().with_l0_threshold(L0_TABLES_BEFORE_COMPACTION);
    KeyspaceCreateOptions::default()
        .max_memtable_size(max_memtable)
        .compaction_strategy(std::sync::Arc::new(compaction))
}

/// Opens the database, retrying every [`LOCK_RETRY_INTERVAL`] while another
/// process holds its lock, until `opts.lock_wait` has passed.
pub(super) fn open_db_waiting(dir: &Path, opts: &OpenOptions) -> Result<Database, StoreError> {
    let start = Instant::now();
    loop {
        let result = Database::builder(dir)
            .cache_size(opts.block_cache_bytes)
            .worker_threads(WORKER_THREADS)
            .max_cached_files(Some(MAX_CACHED_FILES))
            .max_journaling_size(MAX_JOURNAL_BYTES)
            // The active journal is never deleted: sealing it once it holds
            // a write buffer's worth bounds the flushed bytes it keeps on
            // disk (64 MB by fjall's default, a third of a 100 000-session
            // cache; vendor/README.md).
            .journal_rotation_size(opts.write_buffer_bytes)
            .open();
        match result {
            Ok(db) => return Ok(db),
            Err(fjall::Error::Locked) => {
                let waited = start.elapsed();
                if waited >= opts.lock_wait {
                    return Err(StoreError::Locked {
                        path: dir.to_path_buf(),
                    });
                }
                std::thread::sleep(LOCK_RETRY_INTERVAL.min(opts.lock_wait - waited));
            }
            Err(e) => return Err(map_err(dir, e)),
        }
    }
}
