//! The threads that serve client connections (`tlsmgr_io_threads`).
//!
//! Accepted connections are handed out round-robin to `N` arbiters, which
//! frame, decode and answer requests; a connection stays on its thread for
//! its whole life, so its requests are served one at a time and in order.
//! The daemon thread (the actix System thread) serves none: it runs the
//! control plane (actors, accept loops, reloads), whose occasional blocking
//! work (saving ticket keys, parsing main.cf) must not delay a request.
//!
//! The arbiters are stopped at shutdown, which drops their connections.

use super::connection;
use super::idle::IdleConnections;
use super::{RequestObserver, Services};
use actix::Arbiter;
use slog::error;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The connection-serving threads.
pub struct IoThreads {
    threads: RefCell<Vec<Arbiter>>,
    /// Where the next connection goes.
    next: Cell<usize>,
    /// Every open connection, to close the longest-idle one when
    /// descriptors run out.
    idle: Arc<IdleConnections>,
    /// Connections handed to a thread and not yet closed. Counted here,
    /// when the accept loop hands them out, rather than by `idle`, which
    /// registers a connection only once its thread has started it.
    open: Arc<AtomicUsize>,
}

/// One connection counted in [`IoThreads::open_connections`] until dropped
/// with its task (or with the closure that would have started it).
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
    /// Starts `thread_count(configured)` arbiters, each beating for
    /// `observer` if it asks for it. Must run inside the actix System.
    pub fn start(configured: usize, observer: Option<&dyn RequestObserver>) -> Self {
        let threads = (0..thread_count(configured))
            .map(|_| {
                let arbiter = Arbiter::new();
                if let Some((every, beat)) = observer.and_then(|o| o.io_thread_beat()) {
                    arbiter.spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        loop {
                            tick.tick().await;
                            beat();
                        }
                    });
                }
                arbiter
            })
            .collect();
        IoThreads {
            threads: RefCell::new(threads),
            next: Cell::new(0),
            idle: Arc::default(),
            open: Arc::default(),
        }
    }

    /// Serves `stream` on the next thread in turn.
    pub fn serve(&self, stream: tokio::net::UnixStream, svc: Services) {
        let threads = self.threads.borrow();
        let turn = self.next.get();
        self.next.set((turn + 1) % threads.len().max(1));
        let Some(arbiter) = threads.get(turn) else {
            // Stopped (shutting down): drop the connection.
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
        let idle = self.idle.clone();
        self.open.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(self.open.clone());
        arbiter.spawn_fn(move || match tokio::net::UnixStream::from_std(std_stream) {
            Ok(stream) => {
                actix_rt::spawn(async move {
                    connection::serve(stream, svc, idle).await;
                    drop(counted);
                });
            }
            Err(e) => error!(svc.log, "register connection on an I/O thread: {}", e),
        });
    }

    /// How many connections are open (handed out and not yet closed).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The open connections.
    pub fn connections(&self) -> &Arc<IdleConnections> {
        &self.idle
    }

    /// Stops the threads (their connections are dropped) and returns them,
    /// to be joined once the System is done.
    pub fn stop(&self) -> Vec<Arbiter> {
        let threads = std::mem::take(&mut *self.threads.borrow_mut());
        self.next.set(0);
        for arbiter in &threads {
            arbiter.stop();
        }
        threads
    }
}
