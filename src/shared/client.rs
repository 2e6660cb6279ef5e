//! The Redis link: one thread of its own (a current-thread tokio runtime)
//! owns the `redis` client and its connection manager; everything else
//! talks to it through bounded channels and never waits longer than its
//! own deadline.
//!
//! - Read-through ([`Shared::get`]): asked from an I/O thread after a local
//!   miss; answered within `tlsmgr_shared_lookup_deadline` or treated as a
//!   miss. Only the asking connection waits (it is one task among the I/O
//!   thread's others).
//! - Write-behind ([`Shared::write`]): never waits; a full queue drops the
//!   write and counts it. The owner flushes the queue in pipelined batches.
//! - Calls of the ticket actor ([`Shared::call`]): bounded by
//!   `tlsmgr_shared_connect_timeout`.
//!
//! Every call passes the [`Breaker`]: while it is open nothing is sent,
//! and a probe (PING over a fresh connection, at a jittered interval)
//! closes it. One warning when it opens, one info line when it closes.
//! Only transport failures count for it: a Redis that answers but refuses
//! a command (ACL, read-only replica) makes the link degraded, with one
//! warning when it starts and one info line when it ends. Nothing here
//! waits for Redis to be up: the connection ([`super::link::Slot`], over
//! [`super::bounded`]) is made on first use and after a failure.

use super::breaker::{Breaker, Transition, DEFAULT_THRESHOLD};
use super::invalidation::{self, Invalidation, Told};
use super::link::{self, Endpoint, Slot};
use super::sentinel;
use super::unknown_names::UnknownNames;
use crate::config::secret::Secret;
use crate::config::store_url;
use crate::config::FileRead;
use crate::protocol::CacheType;
use slog::{info, warn, Logger};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why a shared-store call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// The breaker is open: Redis was not called.
    #[error("shared store unavailable (circuit open)")]
    Open,
    /// No answer within the deadline.
    #[error("timed out")]
    Timeout,
    /// Redis (or the connection to it) reported an error.
    #[error("{0}")]
    Redis(String),
    /// The request queue is full or the link is shutting down.
    #[error("link busy or closed")]
    Busy,
    /// The URL is not one the client accepts.
    #[error("{0}")]
    BadUrl(String),
    /// The link's thread could not be started.
    #[error("cannot start the shared-store thread: {0}")]
    Thread(String),
}

/// What the link needs, taken from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The Redis URL.
    pub url: String,
    /// Key prefix (`tlsmgr:<site>`).
    pub prefix: String,
    /// The site secret's keys.
    pub secret: Arc<Secret>,
    /// Which cache types are shared.
    pub caches: [bool; 3],
    /// Read-through deadline.
    pub lookup_deadline: Duration,
    /// Connect and call timeout.
    pub connect_timeout: Duration,
    /// Write queue bound.
    pub write_queue: usize,
    /// CA certificates (PEM) for a `rediss://` server; `None`: the system's.
    pub ca: Option<FileRead>,
    /// Client certificate and key (PEM) for a `rediss://` server that asks
    /// for one.
    pub client_cert: Option<(FileRead, FileRead)>,
}

impl Settings {
    /// The settings of `cfg`, or `None` when sharing is off (or the secret
    /// was not read).
    pub fn of(cfg: &crate::config::SharedConfig) -> Option<Settings> {
        Some(Settings {
            url: cfg.store.clone()?,
            prefix: super::seal::prefix(&cfg.site),
            secret: cfg.secret.clone()?,
            caches: cfg.caches,
            lookup_deadline: cfg.lookup_deadline,
            connect_timeout: cfg.connect_timeout,
            write_queue: cfg.write_queue,
            ca: cfg.ca.clone(),
            client_cert: cfg.cert.clone().zip(cfg.key.clone()),
        })
    }

    /// Whether sessions of `ct` are shared.
    pub fn shares(&self, ct: CacheType) -> bool {
        self.caches[ct.index()]
    }
}

/// Where the link connects.
enum Target {
    /// The server of the URL.
    Direct(Endpoint),
    /// The master that the Sentinels name, asked at start and about once
    /// a second by the prober.
    Sentinel {
        sentinels: Vec<Endpoint>,
        service: String,
        /// AUTH and SELECT for the master.
        node: Endpoint,
    },
}

impl Target {
    fn of(settings: &Settings) -> Result<Target, SharedError> {
        let bad = |e: String| SharedError::BadUrl(e);
        if store_url::is_sentinel_url(&settings.url) {
            let url = store_url::parse(&settings.url).map_err(|e| bad(e.to_string()))?;
            let plain = |addr| Endpoint {
                addr,
                redis: redis::RedisConnectionInfo::default(),
                tls: None,
            };
            let sentinels = url
                .sentinels
                .iter()
                .map(|(h, p)| plain(redis::ConnectionAddr::Tcp(h.clone(), *p)))
                .collect();
            let node = Endpoint {
                redis: sentinel::node_info(&url),
                ..plain(redis::ConnectionAddr::Tcp(String::new(), 0))
            };
            return Ok(Target::Sentinel {
                sentinels,
                service: url.service.clone(),
                node,
            });
        }
        endpoint(settings).map(Target::Direct)
    }
}

/// The endpoint of a `redis://`, `rediss://` or `redis+unix://` URL.
fn endpoint(settings: &Settings) -> Result<Endpoint, SharedError> {
    let bad = |e: String| SharedError::BadUrl(e);
    let client = redis::Client::open(settings.url.as_str()).map_err(|e| bad(e.to_string()))?;
    let info = client.get_connection_info();
    let addr = info.addr().clone();
    let tls = match &addr {
        redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(bad("TLS without certificate checks is not supported".into()))
        }
        redis::ConnectionAddr::TcpTls { .. } => Some(Arc::new(tls_config(settings).map_err(bad)?)),
        _ => None,
    };
    Ok(Endpoint {
        addr,
        redis: info.redis_settings().clone(),
        tls,
    })
}

/// The TLS client configuration of a `rediss://` store: the CA file's
/// certificates (or the system's), and the client certificate if any.
fn tls_config(settings: &Settings) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca {
        Some(ca) => {
            for cert in CertificateDer::pem_slice_iter(&ca.1) {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.0.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.0.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system certificate rustls cannot use is not ours to
                // refuse the link for.
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    match &settings.client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert.1)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert.0.display()))?;
            let k = PrivateKeyDer::from_pem_slice(&key.1)
                .map_err(|e| format!("{}: {e}", key.0.display()))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| e.to_string())
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Counters of the link (for the metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Read-throughs asked.
    pub lookups: AtomicU64,
    /// Read-throughs that found a value that opened.
    pub hits: AtomicU64,
    /// Read-throughs that found nothing, or a value that did not open.
    pub misses: AtomicU64,
    /// Read-throughs skipped or failed (breaker open, timeout, error).
    pub lookup_failures: AtomicU64,
    /// Ticket-key lookups by name not sent: the name was looked up in vain
    /// moments before ([`UnknownNames`]).
    pub lookups_known_missing: AtomicU64,
    /// Writes queued.
    pub writes_queued: AtomicU64,
    /// Writes dropped: queue full, or breaker open at flush time.
    pub writes_dropped: AtomicU64,
    /// Writes sent in a batch that failed.
    pub writes_failed: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Commands Redis answered with an error while the connection worked
    /// (an ACL without the command, a read-only replica): the link is
    /// degraded, not down.
    pub refused: AtomicU64,
    /// Times the link became degraded.
    pub degraded: AtomicU64,
    /// Removals other hosts told of, received (before the replay check).
    pub told: AtomicU64,
    /// Removals other hosts told of, dropped: the queue to the data path
    /// was full.
    pub told_dropped: AtomicU64,
    /// Times the subscription to the removals of other hosts was lost.
    pub subscriber_lost: AtomicU64,
}

/// A queued write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `SET name value EX ttl`.
    Set {
        /// Redis key.
        name: String,
        /// Sealed value.
        value: Vec<u8>,
        /// Seconds.
        ttl: u64,
    },
    /// `DEL name`.
    Del {
        /// Redis key.
        name: String,
    },
}

enum Job {
    Get {
        name: String,
        /// When the caller stops waiting.
        until: tokio::time::Instant,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, SharedError>>,
    },
    Call {
        cmd: redis::Cmd,
        reply: oneshot::Sender<Result<redis::Value, SharedError>>,
    },
}

/// What the owner and the callers share: the breaker, the commands Redis
/// refuses, and their log lines.
struct Health {
    breaker: Breaker,
    counters: Counters,
    /// Commands that Redis answered with an error last time: while any is,
    /// the link is degraded (one warning when it starts, one info line
    /// when the last of them works again).
    refusing: std::sync::Mutex<std::collections::BTreeSet<String>>,
    url: String,
    log: Logger,
}

impl Health {
    /// The connection failed (or gave no answer in time).
    fn failure(&self, why: &str) {
        self.transition(self.breaker.failure(), Some(why));
    }

    /// Redis answered `op` (with a value, or with an error when `refused`).
    /// Either way the connection works.
    fn answered(&self, op: &str, refused: Option<&str>) {
        self.transition(self.breaker.success(), None);
        let Ok(mut set) = self.refusing.lock() else {
            return;
        };
        match refused {
            Some(why) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                let first = set.is_empty();
                if set.insert(op.to_string()) && first {
                    self.counters.degraded.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        self.log,
                        "shared store {}: answers but refuses {} ({}) -- degraded: sharing only what it accepts",
                        self.url,
                        op,
                        why
                    );
                }
            }
            None => {
                if set.remove(op) && set.is_empty() {
                    info!(
                        self.log,
                        "shared store {}: accepts {} again -- no longer degraded", self.url, op
                    );
                }
            }
        }
    }

    fn transition(&self, t: Transition, why: Option<&str>) {
        match t {
            Transition::Opened => {
                self.counters.breaker_opened.fetch_add(1, Ordering::Relaxed);
                warn!(
                    self.log,
                    "shared store {}: {} consecutive failures (last: {}) -- serving from local state until it answers",
                    self.url,
                    self.breaker.threshold(),
                    why.unwrap_or("?")
                );
            }
            Transition::Closed => {
                info!(
                    self.log,
                    "shared store {}: answers again -- sharing resumed", self.url
                );
            }
            Transition::None => {}
        }
    }
}

/// Most requests (read-throughs and calls) waiting for the owner.
const JOB_QUEUE: usize = 4096;
/// Most writes in one pipelined batch.
const BATCH: usize = 256;
/// Removals told by other hosts, waiting for the daemon to apply them.
const TOLD_QUEUE: usize = 1024;
/// Longest pause between two attempts to subscribe (after failures, the
/// pause doubles from about a second up to this).
const SUBSCRIBE_BACKOFF: Duration = Duration::from_secs(30);
/// How often a quiet subscription is checked with a PING: a connection
/// that a middlebox stopped forwarding would otherwise go unnoticed.
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);

/// The link to the shared store. Dropping the last handle stops its thread.
pub struct Shared {
    settings: Settings,
    /// Ticket-key names this link looked up and did not find.
    unknown_names: UnknownNames,
    health: Arc<Health>,
    jobs: mpsc::Sender<Job>,
    writes: mpsc::Sender<Write>,
    /// This link's id in the messages it publishes (it skips its own).
    sender: u64,
    /// What other hosts removed, until the daemon takes the queue.
    told: std::sync::Mutex<Option<mpsc::Receiver<Told>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.health.url)
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Starts the link's thread. Returns at once: the connection is made
    /// when first needed, and remade in the background after a failure.
    pub fn start(settings: Settings, log: Logger) -> Result<Arc<Shared>, SharedError> {
        let target = Target::of(&settings)?;
        let health = Arc::new(Health {
            breaker: Breaker::new(DEFAULT_THRESHOLD),
            counters: Counters::default(),
            refusing: Default::default(),
            url: crate::config::redact_url(&settings.url),
            log,
        });
        let (jobs, jobs_rx) = mpsc::channel(JOB_QUEUE);
        let (writes, writes_rx) = mpsc::channel(settings.write_queue.max(1));
        let (told_tx, told) = mpsc::channel(TOLD_QUEUE);
        let sender = u64::from_be_bytes(
            super::seal::random_nonce()[..8]
                .try_into()
                .unwrap_or_default(),
        );
        let owner = Owner {
            target,
            health: health.clone(),
            settings: settings.clone(),
            sender,
            told: told_tx,
        };
        std::thread::Builder::new()
            .name("tlsmgr-shared".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(owner.run(jobs_rx, writes_rx)),
                    Err(e) => warn!(
                        owner.health.log,
                        "shared store: cannot start its runtime: {}", e
                    ),
                }
            })
            .map_err(|e| SharedError::Thread(e.to_string()))?;
        Ok(Arc::new(Shared {
            settings,
            unknown_names: UnknownNames::default(),
            health,
            jobs,
            writes,
            sender,
            told: std::sync::Mutex::new(Some(told)),
        }))
    }

    /// The queue of removals other hosts told of (once: whoever applies
    /// them takes it).
    pub fn take_told(&self) -> Option<mpsc::Receiver<Told>> {
        self.told.lock().ok()?.take()
    }

    /// Tells the other hosts of the site that `what` was removed at `now`:
    /// the number of hosts subscribed (this one included).
    pub async fn publish(&self, what: &Invalidation, now: u64) -> Result<u64, SharedError> {
        let channel = invalidation::channel(&self.settings.prefix);
        let message = invalidation::encode(&self.settings.secret, &channel, self.sender, now, what);
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&channel).arg(message);
        let v = self.call(cmd).await?;
        redis::from_redis_value(v).map_err(|e| SharedError::Redis(e.to_string()))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The ticket-key names it recently looked up in vain.
    pub fn unknown_names(&self) -> &UnknownNames {
        &self.unknown_names
    }

    /// Its counters.
    pub fn counters(&self) -> &Counters {
        &self.health.counters
    }

    /// Whether calls go to Redis now (the breaker is closed).
    pub fn available(&self) -> bool {
        self.health.breaker.allows()
    }

    /// `GET name` within the read-through deadline: `Ok(None)` when absent.
    pub async fn get(&self, name: String) -> Result<Option<Vec<u8>>, SharedError> {
        self.get_within(name, self.settings.lookup_deadline).await
    }

    /// `GET name` within `deadline`, counted from now.
    pub async fn get_within(
        &self,
        name: String,
        deadline: Duration,
    ) -> Result<Option<Vec<u8>>, SharedError> {
        if !self.available() {
            return Err(SharedError::Open);
        }
        let until = tokio::time::Instant::now() + deadline;
        let (reply, rx) = oneshot::channel();
        self.jobs
            .try_send(Job::Get { name, until, reply })
            .map_err(|_| SharedError::Busy)?;
        // The owner stops at the same instant (and counts a miss of it
        // against Redis); this wait is what bounds the reply to Postfix,
        // whatever the owner's thread is doing.
        match tokio::time::timeout_at(until, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SharedError::Busy),
            Err(_) => Err(SharedError::Timeout),
        }
    }

    /// Any command, within the connect timeout (the ticket actor's calls).
    pub async fn call(&self, cmd: redis::Cmd) -> Result<redis::Value, SharedError> {
        if !self.available() {
            return Err(SharedError::Open);
        }
        let (reply, rx) = oneshot::channel();
        self.jobs
            .try_send(Job::Call { cmd, reply })
            .map_err(|_| SharedError::Busy)?;
        match tokio::time::timeout(
            self.settings.connect_timeout + Duration::from_millis(50),
            rx,
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SharedError::Busy),
            Err(_) => Err(SharedError::Timeout),
        }
    }

    /// Queues a write; never waits. False (and counted) when dropped.
    pub fn write(&self, w: Write) -> bool {
        let c = &self.health.counters;
        if !self.available() {
            c.writes_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.writes.try_send(w) {
            Ok(()) => {
                c.writes_queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                c.writes_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

struct Owner {
    target: Target,
    health: Arc<Health>,
    settings: Settings,
    sender: u64,
    told: mpsc::Sender<Told>,
}

/// A pseudo-random fraction in [0, 1) for jitter (no need for quality).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Where the Sentinels are, for the prober.
struct Sentinels {
    sentinels: Vec<Endpoint>,
    service: String,
    node: Endpoint,
}

impl Owner {
    async fn run(self, mut jobs: mpsc::Receiver<Job>, writes: mpsc::Receiver<Write>) {
        let Owner {
            target,
            health,
            settings,
            sender,
            told,
        } = self;
        let ct = settings.connect_timeout;
        // A reply must complete within the call timeout, or the connection
        // is ended and made afresh: that is what replaces a connection
        // that a middlebox stopped forwarding.
        let (first, sentinel) = match target {
            Target::Direct(ep) => (Some(ep), None),
            Target::Sentinel {
                sentinels,
                service,
                node,
            } => (
                None,
                Some(Sentinels {
                    sentinels,
                    service,
                    node,
                }),
            ),
        };
        let slot = Arc::new(Slot::new(first, ct, ct));
        let reader = {
            let slot = slot.clone();
            let health = health.clone();
            let deadline = settings.lookup_deadline;
            async move {
                while let Some(job) = jobs.recv().await {
                    let slot = slot.clone();
                    let health = health.clone();
                    tokio::spawn(async move {
                        match job {
                            Job::Get { name, until, reply } => {
                                let cmd = redis::cmd("GET").arg(&name).clone();
                                let r =
                                    query_until(&health, &slot, "GET", deadline, Some(until), &cmd)
                                        .await;
                                let _ = reply.send(r);
                            }
                            Job::Call { cmd, reply } => {
                                let op = command_name(&cmd);
                                let r = query(&health, &slot, &op, ct, &cmd).await;
                                let _ = reply.send(r);
                            }
                        }
                    });
                }
            }
        };
        let writer = Self::writer(slot.clone(), health.clone(), ct, writes);
        let subscriber = Subscriber {
            slot: slot.clone(),
            health: health.clone(),
            channel: invalidation::channel(&settings.prefix),
            secret: settings.secret.clone(),
            sender,
            told,
            ct,
        };
        let prober = Self::prober(slot, sentinel, health, ct);
        // The reader ends when the last handle is dropped; the others go
        // with the runtime.
        tokio::select! {
            _ = reader => {}
            _ = writer => {}
            _ = prober => {}
            _ = subscriber.run() => {}
        }
    }

    /// Asks the Sentinels which node is the master and, when it is another
    /// one than the slot's, points the slot to it. `failing`: Redis is
    /// failing already (or no master is known), so a Sentinel that does not
    /// answer counts as a failure too; otherwise a silent Sentinel is
    /// ignored while the master answers.
    async fn follow_master(
        s: &Sentinels,
        slot: &Slot,
        health: &Health,
        ct: Duration,
        failing: bool,
    ) {
        let master = match link::sentinel_master(&s.sentinels, &s.service, &s.node, ct).await {
            Ok(m) => m,
            Err(e) => {
                if failing {
                    health.failure(&e);
                }
                return;
            }
        };
        let address = master.address();
        if slot.address().await.as_deref() == Some(address.as_str()) {
            return;
        }
        info!(
            health.log,
            "shared store {}: Sentinel names master {}", health.url, address
        );
        slot.set(master).await;
    }

    async fn writer(
        slot: Arc<Slot>,
        health: Arc<Health>,
        ct: Duration,
        mut writes: mpsc::Receiver<Write>,
    ) {
        let c = &health.counters;
        while let Some(first) = writes.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match writes.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            if !health.breaker.allows() {
                c.writes_dropped.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            let mut pipe = redis::pipe();
            for w in &batch {
                match w {
                    Write::Set { name, value, ttl } => {
                        pipe.cmd("SET")
                            .arg(name)
                            .arg(value.as_slice())
                            .arg("EX")
                            .arg((*ttl).max(1))
                            .ignore();
                    }
                    Write::Del { name } => {
                        pipe.cmd("DEL").arg(name).ignore();
                    }
                }
            }
            match query::<()>(&health, &slot, "SET", ct, &pipe).await {
                Err(SharedError::Busy) => {
                    c.writes_dropped.fetch_add(n, Ordering::Relaxed);
                }
                Err(_) => {
                    c.writes_failed.fetch_add(n, Ordering::Relaxed);
                }
                Ok(()) => {}
            }
        }
    }

    /// While the breaker is open: PING at a jittered interval (0.5 to 1.5 s)
    /// over a fresh connection until one answers (the current one may be
    /// one that no longer answers while the server does). With Sentinels,
    /// first ask them for the master, at every interval: a failover is
    /// followed within about a second, before the old master is demoted
    /// (until then it takes writes that the new one never sees).
    async fn prober(
        slot: Arc<Slot>,
        sentinel: Option<Sentinels>,
        health: Arc<Health>,
        ct: Duration,
    ) {
        let mut first = true;
        loop {
            if !first {
                let pause = Duration::from_millis(500 + (jitter() * 1000.0) as u64);
                tokio::time::sleep(pause).await;
            }
            first = false;
            let failing = slot.address().await.is_none() || !health.breaker.allows();
            if let Some(s) = &sentinel {
                Self::follow_master(s, &slot, &health, ct, failing).await;
            }
            if !failing || health.breaker.allows() {
                continue;
            }
            let mut conn = match slot.fresh().await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    health.failure(&e);
                    continue;
                }
            };
            let ping: redis::RedisResult<String> =
                tokio::time::timeout(ct, redis::cmd("PING").query_async(&mut conn.conn))
                    .await
                    .unwrap_or_else(|_| {
                        Err(redis::RedisError::from(std::io::Error::from(
                            std::io::ErrorKind::TimedOut,
                        )))
                    });
            match ping {
                Ok(_) => {
                    slot.adopt(conn).await;
                    health.answered("PING", None);
                }
                Err(e) if link::is_transport(&e) => {
                    conn.kill();
                    health.failure(&e.to_string());
                }
                Err(e) => {
                    slot.adopt(conn).await;
                    health.answered("PING", Some(&e.to_string()));
                }
            }
        }
    }
}

/// The subscription to the removals of the other hosts of the site
/// ([`invalidation`]), on a connection of its own.
struct Subscriber {
    slot: Arc<Slot>,
    health: Arc<Health>,
    channel: String,
    secret: Arc<Secret>,
    sender: u64,
    told: mpsc::Sender<Told>,
    ct: Duration,
}

impl Subscriber {
    /// Subscribes, and again after the subscription is lost. One info line
    /// when it is lost and one when it is back (the breaker already warns
    /// of an outage), as what was published meanwhile was missed.
    async fn run(self) {
        let mut lost = false;
        let mut pause = Duration::from_secs(1);
        loop {
            let Some(ep) = self.slot.endpoint().await else {
                tokio::time::sleep(pause).await;
                continue;
            };
            let why = match link::subscriber(&ep, self.ct, self.ct).await {
                Ok((pubsub, kill)) => {
                    let why = self.listen(pubsub, &ep, &mut lost, &mut pause).await;
                    kill.kill();
                    why
                }
                Err(e) => e,
            };
            if !lost {
                lost = true;
                self.health
                    .counters
                    .subscriber_lost
                    .fetch_add(1, Ordering::Relaxed);
                info!(
                    self.health.log,
                    "shared store {}: not subscribed to {} ({}) -- removals made on other hosts meanwhile are missed here",
                    self.health.url,
                    self.channel,
                    why
                );
            }
            let jittered = pause.mul_f64(0.5 + jitter());
            tokio::time::sleep(jittered).await;
            pause = (pause * 2).min(SUBSCRIBE_BACKOFF);
        }
    }

    /// Listens on `pubsub` until it fails or the slot moves to another
    /// server; why it ended.
    async fn listen(
        &self,
        pubsub: redis::aio::PubSub,
        ep: &Endpoint,
        lost: &mut bool,
        pause: &mut Duration,
    ) -> String {
        use futures::StreamExt;
        let (mut sink, mut messages) = pubsub.split();
        match tokio::time::timeout(self.ct, sink.subscribe(&self.channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return format!("no answer within {} ms", self.ct.as_millis()),
        }
        if *lost {
            *lost = false;
            info!(
                self.health.log,
                "shared store {}: subscribed to {} again", self.health.url, self.channel
            );
        }
        *pause = Duration::from_secs(1);
        let mut tick = tokio::time::interval(SUBSCRIBER_PING);
        tick.tick().await;
        loop {
            tokio::select! {
                m = messages.next() => {
                    let Some(m) = m else {
                        return "connection closed".into();
                    };
                    self.received(m.get_payload_bytes());
                }
                _ = tick.tick() => {
                    if self.slot.address().await.as_deref() != Some(ep.address().as_str()) {
                        return "the store moved".into();
                    }
                    let pong = tokio::time::timeout(self.ct, sink.ping::<redis::Value>()).await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return e.to_string(),
                        Err(_) => return format!("no answer within {} ms", self.ct.as_millis()),
                    }
                }
            }
        }
    }

    /// A message: queued for the daemon unless it does not open or is
    /// this host's own.
    fn received(&self, payload: &[u8]) {
        let c = &self.health.counters;
        let Some(told) = invalidation::decode(&self.secret, &self.channel, payload) else {
            return;
        };
        if told.sender == self.sender {
            return;
        }
        c.told.fetch_add(1, Ordering::Relaxed);
        if self.told.try_send(told).is_err() {
            c.told_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The name of `cmd` (its first argument), for the log.
fn command_name(cmd: &redis::Cmd) -> String {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(b)) => String::from_utf8_lossy(b).to_ascii_uppercase(),
        _ => "?".into(),
    }
}

/// Sends `cmd` (a command or a pipeline) on the slot's connection under
/// `deadline`, and tells the health how it went: a transport failure or a
/// missed deadline counts for the breaker (and a failed connection is
/// dropped); an error reply from Redis marks `op` as refused.
async fn query<T: redis::FromRedisValue>(
    health: &Health,
    slot: &Slot,
    op: &str,
    deadline: Duration,
    cmd: &impl Query,
) -> Result<T, SharedError> {
    query_until(health, slot, op, deadline, None, cmd).await
}

/// [`query`], for a caller that stops waiting at `until`: the command is
/// not sent when connecting took until then (the caller is gone, and the
/// server was not asked, so no failure is counted), and its reply is
/// waited for until then only.
async fn query_until<T: redis::FromRedisValue>(
    health: &Health,
    slot: &Slot,
    op: &str,
    deadline: Duration,
    until: Option<tokio::time::Instant>,
    cmd: &impl Query,
) -> Result<T, SharedError> {
    // Connecting is bounded by the slot (the connect timeout), not by the
    // call's deadline: a caller that gave up must not cancel a connection
    // that takes longer than a read-through's deadline (TLS to a distant
    // server), or no read-through would ever get one.
    let mut conn = match slot.get().await {
        Ok(Some(c)) => c,
        // No master named yet (Sentinel, at start): no answer, and no
        // failure of Redis either.
        Ok(None) => return Err(SharedError::Busy),
        Err(why) => {
            health.failure(&why);
            return Err(SharedError::Redis(why));
        }
    };
    let until = match until {
        Some(u) if u <= tokio::time::Instant::now() => return Err(SharedError::Timeout),
        Some(u) => u,
        None => tokio::time::Instant::now() + deadline,
    };
    match tokio::time::timeout_at(until, cmd.send(&mut conn.conn)).await {
        Ok(Ok(v)) => {
            health.answered(op, None);
            T::from_redis_value(v).map_err(|e| SharedError::Redis(e.to_string()))
        }
        Ok(Err(e)) if link::is_transport(&e) => {
            slot.failed(&conn).await;
            let why = e.to_string();
            health.failure(&why);
            Err(SharedError::Redis(why))
        }
        Ok(Err(e)) => {
            let why = e.to_string();
            health.answered(op, Some(&why));
            Err(SharedError::Redis(why))
        }
        Err(_) => timed_out(health, deadline),
    }
}

fn timed_out<T>(health: &Health, deadline: Duration) -> Result<T, SharedError> {
    health.failure(&format!("no answer within {} ms", deadline.as_millis()));
    Err(SharedError::Timeout)
}

/// A command or a pipeline.
trait Query {
    fn send<'a>(
        &'a self,
        conn: &'a mut redis::aio::MultiplexedConnection,
    ) -> impl std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a;
}

impl Query for redis::Cmd {
    fn send<'a>(
        &'a self,
        conn: &'a mut redis::aio::MultiplexedConnection,
    ) -> impl std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a {
        self.query_async(conn)
    }
}

impl Query for redis::Pipeline {
    fn send<'a>(
        &'a self,
        conn: &'a mut redis::aio::MultiplexedConnection,
    ) -> impl std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a {
        self.query_async(conn)
    }
}
