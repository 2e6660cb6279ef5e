//! Redis Sentinel: the `redis+sentinel://` form of `tlsmgr_shared_store`
//! and the lookup of the current master.
//!
//! `redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`
//! names the Sentinels (tried in order), the monitored service (the
//! `sentinel monitor` name) and the database; the user and password are
//! those of the Redis master, the Sentinels themselves are asked without
//! authentication. The parse is a pure function; the lookup asks the
//! Sentinels through redis-rs (`SentinelClient`), which also checks that
//! the node it names answers `ROLE` as a master.

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};

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

/// Whether `url` is a Sentinel URL.
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with(SCHEME)
}

/// Parses a `redis+sentinel://` URL; the error says what is wrong.
pub fn parse(url: &str) -> Result<SentinelUrl, String> {
    let rest = url
        .strip_prefix(SCHEME)
        .ok_or_else(|| format!("not a {SCHEME} URL"))?;
    let (hosts_part, path) = rest
        .split_once('/')
        .ok_or("no service name (redis+sentinel://HOST:PORT/SERVICE)")?;
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
                    .ok_or_else(|| format!("bad port in \"{h}\""))?;
                (host, port)
            }
            None => (h, DEFAULT_SENTINEL_PORT),
        };
        if host.is_empty() {
            return Err(format!("empty host in \"{hosts}\""));
        }
        sentinels.push((host.to_string(), port));
    }
    let mut segs = path.split('/');
    let service = segs.next().unwrap_or_default();
    if service.is_empty() {
        return Err("no service name (redis+sentinel://HOST:PORT/SERVICE)".into());
    }
    let db = match segs.next() {
        None | Some("") => 0,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| format!("bad database \"{d}\""))?,
    };
    if segs.next().is_some() {
        return Err(format!("unexpected \"/\" after the database in \"{path}\""));
    }
    Ok(SentinelUrl {
        sentinels,
        service: service.to_string(),
        db,
        username,
        password,
    })
}

impl SentinelUrl {
    /// A redis-rs client for its Sentinels, which names the master.
    pub fn client(&self) -> redis::RedisResult<SentinelClient> {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|(h, p)| format!("redis://{h}:{p}"))
            .collect();
        let mut info = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            info = info.set_username(u);
        }
        if let Some(p) = &self.password {
            info = info.set_password(p);
        }
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
        SentinelClient::build(
            sentinels,
            self.service.clone(),
            Some(node),
            SentinelServerType::Master,
        )
    }
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
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(parse("redis+sentinel://h/mx").unwrap().client().is_ok());
    }
}
