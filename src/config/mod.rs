//! Configuration: main.cf and tlsmgr.cf reading, `$` expansion, and the
//! typed, immutable [`Config`] snapshot the rest of the program reads.
//!
//! Postfix's parameters come from main.cf; our own `tlsmgr_*` ones from
//! tlsmgr.cf in the same directory (main.cf's syntax; optional), where
//! postconf(1) and `postfix check` do not see them and so do not warn that
//! they are unused. `$name` in either file sees the definitions of both.
//!
//! - [`maincf`]: main.cf (and tlsmgr.cf) text to raw definitions (logical
//!   lines, overrides), and the join of the two files.
//! - [`expand`]: `$name` expansion when a value is read.
//! - [`values`]: Postfix's int/time/bool syntax and messages.
//! - [`dir`]: the configuration directory held open, so main.cf stays
//!   readable after a chroot (live reload).
//! - [`secret`]: `tlsmgr_shared_secret_file`, read and checked, and the
//!   keys derived from it.
//! - [`store_url`]: the syntax of `tlsmgr_shared_store`.
//!
//! [`Config::from_source`] builds a snapshot from any [`Source`] of raw strings
//! (a parsed main.cf, or a plain map in unit tests), applying Postfix's
//! defaults (spec §5.1) and validation. Errors name the file, the line and the
//! parameter.

pub mod dir;
pub mod expand;
pub mod maincf;
pub mod params;
pub mod regular;
pub mod secret;
pub mod store_url;
pub mod values;

use crate::protocol::CacheType;
use crate::store::location::{parse_database, same_store, StoreLocation};
pub use maincf::RawConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Shortest cache timeout Postfix allows (`TLS_SESSION_LIFEMIN`); a smaller
/// positive value is raised to it.
pub const SESSION_LIFEMIN: u32 = 120;
/// Longest cache timeout (100 days); above it the configuration is invalid.
pub const SESSION_LIFEMAX: u64 = 8_640_000;
/// Postfix clamps the PRNG periods to `INT_MAX / 255` seconds.
pub const MAX_RANDOM_PERIOD: u64 = 8_421_504;

/// Parameters a running daemon cannot change: they take effect when it
/// next starts (a reload says so).
pub const START_ONLY: &[&str] = &[
    params::QUEUE_DIRECTORY,
    params::TLSMGR_ADMIN_SOCKET,
    params::TLSMGR_IO_THREADS,
    params::TLSMGR_PERSISTENT_STATE,
    params::TLSMGR_STORE_BLOCK_CACHE_SIZE,
    params::TLSMGR_STORE_WRITE_BUFFER_SIZE,
    params::TLSMGR_TICKET_KEY_FILE,
];

/// Upper bound of `tlsmgr_io_threads`.
pub const MAX_IO_THREADS: i64 = 256;

/// A configuration error, shown as `FILE, line N: MESSAGE` where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file the definition came from.
    pub file: Option<PathBuf>,
    /// The line of the definition.
    pub line: Option<usize>,
    /// The message, in Postfix's words, naming the parameter.
    pub message: String,
}

impl ConfigError {
    /// An error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line: None,
            message: message.into(),
        }
    }
    /// Locates the error at `file`, `line`.
    pub fn at(mut self, file: Option<&Path>, line: usize) -> Self {
        self.file = file.map(Path::to_path_buf);
        self.line = Some(line);
        self
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => {
                write!(f, "{}, line {}: {}", file.display(), line, self.message)
            }
            (Some(file), None) => write!(f, "{}: {}", file.display(), self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// Raw, unexpanded parameter values, and where each was defined.
pub trait Source {
    /// The raw value of `name` if the source defines it.
    fn raw(&self, name: &str) -> Option<String>;
    /// The line that defines `name`, if known.
    fn line_of(&self, _name: &str) -> Option<usize> {
        None
    }
    /// The file the values came from, if any.
    fn file(&self) -> Option<&Path> {
        None
    }
    /// The file that defines `name` (main.cf or tlsmgr.cf), if known.
    fn file_of(&self, _name: &str) -> Option<&Path> {
        self.file()
    }
}

impl Source for RawConfig {
    fn raw(&self, name: &str) -> Option<String> {
        self.entries.get(name).map(|v| v.value.clone())
    }
    fn line_of(&self, name: &str) -> Option<usize> {
        self.entries.get(name).and_then(|v| v.line)
    }
    fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
    fn file_of(&self, name: &str) -> Option<&Path> {
        RawConfig::file_of(self, name).or(self.file.as_deref())
    }
}

impl Source for HashMap<String, String> {
    fn raw(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

pub use params::DEFAULTS;

/// Longest `tlsmgr_stats_log_interval` (one week).
pub const MAX_STATS_LOG_INTERVAL: u64 = 7 * 86_400;

/// Longest `tlsmgr_shared_site` (it is part of every Redis key name).
pub const MAX_SITE_LEN: usize = 64;
/// Largest `tlsmgr_shared_write_queue_limit`.
pub const MAX_WRITE_QUEUE: i64 = 1_000_000;

/// A file's path and the bytes read from it (before the chroot, where the
/// path may no longer be reachable).
pub type FileRead = std::sync::Arc<(PathBuf, Vec<u8>)>;

/// Sharing ticket keys and sessions through Redis (`tlsmgr_shared_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    /// `tlsmgr_shared_store`: the Redis URL; `None` = sharing off.
    pub store: Option<String>,
    /// `tlsmgr_shared_site`: hosts share state only within one site.
    pub site: String,
    /// `tlsmgr_shared_secret_file`.
    pub secret_file: Option<PathBuf>,
    /// The keys derived from the secret file, once read
    /// ([`Config::load_shared_secret`]); `None` while not read or sharing off.
    pub secret: Option<std::sync::Arc<secret::Secret>>,
    /// `tlsmgr_shared_ca_file`: the CA certificates (PEM) a `rediss://`
    /// server is checked against; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// Its contents, read with the secret (before the chroot).
    pub ca: Option<FileRead>,
    /// `tlsmgr_shared_cert_file`: the client certificate (PEM, with its
    /// chain) tlsmgr shows a `rediss://` server that asks for one
    /// (`tls-auth-clients yes`); set together with `key_file` or not at all.
    pub cert_file: Option<PathBuf>,
    /// `tlsmgr_shared_key_file`: the private key of `cert_file` (PEM).
    pub key_file: Option<PathBuf>,
    /// The contents of `cert_file`, read with the secret (before the chroot).
    pub cert: Option<FileRead>,
    /// The contents of `key_file`, read with the secret (before the chroot).
    pub key: Option<FileRead>,
    /// `tlsmgr_shared_caches`: which caches are shared, by [`CacheType::index`].
    pub caches: [bool; 3],
    /// `tlsmgr_shared_lookup_deadline`: the most a lookup that missed
    /// locally waits for Redis.
    pub lookup_deadline: Duration,
    /// `tlsmgr_shared_connect_timeout`: bound on a connection attempt and
    /// on every call that is not a read-through.
    pub connect_timeout: Duration,
    /// `tlsmgr_shared_write_queue_limit`: writes waiting for Redis; more are
    /// dropped (and counted).
    pub write_queue: usize,
}

impl SharedConfig {
    /// Whether sharing is on.
    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }
    /// Whether the sessions of `ct` are shared.
    pub fn shares(&self, ct: CacheType) -> bool {
        self.enabled() && self.caches[ct.index()]
    }

    /// Takes the TLS files `start` read (before the chroot) for each path
    /// that is still the same: after the chroot and privilege drop they
    /// cannot be read again.
    pub fn keep_tls_files_read(&mut self, start: &SharedConfig) {
        for (path, slot, read) in [
            (&self.ca_file, &mut self.ca, &start.ca),
            (&self.cert_file, &mut self.cert, &start.cert),
            (&self.key_file, &mut self.key, &start.key),
        ] {
            if let Some(f) = read.as_ref().filter(|f| path.as_ref() == Some(&f.0)) {
                *slot = Some(f.clone());
            }
        }
    }
}

/// `url` without a password (what logs, `tlsmgr check` and the admin
/// answers may show): the password of the user info (`USER:PASSWORD@`,
/// `:PASSWORD@`) and of the `pass=`/`password=` query pairs (redis-rs reads
/// the password of a `unix://` URL there) become `***`. The user info ends
/// at the last `@` before the path, as redis-rs and
/// [`store_url::parse`] read it, so a password holding `@` is hidden whole.
pub fn redact_url(url: &str) -> String {
    let Some(s) = url.find("://") else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(s + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

/// `value` of parameter `name` as it may be shown: the password of
/// `tlsmgr_shared_store` hidden ([`redact_url`]), anything else as is.
pub fn shown_value(name: &str, value: &str) -> String {
    if name == params::TLSMGR_SHARED_STORE {
        redact_url(value)
    } else {
        value.to_string()
    }
}

/// Smallest `tlsmgr_store_block_cache_size` and
/// `tlsmgr_store_write_buffer_size` (fjall needs some room to work).
pub const MIN_STORE_BUFFER: i64 = 1024 * 1024;
/// Largest of either (1 GiB: three caches must fit in a mail host's memory).
pub const MAX_STORE_BUFFER: i64 = 1024 * 1024 * 1024;

/// One session cache's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Which cache.
    pub cache_type: CacheType,
    /// `<type>_tls_session_cache_database`, expanded.
    pub database: String,
    /// Where it is stored; `None` when the database is empty or the cache is
    /// disabled by a zero timeout.
    pub location: Option<StoreLocation>,
    /// The sanitized timeout: 0 (disabled) or 120..=8640000 seconds.
    pub timeout: u32,
    /// `<type>_tls_loglevel`, expanded.
    pub loglevel: String,
}

impl CacheConfig {
    /// Whether the cache is open: a database is configured and timeout > 0.
    pub fn enabled(&self) -> bool {
        self.location.is_some()
    }
    /// Whether cache activity is logged (`TLS_LOG_CACHE`: level >= 2 or the
    /// keyword `cache`), spec §6.
    pub fn log_cache(&self) -> bool {
        self.loglevel
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
            .any(|w| {
                w.eq_ignore_ascii_case("cache")
                    || w.parse::<u32>().is_ok_and(|n| n >= 2)
                    || ["debug", "ssl-expert", "ssl-developer"]
                        .iter()
                        .any(|k| w.eq_ignore_ascii_case(k))
            })
    }
}

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

struct Resolver<'a> {
    source: &'a dyn Source,
    /// Caps the expansion work of all the values one snapshot reads.
    budget: std::cell::RefCell<expand::Budget>,
}

impl expand::Lookup for Resolver<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        self.source.raw(name).or_else(|| {
            DEFAULTS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }
}

impl<'a> Resolver<'a> {
    fn new(source: &'a dyn Source) -> Self {
        Resolver {
            source,
            budget: Default::default(),
        }
    }
    fn err(&self, name: &str, message: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            file: self.source.file_of(name).map(Path::to_path_buf),
            line: self.source.line_of(name),
            message: message.to_string(),
        }
    }
    fn string(&self, name: &str) -> Result<String, ConfigError> {
        let raw = expand::Lookup::raw(self, name).unwrap_or_default();
        let mut budget = self.budget.borrow_mut();
        expand::expand_with(&raw, self, &mut budget)
            .map_err(|m| self.err(name, format!("parameter {name}: {m}")))
    }
    fn time(&self, name: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let v = self.string(name)?;
        values::parse_time(name, &v, 's')
            .and_then(|t| values::check_time(name, t, min, max))
            .map_err(|m| self.err(name, m))
    }
    fn int(&self, name: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
        let v = self.string(name)?;
        values::parse_int(name, &v)
            .and_then(|n| values::check_int(name, n, min, max))
            .map_err(|m| self.err(name, m))
    }
    fn bool(&self, name: &str) -> Result<bool, ConfigError> {
        let v = self.string(name)?;
        values::parse_bool(name, &v).map_err(|m| self.err(name, m))
    }
    fn path(&self, name: &str) -> Result<Option<PathBuf>, ConfigError> {
        let v = self.string(name)?;
        Ok((!v.is_empty()).then(|| PathBuf::from(v)))
    }
}

/// The configuration directory: `-c DIR` if given, else `$MAIL_CONFIG`, else
/// `/etc/postfix` (Postfix's order).
pub fn config_directory(cli: Option<PathBuf>) -> PathBuf {
    cli.or_else(|| {
        std::env::var_os("MAIL_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from("/etc/postfix"))
}

/// Postfix's configuration file, in the configuration directory.
pub const MAIN_CF: &str = "main.cf";
/// Ours, beside it: `tlsmgr_*` parameters, out of Postfix's sight.
pub const TLSMGR_CF: &str = "tlsmgr.cf";

/// Reads tlsmgr.cf through `dir`: `Ok(None)` when there is none (our
/// parameters then have their defaults, or main.cf's values).
pub fn read_ours(dir: &dir::ConfigDir) -> Result<Option<Vec<u8>>, ConfigError> {
    match dir.read(TLSMGR_CF) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::new(format!(
            "open {}: {}",
            dir.display_path(TLSMGR_CF).display(),
            e
        ))),
    }
}

/// Reads main.cf and tlsmgr.cf through `dir`, sets `config_directory` from
/// the directory (as Postfix does from `-c`/`MAIL_CONFIG`) and applies `-o`
/// overrides.
pub fn read_raw(dir: &dir::ConfigDir, overrides: &[String]) -> Result<RawConfig, ConfigError> {
    let path = dir.display_path(MAIN_CF);
    let text = dir
        .read(MAIN_CF)
        .map_err(|e| ConfigError::new(format!("open {}: {}", path.display(), e)))?;
    let ours = read_ours(dir)?;
    parse_raw(&text, ours.as_deref(), dir, overrides)
}

/// Parses main.cf text and tlsmgr.cf text (`None`: no such file) read from
/// `dir`, joins them ([`RawConfig::join_ours`]), sets `config_directory`
/// from the directory (as Postfix does from `-c`/`MAIL_CONFIG`) and applies
/// `-o` overrides, which win over both files.
pub fn parse_raw(
    text: &[u8],
    ours: Option<&[u8]>,
    dir: &dir::ConfigDir,
    overrides: &[String],
) -> Result<RawConfig, ConfigError> {
    let path = dir.display_path(MAIN_CF);
    let mut raw = RawConfig::parse(&String::from_utf8_lossy(text), Some(&path))?;
    let ours_path = dir.display_path(TLSMGR_CF);
    let ours = ours
        .map(|t| RawConfig::parse(&String::from_utf8_lossy(t), Some(&ours_path)))
        .transpose()?;
    raw.join_ours(ours, &ours_path);
    raw.entries.insert(
        params::CONFIG_DIRECTORY.to_string(),
        maincf::RawValue {
            value: dir.path().display().to_string(),
            line: None,
            file: None,
        },
    );
    for o in overrides {
        raw.apply_override(o)?;
    }
    Ok(raw)
}

/// The expanded value of every parameter in [`DEFAULTS`], as `postconf -x`
/// would print it; an expansion error names the file, line and parameter.
pub fn effective_values(source: &dyn Source) -> Result<Vec<(&'static str, String)>, ConfigError> {
    Resolver::new(source).effective()
}

/// The expanded value of `name` in `source` (defaults included), its work
/// charged to `budget`; an error names the file, line and parameter.
pub fn expand_parameter(
    source: &dyn Source,
    name: &str,
    budget: &mut expand::Budget,
) -> Result<String, ConfigError> {
    let r = Resolver::new(source);
    r.budget.replace(std::mem::take(budget));
    let value = r.string(name);
    *budget = r.budget.into_inner();
    value
}

impl Resolver<'_> {
    fn effective(&self) -> Result<Vec<(&'static str, String)>, ConfigError> {
        DEFAULTS
            .iter()
            .map(|(name, _)| Ok((*name, self.string(name)?)))
            .collect()
    }
}

/// Parses a duration in milliseconds: digits and an optional unit `ms`
/// (the default) or `s`. Error: `parameter NAME: bad time value or unit: VALUE`.
pub fn parse_millis(name: &str, value: &str) -> Result<Duration, String> {
    let bad = || format!("parameter {name}: bad time value or unit: {value}");
    let t = value.trim();
    let ndigits = t.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = t[..ndigits].parse().map_err(|_| bad())?;
    match &t[ndigits..] {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(bad()),
    }
}

fn shared_config(r: &Resolver<'_>) -> Result<SharedConfig, ConfigError> {
    let store = r.string(params::TLSMGR_SHARED_STORE)?.trim().to_string();
    let store = if store.is_empty() {
        None
    } else {
        let known = [
            "redis://",
            "rediss://",
            "redis+unix://",
            "unix://",
            store_url::SCHEME,
        ];
        if !known.iter().any(|p| store.starts_with(p)) {
            return Err(r.err(
                params::TLSMGR_SHARED_STORE,
                format!(
                    "parameter tlsmgr_shared_store: {}: not a redis://, rediss://, unix:// or redis+sentinel:// URL",
                    redact_url(&store)
                ),
            ));
        }
        if let Err(e) = store_url::check_url(&store) {
            return Err(r.err(
                params::TLSMGR_SHARED_STORE,
                format!("parameter tlsmgr_shared_store: {}: {e}", redact_url(&store)),
            ));
        }
        Some(store)
    };
    let site = r.string(params::TLSMGR_SHARED_SITE)?;
    if site.is_empty()
        || site.len() > MAX_SITE_LEN
        || !site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(r.err(
            params::TLSMGR_SHARED_SITE,
            format!(
                "parameter tlsmgr_shared_site: \"{site}\": use 1 to {MAX_SITE_LEN} letters, digits, '.', '_' or '-'"
            ),
        ));
    }
    let secret_file = r.path(params::TLSMGR_SHARED_SECRET_FILE)?;
    if store.is_some() && secret_file.is_none() {
        return Err(r.err(
            params::TLSMGR_SHARED_SECRET_FILE,
            "parameter tlsmgr_shared_secret_file: required when tlsmgr_shared_store is set"
                .to_string(),
        ));
    }
    let mut caches = [false; 3];
    for word in r
        .string(params::TLSMGR_SHARED_CACHES)?
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        match CacheType::from_wire(word.as_bytes()) {
            Some(ct) => caches[ct.index()] = true,
            None => {
                return Err(r.err(
                    params::TLSMGR_SHARED_CACHES,
                    format!(
                        "parameter tlsmgr_shared_caches: unknown cache type \"{word}\" (smtpd, smtp or lmtp)"
                    ),
                ))
            }
        }
    }
    let name = params::TLSMGR_SHARED_LOOKUP_DEADLINE;
    let lookup_deadline = parse_millis(name, &r.string(name)?).map_err(|m| r.err(name, m))?;
    if lookup_deadline < Duration::from_millis(1) || lookup_deadline > Duration::from_secs(5) {
        return Err(r.err(
            name,
            format!(
                "invalid {name}: {} ms (1 ms to 5 s)",
                lookup_deadline.as_millis()
            ),
        ));
    }
    let cert_file = r.path(params::TLSMGR_SHARED_CERT_FILE)?;
    let key_file = r.path(params::TLSMGR_SHARED_KEY_FILE)?;
    let half_set = match (&cert_file, &key_file) {
        (Some(_), None) => Some((
            params::TLSMGR_SHARED_CERT_FILE,
            params::TLSMGR_SHARED_KEY_FILE,
        )),
        (None, Some(_)) => Some((
            params::TLSMGR_SHARED_KEY_FILE,
            params::TLSMGR_SHARED_CERT_FILE,
        )),
        _ => None,
    };
    if let Some((set, unset)) = half_set {
        return Err(r.err(
            set,
            format!("parameter {set}: set, but {unset} is empty (a client certificate needs both)"),
        ));
    }
    Ok(SharedConfig {
        store,
        site,
        secret_file,
        secret: None,
        ca_file: r.path(params::TLSMGR_SHARED_CA_FILE)?,
        ca: None,
        cert_file,
        key_file,
        cert: None,
        key: None,
        caches,
        lookup_deadline,
        connect_timeout: Duration::from_secs(r.time(
            params::TLSMGR_SHARED_CONNECT_TIMEOUT,
            1,
            60,
        )?),
        write_queue: r.int(params::TLSMGR_SHARED_WRITE_QUEUE_LIMIT, 1, MAX_WRITE_QUEUE)? as usize,
    })
}

/// Reads the file `param` names into `slot`, unless `slot` already holds
/// that path's contents; an empty parameter empties the slot.
fn read_file(
    param: &str,
    path: &Option<PathBuf>,
    slot: &mut Option<FileRead>,
) -> Result<(), ConfigError> {
    match path {
        None => *slot = None,
        Some(p) if slot.as_ref().is_some_and(|f| &f.0 == p) => {}
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| {
                ConfigError::new(format!(
                    "parameter {param}: cannot read {}: {e}",
                    p.display()
                ))
            })?;
            *slot = Some(std::sync::Arc::new((p.clone(), bytes)));
        }
    }
    Ok(())
}

/// Sanitizes a cache timeout as tlsmgr does: 0 stays 0 (disabled), 1..119
/// becomes 120.
pub fn sanitize_timeout(secs: u64) -> u32 {
    match secs {
        0 => 0,
        s if s < u64::from(SESSION_LIFEMIN) => SESSION_LIFEMIN,
        s => u32::try_from(s).unwrap_or(u32::MAX),
    }
}

impl Config {
    /// Builds a snapshot from raw values plus Postfix's defaults.
    pub fn from_source(source: &dyn Source) -> Result<Config, ConfigError> {
        let r = Resolver::new(source);
        let default_db_type = r.string(params::DEFAULT_DATABASE_TYPE)?;
        let mut caches = Vec::with_capacity(3);
        for ct in CacheType::ALL {
            let db_param = params::cache_database(ct);
            let database = r.string(db_param)?;
            let timeout =
                sanitize_timeout(r.time(params::cache_timeout(ct), 0, SESSION_LIFEMAX)?);
            let location = if database.is_empty() || timeout == 0 {
                None
            } else {
                Some(
                    parse_database(&database, &default_db_type)
                        .map_err(|e| r.err(db_param, format!("parameter {db_param}: {e}")))?,
                )
            };
            caches.push(CacheConfig {
                cache_type: ct,
                database,
                location,
                timeout,
                loglevel: r.string(params::tls_loglevel(ct))?,
            });
        }
        // Postfix: the same database for two cache types is fatal. A
        // memory store is private to its cache, so `memory:` never collides.
        fn shared_file(c: &CacheConfig) -> Option<&StoreLocation> {
            c.location.as_ref().filter(|l| l.path().is_some())
        }
        for (i, a) in caches.iter().enumerate() {
            for b in caches.iter().skip(i + 1) {
                if let (Some(la), Some(lb)) = (shared_file(a), shared_file(b)) {
                    let param_b = params::cache_database(b.cache_type);
                    if a.database == b.database {
                        // Stock's words for one string used twice.
                        return Err(r.err(
                            param_b,
                            format!(
                                "do not use the same TLS cache file {} for {} and {}",
                                b.database, a.cache_type, b.cache_type
                            ),
                        ));
                    }
                    if same_store(la, lb) {
                        // Two spellings of one place (`..`, a symbolic link):
                        // stock would open the file twice; we would fail on
                        // our own lock. Name both parameters and the place.
                        let place = la
                            .path()
                            .map(|p| {
                                crate::store::location::canonical_dir(p)
                                    .display()
                                    .to_string()
                            })
                            .unwrap_or_default();
                        return Err(r.err(
                            param_b,
                            format!(
                                "do not use the same TLS cache file for {}_tls_session_cache_database ({}) and {} ({}): both are stored in {}",
                                a.cache_type, a.database, param_b, b.database, place
                            ),
                        ));
                    }
                }
            }
        }
        let caches: [CacheConfig; 3] = caches
            .try_into()
            .map_err(|_| ConfigError::new("internal error: cache table"))?;
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
            shared: shared_config(&r)?,
            warnings: Vec::new(),
            notes: Vec::new(),
            effective: r.effective()?,
        })
    }

    /// Reads `DIR/main.cf` and `DIR/tlsmgr.cf`, applies `-o` overrides, and
    /// builds the snapshot.
    /// `config_directory` is set from `dir`, as Postfix sets it from `-c`.
    pub fn load(dir: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        let handle = dir::ConfigDir::open(dir)
            .map_err(|e| ConfigError::new(format!("open {}: {}", dir.display(), e)))?;
        Config::load_from(&handle, overrides)
    }

    /// Like [`Config::load`], reading the files through an open directory
    /// handle (which keeps working after a chroot).
    pub fn load_from(dir: &dir::ConfigDir, overrides: &[String]) -> Result<Config, ConfigError> {
        Config::from_raw(&read_raw(dir, overrides)?)
    }

    /// Builds the snapshot of what [`read_raw`] or [`parse_raw`] read, with
    /// the warnings of the reading.
    pub fn from_raw(raw: &RawConfig) -> Result<Config, ConfigError> {
        let mut cfg = Config::from_source(raw)?;
        cfg.warnings = raw.warnings.clone();
        cfg.notes = raw.notes.clone();
        Ok(cfg)
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

    /// Reads `tlsmgr_shared_secret_file` when sharing is on (and the secret
    /// is not already there from the same file). A missing, short or
    /// exposed file is an error naming it. Called at start before the
    /// chroot and privilege drop, and at each reload.
    pub fn load_shared_secret(&mut self) -> Result<(), ConfigError> {
        let sc = &mut self.shared;
        let Some(path) = sc.secret_file.clone().filter(|_| sc.store.is_some()) else {
            sc.secret = None;
            sc.ca = None;
            sc.cert = None;
            sc.key = None;
            return Ok(());
        };
        read_file(params::TLSMGR_SHARED_CA_FILE, &sc.ca_file, &mut sc.ca)?;
        read_file(params::TLSMGR_SHARED_CERT_FILE, &sc.cert_file, &mut sc.cert)?;
        read_file(params::TLSMGR_SHARED_KEY_FILE, &sc.key_file, &mut sc.key)?;
        if sc.secret.as_ref().is_some_and(|s| s.path == path) {
            return Ok(());
        }
        let secret = secret::Secret::load(&path)
            .map_err(|e| ConfigError::new(format!("parameter tlsmgr_shared_secret_file: {e}")))?;
        sc.secret = Some(std::sync::Arc::new(secret));
        Ok(())
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_source(&map)
    }

    #[test]
    fn postfix_defaults() {
        let c = from(&[]).unwrap();
        assert_eq!(c.tls_random_source, "dev:/dev/urandom");
        assert_eq!(
            c.tls_random_exchange_name,
            Some(PathBuf::from("/var/lib/postfix/prng_exch"))
        );
        assert_eq!(c.syslog_name, "postfix");
        assert_eq!(c.cache(CacheType::Smtpd).timeout, 3600);
        assert!(!c.cache(CacheType::Smtpd).enabled());
        assert_eq!(c.ipc_timeout, Duration::from_secs(3600));
        assert_eq!(
            c.default_socket(),
            PathBuf::from("/var/spool/postfix/private/tlsmgr")
        );
    }

    #[test]
    fn timeouts_are_sanitized() {
        let c = from(&[
            ("smtpd_tls_session_cache_timeout", "30"),
            ("smtp_tls_session_cache_timeout", "0"),
            ("lmtp_tls_session_cache_timeout", "2h"),
            ("smtp_tls_session_cache_database", "btree:/x/smtp_scache"),
        ])
        .unwrap();
        assert_eq!(c.cache(CacheType::Smtpd).timeout, 120);
        assert_eq!(c.cache(CacheType::Smtp).timeout, 0);
        assert!(!c.cache(CacheType::Smtp).enabled(), "timeout 0 disables");
        assert_eq!(c.cache(CacheType::Lmtp).timeout, 7200);
    }

    #[test]
    fn timeout_above_max_is_an_error() {
        let e = from(&[("smtpd_tls_session_cache_timeout", "8640001")]).unwrap_err();
        assert_eq!(
            e.message,
            "invalid smtpd_tls_session_cache_timeout: 8640001 (max 8640000)"
        );
    }

    #[test]
    fn same_database_twice_is_an_error() {
        let e = from(&[
            ("smtpd_tls_session_cache_database", "btree:/d/scache"),
            ("smtp_tls_session_cache_database", "btree:/d/scache"),
        ])
        .unwrap_err();
        assert_eq!(
            e.message,
            "do not use the same TLS cache file btree:/d/scache for smtpd and smtp"
        );
    }

    #[test]
    fn one_store_under_two_spellings_is_an_error_naming_both_parameters() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().display();
        let a = format!("btree:{d}/x/../scache");
        let b = format!("btree:{d}/scache");
        let e = from(&[
            ("smtpd_tls_session_cache_database", a.as_str()),
            ("lmtp_tls_session_cache_database", b.as_str()),
        ])
        .unwrap_err();
        let real = std::fs::canonicalize(tmp.path()).unwrap();
        assert_eq!(
            e.message,
            format!(
                "do not use the same TLS cache file for smtpd_tls_session_cache_database ({a}) and lmtp_tls_session_cache_database ({b}): both are stored in {}/scache.fjall",
                real.display()
            )
        );
    }

    #[test]
    fn memory_caches_never_collide() {
        let cfg = from(&[
            ("smtpd_tls_session_cache_database", "memory:"),
            ("smtp_tls_session_cache_database", "memory:"),
        ])
        .unwrap();
        assert!(cfg.caches[0].enabled() && cfg.caches[1].enabled());
    }

    #[test]
    fn errors_name_file_line_and_parameter() {
        let raw = RawConfig::parse(
            "a = 1\ntls_random_bytes = lots\n",
            Some(Path::new("/etc/postfix/main.cf")),
        )
        .unwrap();
        let e = Config::from_source(&raw).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/postfix/main.cf, line 2: bad numerical configuration: tls_random_bytes = lots"
        );
    }

    #[test]
    fn tlsmgr_cf_is_read_beside_main_cf_and_its_errors_name_it() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("main.cf"), "data_directory = /srv/pf\n").unwrap();
        // Absent: defaults.
        let c = Config::load(d, &[]).unwrap();
        assert_eq!(c.io_threads, 0);
        std::fs::write(
            d.join("tlsmgr.cf"),
            "# ours\ntlsmgr_io_threads = 3\ntlsmgr_ticket_key_file = ${data_directory}/k\n",
        )
        .unwrap();
        let c = Config::load(d, &[]).unwrap();
        assert_eq!(c.io_threads, 3);
        assert_eq!(c.ticket_key_file, Some(PathBuf::from("/srv/pf/k")));
        // -o wins over both files.
        let c = Config::load(d, &["tlsmgr_io_threads=5".to_string()]).unwrap();
        assert_eq!(c.io_threads, 5);
        std::fs::write(d.join("tlsmgr.cf"), "\ntlsmgr_io_threads = many\n").unwrap();
        let e = Config::load(d, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}, line 2: bad numerical configuration: tlsmgr_io_threads = many",
                d.join("tlsmgr.cf").display()
            )
        );
        std::fs::write(d.join("tlsmgr.cf"), "tlsmgr_io_threads\n").unwrap();
        let e = Config::load(d, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}, line 1: missing '=' after attribute name: \"tlsmgr_io_threads\"",
                d.join("tlsmgr.cf").display()
            )
        );
    }

    #[test]
    fn defaults_follow_other_parameters() {
        let c = from(&[("data_directory", "/srv/pf")]).unwrap();
        assert_eq!(
            c.ticket_key_file,
            Some(PathBuf::from("/srv/pf/tlsmgr_ticket_keys"))
        );
    }

    #[test]
    fn cache_loglevel() {
        let mut c = from(&[("smtpd_tls_loglevel", "2")]).unwrap();
        assert!(c.cache(CacheType::Smtpd).log_cache());
        assert!(!c.cache(CacheType::Smtp).log_cache());
        c.caches[1].loglevel = "Cache, ssl".into();
        assert!(c.cache(CacheType::Smtp).log_cache());
    }

    #[test]
    fn changes_list_effective_values() {
        let old = from(&[("smtpd_tls_session_cache_timeout", "3600")]).unwrap();
        let new = from(&[
            ("smtpd_tls_session_cache_timeout", "7200"),
            ("data_directory", "/d"),
            ("unrelated_parameter", "x"),
        ])
        .unwrap();
        assert_eq!(
            new.changes_from(&old),
            vec![
                "data_directory /var/lib/postfix -> /d",
                "tls_random_exchange_name /var/lib/postfix/prng_exch -> /d/prng_exch",
                "smtpd_tls_session_cache_timeout 3600 -> 7200",
                "tlsmgr_ticket_key_file /var/lib/postfix/tlsmgr_ticket_keys -> /d/tlsmgr_ticket_keys (at the next start)",
            ]
        );
        assert!(new.changes_from(&new.clone()).is_empty());
    }

    #[test]
    fn effective_values_cover_every_default() {
        let c = from(&[("compatibility_level", "3.6")]).unwrap();
        let names: Vec<&str> = c.effective.iter().map(|(n, _)| *n).collect();
        let defaults: Vec<&str> = DEFAULTS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, defaults);
        assert!(c
            .effective
            .contains(&("compatibility_level", "3.6".to_string())));
    }

    #[test]
    fn observability_parameters() {
        let c = from(&[("queue_directory", "/q")]).unwrap();
        assert_eq!(
            c.admin_socket,
            Some(PathBuf::from("/q/private/tlsmgr.admin"))
        );
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.stats_log_interval, Duration::ZERO);
        let c = from(&[
            ("tlsmgr_admin_socket", ""),
            ("tlsmgr_metrics_listen", "[::1]:9187"),
            ("tlsmgr_stats_log_interval", "1h"),
        ])
        .unwrap();
        assert_eq!(c.admin_socket, None);
        assert_eq!(c.metrics_listen, Some("[::1]:9187".parse().unwrap()));
        assert_eq!(c.stats_log_interval, Duration::from_secs(3600));
        let e = from(&[("tlsmgr_metrics_listen", "localhost:9187")]).unwrap_err();
        assert!(
            e.message
                .starts_with("invalid tlsmgr_metrics_listen parameter value localhost:9187"),
            "{}",
            e.message
        );
        let e = from(&[("tlsmgr_stats_log_interval", "2w")]).unwrap_err();
        assert_eq!(
            e.message,
            "invalid tlsmgr_stats_log_interval: 1209600 (max 604800)"
        );
    }

    #[test]
    fn io_threads_default_and_bounds() {
        assert_eq!(from(&[]).unwrap().io_threads, 0);
        assert_eq!(from(&[("tlsmgr_io_threads", "3")]).unwrap().io_threads, 3);
        let e = from(&[("tlsmgr_io_threads", "-1")]).unwrap_err();
        assert_eq!(
            e.message,
            "invalid tlsmgr_io_threads parameter value -1 < 0"
        );
        let e = from(&[("tlsmgr_io_threads", "257")]).unwrap_err();
        assert_eq!(
            e.message,
            "invalid tlsmgr_io_threads parameter value 257 > 256"
        );
    }

    /// `p0 = x...`, `pN = $pN-1 $pN-1`, then `name = $pLAST`: ~270 MB if
    /// expanded in full.
    fn doubling(levels: usize, name: &str) -> String {
        let mut text = format!("p0 = {}\n", "x".repeat(256));
        for n in 1..=levels {
            text += &format!("p{n} = $p{m} $p{m}\n", m = n - 1);
        }
        text + &format!("{name} = $p{levels}\n")
    }

    #[test]
    fn exponential_expansion_is_refused_with_file_line_and_parameter() {
        let raw = RawConfig::parse(
            &doubling(20, "smtpd_tls_loglevel"),
            Some(Path::new("/etc/postfix/main.cf")),
        )
        .unwrap();
        let t = std::time::Instant::now();
        let e = Config::from_source(&raw).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(
            e.to_string(),
            "/etc/postfix/main.cf, line 22: parameter smtpd_tls_loglevel: \
             macro processing error: unreasonable macro expansion length: more than 1048576 bytes"
        );
    }

    #[test]
    fn expansion_total_is_capped_across_parameters() {
        // Each value within the per-value cap, together over the total.
        let big = "y".repeat(900 * 1024);
        let mut pairs = vec![("big", big.as_str())];
        for name in [
            "mail_owner",
            "syslog_facility",
            "maillog_file",
            "postlog_service_name",
            "tls_random_source",
        ] {
            pairs.push((name, "$big"));
        }
        let e = from(&pairs).unwrap_err();
        assert!(
            e.message.ends_with(
                "unreasonable macro expansion length: more than 4194304 bytes in all parameters"
            ),
            "{e}"
        );
        // One of them alone is fine.
        assert!(from(&pairs[..2]).is_ok());
        // The budget is per snapshot: the next one starts afresh.
        assert!(from(&pairs[..2]).is_ok());
    }

    #[test]
    fn expand_parameter_charges_the_given_budget() {
        let map: HashMap<String, String> = [("a".to_string(), "y".repeat(1000))].into();
        let mut budget = expand::Budget::new();
        assert_eq!(
            expand_parameter(&map, "a", &mut budget).unwrap().len(),
            1000
        );
        assert_eq!(
            expand_parameter(&map, "undefined", &mut budget).unwrap(),
            ""
        );
        assert_eq!(budget.used().len, 1000);
    }

    #[test]
    fn shared_store_parameters() {
        let c = from(&[]).unwrap();
        assert!(!c.shared.enabled());
        assert_eq!(c.shared.site, "default");
        assert_eq!(c.shared.caches, [true, false, false]);
        assert_eq!(c.shared.lookup_deadline, Duration::from_millis(20));
        let c = from(&[
            ("tlsmgr_shared_store", "redis://127.0.0.1:6379/2"),
            ("tlsmgr_shared_secret_file", "/etc/postfix/shared.key"),
            ("tlsmgr_shared_caches", "smtpd, lmtp"),
            ("tlsmgr_shared_lookup_deadline", "1s"),
            ("tlsmgr_shared_site", "mx-eu.1"),
        ])
        .unwrap();
        assert!(c.shared.shares(CacheType::Lmtp) && !c.shared.shares(CacheType::Smtp));
        assert_eq!(c.shared.lookup_deadline, Duration::from_secs(1));
        let err = |pairs: &[(&str, &str)]| from(pairs).unwrap_err().message;
        assert_eq!(
            err(&[("tlsmgr_shared_store", "redis://h:1")]),
            "parameter tlsmgr_shared_secret_file: required when tlsmgr_shared_store is set"
        );
        assert!(err(&[("tlsmgr_shared_store", "http://h")]).contains("not a redis://"));
        assert!(
            err(&[("tlsmgr_shared_store", "redis+sentinel://h:1")]).ends_with(
                "redis+sentinel://h:1: no service name (redis+sentinel://HOST:PORT/SERVICE)"
            )
        );
        assert!(err(&[("tlsmgr_shared_site", "a:b")]).contains("tlsmgr_shared_site"));
        assert!(err(&[("tlsmgr_shared_site", "a*")]).contains("tlsmgr_shared_site"));
        assert!(err(&[("tlsmgr_shared_caches", "smtpd,x")]).contains("\"x\""));
        assert!(err(&[("tlsmgr_shared_lookup_deadline", "0")]).contains("1 ms to 5 s"));
        assert!(err(&[("tlsmgr_shared_lookup_deadline", "2h")]).contains("bad time value"));
        assert!(err(&[("tlsmgr_shared_write_queue_limit", "0")]).contains("< 1"));
        assert_eq!(
            err(&[("tlsmgr_shared_cert_file", "/etc/postfix/redis-client.pem")]),
            "parameter tlsmgr_shared_cert_file: set, but tlsmgr_shared_key_file is empty \
             (a client certificate needs both)"
        );
        assert!(err(&[("tlsmgr_shared_key_file", "/k.pem")])
            .starts_with("parameter tlsmgr_shared_key_file: set, but tlsmgr_shared_cert_file"));
        assert_eq!(
            redact_url("redis://tlsmgr:s3cret@h:6379/0"),
            "redis://tlsmgr:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        for (url, shown) in [
            ("rediss://:pw@h:6380/1", "rediss://:***@h:6380/1"),
            ("redis://u:p@ss@h/0", "redis://u:***@h/0"),
            (
                "redis://u:pw@h/0?protocol=resp3",
                "redis://u:***@h/0?protocol=resp3",
            ),
            (
                "redis+sentinel://u:pw@s1:26379,s2/mx/2",
                "redis+sentinel://u:***@s1:26379,s2/mx/2",
            ),
            ("redis+sentinel://:pw@s1/mx", "redis+sentinel://:***@s1/mx"),
            (
                "unix:///run/redis.sock?db=1&pass=pw&user=u",
                "unix:///run/redis.sock?db=1&pass=***&user=u",
            ),
            ("redis://user@h/0", "redis://user@h/0"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(shown_value("tlsmgr_shared_site", "a:b@c"), "a:b@c");
        let old = from(&[]).unwrap();
        let new = from(&[
            ("tlsmgr_shared_store", "redis://u:pw@h"),
            ("tlsmgr_shared_secret_file", "/k"),
        ])
        .unwrap();
        let changes = new.changes_from(&old).join(", ");
        assert!(
            changes.contains("redis://u:***@h") && !changes.contains("pw"),
            "{changes}"
        );
    }

    #[test]
    fn periods_clamped() {
        let c = from(&[("tls_random_reseed_period", "52w")]).unwrap();
        assert_eq!(c.tls_random_reseed_period, MAX_RANDOM_PERIOD);
        assert!(from(&[("tls_random_prng_update_period", "0")]).is_err());
    }
}
