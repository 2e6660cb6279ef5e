//! One client connection: the announcement, then requests in order, one
//! reply each (spec §1.3, §1.4). A connection that stalls mid-request stalls
//! only itself, and only for `ipc_timeout`; limits and garbage close it.

use super::idle::{IdleConnections, Registration};
use super::requests::apply;
use super::Services;
use crate::protocol::codec::ServerCodec;
use crate::protocol::{Incoming, Malformed, Reply, Status, ANNOUNCEMENT};
use futures::{SinkExt, StreamExt};
use slog::{debug, warn};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// Test hook (feature `test-hooks`): with this variable set, a `seed`
/// request blocks its I/O thread for an hour, so tests can prove the
/// watchdog.
#[cfg(feature = "test-hooks")]
pub const TEST_STALL_ENV: &str = "TLSMGR_TEST_STALL_SEED";

#[cfg(feature = "test-hooks")]
fn test_stall(req: &crate::protocol::Request) {
    if matches!(req, crate::protocol::Request::Seed { .. })
        && std::env::var_os(TEST_STALL_ENV).is_some()
    {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Tells the observer (if any) that a request started, and that it ended
/// when dropped, however the request ends.
struct ObservedRequest<'a>(&'a Services);

impl<'a> ObservedRequest<'a> {
    fn start(svc: &'a Services) -> Self {
        if let Some(o) = &svc.observer {
            o.request_started();
        }
        ObservedRequest(svc)
    }
}

impl Drop for ObservedRequest<'_> {
    fn drop(&mut self) {
        if let Some(o) = &self.0.observer {
            o.request_finished();
        }
    }
}

/// Serves one connection until the peer closes, errs, or times out, or is
/// shut down to make room for a new client (`idle::IdleConnections`).
pub async fn serve(mut stream: UnixStream, svc: Services, idle: Arc<IdleConnections>) {
    let metrics = svc.metrics.clone();
    let _counted = metrics.connection();
    let ipc_timeout = svc.config.load().ipc_timeout;
    // Postfix 3.6+ clients wait for this before sending anything.
    match timeout(ipc_timeout, stream.write_all(ANNOUNCEMENT)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    let mut framed = Framed::new(stream, ServerCodec::default());
    let registration = idle.register(framed.get_ref().as_fd());
    requests(&mut framed, &svc, &registration, ipc_timeout).await;
    // In this order: out of the registry while the socket is open (so that
    // nobody shuts down a reused descriptor), then closed, then, if it was
    // closed to make room, the accept loop told that the slot is free.
    let closed = registration.unregister();
    drop(framed);
    closed.socket_closed();
}

/// Writes `reply`; true when it went out. A reply nearly always fits in the
/// socket buffer at once, so a timer is armed only when it does not.
async fn send(
    framed: &mut Framed<UnixStream, ServerCodec>,
    reply: Reply,
    ipc_timeout: Duration,
) -> bool {
    use futures::FutureExt;
    if framed.feed(reply).await.is_err() {
        return false;
    }
    // Dropping a pending flush loses nothing: what is unwritten stays in
    // the buffer, and the flush below goes on with it.
    match framed.flush().now_or_never() {
        Some(done) => done.is_ok(),
        None => matches!(timeout(ipc_timeout, framed.flush()).await, Ok(Ok(()))),
    }
}

async fn requests(
    framed: &mut Framed<UnixStream, ServerCodec>,
    svc: &Services,
    registration: &Registration,
    ipc_timeout: Duration,
) {
    loop {
        // No timer here: `ipc_timeout` between requests is the sweeper's
        // ([`super::idle::sweep`]), which shuts the socket down, and this
        // read then ends.
        let incoming = match framed.next().await {
            None => return,
            Some(Err(e)) => {
                // Stock serves (and reports to master) a truncated request too.
                let _observed = ObservedRequest::start(svc);
                warn!(svc.log, "{} -- closing connection", e);
                return;
            }
            Some(Ok(incoming)) => incoming,
        };
        registration.busy();
        // master counts one use from TAKEN to AVAIL; stock reports the
        // wakeup as one too (tests/it/master_child.rs compares).
        let _observed = ObservedRequest::start(svc);
        let reply = match incoming {
            Incoming::Wakeup => {
                debug!(svc.log, "received master trigger");
                return;
            }
            Incoming::Request(req) => {
                #[cfg(feature = "test-hooks")]
                test_stall(&req);
                let (kind, started) = (req.kind(), crate::metrics::stamp());
                let reply = apply(req, svc).await;
                svc.metrics.request_ns(
                    kind,
                    reply.status(),
                    crate::metrics::stamp().saturating_sub(started),
                );
                reply
            }
            Incoming::Malformed(m) => {
                match &m {
                    Malformed::NoRequestName { warning } => warn!(svc.log, "{}", warning),
                    Malformed::UnknownRequest { name } => {
                        warn!(svc.log, "unknown request \"{}\" from tlsmgr socket", name)
                    }
                    Malformed::BadAttributes { warning, .. } => warn!(svc.log, "{}", warning),
                }
                match m {
                    Malformed::BadAttributes { kind, .. } => {
                        svc.metrics.request(kind, Status::Fail, Duration::ZERO);
                        Reply::fail_for(kind)
                    }
                    _ => Reply::fail_status(),
                }
            }
        };
        if !send(framed, reply, ipc_timeout).await {
            return;
        }
        registration.idle();
    }
}
