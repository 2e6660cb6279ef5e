//! Unit tests of the configuration snapshot: defaults, bounds, errors that
//! name file, line and parameter, expansion limits, sharing parameters.

#![allow(clippy::unwrap_used)]

use super::*;
use std::collections::HashMap;
use std::path::Path;

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
    assert!(err(&[("tlsmgr_shared_store", "redis+sentinel://h:1")])
        .ends_with("redis+sentinel://h:1: no service name (redis+sentinel://HOST:PORT/SERVICE)"));
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
