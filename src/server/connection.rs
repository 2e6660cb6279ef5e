//! One client connection: the announcement, then requests in order, one
//! reply each (spec §1.3, §1.4). A connection that stalls mid-request stalls
//! only itself, and only for `ipc_timeout`; limits and garbage close it.

use super::apply::apply;
use super::Services;
use crate::protocol::codec::ServerCodec;
use crate::protocol::{Incoming, Malformed, Reply, ANNOUNCEMENT};
use futures::{SinkExt, StreamExt};
use slog::{debug, warn};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// Serves one connection until the peer closes, errs, or times out.
pub async fn serve(mut stream: UnixStream, svc: Services) {
    let ipc_timeout = svc.config.load().ipc_timeout;
    // Postfix 3.6+ clients wait for this before sending anything.
    match timeout(ipc_timeout, stream.write_all(ANNOUNCEMENT)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    let mut framed = Framed::new(stream, ServerCodec::default());
    loop {
        let incoming = match timeout(ipc_timeout, framed.next()).await {
            Err(_) => {
                warn!(svc.log, "timeout while waiting for data from tlsmgr socket");
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                warn!(svc.log, "{} -- closing connection", e);
                return;
            }
            Ok(Some(Ok(incoming))) => incoming,
        };
        let reply = match incoming {
            Incoming::Wakeup => {
                debug!(svc.log, "received master trigger");
                return;
            }
            Incoming::Request(req) => apply(req, &svc).await,
            Incoming::Malformed(m) => {
                match &m {
                    Malformed::NoRequestName { warning } => warn!(svc.log, "{}", warning),
                    Malformed::UnknownRequest { name } => {
                        warn!(svc.log, "unknown request \"{}\" from tlsmgr socket", name)
                    }
                    Malformed::BadAttributes { warning, .. } => warn!(svc.log, "{}", warning),
                }
                match m {
                    Malformed::BadAttributes { kind, .. } => Reply::fail_for(kind),
                    _ => Reply::fail_status(),
                }
            }
        };
        match timeout(ipc_timeout, framed.send(reply)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
