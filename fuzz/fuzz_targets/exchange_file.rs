//! The PRNG exchange-file reader: whatever the file holds (any length, any
//! bytes), an update mixes it in and leaves exactly 1024 fresh bytes,
//! never a panic. The file lives on /dev/shm when there is one (speed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use tlsmgr::prng::exchange::ExchangeFile;
use tlsmgr::prng::Pool;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("tlsmgr-fuzz-exchange-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz scratch directory");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("prng_exch");
    std::fs::write(&path, data).expect("write the planted file");
    let mut ex = ExchangeFile::new(&path, dir());
    let before = std::fs::read(&path).expect("read back");
    let report = ex.update(Pool::from_os());
    assert!(report.is_ok(), "update failed on a plain file");
    let after = std::fs::read(&path).expect("read after");
    assert_eq!(after.len(), 1024);
    if before.len() == 1024 {
        assert_ne!(after, before, "the bytes must be fresh");
    }
});
