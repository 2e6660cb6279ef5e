//! Configuration: main.cf and tlsmgr.cf reading, `$` expansion, and the
//! typed, immutable [`Config`] snapshot the rest of the program reads.
//!
//! Postfix's parameters come from main.cf; our own `tlsmgr_*` ones from
//! tlsmgr.cf in the same directory (main.cf's syntax; optional), where
//! postconf(1) and `postfix check` do not see them and so do not warn that
//! they are unused. `$name` in either file sees the definitions of both.
//!
//! - `maincf`: main.cf (and tlsmgr.cf) text to raw definitions (logical
//!   lines, overrides), and the join of the two files.
//! - [`expand`]: `$name` expansion when a value is read.
//! - `values`: Postfix's int/time/bool syntax and messages.
//! - [`dir`]: the configuration directory held open, so main.cf stays
//!   readable after a chroot (live reload).
//! - [`secret`]: `tlsmgr_shared_secret_file`, read and checked, and the
//!   keys derived from it.
//! - [`store_url`]: the syntax of `tlsmgr_shared_store`.
//!
//! - `load`: where the files are, reading and joining them, and the one
//!   step from their text to a [`Config`] (start-up and live reload alike).
//! - `source`: the [`Source`] of raw strings a snapshot is read from (a
//!   parsed main.cf, or a plain map in unit tests) and the typed reads.
//! - `error`: [`ConfigError`], naming the file, the line and the parameter.
//! - `cache`: one session cache's settings ([`CacheConfig`]).
//! - `shared`: sharing through Redis ([`SharedConfig`]).
//!
//! [`Config::from_source`] builds a snapshot from any [`Source`], applying
//! Postfix's defaults (spec §5.1) and validation.

pub mod dir;
pub mod expand;
mod maincf;
pub mod params;
pub(crate) mod regular;
pub mod secret;
pub mod store_url;
mod values;

mod cache;
mod error;
mod load;
mod shared;
mod source;

pub use cache::CacheConfig;
pub use error::ConfigError;
pub use load::{config_directory, read_raw, MAIN_CF, TLSMGR_CF};
pub use maincf::RawConfig;
pub use shared::{redact_url, shown_value, FileRead, SharedConfig};
pub use source::{effective_values, expand_parameter, Source};

use crate::protocol::CacheType;
use source::Resolver;
use std::path::PathBuf;
use std::time::Duration;

/// Postfix clamps the PRNG periods to `INT_MAX / 255` seconds.
pub const MAX_RANDOM_PERIOD: u64 = 8_421_504;

/// Parameters a running daemon cannot change: they take effect when it
/// next starts (a reload says so).
const START_ONLY: &[&str] = &[
    params::QUEUE_DIRECTORY,
    params::TLSMGR_ADMIN_SOCKET,
    params::TLSMGR_IO_THREADS,
    params::TLSMGR_PERSISTENT_STATE,
    params::TLSMGR_STORE_BLOCK_CACHE_SIZE,
    params::TLSMGR_STORE_WRITE_BUFFER_SIZE,
    params::TLSMGR_TICKET_KEY_FILE,
];

/// Upper bound of `tlsmgr_io_threads`.
const MAX_IO_THREADS: i64 = 256;

pub use params::DEFAULTS;

/// Longest `tlsmgr_stats_log_interval` (one week).
const MAX_STATS_LOG_INTERVAL: u64 = 7 * 86_400;

/// Smallest `tlsmgr_store_block_cache_size` and
/// `tlsmgr_store_write_buffer_size` (fjall needs some room to work).
const MIN_STORE_BUFFER: i64 = 1024 * 1024;
/// Largest of either (1 GiB: three caches must fit in a mail host's memory).
const MAX_STORE_BUFFER: i64 = 1024 * 1024 * 1024;

/// The typed configuration snapshot. Immutable: a reload builds a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `config_directory`.
    pub config_directory: PathBuf,
    /// `queue_directory`: the socket is `$queue_directory/private/tlsmgr`.
    pub queue_directory: PathBuf,
    /// `data_directory`.
    pub data_directory: PathBuf,
    /// `mail_owner`.
    pub mail_owner: String,
    /// `syslog_name`.
    pub syslog_name: String,
    /// `syslog_facility` (a syslog.conf facility name).
    pub syslog_facility: String,
    /// `maillog_file`: when non-empty, log through postlogd instead of syslog.
    pub maillog_file: String,
    /// `postlog_service_name`: postlogd's socket is `$queue_directory/public/<this>`.
    pub postlog_service_name: String,
    /// `ipc_timeout`: bound on one request's read.
    pub ipc_timeout: Duration,
    /// `daemon_timeout`.
    pub daemon_timeout: Duration,
    /// `tls_random_source`, expanded.
    pub tls_random_source: String,
    /// `tls_random_exchange_name`, expanded; `None` when empty.
    pub tls_random_exchange_name: Option<PathBuf>,
    /// `tls_random_bytes` (>= 1).
    pub tls_random_bytes: u32,
    /// `tls_random_reseed_period`, clamped to [`MAX_RANDOM_PERIOD`].
    pub tls_random_reseed_period: u64,
    /// `tls_random_prng_update_period`, clamped to [`MAX_RANDOM_PERIOD`].
    pub tls_random_prng_update_period: u64,
    /// The three caches, indexed by [`CacheType::index`].
    pub caches: [CacheConfig; 3],
    /// `tlsmgr_session_cache_max_entries`: bound per cache; 0 = unlimited.
    pub max_entries: u64,
    /// `tlsmgr_persistent_state`: keep sessions and ticket keys across
    /// restarts (`no` = Postfix's empty-on-start).
    pub persistent_state: bool,
    /// `tlsmgr_ticket_key_file`; `None` when empty (keys kept in memory only).
    pub ticket_key_file: Option<PathBuf>,
    /// `tlsmgr_store_lock_wait`: how long to wait for a store still held by
    /// an exiting tlsmgr.
    pub store_lock_wait: Duration,
    /// `tlsmgr_io_threads`: threads serving client connections, read at
    /// start; 0 = one per CPU.
    pub io_threads: usize,
    /// `tlsmgr_session_cache_sync_interval`: how often the session caches
    /// are fsynced (what a power loss can lose); zero = only at shutdown.
    pub sync_interval: Duration,
    /// `tlsmgr_store_block_cache_size`, bytes per on-disk cache.
    pub store_block_cache: u64,
    /// `tlsmgr_store_write_buffer_size`, bytes per on-disk cache.
    pub store_write_buffer: u64,
    /// `tlsmgr_admin_socket`: where `tlsmgr stats`, `keys` and `cache`
    /// reach the daemon; `None` when empty (no admin socket). Read at start.
    pub admin_socket: Option<PathBuf>,
    /// `tlsmgr_metrics_listen`: the TCP address of the Prometheus endpoint;
    /// `None` when empty (off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `tlsmgr_stats_log_interval`: how often a `statistics:` summary is
    /// logged; zero = never.
    pub stats_log_interval: Duration,
    /// Sharing through Redis.
    pub shared: SharedConfig,
    /// Warnings to log (e.g. overridden entries).
    pub warnings: Vec<String>,
    /// Advice to log as information (our parameters left in main.cf).
    pub notes: Vec<String>,
    /// The expanded value of every parameter in [`DEFAULTS`], in that order:
    /// what `tlsmgr check` prints and what a reload compares.
    pub effective: Vec<(&'static str, String)>,
}

impl Config {
    /// Builds a snapshot from raw values plus Postfix's defaults.
    pub fn from_source(source: &dyn Source) -> Result<Config, ConfigError> {
        let r = Resolver::new(source);
        let caches = cache::caches(&r)?;
        let period = |name: &str| -> Result<u64, ConfigError> {
            Ok(r.time(name, 1, 0)?.min(MAX_RANDOM_PERIOD))
        };
        Ok(Config {
            config_directory: PathBuf::from(r.string(params::CONFIG_DIRECTORY)?),
            queue_directory: PathBuf::from(r.string(params::QUEUE_DIRECTORY)?),
            data_directory: PathBuf::from(r.string(params::DATA_DIRECTORY)?),
            mail_owner: r.string(params::MAIL_OWNER)?,
            syslog_name: r.string(params::SYSLOG_NAME)?,
            syslog_facility: r.string(params::SYSLOG_FACILITY)?,
            maillog_file: r.string(params::MAILLOG_FILE)?,
            postlog_service_name: r.string(params::POSTLOG_SERVICE_NAME)?,
            ipc_timeout: Duration::from_secs(r.time(params::IPC_TIMEOUT, 1, 0)?),
            daemon_timeout: Duration::from_secs(r.time(params::DAEMON_TIMEOUT, 1, 0)?),
            tls_random_source: r.string(params::TLS_RANDOM_SOURCE)?,
            tls_random_exchange_name: r.path(params::TLS_RANDOM_EXCHANGE_NAME)?,
            tls_random_bytes: r.int(params::TLS_RANDOM_BYTES, 1, 0)? as u32,
            tls_random_reseed_period: period(params::TLS_RANDOM_RESEED_PERIOD)?,
            tls_random_prng_update_period: period(params::TLS_RANDOM_PRNG_UPDATE_PERIOD)?,
            caches,
            max_entries: r
                .int(params::TLSMGR_SESSION_CACHE_MAX_ENTRIES, 0, 0)
                .and_then(|n| {
                    u64::try_from(n).map_err(|_| {
                        r.err(
                            params::TLSMGR_SESSION_CACHE_MAX_ENTRIES,
                            format!(
                                "invalid tlsmgr_session_cache_max_entries parameter value {n} < 0"
                            ),
                        )
                    })
                })?,
            persistent_state: r.bool(params::TLSMGR_PERSISTENT_STATE)?,
            ticket_key_file: r.path(params::TLSMGR_TICKET_KEY_FILE)?,
            store_lock_wait: Duration::from_secs(r.time(
                params::TLSMGR_STORE_LOCK_WAIT,
                0,
                3600,
            )?),
            io_threads: r
                .int(params::TLSMGR_IO_THREADS, 0, MAX_IO_THREADS)
                .and_then(|n| {
                    usize::try_from(n).map_err(|_| {
                        r.err(
                            params::TLSMGR_IO_THREADS,
                            format!("invalid tlsmgr_io_threads parameter value {n} < 0"),
                        )
                    })
                })?,
            sync_interval: Duration::from_secs(r.time(
                params::TLSMGR_SESSION_CACHE_SYNC_INTERVAL,
                0,
                3600,
            )?),
            store_block_cache: r.int(
                params::TLSMGR_STORE_BLOCK_CACHE_SIZE,
                MIN_STORE_BUFFER,
                MAX_STORE_BUFFER,
            )? as u64,
            store_write_buffer: r.int(
                params::TLSMGR_STORE_WRITE_BUFFER_SIZE,
                MIN_STORE_BUFFER,
                MAX_STORE_BUFFER,
            )? as u64,
            admin_socket: r.path(params::TLSMGR_ADMIN_SOCKET)?,
            metrics_listen: {
                let v = r.string(params::TLSMGR_METRICS_LISTEN)?;
                let v = v.trim();
                if v.is_empty() {
                    None
                } else {
                    Some(v.parse::<std::net::SocketAddr>().map_err(|_| {
                        r.err(
                            params::TLSMGR_METRICS_LISTEN,
                            format!(
                                "invalid tlsmgr_metrics_listen parameter value {v}: \
                                 expected host:port with a numeric address, e.g. 127.0.0.1:9187"
                            ),
                        )
                    })?)
                }
            },
            stats_log_interval: Duration::from_secs(r.time(
                params::TLSMGR_STATS_LOG_INTERVAL,
                0,
                MAX_STATS_LOG_INTERVAL,
            )?),
            shared: shared::shared_config(&r)?,
            warnings: Vec::new(),
            notes: Vec::new(),
            effective: r.effective()?,
        })
    }

    /// What differs from `old`, one `name old -> new` item per parameter
    /// (a Redis password shown as `***`; new secret-file contents as such).
    pub fn changes_from(&self, old: &Config) -> Vec<String> {
        let mut changes: Vec<String> = self
            .effective
            .iter()
            .zip(old.effective.iter())
            .filter(|((_, new), (_, old))| new != old)
            .map(|((name, new), (_, old))| {
                let later = if START_ONLY.contains(name) {
                    " (at the next start)"
                } else {
                    ""
                };
                let (old, new) = (shown_value(name, old), shown_value(name, new));
                format!("{name} {old} -> {new}{later}")
            })
            .collect();
        if self.shared.secret_file == old.shared.secret_file
            && self.shared.secret.is_some()
            && self.shared.secret != old.shared.secret
        {
            changes.push("tlsmgr_shared_secret_file (new contents)".to_string());
        }
        changes
    }

    /// The settings of one cache.
    pub fn cache(&self, ct: CacheType) -> &CacheConfig {
        &self.caches[ct.index()]
    }

    /// The session-ticket key lifetime source: the sanitized smtpd timeout.
    pub fn ticket_timeout(&self) -> u32 {
        self.cache(CacheType::Smtpd).timeout
    }

    /// How the caches' stores are opened.
    pub fn open_options(&self) -> crate::store::OpenOptions {
        crate::store::OpenOptions {
            empty_on_start: !self.persistent_state,
            lock_wait: self.store_lock_wait,
            block_cache_bytes: self.store_block_cache,
            write_buffer_bytes: self.store_write_buffer,
            known_entries: None,
        }
    }

    /// The stores and the ticket key file this configuration keeps on disk,
    /// each with the parameter that sets it, as configured: the fjall
    /// directory of each enabled on-disk cache, and the key file when
    /// `tlsmgr_persistent_state` keeps one.
    pub fn state_paths(&self) -> Vec<(&'static str, PathBuf)> {
        let mut named = Vec::new();
        for cc in &self.caches {
            if let Some(dir) = cc.location.as_ref().and_then(|l| l.path()) {
                named.push((params::cache_database(cc.cache_type), dir.to_path_buf()));
            }
        }
        if self.persistent_state {
            if let Some(k) = &self.ticket_key_file {
                named.push((params::TLSMGR_TICKET_KEY_FILE, k.clone()));
            }
        }
        named
    }

    /// Where Postfix clients look for us: `$queue_directory/private/tlsmgr`.
    pub fn default_socket(&self) -> PathBuf {
        self.queue_directory.join("private").join("tlsmgr")
    }
}

#[cfg(test)]
mod tests;
