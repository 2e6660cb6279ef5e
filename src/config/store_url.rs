//! The syntax of `tlsmgr_shared_store`, checked when main.cf is read (no
//! connection is made): a redis-rs URL (`redis://`, `rediss://`,
//! `unix://`, `redis+unix://`) or a Sentinel URL,
//! `redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`,
//! which names the Sentinels (tried in order), the monitored service (the
//! `sentinel monitor` name) and the database; the user and password are
//! those of the Redis master, the Sentinels themselves are asked without
//! authentication. `crate::shared::sentinel` asks the Sentinels.

/// The URL scheme of a Sentinel-managed store.
pub const SCHEME: &str = "redis+sentinel://";

/// Port of a Sentinel given without one.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// The Sentinels, in the order given.
    pub sentinels: Vec<(String, u16)>,
    /// The monitored service name.
    pub service: String,
    /// The database on the master.
    pub db: i64,
    /// The master's ACL user, if any.
    pub username: Option<String>,
    /// The master's password, if any.
    pub password: Option<String>,
}

/// What is wrong with a `tlsmgr_shared_store` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreUrlError {
    /// [`parse`] was given a URL of another scheme.
    #[error("not a {SCHEME} URL")]
    NotSentinel,
    /// No `/SERVICE` after the Sentinels.
    #[error("no service name (redis+sentinel://HOST:PORT/SERVICE)")]
    NoService,
    /// A Sentinel's port is not 1-65535.
    #[error("bad port in \"{0}\"")]
    BadPort(String),
    /// An empty Sentinel host in the list.
    #[error("empty host in \"{0}\"")]
    EmptyHost(String),
    /// The database is not a non-negative number.
    #[error("bad database \"{0}\"")]
    BadDatabase(String),
    /// More path after the database.
    #[error("unexpected \"/\" after the database in \"{0}\"")]
    TrailingPath(String),
    /// redis-rs refuses the URL; its words.
    #[error("{0}")]
    Redis(String),
}

/// Whether `url` is a Sentinel URL.
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with(SCHEME)
}

/// Parses a `redis+sentinel://` URL; the error says what is wrong.
pub fn parse(url: &str) -> Result<SentinelUrl, StoreUrlError> {
    let rest = url.strip_prefix(SCHEME).ok_or(StoreUrlError::NotSentinel)?;
    let (hosts_part, path) = rest.split_once('/').ok_or(StoreUrlError::NoService)?;
    let (auth, hosts) = match hosts_part.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, hosts_part),
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => {
            let (u, p) = a.split_once(':').unwrap_or(("", a));
            let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
            (nonempty(u), nonempty(p))
        }
    };
    let mut sentinels = Vec::new();
    for h in hosts.split(',') {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| StoreUrlError::BadPort(h.to_string()))?;
                (host, port)
            }
            None => (h, DEFAULT_SENTINEL_PORT),
        };
        if host.is_empty() {
            return Err(StoreUrlError::EmptyHost(hosts.to_string()));
        }
        sentinels.push((host.to_string(), port));
    }
    let mut segs = path.split('/');
    let service = segs.next().unwrap_or_default();
    if service.is_empty() {
        return Err(StoreUrlError::NoService);
    }
    let db = match segs.next() {
        None | Some("") => 0,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| StoreUrlError::BadDatabase(d.to_string()))?,
    };
    if segs.next().is_some() {
        return Err(StoreUrlError::TrailingPath(path.to_string()));
    }
    Ok(SentinelUrl {
        sentinels,
        service: service.to_string(),
        db,
        username,
        password,
    })
}

/// Whether the Redis client will accept `url`: a Sentinel URL that
/// [`parse`] takes, or a URL redis-rs opens. The error says what is wrong.
pub fn check_url(url: &str) -> Result<(), StoreUrlError> {
    if is_sentinel_url(url) {
        return parse(url).map(|_| ());
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| StoreUrlError::Redis(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let u = parse("redis+sentinel://10.0.0.1:26379,10.0.0.2,s3:5000/mx/2").unwrap();
        assert_eq!(
            u.sentinels,
            [
                ("10.0.0.1".to_string(), 26379),
                ("10.0.0.2".to_string(), DEFAULT_SENTINEL_PORT),
                ("s3".to_string(), 5000)
            ]
        );
        assert_eq!((u.service.as_str(), u.db), ("mx", 2));
        assert_eq!((u.username, u.password), (None, None));
        let u = parse("redis+sentinel://tlsmgr:pw@h:1/mx").unwrap();
        assert_eq!(u.db, 0);
        assert_eq!(u.username.as_deref(), Some("tlsmgr"));
        assert_eq!(u.password.as_deref(), Some("pw"));
        let u = parse("redis+sentinel://:pw@h:1/mx/").unwrap();
        assert_eq!((u.username, u.password.as_deref()), (None, Some("pw")));
        for (bad, why) in [
            ("redis://h/mx", "not a"),
            ("redis+sentinel://h:1", "no service"),
            ("redis+sentinel://h:1/", "no service"),
            ("redis+sentinel://h:x/mx", "bad port"),
            ("redis+sentinel://h:0/mx", "bad port"),
            ("redis+sentinel://,h/mx", "empty host"),
            ("redis+sentinel://h/mx/-1", "bad database"),
            ("redis+sentinel://h/mx/1/2", "unexpected"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_url("redis+sentinel://h/mx").is_ok());
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("redis+sentinel://h:1").is_err());
    }
}
