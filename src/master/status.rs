//! The status channel to master(8) on fd 5 (spec §4.3): a 12-byte record
//! `{int pid; unsigned generation; int avail}` in native byte order, written
//! with one `write()`, TAKEN (0) before a request is served and AVAIL (1)
//! after. End of file (or anything readable) on fd 5 means master went away
//! or reloads: the daemon saves its state and exits 0.
//!
//! master(8) panics when a child reports TAKEN twice or AVAIL twice in a
//! row, so with several connections in flight we report TAKEN when the
//! first request starts and AVAIL when the last one ends.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// `MASTER_STAT_TAKEN`.
pub const TAKEN: i32 = 0;
/// `MASTER_STAT_AVAIL`.
pub const AVAIL: i32 = 1;
/// The descriptor master passes the status channel on.
pub const STATUS_FD: i32 = 5;
/// The first listening descriptor.
pub const LISTEN_FD: i32 = 6;

/// One status record, exactly as master reads it.
pub fn record(pid: u32, generation: u32, avail: i32) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[0..4].copy_from_slice(&(pid as i32).to_ne_bytes());
    r[4..8].copy_from_slice(&generation.to_ne_bytes());
    r[8..12].copy_from_slice(&avail.to_ne_bytes());
    r
}

/// `GENERATION` from the environment: octal, as master writes it; missing
/// or malformed reads as 0 (master then ignores our records, as it does
/// for stock Postfix).
pub fn generation_from_env(value: Option<&str>) -> u32 {
    value
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0)
}

/// The writing side of fd 5, with the in-flight request count.
///
/// The count is an atomic so that a request which does not change whether
/// the process is busy (another one is already in flight) takes no lock
/// and writes nothing: with several I/O threads, a mutex taken on every
/// request, and held across the `write()`, made them spin on each other.
/// Only a thread that moved the count to or from zero takes the lock; it
/// then reports the count as it is at that moment, if that differs from
/// the last record written. Records therefore alternate by construction
/// (master(8) panics on two TAKEN or two AVAIL in a row), and the last
/// thread to sync after the last change leaves the record that matches
/// the count: TAKEN while a request is in flight, AVAIL once none is.
pub struct StatusChannel {
    in_flight: AtomicUsize,
    /// The socket and whether the last record written was TAKEN.
    writer: Mutex<(UnixStream, bool)>,
    pid: u32,
    generation: u32,
}

impl StatusChannel {
    /// Wraps the status socket.
    pub fn new(stream: UnixStream, generation: u32) -> Self {
        StatusChannel {
            in_flight: AtomicUsize::new(0),
            writer: Mutex::new((stream, false)),
            pid: std::process::id(),
            generation,
        }
    }

    /// A request starts: TAKEN if it is the only one in flight.
    pub fn taken(&self) -> std::io::Result<()> {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            self.sync()?;
        }
        Ok(())
    }

    /// A request ended: AVAIL if it was the last one in flight.
    pub fn avail(&self) -> std::io::Result<()> {
        let before = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        if before <= 1 {
            self.sync()?;
        }
        Ok(())
    }

    /// Writes the record for the current count if it differs from the
    /// last one written.
    fn sync(&self) -> std::io::Result<()> {
        let mut g = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let busy = self.in_flight.load(Ordering::SeqCst) > 0;
        if busy != g.1 {
            let avail = if busy { TAKEN } else { AVAIL };
            // Marked first: after a failed write the daemon exits, and a
            // partial record must not be followed by its opposite.
            g.1 = busy;
            g.0.write_all(&record(self.pid, self.generation, avail))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn records_alternate_under_overlap() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let ch = StatusChannel::new(a, 0o17);
        ch.taken().unwrap();
        ch.taken().unwrap();
        ch.avail().unwrap();
        ch.avail().unwrap();
        drop(ch);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        let pid = std::process::id();
        let mut want = record(pid, 15, TAKEN).to_vec();
        want.extend_from_slice(&record(pid, 15, AVAIL));
        assert_eq!(got, want);
    }

    #[test]
    fn records_alternate_across_threads() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let ch = std::sync::Arc::new(StatusChannel::new(a, 0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let ch = ch.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        ch.taken().unwrap();
                        ch.avail().unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        drop(ch);
        let got = reader.join().unwrap();
        assert_eq!(got.len() % 12, 0);
        let states: Vec<i32> = got
            .chunks(12)
            .map(|c| i32::from_ne_bytes(c[8..12].try_into().unwrap()))
            .collect();
        assert!(!states.is_empty());
        for (i, s) in states.iter().enumerate() {
            assert_eq!(*s, if i % 2 == 0 { TAKEN } else { AVAIL }, "record {i}");
        }
        assert_eq!(states.last(), Some(&AVAIL), "idle at the end");
    }

    #[test]
    fn generation_is_octal() {
        assert_eq!(generation_from_env(Some("17")), 15);
        assert_eq!(generation_from_env(Some("x")), 0);
        assert_eq!(generation_from_env(None), 0);
    }
}
