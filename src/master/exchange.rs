//! A minimal PRNG exchange file (spec §2.5): opened (created 0600) before
//! the chroot, and rewritten at start and before a clean exit: lock, read
//! up to 1024 bytes, mix them in, write 1024 fresh bytes at offset 0, unlock.
//!
//! The periodic update belongs to the PRNG actor (issue 6); this module only
//! gives the master(8) child the save-on-exit that `postfix reload` and
//! `postfix stop` rely on.

use crate::prng::Pool;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// `TLS_PRNG_EXCH_SIZE`.
pub const EXCHANGE_SIZE: usize = 1024;

/// The open exchange file.
#[derive(Debug)]
pub struct ExchangeFile {
    file: Option<File>,
    path: PathBuf,
}

impl ExchangeFile {
    /// Opens or creates `path` read-write with mode 0600.
    pub fn open(path: &Path) -> std::io::Result<ExchangeFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        Ok(ExchangeFile {
            file: Some(file),
            path: path.to_path_buf(),
        })
    }

    /// The configured path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One exchange: mixes the file into `pool` and rewrites it from `pool`.
    /// Errors name the step, as Postfix's fatal messages do.
    pub fn update(&mut self, pool: &mut Pool) -> Result<(), String> {
        let path = self.path.display().to_string();
        let file = self
            .file
            .take()
            .ok_or_else(|| format!("cannot lock PRNG exchange file {path}: not open"))?;
        let mut locked = Flock::lock(file, FlockArg::LockExclusive).map_err(|(f, e)| {
            self.file = Some(f);
            format!("cannot lock PRNG exchange file {path}: {e}")
        })?;
        let result = (|| {
            locked
                .seek(SeekFrom::Start(0))
                .map_err(|e| format!("cannot seek PRNG exchange file {path}: {e}"))?;
            let mut old = Vec::with_capacity(EXCHANGE_SIZE);
            (&mut *locked)
                .take(EXCHANGE_SIZE as u64)
                .read_to_end(&mut old)
                .map_err(|e| format!("cannot read PRNG exchange file {path}: {e}"))?;
            pool.mix(&old);
            let mut fresh = [0u8; EXCHANGE_SIZE];
            pool.fill(&mut fresh);
            locked
                .seek(SeekFrom::Start(0))
                .map_err(|e| format!("cannot seek PRNG exchange file {path}: {e}"))?;
            locked
                .write_all(&fresh)
                .map_err(|e| format!("cannot write PRNG exchange file {path}: {e}"))
        })();
        match locked.unlock() {
            Ok(f) => self.file = Some(f),
            Err((_, e)) => return Err(format!("cannot unlock PRNG exchange file {path}: {e}")),
        }
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn update_rewrites_1024_bytes_and_keeps_longer_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prng_exch");
        let mut x = ExchangeFile::open(&p).unwrap();
        let mut pool = Pool::from_os();
        x.update(&mut pool).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let first = std::fs::read(&p).unwrap();
        assert_eq!(first.len(), EXCHANGE_SIZE);
        x.update(&mut pool).unwrap();
        assert_ne!(std::fs::read(&p).unwrap(), first);
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        x.update(&mut pool).unwrap();
        let long = std::fs::read(&p).unwrap();
        assert_eq!(long.len(), 4096);
        assert_eq!(&long[EXCHANGE_SIZE..], &[7u8; 4096 - EXCHANGE_SIZE][..]);
    }
}
