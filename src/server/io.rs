//! The threads that serve client connections (`tlsmgr_io_threads`).
//!
//! Accepted connections are handed out round-robin: the daemon thread (the
//! actix System thread, which also runs the accept loops and the PRNG and
//! ticket-key actors) takes one share, and `N - 1` extra arbiters take the
//! others, so `N` threads frame, decode and answer requests. A connection
//! stays on its thread for its whole life, so its requests are still served
//! one at a time and in order. With `N = 1` everything runs on the daemon
//! thread, as before there were I/O threads.
//!
//! The extra arbiters are stopped at shutdown, which drops their
//! connections; nothing they run keeps the process alive.

use super::connection;
use super::Services;
use actix::Arbiter;
use slog::error;
use std::cell::{Cell, RefCell};

/// The connection-serving threads beyond the daemon thread.
pub struct IoThreads {
    extra: RefCell<Vec<Arbiter>>,
    /// Where the next connection goes: 0 = the daemon thread, `i` = `extra[i - 1]`.
    next: Cell<usize>,
}

/// How many threads `tlsmgr_io_threads = configured` means: 0 is one per
/// CPU (at least 1).
pub fn thread_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

impl IoThreads {
    /// Starts `thread_count(configured) - 1` arbiters. Must run inside the
    /// actix System.
    pub fn start(configured: usize) -> Self {
        let extra = (1..thread_count(configured))
            .map(|_| Arbiter::new())
            .collect();
        IoThreads {
            extra: RefCell::new(extra),
            next: Cell::new(0),
        }
    }

    /// Serves `stream` on the next thread in turn.
    pub fn serve(&self, stream: tokio::net::UnixStream, svc: Services) {
        let extra = self.extra.borrow();
        let turn = self.next.get();
        self.next.set((turn + 1) % (extra.len() + 1));
        let Some(arbiter) = turn.checked_sub(1).and_then(|i| extra.get(i)) else {
            actix_rt::spawn(connection::serve(stream, svc));
            return;
        };
        // A tokio stream belongs to the reactor of the thread that made it:
        // take it out of ours and register it with the arbiter's.
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                error!(svc.log, "hand connection to an I/O thread: {}", e);
                return;
            }
        };
        arbiter.spawn_fn(move || match tokio::net::UnixStream::from_std(std_stream) {
            Ok(stream) => {
                actix_rt::spawn(connection::serve(stream, svc));
            }
            Err(e) => error!(svc.log, "register connection on an I/O thread: {}", e),
        });
    }

    /// Stops the extra threads (their connections are dropped) and returns
    /// them, to be joined once the System is done; later connections are
    /// served on the daemon thread.
    pub fn stop(&self) -> Vec<Arbiter> {
        let extra = std::mem::take(&mut *self.extra.borrow_mut());
        self.next.set(0);
        for arbiter in &extra {
            arbiter.stop();
        }
        extra
    }
}
