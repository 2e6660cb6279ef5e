//! What a store directory holds on disk, for the tests that bound it.
#![allow(dead_code)]

use std::path::Path;

/// Apparent bytes of every file under `dir` (what `du --apparent-size`
/// counts, and a backup without sparse support copies). A file deleted
/// between listing and stat (a table a compaction replaced) counts nothing.
pub fn apparent_bytes(dir: &Path) -> u64 {
    let mut sum = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(md) if md.is_dir() => dirs.push(e.path()),
                Ok(md) => sum += md.len(),
                Err(_) => {}
            }
        }
    }
    sum
}
