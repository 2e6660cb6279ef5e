//! Connections to Redis and to Sentinels, each over a [`Bounded`] stream
//! (so that no reply can grow past the bounds or outlast the response
//! timeout), and the slot that holds the current one: a connection that
//! failed at the transport level is dropped, and the next call makes a
//! fresh one. redis-rs's `ConnectionManager` and `SentinelClient` make
//! their own streams, which cannot be wrapped; hence this module.

use super::bounded::{Bounded, Kill};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisConnectionInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where one server is, and how to talk to it.
#[derive(Clone)]
pub struct Endpoint {
    /// Its address (TCP, TCP with TLS, Unix socket).
    pub addr: ConnectionAddr,
    /// AUTH, SELECT, protocol.
    pub redis: RedisConnectionInfo,
    /// The TLS configuration (for `ConnectionAddr::TcpTls`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    /// `host:port` (or the socket path), for the log.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

/// One connection: redis-rs's handle, and the switch that ends it.
#[derive(Clone)]
pub struct Conn {
    /// The handle calls go through.
    pub conn: MultiplexedConnection,
    kill: Arc<Kill>,
    id: u64,
}

impl Conn {
    /// Ends it: every call on it fails at once.
    pub fn kill(&self) {
        self.kill.kill();
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Opens a connection to `ep` within `connect_timeout`; its replies must
/// each complete within `response_timeout`.
pub async fn connect(
    ep: &Endpoint,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<Conn, String> {
    match tokio::time::timeout(connect_timeout, open(ep, response_timeout)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no connection within {} ms",
            connect_timeout.as_millis()
        )),
    }
}

/// A byte stream of any of the transports.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// The stream to `ep` (TCP, TLS over TCP, Unix socket), not yet spoken on.
async fn stream(ep: &Endpoint) -> Result<Box<dyn Transport>, String> {
    let e = |e: std::io::Error| e.to_string();
    match &ep.addr {
        ConnectionAddr::Tcp(host, port) => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(e)?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
        ConnectionAddr::TcpTls { host, port, .. } => {
            let Some(tls) = &ep.tls else {
                return Err("no TLS configuration".into());
            };
            let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(e)?;
            let _ = s.set_nodelay(true);
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let s = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, s)
                .await
                .map_err(e)?;
            Ok(Box::new(s))
        }
        ConnectionAddr::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path).await.map_err(e)?;
            Ok(Box::new(s))
        }
        other => Err(format!("unsupported address {other}")),
    }
}

async fn open(ep: &Endpoint, response_timeout: Duration) -> Result<Conn, String> {
    let s = stream(ep).await?;
    finish(ep, s, response_timeout).await
}

/// A subscriber's connection to `ep` (`SUBSCRIBE` and its messages), made
/// within `connect_timeout`; each message is bounded like a reply, and a
/// reply to our commands (`SUBSCRIBE`, `PING`) must come within
/// `response_timeout`. The [`Kill`] ends it.
pub async fn subscriber(
    ep: &Endpoint,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<(redis::aio::PubSub, Arc<Kill>), String> {
    let open = async {
        let s = stream(ep).await?;
        let kill = Arc::new(Kill::default());
        let s = Bounded::subscriber(s, response_timeout, kill.clone());
        let p = redis::aio::PubSub::new(&ep.redis, s)
            .await
            .map_err(|e| e.to_string())?;
        Ok((p, kill))
    };
    match tokio::time::timeout(connect_timeout, open).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no connection within {} ms",
            connect_timeout.as_millis()
        )),
    }
}

async fn finish<S>(ep: &Endpoint, stream: S, response_timeout: Duration) -> Result<Conn, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Kill::default());
    let stream = Bounded::new(stream, response_timeout, kill.clone());
    // The stream times replies itself (and ends the connection when one is
    // late); redis-rs's own timeout would only end the caller's wait.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let (conn, driver) = MultiplexedConnection::new_with_config(&ep.redis, stream, config)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(driver);
    Ok(Conn {
        conn,
        kill,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
    })
}

/// Whether `e` says the connection itself failed (as opposed to Redis
/// answering with an error, which leaves the connection usable).
pub fn is_transport(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    // A server loading its data or without a master answers every
    // command so for a while: that is an outage, not a refusal.
    let unavailable = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
        )
    );
    unavailable
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// The current connection to the store, made on first use and after the
/// last one failed; `None` endpoint while a Sentinel has not named a
/// master.
pub struct Slot {
    state: tokio::sync::Mutex<SlotState>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

struct SlotState {
    endpoint: Option<Endpoint>,
    conn: Option<Conn>,
    /// When a connection attempt last failed: calls fail fast for a while
    /// after, so that a store that is away costs one attempt, not one per
    /// call.
    failed_at: Option<tokio::time::Instant>,
}

/// How long after a failed attempt calls fail without trying again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

impl Slot {
    /// A slot for `endpoint`.
    pub fn new(
        endpoint: Option<Endpoint>,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Slot {
        Slot {
            state: tokio::sync::Mutex::new(SlotState {
                endpoint,
                conn: None,
                failed_at: None,
            }),
            connect_timeout,
            response_timeout,
        }
    }

    /// The endpoint's address, if one is set.
    pub async fn address(&self) -> Option<String> {
        self.state
            .lock()
            .await
            .endpoint
            .as_ref()
            .map(Endpoint::address)
    }

    /// The endpoint, if one is set.
    pub async fn endpoint(&self) -> Option<Endpoint> {
        self.state.lock().await.endpoint.clone()
    }

    /// Points the slot to another server: the old connection ends.
    pub async fn set(&self, endpoint: Endpoint) {
        let mut st = self.state.lock().await;
        if let Some(c) = st.conn.take() {
            c.kill();
        }
        st.endpoint = Some(endpoint);
        st.failed_at = None;
    }

    /// The current connection, or a new one. `Ok(None)`: no endpoint yet.
    pub async fn get(&self) -> Result<Option<Conn>, String> {
        let mut st = self.state.lock().await;
        if let Some(c) = &st.conn {
            if !c.kill.is_dead() {
                return Ok(Some(c.clone()));
            }
            st.conn = None;
        }
        let Some(ep) = st.endpoint.clone() else {
            return Ok(None);
        };
        if let Some(at) = st.failed_at {
            if at.elapsed() < RETRY_AFTER {
                return Err("cannot connect (retrying shortly)".into());
            }
        }
        match connect(&ep, self.connect_timeout, self.response_timeout).await {
            Ok(c) => {
                st.failed_at = None;
                st.conn = Some(c.clone());
                Ok(Some(c))
            }
            Err(e) => {
                st.failed_at = Some(tokio::time::Instant::now());
                Err(e)
            }
        }
    }

    /// A fresh connection, not shared with calls (the health probe: a
    /// connection that no longer answers must not hide a server that
    /// does). On success it becomes the current one.
    pub async fn fresh(&self) -> Result<Option<Conn>, String> {
        let Some(ep) = self.state.lock().await.endpoint.clone() else {
            return Ok(None);
        };
        let c = connect(&ep, self.connect_timeout, self.response_timeout).await?;
        Ok(Some(c))
    }

    /// Makes `c` (a fresh connection that answered) the current one.
    pub async fn adopt(&self, c: Conn) {
        let mut st = self.state.lock().await;
        if let Some(old) = st.conn.replace(c) {
            old.kill();
        }
        st.failed_at = None;
    }

    /// `c` failed at the transport level: ends it, so that the next call
    /// connects afresh.
    pub async fn failed(&self, c: &Conn) {
        c.kill();
        let mut st = self.state.lock().await;
        if st.conn.as_ref().is_some_and(|cur| cur.id == c.id) {
            st.conn = None;
        }
    }
}

/// Asks the Sentinels (in turn) which node is the master of `service`,
/// and checks that it says so itself (ROLE). Every connection is bounded
/// like the store's.
pub async fn sentinel_master(
    sentinels: &[Endpoint],
    service: &str,
    node: &Endpoint,
    connect_timeout: Duration,
) -> Result<Endpoint, String> {
    let mut last = String::from("no Sentinel configured");
    for s in sentinels {
        let mut c = match connect(s, connect_timeout, connect_timeout).await {
            Ok(c) => c,
            Err(e) => {
                last = format!("Sentinel {}: {e}", s.address());
                continue;
            }
        };
        let addr: Result<Option<(String, u16)>, _> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(service)
            .query_async(&mut c.conn)
            .await;
        c.kill();
        let (host, port) = match addr {
            Ok(Some(a)) => a,
            Ok(None) => {
                last = format!("Sentinel {}: no master for {service}", s.address());
                continue;
            }
            Err(e) => {
                last = format!("Sentinel {}: {e}", s.address());
                continue;
            }
        };
        let master = Endpoint {
            addr: ConnectionAddr::Tcp(host, port),
            ..node.clone()
        };
        match is_master(&master, connect_timeout).await {
            Ok(true) => return Ok(master),
            Ok(false) => last = format!("{} is not a master", master.address()),
            Err(e) => last = format!("{}: {e}", master.address()),
        }
    }
    Err(last)
}

async fn is_master(ep: &Endpoint, connect_timeout: Duration) -> Result<bool, String> {
    let mut c = connect(ep, connect_timeout, connect_timeout).await?;
    let role: Result<redis::Value, _> = redis::cmd("ROLE").query_async(&mut c.conn).await;
    c.kill();
    match role.map_err(|e| e.to_string())? {
        redis::Value::Array(v) => Ok(matches!(v.first(),
            Some(redis::Value::BulkString(b)) if b == b"master")),
        _ => Ok(false),
    }
}
