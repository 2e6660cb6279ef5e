//! fjall's errors as [`StoreError`]s, lasting or transient.

use super::super::error::{classify_io, Lasting, OpenFailure, Transient};
use super::super::StoreError;
use std::path::Path;

/// Turns a fjall error into a [`StoreError`] (no fjall type leaves this
/// module). Errors that say the files cannot be read, whatever we wait for,
/// become [`StoreError::Unreadable`] (see [`classify_fjall`]).
pub(super) fn map_err(path: &Path, e: fjall::Error) -> StoreError {
    let lasting = match classify_fjall(&e) {
        OpenFailure::Lasting(reason) => Some(reason),
        OpenFailure::Transient(_) => None,
    };
    match (e, lasting) {
        (fjall::Error::Locked, _) => StoreError::Locked {
            path: path.to_path_buf(),
        },
        (fjall::Error::Poisoned, _) => StoreError::Poisoned {
            path: path.to_path_buf(),
        },
        // lsm-tree's I/O errors too: a full disk met by a table write is
        // the same full disk.
        (fjall::Error::Io(source), None)
        | (fjall::Error::Storage(fjall::LsmError::Io(source)), None) => StoreError::Io {
            path: path.to_path_buf(),
            source,
        },
        (other, Some(reason)) => StoreError::Unreadable {
            path: path.to_path_buf(),
            reason,
            message: other.to_string(),
        },
        (other, None) => StoreError::Backend {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// Lasting or transient, for a fjall error (fjall 3's `Error` and
/// lsm-tree 3's, `vendor/fjall/src/error.rs`, `vendor/lsm-tree/src/error.rs`).
///
/// Lasting: whatever says the bytes on disk are not what fjall wrote or
/// can read: an unparsable or foreign `version` file (`InvalidVersion`),
/// failed decompression, checksums, trailers, headers and tags, a journal
/// that does not recover, invalid UTF-8 in a name, and `Unrecoverable`
/// (required files missing, or an unreadable archive header). I/O errors
/// are classified by [`classify_io`]: a table cut short reads as
/// `UnexpectedEof`. Transient: the lock (a previous process exiting), a
/// poisoned store (a failed write, so likely space), and anything fjall may
/// add later (its enums are non-exhaustive): an error we do not know is not
/// a reason to move a store away.
pub fn classify_fjall(e: &fjall::Error) -> OpenFailure {
    use fjall::Error as F;
    use fjall::LsmError as L;
    let corrupt = OpenFailure::Lasting(Lasting::Corrupt);
    match e {
        F::Io(io) => classify_io(io),
        F::Locked => OpenFailure::Transient(Transient::Locked),
        F::Poisoned => OpenFailure::Transient(Transient::NoSpace),
        F::InvalidVersion(_) => OpenFailure::Lasting(Lasting::Format),
        F::JournalRecovery(_)
        | F::Decompress(_)
        | F::InvalidTrailer
        | F::InvalidTag(_)
        | F::Unrecoverable => corrupt,
        F::Storage(lsm) => match lsm {
            L::Io(io) => classify_io(io),
            L::InvalidVersion(_) => OpenFailure::Lasting(Lasting::Format),
            L::Decompress(_)
            | L::Unrecoverable
            | L::ChecksumMismatch { .. }
            | L::InvalidTag(_)
            | L::InvalidTrailer
            | L::InvalidHeader(_)
            | L::Utf8(_) => corrupt,
            _ => OpenFailure::Transient(Transient::Other),
        },
        // Not at open (a keyspace deleted under us), or added later.
        _ => OpenFailure::Transient(Transient::Other),
    }
}
