//! Sharing through Redis (`tlsmgr_shared_*`): the settings, their
//! validation, the files read before the chroot, and how a Redis URL is
//! shown without its password.

use super::source::Resolver;
use super::{params, secret, store_url, Config, ConfigError};
use crate::protocol::CacheType;
use std::path::PathBuf;
use std::time::Duration;

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

pub(super) fn shared_config(r: &Resolver<'_>) -> Result<SharedConfig, ConfigError> {
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
impl Config {
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
}
