//! The Prometheus endpoint (`tlsmgr_metrics_listen`): a tiny HTTP/1.0
//! server on the daemon thread, no web framework. `GET /metrics` is the
//! Prometheus text format ([`crate::metrics::prometheus`]), `GET
//! /stats.json` the `tlsmgr stats --json` object, `GET /` the status page.
//! Every answer closes the connection.
//!
//! Live: [`supervise`] looks at the configuration in force every
//! [`CHECK_INTERVAL`] and binds, moves or closes the listener to match; a
//! bind that fails is warned about once and retried.
//!
//! Bad input costs little: a request head is read for at most
//! [`READ_TIMEOUT`] and [`MAX_HEAD`] bytes, and at most [`MAX_CLIENTS`]
//! connections are served at once. Slow or idle clients cannot keep a
//! scraper out: when all places are taken, a client that has not sent a
//! complete head yet is closed to make room (`Clients`): the oldest of
//! the peer address that holds the most such places, so that a flood of
//! connections from one address only displaces its own. A client whose
//! complete head has come is never closed for a newcomer: before choosing,
//! the accept loop lets the clients whose bytes have arrived read them.
//! Only when every place is answering a complete request (a scrape flood)
//! is the newcomer closed unanswered, so the cap holds either way.
//!
//! Our own parser rather than hyper's HTTP/1 server: the endpoint answers
//! three GET targets and closes, which takes a request line and an empty
//! line; hyper's header-read timeout would replace only [`READ_TIMEOUT`],
//! while the cap and the eviction, which are what keep a scraper in, live
//! in the accept loop either way.

use super::Services;
use slog::{info, warn};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the listen address in force is compared with the listener.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Longest wait for a request head: a scraper sends its head in one
/// write, so a short bound costs it nothing and frees idle places sooner.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read.
pub const MAX_HEAD: usize = 8192;
/// Connections served at once.
pub const MAX_CLIENTS: usize = 32;

/// The status page (`GET /`).
const STATUS_PAGE: &str = include_str!("status.html");

/// Keeps the listener where `tlsmgr_metrics_listen` says, until the
/// daemon stops.
pub async fn supervise(svc: Services) {
    let mut current: Option<(SocketAddr, actix_rt::task::JoinHandle<()>)> = None;
    let mut failed: Option<SocketAddr> = None;
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tick.tick().await;
        let want = svc.config.load().metrics_listen;
        if current.as_ref().map(|(a, _)| *a) == want {
            continue;
        }
        if let Some((addr, task)) = current.take() {
            task.abort();
            info!(svc.log, "metrics endpoint: closed http://{}/", addr);
        }
        let Some(addr) = want else {
            failed = None;
            continue;
        };
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                info!(
                    svc.log,
                    "metrics endpoint: listening on http://{}/metrics", addr
                );
                current = Some((addr, actix_rt::spawn(serve(listener, svc.clone()))));
                failed = None;
            }
            Err(e) => {
                if failed != Some(addr) {
                    warn!(
                        svc.log,
                        "metrics endpoint: bind {}: {} -- retrying every {}ms",
                        addr,
                        e,
                        CHECK_INTERVAL.as_millis()
                    );
                    failed = Some(addr);
                }
            }
        }
    }
}

/// The connections being served, oldest first (ids only grow), each with
/// whether its request head is complete and how to close it.
#[derive(Default)]
struct Clients {
    next_id: u64,
    open: BTreeMap<u64, Client>,
}

struct Client {
    peer: IpAddr,
    head_read: Rc<Cell<bool>>,
    task: tokio::task::AbortHandle,
}

impl Clients {
    /// Makes room for a newcomer from `newcomer`: closes the oldest client
    /// still sending its head of the peer address with the most of them
    /// (the newcomer's own on a tie). False when every client has sent a
    /// head (they are being answered).
    fn evict_for(this: &RefCell<Clients>, newcomer: IpAddr) -> bool {
        let victim = {
            let mut clients = this.borrow_mut();
            let mut unread: BTreeMap<IpAddr, usize> = BTreeMap::new();
            for c in clients.open.values().filter(|c| !c.head_read.get()) {
                *unread.entry(c.peer).or_default() += 1;
            }
            let most = unread.values().copied().max().unwrap_or(0);
            let peer = if unread.get(&newcomer) == Some(&most) {
                Some(newcomer)
            } else {
                unread.iter().find(|(_, n)| **n == most).map(|(p, _)| *p)
            };
            let id = clients
                .open
                .iter()
                .find(|(_, c)| !c.head_read.get() && Some(c.peer) == peer)
                .map(|(id, _)| *id);
            id.and_then(|id| clients.open.remove(&id))
        };
        // Aborted outside the borrow: dropping the task's future runs its
        // guard, which borrows the registry again.
        victim.map(|c| c.task.abort()).is_some()
    }
}

/// Takes a connection's entry out of [`Clients`] however its task ends
/// (done, timed out or aborted by an eviction).
struct Leave(Rc<RefCell<Clients>>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        if let Ok(mut clients) = self.0.try_borrow_mut() {
            clients.open.remove(&self.1);
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, svc: Services) {
    let clients = Rc::new(RefCell::new(Clients::default()));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            actix_rt::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if clients.borrow().open.len() >= MAX_CLIENTS {
            // The clients whose heads have arrived read them first (the
            // runtime polls its sockets before this task goes on), so
            // that none of them is taken for an idle one.
            tokio::task::yield_now().await;
        }
        let full = clients.borrow().open.len() >= MAX_CLIENTS;
        if full && !Clients::evict_for(&clients, from.ip()) {
            continue;
        }
        let id = {
            let mut c = clients.borrow_mut();
            c.next_id += 1;
            c.next_id
        };
        let head_read = Rc::new(Cell::new(false));
        let leave = Leave(clients.clone(), id);
        let (svc, flag) = (svc.clone(), head_read.clone());
        let task = actix_rt::spawn(async move {
            let _leave = leave;
            let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &svc, &flag)).await;
        });
        clients.borrow_mut().open.insert(
            id,
            Client {
                peer: from.ip(),
                head_read,
                task: task.abort_handle(),
            },
        );
    }
}

/// What a request line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Json,
    Page,
    NotFound,
    BadMethod,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::BadMethod;
    }
    // Query strings are ignored (scrapers may add some).
    match target.split('?').next().unwrap_or_default() {
        "/metrics" => Route::Metrics,
        "/stats.json" => Route::Json,
        "/" => Route::Page,
        _ => Route::NotFound,
    }
}

async fn answer(mut stream: tokio::net::TcpStream, svc: &Services, head_read: &Cell<bool>) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.len() > MAX_HEAD {
                return false;
            }
        }
        true
    })
    .await;
    // From here on the client is being answered, not holding a place.
    head_read.set(true);
    let (status, content_type, body) = match read {
        Ok(true) => match route(&head) {
            Route::Metrics => {
                let snap = super::stats::snapshot(svc).await;
                (
                    "200 OK",
                    crate::metrics::prometheus::CONTENT_TYPE,
                    crate::metrics::prometheus::render(&snap),
                )
            }
            Route::Json => {
                let snap = super::stats::snapshot(svc).await;
                (
                    "200 OK",
                    "application/json",
                    format!("{}\n", snap.to_json()),
                )
            }
            Route::Page => (
                "200 OK",
                "text/html; charset=utf-8",
                STATUS_PAGE.to_string(),
            ),
            Route::NotFound => ("404 Not Found", "text/plain", "not found\n".to_string()),
            Route::BadMethod => (
                "405 Method Not Allowed",
                "text/plain",
                "only GET\n".to_string(),
            ),
            Route::BadRequest => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
        },
        // Too long, cut short or too slow.
        _ => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Lingering close: a client still sending (a head too long) would
    // get a reset instead of our answer if we closed with its bytes unread.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut discarded = 0usize;
        while discarded < 1 << 20 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /stats.json HTTP/1.0\r\n\r\n"), Route::Json);
        assert_eq!(route(b"GET / HTTP/1.0\r\n\r\n"), Route::Page);
        assert_eq!(route(b"GET /etc/passwd HTTP/1.0\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.0\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
    }
}
