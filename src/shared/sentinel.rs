//! Redis Sentinel: the lookup of the current master of a
//! `redis+sentinel://` store (its syntax: [`crate::config::store_url`]).
//! The Sentinels are asked `SENTINEL get-master-addr-by-name`, and the node
//! they name must answer `ROLE` as a master ([`super::link::sentinel_master`],
//! over bounded connections: a Sentinel is no more trusted than Redis).

use crate::config::store_url::SentinelUrl;

/// AUTH and SELECT for the master that `url`'s Sentinels name.
pub fn node_info(url: &SentinelUrl) -> redis::RedisConnectionInfo {
    let mut info = redis::RedisConnectionInfo::default().set_db(url.db);
    if let Some(u) = &url.username {
        info = info.set_username(u);
    }
    if let Some(p) = &url.password {
        info = info.set_password(p);
    }
    info
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn node_info_of_a_parsed_url() {
        let url = crate::config::store_url::parse("redis+sentinel://h/mx").unwrap();
        assert_eq!(super::node_info(&url).db(), 0);
    }
}
