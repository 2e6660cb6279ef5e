//! The ceiling: a minimal server on the same socket type (UNIX stream) that
//! sends the announcement, frames each request, and answers it with a fixed,
//! valid reply for its request name. No store, no actors, no base64: what is
//! left is the cost of the socket round trip and of framing. A lookup always
//! hits with a fixed 1.75 KiB session, so it carries as many reply bytes as
//! a real hit.
//!
//! It runs as a separate process (this bench binary re-executed with
//! [`super::servers::CEILING_ENV`] set), on a tokio runtime with
//! `TLSMGR_BENCH_CEILING_THREADS` workers (default 1: a current-thread
//! runtime, like ours' socket thread).

use super::servers::CEILING_ENV;
use super::wire::frame;
use bytes::BytesMut;
use tlsmgr::protocol::{Reply, Status, ANNOUNCEMENT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fixed replies by request name.
struct Replies {
    seed: Vec<u8>,
    policy: Vec<u8>,
    lookup: Vec<u8>,
    status_ok: Vec<u8>,
    tktkey: Vec<u8>,
    fail: Vec<u8>,
}

fn enc(r: Reply) -> Vec<u8> {
    let mut b = BytesMut::new();
    r.encode(&mut b);
    b.to_vec()
}

impl Replies {
    fn new() -> Replies {
        Replies {
            seed: enc(Reply::Seed {
                status: Status::Ok,
                seed: vec![0x5a; 32].into(),
            }),
            policy: enc(Reply::Policy {
                status: Status::Ok,
                cachable: true,
                timeout: 3600,
            }),
            lookup: enc(Reply::Lookup {
                status: Status::Ok,
                session: vec![0x30; 1792].into(),
            }),
            status_ok: enc(Reply::Status(Status::Ok)),
            tktkey: enc(Reply::TktKey {
                status: Status::Ok,
                keybuf: vec![0x11; 88].into(),
            }),
            fail: enc(Reply::fail_status()),
        }
    }

    fn for_request(&self, name: &[u8]) -> &[u8] {
        match name {
            b"seed" => &self.seed,
            b"policy" => &self.policy,
            b"lookup" => &self.lookup,
            b"update" | b"delete" => &self.status_ok,
            b"tktkey" => &self.tktkey,
            _ => &self.fail,
        }
    }
}

async fn serve(mut stream: tokio::net::UnixStream, replies: std::sync::Arc<Replies>) {
    if stream.write_all(ANNOUNCEMENT).await.is_err() {
        return;
    }
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(4096);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        out.clear();
        let mut used = 0;
        while let Some(list) = frame(&buf[used..]) {
            out.extend_from_slice(replies.for_request(list.first));
            used += list.len;
        }
        let _ = buf.split_to(used);
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// In a bench binary started as the ceiling ([`CEILING_ENV`] set): runs
/// the ceiling server and returns how the process ends; otherwise `None`.
pub fn serve_if_asked() -> Option<std::process::ExitCode> {
    let socket = std::env::var_os(CEILING_ENV)?;
    Some(match run(std::path::Path::new(&socket)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ceiling: {e}");
            std::process::ExitCode::FAILURE
        }
    })
}

/// Runs the ceiling server on `socket` until killed.
pub fn run(socket: &std::path::Path) -> Result<(), String> {
    let threads: usize = std::env::var("TLSMGR_BENCH_CEILING_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(socket)
            .map_err(|e| format!("bind {}: {e}", socket.display()))?;
        let replies = std::sync::Arc::new(Replies::new());
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, replies.clone()));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        }
    })
}
