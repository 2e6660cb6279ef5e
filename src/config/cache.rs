//! One session cache's settings: its database, its timeout (sanitized as
//! tlsmgr does) and its log level, and the rule that two caches never share
//! a store.

use super::source::Resolver;
use super::{params, ConfigError};
use crate::protocol::CacheType;
use crate::store::location::{parse_database, same_store, StoreLocation};

/// Shortest cache timeout Postfix allows (`TLS_SESSION_LIFEMIN`); a smaller
/// positive value is raised to it.
pub const SESSION_LIFEMIN: u32 = 120;
/// Longest cache timeout (100 days); above it the configuration is invalid.
pub const SESSION_LIFEMAX: u64 = 8_640_000;

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

/// Sanitizes a cache timeout as tlsmgr does: 0 stays 0 (disabled), 1..119
/// becomes 120.
pub fn sanitize_timeout(secs: u64) -> u32 {
    match secs {
        0 => 0,
        s if s < u64::from(SESSION_LIFEMIN) => SESSION_LIFEMIN,
        s => u32::try_from(s).unwrap_or(u32::MAX),
    }
}

/// The three caches' settings, indexed by [`CacheType::index`]; two caches
/// configured on one store are an error naming both.
pub(super) fn caches(r: &Resolver<'_>) -> Result<[CacheConfig; 3], ConfigError> {
    let default_db_type = r.string(params::DEFAULT_DATABASE_TYPE)?;
    let mut caches = Vec::with_capacity(3);
    for ct in CacheType::ALL {
        let db_param = params::cache_database(ct);
        let database = r.string(db_param)?;
        let timeout = sanitize_timeout(r.time(params::cache_timeout(ct), 0, SESSION_LIFEMAX)?);
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
    Ok(caches)
}
