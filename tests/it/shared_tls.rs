//! The link to Redis over TLS (`rediss://`): the server's certificate is
//! checked against `tlsmgr_shared_ca_file`; without that CA the link never
//! comes up, which is one warning and no failed reply. A server that asks
//! for a client certificate gets `tlsmgr_shared_cert_file` and
//! `tlsmgr_shared_key_file`; without them it is the same: one warning.
#![allow(clippy::unwrap_used)]
use crate::common;
use crate::common::redis_server;

use common::*;
use redis_server::{real_now, write_secret, RedisServer};

fn host(url: &str, ca: Option<&std::path::Path>) -> TestDaemon {
    host_with(url, ca, None)
}

fn host_with(
    url: &str,
    ca: Option<&std::path::Path>,
    client: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> TestDaemon {
    let mut ca = ca.map_or(String::new(), |p| {
        format!("tlsmgr_shared_ca_file = {}\n", p.display())
    });
    if let Some((cert, key)) = client {
        ca.push_str(&format!(
            "tlsmgr_shared_cert_file = {}\ntlsmgr_shared_key_file = {}\n",
            cert.display(),
            key.display()
        ));
    }
    let cf = format!(
        "tlsmgr_shared_store = {url}\ntlsmgr_shared_site = mx\n\
         tlsmgr_shared_secret_file = ${{queue_directory}}/shared.key\n{ca}"
    );
    TestDaemon::start_at(&cf, real_now(), false, |dir| {
        write_secret(
            &dir.join("shared.key"),
            b"tls test secret, 32 bytes or more ...",
        )
    })
}

#[test]
fn sessions_are_shared_over_tls_and_an_unknown_ca_is_refused() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    let ca = redis.ca.clone().unwrap();
    let a = host(&redis.url(), Some(&ca));
    let b = host(&redis.url(), Some(&ca));
    update(&mut a.client(), "smtpd", "over-tls", b"SESSION");
    assert!(eventually(
        || lookup(&mut b.client(), "smtpd", "over-tls") == hit(b"SESSION")
    ));
    assert!(redis
        .dump()
        .iter()
        .any(|(n, _)| n.starts_with("tlsmgr:mx:sc:smtpd:")));
    for h in [&a, &b] {
        assert!(!h.log.text().contains("warning:"), "{}", h.log.text());
    }
    // Without the CA (the system store does not know it): never connected.
    let c = host(&redis.url(), None);
    for i in 0..20 {
        assert_eq!(lookup(&mut c.client(), "smtpd", &format!("x{i}")), miss());
    }
    assert_eq!(lookup(&mut c.client(), "smtpd", "over-tls"), miss());
    assert!(eventually(|| c.log.text().contains("consecutive failures")));
    assert_eq!(c.warnings().len(), 1, "{}", c.log.text());
    // Its probes (about one a second) never get through either.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(!c.log.text().contains("answers again"), "{}", c.log.text());
    assert_eq!(lookup(&mut c.client(), "smtpd", "over-tls"), miss());
}

#[test]
fn a_server_that_asks_for_a_client_certificate_gets_ours() {
    let Some(redis) = RedisServer::start_tls_with_client_auth() else {
        return;
    };
    let ca = redis.ca.clone().unwrap();
    let client = redis.client.clone().unwrap();
    let a = host_with(&redis.url(), Some(&ca), Some(&client));
    let b = host_with(&redis.url(), Some(&ca), Some(&client));
    update(&mut a.client(), "smtpd", "mutual-tls", b"SESSION");
    assert!(eventually(|| lookup(
        &mut b.client(),
        "smtpd",
        "mutual-tls"
    ) == hit(b"SESSION")));
    assert!(redis
        .dump()
        .iter()
        .any(|(n, _)| n.starts_with("tlsmgr:mx:sc:smtpd:")));
    assert_eq!(
        a.warnings().len() + b.warnings().len(),
        0,
        "{}",
        a.log.text()
    );
    // The right CA but no certificate of its own: the server hangs up at
    // the handshake, every lookup is a plain miss, one warning.
    let c = host(&redis.url(), Some(&ca));
    for i in 0..20 {
        assert_eq!(lookup(&mut c.client(), "smtpd", &format!("x{i}")), miss());
    }
    assert_eq!(lookup(&mut c.client(), "smtpd", "mutual-tls"), miss());
    assert!(eventually(|| c.log.text().contains("consecutive failures")));
    assert_eq!(c.warnings().len(), 1, "{}", c.log.text());
}
