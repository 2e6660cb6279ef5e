//! Setting aside a store that cannot be read, so a fresh one can serve.
//!
//! A session cache only saves full TLS handshakes, and stock Postfix starts
//! its caches empty at every start: a store that cannot be read for a
//! lasting reason ([`super::error::Lasting`]) is not worth keeping the
//! cache off for. It is renamed, never deleted, to
//! `PATH.fjall.broken-<UTC time>` (e.g. `smtpd_scache.fjall.broken-20261207T181500Z`)
//! beside it, for an admin to look at, and the caller opens a fresh store at
//! the old path. Only the [`KEEP_ASIDE`] newest such copies of one store
//! are kept: a store that keeps breaking must not fill the disk.

use std::path::{Path, PathBuf};

/// How many set-aside copies of one store are kept.
pub const KEEP_ASIDE: usize = 2;

/// What follows the store's name in the name of a set-aside copy.
pub const ASIDE_INFIX: &str = ".broken-";

/// Errors of [`set_aside`].
#[derive(Debug, thiserror::Error)]
pub enum SetAsideError {
    /// The store's path has no file name or parent (`/`, `..`).
    #[error("{0}: cannot be renamed")]
    NoName(PathBuf),
    /// Nothing is at the path (its parent is gone or was replaced).
    #[error("{0}: nothing there to set aside")]
    Missing(PathBuf),
    /// The rename failed.
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        /// The store.
        from: PathBuf,
        /// Where it was to go.
        to: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
}

/// What [`set_aside`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Where the store went.
    pub to: PathBuf,
    /// Older copies removed to keep [`KEEP_ASIDE`].
    pub pruned: Vec<PathBuf>,
    /// Older copies that should have gone but could not.
    pub not_pruned: Vec<(PathBuf, String)>,
}

/// `secs` (since the epoch) as `YYYYMMDDTHHMMSSZ`, in UTC.
pub fn utc_stamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of day `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Renames the store at `path` to `PATH.broken-<UTC time of now_secs>`
/// (with `-1`, `-2`, … added if that name is taken), then removes all but
/// the [`KEEP_ASIDE`] newest copies. The copies' names sort by time, so
/// "newest" is by name, not by a file time an admin's tools may change.
pub fn set_aside(path: &Path, now_secs: u64) -> Result<SetAside, SetAsideError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return Err(SetAsideError::NoName(path.to_path_buf()));
    };
    // A relative path of one component has an empty parent: the working
    // directory.
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    if std::fs::symlink_metadata(path).is_err() {
        return Err(SetAsideError::Missing(path.to_path_buf()));
    }
    let prefix = format!("{name}{ASIDE_INFIX}");
    let stamp = utc_stamp(now_secs);
    let mut to = parent.join(format!("{prefix}{stamp}"));
    let mut n = 0u32;
    while std::fs::symlink_metadata(&to).is_ok() {
        n += 1;
        to = parent.join(format!("{prefix}{stamp}-{n}"));
    }
    std::fs::rename(path, &to).map_err(|source| SetAsideError::Rename {
        from: path.to_path_buf(),
        to: to.clone(),
        source,
    })?;
    let (pruned, not_pruned) = prune(parent, &prefix);
    Ok(SetAside {
        to,
        pruned,
        not_pruned,
    })
}

/// Removes all but the [`KEEP_ASIDE`] newest copies named `prefix…` in
/// `parent`.
fn prune(parent: &Path, prefix: &str) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return (Vec::new(), Vec::new());
    };
    let mut copies: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(prefix))
        .collect();
    // Same stamp: "-N" copies were made after the plain one.
    copies.sort_by_key(|n| copy_order(n));
    let old = copies.len().saturating_sub(KEEP_ASIDE);
    let (mut pruned, mut not_pruned) = (Vec::new(), Vec::new());
    for name in copies.into_iter().take(old) {
        let p = parent.join(name);
        let removed = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => pruned.push(p),
            Err(e) => not_pruned.push((p, e.to_string())),
        }
    }
    (pruned, not_pruned)
}

/// Sort key of a copy's name: its stamp, then its `-N` (0 for none).
fn copy_order(name: &str) -> (String, u32) {
    let tail = name.rsplit(ASIDE_INFIX).next().unwrap_or(name);
    match tail.split_once('-') {
        Some((stamp, n)) => (stamp.to_owned(), n.parse().unwrap_or(u32::MAX)),
        None => (tail.to_owned(), 0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        // 2026-12-07 18:15:00 UTC.
        assert_eq!(utc_stamp(1_796_667_300), "20261207T181500Z");
    }

    #[test]
    fn a_store_goes_aside_and_two_copies_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("s.fjall");
        let mut made = Vec::new();
        for (i, t) in [100u64, 100, 200, 300].into_iter().enumerate() {
            std::fs::create_dir(&store).unwrap();
            std::fs::write(store.join("version"), format!("{i}")).unwrap();
            let r = set_aside(&store, t).unwrap();
            assert!(!store.exists());
            assert_eq!(
                std::fs::read_to_string(r.to.join("version")).unwrap(),
                format!("{i}")
            );
            made.push(r.to);
        }
        let mut left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.sort();
        assert_eq!(left, made[2..].to_vec(), "the two newest");
        assert!(made[1].to_str().unwrap().ends_with("T000140Z-1"));
    }

    #[test]
    fn a_regular_file_goes_aside_too() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("s.fjall");
        std::fs::write(&store, b"x").unwrap();
        let r = set_aside(&store, 0).unwrap();
        assert_eq!(std::fs::read(&r.to).unwrap(), b"x");
        assert!(matches!(
            set_aside(&store, 0),
            Err(SetAsideError::Missing(_))
        ));
    }
}
