//! A syslog socket read as syslogd reads it: all the time, from its own
//! thread. A datagram socket queues only `net.unix.max_dgram_qlen` (10 by
//! default) messages; a test that read only after the daemon exited would
//! make a daemon that logs more than that wait on its sends.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the socket must stay quiet, once told the sender is done,
/// before the reader stops.
const QUIET: Duration = Duration::from_millis(500);

pub struct SyslogReader {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl SyslogReader {
    /// Binds a datagram socket at `path` and reads it until
    /// [`SyslogReader::finish`].
    pub fn bind(path: &Path) -> SyslogReader {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(QUIET)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut lines = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match sock.recv(&mut buf) {
                        Ok(n) => lines.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                        // Quiet after the sender is done: nothing more comes.
                        Err(_) if done.load(Ordering::SeqCst) => return lines,
                        Err(_) => {}
                    }
                }
            })
        };
        SyslogReader { done, thread }
    }

    /// Every datagram received, in order; call once the sender has exited.
    pub fn finish(self) -> Vec<String> {
        self.done.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}
