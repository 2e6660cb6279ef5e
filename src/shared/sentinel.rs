//! Redis Sentinel: the lookup of the current master of a
//! `redis+sentinel://` store (its syntax: [`crate::config::store_url`]).
//! redis-rs (`SentinelClient`) asks the Sentinels, and checks that the node
//! they name answers `ROLE` as a master.

use crate::config::store_url::SentinelUrl;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};

/// A redis-rs client for the Sentinels of `url`, which names the master.
pub fn client(url: &SentinelUrl) -> redis::RedisResult<SentinelClient> {
    let sentinels: Vec<String> = url
        .sentinels
        .iter()
        .map(|(h, p)| format!("redis://{h}:{p}"))
        .collect();
    let mut info = redis::RedisConnectionInfo::default().set_db(url.db);
    if let Some(u) = &url.username {
        info = info.set_username(u);
    }
    if let Some(p) = &url.password {
        info = info.set_password(p);
    }
    let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    SentinelClient::build(
        sentinels,
        url.service.clone(),
        Some(node),
        SentinelServerType::Master,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn a_client_for_a_parsed_url() {
        let url = crate::config::store_url::parse("redis+sentinel://h/mx").unwrap();
        assert!(super::client(&url).is_ok());
    }
}
