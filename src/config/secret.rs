//! The site secret (`tlsmgr_shared_secret_file`): read once, checked, and
//! turned into the keys that name and seal what goes to the shared store.
//!
//! The file must hold at least [`MIN_SECRET_LEN`] bytes (more than
//! [`MAX_SECRET_LEN`] is refused: it is not a key file then) and must not be
//! readable by group or others: a secret that every local user can read
//! protects nothing in Redis. It is read before the chroot and before
//! privileges are dropped; the raw bytes are dropped once the keys are
//! derived (HKDF-SHA256, one `info` label per use).

use hkdf::Hkdf;
use sha2::Sha256;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Fewest bytes a secret file may hold.
pub const MIN_SECRET_LEN: usize = 32;
/// Most bytes a secret file may hold.
pub const MAX_SECRET_LEN: usize = 4096;

/// Why a secret file was refused. Each message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The file could not be opened or read.
    #[error("cannot read shared secret file {path}: {why}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        why: String,
    },
    /// Group or others may read it.
    #[error("shared secret file {path} is readable by group or others (mode {mode:04o}): it must be readable by its owner only")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Too short (or too long) to be a secret.
    #[error("shared secret file {path} holds {len} bytes: it needs {MIN_SECRET_LEN} to {MAX_SECRET_LEN}")]
    BadLength {
        /// The file.
        path: PathBuf,
        /// How many bytes it held (or more than the maximum).
        len: usize,
    },
    /// Not a regular file; a symbolic link is not followed, since whoever
    /// may change the link could point it at a file of their choosing.
    #[error("shared secret file {path} is {what}, not a regular file{}", if *what == "a symbolic link" { " (links are not followed: name the file itself)" } else { "" })]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What is there instead ("a symbolic link", "a directory", ...).
        what: &'static str,
    },
}

/// The keys derived from a site secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The file it was read from.
    pub path: PathBuf,
    /// Keys the HMAC that turns cache ids into Redis key names.
    pub(crate) id_key: [u8; 32],
    /// The XChaCha20-Poly1305 key of every stored value.
    pub(crate) seal_key: [u8; 32],
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// Derives the keys from secret bytes (at least [`MIN_SECRET_LEN`]; the
    /// caller checked).
    pub fn from_bytes(path: PathBuf, bytes: &[u8]) -> Secret {
        let hk = Hkdf::<Sha256>::new(Some(b"tlsmgr shared store v1"), bytes);
        let mut id_key = [0u8; 32];
        let mut seal_key = [0u8; 32];
        // expand() fails only for outputs longer than 255 * 32 bytes.
        let _ = hk.expand(b"cache id hmac", &mut id_key);
        let _ = hk.expand(b"value seal", &mut seal_key);
        Secret {
            path,
            id_key,
            seal_key,
        }
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let unreadable = |e: std::io::Error| SecretError::Unreadable {
            path: path.to_path_buf(),
            why: e.to_string(),
        };
        let (mut bytes, meta) =
            super::regular::read_small(path, MAX_SECRET_LEN as u64).map_err(|e| match e {
                super::regular::Refused::NotAFile(what) => SecretError::NotAFile {
                    path: path.to_path_buf(),
                    what,
                },
                super::regular::Refused::TooLarge(n) => SecretError::BadLength {
                    path: path.to_path_buf(),
                    len: usize::try_from(n).unwrap_or(usize::MAX),
                },
                super::regular::Refused::Missing => {
                    unreadable(std::io::Error::from_raw_os_error(libc::ENOENT))
                }
                super::regular::Refused::Io(e) => unreadable(e),
            })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o044 != 0 {
            bytes.fill(0);
            return Err(SecretError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&bytes.len()) {
            return Err(SecretError::BadLength {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        let secret = Secret::from_bytes(path.to_path_buf(), &bytes);
        bytes.fill(0);
        Ok(secret)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn good_short_exposed_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let good = write(tmp.path(), "good", &[7; 32], 0o600);
        let s = Secret::load(&good).unwrap();
        assert_ne!(s.id_key, s.seal_key);
        assert_eq!(s, Secret::from_bytes(good.clone(), &[7; 32]));
        assert_ne!(s, Secret::from_bytes(good.clone(), &[8; 32]));
        let short = write(tmp.path(), "short", &[7; 31], 0o600);
        let e = Secret::load(&short).unwrap_err();
        assert!(e.to_string().contains("short holds 31 bytes"), "{e}");
        let world = write(tmp.path(), "world", &[7; 64], 0o644);
        let e = Secret::load(&world).unwrap_err();
        assert!(e.to_string().contains("world is readable by group"), "{e}");
        let group = write(tmp.path(), "group", &[7; 64], 0o640);
        assert!(matches!(
            Secret::load(&group),
            Err(SecretError::Exposed { .. })
        ));
        let e = Secret::load(&tmp.path().join("none")).unwrap_err();
        assert!(e.to_string().contains("none"), "{e}");
        std::os::unix::fs::symlink(&good, tmp.path().join("link")).unwrap();
        let e = Secret::load(&tmp.path().join("link")).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("link is a symbolic link, not a regular file (links are not followed: name the file itself)"),
            "{e}"
        );
        let big = write(tmp.path(), "big", &[7; MAX_SECRET_LEN + 1], 0o400);
        assert!(matches!(
            Secret::load(&big),
            Err(SecretError::BadLength { .. })
        ));
        assert!(matches!(
            Secret::load(tmp.path()),
            Err(SecretError::NotAFile { .. }) | Err(SecretError::Exposed { .. })
        ));
    }
}
