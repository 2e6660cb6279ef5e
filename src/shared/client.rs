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
//! and a probe (PING, at a jittered interval) closes it. One warning when it
//! opens, one info line when it closes. Nothing here waits for Redis to be
//! up: the connection is made lazily and remade in the background.

use super::breaker::{Breaker, Transition, DEFAULT_THRESHOLD};
use super::sentinel;
use super::unknown_names::UnknownNames;
use crate::config::secret::Secret;
use crate::config::store_url;
use crate::config::FileRead;
use crate::protocol::CacheType;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::SentinelClient;
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
    Direct(redis::Client),
    /// The master that the Sentinels name, asked at start and about once
    /// a second by the prober.
    Sentinel(SentinelClient),
}

impl Target {
    fn of(settings: &Settings) -> Result<Target, SharedError> {
        if store_url::is_sentinel_url(&settings.url) {
            let url =
                store_url::parse(&settings.url).map_err(|e| SharedError::BadUrl(e.to_string()))?;
            return sentinel::client(&url)
                .map(Target::Sentinel)
                .map_err(|e| SharedError::BadUrl(e.to_string()));
        }
        open_client(settings).map(Target::Direct)
    }
}

/// The connection every task uses; `None` while a Sentinel has not named
/// a master yet. Replaced when a Sentinel names another one.
#[derive(Clone, Default)]
struct Slot(Arc<std::sync::RwLock<Option<(String, ConnectionManager)>>>);

impl Slot {
    fn get(&self) -> Option<ConnectionManager> {
        self.0.read().ok()?.as_ref().map(|(_, c)| c.clone())
    }

    fn address(&self) -> Option<String> {
        self.0.read().ok()?.as_ref().map(|(a, _)| a.clone())
    }

    fn set(&self, address: String, conn: ConnectionManager) {
        if let Ok(mut s) = self.0.write() {
            *s = Some((address, conn));
        }
    }
}

fn open_client(settings: &Settings) -> Result<redis::Client, SharedError> {
    let bad = |e: redis::RedisError| SharedError::BadUrl(e.to_string());
    if !settings.url.starts_with("rediss://") {
        return redis::Client::open(settings.url.as_str()).map_err(bad);
    }
    // rustls needs a process-wide provider; ring's (another one already
    // installed is fine too).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if settings.ca.is_none() && settings.client_cert.is_none() {
        return redis::Client::open(settings.url.as_str()).map_err(bad);
    }
    redis::Client::build_with_tls(
        settings.url.as_str(),
        redis::TlsCertificates {
            client_tls: settings
                .client_cert
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.1.clone(),
                    client_key: key.1.clone(),
                }),
            root_cert: settings.ca.as_ref().map(|ca| ca.1.clone()),
        },
    )
    .map_err(bad)
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
        reply: oneshot::Sender<Result<Option<Vec<u8>>, SharedError>>,
    },
    Call {
        cmd: redis::Cmd,
        reply: oneshot::Sender<Result<redis::Value, SharedError>>,
    },
}

impl Job {
    /// Answers the job with `e`, without asking Redis.
    fn refuse(self, e: SharedError) {
        match self {
            Job::Get { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Job::Call { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// What the owner and the callers share: the breaker and its log lines.
struct Health {
    breaker: Breaker,
    counters: Counters,
    url: String,
    log: Logger,
}

impl Health {
    fn record(&self, result: Result<(), &str>) {
        let t = match result {
            Ok(()) => self.breaker.success(),
            Err(_) => self.breaker.failure(),
        };
        match t {
            Transition::Opened => {
                self.counters.breaker_opened.fetch_add(1, Ordering::Relaxed);
                warn!(
                    self.log,
                    "shared store {}: {} consecutive failures (last: {}) -- serving from local state until it answers",
                    self.url,
                    self.breaker.threshold(),
                    result.err().unwrap_or("?")
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

/// The link to the shared store. Dropping the last handle stops its thread.
pub struct Shared {
    settings: Settings,
    /// Ticket-key names this link looked up and did not find.
    unknown_names: UnknownNames,
    health: Arc<Health>,
    jobs: mpsc::Sender<Job>,
    writes: mpsc::Sender<Write>,
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
            url: crate::config::redact_url(&settings.url),
            log,
        });
        let (jobs, jobs_rx) = mpsc::channel(JOB_QUEUE);
        let (writes, writes_rx) = mpsc::channel(settings.write_queue.max(1));
        let owner = Owner {
            target,
            health: health.clone(),
            settings: settings.clone(),
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
        }))
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

    /// `GET name` within `deadline`.
    pub async fn get_within(
        &self,
        name: String,
        deadline: Duration,
    ) -> Result<Option<Vec<u8>>, SharedError> {
        if !self.available() {
            return Err(SharedError::Open);
        }
        let (reply, rx) = oneshot::channel();
        self.jobs
            .try_send(Job::Get { name, reply })
            .map_err(|_| SharedError::Busy)?;
        // The owner times the call out at the same deadline (and counts it);
        // the slack only covers the hop back.
        match tokio::time::timeout(deadline + Duration::from_millis(5), rx).await {
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

impl Owner {
    async fn run(self, mut jobs: mpsc::Receiver<Job>, writes: mpsc::Receiver<Write>) {
        let Owner {
            target,
            health,
            settings,
        } = self;
        let ct = settings.connect_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(ct))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(ct);
        let slot = Slot::default();
        let sentinel = match target {
            Target::Sentinel(client) => Some((client, config)),
            Target::Direct(client) => {
                match ConnectionManager::new_lazy_with_config(client, config) {
                    Ok(c) => slot.set(health.url.clone(), c),
                    Err(e) => {
                        warn!(
                            health.log,
                            "shared store {}: {} -- sharing off", health.url, e
                        );
                        return;
                    }
                }
                None
            }
        };
        let reader = {
            let slot = slot.clone();
            let health = health.clone();
            let deadline = settings.lookup_deadline;
            async move {
                while let Some(job) = jobs.recv().await {
                    let conn = slot.get();
                    let health = health.clone();
                    tokio::spawn(async move {
                        // No master named yet (Sentinel, at start): no
                        // answer, and no failure of Redis either.
                        let Some(mut conn) = conn else {
                            job.refuse(SharedError::Busy);
                            return;
                        };
                        match job {
                            Job::Get { name, reply } => {
                                let cmd = redis::cmd("GET").arg(&name).clone();
                                let r = timed(&health, deadline, cmd.query_async(&mut conn)).await;
                                let _ = reply.send(r);
                            }
                            Job::Call { cmd, reply } => {
                                let r = timed(&health, ct, cmd.query_async(&mut conn)).await;
                                let _ = reply.send(r);
                            }
                        }
                    });
                }
            }
        };
        let writer = Self::writer(slot.clone(), health.clone(), ct, writes);
        let prober = Self::prober(slot, sentinel, health, ct);
        // The reader ends when the last handle is dropped; the others go
        // with the runtime.
        tokio::select! {
            _ = reader => {}
            _ = writer => {}
            _ = prober => {}
        }
    }

    /// Asks the Sentinels which node is the master and, when it is another
    /// one than the slot's, connects the slot to it. `failing`: Redis is
    /// failing already (or no master is known), so a Sentinel that does not
    /// answer counts as a failure too; otherwise a silent Sentinel is
    /// ignored while the master answers.
    async fn follow_master(
        sentinels: &mut SentinelClient,
        config: &ConnectionManagerConfig,
        slot: &Slot,
        health: &Health,
        ct: Duration,
        failing: bool,
    ) {
        let client = match tokio::time::timeout(ct, sentinels.async_get_client()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                if failing {
                    health.record(Err(&e.to_string()));
                }
                return;
            }
            Err(_) => {
                if failing {
                    health.record(Err("no Sentinel answered"));
                }
                return;
            }
        };
        let address = client.get_connection_info().addr().to_string();
        if slot.address().as_deref() == Some(address.as_str()) {
            return;
        }
        match ConnectionManager::new_lazy_with_config(client, config.clone()) {
            Ok(conn) => {
                info!(
                    health.log,
                    "shared store {}: Sentinel names master {}", health.url, address
                );
                slot.set(address, conn);
            }
            Err(e) => health.record(Err(&e.to_string())),
        }
    }

    async fn writer(
        slot: Slot,
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
            let Some(mut conn) = slot.get().filter(|_| health.breaker.allows()) else {
                c.writes_dropped.fetch_add(n, Ordering::Relaxed);
                continue;
            };
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
            let r: Result<(), SharedError> =
                timed(&health, ct, pipe.query_async::<()>(&mut conn)).await;
            if r.is_err() {
                c.writes_failed.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// While the breaker is open: PING at a jittered interval (0.5 to 1.5 s)
    /// until one answers. With Sentinels, first ask them for the master, at
    /// every interval: a failover is followed within about a second, before
    /// the old master is demoted (until then it takes writes that the new
    /// one never sees).
    async fn prober(
        slot: Slot,
        mut sentinel: Option<(SentinelClient, ConnectionManagerConfig)>,
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
            let failing = slot.get().is_none() || !health.breaker.allows();
            if let Some((sentinels, config)) = &mut sentinel {
                Self::follow_master(sentinels, config, &slot, &health, ct, failing).await;
            }
            if !failing {
                continue;
            }
            let Some(mut conn) = slot.get() else {
                continue;
            };
            if health.breaker.allows() {
                continue;
            }
            let _ = timed(
                &health,
                ct,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
        }
    }
}

/// Runs a Redis future under `deadline`, telling the breaker how it went.
async fn timed<T>(
    health: &Health,
    deadline: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SharedError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(v)) => {
            health.record(Ok(()));
            Ok(v)
        }
        Ok(Err(e)) => {
            let why = e.to_string();
            health.record(Err(&why));
            Err(SharedError::Redis(why))
        }
        Err(_) => {
            let why = format!("no answer within {} ms", deadline.as_millis());
            health.record(Err(&why));
            Err(SharedError::Timeout)
        }
    }
}
