//! Every parameter the daemon reads, by name: a constant for each name,
//! next to its built-in default, in one table ([`DEFAULTS`]). Code that
//! reads, reports or compares a parameter names it by its constant, so a
//! misspelt name is a compile error, not a silently ignored setting.
//!
//! Postfix's parameters are read from main.cf; ours (named with
//! [`OUR_PREFIX`]) from tlsmgr.cf beside it, which Postfix does not read
//! (in main.cf, postconf(1) warns about each as unused), or, still, from
//! main.cf.

/// Declares one constant per parameter and the [`DEFAULTS`] table.
macro_rules! parameters {
    ($($(#[$doc:meta])* $id:ident = $name:literal, $default:expr;)*) => {
        $($(#[$doc])* #[doc = concat!("`", $name, "`")] pub const $id: &str = $name;)*

        /// Built-in defaults of every parameter we read (Postfix 3.7 on
        /// Linux/Debian, `default_cache_db_type` from 3.11, plus our own
        /// `tlsmgr_*` parameters), in the order
        /// `tlsmgr check` prints them.
        pub const DEFAULTS: &[(&str, &str)] = &[$(($id, $default)),*];
    };
}

parameters! {
    CONFIG_DIRECTORY = "config_directory", "/etc/postfix";
    QUEUE_DIRECTORY = "queue_directory", "/var/spool/postfix";
    DATA_DIRECTORY = "data_directory", "/var/lib/postfix";
    DAEMON_DIRECTORY = "daemon_directory", "/usr/lib/postfix/sbin";
    MAIL_OWNER = "mail_owner", "postfix";
    DEFAULT_DATABASE_TYPE = "default_database_type", "hash";
    /// Postfix 3.11's type for caches (`btree` unless built without
    /// Berkeley DB), which its documentation puts in front of the TLS
    /// session cache paths: `$default_cache_db_type:...` must expand on
    /// every version, not to an empty type.
    DEFAULT_CACHE_DB_TYPE = "default_cache_db_type", "btree";
    COMPATIBILITY_LEVEL = "compatibility_level", "0";
    MULTI_INSTANCE_NAME = "multi_instance_name", "";
    SYSLOG_NAME = "syslog_name", "${multi_instance_name?{$multi_instance_name}:{postfix}}";
    SYSLOG_FACILITY = "syslog_facility", "mail";
    MAILLOG_FILE = "maillog_file", "";
    POSTLOG_SERVICE_NAME = "postlog_service_name", "postlog";
    IPC_TIMEOUT = "ipc_timeout", "3600s";
    DAEMON_TIMEOUT = "daemon_timeout", "18000s";
    TLS_RANDOM_SOURCE = "tls_random_source", "dev:/dev/urandom";
    TLS_RANDOM_EXCHANGE_NAME = "tls_random_exchange_name", "${data_directory}/prng_exch";
    TLS_RANDOM_BYTES = "tls_random_bytes", "32";
    TLS_RANDOM_RESEED_PERIOD = "tls_random_reseed_period", "3600s";
    TLS_RANDOM_PRNG_UPDATE_PERIOD = "tls_random_prng_update_period", "3600s";
    SMTPD_TLS_SESSION_CACHE_DATABASE = "smtpd_tls_session_cache_database", "";
    SMTP_TLS_SESSION_CACHE_DATABASE = "smtp_tls_session_cache_database", "";
    LMTP_TLS_SESSION_CACHE_DATABASE = "lmtp_tls_session_cache_database", "";
    SMTPD_TLS_SESSION_CACHE_TIMEOUT = "smtpd_tls_session_cache_timeout", "3600s";
    SMTP_TLS_SESSION_CACHE_TIMEOUT = "smtp_tls_session_cache_timeout", "3600s";
    LMTP_TLS_SESSION_CACHE_TIMEOUT = "lmtp_tls_session_cache_timeout", "3600s";
    SMTPD_TLS_LOGLEVEL = "smtpd_tls_loglevel", "0";
    SMTP_TLS_LOGLEVEL = "smtp_tls_loglevel", "0";
    LMTP_TLS_LOGLEVEL = "lmtp_tls_loglevel", "0";
    // Ours, set in tlsmgr.cf. Documented in README.md ("Parameters beyond
    // Postfix") and tlsmgr-rs(8).
    TLSMGR_SESSION_CACHE_MAX_ENTRIES = "tlsmgr_session_cache_max_entries", "100000";
    TLSMGR_PERSISTENT_STATE = "tlsmgr_persistent_state", "yes";
    TLSMGR_TICKET_KEY_FILE = "tlsmgr_ticket_key_file", "${data_directory}/tlsmgr_ticket_keys";
    TLSMGR_STORE_LOCK_WAIT = "tlsmgr_store_lock_wait", "10s";
    TLSMGR_IO_THREADS = "tlsmgr_io_threads", "0";
    TLSMGR_SESSION_CACHE_SYNC_INTERVAL = "tlsmgr_session_cache_sync_interval", "1s";
    TLSMGR_STORE_BLOCK_CACHE_SIZE = "tlsmgr_store_block_cache_size", "2097152";
    TLSMGR_STORE_WRITE_BUFFER_SIZE = "tlsmgr_store_write_buffer_size", "8388608";
    TLSMGR_ADMIN_SOCKET = "tlsmgr_admin_socket", "${queue_directory}/private/tlsmgr.admin";
    TLSMGR_METRICS_LISTEN = "tlsmgr_metrics_listen", "";
    TLSMGR_STATS_LOG_INTERVAL = "tlsmgr_stats_log_interval", "0s";
    // Sharing through Redis (README, "An MX farm: one TLS memory").
    TLSMGR_SHARED_STORE = "tlsmgr_shared_store", "";
    TLSMGR_SHARED_SITE = "tlsmgr_shared_site", "default";
    TLSMGR_SHARED_SECRET_FILE = "tlsmgr_shared_secret_file", "";
    TLSMGR_SHARED_CA_FILE = "tlsmgr_shared_ca_file", "";
    TLSMGR_SHARED_CERT_FILE = "tlsmgr_shared_cert_file", "";
    TLSMGR_SHARED_KEY_FILE = "tlsmgr_shared_key_file", "";
    TLSMGR_SHARED_CACHES = "tlsmgr_shared_caches", "smtpd";
    TLSMGR_SHARED_LOOKUP_DEADLINE = "tlsmgr_shared_lookup_deadline", "20ms";
    TLSMGR_SHARED_CONNECT_TIMEOUT = "tlsmgr_shared_connect_timeout", "1s";
    TLSMGR_SHARED_WRITE_QUEUE_LIMIT = "tlsmgr_shared_write_queue_limit", "10000";
}

use crate::protocol::CacheType;

/// What the names of our own parameters start with.
pub const OUR_PREFIX: &str = "tlsmgr_";

/// Whether `name` is one of ours (a name tlsmgr.cf may define), known or not.
pub fn is_ours(name: &str) -> bool {
    name.starts_with(OUR_PREFIX)
}

/// `<type>_tls_session_cache_database` of cache type `ct`.
pub fn cache_database(ct: CacheType) -> &'static str {
    match ct {
        CacheType::Smtpd => SMTPD_TLS_SESSION_CACHE_DATABASE,
        CacheType::Smtp => SMTP_TLS_SESSION_CACHE_DATABASE,
        CacheType::Lmtp => LMTP_TLS_SESSION_CACHE_DATABASE,
    }
}

/// `<type>_tls_session_cache_timeout` of cache type `ct`.
pub fn cache_timeout(ct: CacheType) -> &'static str {
    match ct {
        CacheType::Smtpd => SMTPD_TLS_SESSION_CACHE_TIMEOUT,
        CacheType::Smtp => SMTP_TLS_SESSION_CACHE_TIMEOUT,
        CacheType::Lmtp => LMTP_TLS_SESSION_CACHE_TIMEOUT,
    }
}

/// `<type>_tls_loglevel` of cache type `ct`.
pub fn tls_loglevel(ct: CacheType) -> &'static str {
    match ct {
        CacheType::Smtpd => SMTPD_TLS_LOGLEVEL,
        CacheType::Smtp => SMTP_TLS_LOGLEVEL,
        CacheType::Lmtp => LMTP_TLS_LOGLEVEL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cache_names_are_the_type_prefixed_ones() {
        for ct in CacheType::ALL {
            assert_eq!(
                cache_database(ct),
                format!("{ct}_tls_session_cache_database")
            );
            assert_eq!(cache_timeout(ct), format!("{ct}_tls_session_cache_timeout"));
            assert_eq!(tls_loglevel(ct), format!("{ct}_tls_loglevel"));
        }
    }

    #[test]
    fn every_name_is_in_the_table_once() {
        let mut names: Vec<&str> = DEFAULTS.iter().map(|(n, _)| *n).collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all);
    }
}
